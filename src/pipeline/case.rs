//! The delisting case: a persistent state machine per block, stepped once per message.
//!
//! `step` is pure: the current case (as the store found it), the classified message, the policy
//! and the time go in; the next case, one [`Action`] and the reason come out. Which stored case a
//! message belongs to is decided by the ordered [`lookups`] the store resolves.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::pipeline::classify::{Channel, Kind, Origin, Outcome, Verdict};

/// A case's id in the store; 0 until stored.
pub type CaseId = i64;

/// What a case is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Topic {
    /// Outlook.com block list: a sender-support ticket thread.
    OutlookBlock,
    /// Microsoft 365 / EOP tenant block list: delisted at sender.office.com.
    M365Block,
    /// JMRP complaints about one of our IPs.
    Complaints,
    /// An SNDS access request or contract.
    Snds,
    /// A bounce the operator must act on (authentication rule, reputation throttle).
    DeliveryNotice,
    /// Another receiver (Gmail, Yahoo, a DNSBL ...) blocks our IPs: one case per provider and
    /// IP, worked from the provider's playbook.
    ReceiverBlock,
}

/// Where a case stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// A block was seen; no ticket yet (the operator files Microsoft's form).
    Blocked,
    /// Microsoft acknowledged the ticket; its verdict is pending.
    AwaitingResult,
    /// We asked for escalation; Microsoft's answer is pending.
    Escalated,
    /// A person must decide or supply data.
    NeedsOperator,
    /// The block was lifted or the matter is done.
    Closed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Blocked => "blocked",
            State::AwaitingResult => "awaiting_result",
            State::Escalated => "escalated",
            State::NeedsOperator => "needs_operator",
            State::Closed => "closed",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the engine decides for one message (or one tick).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    None,
    OpenCase,
    DraftEscalationReply,
    NotifyOperator,
    CloseCase,
    /// Ask again on the thread after a long silence following our escalation (ticks only).
    DraftFollowup,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::None => "none",
            Action::OpenCase => "open_case",
            Action::DraftEscalationReply => "draft_escalation_reply",
            Action::NotifyOperator => "notify_operator",
            Action::CloseCase => "close_case",
            Action::DraftFollowup => "draft_followup",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The message a reply on the ticket thread answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parent {
    pub message_id: Option<String>,
    pub subject: String,
    pub references: Vec<String>,
    pub in_reply_to: Vec<String>,
    pub thread_index: Option<String>,
    pub thread_topic: Option<String>,
    /// Where a reply goes: Reply-To, else From.
    pub reply_to: Option<String>,
    pub reply_to_name: Option<String>,
    pub date: Option<i64>,
}

/// One delisting (or notice) case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Case {
    pub id: CaseId,
    pub topic: Topic,
    pub state: State,
    pub ticket_id: Option<String>,
    pub ips: Vec<String>,
    /// Groups notice cases (`jmrp:192.0.2.1`, `bounce:ms_reputation_throttle`).
    pub notice_key: Option<String>,
    pub opened_at: i64,
    pub updated_at: i64,
    pub closed_at: Option<i64>,
    /// Escalation replies made on this ticket (by the bot or, seen in the mailbox, by a person).
    pub escalations: u32,
    pub followups: u32,
    pub last_escalated_at: Option<i64>,
    #[serde(default)]
    pub last_followup_at: Option<i64>,
    pub last_microsoft_at: Option<i64>,
    pub last_notified_at: Option<i64>,
    /// The remote server's answer in the latest block-list bounce, as the bounce wrote it:
    /// for the operator only, never quoted to Microsoft.
    pub last_bounce: Option<String>,
    /// The latest block-list evidence from one of our own MTAs, reduced to what a reply may
    /// quote (see `classify::Bounce::quote`).
    #[serde(default)]
    pub bounce_quote: Option<String>,
    /// IPs named for this case beyond the per-case limit: counted, not kept.
    #[serde(default)]
    pub ips_omitted: usize,
    /// The latest Microsoft message on the thread: what a follow-up replies to.
    pub last_microsoft: Option<Parent>,
    /// Message-IDs known to belong to this case, ours included.
    pub thread_ids: Vec<String>,
    /// Whose block this is (`outlook`, `gmail`, `spamhaus` ...), when known.
    #[serde(default)]
    pub provider: Option<String>,
    /// The provider's code for the latest refusal (`TSS04`).
    #[serde(default)]
    pub block_code: Option<String>,
}

