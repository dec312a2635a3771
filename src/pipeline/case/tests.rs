use super::*;
use crate::pipeline::classify::{Bounce, Evidence, IpOutcome, Origin};

fn verdict(kind: Kind, ticket: Option<&str>, ips: &[&str]) -> Verdict {
    let bounce = matches!(kind, Kind::NdrMsBlocklist | Kind::NdrOther).then(|| Bounce {
        cause: if kind == Kind::NdrMsBlocklist {
            "outlook_blocklist".into()
        } else {
            "ms_reputation_throttle".into()
        },
        channel: (kind == Kind::NdrMsBlocklist).then_some(Channel::Outlook),
        notify: kind == Kind::NdrOther,
        diagnostic: "550 5.7.1 ... (S3140)".into(),
        status: Some("5.7.1".into()),
        reporter: None,
        own_mta: false,
        quote: None,
        provider: Some("outlook".into()),
        block_code: None,
        block: false,
    });
    Verdict {
        kind,
        ticket_id: ticket.map(str::to_string),
        ips: ips.iter().map(|s| s.to_string()).collect(),
        outcomes: vec![],
        trusted: kind.is_microsoft_support(),
        origin: if kind.is_microsoft_support() {
            Origin::Microsoft
        } else {
            Origin::Bounce
        },
        bounce,
        loop_risk: None,
        claimed_kind: None,
        own_claim: None,
        ips_omitted: 0,
        confidence: 1.0,
        runner_up: None,
        uncertain: None,
        evidence: vec![Evidence::new("test", String::new())],
    }
}

fn arrival(n: usize) -> Arrival {
    Arrival {
        message_id: Some(format!("m{n}@microsoft.com")),
        parent: Parent {
            message_id: Some(format!("m{n}@microsoft.com")),
            subject: "RE: SRX1ID".into(),
            reply_to: Some("support@microsoft.com".into()),
            ..Parent::default()
        },
    }
}

/// Runs messages through one case in order, as the store would (a found case is passed back
/// in), and checks each (action, state).
#[track_caller]
fn check_sequence(steps: &[(Verdict, Action, Option<State>)]) -> Option<Case> {
    let policy = Policy::default();
    let mut case: Option<Case> = None;
    for (n, (v, action, state)) in steps.iter().enumerate() {
        let t = step(
            case.clone(),
            v,
            &arrival(n),
            &policy,
            1_000 + n as i64 * 3600,
        );
        assert_eq!(
            (t.action, t.case.as_ref().map(|c| c.state)),
            (*action, *state),
            "step {n} ({}): {}",
            v.kind,
            t.reason
        );
        if let Some(mut c) = t.case {
            if c.id == 0 {
                c.id = 1;
            }
            case = Some(c);
        }
    }
    case
}

#[test]
fn the_classic_thread() {
    let c = check_sequence(&[
        (
            verdict(Kind::NdrMsBlocklist, None, &["192.0.2.1"]),
            Action::OpenCase,
            Some(State::Blocked),
        ),
        (
            verdict(Kind::NdrMsBlocklist, None, &["192.0.2.1"]),
            Action::None,
            Some(State::Blocked),
        ),
        (
            verdict(Kind::MsAck, Some("SRX1ID"), &["192.0.2.1"]),
            Action::None,
            Some(State::AwaitingResult),
        ),
        (
            verdict(Kind::MsNotQualified, Some("SRX1ID"), &["192.0.2.1"]),
            Action::DraftEscalationReply,
            Some(State::Escalated),
        ),
        (
            verdict(Kind::MsEscalated, Some("SRX1ID"), &[]),
            Action::None,
            Some(State::Escalated),
        ),
        (
            verdict(Kind::MsResolved, Some("SRX1ID"), &[]),
            Action::CloseCase,
            Some(State::Closed),
        ),
    ]);
    let c = c.expect("case");
    assert_eq!(c.ticket_id.as_deref(), Some("SRX1ID"));
    assert_eq!(c.escalations, 1);
}

#[test]
fn a_second_refusal_goes_to_a_person() {
    check_sequence(&[
        (
            verdict(Kind::MsNotQualified, Some("SRX1ID"), &["192.0.2.1"]),
            Action::DraftEscalationReply,
            Some(State::Escalated),
        ),
        (
            verdict(Kind::MsNotQualified, Some("SRX1ID"), &["192.0.2.1"]),
            Action::NotifyOperator,
            Some(State::NeedsOperator),
        ),
        (
            verdict(Kind::MsNotQualified, Some("SRX1ID"), &["192.0.2.1"]),
            Action::NotifyOperator,
            Some(State::NeedsOperator),
        ),
    ]);
}

