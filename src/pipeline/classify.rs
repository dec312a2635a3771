//! [`Inbound`] -> [`Verdict`]: which kind of message this is, which ticket and IPs it is about,
//! whether Microsoft really sent it, and the evidence for each of those findings.

use std::fmt;
use std::sync::LazyLock;

use ipnet::IpNet;
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::pipeline::extract::{self, normalize};
use crate::pipeline::parse::Inbound;
use crate::pipeline::rules::Rules;

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

/// Why a finding was made: the rule and the words it matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Evidence {
    pub rule: String,
    pub matched: String,
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
}

/// The classifier's finding for one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
    pub evidence: Vec<Evidence>,
}

impl Verdict {
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
#[derive(Debug, Clone, Default)]
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
}

/// Classifies one message. Pure: the same message, rules and context give the same verdict.
pub fn classify(inbound: &Inbound, rules: &Rules, ctx: &Context) -> Verdict {
    let mut evidence = Vec::new();
    let trusted = check_trust(inbound, ctx, &mut evidence);
    let mut verdict = Verdict {
        kind: Kind::Other,
        ticket_id: None,
        ips: Vec::new(),
        outcomes: Vec::new(),
        trusted,
        origin: Origin::Unrelated,
        bounce: None,
        loop_risk: loop_risk(inbound).or_else(|| only_copied(inbound, ctx)),
        claimed_kind: None,
        evidence: Vec::new(),
    };

    if let Some(why) = own_message(inbound, ctx) {
        evidence.push(why);
        return negative(verdict, Origin::Own, inbound, rules, ctx, evidence);
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
    let identity_text = format!("{sender_name}\n{}\n{own_text}", inbound.subject);
    let support_marker = first_match(&rules.markers.microsoft_support, &identity_text);
    let snds_marker = first_match(
        &rules.markers.snds,
        &format!("{sender_name}\n{}", inbound.subject),
    )
    .or_else(|| first_match(&rules.markers.snds, &own_text));

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
            "claims to be Microsoft sender support but our MX did not verify it".to_string(),
        ));
        let mut scratch = Vec::new();
        let claimed = result_table(&own_text, rules, ctx, &mut scratch);
        verdict.claimed_kind = Some(if claimed.is_empty() {
            phrase_kind(&own_text, rules, &mut scratch)
        } else {
            table_kind(&claimed)
        });
        return negative(verdict, Origin::Unverified, inbound, rules, ctx, evidence);
    }

    verdict.origin = Origin::Microsoft;
    verdict.ips = extract::sender_ips(&own_text, rules, &ctx.our_networks);
    verdict.ticket_id = subject_ticket
        .map(|(id, _)| id)
        .or_else(|| extract::ticket_id(&own_text, rules).map(|(id, _)| id));

    if let (Some(m), None) = (snds_marker, &verdict.ticket_id) {
        evidence.push(ev("markers.snds", m));
        verdict.kind = Kind::SndsNotice;
        verdict.evidence = evidence;
        return verdict;
    }

    verdict.outcomes = result_table(&own_text, rules, ctx, &mut evidence);
    verdict.kind = if verdict.outcomes.is_empty() {
        phrase_kind(&own_text, rules, &mut evidence)
    } else {
        table_kind(&verdict.outcomes)
    };
    for o in &verdict.outcomes {
        if !verdict.ips.contains(&o.ip) {
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
    verdict.ips = extract::sender_ips(&text, rules, &ctx.our_networks);
    verdict.evidence = evidence;
    verdict
}

/// RFC 3834 signals that an automatic answer could loop. `Auto-Submitted` is not one of them
/// here: Microsoft's templated results are automatic and still invite a reply.
fn loop_risk(inbound: &Inbound) -> Option<String> {
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
    Evidence {
        rule: rule.to_string(),
        matched,
    }
}

fn first_match(patterns: &[Regex], text: &str) -> Option<String> {
    let text = normalize(text);
    patterns
        .iter()
        .find_map(|r| r.find(&text).map(|m| m.as_str().to_string()))
}

pub(crate) fn domain_within(domain: &str, parents: &[String]) -> bool {
    let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    parents.iter().any(|p| {
        let p = p.to_ascii_lowercase();
        domain == p || domain.ends_with(&format!(".{p}"))
    })
}

/// Reads only the topmost `Authentication-Results` written by one of our own MX hosts: headers
/// from anyone else, or further down, may be forged.
fn check_trust(inbound: &Inbound, ctx: &Context, evidence: &mut Vec<Evidence>) -> bool {
    let Some(ours) = inbound.auth_results.iter().find(|ar| {
        ctx.authserv_ids
            .iter()
            .any(|id| id.eq_ignore_ascii_case(&ar.authserv_id))
    }) else {
        return false;
    };
    let from_domain = inbound
        .from
        .as_ref()
        .map(|f| f.domain())
        .unwrap_or_default();
    for r in &ours.results {
        if r.result != "pass" {
            continue;
        }
        let verified = match r.method.as_str() {
            "dmarc" => r
                .prop("header.from")
                .is_some_and(|d| domain_within(d, &ctx.microsoft_domains)),
            // DKIM counts only when aligned with the From domain, as DMARC would have it.
            "dkim" => {
                let d = r.prop("header.d").or_else(|| {
                    r.prop("header.i")
                        .map(|i| i.rsplit('@').next().unwrap_or(i))
                });
                d.is_some_and(|d| domain_within(d, &ctx.microsoft_domains))
                    && domain_within(&from_domain, &ctx.microsoft_domains)
            }
            _ => false,
        };
        if verified {
            let detail = r
                .props
                .iter()
                .filter(|(k, _)| k.starts_with("header."))
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ");
            evidence.push(ev(
                "trust",
                format!("{}: {}=pass {detail}", ours.authserv_id, r.method),
            ));
            return true;
        }
    }
    false
}

static OWN_MAILER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\bpostmaster-bot\b").expect("static regex is valid"));

fn own_message(inbound: &Inbound, ctx: &Context) -> Option<Evidence> {
    if !ctx.loop_header.is_empty() && inbound.header(&ctx.loop_header).is_some() {
        return Some(ev("own.loop_header", ctx.loop_header.clone()));
    }
    if let Some(id) = &inbound.message_id {
        let domain = id.rsplit('@').next().unwrap_or_default();
        if ctx
            .own_message_id_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
        {
            return Some(ev("own.message_id", id.clone()));
        }
    }
    if let Some(mailer) = inbound.header("x-mailer") {
        if OWN_MAILER.is_match(mailer) {
            return Some(ev("own.x_mailer", mailer.to_string()));
        }
    }
    if let Some(from) = &inbound.from {
        if ctx
            .own_addresses
            .iter()
            .any(|a| a.eq_ignore_ascii_case(&from.address))
        {
            return Some(ev("own.from", from.address.clone()));
        }
    }
    None
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
                units.push((d.clone(), r.status.clone()));
            }
        }
    }
    let report = extract::bounce_report_text(&inbound.body, rules);
    for paragraph in report.split("\n\n") {
        if !paragraph.trim().is_empty() {
            units.push((paragraph.to_string(), None));
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
    for (unit, _) in &matching_units {
        for ip in extract::sender_ips(unit, rules, &ctx.our_networks) {
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    }
    verdict.ips = ips;

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

    verdict.bounce = Some(match best {
        Some((rule, matched)) => {
            evidence.push(ev(&rule.id, matched));
            verdict.kind = rule.kind;
            Bounce {
                cause: rule.cause.clone(),
                channel: rule.channel,
                notify: rule.notify,
                diagnostic,
                status,
            }
        }
        None => Bounce {
            cause: "unknown".to_string(),
            channel: None,
            notify: false,
            diagnostic,
            status,
        },
    });
    verdict.evidence = evidence;
    verdict
}

static SMTP_REPLY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\b[45]\d\d[ -]|\b[45]\.\d{1,3}\.\d{1,3}\b").expect("static regex is valid")
});

