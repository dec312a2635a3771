//! [`Inbound`] -> [`Verdict`]: which kind of message this is, which ticket and IPs it is about,
//! whether Microsoft really sent it, and the evidence for each of those findings.

use std::collections::HashSet;
use std::fmt;
use std::sync::LazyLock;

use ipnet::IpNet;
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::pipeline::extract::{self, normalize};
use crate::pipeline::parse::Inbound;
use crate::pipeline::rules::{PatternList, Rules};
use crate::pipeline::{features, learned, score};

/// What a message is. Exactly one per message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    MsAck,
    MsNotQualified,
    MsMitigated,
    MsConditionallyMitigated,
    MsEscalated,
    MsInfoRequested,
    MsResolved,
    MsOther,
    NdrMsBlocklist,
    NdrOther,
    JmrpReport,
    SndsNotice,
    Other,
}

impl Kind {
    /// The label used in output, logs and rules files.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::MsAck => "ms_ack",
            Kind::MsNotQualified => "ms_not_qualified",
            Kind::MsMitigated => "ms_mitigated",
            Kind::MsConditionallyMitigated => "ms_conditionally_mitigated",
            Kind::MsEscalated => "ms_escalated",
            Kind::MsInfoRequested => "ms_info_requested",
            Kind::MsResolved => "ms_resolved",
            Kind::MsOther => "ms_other",
            Kind::NdrMsBlocklist => "ndr_ms_blocklist",
            Kind::NdrOther => "ndr_other",
            Kind::JmrpReport => "jmrp_report",
            Kind::SndsNotice => "snds_notice",
            Kind::Other => "other",
        }
    }

    /// A sender-support answer from Microsoft.
    pub fn is_microsoft_support(self) -> bool {
        self.as_str().starts_with("ms_")
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result a Microsoft result table gives one IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    NotQualified,
    ConditionallyMitigated,
    Mitigated,
}

/// Which of Microsoft's two delisting systems a block belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// Outlook.com consumer block list: the sender-support form and its ticket thread.
    Outlook,
    /// Microsoft 365 / EOP tenant block list: the sender.office.com self-service portal.
    M365,
}

/// Where a message comes from, as far as the bot is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Verified Microsoft sender support or SNDS.
    Microsoft,
    /// A delivery status notification or plain-text bounce.
    Bounce,
    /// A JMRP complaint report.
    Jmrp,
    /// Our own mail seen again (a Bcc, a copy in the watched folder).
    Own,
    /// A forward of someone else's message.
    Forward,
    /// Mailing-list or newsletter mail.
    List,
    /// An out-of-office or other automatic reply.
    AutoReply,
    /// Claims to be Microsoft but our MX did not verify it.
    Unverified,
    /// Anything else.
    Unrelated,
}

/// One IP's line in a result table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IpOutcome {
    pub ip: String,
    pub outcome: Outcome,
}

/// Why a finding was made: the rule, the words it matched and, for a scoring cue, the weight
/// it added to its kind.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evidence {
    pub rule: String,
    pub matched: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
}

impl Evidence {
    /// A finding that is not a weighed cue.
    pub fn new(rule: &str, matched: String) -> Evidence {
        Evidence {
            rule: rule.to_string(),
            matched,
            weight: None,
        }
    }

    /// A scoring cue with its weight.
    pub fn weighted(rule: &str, matched: String, weight: f64) -> Evidence {
        Evidence {
            rule: rule.to_string(),
            matched,
            weight: Some(weight),
        }
    }
}

/// What a bounce says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bounce {
    /// The matched cause (`outlook_blocklist`, `ms_reputation_throttle`, ...), or `unknown`.
    pub cause: String,
    pub channel: Option<Channel>,
    /// Whether the operator must hear of it.
    pub notify: bool,
    /// The remote server's answer, whitespace collapsed, for replies and notifications.
    pub diagnostic: String,
    /// The enhanced status code, when a DSN gave one.
    pub status: Option<String>,
    /// The MTA that reported it (`Reporting-MTA`, else the bounce sender's host).
    pub reporter: Option<String>,
    /// The reporter is one of our own MTAs (`trust.reporting_mtas`).
    pub own_mta: bool,
    /// What a reply to Microsoft may quote: for a block-list bounce from one of our own
    /// reporting MTAs, the SMTP code, the enhanced status, our IP and Microsoft's own words for
    /// the listing from the rules, never the bounce's free text.
    pub quote: Option<String>,
    /// The receiver or block list that refused (`gmail`, `spamhaus`, `outlook`): the matched
    /// rule's, else the one whose servers or mailboxes the bounce names.
    pub provider: Option<String>,
    /// The provider's code for the refusal (`TSS04`, `4.7.28`, `zen.spamhaus.org`).
    pub block_code: Option<String>,
    /// Another receiver blocks our IP: a case for the provider and the IP (the kind stays
    /// `ndr_other`).
    pub block: bool,
}

/// The classifier's finding for one message.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub kind: Kind,
    pub ticket_id: Option<String>,
    /// Sender-side IPs and ranges the message reports on.
    pub ips: Vec<String>,
    /// Per-IP results when the message carries a result table.
    pub outcomes: Vec<IpOutcome>,
    /// Our MX verified the message as Microsoft's.
    pub trusted: bool,
    pub origin: Origin,
    pub bounce: Option<Bounce>,
    /// Why answering this message automatically could start a loop (RFC 3834), if anything.
    pub loop_risk: Option<String>,
    /// For an unverified message that looks like sender support: the kind it claims to be.
    pub claimed_kind: Option<Kind>,
    /// The Message-ID of a message that claims to be our own but that our MX did not
    /// authenticate: it is our own only if our outbox sent it ([`confirm_own`]).
    pub own_claim: Option<String>,
    /// IPs named beyond the per-message limit: counted, not kept.
    pub ips_omitted: usize,
    /// For a sender-support answer: how sure the kind is (0 to 1), the second-best kind, and
    /// why no kind was taken when the verdict is an uncertain `ms_other`.
    pub confidence: f64,
    pub runner_up: Option<score::RunnerUp>,
    pub uncertain: Option<String>,
    pub evidence: Vec<Evidence>,
}

