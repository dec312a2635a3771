//! Mail written by strangers: spoofs, forged bounces, forged headers and floods. Each test is one
//! finding of the security review of auto mode; the crafted messages are `fixtures/hostile`.

use postmaster_bot::config;
use postmaster_bot::pipeline::decide::Disposition;
use postmaster_bot::shell::engine::{Engine, Handled, OutboxStatus};
use postmaster_bot::shell::store::Store;

use crate::corpus::{check_classify, check_replay};
use crate::support::{fixtures, TEST_CONFIG};

fn auto_engine(extra: &str) -> Engine {
    let text = TEST_CONFIG.replace("mode = \"draft\"", "mode = \"auto\"") + extra;
    Engine::new(config::parse(&text, "test").expect("valid")).expect("engine")
}

fn read(path: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Applies messages in order, each at its own Date (or one minute after the previous one).
fn apply_all(engine: &Engine, store: &mut Store, messages: &[Vec<u8>]) -> Vec<Handled> {
    let mut now = 0;
    messages
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            let prepared = engine.prepare(raw);
            now = prepared.inbound.date.unwrap_or(now + 60).max(now + 1);
            engine
                .apply(
                    store,
                    &format!("m{i}"),
                    &prepared,
                    now,
                    OutboxStatus::Pending,
                )
                .expect("applies")
        })
        .collect()
}

fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = crate::support::test_store(dir.path());
    (dir, store)
}

fn reply_of(handled: &Handled) -> Option<&postmaster_bot::shell::engine::Produced> {
    handled.produced.iter().find(|p| p.template.is_reply())
}

/// A copy of a message with a new Message-ID, so it is not deduplicated.
fn renamed(raw: &[u8], n: usize) -> Vec<u8> {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::new();
    for line in text.split_inclusive('\n') {
        if line.to_ascii_lowercase().starts_with("message-id:") {
            out.push_str(&format!("Message-ID: <copy-{n}@copies.example>\n"));
        } else {
            out.push_str(line);
        }
    }
    out.into_bytes()
}

#[test]
fn hostile_fixtures_match_their_manifest() {
    check_classify("hostile");
    check_replay("hostile", false);
}

/// Finding 2: spoofs are held and counted nowhere, so they cannot use up the reply limit.
#[test]
fn ten_spoofs_do_not_hold_a_real_reply() {
    let engine = auto_engine("[policy]\nmax_replies_per_hour = 2\n");
    let (_dir, mut store) = temp_store();
    let spoof = read("hostile/h01-spoofed-refusal.eml");
    let mut messages: Vec<Vec<u8>> = (0..10).map(|n| renamed(&spoof, n)).collect();
    messages.push(read("corpus/d008.eml"));
    let handled = apply_all(&engine, &mut store, &messages);
    for h in &handled[..10] {
        assert_eq!(h.action.as_str(), "none");
        let reply = reply_of(h).expect("the reply a spoof would get is kept, held");
        assert!(
            matches!(&reply.disposition, Disposition::Hold(r) if r.contains("unverified sender")),
            "{:?}",
            reply.disposition
        );
    }
    // The operator hears of the first spoof; the others wait behind the rate limit.
    let told = handled[..10]
        .iter()
        .flat_map(|h| &h.produced)
        .filter(|p| !p.template.is_reply() && p.disposition == Disposition::Send)
        .count();
    assert_eq!(told, 1);
    let real = &handled[10];
    assert_eq!(real.action.as_str(), "draft_escalation_reply");
    assert_eq!(
        reply_of(real).expect("reply").disposition,
        Disposition::Send
    );
}

