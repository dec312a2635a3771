//! A sender-support answer read once into features: its sentences as Microsoft wrote them (our
//! own words echoed back left out, each sentence marked when it recalls the past or invites a
//! reply), its result table, and where it stands in the thread. [`crate::pipeline::score`]
//! weighs them.

use std::sync::LazyLock;

use regex::Regex;
use serde::Serialize;

use crate::pipeline::classify::{Context, Evidence, IpOutcome, Kind, Outcome};
use crate::pipeline::extract::{self, normalize};
use crate::pipeline::parse::Inbound;
use crate::pipeline::rules::{starts_a_word, PhraseRule, Role, Rules};

/// One sentence of the message's own text, whitespace folded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sentence {
    pub text: String,
    /// It speaks of an earlier verdict ("previously", "last year we told you").
    pub past: bool,
    /// It invites a reply "to investigate further": not a request for data.
    pub invitation: bool,
    /// It says a review is over: the escalation it names is finished, not under way.
    pub concluded: bool,
}

/// What scoring reads.
#[derive(Debug, Clone, Default)]
pub struct Features {
    pub sentences: Vec<Sentence>,
    /// The sentences joined by a separator no pattern crosses, so that each rule scans the
    /// message once; `starts` holds where each sentence begins.
    pub text: String,
    starts: Vec<usize>,
    /// The languages the message is written in, by their common words: only cues of these
    /// languages (and language-independent ones) are run.
    pub languages: Vec<&'static str>,
    /// Quoted passages longer than a phrase: the request we typed, echoed back.
    pub echoed: Vec<String>,
    /// The result table, one outcome per IP.
    pub table: Vec<IpOutcome>,
    /// The table's headings and rows, as evidence.
    pub table_evidence: Vec<Evidence>,
    /// The message answers one of ours (`In-Reply-To`/`References` name our Message-ID domain):
    /// it cannot be an acknowledgement of a new request.
    pub answers_our_reply: bool,
    /// Marked automatic (`Auto-Submitted`) or sent from a no-reply address.
    pub automated: bool,
}

/// Quoted passages: straight, curly and angled quotes, and Japanese brackets.
static QUOTED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#""[^"]{40,}"|\u{201C}[^\u{201D}]{40,}\u{201D}|\u{201E}[^\u{201C}\u{201D}]{40,}[\u{201C}\u{201D}]|\u{AB}[^\u{BB}]{40,}\u{BB}|\u{300C}[^\u{300D}]{20,}\u{300D}"#)
        .expect("static regex is valid")
});

static NO_REPLY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^(?:no-?reply|do-?not-?reply|noreply|donotreply)")
        .expect("static regex is valid")
});