impl Verdict {
    /// The receiver or block list the message is about: the bounce's, else Outlook.com for
    /// Microsoft's own sender-support, JMRP and SNDS mail.
    pub fn provider(&self) -> Option<&str> {
        match self.bounce.as_ref().and_then(|b| b.provider.as_deref()) {
            Some(p) => Some(p),
            None if self.kind.is_microsoft_support()
                || matches!(self.kind, Kind::JmrpReport | Kind::SndsNotice) =>
            {
                Some("outlook")
            }
            None => None,
        }
    }

    /// Another receiver's block of our IPs: the provider, when the bounce opens a case.
    pub fn receiver_block(&self) -> Option<&str> {
        let b = self.bounce.as_ref().filter(|b| b.block)?;
        (self.kind == Kind::NdrOther)
            .then_some(b.provider.as_deref())
            .flatten()
    }

    /// The IPs a refusal concerns: the not-qualified rows of a table, else every IP.
    pub fn refused_ips(&self) -> Vec<String> {
        let refused: Vec<String> = self
            .outcomes
            .iter()
            .filter(|o| o.outcome == Outcome::NotQualified)
            .map(|o| o.ip.clone())
            .collect();
        if refused.is_empty() {
            self.ips.clone()
        } else {
            refused
        }
    }
}

/// Who we trust and who we are: the classifier's inputs besides the message.
#[derive(Debug, Clone)]
pub struct Context {
    /// `authserv-id`s of our own MX hosts; only their `Authentication-Results` count.
    pub authserv_ids: Vec<String>,
    /// Domains whose verified mail counts as Microsoft's (subdomains included).
    pub microsoft_domains: Vec<String>,
    /// Our own addresses (the bot's From, the operator's).
    pub own_addresses: Vec<String>,
    /// Domains of the Message-IDs we generate.
    pub own_message_id_domains: Vec<String>,
    /// The header our outgoing mail carries.
    pub loop_header: String,
    /// When non-empty, only IPs inside these networks are reported.
    pub our_networks: Vec<IpNet>,
    /// Hosts whose `Received:` headers are our own (MX, filters, the IMAP server's LMTP);
    /// empty: the authserv-ids.
    pub internal_hosts: Vec<String>,
    /// Host names our own MTAs report bounces as (`Reporting-MTA`, or the bounce sender's
    /// host): only their block-list evidence is quoted to Microsoft.
    pub reporting_mtas: Vec<String>,
    /// IPs taken from one message at most; the rest are counted, not kept.
    pub max_ips: usize,
    /// Trust also needs a DKIM signature of the From's domain that the bot verified itself
    /// (`[trust] verify_dkim`); see [`DkimFacts`].
    pub require_dkim: bool,
    /// Other receivers' blocks open cases (`[rules] other_receivers`); off, they are plain
    /// `ndr_other` bounces that need no action, as in a Microsoft-only desk.
    pub other_receivers: bool,
}

/// What the bot's own DKIM check found (the shell asks DNS; the classifier only reads this).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DkimFacts {
    /// Signing domains (`d=`) whose signatures verified, lowercased.
    pub passed: Vec<String>,
    /// Why others did not (lookup failures, bad signatures), for the evidence.
    pub note: Option<String>,
}

impl Default for Context {
    fn default() -> Self {
        Context {
            authserv_ids: Vec::new(),
            microsoft_domains: vec!["microsoft.com".to_string()],
            own_addresses: Vec::new(),
            own_message_id_domains: Vec::new(),
            loop_header: String::new(),
            our_networks: Vec::new(),
            internal_hosts: Vec::new(),
            reporting_mtas: Vec::new(),
            max_ips: 256,
            require_dkim: false,
            other_receivers: true,
        }
    }
}

impl Context {
    /// The hosts whose `Received:` headers mark our own hops.
    pub fn internal_hosts(&self) -> &[String] {
        if self.internal_hosts.is_empty() {
            &self.authserv_ids
        } else {
            &self.internal_hosts
        }
    }

    /// The domains of our own addresses: mail our MX authenticated as from one of them, with
    /// our Message-ID, is our own.
    fn own_domains(&self) -> Vec<String> {
        self.own_addresses
            .iter()
            .filter_map(|a| a.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()))
            .chain(self.own_message_id_domains.iter().cloned())
            .collect()
    }
}

/// Classifies one message. Pure: the same message, rules and context give the same verdict.
/// With `require_dkim`, use [`classify_checked`]: here no DKIM check was made, so nothing is
/// trusted.
pub fn classify(inbound: &Inbound, rules: &Rules, ctx: &Context) -> Verdict {
    classify_checked(inbound, rules, ctx, None)
}

/// Whether the bot's own DKIM check can change this message's verdict: it is required, and
/// our MX already vouches for the message as Microsoft's. Other mail needs no DNS lookup.
pub fn needs_dkim(inbound: &Inbound, ctx: &Context) -> bool {
    ctx.require_dkim && check_trust(inbound, ctx, None).is_ok_or_dkim()
}

/// [`classify`] with the result of the bot's own DKIM check.
pub fn classify_checked(
    inbound: &Inbound,
    rules: &Rules,
    ctx: &Context,
    dkim: Option<&DkimFacts>,
) -> Verdict {
    classify_with(inbound, rules, ctx, dkim, &[])
}

/// [`classify_checked`] with the operator's learned templates as one more source of cues.
pub fn classify_with(
    inbound: &Inbound,
    rules: &Rules,
    ctx: &Context,
    dkim: Option<&DkimFacts>,
    learned: &[learned::Learned],
) -> Verdict {
    let mut verdict = classify_uncapped(inbound, rules, ctx, dkim, learned);
    if verdict.ips.len() > ctx.max_ips {
        verdict.ips_omitted += verdict.ips.len() - ctx.max_ips;
        verdict.ips.truncate(ctx.max_ips);
        let kept: HashSet<&str> = verdict.ips.iter().map(String::as_str).collect();
        verdict.outcomes.retain(|o| kept.contains(o.ip.as_str()));
    }
    verdict
}

