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
    pub provider: Vec<RawProvider>,
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
    /// The sentence says a review is over ("the escalation team has completed its review"): an
    /// escalation named in it is history, not where the ticket stands.
    Concluded,
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
    /// The receiver (or block list) whose refusal this is: a `[[provider]]` id.
    pub provider: Option<String>,
    /// A receiver other than Microsoft blocks our IP: the bounce opens (or joins) a case for
    /// the provider and the IP, though its kind stays `ndr_other`.
    #[serde(default)]
    pub block: bool,
    /// Finds the provider's code for the refusal (`TSS04`, `4.7.28`): the first capture group,
    /// else the whole match.
    pub code: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

/// A receiver or block list and its delisting playbook (`[[provider]]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub id: String,
    /// The name people know it by.
    pub name: Option<String>,
    /// Domains of its mail servers and mailboxes (`google.com`, `gmail.com`): a bounce whose
    /// remote server or recipient is within one is this provider's.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Where delisting is requested (a web page).
    pub delist: Option<String>,
    /// Where the provider takes delisting requests by mail, when that is its process.
    pub delist_address: Option<String>,
    /// What the request must contain, in the provider's own terms.
    #[serde(default)]
    pub request: Vec<String>,
    /// How long it usually takes.
    pub typical_time: Option<String>,
    /// Whether the provider answers a request by mail.
    #[serde(default)]
    pub answers_by_email: bool,
    /// Anything else the operator should know.
    pub notes: Option<String>,
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
    pub regex: LazyRe,
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
        let text = lowercased.as_bytes();
        let m = self
            .get()?
            .find_iter(text)
            .find(|m| starts_a_word(text, m))?;
        Some(trim_boundary(&String::from_utf8_lossy(m.as_bytes())))
    }

    pub fn is_match(&self, lowercased: &str) -> bool {
        self.find(lowercased).is_some()
    }
}

/// Whether a match begins at the start of a word, as a pattern's leading `\b` asks: not an
/// ASCII letter or digit right after another. (Before a non-ASCII character, or in scripts
/// written without spaces, any position counts.)
pub fn starts_a_word(text: &[u8], m: &regex::bytes::Match<'_>) -> bool {
    let first = m.as_bytes().first().copied().unwrap_or(b' ');
    let before = m.start().checked_sub(1).map(|i| text[i]);
    !(first.is_ascii_alphanumeric()
        && before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_'))
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
    pub regex: LazyRe,
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
    pub patterns: Vec<LazyRe>,
    pub require: Vec<LazyRe>,
    /// Microsoft's own words for the listing, with `{ip}` for our IP: the only bounce text a
    /// reply to Microsoft ever quotes.
    pub quote: Option<String>,
    /// Finds the listing code (`S3140`) in the bounce.
    pub listing: Option<LazyRe>,
    pub provider: Option<String>,
    /// Opens a case for another receiver's block (see [`RawBounce::block`]).
    pub block: bool,
    pub code: Option<LazyRe>,
}

/// A receiver or block list and its playbook (see [`RawProvider`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Provider {
    pub id: String,
    pub name: String,
    /// Lowercase domains, without a leading dot.
    #[serde(skip)]
    pub hosts: Vec<String>,
    pub delist: Option<String>,
    pub delist_address: Option<String>,
    pub request: Vec<String>,
    pub typical_time: Option<String>,
    pub answers_by_email: bool,
    pub notes: Option<String>,
}

impl Provider {
    /// Whether `host` (a server name or a mail domain) is this provider's.
    pub fn owns(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.hosts.iter().any(|h| {
            host == *h
                || host
                    .strip_suffix(h.as_str())
                    .is_some_and(|rest| rest.ends_with('.'))
        })
    }
}

/// Named pattern lists (`markers` table).
#[derive(Debug, Clone, Default)]
pub struct Markers {
    pub microsoft_support: PatternList,
    pub jmrp_from: PatternList,
    pub jmrp_subject: PatternList,
    pub snds: PatternList,
    pub forward_subject: PatternList,
    pub reply_separator: PatternList,
    pub auto_reply_subject: PatternList,
    pub bounce_sender: PatternList,
    pub bounce_subject: PatternList,
    pub bounce_body: PatternList,
    pub returned_message: PatternList,
    /// Subjects that make the header-first sync fetch a message whole (`candidate.rs`).
    pub candidate_subject: PatternList,
}

