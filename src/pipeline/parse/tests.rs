use super::*;
use crate::pipeline::classify::{classify, Context};
use crate::pipeline::rules::Rules;
use proptest::prelude::*;

fn p(raw: &str) -> Inbound {
    parse(raw.as_bytes(), Limits::default())
}

#[test]
fn encoded_subject_and_crlf_are_decoded() {
    let m = p("Subject: =?utf-8?B?UkU6IFNSWDE1NjkyMjE4NTFJRCAtIEJsb2NraWVydW5nIGbDvHIgSVA=?=\r\nFrom: a@b.example\r\n\r\nbody\r\n");
    assert_eq!(m.subject, "RE: SRX1569221851ID - Blockierung für IP");
    assert_eq!(m.body.trim(), "body");
}

#[test]
fn html_only_body_becomes_text() {
    let m = p("Content-Type: text/html; charset=utf-8\n\n<html><body><p>Not qualified <b>for</b> mitigation</p></body></html>\n");
    assert!(
        m.body.contains("Not qualified for mitigation"),
        "{:?}",
        m.body
    );
}

#[test]
fn dsn_fields_are_read_field_by_field() {
    let raw = "Content-Type: multipart/report; report-type=delivery-status; boundary=XX\n\n--XX\nContent-Type: text/plain\n\nreport\n--XX\nContent-Type: message/global-delivery-status\n\nReporting-MTA: dns; out.example\n\nFinal-Recipient: rfc822; u@outlook.com\nAction: failed\nStatus: 5.7.1 (blocked)\nDiagnostic-Code: smtp; 550 5.7.1 messages from\n  [192.0.2.1] weren't sent (S3140)\n--XX--\n";
    let m = p(raw);
    assert_eq!(m.report_type.as_deref(), Some("delivery-status"));
    let dsn = m.dsn.expect("dsn parsed");
    assert_eq!(dsn.reporting_mta.as_deref(), Some("out.example"));
    let r = &dsn.recipients[0];
    assert_eq!(r.action.as_deref(), Some("failed"));
    assert_eq!(r.status.as_deref(), Some("5.7.1"));
    assert_eq!(
        r.diagnostic_code.as_deref(),
        Some("550 5.7.1 messages from [192.0.2.1] weren't sent (S3140)")
    );
}

#[test]
fn authentication_results_comments_and_quotes_are_handled() {
    let m = p("Authentication-Results: mx1.example.net (postfix);\n dkim=pass (2048-bit key; unprotected) header.d=microsoft.com header.b=\"a;b\";\n dmarc=pass (p=reject sp=reject) header.from=microsoft.com\n\nx\n");
    let ar = &m.auth_results[0];
    assert_eq!(ar.authserv_id, "mx1.example.net");
    assert_eq!(ar.results.len(), 2);
    assert_eq!(ar.results[1].method, "dmarc");
    assert_eq!(ar.results[1].prop("header.from"), Some("microsoft.com"));
}

#[test]
fn attached_messages_are_kept_apart_from_the_body() {
    let raw = "Content-Type: multipart/mixed; boundary=B\n\n--B\nContent-Type: text/plain\n\nsee attached\n--B\nContent-Type: message/rfc822\n\nFrom: x@y.example\nSubject: inner\nX-HmXmrOriginalRecipient: <u@hotmail.com>\n\ninner body\n--B--\n";
    let m = p(raw);
    assert_eq!(m.body.trim(), "see attached");
    assert_eq!(m.attached.len(), 1);
    assert_eq!(m.attached[0].header("subject"), Some("inner"));
    assert!(m.attached[0].body.contains("inner body"));
}

#[test]
fn text_beyond_the_limit_is_dropped_and_reported() {
    let raw = format!("Subject: big\n\n{}", "é".repeat(10_000));
    let m = parse(
        raw.as_bytes(),
        Limits {
            max_text_bytes: 4097,
        },
    );
    assert!(m.truncated);
    assert!(m.body.len() <= 4097);
}

#[test]
fn garbage_is_data_not_a_crash() {
    for raw in [
        &b""[..],
        b"\0\0\0",
        b"\xff\xfe\xfd",
        b":\n\n",
        b"Content-Type: multipart/mixed; boundary=\n\n--\n--",
    ] {
        let m = parse(raw, Limits::default());
        assert_eq!(m.size, raw.len());
    }
}