/// A message that claims to be our own (our Message-ID) is our own when our outbox sent it:
/// the engine asks the store and, when it knows the Message-ID, calls this.
pub fn confirm_own(verdict: &Verdict, inbound: &Inbound, rules: &Rules, ctx: &Context) -> Verdict {
    let mut evidence: Vec<Evidence> = verdict
        .evidence
        .iter()
        .filter(|e| e.rule != "own.unconfirmed")
        .cloned()
        .collect();
    evidence.push(ev(
        "own.outbox",
        format!(
            "our outbox sent {}",
            verdict.own_claim.as_deref().unwrap_or_default()
        ),
    ));
    let mut base = verdict.clone();
    base.own_claim = None;
    base.claimed_kind = None;
    base.outcomes.clear();
    base.bounce = None;
    negative(base, Origin::Own, inbound, rules, ctx, evidence)
}

fn classify_uncapped(
    inbound: &Inbound,
    rules: &Rules,
    ctx: &Context,
    dkim: Option<&DkimFacts>,
    learned: &[learned::Learned],
) -> Verdict {
    let mut evidence = Vec::new();
    let trust = check_trust(inbound, ctx, dkim).map_err(|e| e.to_string());
    let trusted = trust.is_ok();
    if let Ok(why) = &trust {
        evidence.push(why.clone());
    }
    let mut verdict = Verdict {
        kind: Kind::Other,
        ticket_id: None,
        ips: Vec::new(),
        outcomes: Vec::new(),
        trusted,
        origin: Origin::Unrelated,
        bounce: None,
        loop_risk: loop_risk(inbound, ctx).or_else(|| only_copied(inbound, ctx)),
        claimed_kind: None,
        own_claim: None,
        ips_omitted: 0,
        confidence: 0.0,
        runner_up: None,
        uncertain: None,
        evidence: Vec::new(),
    };

    match own_message(inbound, ctx) {
        OwnClaim::Verified(why) => {
            evidence.push(why);
            return negative(verdict, Origin::Own, inbound, rules, ctx, evidence);
        }
        OwnClaim::Unconfirmed(id, why) => {
            verdict.own_claim = Some(id);
            evidence.push(why);
        }
        OwnClaim::NotOurs(Some(why)) => evidence.push(why),
        OwnClaim::NotOurs(None) => {}
    }
    if let Some(why) = jmrp(inbound, rules) {
        evidence.push(why);
        verdict.kind = Kind::JmrpReport;
        verdict.origin = Origin::Jmrp;
        verdict.ips = extract::sender_ips(&inbound.subject, rules, &ctx.our_networks);
        if verdict.ips.is_empty() {
            verdict.ips = jmrp_source_ip(inbound, rules, ctx);
        }
        verdict.evidence = evidence;
        return verdict;
    }
    if let Some(why) = bounce_signal(inbound, rules) {
        evidence.push(why);
        return classify_bounce(verdict, inbound, rules, ctx, evidence);
    }
    if let Some(m) = first_match(&rules.markers.forward_subject, &inbound.subject) {
        evidence.push(ev("markers.forward_subject", m));
        return negative(verdict, Origin::Forward, inbound, rules, ctx, evidence);
    }
    if let Some(why) = list_mail(inbound) {
        evidence.push(why);
        return negative(verdict, Origin::List, inbound, rules, ctx, evidence);
    }
    if let Some(why) = auto_reply(inbound, rules) {
        evidence.push(why);
        return negative(verdict, Origin::AutoReply, inbound, rules, ctx, evidence);
    }

    let (own_text, _) = extract::split_own_text(&inbound.body, rules);
    let subject_ticket = extract::ticket_id(&inbound.subject, rules);
    let sender_name = inbound
        .from
        .as_ref()
        .and_then(|f| f.name.clone())
        .unwrap_or_default();
    // Each text normalised once: the markers run on the sender's name, the subject and the
    // message's own text, together and apart.
    let (name_plain, subject_plain, own_plain) = (
        normalize(&sender_name),
        normalize(&inbound.subject),
        normalize(&own_text),
    );
    let joined = |parts: &[&str]| {
        parts
            .iter()
            .filter(|p| !p.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let support_marker = rules
        .markers
        .microsoft_support
        .first_match(&joined(&[&name_plain, &subject_plain, &own_plain]))
        .map(|m| m.as_str().to_string());
    let snds_marker = rules
        .markers
        .snds
        .first_match(&joined(&[&name_plain, &subject_plain]))
        .or_else(|| rules.markers.snds.first_match(&own_plain))
        .map(|m| m.as_str().to_string());

    let looks_microsoft =
        subject_ticket.is_some() || support_marker.is_some() || snds_marker.is_some();
    if !looks_microsoft {
        return negative(verdict, Origin::Unrelated, inbound, rules, ctx, evidence);
    }
    if let Some((id, rule)) = &subject_ticket {
        evidence.push(ev(rule, id.clone()));
    }
    if let Some(m) = support_marker.clone() {
        evidence.push(ev("markers.microsoft_support", m));
    }
    if !trusted {
        evidence.push(ev(
            "trust",
            format!(
                "claims to be Microsoft sender support but our MX did not verify it: {}",
                trust.as_ref().err().map_or("", String::as_str)
            ),
        ));
        // What it claims to be, judged by the rules alone: a learned template never speaks
        // for mail that our MX did not verify.
        let claimed = score::score(&features::read(inbound, &own_text, rules, ctx), rules, &[]);
        verdict.claimed_kind = Some(claimed.kind);
        return negative(verdict, Origin::Unverified, inbound, rules, ctx, evidence);
    }

    verdict.origin = Origin::Microsoft;
    verdict.ips = extract::sender_ips(&own_text, rules, &ctx.our_networks);
    verdict.ticket_id = subject_ticket
        .map(|(id, _)| id)
        .or_else(|| extract::ticket_id(&own_text, rules).map(|(id, _)| id))
        .or_else(|| {
            let bare = extract::bare_ticket(&inbound.subject)?;
            evidence.push(ev("ticket.subject_position", bare.clone()));
            Some(bare)
        });

    if let (Some(m), None) = (snds_marker, &verdict.ticket_id) {
        evidence.push(ev("markers.snds", m));
        verdict.kind = Kind::SndsNotice;
        verdict.evidence = evidence;
        return verdict;
    }

    let features = features::read(inbound, &own_text, rules, ctx);
    let extra: Vec<score::ExtraCue> = if learned.is_empty() {
        Vec::new()
    } else {
        learned::best_match(&learned::shingles(&own_text), learned)
            .map(|m| learned::cue(&m))
            .into_iter()
            .collect()
    };
    let scored = score::score(&features, rules, &extra);
    verdict.outcomes = features.table;
    verdict.kind = scored.kind;
    verdict.confidence = scored.confidence;
    verdict.runner_up = scored.runner_up;
    if let Some(why) = &scored.uncertain {
        evidence.push(ev("uncertain", why.clone()));
    }
    verdict.uncertain = scored.uncertain;
    evidence.extend(scored.evidence);
    let mut listed: HashSet<String> = verdict.ips.iter().cloned().collect();
    for o in &verdict.outcomes {
        if listed.insert(o.ip.clone()) {
            verdict.ips.push(o.ip.clone());
        }
    }
    verdict.evidence = evidence;
    verdict
}

/// A message that can never be a Microsoft result: it keeps the ticket and IPs it mentions
/// (quoted and forwarded text included) so an operator can see what it is about.
fn negative(
    mut verdict: Verdict,
    origin: Origin,
    inbound: &Inbound,
    rules: &Rules,
    ctx: &Context,
    evidence: Vec<Evidence>,
) -> Verdict {
    verdict.kind = Kind::Other;
    verdict.origin = origin;
    // Forwarded-as-attachment text counts here too: it is what the message is about.
    let mut text = inbound.body.clone();
    for a in &inbound.attached {
        text.push('\n');
        text.push_str(&a.body);
    }
    verdict.ticket_id = extract::ticket_id(&inbound.subject, rules)
        .or_else(|| extract::ticket_id(&text, rules))
        .map(|(id, _)| id);
    // Microsoft's own mail that is not sender support (a sign-in alert, an admin notice) names
    // end users' and Microsoft's addresses, never ours.
    if !(verdict.trusted && origin == Origin::Unrelated) {
        verdict.ips = extract::sender_ips(&text, rules, &ctx.our_networks);
    }
    verdict.evidence = evidence;
    verdict
}

/// RFC 3834 signals that an automatic answer could loop. `Auto-Submitted` is not one of them
/// here: Microsoft's templated results are automatic and still invite a reply.
fn loop_risk(inbound: &Inbound, ctx: &Context) -> Option<String> {
    if let Some(rp) = inbound.header("return-path") {
        let rp = rp.trim();
        if rp == "<>" || rp.is_empty() {
            return Some("null return path".to_string());
        }
    }
    if let Some(p) = inbound.header("precedence") {
        let p = p.trim().to_ascii_lowercase();
        if ["bulk", "junk", "list"].contains(&p.as_str()) {
            return Some(format!("Precedence: {p}"));
        }
    }
    if inbound.header("x-loop").is_some() {
        return Some("X-Loop header".to_string());
    }
    // Our own header on someone else's message: it echoes our mail, so answering could loop.
    if !ctx.loop_header.is_empty() && inbound.header(&ctx.loop_header).is_some() {
        return Some(format!("carries our {} header", ctx.loop_header));
    }
    None
}

/// We are on Cc but not on To: the ticket is someone else's to answer.
fn only_copied(inbound: &Inbound, ctx: &Context) -> Option<String> {
    let ours = |m: &crate::pipeline::parse::Mailbox| {
        ctx.own_addresses
            .iter()
            .any(|a| a.eq_ignore_ascii_case(&m.address))
    };
    (!inbound.to.iter().any(ours) && inbound.cc.iter().any(ours))
        .then(|| "we are only copied (Cc), the ticket is someone else's".to_string())
}

fn ev(rule: &str, matched: String) -> Evidence {
    Evidence::new(rule, matched)
}

fn first_match(patterns: &PatternList, text: &str) -> Option<String> {
    let text = normalize(text);
    patterns.first_match(&text).map(|m| m.as_str().to_string())
}

pub(crate) fn domain_within(domain: &str, parents: &[String]) -> bool {
    let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    parents.iter().any(|p| {
        let p = p.to_ascii_lowercase();
        domain == p || domain.ends_with(&format!(".{p}"))
    })
}

/// The `Authentication-Results` header our own MX wrote for this message: the topmost one with
/// a configured authserv-id that stands above every `Received:` header our own hosts did not
/// add. A header further down was already in the message when it reached us, so it may be
/// forged (RFC 8601 section 5 asks the MX to strip those; not every MX does).
fn our_auth_results<'a>(
    inbound: &'a Inbound,
    ctx: &Context,
) -> Result<&'a crate::pipeline::parse::AuthResults, &'static str> {
    let ours = |id: &str| ctx.authserv_ids.iter().any(|a| a.eq_ignore_ascii_case(id));
    let first = inbound.auth_results.iter().find(|ar| ours(&ar.authserv_id));
    let Some(first) = first else {
        return Err("no Authentication-Results from our MX");
    };
    let internal = ctx.internal_hosts();
    let boundary = inbound
        .headers
        .iter()
        .enumerate()
        .find(|(_, (name, value))| {
            name == "received" && !received_by(value).is_some_and(|by| domain_within(&by, internal))
        })
        .map(|(i, _)| i);
    match boundary {
        Some(b) if first.index > b => {
            Err("our MX's Authentication-Results sits below a Received header our hosts did not add (forged upstream?)")
        }
        _ => Ok(first),
    }
}

/// The host in a `Received:` header's `by` clause, comments removed.
pub(crate) fn received_by(value: &str) -> Option<String> {
    received_clause(value, "by")
}

/// The host (or local name) in a `Received:` header's `from` clause, comments removed.
fn received_from(value: &str) -> Option<String> {
    received_clause(value, "from")
}

fn received_clause(value: &str, clause: &str) -> Option<String> {
    let mut depth = 0usize;
    let mut plain = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            c if depth == 0 => plain.push(c),
            _ => plain.push(' '),
        }
    }
    let mut words = plain.split_whitespace();
    while let Some(w) = words.next() {
        if w.eq_ignore_ascii_case(clause) {
            return words
                .next()
                .map(|h| h.trim_end_matches(';').to_ascii_lowercase());
        }
    }
    None
}

