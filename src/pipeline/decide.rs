//! Transition + mode + loop guards -> the mail to produce and what happens to each piece.
//!
//! Replies to Microsoft go out only for verified Microsoft mail on a ticket thread; everything
//! that fails a guard is held with the reason, never silently dropped.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::pipeline::case::{Action, Transition};
use crate::pipeline::classify::{Origin, Verdict};

/// How replies leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Replies are sent unattended.
    Auto,
    /// Dry run: replies become drafts only; nothing is ever sent.
    #[default]
    Draft,
    /// Replies wait in the approval queue until an operator approves them.
    Approve,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Draft => "draft",
            Mode::Approve => "approve",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Mode::Auto),
            "draft" => Ok(Mode::Draft),
            "approve" => Ok(Mode::Approve),
            other => Err(format!(
                "unknown mode `{other}`: expected auto, draft or approve"
            )),
        }
    }
}

/// Which template a planned message uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Template {
    /// The "still blocked, please escalate" reply on the ticket thread.
    EscalationReply,
    /// Asking again after a long silence following our escalation.
    Followup,
    /// A message to the operator.
    OperatorNotification,
}

impl Template {
    /// The template's file stem in `templates/`.
    pub fn name(self) -> &'static str {
        match self {
            Template::EscalationReply => "escalation_reply",
            Template::Followup => "followup",
            Template::OperatorNotification => "operator_notification",
        }
    }

    /// Whether it answers Microsoft on the ticket thread.
    pub fn is_reply(self) -> bool {
        !matches!(self, Template::OperatorNotification)
    }
}

/// What happens to one planned message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "disposition", content = "reason")]
pub enum Disposition {
    Send,
    Draft,
    Queue,
    /// Not sent, not drafted: waits for the operator with the reason.
    Hold(String),
}

impl Disposition {
    pub fn as_str(&self) -> &'static str {
        match self {
            Disposition::Send => "send",
            Disposition::Draft => "draft",
            Disposition::Queue => "queue",
            Disposition::Hold(_) => "hold",
        }
    }
}

/// One message to produce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Planned {
    pub template: Template,
    pub disposition: Disposition,
}

/// Which case events the operator is told about besides `notify_operator`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct NotifyOn {
    pub open_case: bool,
    pub close_case: bool,
    pub escalation: bool,
}

impl Default for NotifyOn {
    fn default() -> Self {
        NotifyOn {
            open_case: true,
            close_case: true,
            escalation: false,
        }
    }
}

/// Why a reply or notification about old mail (history, on a first run) is held.
pub const TOO_OLD_TO_ANSWER: &str = "message too old to answer automatically";
pub const TOO_OLD_TO_NOTIFY: &str = "message too old to notify about";

/// What besides the transition decides what is planned.
#[derive(Debug, Clone, Copy)]
pub struct Situation<'a> {
    pub mode: Mode,
    pub notify_on: NotifyOn,
    pub has_operator: bool,
    /// The message is older than the configured reply age (for example on a first run over
    /// an old mailbox): its reply is held rather than sent to a ticket long closed, and its
    /// notification held too, so that history does not flood the operator (the cases are still
    /// built and shown by `cases list`).
    pub stale: bool,
    /// A persistent limit the reply would exceed; it is then held with that reason.
    pub cap: Option<&'a str>,
    /// Replies go only to addresses in these domains (subdomains included).
    pub microsoft_domains: &'a [String],
}