/// The remote server's reply inside a diagnostic unit: from the first SMTP code on.
fn smtp_reply(text: &str) -> Option<String> {
    let m = SMTP_REPLY.find(text)?;
    let reply = text[m.start()..].trim();
    let reply = reply
        .split(" (in reply to ")
        .next()
        .unwrap_or(reply)
        .trim_end_matches(')')
        .trim();
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

/// Reads a result table: a heading line, then the IPs it applies to. A line that names IPs
/// together with a heading applies that heading to them.
fn result_table(
    own_text: &str,
    rules: &Rules,
    ctx: &Context,
    evidence: &mut Vec<Evidence>,
) -> Vec<IpOutcome> {
    let mut outcomes: Vec<IpOutcome> = Vec::new();
    let mut current: Option<Outcome> = None;
    let heading_of = |line: &str| {
        rules
            .headings
            .iter()
            .find(|h| h.regex.is_match(line))
            .map(|h| (h.outcome, h.id.clone()))
    };
    for raw_line in own_text.lines() {
        let line = normalize(raw_line);
        if line.is_empty() {
            continue;
        }
        let ips = extract::sender_ips(&line, rules, &ctx.our_networks);
        if ips.is_empty() {
            current = heading_of(&line).map(|(outcome, id)| {
                evidence.push(ev(&id, line.clone()));
                outcome
            });
            continue;
        }
        let without_ips = IP_TOKEN.replace_all(&line, " ");
        let leftover =
            without_ips.trim_matches(|c: char| c.is_whitespace() || ",;|-\u{2013}()[]".contains(c));
        let outcome = if leftover.is_empty() {
            current
        } else {
            // A row such as "192.0.2.1 | Not qualified for mitigation".
            let inline = without_ips
                .split(['|', '\t', ';'])
                .map(str::trim)
                .find_map(heading_of);
            if let Some((o, id)) = &inline {
                evidence.push(ev(id, line.clone()));
                Some(*o)
            } else {
                // Prose naming an IP ends the section.
                current = None;
                None
            }
        };
        if let Some(outcome) = outcome {
            for ip in ips {
                match outcomes.iter_mut().find(|o| o.ip == ip) {
                    // The harshest outcome wins when an IP is listed twice.
                    Some(existing) if outcome == Outcome::NotQualified => {
                        existing.outcome = outcome
                    }
                    Some(_) => {}
                    None => outcomes.push(IpOutcome { ip, outcome }),
                }
            }
        }
    }
    outcomes
}

static IP_TOKEN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\d{1,3}(?:\.\d{1,3}){3}(?:/\d{1,2})?|[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:/\d{1,3})?")
        .expect("static regex is valid")
});

fn table_kind(outcomes: &[IpOutcome]) -> Kind {
    if outcomes.iter().any(|o| o.outcome == Outcome::NotQualified) {
        Kind::MsNotQualified
    } else if outcomes
        .iter()
        .any(|o| o.outcome == Outcome::ConditionallyMitigated)
    {
        Kind::MsConditionallyMitigated
    } else {
        Kind::MsMitigated
    }
}

fn phrase_kind(own_text: &str, rules: &Rules, evidence: &mut Vec<Evidence>) -> Kind {
    let text = normalize(own_text);
    for rule in &rules.phrases {
        if let Some(m) = rule.patterns.iter().find_map(|p| p.find(&text)) {
            evidence.push(ev(&rule.id, m.as_str().to_string()));
            return rule.kind;
        }
    }
    evidence.push(ev(
        "phrase.none",
        "sender-support answer matching no known template".to_string(),
    ));
    Kind::MsOther
}

#[cfg(test)]
pub(crate) mod tests;