/// The domain our MX authenticated as the author's: DMARC passed for `header.from`, and that
/// domain is the domain of the message's single `From:` mailbox.
fn dmarc_domain(inbound: &Inbound, ctx: &Context) -> Result<(String, Evidence), String> {
    let ours = our_auth_results(inbound, ctx).map_err(str::to_string)?;
    let single_author = inbound.from_count == 1 && inbound.header_all("from").count() == 1;
    let Some(from) = inbound.from.as_ref().filter(|_| single_author) else {
        return Err("no single From: mailbox to authenticate".to_string());
    };
    let from_domain = from.domain();
    let pass = ours.results.iter().find(|r| {
        r.method == "dmarc"
            && r.result == "pass"
            && r.prop("header.from").is_some_and(|d| {
                d.trim_end_matches('.')
                    .eq_ignore_ascii_case(from_domain.trim_end_matches('.'))
            })
    });
    match pass {
        Some(r) => Ok((
            from_domain.clone(),
            ev(
                "trust",
                format!(
                    "{}: dmarc=pass header.from={}",
                    ours.authserv_id,
                    r.prop("header.from").unwrap_or_default()
                ),
            ),
        )),
        None => Err(format!(
            "our MX ({}) reports no dmarc=pass for the From: domain {from_domain}",
            ours.authserv_id
        )),
    }
}