/// Finding 3: a forged bounce's words never reach Microsoft; only our own MTA's evidence,
/// reduced to codes and Microsoft's own words, is quoted.
#[test]
fn a_forged_bounce_never_reaches_microsoft() {
    let engine = auto_engine("");
    let (_dir, mut store) = temp_store();
    let handled = apply_all(
        &engine,
        &mut store,
        &[
            read("corpus/d006.eml"),
            read("corpus/d007.eml"),
            read("hostile/h02-forged-bounce-with-instructions.eml"),
            read("corpus/d008.eml"),
        ],
    );
    let reply = reply_of(&handled[3]).expect("escalation reply");
    assert_eq!(reply.disposition, Disposition::Send);
    let text = String::from_utf8_lossy(&reply.outgoing.as_ref().expect("composed").bytes)
        .replace("=\r\n", "")
        .replace("\r\n", "\n");
    for forbidden in [
        "attacker",
        "disregard",
        "UPDATE FROM THE SENDER",
        "http://",
        "close this ticket",
    ] {
        assert!(
            !text.contains(forbidden),
            "{forbidden:?} reached Microsoft:\n{text}"
        );
    }
    assert!(
        reply.body.contains(
            "550 5.7.1 Unfortunately, messages from [192.0.2.25] weren't sent. ... part of their network is on our block list (S3140)"
        ),
        "our own MTA's evidence is quoted:\n{}",
        reply.body
    );

    // Without our own bounce, the forged one alone gives nothing to quote at all.
    let (_dir, mut store) = temp_store();
    let handled = apply_all(
        &engine,
        &mut store,
        &[
            read("hostile/h02-forged-bounce-with-instructions.eml"),
            read("corpus/d007.eml"),
            read("corpus/d008.eml"),
        ],
    );
    let forged = &handled[0];
    assert_eq!(forged.action.as_str(), "open_case");
    let reply = reply_of(&handled[2]).expect("escalation reply");
    assert!(!reply.body.contains("550"), "{}", reply.body);
    assert!(!reply.body.contains("attacker"), "{}", reply.body);
    // The operator still sees the bounce's own words, marked as unverified.
    let note = forged
        .produced
        .iter()
        .find(|p| !p.template.is_reply())
        .expect("new-case notification");
    assert!(note.body.contains("not verified"), "{}", note.body);
    assert!(
        note.body.contains("attacker.example/login"),
        "{}",
        note.body
    );
}

/// Finding 5: a reply never goes outside Microsoft's domains, whatever Reply-To says; the held
/// reply is not counted as an escalation and the operator is told.
#[test]
fn a_reply_to_outside_microsofts_domains_is_held() {
    let engine = auto_engine("");
    let (dir, mut store) = temp_store();
    let handled = apply_all(
        &engine,
        &mut store,
        &[
            read("corpus/d007.eml"),
            read("hostile/h04-reply-to-outside-microsoft.eml"),
        ],
    );
    let h = &handled[1];
    assert_eq!(h.action.as_str(), "draft_escalation_reply");
    match &reply_of(h).expect("reply").disposition {
        Disposition::Hold(r) => assert!(r.contains("escalations@attacker.example"), "{r}"),
        other => panic!("not held: {other:?}"),
    }
    let note = h
        .produced
        .iter()
        .find(|p| !p.template.is_reply())
        .expect("the operator is told about the held reply");
    assert_eq!(note.disposition, Disposition::Send);
    assert!(note.body.contains("was NOT sent"), "{}", note.body);
    let case = store
        .case(h.case_id.expect("case"))
        .expect("reads")
        .expect("case");
    assert_eq!(case.escalations, 0, "a held reply is not an escalation");
    assert_eq!(case.state.as_str(), "needs_operator");
    drop(store);

    // Releasing it by hand is refused too: the address is outside Microsoft's domains.
    let held = reply_of(h).expect("reply").outbox_id.to_string();
    let state = crate::support::state_argument(dir.path());
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_postmaster-bot"))
        .args(["queue", "release", &held, "--state", &state])
        .output()
        .expect("runs");
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("outside trust.microsoft_domains"), "{err}");
}