/// A rule's pattern, compiled on first use: a process that reads one message should not pay
/// for the hundreds it does not need, and a daemon compiles them all on a thread of its own
/// ([`Rules::warm_up`]). The built-in patterns are checked by this module's tests, a user's
/// are compiled when the file is loaded, so a bad pattern is still an error at start.
#[derive(Debug, Clone)]
pub struct LazyRe {
    source: std::sync::Arc<str>,
    compiled: std::sync::Arc<std::sync::OnceLock<Regex>>,
}

impl LazyRe {
    fn new(source: &str) -> LazyRe {
        LazyRe {
            source: source.into(),
            compiled: Default::default(),
        }
    }
}

impl std::ops::Deref for LazyRe {
    type Target = Regex;

    fn deref(&self) -> &Regex {
        self.compiled.get_or_init(|| {
            compiled(&self.source).unwrap_or_else(|_| {
                // Unreachable for checked patterns; a pattern over the size limits matches
                // nothing rather than everything.
                static NOTHING: std::sync::LazyLock<Regex> = std::sync::LazyLock::new(|| {
                    Regex::new(r"[^\s\S]").expect("static regex is valid")
                });
                NOTHING.clone()
            })
        })
    }
}

/// Patterns tried in order, with one alternation of them all that answers "does any match"
/// in a single scan: the header pass asks that of ten thousand subjects, and almost all of
/// them say no.
#[derive(Debug, Clone, Default)]
pub struct PatternList {
    patterns: Vec<LazyRe>,
    any: std::sync::Arc<std::sync::OnceLock<Option<Regex>>>,
}

impl PatternList {
    pub fn new(patterns: Vec<LazyRe>) -> PatternList {
        PatternList {
            patterns,
            any: Default::default(),
        }
    }

    /// The alternation, compiled on first use (`None` if it exceeds the engine's limits,
    /// and then each pattern is tried in turn).
    fn any(&self) -> Option<&Regex> {
        self.any
            .get_or_init(|| {
                if self.patterns.len() < 2 {
                    return None;
                }
                let alternation: Vec<String> = self
                    .patterns
                    .iter()
                    .map(|r| format!("(?:{})", r.source))
                    .collect();
                compiled(&alternation.join("|")).ok()
            })
            .as_ref()
    }

    pub fn is_match(&self, text: &str) -> bool {
        match self.any() {
            Some(any) => any.is_match(text),
            None => self.patterns.iter().any(|r| r.is_match(text)),
        }
    }

    /// The match of the first pattern, in list order, that matches.
    pub fn first_match<'t>(&self, text: &'t str) -> Option<regex::Match<'t>> {
        if self.any().is_some_and(|any| !any.is_match(text)) {
            return None;
        }
        self.patterns.iter().find_map(|r| r.find(text))
    }
}

impl std::ops::Deref for PatternList {
    type Target = [LazyRe];

