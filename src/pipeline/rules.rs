//! Recognition rules as data: the built-in set ships in the binary, a user file adds to it or
//! overrides it, so a new Microsoft wording is a config change, not a release.

use std::collections::BTreeMap;

use ipnet::IpNet;
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::pipeline::classify::{Channel, Kind, Outcome};

/// The rule set shipped in the binary.
pub const BUILTIN: &str = include_str!("rules/builtin.toml");

/// A rules file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("{source_name}: {message}")]
    Syntax {
        source_name: String,
        message: String,
    },
    #[error("{source_name}: rule `{rule}`: invalid pattern `{pattern}`: {cause}")]
    Pattern {
        source_name: String,
        rule: String,
        pattern: String,
        cause: String,
    },
    #[error("{source_name}: rule `{rule}`: {message}")]
    Rule {
        source_name: String,
        rule: String,
        message: String,
    },
    #[error("{source_name}: [ips] ignore: `{value}` is not an IP address or CIDR range")]
    Ip { source_name: String, value: String },
}

/// The on-disk shape of a rules file.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRules {
    #[serde(default)]
    pub ticket: Vec<RawTicket>,
    #[serde(default)]
    pub phrase: Vec<RawPhrase>,
    #[serde(default)]
    pub heading: Vec<RawHeading>,
    #[serde(default)]
    pub bounce: Vec<RawBounce>,
    #[serde(default)]
    pub markers: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub ips: RawIps,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTicket {
    pub id: String,
    #[serde(default)]
    pub pattern: String,
    #[serde(default = "yes")]
    pub enabled: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawPhrase {
    pub id: String,
    pub kind: Option<Kind>,
    #[serde(default = "default_priority")]
    pub priority: u32,
    #[serde(default)]
    pub patterns: Vec<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeading {
    pub id: String,
    pub outcome: Option<Outcome>,
    #[serde(default)]
    pub pattern: String,
    #[serde(default = "yes")]
    pub enabled: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawBounce {
    pub id: String,
    pub cause: Option<String>,
    pub kind: Option<Kind>,
    pub channel: Option<Channel>,
    #[serde(default)]
    pub notify: bool,
    #[serde(default = "default_priority")]
    pub priority: u32,
    #[serde(default)]
    pub patterns: Vec<String>,
    #[serde(default)]
    pub require: Vec<String>,
    /// Microsoft's own words for this listing, quoted in replies (`{ip}` is our IP).
    pub quote: Option<String>,
    /// The listing code in the bounce (`S3140`), quoted after the words.
    pub listing: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawIps {
    #[serde(default)]
    pub ignore: Vec<String>,
}

fn yes() -> bool {
    true
}

fn default_priority() -> u32 {
    100
}

/// A ticket-id pattern.
#[derive(Debug, Clone)]
pub struct TicketRule {
    pub id: String,
    pub regex: Regex,
}

/// A phrase family for one kind of Microsoft answer.
#[derive(Debug, Clone)]
pub struct PhraseRule {
    pub id: String,
    pub kind: Kind,
    pub priority: u32,
    pub patterns: Vec<Regex>,
}

/// A result-table heading.
#[derive(Debug, Clone)]
pub struct HeadingRule {
    pub id: String,
    pub outcome: Outcome,
    pub regex: Regex,
}

/// A bounce cause.
#[derive(Debug, Clone)]
pub struct BounceRule {
    pub id: String,
    pub cause: String,
    pub kind: Kind,
    pub channel: Option<Channel>,
    pub notify: bool,
    pub priority: u32,
    pub patterns: Vec<Regex>,
    pub require: Vec<Regex>,
    /// Microsoft's own words for the listing, with `{ip}` for our IP: the only bounce text a
    /// reply to Microsoft ever quotes.
    pub quote: Option<String>,
    /// Finds the listing code (`S3140`) in the bounce.
    pub listing: Option<Regex>,
}

/// Named pattern lists (`markers` table).
#[derive(Debug, Clone, Default)]
pub struct Markers {
    pub microsoft_support: Vec<Regex>,
    pub jmrp_from: Vec<Regex>,
    pub jmrp_subject: Vec<Regex>,
    pub snds: Vec<Regex>,
    pub forward_subject: Vec<Regex>,
    pub reply_separator: Vec<Regex>,
    pub auto_reply_subject: Vec<Regex>,
    pub bounce_sender: Vec<Regex>,
    pub bounce_subject: Vec<Regex>,
    pub bounce_body: Vec<Regex>,
    pub returned_message: Vec<Regex>,
    /// Subjects that make the header-first sync fetch a message whole (`candidate.rs`).
    pub candidate_subject: Vec<Regex>,
}

const MARKER_NAMES: &[&str] = &[
    "microsoft_support",
    "jmrp_from",
    "jmrp_subject",
    "snds",
    "forward_subject",
    "reply_separator",
    "auto_reply_subject",
    "bounce_sender",
    "bounce_subject",
    "bounce_body",
    "returned_message",
    "candidate_subject",
];

/// The compiled rule set the classifier runs.
#[derive(Debug, Clone)]
pub struct Rules {
    pub tickets: Vec<TicketRule>,
    /// Sorted by priority, lowest first.
    pub phrases: Vec<PhraseRule>,
    pub headings: Vec<HeadingRule>,
    /// Sorted by priority, lowest first.
    pub bounces: Vec<BounceRule>,
    pub markers: Markers,
    pub ignore_ips: Vec<IpNet>,
}

impl Rules {
    /// The built-in rules alone.
    pub fn builtin() -> Result<Rules, RulesError> {
        Rules::with_overrides(None)
    }

    /// The built-in rules merged with a user rules file given as (source name, text).
    pub fn with_overrides(user: Option<(&str, &str)>) -> Result<Rules, RulesError> {
        let mut merged = parse_raw("built-in rules", BUILTIN)?;
        let mut source_name = "built-in rules".to_string();
        if let Some((name, text)) = user {
            let raw = parse_raw(name, text)?;
            merge(&mut merged, raw);
            source_name = name.to_string();
        }
        compile(&source_name, merged)
    }
}

fn parse_raw(source_name: &str, text: &str) -> Result<RawRules, RulesError> {
    toml::from_str(text).map_err(|e| RulesError::Syntax {
        source_name: source_name.to_string(),
        message: e.to_string(),
    })
}

fn merge(base: &mut RawRules, user: RawRules) {
    fn upsert<T, F: Fn(&T) -> &str>(list: &mut Vec<T>, items: Vec<T>, id: F) {
        for item in items {
            match list.iter().position(|x| id(x) == id(&item)) {
                Some(i) => list[i] = item,
                None => list.push(item),
            }
        }
    }
    upsert(&mut base.ticket, user.ticket, |r| &r.id);
    upsert(&mut base.phrase, user.phrase, |r| &r.id);
    upsert(&mut base.heading, user.heading, |r| &r.id);
    upsert(&mut base.bounce, user.bounce, |r| &r.id);
    for (name, patterns) in user.markers {
        base.markers.entry(name).or_default().extend(patterns);
    }
    base.ips.ignore.extend(user.ips.ignore);
}

fn compile(source_name: &str, raw: RawRules) -> Result<Rules, RulesError> {
    let re = |rule: &str, pattern: &str| {
        Regex::new(pattern).map_err(|e| RulesError::Pattern {
            source_name: source_name.to_string(),
            rule: rule.to_string(),
            pattern: pattern.to_string(),
            cause: e.to_string(),
        })
    };
    let missing = |rule: &str, what: &str| RulesError::Rule {
        source_name: source_name.to_string(),
        rule: rule.to_string(),
        message: format!("missing `{what}`"),
    };

    let mut tickets = Vec::new();
    for t in raw.ticket.iter().filter(|t| t.enabled) {
        if t.pattern.is_empty() {
            return Err(missing(&t.id, "pattern"));
        }
        tickets.push(TicketRule {
            id: t.id.clone(),
            regex: re(&t.id, &t.pattern)?,
        });
    }

    let mut phrases = Vec::new();
    for p in raw.phrase.iter().filter(|p| p.enabled) {
        let kind = p.kind.ok_or_else(|| missing(&p.id, "kind"))?;
        if p.patterns.is_empty() {
            return Err(missing(&p.id, "patterns"));
        }
        let patterns = p
            .patterns
            .iter()
            .map(|s| re(&p.id, s))
            .collect::<Result<_, _>>()?;
        phrases.push(PhraseRule {
            id: p.id.clone(),
            kind,
            priority: p.priority,
            patterns,
        });
    }
    phrases.sort_by_key(|p| p.priority);

    let mut headings = Vec::new();
    for h in raw.heading.iter().filter(|h| h.enabled) {
        let outcome = h.outcome.ok_or_else(|| missing(&h.id, "outcome"))?;
        if h.pattern.is_empty() {
            return Err(missing(&h.id, "pattern"));
        }
        headings.push(HeadingRule {
            id: h.id.clone(),
            outcome,
            regex: re(&h.id, &h.pattern)?,
        });
    }

    let mut bounces = Vec::new();
    for b in raw.bounce.iter().filter(|b| b.enabled) {
        let kind = b.kind.ok_or_else(|| missing(&b.id, "kind"))?;
        if !matches!(kind, Kind::NdrMsBlocklist | Kind::NdrOther) {
            return Err(RulesError::Rule {
                source_name: source_name.to_string(),
                rule: b.id.clone(),
                message: "kind must be ndr_ms_blocklist or ndr_other".to_string(),
            });
        }
        if kind == Kind::NdrMsBlocklist && b.channel.is_none() {
            return Err(missing(&b.id, "channel"));
        }
        if b.patterns.is_empty() {
            return Err(missing(&b.id, "patterns"));
        }
        bounces.push(BounceRule {
            id: b.id.clone(),
            cause: b.cause.clone().unwrap_or_else(|| b.id.clone()),
            kind,
            channel: b.channel,
            notify: b.notify,
            priority: b.priority,
            patterns: b
                .patterns
                .iter()
                .map(|s| re(&b.id, s))
                .collect::<Result<_, _>>()?,
            require: b
                .require
                .iter()
                .map(|s| re(&b.id, s))
                .collect::<Result<_, _>>()?,
            quote: match &b.quote {
                Some(q) if q.chars().any(char::is_control) || q.len() > 200 => {
                    return Err(RulesError::Rule {
                        source_name: source_name.to_string(),
                        rule: b.id.clone(),
                        message: "`quote` must be one line of at most 200 bytes".to_string(),
                    })
                }
                q => q.clone(),
            },
            listing: b.listing.as_deref().map(|s| re(&b.id, s)).transpose()?,
        });
    }
    bounces.sort_by_key(|b| b.priority);

    let mut markers = Markers::default();
    for (name, patterns) in &raw.markers {
        let compiled: Vec<Regex> = patterns
            .iter()
            .map(|s| re(&format!("markers.{name}"), s))
            .collect::<Result<_, _>>()?;
        let slot = match name.as_str() {
            "microsoft_support" => &mut markers.microsoft_support,
            "jmrp_from" => &mut markers.jmrp_from,
            "jmrp_subject" => &mut markers.jmrp_subject,
            "snds" => &mut markers.snds,
            "forward_subject" => &mut markers.forward_subject,
            "reply_separator" => &mut markers.reply_separator,
            "auto_reply_subject" => &mut markers.auto_reply_subject,
            "bounce_sender" => &mut markers.bounce_sender,
            "bounce_subject" => &mut markers.bounce_subject,
            "bounce_body" => &mut markers.bounce_body,
            "returned_message" => &mut markers.returned_message,
            "candidate_subject" => &mut markers.candidate_subject,
            other => {
                return Err(RulesError::Rule {
                    source_name: source_name.to_string(),
                    rule: format!("markers.{other}"),
                    message: format!("unknown marker list; known: {}", MARKER_NAMES.join(", ")),
                })
            }
        };
        *slot = compiled;
    }

    let ignore_ips = raw
        .ips
        .ignore
        .iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| RulesError::Ip {
                    source_name: source_name.to_string(),
                    value: s.clone(),
                })
        })
        .collect::<Result<_, _>>()?;

    Ok(Rules {
        tickets,
        phrases,
        headings,
        bounces,
        markers,
        ignore_ips,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_rules_compile() {
        let rules = Rules::builtin().expect("built-in rules compile");
        assert!(!rules.tickets.is_empty());
        assert!(!rules.phrases.is_empty());
        assert!(!rules.markers.microsoft_support.is_empty());
    }

    #[test]
    fn user_rule_with_same_id_replaces_builtin() {
        let user = r#"
[[phrase]]
id = "escalated.en"
enabled = false

[[phrase]]
id = "escalated.custom"
kind = "ms_escalated"
priority = 40
patterns = ['(?i)handed\s+to\s+our\s+specialists']
"#;
        let rules = Rules::with_overrides(Some(("user.toml", user))).expect("compiles");
        assert!(rules.phrases.iter().all(|p| p.id != "escalated.en"));
        assert!(rules.phrases.iter().any(|p| p.id == "escalated.custom"));
    }

    #[test]
    fn bad_pattern_names_file_and_rule() {
        let user = "[[ticket]]\nid = \"t\"\npattern = '(unclosed'\n";
        let err = Rules::with_overrides(Some(("my-rules.toml", user))).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("my-rules.toml") && text.contains("`t`"),
            "{text}"
        );
    }

    #[test]
    fn unknown_key_is_reported_with_its_name() {
        let user = "[[phrase]]\nid = \"x\"\nkindd = \"ms_ack\"\n";
        let err = Rules::with_overrides(Some(("r.toml", user))).unwrap_err();
        assert!(err.to_string().contains("kindd"), "{err}");
    }
}