#[test]
fn our_reply_seen_counts_as_an_escalation() {
    let mut own = verdict(Kind::Other, Some("SRX1ID"), &[]);
    own.origin = Origin::Own;
    check_sequence(&[
        (
            verdict(Kind::MsAck, Some("SRX1ID"), &["192.0.2.1"]),
            Action::None,
            Some(State::AwaitingResult),
        ),
        (own, Action::None, Some(State::AwaitingResult)),
        (
            verdict(Kind::MsNotQualified, Some("SRX1ID"), &["192.0.2.1"]),
            Action::NotifyOperator,
            Some(State::NeedsOperator),
        ),
    ]);
}

#[test]
fn partial_mitigation_keeps_the_case_open() {
    let mut partial = verdict(Kind::MsMitigated, Some("SRX1ID"), &["192.0.2.1"]);
    partial.outcomes = vec![IpOutcome {
        ip: "192.0.2.1".into(),
        outcome: Outcome::Mitigated,
    }];
    check_sequence(&[
        (
            verdict(Kind::MsAck, Some("SRX1ID"), &["192.0.2.1", "192.0.2.2"]),
            Action::None,
            Some(State::AwaitingResult),
        ),
        (partial, Action::NotifyOperator, Some(State::NeedsOperator)),
        (
            verdict(
                Kind::MsMitigated,
                Some("SRX1ID"),
                &["192.0.2.2", "192.0.2.1"],
            ),
            Action::CloseCase,
            Some(State::Closed),
        ),
    ]);
}

#[test]
fn operator_kinds_and_notices() {
    check_sequence(&[(
        verdict(
            Kind::MsConditionallyMitigated,
            Some("SRX1ID"),
            &["192.0.2.1"],
        ),
        Action::NotifyOperator,
        Some(State::NeedsOperator),
    )]);
    check_sequence(&[(
        verdict(Kind::MsInfoRequested, Some("SRX1ID"), &[]),
        Action::NotifyOperator,
        Some(State::NeedsOperator),
    )]);
    check_sequence(&[(
        verdict(Kind::MsOther, Some("SRX1ID"), &[]),
        Action::NotifyOperator,
        Some(State::NeedsOperator),
    )]);
    // The same notice twice within the interval is reported once.
    check_sequence(&[
        (
            verdict(Kind::NdrOther, None, &[]),
            Action::NotifyOperator,
            Some(State::NeedsOperator),
        ),
        (
            verdict(Kind::NdrOther, None, &[]),
            Action::None,
            Some(State::NeedsOperator),
        ),
    ]);
}

#[test]
fn negatives_join_no_case() {
    let policy = Policy::default();
    let mut fwd = verdict(Kind::Other, Some("SRX1ID"), &["192.0.2.1"]);
    fwd.origin = Origin::Forward;
    assert!(lookups(&fwd, &[], &["m1@microsoft.com".into()]).is_empty());
    let t = step(None, &fwd, &arrival(0), &policy, 0);
    assert_eq!((t.action, t.case.is_none()), (Action::None, true));
}

#[test]
fn lookups_prefer_ticket_then_thread_then_ips() {
    let v = verdict(Kind::MsNotQualified, Some("SRX1ID"), &["192.0.2.1"]);
    let l = lookups(&v, &["b@x".into()], &["a@x".into(), "b@x".into()]);
    assert_eq!(
        l,
        vec![
            Lookup::Ticket("SRX1ID".into()),
            Lookup::MessageId("b@x".into()),
            Lookup::MessageId("a@x".into()),
            Lookup::OpenForIps {
                topic: Topic::OutlookBlock,
                ips: vec!["192.0.2.1".into()],
                without_ticket: true,
                provider: None,
            },
        ]
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn any_kind() -> impl Strategy<Value = Kind> {
        prop_oneof![
            Just(Kind::MsAck),
            Just(Kind::MsNotQualified),
            Just(Kind::MsMitigated),
            Just(Kind::MsConditionallyMitigated),
            Just(Kind::MsEscalated),
            Just(Kind::MsInfoRequested),
            Just(Kind::MsResolved),
            Just(Kind::MsOther),
            Just(Kind::NdrMsBlocklist),
            Just(Kind::NdrOther),
            Just(Kind::JmrpReport),
            Just(Kind::SndsNotice),
            Just(Kind::Other),
        ]
    }

    proptest! {
        /// Whatever arrives, in whatever order, the bot escalates at most
        /// `max_escalations_per_ticket` times on one ticket.
        #[test]
        fn escalations_per_ticket_never_exceed_the_cap(kinds in proptest::collection::vec(any_kind(), 1..40), cap in 0u32..3) {
            let policy = Policy { max_escalations_per_ticket: cap, ..Policy::default() };
            let mut case: Option<Case> = None;
            let mut drafted = 0;
            for (n, kind) in kinds.into_iter().enumerate() {
                let v = verdict(kind, Some("SRX1ID"), &["192.0.2.1"]);
                let t = step(case.clone(), &v, &arrival(n), &policy, n as i64);
                if t.action == Action::DraftEscalationReply {
                    drafted += 1;
                }
                if let Some(mut c) = t.case {
                    c.id = 1;
                    case = Some(c);
                }
            }
            prop_assert!(drafted <= cap);
        }
    }
}