    fn deref(&self) -> &[LazyRe] {
        &self.patterns
    }
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
    /// The ticket patterns as one list: whether a text can hold a ticket id at all.
    pub ticket_gate: PatternList,
    pub phrases: Vec<PhraseRule>,
    pub headings: Vec<HeadingRule>,
    /// Sorted by priority, lowest first.
    pub bounces: Vec<BounceRule>,
    pub providers: Vec<Provider>,
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
        // What the header pass asks first, then what every message asks, then the languages.
        for list in self.marker_lists().into_iter().chain([&self.ticket_gate]) {
            let _ = list.is_match("");
        }
        for re in self.string_patterns() {
            let _ = re.is_match("");
        }
        for rule in &self.phrases {
            for re in rule.pattern.iter().chain(&rule.all).chain(rule.none.iter()) {
                let _ = re.get();
            }
        }
    }

    fn marker_lists(&self) -> [&PatternList; 12] {
        let m = &self.markers;
        [
            &m.microsoft_support,
            &m.jmrp_from,
            &m.jmrp_subject,
            &m.snds,
            &m.forward_subject,
            &m.reply_separator,
            &m.auto_reply_subject,
            &m.bounce_sender,
            &m.bounce_subject,
            &m.bounce_body,
            &m.returned_message,
            &m.candidate_subject,
        ]
    }

    /// Every pattern that runs as a string regex (all but the phrases').
    fn string_patterns(&self) -> impl Iterator<Item = &LazyRe> {
        self.marker_lists()
            .into_iter()
            .flat_map(|list| list.iter())
            .chain(self.tickets.iter().map(|t| &t.regex))
            .chain(self.headings.iter().map(|h| &h.regex))
            .chain(self.bounces.iter().flat_map(|b| {
                b.patterns
                    .iter()
                    .chain(&b.require)
                    .chain(b.listing.iter())
                    .chain(b.code.iter())
            }))
    }

    /// The built-in rules merged with a user rules file given as (source name, text).
    pub fn with_overrides(user: Option<(&str, &str)>) -> Result<Rules, RulesError> {
        let mut merged = parse_raw("built-in rules", BUILTIN)?;
        let mut source_name = "built-in rules".to_string();
        if let Some((name, text)) = user {
            let raw = parse_raw(name, text)?;
            // The built-in phrases are checked by this module's tests; a user's are checked
            // here, so that a bad one is an error at start and not a cue that never matches.
            check_user_patterns(name, &raw)?;
            merge(&mut merged, raw);
            source_name = name.to_string();
        }
        compile(&source_name, merged)
    }
}

/// Every pattern of a user's rules file as it will run: the phrase patterns ([`matcher`])
/// parsed and translated (compiling waits for the first message in their language), the
/// others compiled.
fn check_user_patterns(source_name: &str, raw: &RawRules) -> Result<(), RulesError> {
    let check = |rule: &str, pattern: &str| {
        compiled(pattern)
            .map(|_| ())
            .map_err(|e| RulesError::Pattern {
                source_name: source_name.to_string(),
                rule: rule.to_string(),
                pattern: pattern.to_string(),
                cause: e.to_string(),
            })
    };
    for t in &raw.ticket {
        check(&t.id, &t.pattern)?;
    }
    for h in &raw.heading {
        check(&h.id, &h.pattern)?;
    }
    for b in &raw.bounce {
        for p in b
            .patterns
            .iter()
            .chain(&b.require)
            .chain(&b.listing)
            .chain(&b.code)
        {
            check(&b.id, p)?;
        }
    }
    for (name, patterns) in &raw.markers {
        for p in patterns {
            check(&format!("markers.{name}"), p)?;
        }
    }
    for p in &raw.phrase {
        for single in p
            .patterns
            .iter()
            .chain(p.all.iter().flatten())
            .chain(&p.none)
        {
            regex_syntax::ParserBuilder::new()
                .utf8(false)
                .build()
                .parse(&matcher(single))
                .map_err(|e| RulesError::Pattern {
                    source_name: source_name.to_string(),
                    rule: p.id.clone(),
                    pattern: single.to_string(),
                    cause: e.to_string(),
                })?;
        }
    }
    Ok(())
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
    upsert(&mut base.provider, user.provider, |r| &r.id);
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
    let cached = |pattern: &str| {
        let cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        cache.get(pattern).cloned()
    };
    if let Some(r) = cached(pattern) {
        return Ok(r);
    }
    // Built outside the lock, as in `compiled_bytes`.
    // NOTE: a rule's alternation of Unicode-aware patterns is larger than the default limit.
    let r = regex::RegexBuilder::new(pattern)
        .size_limit(64 << 20)
        .dfa_size_limit(8 << 20)
        .build()?;
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    Ok(cache.entry(pattern.to_string()).or_insert(r).clone())
}