/// Reads the features of a message's own text.
pub fn read(inbound: &Inbound, own_text: &str, rules: &Rules, ctx: &Context) -> Features {
    let mut features = Features {
        languages: languages(own_text),
        ..Features::default()
    };
    let mut table_lines = std::collections::HashSet::new();
    features.table = result_table(
        own_text,
        rules,
        ctx,
        &features.languages,
        &mut features.table_evidence,
        &mut table_lines,
    );
    // The table speaks through its outcomes; its lines are not prose cues as well.
    let prose: String = own_text
        .lines()
        .enumerate()
        .map(|(i, l)| if table_lines.contains(&i) { "" } else { l })
        .collect::<Vec<_>>()
        .join("\n");
    let mut without_echo = String::with_capacity(prose.len());
    let mut last = 0;
    // Quotes may span wrapped lines: look at the whole text, folded only for the match.
    for m in QUOTED.find_iter(&prose) {
        without_echo.push_str(&prose[last..m.start()]);
        without_echo.push_str("[...]");
        features.echoed.push(normalize(m.as_str()));
        last = m.end();
    }
    without_echo.push_str(&prose[last..]);

    // Cues run on lowercased text (see `rules::matcher`).
    let all: Vec<String> = paragraphs(&without_echo)
        .iter()
        .flat_map(|p| sentences(&normalize(p).to_lowercase()))
        .collect();
    let (text, starts) = joined(&all);
    let speaks = features.languages.clone();
    let marked = |role: Role| {
        let mut hit = vec![false; all.len()];
        for rule in rules
            .phrases
            .iter()
            .filter(|p| p.role == role && p.speaks(&speaks))
        {
            if let Some(re) = rule.pattern.as_ref().and_then(|r| r.get()) {
                let bytes = text.as_bytes();
                for m in re.find_iter(bytes).filter(|m| starts_a_word(bytes, m)) {
                    hit[sentence_at(&starts, word_start(&m))] = true;
                }
            }
            for (i, _) in co_occurring(rule, &text, &starts, |i| all.get(i)) {
                hit[i] = true;
            }
        }
        hit
    };
    let (echo, past, present, invitation, concluded) = (
        marked(Role::Echo),
        marked(Role::Past),
        marked(Role::Present),
        marked(Role::Invitation),
        marked(Role::Concluded),
    );
    for (i, sentence) in all.into_iter().enumerate() {
        if echo[i] {
            features.echoed.push(sentence);
            continue;
        }
        features.sentences.push(Sentence {
            past: past[i] && !present[i],
            invitation: invitation[i],
            concluded: concluded[i],
            text: sentence,
        });
    }
    let texts: Vec<String> = features.sentences.iter().map(|s| s.text.clone()).collect();
    (features.text, features.starts) = joined(&texts);
    let ours = |id: &String| {
        id.rsplit_once('@').is_some_and(|(_, d)| {
            ctx.own_message_id_domains
                .iter()
                .any(|o| o.eq_ignore_ascii_case(d))
        })
    };
    features.answers_our_reply =
        inbound.in_reply_to.iter().any(ours) || inbound.references.iter().any(ours);
    features.automated = inbound
        .header("auto-submitted")
        .is_some_and(|v| !v.trim().eq_ignore_ascii_case("no"))
        || inbound
            .from
            .as_ref()
            .is_some_and(|f| NO_REPLY.is_match(&f.local_part()));
    features
}

impl Features {
    /// The sentence a byte offset of [`Features::text`] falls in.
    pub fn sentence_at(&self, offset: usize) -> usize {
        sentence_at(&self.starts, offset)
    }

    /// The sentences in which `rule`'s co-occurring words all occur, with those words.
    pub fn co_occurring(&self, rule: &PhraseRule) -> Vec<(usize, String)> {
        co_occurring(rule, &self.text, &self.starts, |i| {
            self.sentences.get(i).map(|s| &s.text)
        })
    }
}

/// The sentences of the joined `text` in which every word group of `rule` occurs and none of
/// its excluded words, with the words found. Each group scans the whole text once and only the
/// sentences every group reached are checked one by one: a search per sentence and group costs
/// thousands of calls on a long message.
fn co_occurring<'s>(
    rule: &PhraseRule,
    text: &str,
    starts: &[usize],
    sentence: impl Fn(usize) -> Option<&'s String>,
) -> Vec<(usize, String)> {
    let bytes = text.as_bytes();
    let mut reached: Option<std::collections::BTreeSet<usize>> = None;
    for group in &rule.all {
        let Some(re) = group.get() else {
            return Vec::new();
        };
        let found: std::collections::BTreeSet<usize> = re
            .find_iter(bytes)
            .filter(|m| starts_a_word(bytes, m))
            .map(|m| sentence_at(starts, word_start(&m)))
            .filter(|i| reached.as_ref().is_none_or(|r| r.contains(i)))
            .collect();
        if found.is_empty() {
            return Vec::new();
        }
        reached = Some(found);
    }
    reached
        .into_iter()
        .flatten()
        .filter_map(|i| Some((i, rule.find_words(sentence(i)?)?)))
        .collect()
}

/// Sentences joined with a separator that neither `\s` nor `.` matches, so no pattern spans two.
const SEPARATOR: &str = "\n\u{1}\n";

fn joined(sentences: &[String]) -> (String, Vec<usize>) {
    let mut text = String::new();
    let mut starts = Vec::with_capacity(sentences.len());
    for s in sentences {
        if !text.is_empty() {
            text.push_str(SEPARATOR);
        }
        starts.push(text.len());
        text.push_str(s);
    }
    (text, starts)
}