impl Case {
    fn new(topic: Topic, state: State, now: i64) -> Case {
        Case {
            id: 0,
            topic,
            state,
            ticket_id: None,
            ips: Vec::new(),
            notice_key: None,
            opened_at: now,
            updated_at: now,
            closed_at: None,
            escalations: 0,
            followups: 0,
            last_escalated_at: None,
            last_followup_at: None,
            last_microsoft_at: None,
            last_notified_at: None,
            last_bounce: None,
            bounce_quote: None,
            ips_omitted: 0,
            last_microsoft: None,
            thread_ids: Vec::new(),
            provider: None,
            block_code: None,
        }
    }

    pub fn is_open(&self) -> bool {
        self.state != State::Closed
    }

    /// Adds IPs up to the per-case limit; the rest are counted.
    fn add_ips(&mut self, ips: &[String], limit: usize) {
        let mut known: std::collections::HashSet<String> = self.ips.iter().cloned().collect();
        for ip in ips {
            if !known.insert(ip.clone()) {
                continue;
            }
            if self.ips.len() < limit {
                self.ips.push(ip.clone());
            } else {
                self.ips_omitted += 1;
            }
        }
    }

    fn add_thread_id(&mut self, id: Option<&String>) {
        if let Some(id) = id {
            if !self.thread_ids.contains(id) {
                self.thread_ids.push(id.clone());
            }
        }
    }

    fn set_state(&mut self, state: State, now: i64) {
        self.state = state;
        self.closed_at = (state == State::Closed).then_some(now);
    }
}

/// Tunables of the state machine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Policy {
    /// Escalation replies the bot drafts per ticket before handing over to a person.
    pub max_escalations_per_ticket: u32,
    /// Days of silence after an escalation before a follow-up is drafted; 0 disables.
    pub followup_after_days: u32,
    pub max_followups: u32,
    /// Hours between two notifications about the same notice (JMRP IP, bounce cause).
    pub notice_interval_hours: u32,
    /// IPs a case keeps at most; more are counted, not kept.
    pub max_ips_per_case: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_escalations_per_ticket: 1,
            followup_after_days: 7,
            max_followups: 1,
            notice_interval_hours: 24,
            max_ips_per_case: 256,
        }
    }
}

/// How the store should look for the case a message belongs to, in order; the first hit wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Any case, open or closed, with this ticket id.
    Ticket(String),
    /// Any case whose thread contains this Message-ID.
    MessageId(String),
    /// The newest open case of this topic sharing an IP; `without_ticket` limits it to cases
    /// that have no ticket yet, so two tickets never merge.
    OpenForIps {
        topic: Topic,
        ips: Vec<String>,
        without_ticket: bool,
        /// Only cases of this provider (another receiver's blocks are per provider).
        provider: Option<String>,
    },
    /// The newest open notice case with this key.
    Notice(String),
    /// The newest open case of another receiver's block by this provider that names none of
    /// our IPs either (a refusal that names none: the provider and "no IP" are its key).
    OpenForProvider(String),
}

