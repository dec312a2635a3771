//! Header-first sync: from a few header fields, decide whether a message can matter and so is
//! worth fetching whole. A postmaster box is mostly customer mail and newsletters; only
//! Microsoft's mail, bounces, feedback reports, SNDS notices, mail about a ticket and our own
//! mail feed the case engine.
//!
//! The filter errs on the side of fetching: dropping a real Microsoft result or a block-list
//! bounce is a bug (the corpus tests replay every fixture through it); fetching a harmless
//! message only costs a little time.

use mail_parser::{HeaderValue, MessageParser};

use crate::pipeline::classify::{domain_within, Context};
use crate::pipeline::rules::{PatternList, Rules};

/// The header fields the filter reads (the loop header is added from the context).
pub const FIELDS: &[&str] = &[
    "From",
    "Sender",
    "Reply-To",
    "Return-Path",
    "Subject",
    "Content-Type",
    "Auto-Submitted",
    "Message-ID",
];

/// The `FETCH` item list for the header pass: UID, size, and the fields above.
pub fn fetch_items(ctx: &Context) -> String {
    let mut fields = FIELDS.join(" ");
    if !ctx.loop_header.is_empty() {
        fields.push(' ');
        fields.push_str(&ctx.loop_header);
    }
    format!("(UID RFC822.SIZE BODY.PEEK[HEADER.FIELDS ({fields})])")
}

/// Why a message's body is needed, or `None` when its headers show it cannot matter.
pub fn needs_body(header: &[u8], rules: &Rules, ctx: &Context) -> Option<&'static str> {
    // Headers that do not parse cannot be judged: fetch the whole message.
    let Some(message) = MessageParser::new().parse_headers(header) else {
        return Some("unparsed headers");
    };
    let m = &rules.markers;
    let subject = message.subject().unwrap_or("");
    let any = |patterns: &PatternList, text: &str| patterns.is_match(text);

    // Every address that could say who sent it: From, Sender, Reply-To, Return-Path.
    let mut senders: Vec<(String, String)> = Vec::new();
    for field in [message.from(), message.sender(), message.reply_to()]
        .into_iter()
        .flatten()
    {
        for addr in field.iter() {
            senders.push((
                addr.name().unwrap_or("").to_string(),
                addr.address().unwrap_or("").to_ascii_lowercase(),
            ));
        }
    }
    let return_path = message
        .header_raw("Return-Path")
        .map(|r| {
            r.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .trim()
        })
        .map(str::to_ascii_lowercase);
    if let Some(rp) = &return_path {
        if rp.is_empty() {
            return Some("null return path");
        }
        senders.push((String::new(), rp.clone()));
    }

    if !ctx.loop_header.is_empty() && message.header_raw(ctx.loop_header.as_str()).is_some() {
        return Some("our loop header");
    }
    for (name, address) in &senders {
        let (local, domain) = address.rsplit_once('@').unwrap_or((address.as_str(), ""));
        if domain_within(domain, &ctx.microsoft_domains) {
            return Some("Microsoft sender");
        }
        if ctx
            .own_addresses
            .iter()
            .any(|a| a.eq_ignore_ascii_case(address))
        {
            return Some("our own address");
        }
        if any(&m.jmrp_from, address) {
            return Some("JMRP sender");
        }
        if any(&m.bounce_sender, local) {
            return Some("bounce sender");
        }
        if any(&m.microsoft_support, name) || any(&m.snds, name) {
            return Some("Microsoft support name");
        }
    }
    if let Some(id) = message.message_id() {
        let domain = id.rsplit_once('@').map_or("", |(_, d)| d);
        if domain_within(domain, &ctx.own_message_id_domains) {
            return Some("our Message-ID");
        }
    }
    if rules.ticket_gate.is_match(subject) {
        return Some("ticket id in the subject");
    }
    for (patterns, reason) in [
        (&m.microsoft_support, "Microsoft support subject"),
        (&m.jmrp_subject, "JMRP subject"),
        (&m.snds, "SNDS subject"),
        (&m.bounce_subject, "bounce subject"),
        (&m.candidate_subject, "subject rule"),
    ] {
        if any(patterns, subject) {
            return Some(reason);
        }
    }
    if let Some(HeaderValue::ContentType(ct)) = message.header("Content-Type") {
        if ct.ctype().eq_ignore_ascii_case("multipart")
            && ct
                .subtype()
                .is_some_and(|s| s.eq_ignore_ascii_case("report"))
        {
            return Some("multipart/report");
        }
    }
    // RFC 3834: anything automatic may be a bounce from an MTA with no recognisable subject.
    if let Some(HeaderValue::Text(v)) = message.header("Auto-Submitted") {
        if !v.trim().eq_ignore_ascii_case("no") {
            return Some("Auto-Submitted");
        }
    }
    None
}