/// Where a match's words begin: a boundary written as a class may have taken the character
/// before them (the separator, when the words open a sentence).
pub fn word_start(m: &regex::bytes::Match<'_>) -> usize {
    m.start()
        + m.as_bytes()
            .iter()
            .take_while(|b| b.is_ascii() && !b.is_ascii_alphanumeric())
            .count()
}

fn sentence_at(starts: &[usize], offset: usize) -> usize {
    starts.partition_point(|&s| s <= offset).saturating_sub(1)
}

/// Common words of the languages Microsoft's templates come in.
const COMMON_WORDS: &[(&str, &[&str])] = &[
    (
        "en",
        &[
            "the", "and", "you", "your", "we", "for", "this", "that", "with", "have", "our",
            "please", "not", "is", "are", "of", "to",
        ],
    ),
    (
        "de",
        &[
            "der", "die", "das", "und", "wir", "ihre", "sie", "nicht", "ist", "mit", "für",
            "bitte", "wurde", "eine", "den", "dem", "auf", "ihr",
        ],
    ),
    (
        "fr",
        &[
            "le", "la", "les", "et", "vous", "votre", "nous", "pour", "est", "pas", "des", "une",
            "avec", "dans", "que", "ne", "du",
        ],
    ),
    (
        "es",
        &[
            "el", "la", "los", "las", "y", "usted", "su", "para", "es", "no", "con", "una", "que",
            "del", "por", "hemos", "le",
        ],
    ),
    (
        "pt",
        &[
            "o", "os", "as", "e", "você", "sua", "seu", "para", "é", "não", "com", "uma", "que",
            "do", "da", "dos", "foi", "em",
        ],
    ),
    (
        "it",
        &[
            "il", "lo", "gli", "e", "lei", "sua", "per", "è", "non", "con", "una", "che", "del",
            "della", "abbiamo", "di", "la",
        ],
    ),
    (
        "nl",
        &[
            "de", "het", "een", "en", "u", "uw", "wij", "voor", "is", "niet", "met", "van", "dat",
            "zijn", "hebben", "we",
        ],
    ),
    (
        "pl",
        &[
            "i", "w", "na", "z", "że", "nie", "jest", "się", "do", "dla", "oraz", "są", "pan",
            "pani", "państwa", "prosimy",
        ],
    ),
    (
        "sv",
        &[
            "och", "att", "det", "är", "inte", "för", "med", "vi", "ni", "er", "din", "som", "har",
            "på", "ett",
        ],
    ),
    (
        "cs",
        &[
            "a", "v", "na", "že", "se", "je", "není", "pro", "s", "jsme", "vás", "vaše", "do", "k",
            "byla", "bylo",
        ],
    ),
];

/// The languages of a text by its common words (and Japanese by its script). When too few
/// words decide, every language: a cue is never skipped for want of evidence.
fn languages(text: &str) -> Vec<&'static str> {
    let all = || COMMON_WORDS.iter().map(|(l, _)| *l).chain(["ja"]).collect();
    let mut counts: Vec<(&'static str, usize)> =
        COMMON_WORDS.iter().map(|(l, _)| (*l, 0)).collect();
    let mut words = 0usize;
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        words += 1;
        let lower = word.to_lowercase();
        for (i, (_, common)) in COMMON_WORDS.iter().enumerate() {
            if common.contains(&lower.as_str()) {
                counts[i].1 += 1;
            }
        }
    }
    let japanese = text
        .chars()
        .any(|c| matches!(c as u32, 0x3040..=0x30ff | 0x4e00..=0x9fff));
    let best = counts.iter().map(|(_, n)| *n).max().unwrap_or(0);
    if best < 4 && !japanese {
        return all();
    }
    let mut out: Vec<&'static str> = counts
        .iter()
        .filter(|(_, n)| *n >= 3 && *n * 4 >= best)
        .map(|(l, _)| *l)
        .collect();
    if japanese {
        out.push("ja");
    }
    if out.is_empty() || words < 12 {
        return all();
    }
    out
}