/// The lookups for one classified message. An empty list means it joins no case.
pub fn lookups(verdict: &Verdict, in_reply_to: &[String], references: &[String]) -> Vec<Lookup> {
    let mut out = Vec::new();
    let by_thread = |out: &mut Vec<Lookup>| {
        if let Some(t) = &verdict.ticket_id {
            out.push(Lookup::Ticket(t.clone()));
        }
        let mut seen = BTreeSet::new();
        for id in in_reply_to.iter().chain(references.iter().rev()) {
            if seen.insert(id.clone()) {
                out.push(Lookup::MessageId(id.clone()));
            }
        }
    };
    match verdict.kind {
        Kind::NdrMsBlocklist if !verdict.ips.is_empty() => out.push(Lookup::OpenForIps {
            topic: topic_for_channel(verdict),
            ips: verdict.ips.clone(),
            without_ticket: false,
            provider: None,
        }),
        Kind::NdrOther => {
            if let Some(provider) = verdict.receiver_block() {
                out.push(if verdict.ips.is_empty() {
                    Lookup::OpenForProvider(provider.to_string())
                } else {
                    Lookup::OpenForIps {
                        topic: Topic::ReceiverBlock,
                        ips: verdict.ips.clone(),
                        without_ticket: false,
                        provider: Some(provider.to_string()),
                    }
                });
            }
        }
        k if k.is_microsoft_support() => {
            by_thread(&mut out);
            if !verdict.ips.is_empty() {
                out.push(Lookup::OpenForIps {
                    topic: Topic::OutlookBlock,
                    ips: verdict.ips.clone(),
                    without_ticket: true,
                    provider: None,
                });
            }
        }
        Kind::Other if verdict.origin == Origin::Own => by_thread(&mut out),
        _ => {}
    }
    if let Some(key) = notice_key(verdict) {
        out.push(Lookup::Notice(key));
    }
    out
}

fn topic_for_channel(verdict: &Verdict) -> Topic {
    match verdict.bounce.as_ref().and_then(|b| b.channel) {
        Some(Channel::M365) => Topic::M365Block,
        _ => Topic::OutlookBlock,
    }
}

fn notice_key(verdict: &Verdict) -> Option<String> {
    match verdict.kind {
        Kind::JmrpReport => Some(format!("jmrp:{}", verdict.ips.join(","))),
        Kind::NdrOther => verdict
            .bounce
            .as_ref()
            .filter(|b| b.notify)
            .map(|b| format!("bounce:{}", b.cause)),
        _ => None,
    }
}

/// Facts about the message being stepped that the case keeps.
#[derive(Debug, Clone, Default)]
pub struct Arrival {
    pub message_id: Option<String>,
    /// What a reply to this message would answer.
    pub parent: Parent,
}

/// The result of one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Transition {
    /// The case after the step; `None` when the message joins no case.
    pub case: Option<Case>,
    pub action: Action,
    /// Why, in words for the log and the timeline.
    pub reason: String,
    /// The IPs the action concerns (the refused ones for an escalation).
    pub ips: Vec<String>,
}

fn no_case(reason: &str) -> Transition {
    Transition {
        case: None,
        action: Action::None,
        reason: reason.to_string(),
        ips: Vec::new(),
    }
}