/// Byte-regex cache for [`matcher`] patterns, as [`compiled`] is for the others.
fn compiled_bytes(pattern: &str) -> Result<regex::bytes::Regex, regex::Error> {
    static CACHE: std::sync::LazyLock<
        std::sync::Mutex<std::collections::HashMap<String, regex::bytes::Regex>>,
    > = std::sync::LazyLock::new(Default::default);
    let cached = |pattern: &str| {
        let cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        cache.get(pattern).cloned()
    };
    if let Some(r) = cached(pattern) {
        return Ok(r);
    }
    // Built outside the lock: the warm-up thread and a message's first use compile side by
    // side (at worst one pattern twice, never one waiting on the other's whole list).
    // NOTE: a small lazy-DFA cache per pattern: two hundred of them are alive at once, and a
    // sentence needs few states.
    let r = regex::bytes::RegexBuilder::new(pattern)
        .size_limit(64 << 20)
        .dfa_size_limit(256 << 10)
        .build()?;
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    Ok(cache.entry(pattern.to_string()).or_insert(r).clone())
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
                // A boundary before a word is checked on the match instead ([`starts_a_word`]):
                // written into the pattern it would hide the literals the search looks for
                // first, and every pattern would run its automaton over the whole text.
                if trailing && !(after_space || before_space) {
                    out.push_str("(?:$|");
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
        // A class of ASCII characters (and word bytes) as a byte class: as a Unicode class,
        // `[\w-]` or `[^,]` stands for thousands of code points and compiles to a large
        // automaton, a hundred times the cost of the rest of the pattern.
        if c == '[' && in_class == 0 {
            if let Some((class, end)) = byte_class(&chars, i) {
                out.push_str(&class);
                i = end + 1;
                continue;
            }
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

/// The class opened at `start` as a byte class on lowercased text, with the index of its `]`;
/// `None` when it names a non-ASCII character or a Unicode class, which only a Unicode class
/// can say.
fn byte_class(chars: &[char], start: usize) -> Option<(String, usize)> {
    let end = class_end(chars, start)?;
    let mut class = String::from("(?-u:[");
    let mut i = start + 1;
    if chars.get(i) == Some(&'^') {
        class.push('^');
        i += 1;
    }
    while i < end {
        let c = chars[i];
        match c {
            '\\' => {
                let next = *chars.get(i + 1)?;
                match next {
                    'w' => class.push_str("0-9a-z_\\x80-\\xFF"),
                    'd' => class.push_str("0-9"),
                    's' => class.push_str("\\t\\n\\x0B\\x0C\\r "),
                    // Negated and named classes are Unicode's; escaped characters stay as
                    // written (`\x27` is ASCII, `\x{e9}` is not).
                    'W' | 'D' | 'S' | 'p' | 'P' => return None,
                    'x' if chars.get(i + 2) == Some(&'{') => return None,
                    'x' => {
                        let hex: String = chars.get(i + 2..i + 4)?.iter().collect();
                        if u8::from_str_radix(&hex, 16).ok()? > 0x7F {
                            return None;
                        }
                        class.push_str("\\x");
                        class.push_str(&hex);
                        i += 4;
                        continue;
                    }
                    _ if next.is_ascii() => {
                        class.push(c);
                        class.push(next);
                    }
                    _ => return None,
                }
                i += 2;
                continue;
            }
            '[' => return None,
            _ if !c.is_ascii() => return None,
            _ => class.push(c.to_ascii_lowercase()),
        }
        i += 1;
    }
    class.push_str("])");
    Some((class, end))
}

/// The index of the `]` that closes the class opened at `start`, escapes and nested classes
/// (`[[:alpha:]]`) allowed for.
fn class_end(chars: &[char], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = start;
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 1,
            '[' => depth += 1,
            // A `]` right after `[` or `[^` is a literal.
            ']' if i > start + 1 && !(i == start + 2 && chars[start + 1] == '^') => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

fn compile(source_name: &str, raw: RawRules) -> Result<Rules, RulesError> {
    // Checked where they come from (tests for the built-in rules, `check_user_patterns` for
    // a user's); compiled on first use.
    let re = |_rule: &str, pattern: &str| Ok::<_, RulesError>(LazyRe::new(pattern));
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
            provider: b.provider.clone(),
            block: b.block,
            code: b.code.as_deref().map(|s| re(&b.id, s)).transpose()?,
        });
    }
    bounces.sort_by_key(|b| b.priority);

    let providers = compile_providers(source_name, &raw.provider)?;
    for b in &bounces {
        match &b.provider {
            Some(p) if !providers.iter().any(|x| &x.id == p) => {
                return Err(RulesError::Rule {
                    source_name: source_name.to_string(),
                    rule: b.id.clone(),
                    message: format!("unknown provider `{p}`: add a [[provider]] with that id"),
                })
            }
            None if b.block => return Err(missing(&b.id, "provider")),
            _ => {}
        }
    }

    let mut markers = Markers::default();
    for (name, patterns) in &raw.markers {
        let compiled: Vec<LazyRe> = patterns
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
        *slot = PatternList::new(compiled);
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
    let ticket_gate = PatternList::new(tickets.iter().map(|t| t.regex.clone()).collect());
    Ok(Rules {
        tickets,
        ticket_gate,
        phrases,
        headings,
        bounces,
        providers,
        markers,
        ignore_ips,
        scoring,
    })
}

/// The playbooks, checked: what they say goes into mail to the operator and, for a provider
/// that takes requests by mail, names the address a request is drafted to.
fn compile_providers(source_name: &str, raw: &[RawProvider]) -> Result<Vec<Provider>, RulesError> {
    let bad = |id: &str, message: String| RulesError::Rule {
        source_name: source_name.to_string(),
        rule: format!("provider.{id}"),
        message,
    };
    let one_line = |id: &str, field: &str, value: &str| {
        if value.chars().any(char::is_control) || value.len() > 500 {
            Err(bad(
                id,
                format!("`{field}` must be one line of at most 500 bytes"),
            ))
        } else {
            Ok(())
        }
    };
    let mut out = Vec::new();
    for p in raw.iter().filter(|p| p.enabled) {
        let id_ok = !p.id.is_empty()
            && p.id.len() <= 32
            && p.id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'));
        if !id_ok {
            return Err(bad(
                &p.id,
                "the id must be 1 to 32 lowercase letters, digits, `-` or `.`".to_string(),
            ));
        }
        for (field, value) in [
            ("name", p.name.as_deref()),
            ("delist", p.delist.as_deref()),
            ("typical_time", p.typical_time.as_deref()),
            ("notes", p.notes.as_deref()),
        ] {
            if let Some(v) = value {
                one_line(&p.id, field, v)?;
            }
        }
        for item in &p.request {
            one_line(&p.id, "request", item)?;
        }
        if let Some(address) = &p.delist_address {
            let plain = address.len() <= 254
                && address.split_once('@').is_some_and(|(local, domain)| {
                    !local.is_empty()
                        && domain.contains('.')
                        && address
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "@.-_+".contains(c))
                });
            if !plain {
                return Err(bad(
                    &p.id,
                    format!("`delist_address` {address:?} is not a plain mail address"),
                ));
            }
        }
        let hosts = p
            .hosts
            .iter()
            .map(|h| h.trim().trim_start_matches('.').to_ascii_lowercase())
            .collect::<Vec<_>>();
        if let Some(h) = hosts
            .iter()
            .find(|h| !h.contains('.') || h.contains(char::is_whitespace))
        {
            return Err(bad(&p.id, format!("`hosts` entry {h:?} is not a domain")));
        }
        out.push(Provider {
            id: p.id.clone(),
            name: p.name.clone().unwrap_or_else(|| p.id.clone()),
            hosts,
            delist: p.delist.clone(),
            delist_address: p.delist_address.as_ref().map(|a| a.to_ascii_lowercase()),
            request: p.request.clone(),
            typical_time: p.typical_time.clone(),
            answers_by_email: p.answers_by_email,
            notes: p.notes.clone(),
        });
    }
    Ok(out)
}

impl Rules {
    /// The playbook of a provider.
    pub fn provider(&self, id: &str) -> Option<&Provider> {
        self.providers.iter().find(|p| p.id == id)
    }

    /// The provider a server name or mail domain belongs to.
    pub fn provider_of_host(&self, host: &str) -> Option<&Provider> {
        self.providers.iter().find(|p| p.owns(host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_block_rule_names_a_provider_with_a_playbook() {
        let rules = Rules::builtin().expect("built-in rules compile");
        for b in rules.bounces.iter().filter(|b| b.block) {
            let id = b.provider.as_deref().expect("a block names its provider");
            let p = rules.provider(id).expect("the provider has a playbook");
            assert!(
                p.delist.is_some() || !p.request.is_empty(),
                "{id}: the playbook says how to get off"
            );
        }
        let t_online = rules.provider("t-online").expect("T-Online");
        assert_eq!(
            t_online.delist_address.as_deref(),
            Some("tobr@rx.t-online.de")
        );
        assert!(t_online.answers_by_email);
    }

    #[test]
    fn a_provider_owns_its_domains_and_their_subdomains_only() {
        let rules = Rules::builtin().expect("built-in rules compile");
        let of = |h: &str| rules.provider_of_host(h).map(|p| p.id.as_str());
        assert_eq!(of("gmail-smtp-in.l.google.com"), Some("gmail"));
        assert_eq!(of("GMAIL.COM."), Some("gmail"));
        assert_eq!(of("mta7.am0.yahoodns.net"), Some("yahoo"));
        assert_eq!(of("mx00.t-online.de"), Some("t-online"));
        assert_eq!(of("notgmail.com"), None);
        assert_eq!(of("gmail.com.example.net"), None);
    }

    #[test]
    fn a_user_playbook_replaces_the_builtin_one_and_bad_ones_are_named() {
        let user = r#"
[[provider]]
id = "gmail"
name = "Google (our account manager)"
delist = "https://example.net/google-contact"
"#;
        let rules = Rules::with_overrides(Some(("mine.toml", user))).expect("compiles");
        let gmail = rules.provider("gmail").expect("gmail");
        assert_eq!(gmail.name, "Google (our account manager)");
        assert!(gmail.hosts.is_empty(), "replaced whole, as rules are");

        for (bad, says) in [
            (
                "[[provider]]\nid = \"x\"\ndelist_address = \"a@b.c, evil@example.org\"\n",
                "not a plain mail address",
            ),
            (
                "[[provider]]\nid = \"Bad Id\"\n",
                "lowercase letters",
            ),
            (
                "[[bounce]]\nid = \"b\"\nkind = \"ndr_other\"\nblock = true\npatterns = ['x']\n",
                "missing `provider`",
            ),
            (
                "[[bounce]]\nid = \"b\"\nkind = \"ndr_other\"\nprovider = \"nobody\"\npatterns = ['x']\n",
                "unknown provider `nobody`",
            ),
        ] {
            let err = Rules::with_overrides(Some(("mine.toml", bad)))
                .expect_err(bad)
                .to_string();
            assert!(err.contains(says) && err.contains("mine.toml"), "{err}");
        }
    }

    #[test]
    fn builtin_rules_compile() {
        let rules = Rules::builtin().expect("built-in rules compile");
        assert!(!rules.tickets.is_empty());
        assert!(!rules.phrases.is_empty());
        assert!(!rules.markers.microsoft_support.is_empty());
        // Patterns compile on first use: every one of them must.
        for re in rules.string_patterns() {
            if let Err(e) = compiled(&re.source) {
                panic!("{} does not compile: {e}", re.source);
            }
        }
        // Phrase patterns compile on first use: every one of them must.
        let broken: Vec<&str> = rules
            .phrases
            .iter()
            .filter(|p| {
                p.pattern
                    .iter()
                    .chain(&p.all)
                    .chain(p.none.iter())
                    .any(|re| re.get().is_none())
            })
            .map(|p| p.id.as_str())
            .collect();
        assert!(
            broken.is_empty(),
            "phrase rules that do not compile: {broken:?}"
        );
    }

    #[test]
    fn bad_phrase_pattern_is_an_error_at_load() {
        let user =
            "[[phrase]]\nid = \"ack.mine\"\nkind = \"ms_ack\"\npatterns = ['(?i)we\\s+got(']\n";
        let err = Rules::with_overrides(Some(("mine.toml", user))).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("mine.toml") && text.contains("ack.mine"),
            "{text}"
        );
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