/// The header of a whole message, cut down to the fields [`fetch_items`] asks for, as an IMAP
/// server would return it. For tests and for replay.
pub fn header_fields(raw: &[u8], ctx: &Context) -> Vec<u8> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|p| p + 1))
        .unwrap_or(raw.len());
    let wanted = |line: &[u8]| {
        let name = line.split(|b| *b == b':').next().unwrap_or(b"");
        let name = String::from_utf8_lossy(name);
        let name = name.trim();
        FIELDS.iter().any(|f| f.eq_ignore_ascii_case(name))
            || (!ctx.loop_header.is_empty() && ctx.loop_header.eq_ignore_ascii_case(name))
    };
    let mut out = Vec::new();
    let mut keep = false;
    for line in raw[..end].split_inclusive(|b| *b == b'\n') {
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            if keep {
                out.extend_from_slice(line);
            }
            continue;
        }
        keep = wanted(line);
        if keep {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::classify::tests::ctx;
    use proptest::prelude::*;

    static RULES: std::sync::LazyLock<Rules> =
        std::sync::LazyLock::new(|| Rules::builtin().expect("rules"));

    fn judge(header: &str) -> Option<&'static str> {
        needs_body(header.as_bytes(), &RULES, &ctx())
    }

    #[test]
    fn customer_mail_and_newsletters_are_skipped() {
        assert_eq!(
            judge("From: Alice <alice@example.com>\r\nSubject: Invoice 42\r\nContent-Type: text/plain\r\n\r\n"),
            None
        );
        assert_eq!(
            judge("From: news@lists.example.org\r\nSubject: Weekly digest\r\nContent-Type: multipart/alternative; boundary=x\r\nAuto-Submitted: no\r\n\r\n"),
            None
        );
    }

    #[test]
    fn anything_that_can_matter_is_fetched() {
        let cases = [
            ("From: Outlook.com Deliverability Support <olc@microsoft.com>\r\n", "Microsoft sender"),
            ("From: x@mail.support.microsoft.com\r\n", "Microsoft sender"),
            ("From: staff@hotmail.com\r\n", "JMRP sender"),
            ("From: MAILER-DAEMON@mx.example.org\r\n", "bounce sender"),
            ("From: a@b.example\r\nSubject: Fwd: RE: SRX1234567890ID - block\r\n", "ticket id in the subject"),
            ("From: a@b.example\r\nSubject: Undeliverable: hello\r\n", "bounce subject"),
            ("From: a@b.example\r\nContent-Type: multipart/report; report-type=feedback-report\r\n", "multipart/report"),
            ("From: a@b.example\r\nAuto-Submitted: auto-replied\r\n", "Auto-Submitted"),
            ("From: a@b.example\r\nReturn-Path: <>\r\n", "null return path"),
            ("From: a@b.example\r\nX-Postmaster-Bot: 1\r\n", "our loop header"),
            ("From: Dana <postmaster@example.net>\r\n", "our own address"),
            ("From: a@b.example\r\nMessage-ID: <r1@postmaster.example.net>\r\n", "our Message-ID"),
        ];
        for (header, reason) in cases {
            assert_eq!(judge(&format!("{header}\r\n")), Some(reason), "{header}");
        }
    }

    #[test]
    fn header_fields_keeps_only_the_fetched_fields_with_their_continuations() {
        let raw =
            b"Received: from x\r\n\tby y\r\nSubject: a\r\n b\r\nFrom: c@d\r\n\r\nbody From: no\r\n";
        let got = header_fields(raw, &ctx());
        assert_eq!(got, b"Subject: a\r\n b\r\nFrom: c@d\r\n\r\n");
    }

    proptest! {
        #[test]
        fn never_panics_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = needs_body(&bytes, &RULES, &ctx());
            let _ = header_fields(&bytes, &ctx());
        }
    }
}
