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
    #[serde(default)]
    pub scoring: RawScoring,
}

/// Thresholds of the scoring (`[scoring]`); a user file overrides them one by one.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawScoring {
    pub min_score: Option<f64>,
    pub min_margin: Option<f64>,
    pub min_ratio: Option<f64>,
    pub request_min: Option<f64>,
    pub refusal_min: Option<f64>,
    pub table_weight: Option<f64>,
    pub past_factor: Option<f64>,
    pub subsumed_factor: Option<f64>,
    pub automated_weight: Option<f64>,
    pub outcome_over_process: Option<f64>,
    pub refusal_process_guard: Option<f64>,
}

/// How cue scores become a verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct Scoring {
    /// The winning kind needs at least this score; below it the verdict is uncertain.
    pub min_score: f64,
    /// ... and this lead over the runner-up (the best kind that contradicts it) ...
    pub min_margin: f64,
    /// ... and at least this multiple of the runner-up's score.
    pub min_ratio: f64,
    /// A request for data wins from this score on, whatever else the message says.
    pub request_min: f64,
    /// A refusal (which leads to an unattended reply) needs at least this score.
    pub refusal_min: f64,
    /// What a result table adds to its outcome's kind.
    pub table_weight: f64,
    /// Cues in a sentence about the past count this much.
    pub past_factor: f64,
    /// Lifting cues count this much beside a conditional unblocking.
    pub subsumed_factor: f64,
    /// An automatic or no-reply sender adds this to an acknowledgement.
    pub automated_weight: f64,
    /// An outcome (refusal, lifting, ...) wins over the ticket's status (acknowledged,
    /// escalated) when it scores at least this share of the status.
    pub outcome_over_process: f64,
    /// A refusal is uncertain when a status cue scores this share of it or more.
    pub refusal_process_guard: f64,
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
    /// What the phrase does: a cue for its kind (the default), or a marker that changes the
    /// weight of the cues in its sentence (`past`, `invitation`).
    #[serde(default)]
    pub role: Role,
    /// What one hit adds to its kind's score (default 5).
    pub weight: Option<f64>,
    /// The language it is written for (documentation and evidence only).
    pub lang: Option<String>,
    /// Kept so that older rules files still load; scoring has replaced the order of rules.
    #[serde(default = "default_priority")]
    pub priority: u32,
    #[serde(default)]
    pub patterns: Vec<String>,
    /// Words that must all occur in one sentence, in any order: one pattern of every group
    /// (a meaning carried by its words, whatever the word order of the language).
    #[serde(default)]
    pub all: Vec<Vec<String>>,
    /// ... and none of these in that sentence (negations, conditions).
    #[serde(default)]
    pub none: Vec<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

/// What a phrase rule does in scoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Its matches add its weight to its kind.
    #[default]
    Cue,
    /// The sentence speaks of the past (an earlier verdict recalled): its cues count little.
    Past,
    /// The sentence invites a reply "to investigate further": not a request for data.
    Invitation,
    /// The sentence repeats what we wrote ("Your description: ..."): not Microsoft's words.
    Echo,
    /// The sentence speaks of now ("has now been removed"): a past marker does not apply.
    Present,
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

/// A pattern compiled on first use: a thousand multilingual patterns take time to compile,
/// and a message needs only those of its own languages. The syntax is checked when the rules
/// are loaded, so a bad pattern is still an error there.
///
/// It runs on lowercased text as a byte regex ([`matcher`]): no case folding, word classes and
/// boundaries as small byte classes, so that compiling is quick, the programs are small and the
/// lazy DFA runs on any text.
#[derive(Debug, Clone)]
pub struct LazyRegex {
    source: std::sync::Arc<str>,
    compiled: std::sync::Arc<std::sync::OnceLock<Option<regex::bytes::Regex>>>,
}

impl LazyRegex {
    fn new(source: String) -> LazyRegex {
        LazyRegex {
            source: source.into(),
            compiled: Default::default(),
        }
    }