/// Why a message is not trusted as Microsoft's.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Untrusted {
    /// Our MX does not vouch for it.
    Mx(String),
    /// Our MX does, but the bot's own DKIM check (required) did not confirm it.
    Dkim(String),
}

impl fmt::Display for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Untrusted::Mx(why) | Untrusted::Dkim(why) => f.write_str(why),
        }
    }
}

trait TrustOutcome {
    fn is_ok_or_dkim(&self) -> bool;
}

impl TrustOutcome for Result<Evidence, Untrusted> {
    /// Trusted, or trusted by our MX and waiting for the DKIM check.
    fn is_ok_or_dkim(&self) -> bool {
        matches!(self, Ok(_) | Err(Untrusted::Dkim(_)))
    }
}

/// Whether our own MX verified the message as sent by one of Microsoft's domains (and, when
/// required, the bot's own DKIM check agrees): the evidence, or why not.
fn check_trust(
    inbound: &Inbound,
    ctx: &Context,
    dkim: Option<&DkimFacts>,
) -> Result<Evidence, Untrusted> {
    let (domain, why) = dmarc_domain(inbound, ctx).map_err(Untrusted::Mx)?;
    if !domain_within(&domain, &ctx.microsoft_domains) {
        return Err(Untrusted::Mx(format!(
            "{domain} is not one of trust.microsoft_domains"
        )));
    }
    if !ctx.require_dkim {
        return Ok(why);
    }
    let Some(facts) = dkim else {
        return Err(Untrusted::Dkim(
            "verify_dkim is on and the bot's own DKIM check was not made".to_string(),
        ));
    };
    // Relaxed alignment: the signing domain is the From's domain or a parent of it, and is
    // Microsoft's.
    match facts.passed.iter().find(|d| {
        domain_within(&domain, std::slice::from_ref(d)) && domain_within(d, &ctx.microsoft_domains)
    }) {
        Some(d) => Ok(ev(
            "trust",
            format!("{}; the bot verified DKIM d={d}", why.matched),
        )),
        None => Err(Untrusted::Dkim(format!(
            "the bot's own DKIM check found no valid signature of {domain}{}",
            facts
                .note
                .as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        ))),
    }
}

static OWN_MAILER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\bpostmaster-bot\b").expect("static regex is valid"));

/// Whether a message is our own mail seen again.
enum OwnClaim {
    /// Our Message-ID, and our MX authenticated it as from one of our domains.
    Verified(Evidence),
    /// Our Message-ID, nothing more: ours only if the outbox sent it.
    Unconfirmed(String, Evidence),
    /// Not ours; headers that merely look like ours are noted.
    NotOurs(Option<Evidence>),
}

/// Our own mail is what carries our Message-ID **and** is verifiably ours. A loop header, an
/// `X-Mailer` or our From address alone are believed from nobody: anyone can write them.
fn own_message(inbound: &Inbound, ctx: &Context) -> OwnClaim {
    let own_domains = ctx.own_domains();
    let our_id = inbound.message_id.as_ref().filter(|id| {
        id.rsplit_once('@').is_some_and(|(_, d)| {
            ctx.own_message_id_domains
                .iter()
                .any(|o| o.eq_ignore_ascii_case(d))
        })
    });
    if let Some(id) = our_id {
        return match dmarc_domain(inbound, ctx) {
            Ok((domain, why)) if domain_within(&domain, &own_domains) => OwnClaim::Verified(ev(
                "own.authenticated",
                format!("Message-ID {id}; {}", why.matched),
            )),
            _ => OwnClaim::Unconfirmed(
                id.clone(),
                ev(
                    "own.unconfirmed",
                    format!("Message-ID {id} is of our domain but our MX did not authenticate it"),
                ),
            ),
        };
    }
    let looks = if !ctx.loop_header.is_empty() && inbound.header(&ctx.loop_header).is_some() {
        Some(format!("{} header", ctx.loop_header))
    } else if inbound
        .header("x-mailer")
        .is_some_and(|m| OWN_MAILER.is_match(m))
    {
        Some("X-Mailer names postmaster-bot".to_string())
    } else {
        inbound
            .from
            .as_ref()
            .filter(|f| {
                ctx.own_addresses
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(&f.address))
            })
            .map(|f| format!("From: {}", f.address))
    };
    OwnClaim::NotOurs(looks.map(|l| {
        ev(
            "own.not_ours",
            format!("{l}, but not our Message-ID: not taken as our own mail"),
        )
    }))
}

