//! Every fixture set is classified and replayed, and each result is compared with its manifest.

use postmaster_bot::pipeline::candidate;
use postmaster_bot::shell::engine::OutboxStatus;
use postmaster_bot::shell::replay;
use postmaster_bot::shell::store::Store;

use crate::support::{engine, fixtures, manifest};

pub(crate) fn check_classify(set: &str) {
    let engine = engine();
    let mut failures = Vec::new();
    for row in manifest(set) {
        let path = fixtures().join(set).join(&row.file);
        let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let v = engine.prepare(&raw).verdict;
        let mut ips = v.ips.clone();
        ips.sort();
        let got = (
            v.kind.as_str().to_string(),
            v.ticket_id.clone().unwrap_or_default(),
            ips,
        );
        let want = (row.kind.clone(), row.ticket_id.clone(), row.ips());
        if got != want {
            failures.push(format!(
                "{}: want {want:?}\n      got  {got:?}\n      evidence {:?}",
                row.file, v.evidence
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{set}: {} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Replays the set; with `header_first`, a message the header filter skips is never applied,
/// as in the daemon's catch-up, and must be one that needs no action.
pub(crate) fn check_replay(set: &str, header_first: bool) {
    let engine = engine();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = Store::open(&dir.path().join("state.sqlite3")).expect("store opens");
    let mut failures = Vec::new();
    for row in manifest(set) {
        let path = fixtures().join(set).join(&row.file);
        let raw = std::fs::read(&path).expect("fixture readable");
        if header_first {
            let header = candidate::header_fields(&raw, &engine.config.classify);
            if candidate::needs_body(&header, &engine.rules, &engine.config.classify).is_none() {
                if row.kind != "other" || row.expect_action != "none" {
                    failures.push(format!(
                        "{}: skipped by the header filter, but it is {} with action {}",
                        row.file, row.kind, row.expect_action
                    ));
                }
                continue;
            }
        }
        let prepared = engine.prepare(&raw);
        let now = prepared.inbound.date.unwrap_or(0);
        let handled = engine
            .apply(
                &mut store,
                &row.file,
                &prepared,
                now,
                OutboxStatus::Replayed,
            )
            .unwrap_or_else(|e| panic!("{}: {e}", row.file));
        if handled.action.as_str() != row.expect_action {
            failures.push(format!(
                "{}: want {} got {} ({})",
                row.file, row.expect_action, handled.action, handled.reason
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{set}: {} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn corpus_kinds_tickets_and_ips_match_the_manifest() {
    check_classify("corpus");
}

#[test]
fn corpus_replay_in_name_order_gives_the_expected_actions() {
    check_replay("corpus", false);
}

#[test]
fn header_first_sync_fetches_every_message_that_matters_in_the_corpus() {
    check_replay("corpus", true);
}

#[test]
fn header_first_sync_fetches_every_message_that_matters_in_the_variants() {
    check_replay("variants", true);
}

#[test]
fn variants_kinds_tickets_and_ips_match_the_manifest() {
    check_classify("variants");
}

#[test]
fn variants_replay_gives_the_expected_actions() {
    check_replay("variants", false);
}

#[test]
fn replaying_the_same_folder_twice_changes_nothing() {
    let engine = engine();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = Store::open(&dir.path().join("state.sqlite3")).expect("store opens");
    let corpus = vec![fixtures().join("corpus")];
    let mut sink = Vec::new();
    let first = replay::run(
        &engine,
        &mut store,
        &corpus,
        None,
        replay::Format::Json,
        &mut sink,
    )
    .expect("replay runs");
    let outbox_after_first = store.outbox(None).expect("outbox").len();
    let cases_after_first = store.cases().expect("cases").len();
    let mut sink2 = Vec::new();
    replay::run(
        &engine,
        &mut store,
        &corpus,
        None,
        replay::Format::Json,
        &mut sink2,
    )
    .expect("replay runs again");
    assert_eq!(first.failed, 0);
    assert_eq!(
        store.outbox(None).expect("outbox").len(),
        outbox_after_first
    );
    assert_eq!(store.cases().expect("cases").len(), cases_after_first);
    let text = String::from_utf8(sink2).expect("utf-8");
    assert!(
        text.lines().all(|l| l.contains("\"duplicate\":true")),
        "{text}"
    );
}