    /// The compiled pattern, to run on lowercased text (`None` if it exceeds the engine's size
    /// limits).
    pub fn get(&self) -> Option<&regex::bytes::Regex> {
        self.compiled
            .get_or_init(|| compiled_bytes(&matcher(&self.source)).ok())
            .as_ref()
    }

    /// The words of `lowercased` text it matches, boundary characters trimmed.
    pub fn find(&self, lowercased: &str) -> Option<String> {
        let m = self.get()?.find(lowercased.as_bytes())?;
        Some(trim_boundary(&String::from_utf8_lossy(m.as_bytes())))
    }

    pub fn is_match(&self, lowercased: &str) -> bool {
        self.get()
            .is_some_and(|r| r.is_match(lowercased.as_bytes()))
    }
}

/// A match without the boundary character a [`matcher`] pattern may have taken at either end.
pub fn trim_boundary(matched: &str) -> String {
    matched
        .trim_matches(|c: char| c.is_ascii() && !c.is_ascii_alphanumeric())
        .to_string()
}

/// A phrase family: a weighted cue for one kind of Microsoft answer, or a sentence marker.
#[derive(Debug, Clone)]
pub struct PhraseRule {
    pub id: String,
    /// The kind a cue speaks for; `None` for markers.
    pub kind: Option<Kind>,
    pub role: Role,
    pub weight: f64,
    /// The language it is written for; `None` (or `multi`) runs on every message.
    pub lang: Option<String>,
    /// The rule's patterns as one alternation: one scan of the text finds them all.
    pub pattern: Option<LazyRegex>,
    /// Groups of words that must all occur in the sentence, in any order (one alternation per
    /// group).
    pub all: Vec<LazyRegex>,
    /// Words that must not occur in the sentence.
    pub none: Option<LazyRegex>,
}

impl PhraseRule {
    /// Whether the rule runs on a message in these languages.
    pub fn speaks(&self, languages: &[&str]) -> bool {
        self.lang.as_deref().is_none_or(|l| languages.contains(&l))
    }

    /// The words of a (lowercased) `sentence` this rule matches, if it does.
    pub fn find(&self, sentence: &str) -> Option<String> {
        if let Some(m) = self.pattern.as_ref().and_then(|p| p.find(sentence)) {
            return Some(m);
        }
        self.find_words(sentence)
    }

    /// The co-occurrence part alone: every group's word, none of the excluded ones.
    pub fn find_words(&self, sentence: &str) -> Option<String> {
        if self.all.is_empty() || self.none.as_ref().is_some_and(|n| n.is_match(sentence)) {
            return None;
        }
        let mut words = Vec::new();
        for group in &self.all {
            words.push(group.find(sentence)?);
        }
        Some(words.join(" + "))
    }
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
    pub phrases: Vec<PhraseRule>,
    pub headings: Vec<HeadingRule>,
    /// Sorted by priority, lowest first.
    pub bounces: Vec<BounceRule>,
    pub markers: Markers,
    pub ignore_ips: Vec<IpNet>,
    pub scoring: Scoring,
}

impl Rules {
    /// The built-in rules alone.
    pub fn builtin() -> Result<Rules, RulesError> {
        Rules::with_overrides(None)
    }