fn jmrp(inbound: &Inbound, rules: &Rules) -> Option<Evidence> {
    let from = inbound.from.as_ref()?;
    first_match(&rules.markers.jmrp_from, &from.address)?;
    if let Some(m) = first_match(&rules.markers.jmrp_subject, &inbound.subject) {
        return Some(ev("markers.jmrp_subject", m));
    }
    if inbound
        .attached
        .iter()
        .any(|a| a.header("x-hmxmroriginalrecipient").is_some())
    {
        return Some(ev(
            "jmrp.attached",
            "X-HmXmrOriginalRecipient in the attached message".to_string(),
        ));
    }
    if inbound.report_type.as_deref() == Some("feedback-report") {
        return Some(ev(
            "jmrp.arf",
            "multipart/report; report-type=feedback-report".to_string(),
        ));
    }
    None
}

/// The complained-about message's first hop, when the subject names no IP.
fn jmrp_source_ip(inbound: &Inbound, rules: &Rules, ctx: &Context) -> Vec<String> {
    let Some(received) = inbound.attached.first().and_then(|a| a.header("received")) else {
        return Vec::new();
    };
    // "from host ([192.0.2.1]) by ..." names the host as a hop, so read the bracket directly.
    let inner: String = received
        .chars()
        .map(|c| if c == '(' || c == ')' { ' ' } else { c })
        .collect();
    let from_part = inner.split(" by ").next().unwrap_or_default();
    let bare = from_part.replace(['[', ']'], " ");
    let candidates = bare
        .split_whitespace()
        .filter(|t| t.parse::<std::net::IpAddr>().is_ok())
        .collect::<Vec<_>>()
        .join(" ");
    extract::sender_ips(&candidates, rules, &ctx.our_networks)
}

fn bounce_signal(inbound: &Inbound, rules: &Rules) -> Option<Evidence> {
    if first_match(&rules.markers.forward_subject, &inbound.subject).is_some() {
        return None;
    }
    if inbound.content_type == "multipart/report"
        && inbound.report_type.as_deref() == Some("delivery-status")
    {
        return Some(ev(
            "bounce.dsn",
            "multipart/report; report-type=delivery-status".to_string(),
        ));
    }
    if inbound.header("x-failed-recipients").is_some() {
        return Some(ev(
            "bounce.x_failed_recipients",
            "X-Failed-Recipients".to_string(),
        ));
    }
    if inbound.header("x-ms-exchange-message-is-ndr").is_some() {
        return Some(ev(
            "bounce.exchange_ndr",
            "X-MS-Exchange-Message-Is-Ndr".to_string(),
        ));
    }
    let from_local = inbound
        .from
        .as_ref()
        .map(|f| f.local_part())
        .unwrap_or_default();
    let sender_is_daemon = first_match(&rules.markers.bounce_sender, &from_local).is_some()
        || inbound
            .from
            .as_ref()
            .and_then(|f| f.name.as_deref())
            .is_some_and(|n| n.to_ascii_lowercase().contains("mail delivery"));
    let null_sender = inbound
        .header("return-path")
        .is_some_and(|rp| rp.trim() == "<>" || rp.trim().is_empty());
    if !(sender_is_daemon || null_sender) {
        return None;
    }
    let report = extract::bounce_report_text(&inbound.body, rules);
    let marker = first_match(&rules.markers.bounce_subject, &inbound.subject)
        .map(|m| ev("markers.bounce_subject", m))
        .or_else(|| {
            first_match(&rules.markers.bounce_body, &report).map(|m| ev("markers.bounce_body", m))
        })
        // In any language: a mail-system sender reporting a remote server's SMTP reply.
        .or_else(|| {
            let folded = normalize(&report);
            // Generated by a mail system, not a person's reply that quotes an error.
            let generated = inbound.in_reply_to.is_empty()
                && (null_sender || inbound.header("auto-submitted").is_some());
            (sender_is_daemon && generated)
                .then(|| SMTP_REPLY_WITH_STATUS.find(&folded))
                .flatten()
                .map(|m| ev("bounce.smtp_reply", m.as_str().to_string()))
        });
    // A null sender alone is also an out-of-office; it needs bounce wording too.
    marker.filter(|_| sender_is_daemon || null_sender)
}

