//! Templates learned from the operator: Microsoft's answers are templated, so one decision
//! ("this message is a refusal") covers every later message of the same template. A template
//! is the message's own text with what varies masked (ticket ids, IPs, addresses, links,
//! numbers, the greeted name), cut into word 3-shingles; a new message matches when the
//! Jaccard similarity of its shingle set with a template's reaches the threshold.
//!
//! NOTE: exact Jaccard over the whole shingle set, not MinHash: templates are a few hundred
//! shingles and an installation keeps dozens of them, so the exact measure costs microseconds
//! and needs no sketch parameters. Measured on the corpus (README, "Learned templates"): every
//! pair of different templates stays below 0.3, the same template with other ids and IPs
//! scores above 0.8.

use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::pipeline::classify::{Evidence, Kind};
use crate::pipeline::score::ExtraCue;

/// One learned template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Learned {
    /// The store's id (0 for built-in exemplars).
    #[serde(default)]
    pub id: i64,
    pub kind: Kind,
    /// Sorted, deduplicated shingle hashes.
    #[serde(with = "hex_list")]
    pub shingles: Vec<u64>,
    /// The start of the masked text, for `templates show`.
    pub sample: String,
    /// Where it was taught from (a file, a Message-ID, a folder).
    pub source: String,
    #[serde(default)]
    pub created_at: i64,
}

/// A message matching a learned template.
#[derive(Debug, Clone, PartialEq)]
pub struct Match {
    pub template: i64,
    pub kind: Kind,
    pub similarity: f64,
    pub source: String,
}

/// Similarity from which a template counts.
pub const THRESHOLD: f64 = 0.55;
/// What a full match adds to its kind's score (scaled by the similarity).
pub const WEIGHT: f64 = 10.0;

static MASKS: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
    [
        (r"(?i)\bSRX\d{6,16}ID\b", " TICKET "),
        (r"(?i)\b(?:https?://|www\.)\S+", " URL "),
        (r"(?i)\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b", " EMAIL "),
        (r"\b\d{1,3}(?:\.\d{1,3}){3}(?:/\d{1,2})?\b", " IP "),
        (
            r"(?i)\b[0-9a-f]{0,4}(?::[0-9a-f]{0,4}){2,7}(?:/\d{1,3})?",
            " IP ",
        ),
        (r"\d+", " N "),
    ]
    .into_iter()
    .map(|(p, r)| (Regex::new(p).expect("static regex is valid"), r))
    .collect()
});

/// Greetings and sign-offs: the word after them is a person's name.
static NAMED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(dear|hello|hi|hallo|liebe[rs]?|sehr\s+geehrte[rs]?\s+(?:herr|frau)|bonjour|cher|ch[èe]re|hola|estimad[oa]|ol[áa]|prezad[oa]|ciao|gentile|beste|geachte|dzie[ńn]\s+dobry|szanown[ya]\s+pan(?:i)?|hej|dobr[ýy]\s+den|sincerely|regards|cordialement|atentamente|saludos|cumprimentos|cordiali\s+saluti|groeten|pozdrawiam|mit\s+freundlichen\s+gr[üu][ßs]en)\b[\s,]+\p{Lu}[\p{L}'-]*")
        .expect("static regex is valid")
});

/// The text with what varies between two messages of one template masked, lowercased.
pub fn mask(text: &str) -> String {
    let mut masked = NAMED.replace_all(text, "$1 NAME").into_owned();
    for (re, with) in MASKS.iter() {
        masked = re.replace_all(&masked, *with).into_owned();
    }
    masked.to_lowercase()
}

/// Words of masked text; a run of CJK characters is read a character at a time, as those
/// languages write without spaces.
fn words(masked: &str) -> Vec<String> {
    let mut out = Vec::new();
    for token in masked.split(|c: char| !c.is_alphanumeric()) {
        if token.is_empty() {
            continue;
        }
        if token.chars().any(is_cjk) {
            out.extend(token.chars().map(String::from));
        } else {
            out.push(token.to_string());
        }
    }
    out
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x3040..=0x30ff | 0x3400..=0x4dbf | 0x4e00..=0x9fff | 0xac00..=0xd7af | 0xff66..=0xff9d)
}