    /// Compiles every lazily compiled pattern now (the daemon does it on a thread of its own at
    /// start, so that the first message of a language does not wait for its rules).
    pub fn warm_up(&self) {
        for rule in &self.phrases {
            for re in rule.pattern.iter().chain(&rule.all).chain(rule.none.iter()) {
                let _ = re.get();
            }
        }
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
    let (b, u) = (&mut base.scoring, user.scoring);
    for (slot, value) in [
        (&mut b.min_score, u.min_score),
        (&mut b.min_margin, u.min_margin),
        (&mut b.min_ratio, u.min_ratio),
        (&mut b.request_min, u.request_min),
        (&mut b.refusal_min, u.refusal_min),
        (&mut b.table_weight, u.table_weight),
        (&mut b.past_factor, u.past_factor),
        (&mut b.subsumed_factor, u.subsumed_factor),
        (&mut b.automated_weight, u.automated_weight),
        (&mut b.outcome_over_process, u.outcome_over_process),
        (&mut b.refusal_process_guard, u.refusal_process_guard),
    ] {
        if value.is_some() {
            *slot = value;
        }
    }
}

/// Compiled patterns, shared by every rule set of the process: a thousand multilingual
/// patterns take a noticeable time to compile, and every engine (a test builds many) would
/// otherwise compile them again. A `Regex` clone shares its compiled program.
fn compiled(pattern: &str) -> Result<Regex, regex::Error> {
    static CACHE: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, Regex>>> =
        std::sync::LazyLock::new(Default::default);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(r) = cache.get(pattern) {
        return Ok(r.clone());
    }
    // NOTE: a rule's alternation of Unicode-aware patterns is larger than the default limit.
    let r = regex::RegexBuilder::new(pattern)
        .size_limit(64 << 20)
        .dfa_size_limit(8 << 20)
        .build()?;
    cache.insert(pattern.to_string(), r.clone());
    Ok(r)
}

/// Byte-regex cache for [`matcher`] patterns, as [`compiled`] is for the others.
fn compiled_bytes(pattern: &str) -> Result<regex::bytes::Regex, regex::Error> {
    static CACHE: std::sync::LazyLock<
        std::sync::Mutex<std::collections::HashMap<String, regex::bytes::Regex>>,
    > = std::sync::LazyLock::new(Default::default);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(r) = cache.get(pattern) {
        return Ok(r.clone());
    }
    // NOTE: a small lazy-DFA cache per pattern: two hundred of them are alive at once, and a
    // sentence needs few states.
    let r = regex::bytes::RegexBuilder::new(pattern)
        .size_limit(64 << 20)
        .dfa_size_limit(256 << 10)
        .build()?;
    cache.insert(pattern.to_string(), r.clone());
    Ok(r)
}

/// An ASCII byte that is not part of a word. Non-ASCII characters count as letters: the text is
/// normalised first (typographic quotes, dashes, `¿¡«»…` and non-breaking spaces made ASCII).
const NOT_A_WORD: &str = "(?-u:[\\x00-/:-@\\[-\\^`{-\\x7F])";
/// A byte of a word: an ASCII letter, digit or `_`, or any byte of a non-ASCII character.
const WORD: &str = "(?-u:[0-9a-z_\\x80-\\xFF])";

/// A rule's pattern as it runs: on lowercased text, as a byte regex.
///
/// NOTE: written as they are, a thousand case-insensitive, Unicode-aware multilingual patterns
/// took seconds to compile, a hundred megabytes of memory, and fell back from the lazy DFA to
/// the PikeVM on any non-ASCII text (the DFA handles a Unicode `\b` only on ASCII). So: `(?i)`
/// goes (the text is lowercased, and so are the pattern's letters), `\w`, `\s`, `\d`, `.` become
/// byte classes, and `\b` becomes "start of text or a non-word byte" before a word and "a
/// non-word byte or the end" after one (dropped next to white space the pattern matches
/// anyway). A match may then carry one boundary character at either end
/// ([`trim_boundary`]).
pub fn matcher(pattern: &str) -> String {
    let pattern = pattern.replace("(?i)", "").replace("(?i:", "(?:");
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::with_capacity(pattern.len() + 32);
    let mut i = 0;
    let mut in_class = 0usize;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' && i + 1 < chars.len() {
            let next = chars[i + 1];
            if in_class == 0 {
                let replacement = match next {
                    'w' => Some(WORD),
                    's' => Some("(?-u:\\s)"),
                    'S' => Some("(?-u:\\S)"),
                    'd' => Some("(?-u:\\d)"),
                    'D' => Some("(?-u:\\D)"),
                    'W' => Some(NOT_A_WORD),
                    _ => None,
                };
                if let Some(r) = replacement {
                    out.push_str(r);
                    i += 2;
                    continue;
                }
            }
            if next == 'b' && in_class == 0 && chars.get(i + 2) != Some(&'{') {
                let before = out.trim_end_matches(['+', '*', '?']);
                let after_space = before.ends_with("\\s)") || before.ends_with(' ');
                let following = chars.get(i + 2).copied();
                let before_space = (following == Some('\\') && chars.get(i + 3) == Some(&'s'))
                    || following == Some(' ');
                let trailing = matches!(following, None | Some(')') | Some('|'));
                if !(after_space || before_space) {
                    out.push_str(if trailing { "(?:$|" } else { "(?:^|" });
                    out.push_str(NOT_A_WORD);
                    out.push(')');
                }
                i += 2;
                continue;
            }
            out.push(c);
            out.push(next);
            i += 2;
            continue;
        }
        match c {
            '[' => in_class += 1,
            ']' if in_class > 0 => in_class -= 1,
            '.' if in_class == 0 => {
                out.push_str("(?-u:[^\\n])");
                i += 1;
                continue;
            }
            _ => {}
        }
        out.extend(c.to_lowercase());
        i += 1;
    }
    out
}