fn classify_bounce(
    mut verdict: Verdict,
    inbound: &Inbound,
    rules: &Rules,
    ctx: &Context,
    mut evidence: Vec<Evidence>,
) -> Verdict {
    verdict.origin = Origin::Bounce;
    verdict.kind = Kind::NdrOther;

    // Diagnostic units: each DSN Diagnostic-Code, then each paragraph of the report text.
    let mut units: Vec<(String, Option<String>)> = Vec::new();
    if let Some(dsn) = &inbound.dsn {
        for r in &dsn.recipients {
            if let Some(d) = &r.diagnostic_code {
                units.push((unfold_reply(d), r.status.clone()));
            }
        }
    }
    let report = extract::bounce_report_text(&inbound.body, rules);
    for paragraph in report.split("\n\n") {
        if !paragraph.trim().is_empty() {
            units.push((unfold_reply(paragraph), None));
        }
    }

    let mut best: Option<(&crate::pipeline::rules::BounceRule, String)> = None;
    for rule in &rules.bounces {
        let hit = units.iter().find_map(|(unit, _)| {
            let text = normalize(unit);
            let m = rule.patterns.iter().find_map(|p| p.find(&text))?;
            rule.require
                .iter()
                .all(|r| r.is_match(&text))
                .then(|| m.as_str().to_string())
        });
        if let Some(m) = hit {
            best = Some((rule, m));
            break; // rules are sorted by priority
        }
    }

    let matching_units: Vec<&(String, Option<String>)> = match &best {
        Some((rule, _)) => units
            .iter()
            .filter(|(u, _)| {
                let t = normalize(u);
                rule.patterns.iter().any(|p| p.is_match(&t))
            })
            .collect(),
        None => units
            .iter()
            .filter(|(u, _)| SMTP_REPLY.is_match(&normalize(u)))
            .collect(),
    };
    let mut ips = Vec::new();
    let mut seen = HashSet::new();
    for (unit, _) in &matching_units {
        let (found, omitted) =
            extract::sender_ips_capped(unit, rules, &ctx.our_networks, ctx.max_ips);
        verdict.ips_omitted += omitted;
        for ip in found {
            if seen.insert(ip.clone()) {
                ips.push(ip);
            }
        }
    }
    // Where a refusal introduces our address ("from [ip]", "IP=ip"), a bare dotted number
    // elsewhere in it (Yahoo's "- 4.16.55.1" is an internal code) is not ours. A refusal names
    // one or two; a list of many is taken as it is (and costs no search per address).
    if (2..=16).contains(&ips.len()) {
        let texts: Vec<&str> = matching_units.iter().map(|(u, _)| u.as_str()).collect();
        let introduced: Vec<String> = ips
            .iter()
            .filter(|ip| texts.iter().any(|t| introduces(t, ip)))
            .cloned()
            .collect();
        if !introduced.is_empty() {
            ips = introduced;
        }
    }
    verdict.ips = ips;
    let reporter = inbound
        .dsn
        .as_ref()
        .and_then(|d| d.reporting_mta.clone())
        .or_else(|| inbound.from.as_ref().map(|f| f.domain()))
        .map(|r| r.trim().trim_end_matches('.').to_ascii_lowercase())
        .filter(|r| !r.is_empty());
    let from_own_mta = reporter
        .as_deref()
        .is_some_and(|r| !ctx.reporting_mtas.is_empty() && domain_within(r, &ctx.reporting_mtas))
        && !entered_from_outside(inbound, ctx);

    let diagnostic = matching_units
        .iter()
        .find_map(|(u, _)| smtp_reply(&normalize(u)))
        .unwrap_or_default();
    let status = matching_units
        .iter()
        .find_map(|(_, s)| s.clone())
        .or_else(|| {
            inbound
                .dsn
                .as_ref()
                .and_then(|d| d.recipients.iter().find_map(|r| r.status.clone()))
        });

    let named_provider = || -> Option<String> {
        let remote = inbound
            .dsn
            .iter()
            .flat_map(|d| &d.recipients)
            .filter_map(|r| r.remote_mta.as_deref())
            .map(|m| m.rsplit(';').next().unwrap_or(m).trim().to_string());
        // Lazily, and a bounded number of names: a bounce of a thousand recipients costs no
        // more than one of ten.
        let in_answer = matching_units
            .iter()
            .flat_map(|(u, _)| HOST_NAME.find_iter(u).map(|m| m.as_str().to_string()));
        let recipients = inbound
            .dsn
            .iter()
            .flat_map(|d| &d.recipients)
            .filter_map(|r| r.final_recipient.clone())
            .chain(
                inbound
                    .header_all("x-failed-recipients")
                    .flat_map(|v| v.split(',').map(str::to_string)),
            )
            .filter_map(|r| {
                r.rsplit_once('@')
                    .map(|(_, d)| d.trim().trim_end_matches('>').to_string())
            });
        remote
            .chain(in_answer)
            .chain(recipients)
            .take(64)
            .find_map(|host| rules.provider_of_host(&host).map(|p| p.id.clone()))
    };

    verdict.bounce = Some(match best {
        Some((rule, matched)) => {
            evidence.push(ev(&rule.id, matched));
            verdict.kind = rule.kind;
            let quote = if from_own_mta {
                matching_units.first().and_then(|(unit, unit_status)| {
                    bounce_quote(rule, &normalize(unit), unit_status.as_deref(), &verdict.ips)
                })
            } else {
                None
            };
            // A block's code: the rule's own, else its listing code, else the enhanced status.
            let block_code = (rule.block || rule.kind == Kind::NdrMsBlocklist)
                .then(|| {
                    rule.code
                        .as_ref()
                        .or(rule.listing.as_ref())
                        .and_then(|code| {
                            matching_units.iter().find_map(|(unit, _)| {
                                let text = normalize(unit);
                                let caps = code.captures(&text)?;
                                // The first group that took part, else the whole match.
                                let found = caps
                                    .iter()
                                    .skip(1)
                                    .flatten()
                                    .next()
                                    .or_else(|| caps.get(0))?
                                    .as_str();
                                // A code is a short token; anything else is not shown as one.
                                (found.len() <= 64 && !found.contains(char::is_whitespace))
                                    .then(|| found.to_string())
                            })
                        })
                        .or_else(|| status.clone())
                        .or_else(|| {
                            matching_units.iter().find_map(|(unit, _)| {
                                ENHANCED_STATUS
                                    .captures(unit)
                                    .and_then(|c| c.get(1))
                                    .map(|m| m.as_str().to_string())
                            })
                        })
                })
                .flatten();
            Bounce {
                cause: rule.cause.clone(),
                channel: rule.channel,
                notify: rule.notify,
                diagnostic,
                status,
                reporter,
                own_mta: from_own_mta,
                quote,
                provider: rule.provider.clone().or_else(named_provider),
                block_code,
                block: rule.block && rule.kind == Kind::NdrOther && ctx.other_receivers,
            }
        }
        None => Bounce {
            cause: "unknown".to_string(),
            channel: None,
            notify: false,
            diagnostic,
            status,
            reporter,
            own_mta: from_own_mta,
            quote: None,
            provider: named_provider(),
            block_code: None,
            block: false,
        },
    });
    verdict.evidence = evidence;
    verdict
}

/// Whether a `Received:` header shows the message coming in from a host that is not ours: a
/// bounce our own MTA wrote never does (it is handed over locally or between our hosts).
fn entered_from_outside(inbound: &Inbound, ctx: &Context) -> bool {
    let ours: Vec<String> = ctx
        .reporting_mtas
        .iter()
        .chain(ctx.internal_hosts())
        .cloned()
        .collect();
    inbound.header_all("received").any(|value| {
        received_from(value).is_some_and(|host| {
            let host = host.trim_matches(|c| c == '[' || c == ']');
            let local = !host.contains('.')
                || host.starts_with("localhost")
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            !local && !domain_within(host, &ours)
        })
    })
}

/// Whether `text` introduces `ip` as the sender's: `from`, `IP`, `address`, `=` or `[` right
/// before it.
fn introduces(text: &str, ip: &str) -> bool {
    text.match_indices(ip).any(|(at, _)| {
        let mut from = at.saturating_sub(24);
        while !text.is_char_boundary(from) {
            from += 1;
        }
        INTRODUCED.is_match(&text[from..at])
    })
}