/// Finding 7: forged "own mail" on the thread changes nothing; our own reply, known to the
/// outbox, does count.
#[test]
fn forged_own_mail_does_not_change_the_next_refusal() {
    let engine = auto_engine("");
    let (_dir, mut store) = temp_store();
    let handled = apply_all(
        &engine,
        &mut store,
        &[
            read("corpus/d007.eml"),
            read("hostile/h05-forged-own-reply.eml"),
            read("corpus/d008.eml"),
        ],
    );
    assert_eq!(handled[1].action.as_str(), "none");
    assert_eq!(handled[1].case_id, None, "the forgery joins no case");
    assert_eq!(handled[2].action.as_str(), "draft_escalation_reply");

    // Our real reply seen again (a Bcc copy) is ours because the outbox sent it.
    let (_dir, mut store) = temp_store();
    let handled = apply_all(
        &engine,
        &mut store,
        &[read("corpus/d007.eml"), read("corpus/d008.eml")],
    );
    let ours = reply_of(&handled[1])
        .and_then(|p| p.outgoing.clone())
        .expect("reply");
    let refusal_again = renamed(&read("corpus/d008.eml"), 99);
    let again = apply_all(&engine, &mut store, &[ours.bytes.clone(), refusal_again]);
    assert_eq!(
        again[0].case_id, handled[1].case_id,
        "our copy joins the case"
    );
    assert_eq!(again[1].action.as_str(), "notify_operator");
}

/// Finding 4: trust comes only from our MX's own header, read by the grammar, for the single
/// From's domain, above every foreign hop.
#[test]
fn forged_authentication_results_are_untrusted() {
    let engine = auto_engine("");
    for file in [
        "hostile/h03-escaped-quote-authres.eml",
        "hostile/h06-authres-below-foreign-hop.eml",
        "hostile/h07-dmarc-for-another-domain.eml",
    ] {
        let v = engine.prepare(&read(file)).verdict;
        assert!(!v.trusted, "{file}: {:?}", v.evidence);
        assert_eq!(v.kind.as_str(), "other", "{file}");
    }
}

/// A forged bounce listing tens of thousands of IPs inside our networks (about 2 MB).
fn ip_flood(n: usize) -> Vec<u8> {
    let mut list = String::new();
    for i in 0..n {
        list.push_str(&format!(
            "[2001:db8:{:x}:{:x}::25]\n",
            i / 65536 + 1,
            i % 65536
        ));
    }
    format!(
        "Return-Path: <>\nFrom: MAILER-DAEMON@flood.evil.example (Mail Delivery System)\nTo: postmaster@example.net\nSubject: Undelivered Mail Returned to Sender\nDate: Tue, 24 Sep 2019 13:50:02 +0000\nMessage-ID: <flood@flood.evil.example>\nContent-Type: text/plain\n\nThis is the mail system at host flood.evil.example.\n\n<u@hotmail.com>: host hotmail-com.olc.protection.outlook.com[104.47.18.161]\n    said: 550 5.7.1 messages from these addresses weren't sent: part of their network is on our block list (S3140)\n{list}"
    )
    .into_bytes()
}

/// Finding 6: work and state per message are bounded. (CPU time is measured by
/// `scripts/bench-hostile`, not here.)
#[test]
fn an_ip_flood_is_capped_and_the_state_stays_small() {
    let engine = auto_engine("");
    let engine = Engine::new({
        let mut c = engine.config.clone();
        c.classify.our_networks = vec!["2001:db8::/32".parse().expect("net")];
        c
    })
    .expect("engine");
    let raw = ip_flood(90_000);
    assert!(raw.len() > 1_900_000, "{}", raw.len());
    // The file's size is what is measured: this one is SQLite whatever the suite runs on.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = Store::open(&dir.path().join("state.sqlite3")).expect("store");
    let handled = apply_all(&engine, &mut store, &[raw]);
    let h = &handled[0];
    assert_eq!(h.action.as_str(), "open_case");
    let case = store
        .case(h.case_id.expect("case"))
        .expect("reads")
        .expect("case");
    assert_eq!(case.ips.len(), 256);
    let prepared = engine.prepare(&ip_flood(90_000));
    assert_eq!(prepared.verdict.ips.len(), 256);
    assert_eq!(prepared.verdict.ips_omitted, 90_000 - 256);
    let note = h
        .produced
        .iter()
        .find(|p| !p.template.is_reply())
        .expect("notification");
    assert!(note.body.len() < 64 * 1024, "{}", note.body.len());
    drop(store);
    let size = std::fs::metadata(dir.path().join("state.sqlite3"))
        .expect("state")
        .len()
        + std::fs::metadata(dir.path().join("state.sqlite3-wal")).map_or(0, |m| m.len());
    assert!(size < 1_000_000, "state is {size} bytes");
}