/// Paragraphs: runs of non-empty lines. A wrapped sentence is one paragraph line.
fn paragraphs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Sentences of a folded paragraph: split after `.`, `!`, `?` (and their CJK forms) followed
/// by a space or the end, so `5.7.1` and `24.5` stay whole.
fn sentences(paragraph: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = paragraph.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let end = i + c.len_utf8();
        let closes = match c {
            '。' | '！' | '？' => true,
            '.' | '!' | '?' => chars.peek().is_none_or(|(_, n)| *n == ' '),
            _ => false,
        };
        if closes {
            let s = paragraph[start..end].trim();
            if !s.is_empty() {
                out.push(s.to_string());
            }
            start = end;
        }
    }
    let rest = paragraph[start..].trim();
    if !rest.is_empty() {
        out.push(rest.to_string());
    }
    out
}

/// Reads a result table: a heading line, then the IPs it applies to; or rows that carry an IP
/// and its outcome (`192.0.2.1 | Not qualified`, in any column order).
fn result_table(
    own_text: &str,
    rules: &Rules,
    ctx: &Context,
    languages: &[&str],
    evidence: &mut Vec<Evidence>,
    used_lines: &mut std::collections::HashSet<usize>,
) -> Vec<IpOutcome> {
    let mut outcomes: Vec<IpOutcome> = Vec::new();
    let mut position: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut current: Option<Outcome> = None;
    // A heading or a status cell: the rules' headings first, else (`by_cue`) a short line whose
    // words are an outcome cue (a table in a wording the headings do not list).
    let heading_of = |line: &str, by_cue: bool| {
        rules
            .headings
            .iter()
            .find(|h| h.regex.is_match(line))
            .map(|h| (h.outcome, h.id.clone()))
            .or_else(|| {
                if !by_cue || line.chars().count() > 80 {
                    return None;
                }
                let lower = line.to_lowercase();
                rules
                    .phrases
                    .iter()
                    .filter(|p| p.role == Role::Cue && p.speaks(languages))
                    .find_map(|p| {
                        let outcome = match p.kind? {
                            Kind::MsNotQualified => Outcome::NotQualified,
                            Kind::MsConditionallyMitigated => Outcome::ConditionallyMitigated,
                            Kind::MsMitigated | Kind::MsResolved => Outcome::Mitigated,
                            _ => return None,
                        };
                        p.find(&lower)
                            .map(|_| (outcome, format!("heading.by_cue.{}", p.id)))
                    })
            })
    };
    let mut heading_line: Option<usize> = None;
    // A key/value table: an "IP address | 192.0.2.1" row waits for its "Result | ..." row.
    let mut pending: Option<(usize, Vec<String>)> = None;
    let mut record = |outcomes: &mut Vec<IpOutcome>, ips: Vec<String>, outcome: Outcome| {
        for ip in ips {
            match position.get(&ip) {
                // The harshest outcome wins when an IP is listed twice.
                Some(&i) if outcome == Outcome::NotQualified => outcomes[i].outcome = outcome,
                Some(_) => {}
                None => {
                    position.insert(ip.clone(), outcomes.len());
                    outcomes.push(IpOutcome { ip, outcome });
                }
            }
        }
    };
    let lines: Vec<(String, bool, Vec<String>)> = own_text
        .lines()
        .map(|raw| {
            let line = normalize(raw);
            let tabular = line.contains('|') || raw.contains('\t') || key_value(&line);
            let ips = if line.is_empty() {
                Vec::new()
            } else {
                extract::sender_ips(&line, rules, &ctx.our_networks)
            };
            (line, tabular, ips)
        })
        .collect();
    for (n, (line, tabular, ips)) in lines.iter().enumerate() {
        let (line, tabular, ips) = (line.clone(), *tabular, ips.clone());
        if line.is_empty() {
            continue;
        }
        if ips.is_empty() {
            // A heading in other words than the rules' headings: a short line right above
            // the IPs it applies to, or a table row.
            let heads_ips = line.split_whitespace().count() <= 8
                && lines[n + 1..]
                    .iter()
                    .find(|(l, _, _)| !l.is_empty())
                    .is_some_and(|(_, _, next)| !next.is_empty());
            let found = heading_of(&line, heads_ips || tabular).or_else(|| {
                tabular
                    .then(|| {
                        line.split(CELL)
                            .map(str::trim)
                            .find_map(|c| heading_of(c, true))
                    })
                    .flatten()
            });
            if let (Some((outcome, id)), Some((row, waiting))) = (&found, pending.take()) {
                evidence.push(Evidence::new(id, line.clone()));
                record(&mut outcomes, waiting, *outcome);
                used_lines.insert(row);
                used_lines.insert(n);
                current = None;
                continue;
            }
            current = found.map(|(outcome, id)| {
                evidence.push(Evidence::new(&id, line.clone()));
                heading_line = Some(n);
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
            let inline = without_ips
                .split(|c| c == ';' || CELL.contains(&c))
                .map(str::trim)
                .find_map(|cell| heading_of(cell, tabular));
            if let Some((o, id)) = &inline {
                evidence.push(Evidence::new(id, line.clone()));
                Some(*o)
            } else {
                // Prose naming an IP ends the section; a table row may get its status next.
                current = None;
                pending = tabular.then(|| (n, ips.clone()));
                None
            }
        };
        if outcome.is_some() {
            used_lines.insert(n);
            used_lines.extend(heading_line.take());
        }
        if let Some(outcome) = outcome {
            record(&mut outcomes, ips, outcome);
        }
    }
    outcomes
}

/// What separates the cells of a table row as text: a rendered table's bars, tabs, and the
/// colon of a "Status: Mitigated" key/value row.
const CELL: [char; 4] = ['|', '\t', ':', '\u{FF1A}'];

/// A "label: value" row, as a vertical table reads in plain text ("IP address: 192.0.2.1",
/// "Status: not qualified"): a short label with letters, then a value.
fn key_value(line: &str) -> bool {
    line.split_once([':', '\u{FF1A}'])
        .is_some_and(|(label, value)| {
            let label = label.trim();
            !value.trim().is_empty()
                && label.chars().any(char::is_alphabetic)
                && label.chars().count() <= 30
                && label.split_whitespace().count() <= 3
        })
}

static IP_TOKEN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\d{1,3}(?:\.\d{1,3}){3}(?:/\d{1,2})?|[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:/\d{1,3})?")
        .expect("static regex is valid")
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_split_at_ends_not_inside_numbers() {
        assert_eq!(
            sentences("We saw 550 5.7.1 errors. Please wait 24.5 hours! Done"),
            vec![
                "We saw 550 5.7.1 errors.",
                "Please wait 24.5 hours!",
                "Done"
            ]
        );
        assert_eq!(
            sentences("受付しました。確認します。"),
            vec!["受付しました。", "確認します。"]
        );
    }

    #[test]
    fn echoed_requests_are_not_microsofts_words() {
        let rules = Rules::builtin().expect("rules");
        let ctx = Context::default();
        let inbound = Inbound::default();
        let text = "Your request has been received.\nIssue description (as entered):\n\"Last year we were told this IP was not qualified for mitigation; please review again.\"\n";
        let f = read(&inbound, text, &rules, &ctx);
        assert!(!f.echoed.is_empty());
        assert!(
            f.sentences
                .iter()
                .all(|s| !s.text.contains("not qualified")),
            "{:?}",
            f.sentences
        );
    }

    #[test]
    fn key_value_rows_are_a_table() {
        let rules = Rules::builtin().expect("rules");
        let ctx = Context::default();
        let inbound = Inbound::default();
        let text = "The result of our review:\n\nIP address: 192.0.2.10\nStatus: Not qualified\n\nIP address: 192.0.2.11\nStatus: Mitigated\n\nNote: replies are read at 10:30 UTC.\n";
        let f = read(&inbound, text, &rules, &ctx);
        let got: Vec<(&str, Outcome)> =
            f.table.iter().map(|o| (o.ip.as_str(), o.outcome)).collect();
        assert_eq!(
            got,
            vec![
                ("192.0.2.10", Outcome::NotQualified),
                ("192.0.2.11", Outcome::Mitigated)
            ]
        );
        assert!(key_value("Status: Mitigated"));
        assert!(key_value("IP-Adresse\u{FF1A} 192.0.2.1"));
        assert!(!key_value("2001:db8::1 was blocked"));
        assert!(!key_value(
            "We have reviewed your request and found the following: nothing"
        ));
    }
}