/// Plans the mail for one transition. A reply held by a guard or a cap (not for age) always
/// comes with an operator notification, so that a held reply is never silent.
pub fn plan(transition: &Transition, verdict: Option<&Verdict>, s: &Situation<'_>) -> Vec<Planned> {
    let mut out = Vec::new();
    let reply = match transition.action {
        Action::DraftEscalationReply => Some(Template::EscalationReply),
        Action::DraftFollowup => Some(Template::Followup),
        _ => None,
    };
    let mut held_reply = false;
    if let Some(template) = reply {
        let disposition = match reply_guard(transition, verdict, s) {
            Disposition::Send | Disposition::Draft | Disposition::Queue if s.stale => {
                Disposition::Hold(TOO_OLD_TO_ANSWER.to_string())
            }
            // A draft cannot leave by itself, so only what could be sent is capped.
            Disposition::Send | Disposition::Queue if s.cap.is_some() => {
                Disposition::Hold(s.cap.unwrap_or_default().to_string())
            }
            d => d,
        };
        held_reply = matches!(&disposition, Disposition::Hold(r) if r != TOO_OLD_TO_ANSWER);
        out.push(Planned {
            template,
            disposition,
        });
    }
    let notify = held_reply
        || match transition.action {
            Action::NotifyOperator => true,
            Action::OpenCase => s.notify_on.open_case,
            Action::CloseCase => s.notify_on.close_case,
            Action::DraftEscalationReply | Action::DraftFollowup => s.notify_on.escalation,
            Action::None => false,
        };
    if notify {
        out.push(Planned {
            template: Template::OperatorNotification,
            disposition: notification_disposition(s),
        });
    }
    out
}

/// How an operator notification leaves in this situation.
pub fn notification_disposition(s: &Situation<'_>) -> Disposition {
    if !s.has_operator {
        Disposition::Hold("no operator address configured".to_string())
    } else if s.stale {
        Disposition::Hold(TOO_OLD_TO_NOTIFY.to_string())
    } else if s.mode == Mode::Draft {
        Disposition::Draft
    } else {
        Disposition::Send
    }
}

/// The source a new case's notification is rate limited under: one of our own reporting MTAs,
/// JMRP, or everything else that nobody authenticated, together (a forger can invent any
/// number of senders, so they share one bucket). `None` for verified Microsoft mail.
pub fn new_case_source(verdict: &Verdict) -> Option<String> {
    if verdict.trusted && verdict.origin == Origin::Microsoft {
        return None;
    }
    Some(match (verdict.origin, verdict.bounce.as_ref()) {
        (Origin::Bounce, Some(b)) if b.own_mta => format!(
            "new_case:bounce:{}",
            b.reporter.as_deref().unwrap_or("our MTA")
        ),
        (Origin::Jmrp, _) => "new_case:jmrp".to_string(),
        _ => "new_case:unverified".to_string(),
    })
}

/// Whether a reply may go to this address: only inside Microsoft's configured domains. Reply-To
/// is not covered by Microsoft's DKIM signature, so a genuine message resent with another
/// Reply-To must not steer our answer.
pub fn recipient_allowed(address: &str, microsoft_domains: &[String]) -> bool {
    address.rsplit_once('@').is_some_and(|(local, domain)| {
        !local.is_empty() && crate::pipeline::classify::domain_within(domain, microsoft_domains)
    })
}