/// Finding 6: forged bounces that each name a new IP open cases, but the operator gets one
/// notification per interval from all unauthenticated senders together.
#[test]
fn new_case_notifications_from_strangers_are_rate_limited() {
    let engine = auto_engine("");
    let (_dir, mut store) = temp_store();
    let template =
        String::from_utf8_lossy(&read("hostile/h02-forged-bounce-with-instructions.eml"))
            .into_owned();
    let messages: Vec<Vec<u8>> = (0..20)
        .map(|i| {
            template
                .replace("192.0.2.25", &format!("198.51.100.{}", i + 1))
                .replace("forged-bounce-0002", &format!("forged-bounce-{i}"))
                .replace(
                    "From: MAILER-DAEMON@out1.example.net",
                    &format!("From: MAILER-DAEMON@mta{i}.evil{i}.example"),
                )
                .into_bytes()
        })
        .collect();
    let handled = apply_all(&engine, &mut store, &messages);
    assert!(handled.iter().all(|h| h.action.as_str() == "open_case"));
    let sent: Vec<_> = handled
        .iter()
        .flat_map(|h| &h.produced)
        .filter(|p| p.disposition == Disposition::Send)
        .collect();
    assert_eq!(sent.len(), 1, "one notification for twenty forged cases");
    let held = handled
        .iter()
        .flat_map(|h| &h.produced)
        .filter(|p| matches!(&p.disposition, Disposition::Hold(r) if r.contains("per 10 minutes")))
        .count();
    assert_eq!(held, 19);
}

/// A reply held by a cap can be released by the operator, once; released, it counts as the
/// escalation it is.
#[test]
fn a_held_reply_is_released_once_and_then_counts() {
    let engine = auto_engine("[policy]\nmax_replies_per_hour = 1\n");
    let (dir, mut store) = temp_store();
    let refusal = |ticket: &str, n: usize| {
        renamed(
            String::from_utf8_lossy(&read("corpus/d008.eml"))
                .replace("SRX1569221851ID", ticket)
                .as_bytes(),
            n,
        )
    };
    let handled = apply_all(
        &engine,
        &mut store,
        &[refusal("SRX1000000001ID", 1), refusal("SRX1000000002ID", 2)],
    );
    assert_eq!(
        reply_of(&handled[0]).expect("reply").disposition,
        Disposition::Send
    );
    let held = reply_of(&handled[1]).expect("reply");
    assert!(matches!(&held.disposition, Disposition::Hold(r) if r.contains("global reply limit")));
    let case_id = handled[1].case_id.expect("case");
    assert_eq!(
        store
            .case(case_id)
            .expect("reads")
            .expect("case")
            .escalations,
        0
    );
    drop(store);

    let state = crate::support::state_argument(dir.path());
    let id = held.outbox_id.to_string();
    let bot = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_postmaster-bot"))
            .args(args)
            .output()
            .expect("runs")
    };
    let list = bot(&["queue", "list", "--state", &state]);
    let listing = String::from_utf8_lossy(&list.stdout);
    assert!(
        listing.contains("held:") && listing.contains("global reply limit"),
        "{listing}"
    );
    let ok = bot(&["queue", "release", &id, "--state", &state]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let again = bot(&["queue", "release", &id, "--state", &state]);
    assert_eq!(again.status.code(), Some(2), "a release applies once");
    let store = crate::support::test_store(dir.path());
    let case = store.case(case_id).expect("reads").expect("case");
    assert_eq!(case.escalations, 1);
    assert_eq!(case.state.as_str(), "escalated");
    let row = store
        .outbox_item(held.outbox_id)
        .expect("reads")
        .expect("row");
    assert_eq!(row.status, "approved");
}
