//! A sender-support answer read once into features: its sentences as Microsoft wrote them (our
//! own words echoed back left out, each sentence marked when it recalls the past or invites a
//! reply), its result table, and where it stands in the thread. [`crate::pipeline::score`]
//! weighs them.

use std::sync::LazyLock;

use regex::Regex;
use serde::Serialize;

use crate::pipeline::classify::{Context, Evidence, IpOutcome, Outcome};
use crate::pipeline::extract::{self, normalize};
use crate::pipeline::parse::Inbound;
use crate::pipeline::rules::{Role, Rules};

/// One sentence of the message's own text, whitespace folded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sentence {
    pub text: String,
    /// It speaks of an earlier verdict ("previously", "last year we told you").
    pub past: bool,
    /// It invites a reply "to investigate further": not a request for data.
    pub invitation: bool,
}

/// What scoring reads.
#[derive(Debug, Clone, Default)]
pub struct Features {
    pub sentences: Vec<Sentence>,
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
    let mut features = Features::default();
    let mut without_echo = String::with_capacity(own_text.len());
    let mut last = 0;
    // Quotes may span wrapped lines: look at the whole text, folded only for the match.
    for m in QUOTED.find_iter(own_text) {
        without_echo.push_str(&own_text[last..m.start()]);
        without_echo.push_str("[...]");
        features.echoed.push(normalize(m.as_str()));
        last = m.end();
    }
    without_echo.push_str(&own_text[last..]);

    for paragraph in paragraphs(&without_echo) {
        for text in sentences(&normalize(&paragraph)) {
            let marked = |role: Role| {
                rules
                    .phrases
                    .iter()
                    .filter(|p| p.role == role)
                    .any(|p| p.patterns.iter().any(|r| r.is_match(&text)))
            };
            if marked(Role::Echo) {
                features.echoed.push(text);
                continue;
            }
            let sentence = Sentence {
                past: marked(Role::Past),
                invitation: marked(Role::Invitation),
                text,
            };
            features.sentences.push(sentence);
        }
    }
    features.table = result_table(own_text, rules, ctx, &mut features.table_evidence);
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
    evidence: &mut Vec<Evidence>,
) -> Vec<IpOutcome> {
    let mut outcomes: Vec<IpOutcome> = Vec::new();
    let mut position: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
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
                evidence.push(Evidence::new(&id, line.clone()));
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
                .split(['|', '\t', ';'])
                .map(str::trim)
                .find_map(heading_of);
            if let Some((o, id)) = &inline {
                evidence.push(Evidence::new(id, line.clone()));
                Some(*o)
            } else {
                // Prose naming an IP ends the section.
                current = None;
                None
            }
        };
        if let Some(outcome) = outcome {
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
        }
    }
    outcomes
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
}