/// FNV-1a: a stable hash, so stored shingles mean the same in every build.
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            h ^= 0x1f;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        for b in part.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The sorted, deduplicated word 3-shingles of a text (single words when it is shorter).
pub fn shingles(text: &str) -> Vec<u64> {
    let words = words(&mask(text));
    let refs: Vec<&str> = words.iter().map(String::as_str).collect();
    let mut out: Vec<u64> = if refs.len() < 3 {
        refs.iter().map(|w| fnv1a(&[w])).collect()
    } else {
        refs.windows(3).map(fnv1a).collect()
    };
    out.sort_unstable();
    out.dedup();
    out
}

/// Jaccard similarity of two sorted, deduplicated sets.
pub fn jaccard(a: &[u64], b: &[u64]) -> f64 {
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    let (mut i, mut j, mut common) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                common += 1;
                i += 1;
                j += 1;
            }
        }
    }
    common as f64 / (a.len() + b.len() - common) as f64
}

/// The most similar learned template at or above the threshold.
pub fn best_match(shingles: &[u64], learned: &[Learned]) -> Option<Match> {
    learned
        .iter()
        .map(|t| (t, jaccard(shingles, &t.shingles)))
        .filter(|(_, s)| *s >= THRESHOLD)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(t, similarity)| Match {
            template: t.id,
            kind: t.kind,
            similarity,
            source: t.source.clone(),
        })
}

/// A learned template as a scoring cue.
pub fn cue(m: &Match) -> ExtraCue {
    let weight = WEIGHT * m.similarity;
    ExtraCue {
        kind: m.kind,
        weight,
        learned: true,
        evidence: Evidence::weighted(
            "learned",
            format!(
                "template #{} ({}, from {}): similarity {:.2}",
                m.template, m.kind, m.source, m.similarity
            ),
            weight,
        ),
    }
}

/// Teaches one message's own text as a template of `kind`.
pub fn learn(kind: Kind, own_text: &str, source: &str, now: i64) -> Learned {
    let sample: String = mask(own_text)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(400)
        .collect();
    Learned {
        id: 0,
        kind,
        shingles: shingles(own_text),
        sample,
        source: source.to_string(),
        created_at: now,
    }
}

/// Shingles as hex strings in files: exact in any JSON reader.
mod hex_list {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u64], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|x| format!("{x:016x}")))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
        let strings = Vec::<String>::deserialize(d)?;
        let mut out = strings
            .iter()
            .map(|s| u64::from_str_radix(s, 16).map_err(serde::de::Error::custom))
            .collect::<Result<Vec<u64>, _>>()?;
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "Dear Dana,\n\nWe have looked at SRX1569221851ID. The address 192.0.2.25 cannot be helped by us at the moment, as our review found a pattern of irregular traffic. Please see https://example.com/x for our policies.\n\nKind regards,\nSam";
    const B: &str = "Dear Piotr,\n\nWe have looked at SRX1700000001ID. The address 203.0.113.9 cannot be helped by us at the moment, as our review found a pattern of irregular traffic. Please see https://example.com/y for our policies.\n\nKind regards,\nAlex";

    #[test]
    fn the_same_template_with_other_ids_matches_and_others_do_not() {
        let sa = shingles(A);
        assert!(
            jaccard(&sa, &shingles(B)) > 0.9,
            "{}",
            jaccard(&sa, &shingles(B))
        );
        let other = "Thank you for contacting us. Your request has been received and will be reviewed by our team within two business days.";
        assert!(jaccard(&sa, &shingles(other)) < 0.1);
        let t = learn(Kind::MsNotQualified, A, "test", 0);
        let m = best_match(&shingles(B), &[t]).expect("matches");
        assert_eq!(m.kind, Kind::MsNotQualified);
    }

    #[test]
    fn masking_hides_what_varies() {
        let m = mask("Dear Dana, ticket SRX1234567890ID for 192.0.2.1 and 2001:db8::1 (7096815524) see www.x.example mail a@b.example");
        assert!(
            !m.contains("dana") && !m.contains("192") && !m.contains("7096"),
            "{m}"
        );
    }

    #[test]
    fn files_keep_shingles_exact() {
        let t = learn(Kind::MsAck, A, "f", 1);
        let json = serde_json::to_string(&t).expect("serializes");
        let back: Learned = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, t);
    }
}