#[test]
fn hostile_shapes_are_handled_in_bounded_text() {
    let limits = Limits {
        max_text_bytes: 1024 * 1024,
    };
    // 50 MB body: truncated, reported.
    let mut big = b"From: a@b.example\nSubject: big\n\n".to_vec();
    big.extend(std::iter::repeat_n(b'x', 50 * 1024 * 1024));
    let m = parse(&big, limits);
    assert!(m.truncated && m.body.len() <= limits.max_text_bytes);
    // 500 levels of nested multiparts and of nested messages.
    let mut nested = String::from("leaf\n");
    for i in 0..500 {
        nested = format!(
            "Content-Type: multipart/mixed; boundary=\"b{i}\"\n\n--b{i}\n{nested}\n--b{i}--\n"
        );
    }
    let _ = parse(format!("Subject: n\n{nested}").as_bytes(), limits);
    let mut rfc822 = String::from("leaf\n");
    for i in 0..500 {
        rfc822 = format!("Content-Type: message/rfc822\n\nSubject: level {i}\n{rfc822}");
    }
    let _ = parse(format!("Subject: n\n{rfc822}").as_bytes(), limits);
    // A 100 KB header line, NUL bytes, invalid UTF-8 in headers, broken base64.
    let long = format!(
        "Subject: {}\nX-Long: {}\n\nbody\n",
        "A".repeat(100_000),
        "192.0.2.1 ".repeat(10_000)
    );
    assert_eq!(parse(long.as_bytes(), limits).subject.len(), 100_000);
    let m = parse(
        b"From: a@b\x00.example\nSubject: n\x00ul \xff\xfe\n\nbo\x00dy 192.0.2.5\n",
        limits,
    );
    assert!(m.body.contains("192.0.2.5"));
    let raw = b"Subject: b\nContent-Transfer-Encoding: base64\n\n!!!!not base64 at all====\n";
    let m = parse(raw, limits);
    assert_eq!(m.size, raw.len());
}

fn corpus_sample() -> Vec<Vec<u8>> {
    vec![
        include_bytes!("../../../tests/fixtures/corpus/d006.eml").to_vec(),
        include_bytes!("../../../tests/fixtures/corpus/d008.eml").to_vec(),
        include_bytes!("../../../tests/fixtures/corpus/d003.eml").to_vec(),
        include_bytes!("../../../tests/fixtures/corpus/d004.eml").to_vec(),
        include_bytes!("../../../tests/fixtures/corpus/d025.eml").to_vec(),
    ]
}

static RULES: std::sync::LazyLock<Rules> =
    std::sync::LazyLock::new(|| Rules::builtin().expect("rules"));

fn run_all(raw: &[u8]) {
    let ctx = Context {
        authserv_ids: vec!["mx1.example.net".into()],
        microsoft_domains: vec!["microsoft.com".into()],
        ..Context::default()
    };
    let inbound = parse(
        raw,
        Limits {
            max_text_bytes: 64 * 1024,
        },
    );
    let _ = classify(&inbound, &RULES, &ctx);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn parse_and_classify_never_panic_on_arbitrary_bytes(raw in proptest::collection::vec(any::<u8>(), 0..4096)) {
        run_all(&raw);
    }

    #[test]
    fn parse_and_classify_never_panic_on_damaged_real_mail(
        which in 0usize..5,
        cut in 0usize..8000,
        flips in proptest::collection::vec((0usize..8000, any::<u8>()), 0..32),
    ) {
        let mut raw = corpus_sample()[which].clone();
        for (pos, byte) in flips {
            if !raw.is_empty() {
                let i = pos % raw.len();
                raw[i] = byte;
            }
        }
        raw.truncate(cut.min(raw.len()));
        run_all(&raw);
    }

    #[test]
    fn parse_and_classify_never_panic_on_mail_shaped_text(
        headers in proptest::collection::vec(("[A-Za-z-]{1,20}", "[ -~]{0,80}"), 0..12),
        boundary in "[A-Za-z0-9]{0,10}",
        body in "[ -~\n]{0,400}",
    ) {
        let mut raw = String::new();
        for (n, v) in headers {
            raw.push_str(&format!("{n}: {v}\n"));
        }
        raw.push_str(&format!("Content-Type: multipart/report; report-type=delivery-status; boundary=\"{boundary}\"\n\n--{boundary}\n{body}\n--{boundary}\nContent-Type: message/delivery-status\n\n{body}\n--{boundary}--\n"));
        run_all(raw.as_bytes());
    }
}