/// Steps the case `found` (or no case) with one classified message.
pub fn step(
    found: Option<Case>,
    verdict: &Verdict,
    arrival: &Arrival,
    policy: &Policy,
    now: i64,
) -> Transition {
    let kind = verdict.kind;
    let mut case = match (found, kind) {
        (Some(case), _) => case,
        (None, Kind::Other) => return no_case(other_reason(verdict)),
        (None, Kind::NdrOther)
            if notice_key(verdict).is_none() && verdict.receiver_block().is_none() =>
        {
            return no_case("bounce that needs no action")
        }
        (None, Kind::NdrMsBlocklist) if verdict.ips.is_empty() => {
            return no_case("block-list bounce naming none of our IPs")
        }
        (None, _) => {
            let topic = match kind {
                Kind::NdrMsBlocklist => topic_for_channel(verdict),
                Kind::JmrpReport => Topic::Complaints,
                Kind::SndsNotice => Topic::Snds,
                Kind::NdrOther if verdict.receiver_block().is_some() => Topic::ReceiverBlock,
                Kind::NdrOther => Topic::DeliveryNotice,
                _ => Topic::OutlookBlock,
            };
            let mut case = Case::new(topic, State::Blocked, now);
            if topic != Topic::ReceiverBlock {
                case.notice_key = notice_key(verdict);
            }
            case.provider = verdict.provider().map(str::to_string);
            case
        }
    };
    let is_new = case.id == 0 && case.thread_ids.is_empty();
    case.updated_at = now;
    case.add_thread_id(arrival.message_id.as_ref());
    if case.ticket_id.is_none() && kind.is_microsoft_support() {
        case.ticket_id = verdict.ticket_id.clone();
    }
    if kind.is_microsoft_support() {
        case.last_microsoft_at = Some(now);
        case.last_microsoft = Some(arrival.parent.clone());
    }

    let (action, reason, ips) = match kind {
        Kind::NdrMsBlocklist => {
            case.add_ips(&verdict.ips, policy.max_ips_per_case);
            if let Some(b) = &verdict.bounce {
                case.last_bounce = Some(b.diagnostic.clone());
                // Only our own MTA's evidence replaces what a reply quotes.
                if b.quote.is_some() {
                    case.bounce_quote = b.quote.clone();
                }
            }
            if is_new || !case.is_open() {
                case.set_state(State::Blocked, now);
                let r = match case.topic {
                    Topic::M365Block => "Microsoft 365 block list: delist at sender.office.com",
                    _ => "Outlook.com block list: file the sender-support form",
                };
                (Action::OpenCase, r.to_string(), verdict.ips.clone())
            } else {
                (
                    Action::None,
                    "another bounce for an open case".to_string(),
                    verdict.ips.clone(),
                )
            }
        }
        Kind::MsAck => {
            case.add_ips(&verdict.ips, policy.max_ips_per_case);
            if matches!(case.state, State::Blocked) || is_new {
                case.set_state(State::AwaitingResult, now);
            }
            (
                Action::None,
                "acknowledgement: waiting for Microsoft's verdict".to_string(),
                verdict.ips.clone(),
            )
        }
        Kind::MsNotQualified => {
            case.add_ips(&verdict.ips, policy.max_ips_per_case);
            let refused = verdict.refused_ips();
            if case.escalations < policy.max_escalations_per_ticket {
                case.escalations += 1;
                case.last_escalated_at = Some(now);
                case.set_state(State::Escalated, now);
                (
                    Action::DraftEscalationReply,
                    "not qualified for mitigation: ask for escalation on the thread".to_string(),
                    refused,
                )
            } else {
                case.set_state(State::NeedsOperator, now);
                (
                    Action::NotifyOperator,
                    format!(
                        "refused again after {} escalation(s): a person must check before answering",
                        case.escalations
                    ),
                    refused,
                )
            }
        }
        Kind::MsMitigated => {
            let mitigated: Vec<String> = if verdict.outcomes.is_empty() {
                verdict.ips.clone()
            } else {
                verdict
                    .outcomes
                    .iter()
                    .filter(|o| o.outcome == Outcome::Mitigated)
                    .map(|o| o.ip.clone())
                    .collect()
            };
            let remaining: Vec<String> = case
                .ips
                .iter()
                .filter(|ip| !covered(ip, &mitigated))
                .cloned()
                .collect();
            case.add_ips(&verdict.ips, policy.max_ips_per_case);
            if remaining.is_empty() || mitigated.is_empty() {
                case.set_state(State::Closed, now);
                (Action::CloseCase, "mitigated".to_string(), mitigated)
            } else {
                case.set_state(State::NeedsOperator, now);
                (
                    Action::NotifyOperator,
                    format!(
                        "only some IPs mitigated; still listed: {}",
                        remaining.join(", ")
                    ),
                    remaining,
                )
            }
        }
        Kind::MsConditionallyMitigated => {
            case.add_ips(&verdict.ips, policy.max_ips_per_case);
            case.set_state(State::NeedsOperator, now);
            (
                Action::NotifyOperator,
                "conditionally mitigated: keep volume low until reputation builds".to_string(),
                verdict.ips.clone(),
            )
        }
        Kind::MsEscalated => {
            case.add_ips(&verdict.ips, policy.max_ips_per_case);
            case.set_state(State::Escalated, now);
            (
                Action::None,
                "escalated by Microsoft: wait for its answer".to_string(),
                verdict.ips.clone(),
            )
        }
        Kind::MsInfoRequested => {
            case.add_ips(&verdict.ips, policy.max_ips_per_case);
            case.set_state(State::NeedsOperator, now);
            (
                Action::NotifyOperator,
                "Microsoft asks for information only a person can give".to_string(),
                verdict.ips.clone(),
            )
        }
        Kind::MsResolved => {
            case.add_ips(&verdict.ips, policy.max_ips_per_case);
            case.set_state(State::Closed, now);
            (
                Action::CloseCase,
                "block lifted".to_string(),
                case.ips.clone(),
            )
        }
        Kind::MsOther => {
            case.add_ips(&verdict.ips, policy.max_ips_per_case);
            case.set_state(State::NeedsOperator, now);
            (
                Action::NotifyOperator,
                "sender-support answer of no known template: a person must read it".to_string(),
                verdict.ips.clone(),
            )
        }
        Kind::NdrOther if case.topic == Topic::ReceiverBlock => {
            case.add_ips(&verdict.ips, policy.max_ips_per_case);
            if let Some(b) = &verdict.bounce {
                case.last_bounce = Some(b.diagnostic.clone());
                if b.block_code.is_some() {
                    case.block_code = b.block_code.clone();
                }
            }
            let provider = case.provider.clone().unwrap_or_default();
            if verdict.receiver_block().is_none() {
                (
                    Action::None,
                    "a bounce on a case of another receiver's block".to_string(),
                    verdict.ips.clone(),
                )
            } else if is_new || !case.is_open() {
                case.set_state(State::Blocked, now);
                (
                    Action::OpenCase,
                    format!("{provider} blocks our IP: follow its playbook"),
                    verdict.ips.clone(),
                )
            } else {
                (
                    Action::None,
                    "another bounce for an open case".to_string(),
                    verdict.ips.clone(),
                )
            }
        }
        Kind::JmrpReport | Kind::SndsNotice | Kind::NdrOther => {
            case.add_ips(&verdict.ips, policy.max_ips_per_case);
            case.set_state(State::NeedsOperator, now);
            let interval = i64::from(policy.notice_interval_hours) * 3600;
            let recently = case
                .last_notified_at
                .is_some_and(|t| now.saturating_sub(t) < interval);
            if recently && kind != Kind::SndsNotice {
                (
                    Action::None,
                    "same notice already reported within the notice interval".to_string(),
                    verdict.ips.clone(),
                )
            } else {
                case.last_notified_at = Some(now);
                let r = match kind {
                    Kind::JmrpReport => "JMRP complaint: suppress the recipient, watch the rate",
                    Kind::SndsNotice => "SNDS request: approve or deny it",
                    _ => "bounce the operator must act on",
                };
                (Action::NotifyOperator, r.to_string(), verdict.ips.clone())
            }
        }
        Kind::Other => {
            // Only our own mail on a known thread gets here: a reply already went out, so a
            // further refusal must go to a person rather than be answered again.
            case.escalations = case.escalations.max(1);
            (
                Action::None,
                "our own reply seen on the thread".to_string(),
                Vec::new(),
            )
        }
    };
    Transition {
        case: Some(case),
        action,
        reason,
        ips,
    }
}

