//! Persistent reply caps: they live in the store, so a restart does not reset them.

use postmaster_bot::config;
use postmaster_bot::pipeline::decide::Disposition;
use postmaster_bot::shell::engine::{Engine, OutboxStatus};
use postmaster_bot::shell::store::Store;

use crate::support::{fixtures, TEST_CONFIG};

fn engine(extra_policy: &str) -> Engine {
    let text = TEST_CONFIG.replace("mode = \"draft\"", "mode = \"auto\"")
        + &format!("[policy]\n{extra_policy}\n");
    Engine::new(config::parse(&text, "test").expect("valid")).expect("engine")
}

/// d008 (a refusal) made into a refusal on another ticket, with its own Message-ID.
fn refusal(ticket: &str, n: u32) -> Vec<u8> {
    let raw = std::fs::read(fixtures().join("corpus/d008.eml")).expect("fixture");
    String::from_utf8_lossy(&raw)
        .replace("SRX1569221851ID", ticket)
        .replace(
            "CH3PR21MB9986072BF6F670B8599A9D007CAB5A882C56",
            &format!("REFUSAL{n}"),
        )
        .into_bytes()
}

fn reply_disposition(engine: &Engine, store: &mut Store, raw: &[u8], now: i64) -> Disposition {
    let prepared = engine.prepare(raw);
    let handled = engine
        .apply(store, "test", &prepared, now, OutboxStatus::Pending)
        .expect("applies");
    handled
        .produced
        .iter()
        .find(|p| p.template.is_reply())
        .map(|p| p.disposition.clone())
        .expect("a reply was planned")
}

const NOW: i64 = 1_569_332_402; // the refusal's own Date

#[test]
fn the_global_hourly_limit_holds_replies_across_restarts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine("max_replies_per_hour = 2");
    let mut store = crate::support::test_store(dir.path());
    assert_eq!(
        reply_disposition(&engine, &mut store, &refusal("SRX1000000001ID", 1), NOW),
        Disposition::Send
    );
    assert_eq!(
        reply_disposition(
            &engine,
            &mut store,
            &refusal("SRX1000000002ID", 2),
            NOW + 60
        ),
        Disposition::Send
    );
    drop(store);
    let mut store = crate::support::test_store(dir.path());
    match reply_disposition(
        &engine,
        &mut store,
        &refusal("SRX1000000003ID", 3),
        NOW + 120,
    ) {
        Disposition::Hold(reason) => assert!(reason.contains("global reply limit"), "{reason}"),
        other => panic!("not held: {other:?}"),
    }
    // An hour later the limit has room again.
    assert_eq!(
        reply_disposition(
            &engine,
            &mut store,
            &refusal("SRX1000000004ID", 4),
            NOW + 3700
        ),
        Disposition::Send
    );
}

#[test]
fn a_second_reply_on_one_case_within_the_interval_is_held() {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine("max_escalations_per_ticket = 2");
    let mut store = crate::support::test_store(dir.path());
    assert_eq!(
        reply_disposition(&engine, &mut store, &refusal("SRX1000000010ID", 10), NOW),
        Disposition::Send
    );
    match reply_disposition(
        &engine,
        &mut store,
        &refusal("SRX1000000010ID", 11),
        NOW + 3600,
    ) {
        Disposition::Hold(reason) => assert!(reason.contains("less than 24 hours"), "{reason}"),
        other => panic!("not held: {other:?}"),
    }
    let outbox = store.outbox(None).expect("outbox");
    assert!(
        outbox.iter().any(|r| r.status == "held"),
        "held row is recorded: {outbox:?}"
    );
}

#[test]
fn an_unverified_refusal_is_held_and_the_operator_told_in_auto_mode_only() {
    let spoof = std::fs::read(fixtures().join("hostile/h01-spoofed-refusal.eml")).expect("fixture");
    let dir = tempfile::tempdir().expect("temp dir");
    let auto = engine("");
    let auto_dir = dir.path().join("auto");
    std::fs::create_dir(&auto_dir).expect("mkdir");
    let mut store = crate::support::test_store(&auto_dir);
    let prepared = auto.prepare(&spoof);
    let handled = auto
        .apply(&mut store, "spoof", &prepared, NOW, OutboxStatus::Pending)
        .expect("applies");
    assert_eq!(handled.action.as_str(), "none");
    let shapes: Vec<(&str, &str)> = handled
        .produced
        .iter()
        .map(|p| (p.template.name(), p.disposition.as_str()))
        .collect();
    // Never a row that waits on a review folder that auto mode does not have.
    assert_eq!(
        shapes,
        [
            ("escalation_reply", "hold"),
            ("operator_notification", "send")
        ]
    );
    let outbox = store.outbox(None).expect("outbox");
    let reply = outbox
        .iter()
        .find(|r| r.template == "escalation_reply")
        .expect("held reply");
    assert_eq!(reply.status, "held");
    assert!(
        reply
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("unverified sender")),
        "{reply:?}"
    );

    let draft = Engine::new(config::parse(TEST_CONFIG, "test").expect("valid")).expect("engine");
    let draft_dir = dir.path().join("draft");
    std::fs::create_dir(&draft_dir).expect("mkdir");
    let mut store = crate::support::test_store(&draft_dir);
    let prepared = draft.prepare(&spoof);
    let handled = draft
        .apply(&mut store, "spoof", &prepared, NOW, OutboxStatus::Pending)
        .expect("applies");
    assert!(handled.produced.is_empty());
}