/// The loop and trust guards for a reply to Microsoft (RFC 3834 and experience).
fn reply_guard(
    transition: &Transition,
    verdict: Option<&Verdict>,
    s: &Situation<'_>,
) -> Disposition {
    let case = transition.case.as_ref();
    if case.and_then(|c| c.last_microsoft.as_ref()).is_none() {
        return Disposition::Hold("no Microsoft message to reply to".to_string());
    }
    if let Some(v) = verdict {
        // NOTE: Microsoft's templated results invite a reply although they are automatic, so
        // Auto-Submitted does not stop them; verification and origin do.
        if !v.trusted || v.origin != Origin::Microsoft {
            return Disposition::Hold("unverified sender".to_string());
        }
        if let Some(risk) = &v.loop_risk {
            return Disposition::Hold(format!("loop risk: {risk}"));
        }
    }
    let reply_to = case
        .and_then(|c| c.last_microsoft.as_ref())
        .and_then(|p| p.reply_to.clone())
        .unwrap_or_default();
    let local = reply_to
        .split('@')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if reply_to.is_empty()
        || ["mailer-daemon", "postmaster", "double-bounce"].contains(&local.as_str())
    {
        return Disposition::Hold(format!("no usable reply address ({reply_to:?})"));
    }
    if !recipient_allowed(&reply_to, s.microsoft_domains) {
        return Disposition::Hold(format!(
            "reply address {reply_to} is outside trust.microsoft_domains"
        ));
    }
    match s.mode {
        Mode::Auto => Disposition::Send,
        Mode::Draft => Disposition::Draft,
        Mode::Approve => Disposition::Queue,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::case::{Case, Parent, State, Topic};
    use crate::pipeline::classify::Kind;

    fn transition(action: Action, reply_to: Option<&str>) -> Transition {
        let case = Case {
            id: 1,
            topic: Topic::OutlookBlock,
            state: State::Escalated,
            ticket_id: Some("SRX1ID".into()),
            ips: vec![],
            notice_key: None,
            opened_at: 0,
            updated_at: 0,
            closed_at: None,
            escalations: 1,
            followups: 0,
            last_escalated_at: None,
            last_followup_at: None,
            last_microsoft_at: None,
            last_notified_at: None,
            last_bounce: None,
            bounce_quote: None,
            ips_omitted: 0,
            last_microsoft: Some(Parent {
                reply_to: reply_to.map(str::to_string),
                ..Parent::default()
            }),
            thread_ids: vec![],
            provider: Some("outlook".into()),
            block_code: None,
        };
        Transition {
            case: Some(case),
            action,
            reason: String::new(),
            ips: vec![],
        }
    }

    fn verdict(trusted: bool, origin: Origin) -> Verdict {
        Verdict {
            kind: Kind::MsNotQualified,
            ticket_id: None,
            ips: vec![],
            outcomes: vec![],
            trusted,
            origin,
            bounce: None,
            loop_risk: None,
            claimed_kind: None,
            own_claim: None,
            ips_omitted: 0,
            confidence: 1.0,
            runner_up: None,
            uncertain: None,
            evidence: vec![],
        }
    }

    const MS: &[String] = &[];

    fn domains() -> Vec<String> {
        vec!["microsoft.com".to_string()]
    }

    fn situation<'a>(mode: Mode, domains: &'a [String]) -> Situation<'a> {
        Situation {
            mode,
            notify_on: NotifyOn::default(),
            has_operator: true,
            stale: false,
            cap: None,
            microsoft_domains: domains,
        }
    }

    #[track_caller]
    fn check(t: &Transition, v: Option<&Verdict>, mode: Mode, expect: &[(&str, &str)]) {
        let d = domains();
        let got: Vec<(&str, &str)> = plan(t, v, &situation(mode, &d))
            .iter()
            .map(|p| (p.template.name(), p.disposition.as_str()))
            .collect();
        assert_eq!(got, expect);
    }

    #[test]
    fn escalation_follows_the_mode() {
        let t = transition(Action::DraftEscalationReply, Some("support@microsoft.com"));
        let v = verdict(true, Origin::Microsoft);
        check(&t, Some(&v), Mode::Auto, &[("escalation_reply", "send")]);
        check(&t, Some(&v), Mode::Draft, &[("escalation_reply", "draft")]);
        check(
            &t,
            Some(&v),
            Mode::Approve,
            &[("escalation_reply", "queue")],
        );
    }

    #[test]
    fn unverified_or_daemon_senders_are_held_and_the_operator_told() {
        let t = transition(Action::DraftEscalationReply, Some("support@microsoft.com"));
        let v = verdict(false, Origin::Microsoft);
        check(
            &t,
            Some(&v),
            Mode::Auto,
            &[
                ("escalation_reply", "hold"),
                ("operator_notification", "send"),
            ],
        );
        let t = transition(
            Action::DraftEscalationReply,
            Some("MAILER-DAEMON@x.example"),
        );
        let v = verdict(true, Origin::Microsoft);
        check(
            &t,
            Some(&v),
            Mode::Auto,
            &[
                ("escalation_reply", "hold"),
                ("operator_notification", "send"),
            ],
        );
    }

    #[test]
    fn replies_go_only_inside_microsofts_domains() {
        let v = verdict(true, Origin::Microsoft);
        for to in [
            "attacker@evil.example",
            "x@microsoft.com.evil.example",
            "@microsoft.com",
        ] {
            let t = transition(Action::DraftEscalationReply, Some(to));
            let d = domains();
            let p = plan(&t, Some(&v), &situation(Mode::Auto, &d));
            match &p[0].disposition {
                Disposition::Hold(r) => assert!(
                    r.contains("microsoft_domains") || r.contains("usable"),
                    "{r}"
                ),
                other => panic!("{to}: not held: {other:?}"),
            }
        }
        let t = transition(
            Action::DraftEscalationReply,
            Some("olc@support.microsoft.com"),
        );
        check(&t, Some(&v), Mode::Auto, &[("escalation_reply", "send")]);
        // With no domain configured nothing may be answered at all.
        let p = plan(&t, Some(&v), &situation(Mode::Auto, MS));
        assert_eq!(p[0].disposition.as_str(), "hold");
    }

    #[test]
    fn loop_risks_hold_the_reply() {
        let t = transition(Action::DraftEscalationReply, Some("support@microsoft.com"));
        let mut v = verdict(true, Origin::Microsoft);
        v.loop_risk = Some("null return path".into());
        check(
            &t,
            Some(&v),
            Mode::Auto,
            &[
                ("escalation_reply", "hold"),
                ("operator_notification", "send"),
            ],
        );
    }

    #[test]
    fn stale_messages_are_never_answered_automatically() {
        let t = transition(Action::DraftEscalationReply, Some("support@microsoft.com"));
        let v = verdict(true, Origin::Microsoft);
        let d = domains();
        let stale = Situation {
            stale: true,
            ..situation(Mode::Auto, &d)
        };
        let p = plan(&t, Some(&v), &stale);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].disposition.as_str(), "hold");
        // History does not flood the operator either.
        let t = transition(Action::OpenCase, None);
        let p = plan(
            &t,
            Some(&v),
            &Situation {
                mode: Mode::Draft,
                ..stale
            },
        );
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].disposition.as_str(), "hold");
    }

    #[test]
    fn a_cap_holds_what_could_be_sent_but_not_drafts() {
        let t = transition(Action::DraftEscalationReply, Some("support@microsoft.com"));
        let v = verdict(true, Origin::Microsoft);
        let d = domains();
        let capped = Situation {
            cap: Some("global reply limit reached"),
            ..situation(Mode::Auto, &d)
        };
        let p = plan(&t, Some(&v), &capped);
        assert_eq!(
            p[0].disposition,
            Disposition::Hold("global reply limit reached".into())
        );
        assert_eq!(p[1].template, Template::OperatorNotification);
        let p = plan(
            &t,
            Some(&v),
            &Situation {
                mode: Mode::Draft,
                ..capped
            },
        );
        assert_eq!(p[0].disposition, Disposition::Draft);
    }

    #[test]
    fn notifications_are_drafts_in_draft_mode_and_held_without_operator() {
        let t = transition(Action::NotifyOperator, None);
        check(&t, None, Mode::Draft, &[("operator_notification", "draft")]);
        check(
            &t,
            None,
            Mode::Approve,
            &[("operator_notification", "send")],
        );
        let d = domains();
        let held = plan(
            &t,
            None,
            &Situation {
                has_operator: false,
                ..situation(Mode::Auto, &d)
            },
        );
        assert_eq!(held[0].disposition.as_str(), "hold");
    }
}