/// A planned reply was held (a cap, a guard, an address outside Microsoft's domains): nothing
/// went to Microsoft, so the case is not counted as escalated. It waits for a person, who can
/// release the reply ([`reply_released`]) or answer by hand.
pub fn reply_held(transition: &mut Transition, before: Option<&Case>, reason: &str) {
    let Some(case) = transition.case.as_mut() else {
        return;
    };
    let (escalations, last_escalated_at, followups, last_followup_at) =
        before.map_or((0, None, 0, None), |b| {
            (
                b.escalations,
                b.last_escalated_at,
                b.followups,
                b.last_followup_at,
            )
        });
    case.escalations = escalations;
    case.last_escalated_at = last_escalated_at;
    case.followups = followups;
    case.last_followup_at = last_followup_at;
    case.set_state(State::NeedsOperator, case.updated_at);
    transition.reason = format!("{}; the reply is held: {reason}", transition.reason);
}

/// An operator released a held reply: now it counts as the escalation (or follow-up) it is.
/// Refused when the ticket has had all the escalations the policy allows since.
pub fn reply_released(
    case: &mut Case,
    followup: bool,
    policy: &Policy,
    now: i64,
) -> Result<(), String> {
    if !case.is_open() {
        return Err(format!("case #{} is closed", case.id));
    }
    if followup {
        case.followups += 1;
        case.last_followup_at = Some(now);
    } else {
        if case.escalations >= policy.max_escalations_per_ticket {
            return Err(format!(
                "ticket {} already had {} escalation(s) (policy.max_escalations_per_ticket = {})",
                case.ticket_id.as_deref().unwrap_or("-"),
                case.escalations,
                policy.max_escalations_per_ticket
            ));
        }
        case.escalations += 1;
        case.last_escalated_at = Some(now);
    }
    case.updated_at = now;
    case.set_state(State::Escalated, now);
    Ok(())
}