static INTRODUCED: LazyLock<Regex> = LazyLock::new(|| {
    // "[" only right after the status code (Gmail's "550-5.7.1 [192.0.2.1 12]"): elsewhere a
    // bracketed address is as often the receiving server's.
    Regex::new(r"(?i)(?:\bfrom|\bip|\baddress|\bip\s*=|[245]\.\d{1,3}\.\d{1,3}\s*\[)\s*\[?\s*$")
        .expect("static regex is valid")
});

/// A multi-line SMTP reply as one text: the lines after the first of `550-5.7.1 ...` ... `550
/// 5.7.1 ...` lose their repeated code, so that the server's sentence reads on across lines.
fn unfold_reply(text: &str) -> String {
    // The code of a reply line (after any whitespace and transcript marker), and whether the
    // reply goes on (`550-`) or ends (`550 `) with this line.
    fn code_of(prefix: &str) -> (&str, bool) {
        let bare = prefix
            .trim_start()
            .trim_start_matches(['<', '-'])
            .trim_start();
        (&bare[..3], bare.as_bytes().get(3) == Some(&b'-'))
    }
    let Some(first) = REPLY_LINE_PREFIX.find(text) else {
        return text.to_string();
    };
    let (code, mut goes_on) = code_of(first.as_str());
    let mut code = code.to_string();
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..first.end()]);
    let mut last = first.end();
    for m in REPLY_LINE_PREFIX.find_iter(&text[first.end()..]) {
        let (start, end) = (first.end() + m.start(), first.end() + m.end());
        let (this, continues) = code_of(&text[start..end]);
        // A line of the same reply loses its code; after a reply's last line, a code starts
        // the next reply (another attempt) and stays.
        if goes_on && this == code {
            out.push_str(&text[last..start]);
            out.push(' ');
            last = end;
        }
        code = this.to_string();
        goes_on = continues;
    }
    out.push_str(&text[last..]);
    out
}

/// A reply line's code and enhanced status (`550-5.7.1 `), at a line's start or after space.
static REPLY_LINE_PREFIX: LazyLock<Regex> = LazyLock::new(|| {
    // A transcript's direction marker (`<<< `, `<-- `) may stand before it.
    Regex::new(r"(?:^|\s)(?:(?:<<<|<--|<-)\s*)?[245]\d\d[- ]#?[245]\.\d{1,3}\.\d{1,3}\s+")
        .expect("static regex is valid")
});

/// A host or mail domain in a bounce's diagnostic text.
static HOST_NAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,24}\b").expect("static regex is valid")
});

static SMTP_REPLY_WITH_STATUS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\b[45]\d\d[ -]#?[45]\.\d{1,3}\.\d{1,3}\b").expect("static regex is valid")
});
static REPLY_CODE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b([45]\d\d)[ -]").expect("static regex is valid"));
static ENHANCED_STATUS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b([245]\.\d{1,3}\.\d{1,3})\b").expect("static regex is valid"));
static LISTING_CODE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9()-]{2,24}$").expect("static regex is valid"));

/// The bounce evidence a reply to Microsoft may carry, rebuilt from parts that cannot carry
/// free text: the SMTP reply code, the enhanced status, our (parsed) IP, the rule's words and a
/// listing code of a few letters and digits. `None` when any part is missing.
fn bounce_quote(
    rule: &crate::pipeline::rules::BounceRule,
    unit: &str,
    unit_status: Option<&str>,
    ips: &[String],
) -> Option<String> {
    let words = rule.quote.as_deref()?;
    let code = REPLY_CODE.captures(unit)?.get(1)?.as_str();
    let status = unit_status
        .and_then(|s| ENHANCED_STATUS.captures(s))
        .or_else(|| ENHANCED_STATUS.captures(unit))?
        .get(1)?
        .as_str();
    let listing = rule
        .listing
        .as_ref()?
        .find(unit)
        .map(|m| m.as_str())
        .filter(|l| LISTING_CODE.is_match(l))?;
    let words = if words.contains("{ip}") {
        let ip = ips.first()?;
        if ip.parse::<std::net::IpAddr>().is_err() && ip.parse::<IpNet>().is_err() {
            return None;
        }
        words.replace("{ip}", ip)
    } else {
        words.to_string()
    };
    Some(format!("{code} {status} {words} ({listing})"))
}

static SMTP_REPLY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\b[45]\d\d[ -]|\b[45]\.\d{1,3}\.\d{1,3}\b").expect("static regex is valid")
});

/// The remote server's reply inside a diagnostic unit: from the first SMTP code on.
fn smtp_reply(text: &str) -> Option<String> {
    let m = SMTP_REPLY.find(text)?;
    let reply = text[m.start()..].trim();
    let mut reply = reply.split(" (in reply to ").next().unwrap_or(reply).trim();
    // Postfix wraps the reply in "(host ... said: ...)": drop a closing parenthesis only when
    // it closes nothing of the reply's own ("... (BL)" keeps its code).
    while reply.ends_with(')') && reply.matches(')').count() > reply.matches('(').count() {
        reply = reply[..reply.len() - 1].trim_end();
    }
    Some(reply.chars().take(600).collect())
}

fn list_mail(inbound: &Inbound) -> Option<Evidence> {
    for name in ["list-id", "list-unsubscribe", "list-post"] {
        if let Some(v) = inbound.header(name) {
            return Some(ev("list.header", format!("{name}: {v}")));
        }
    }
    if inbound
        .header("precedence")
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("list"))
    {
        return Some(ev("list.precedence", "Precedence: list".to_string()));
    }
    None
}

fn auto_reply(inbound: &Inbound, rules: &Rules) -> Option<Evidence> {
    if let Some(m) = first_match(&rules.markers.auto_reply_subject, &inbound.subject) {
        return Some(ev("markers.auto_reply_subject", m));
    }
    for name in ["x-autoreply", "x-autorespond", "x-autoresponse"] {
        if inbound.header(name).is_some() {
            return Some(ev("auto_reply.header", name.to_string()));
        }
    }
    None
}

#[cfg(test)]
pub(crate) mod tests;