fn compile(source_name: &str, raw: RawRules) -> Result<Rules, RulesError> {
    let re = |rule: &str, pattern: &str| {
        compiled(pattern).map_err(|e| RulesError::Pattern {
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
        let kind = match (p.role, p.kind) {
            (Role::Cue, None) => return Err(missing(&p.id, "kind")),
            (Role::Cue, Some(k)) if !k.is_microsoft_support() => {
                return Err(RulesError::Rule {
                    source_name: source_name.to_string(),
                    rule: p.id.clone(),
                    message: format!("kind {k} is not a sender-support kind (ms_*)"),
                })
            }
            (Role::Cue, k) => k,
            (_, _) => None,
        };
        if p.patterns.is_empty() && p.all.is_empty() {
            return Err(missing(&p.id, "patterns"));
        }
        let weight = p.weight.unwrap_or(5.0);
        if !(0.0..=100.0).contains(&weight) {
            return Err(RulesError::Rule {
                source_name: source_name.to_string(),
                rule: p.id.clone(),
                message: "weight must be 0 to 100".to_string(),
            });
        }
        let union = |patterns: &[String]| -> Result<Option<LazyRegex>, RulesError> {
            if patterns.is_empty() {
                return Ok(None);
            }
            for single in patterns {
                regex_syntax::Parser::new()
                    .parse(single)
                    .map_err(|e| RulesError::Pattern {
                        source_name: source_name.to_string(),
                        rule: p.id.clone(),
                        pattern: single.to_string(),
                        cause: e.to_string(),
                    })?;
            }
            let joined = patterns
                .iter()
                .map(|p| format!("(?:{p})"))
                .collect::<Vec<_>>()
                .join("|");
            Ok(Some(LazyRegex::new(joined)))
        };
        let mut all = Vec::new();
        for group in &p.all {
            all.extend(union(group)?);
        }
        phrases.push(PhraseRule {
            id: p.id.clone(),
            kind,
            role: p.role,
            weight,
            lang: p.lang.clone().filter(|l| l != "multi"),
            pattern: union(&p.patterns)?,
            all,
            none: union(&p.none)?,
        });
    }

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

    let d = Scoring::default();
    let r = &raw.scoring;
    let scoring = Scoring {
        min_score: r.min_score.unwrap_or(d.min_score),
        min_margin: r.min_margin.unwrap_or(d.min_margin),
        min_ratio: r.min_ratio.unwrap_or(d.min_ratio),
        request_min: r.request_min.unwrap_or(d.request_min),
        refusal_min: r.refusal_min.unwrap_or(d.refusal_min),
        table_weight: r.table_weight.unwrap_or(d.table_weight),
        past_factor: r.past_factor.unwrap_or(d.past_factor),
        subsumed_factor: r.subsumed_factor.unwrap_or(d.subsumed_factor),
        automated_weight: r.automated_weight.unwrap_or(d.automated_weight),
        outcome_over_process: r.outcome_over_process.unwrap_or(d.outcome_over_process),
        refusal_process_guard: r.refusal_process_guard.unwrap_or(d.refusal_process_guard),
    };
    Ok(Rules {
        tickets,
        phrases,
        headings,
        bounces,
        markers,
        ignore_ips,
        scoring,
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