fn covered(ip: &str, list: &[String]) -> bool {
    let Ok(addr) = ip
        .split('/')
        .next()
        .unwrap_or(ip)
        .parse::<std::net::IpAddr>()
    else {
        return list.iter().any(|x| x == ip);
    };
    list.iter().any(|x| {
        x == ip
            || x.parse::<ipnet::IpNet>()
                .is_ok_and(|net| net.contains(&addr))
    })
}

fn other_reason(verdict: &Verdict) -> &'static str {
    match verdict.origin {
        Origin::Own => "our own message",
        Origin::Forward => "a forward, not Microsoft's answer",
        Origin::List => "list or newsletter mail",
        Origin::AutoReply => "an automatic reply",
        Origin::Unverified => "claims to be Microsoft but is not verified",
        _ => "not a postmaster matter",
    }
}

/// Steps a case for the passage of time: a follow-up after a long silence following our
/// escalation.
pub fn tick(case: &Case, policy: &Policy, now: i64) -> Transition {
    let mut next = case.clone();
    let quiet_since = [
        case.last_escalated_at,
        case.last_microsoft_at,
        case.last_followup_at,
    ]
    .into_iter()
    .flatten()
    .max();
    let due = case.state == State::Escalated
        && policy.followup_after_days > 0
        && case.followups < policy.max_followups
        && case.last_microsoft.is_some()
        && quiet_since.is_some_and(|t| {
            now.saturating_sub(t) >= i64::from(policy.followup_after_days) * 86_400
        });
    if !due {
        return Transition {
            case: Some(next),
            action: Action::None,
            reason: "nothing due".to_string(),
            ips: Vec::new(),
        };
    }
    next.followups += 1;
    next.last_followup_at = Some(now);
    next.updated_at = now;
    Transition {
        ips: next.ips.clone(),
        case: Some(next),
        action: Action::DraftFollowup,
        reason: format!(
            "no answer {} days after our escalation: ask again",
            policy.followup_after_days
        ),
    }
}

#[cfg(test)]
mod tests;
