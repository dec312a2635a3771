//! Rendered mail is snapshotted (insta), so every template or composition change is reviewed.

use postmaster_bot::pipeline::case;
use postmaster_bot::pipeline::decide::{self, Mode, NotifyOn};
use postmaster_bot::pipeline::render::{self, IdentityView};

use crate::support::{apply_at_its_date, engine, fixtures, manifest};

fn produced_mail(set: &str) -> Vec<(String, String)> {
    let engine = engine();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = crate::support::test_store(dir.path());
    let mut out = Vec::new();
    for row in manifest(set) {
        let raw = std::fs::read(fixtures().join(set).join(&row.file)).expect("fixture readable");
        let prepared = engine.prepare(&raw);
        let handled =
            apply_at_its_date(&engine, &mut store, &row.file, &prepared).expect("applies");
        for p in handled.produced {
            if let Some(o) = p.outgoing {
                let name = format!(
                    "{set}-{}-{}",
                    row.file.trim_end_matches(".eml"),
                    p.template.name()
                );
                out.push((name, readable(&o.bytes)));
            }
        }
    }
    out
}

/// The header block as written, then the decoded text: what a reviewer reads. Parsing the
/// bytes back also checks that the composed message is well formed.
fn readable(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes).replace("\r\n", "\n");
    let headers = text.split("\n\n").next().unwrap_or_default().to_string();
    let parsed = mail_parser::MessageParser::default()
        .parse(bytes)
        .expect("composed mail parses");
    let body = parsed.body_text(0).expect("composed mail has a text body");
    format!("{headers}\n\n{body}")
}

#[test]
fn corpus_replies_and_notifications() {
    let mail = produced_mail("corpus");
    assert!(mail.iter().any(|(n, _)| n.ends_with("escalation_reply")));
    for (name, text) in mail {
        insta::assert_snapshot!(name, text);
    }
}

#[test]
fn followup_after_a_silent_week() {
    let engine = engine();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = crate::support::test_store(dir.path());
    let mut last_case = None;
    for file in ["d029.eml", "d030.eml", "d031.eml"] {
        let raw = std::fs::read(fixtures().join("corpus").join(file)).expect("fixture");
        let prepared = engine.prepare(&raw);
        let handled = apply_at_its_date(&engine, &mut store, file, &prepared).expect("applies");
        last_case = handled.case_id;
    }
    let case = store
        .case(last_case.expect("a case"))
        .expect("store reads")
        .expect("case exists");
    let policy = &engine.config.policy;
    let week_later = case.last_escalated_at.expect("escalated") + 7 * 86_400;
    let early = case::tick(&case, policy, week_later - 3600);
    assert_eq!(early.action, case::Action::None);
    let t = case::tick(&case, policy, week_later);
    assert_eq!(t.action, case::Action::DraftFollowup);
    let plans = decide::plan(
        &t,
        None,
        &decide::Situation {
            mode: Mode::Approve,
            notify_on: NotifyOn::default(),
            has_operator: true,
            stale: false,
            cap: None,
            microsoft_domains: &engine.config.classify.microsoft_domains,
        },
    );
    assert_eq!(plans[0].disposition, decide::Disposition::Queue);
    let ctx = render::context(
        &t,
        None,
        None,
        IdentityView {
            name: engine.config.identity.name.clone(),
            address: engine.config.identity.address.clone(),
            organization: engine.config.identity.organization.clone(),
        },
        Mode::Approve,
        week_later,
    );
    let draft = engine
        .templates
        .render(decide::Template::Followup, &ctx)
        .expect("renders");
    insta::assert_snapshot!("followup_body", draft.body);
    let again = case::tick(
        t.case.as_ref().expect("case"),
        policy,
        week_later + 30 * 86_400,
    );
    assert_eq!(again.action, case::Action::None, "one follow-up only");
}

#[test]
fn variants_replies_and_notifications() {
    let mail = produced_mail("variants");
    let reply = |file: &str| {
        mail.iter()
            .find(|(n, _)| n == &format!("variants-{file}-escalation_reply"))
            .map(|(_, t)| t.clone())
            .unwrap_or_else(|| panic!("no escalation reply for {file}"))
    };
    // A mixed result escalates only the refused IP.
    let mixed = reply("v05");
    assert!(mixed.contains("mail from 203.0.113.30 to"), "{mixed}");
    assert!(!mixed.contains("203.0.113.31 to"), "{mixed}");
    // A reply goes to Reply-To when Microsoft sets one.
    assert!(reply("v23")
        .contains("To: \"Outlook.com Deliverability Support\" <olcdeliverability@microsoft.com>"));
    for (name, text) in mail {
        insta::assert_snapshot!(name, text);
    }
}

#[test]
fn html_only_mixed_table_escalates_only_the_refused_ip() {
    let mail = produced_mail("variants");
    let (_, reply) = mail
        .iter()
        .find(|(n, _)| n == "variants-v26-escalation_reply")
        .expect("escalation reply for v26");
    assert!(reply.contains("mail from 198.51.100.161 to"), "{reply}");
    assert!(!reply.contains("198.51.100.160"), "{reply}");
}

/// A notification of another receiver's block carries the provider's playbook: T-Online's
/// request by mail, Spamhaus's self-service page, Gmail's "no delisting as such".
#[test]
fn other_receivers_notifications_carry_the_playbook() {
    let mail = produced_mail("receivers");
    for file in ["r01", "r03", "r04"] {
        let (name, text) = mail
            .iter()
            .find(|(n, _)| n.starts_with(&format!("receivers-{file}-")))
            .unwrap_or_else(|| panic!("{file} produced a notification"));
        insta::assert_snapshot!(name.as_str(), text);
    }
}
