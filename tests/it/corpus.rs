//! Every fixture set is classified and replayed, and each result is compared with its manifest.

use postmaster_bot::pipeline::candidate;
use postmaster_bot::shell::replay;

use crate::support::{apply_at_its_date, engine, fixtures, manifest};

pub(crate) fn check_classify(set: &str) {
    let engine = engine();
    let mut failures = Vec::new();
    let with_providers = manifest_has_column(set, "provider");
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
        if with_providers {
            let got = (
                v.provider().map(str::to_string),
                v.bounce.as_ref().and_then(|b| b.block_code.clone()),
            );
            let want = (row.provider.clone(), row.block_code.clone());
            if got != want {
                failures.push(format!(
                    "{}: want provider and code {want:?}\n      got  {got:?}\n      evidence {:?}",
                    row.file, v.evidence
                ));
            }
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
    let mut store = crate::support::test_store(dir.path());
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
        let handled = apply_at_its_date(&engine, &mut store, &row.file, &prepared)
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

fn manifest_has_column(set: &str, column: &str) -> bool {
    let path = fixtures().join(set).join("manifest.csv");
    csv::Reader::from_path(&path)
        .and_then(|mut r| r.headers().map(|h| h.iter().any(|c| c == column)))
        .unwrap_or(false)
}

/// Two sets by two authors blind to the rules; the second was first run after the rules were
/// written for the first (20 of 26 right; its misses were fixed in general: transcript
/// markers before reply codes, receiving servers' addresses by their context).
#[test]
fn other_receivers_kinds_providers_codes_and_ips_match_the_manifest() {
    check_classify("receivers");
    check_classify("receivers2");
}

#[test]
fn other_receivers_blocks_open_one_case_per_provider_and_ip_and_plain_bounces_none() {
    check_replay("receivers", true);
    check_replay("receivers2", true);
}

/// With `[rules] other_receivers = false` another receiver's block is a bounce that needs no
/// action, as in a Microsoft-only desk; its provider is still named.
#[test]
fn other_receivers_switched_off_open_nothing() {
    let config = format!(
        "{}\n[rules]\nother_receivers = false\n",
        crate::support::TEST_CONFIG
    );
    let engine = crate::support::engine_with(&config);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = crate::support::test_store(dir.path());
    for row in manifest("receivers") {
        let raw = std::fs::read(fixtures().join("receivers").join(&row.file)).expect("fixture");
        let prepared = engine.prepare(&raw);
        let handled = apply_at_its_date(&engine, &mut store, &row.file, &prepared)
            .unwrap_or_else(|e| panic!("{}: {e}", row.file));
        assert_eq!(handled.action.as_str(), "none", "{}", row.file);
        assert_eq!(
            prepared.verdict.provider().map(str::to_string),
            row.provider,
            "{}",
            row.file
        );
    }
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
    let mut store = crate::support::test_store(dir.path());
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

/// Rates over a fixture set, as `../shared/tools/check-corpus` scores them.
#[derive(Debug, Default)]
struct Scores {
    n: usize,
    kind: usize,
    ticket: usize,
    ips: usize,
    action: usize,
    false_escalations: Vec<String>,
    silent: Vec<String>,
    misses: Vec<String>,
}

fn score_set(set: &str) -> Scores {
    let engine = engine();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = crate::support::test_store(dir.path());
    let mut s = Scores::default();
    for row in manifest(set) {
        let raw = std::fs::read(fixtures().join(set).join(&row.file)).expect("fixture");
        let prepared = engine.prepare(&raw);
        let v = &prepared.verdict;
        let mut ips = v.ips.clone();
        ips.sort();
        s.n += 1;
        let miss = |what: &str, s: &mut Scores| s.misses.push(format!("{} {what}", row.file));
        if v.kind.as_str() == row.kind {
            s.kind += 1;
        } else {
            miss(&format!("kind {} (want {})", v.kind, row.kind), &mut s);
        }
        if v.ticket_id.clone().unwrap_or_default() == row.ticket_id {
            s.ticket += 1;
        } else {
            miss("ticket", &mut s);
        }
        if ips == row.ips() {
            s.ips += 1;
        } else {
            miss(&format!("ips {ips:?}"), &mut s);
        }
        let handled =
            apply_at_its_date(&engine, &mut store, &row.file, &prepared).expect("applies");
        let action = handled.action.as_str();
        if action == row.expect_action {
            s.action += 1;
        } else {
            miss(
                &format!("action {action} (want {})", row.expect_action),
                &mut s,
            );
        }
        if action == "draft_escalation_reply" && row.expect_action != action {
            s.false_escalations.push(row.file.clone());
        }
        if row.expect_action == "notify_operator"
            && matches!(action, "none" | "close_case" | "open_case")
        {
            s.silent.push(row.file.clone());
        }
    }
    s
}

/// Messages composed blind to the rules (other wordings, languages, MIME shapes): the targets
/// of issue #11 hold, and nothing unsafe happens on either set.
#[test]
fn recognition_holds_on_mail_composed_blind_to_the_rules() {
    for (set, targets) in [("blind1", true), ("blind2", true)] {
        let s = score_set(set);
        let rate = |x: usize| x as f64 / s.n as f64;
        println!(
            "{set}: n={} kind={:.3} ticket={:.3} ips={:.3} action={:.3} misses={:?}",
            s.n,
            rate(s.kind),
            rate(s.ticket),
            rate(s.ips),
            rate(s.action),
            s.misses
        );
        assert!(
            s.false_escalations.is_empty(),
            "{set}: false escalations {:?}",
            s.false_escalations
        );
        assert!(
            s.silent.is_empty(),
            "{set}: left without a notification {:?}",
            s.silent
        );
        assert!(rate(s.action) >= 0.95, "{set}: actions {:?}", s.misses);
        if targets {
            assert!(rate(s.kind) >= 0.97, "{set}: {:?}", s.misses);
            assert!(rate(s.ticket) >= 0.97, "{set}: {:?}", s.misses);
            assert!(rate(s.ips) >= 0.95, "{set}: {:?}", s.misses);
            assert!(rate(s.action) >= 0.97, "{set}: {:?}", s.misses);
        }
    }
}

#[test]
fn header_first_sync_fetches_every_message_that_matters_in_the_blind_sets() {
    for set in ["blind1", "blind2"] {
        let engine = engine();
        for row in manifest(set) {
            let raw = std::fs::read(fixtures().join(set).join(&row.file)).expect("fixture");
            let header = candidate::header_fields(&raw, &engine.config.classify);
            if candidate::needs_body(&header, &engine.rules, &engine.config.classify).is_none() {
                assert!(
                    row.kind == "other" && row.expect_action == "none",
                    "{set}/{}: skipped by the header filter, but it is {} with action {}",
                    row.file,
                    row.kind,
                    row.expect_action
                );
            }
        }
    }
}
