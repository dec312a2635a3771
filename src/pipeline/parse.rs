//! Bytes of one message -> [`Inbound`], the plain data every later stage reads.
//!
//! Parsing never fails: damaged input becomes data (`damage` notes, empty fields), so one bad
//! message can never stop a replay or the daemon.

mod authres;
mod dsn;
mod html;

use mail_parser::{Addr, Address, HeaderValue, Message, MessageParser, MimeHeaders, PartType};
use serde::Serialize;
use sha2::{Digest, Sha256};

pub use authres::{AuthResults, MethodResult};
pub use dsn::{Dsn, DsnRecipient};

/// How much of a message is read for classification.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Decoded text kept per message (body and attached parts together); the rest is dropped
    /// and `truncated` is set.
    pub max_text_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_text_bytes: 2 * 1024 * 1024,
        }
    }
}

/// A mailbox from an address header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mailbox {
    pub name: Option<String>,
    pub address: String,
}

impl Mailbox {
    /// The domain part, lowercased; empty when the address has none.
    pub fn domain(&self) -> String {
        self.address
            .rsplit_once('@')
            .map(|(_, d)| d.trim_end_matches('>').to_ascii_lowercase())
            .unwrap_or_default()
    }

    /// The local part, lowercased.
    pub fn local_part(&self) -> String {
        self.address
            .split_once('@')
            .map(|(l, _)| l)
            .unwrap_or(&self.address)
            .to_ascii_lowercase()
    }
}

/// A message attached or returned inside another one (message/rfc822, text/rfc822-headers).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Attached {
    /// Header fields, names lowercased, values unfolded.
    pub headers: Vec<(String, String)>,
    /// Its decoded text, if it had a body.
    pub body: String,
}

impl Attached {
    /// The first value of a header field (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// Everything the pipeline needs to know about one inbound message.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Inbound {
    pub message_id: Option<String>,
    /// Decoded subject (RFC 2047 words resolved), empty when missing.
    pub subject: String,
    pub from: Option<Mailbox>,
    /// How many mailboxes `From:` names; only a single author can be authenticated by DMARC.
    pub from_count: usize,
    pub reply_to: Option<Mailbox>,
    pub to: Vec<Mailbox>,
    pub cc: Vec<Mailbox>,
    /// `Date:` as Unix seconds, when present and valid.
    pub date: Option<i64>,
    pub in_reply_to: Vec<String>,
    pub references: Vec<String>,
    /// Top-level header fields in order, names lowercased, values unfolded.
    pub headers: Vec<(String, String)>,
    /// Top-level MIME type, lowercased (`multipart/report`).
    pub content_type: String,
    /// The `report-type` parameter of a top-level multipart/report.
    pub report_type: Option<String>,
    /// The message's own human-readable text (HTML turned into text); attached and returned
    /// messages are not part of it.
    pub body: String,
    /// RFC 3464 delivery-status fields, when the message carries a DSN part.
    pub dsn: Option<Dsn>,
    /// Attached or returned messages.
    pub attached: Vec<Attached>,
    pub auth_results: Vec<AuthResults>,
    /// Size of the raw message in bytes.
    pub size: usize,
    /// Set when text beyond [`Limits::max_text_bytes`] was dropped.
    pub truncated: bool,
    /// What was wrong with the bytes, for the operator.
    pub damage: Vec<String>,
    /// SHA-256 of the raw bytes, hex; the dedup key for messages without a Message-ID.
    pub content_hash: String,
}

impl Inbound {
    /// The first value of a top-level header field (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// All values of a top-level header field (case-insensitive).
    pub fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether any header field starts with this prefix (e.g. `list-`).
    pub fn has_header_prefix(&self, prefix: &str) -> bool {
        self.headers.iter().any(|(n, _)| n.starts_with(prefix))
    }
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Parses one message. Never panics and never fails.
pub fn parse(raw: &[u8], limits: Limits) -> Inbound {
    let content_hash = hex(&Sha256::digest(raw));
    let mut inbound = Inbound {
        size: raw.len(),
        content_hash,
        ..Inbound::default()
    };
    let Some(message) = MessageParser::default().parse(raw) else {
        inbound
            .damage
            .push("not a parseable RFC 5322 message".to_string());
        let mut budget = limits.max_text_bytes;
        inbound.body = take_budget(&String::from_utf8_lossy(raw), &mut budget, &mut inbound);
        return inbound;
    };

    inbound.headers = raw_headers(&message);
    inbound.message_id = message.message_id().map(clean_id).filter(|s| !s.is_empty());
    inbound.subject = message.subject().unwrap_or_default().trim().to_string();
    inbound.from = message.from().and_then(first_mailbox);
    inbound.from_count = message.from().map_or(0, |a| all_mailboxes(a).len());
    inbound.reply_to = message.reply_to().and_then(first_mailbox);
    inbound.to = message.to().map(all_mailboxes).unwrap_or_default();
    inbound.cc = message.cc().map(all_mailboxes).unwrap_or_default();
    inbound.date = message.date().map(|d| d.to_timestamp());
    inbound.in_reply_to = id_list(message.in_reply_to());
    inbound.references = id_list(message.references());
    if let Some(ct) = message.content_type() {
        inbound.content_type = format!(
            "{}/{}",
            ct.ctype().to_ascii_lowercase(),
            ct.subtype().unwrap_or("").to_ascii_lowercase()
        );
        if inbound.content_type == "multipart/report" {
            inbound.report_type = ct.attribute("report-type").map(|s| s.to_ascii_lowercase());
        }
    } else {
        inbound.content_type = "text/plain".to_string();
    }
    inbound.auth_results = inbound
        .headers
        .iter()
        .enumerate()
        .filter(|(_, (name, _))| name == "authentication-results")
        .map(|(index, (_, value))| AuthResults {
            index,
            ..authres::parse(value)
        })
        .collect();

    let mut budget = limits.max_text_bytes;
    collect_parts(&message, &mut inbound, &mut budget);
    inbound
}

/// Walks the top-level message's parts: its own text, DSN fields and attached messages.
fn collect_parts(message: &Message<'_>, inbound: &mut Inbound, budget: &mut usize) {
    let mut texts = message_texts(message, inbound);
    // An HTML-only message whose HTML did not land in text_body (e.g. attached HTML).
    if texts.is_empty() {
        for pos in 0..message.html_body.len() {
            if let Some(html) = message.body_html(pos) {
                texts.push(html::to_text(&html));
            }
        }
    }
    let joined = texts.join("\n");
    inbound.body = take_budget(&joined, budget, inbound);

    for part in message.parts.iter().skip(1) {
        let Some(ct) = part.content_type() else {
            continue;
        };
        let mime = format!(
            "{}/{}",
            ct.ctype().to_ascii_lowercase(),
            ct.subtype().unwrap_or("").to_ascii_lowercase()
        );
        match (mime.as_str(), &part.body) {
            ("message/delivery-status" | "message/global-delivery-status", _) => {
                let text = String::from_utf8_lossy(part.contents());
                let parsed = dsn::parse(&text);
                if inbound.dsn.is_none() && !parsed.recipients.is_empty() {
                    inbound.dsn = Some(parsed);
                }
            }
            ("text/rfc822-headers" | "message/global-headers", _) => {
                let text = String::from_utf8_lossy(part.contents());
                inbound.attached.push(Attached {
                    headers: dsn::header_block(&text),
                    body: String::new(),
                });
            }
            (_, PartType::Message(nested)) => {
                let nested_texts = message_texts(nested, inbound);
                let body = take_budget(&nested_texts.join("\n"), budget, inbound);
                inbound.attached.push(Attached {
                    headers: raw_headers(nested),
                    body,
                });
            }
            _ => {}
        }
    }
}

/// A message's text as a person sees it: of `multipart/alternative`, the plain part unless the
/// HTML part is what carries the message (see [`prefer_html`]).
fn message_texts(message: &Message<'_>, inbound: &mut Inbound) -> Vec<String> {
    let plain = part_texts(message, &message.text_body, inbound);
    // When the HTML side is the same parts, there is no choice to make.
    if message.html_body == message.text_body || message.html_body.is_empty() {
        return plain;
    }
    let html = part_texts(message, &message.html_body, inbound);
    if prefer_html(&plain.join("\n"), &html.join("\n")) {
        html
    } else {
        plain
    }
}

/// The text of some body parts, HTML rendered as a person sees it. Attachments and data parts
/// (DSN fields, returned headers, attached messages) are not text of the message.
fn part_texts(message: &Message<'_>, ids: &[u32], inbound: &mut Inbound) -> Vec<String> {
    let mut texts = Vec::new();
    for &part_id in ids {
        let Some(part) = message.parts.get(part_id as usize) else {
            continue;
        };
        if is_attachment(part) || is_special_text(part) {
            continue;
        }
        if part.is_encoding_problem {
            inbound
                .damage
                .push(format!("part {part_id}: content could not be decoded"));
        }
        match &part.body {
            PartType::Html(html) => texts.push(html::to_text(html)),
            PartType::Text(text) => texts.push(text.to_string()),
            _ => {}
        }
    }
    texts
}

static STUB: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
    // "View this message in an HTML-capable client / in your browser", in a few languages.
    regex::Regex::new(
        r"(?i)\b(?:html|browser|navigateur|navegador|browser-?ansicht|webversion|web\s+version|client\s+de\s+messagerie|e-?mail\s+client|mail\s+client|e-?mail-?programm)\b",
    )
    .expect("static regex is valid")
});
static FACT: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
    // What matters in a sender-support answer: ticket ids, IP addresses, ranges.
    regex::Regex::new(r"(?i)\bSRX\d{6,16}ID\b|\b\d{10}\b|\b\d{1,3}(?:\.\d{1,3}){3}\b|\b[0-9a-f]{1,4}(?::[0-9a-f]{0,4}){2,7}\b")
        .expect("static regex is valid")
});

/// Whether the HTML alternative, not the plain one, is what the message says: the plain part
/// is a stub ("view this message in HTML"), much shorter, or lacks the ids and addresses the
/// HTML carries.
fn prefer_html(plain: &str, html: &str) -> bool {
    let words = |t: &str| t.split_whitespace().count();
    let (p, h) = (words(plain), words(html));
    if h == 0 {
        return false;
    }
    let stub = p < 60 && STUB.is_match(plain);
    let facts = |t: &str| {
        FACT.find_iter(t)
            .map(|m| m.as_str().to_ascii_lowercase())
            .collect::<std::collections::HashSet<_>>()
    };
    let missing = facts(html).difference(&facts(plain)).count();
    stub || p * 2 < h || missing > 0
}

fn is_attachment(part: &mail_parser::MessagePart<'_>) -> bool {
    part.content_disposition()
        .is_some_and(|d| d.ctype().eq_ignore_ascii_case("attachment"))
}

/// Text parts that carry data rather than prose; they are read separately.
fn is_special_text(part: &mail_parser::MessagePart<'_>) -> bool {
    part.content_type().is_some_and(|ct| {
        let sub = ct.subtype().unwrap_or("");
        sub.eq_ignore_ascii_case("rfc822-headers")
            || (ct.ctype().eq_ignore_ascii_case("message") && sub.contains("delivery-status"))
    }) || matches!(part.body, PartType::Message(_))
}

fn take_budget(text: &str, budget: &mut usize, inbound: &mut Inbound) -> String {
    if text.len() <= *budget {
        *budget -= text.len();
        return text.to_string();
    }
    let mut cut = *budget;
    while cut > 0 && !text.is_char_boundary(cut) {
        cut -= 1;
    }
    *budget = 0;
    inbound.truncated = true;
    text[..cut].to_string()
}

/// Header fields as (lowercased name, unfolded value), read from the raw bytes so that
/// non-UTF-8 values survive (lossily) instead of vanishing.
fn raw_headers(message: &Message<'_>) -> Vec<(String, String)> {
    let Some(root) = message.parts.first() else {
        return Vec::new();
    };
    // NOTE: header offsets index the `raw_message` field (for a nested message, the outer
    // message's bytes), not the `raw_message()` slice.
    let raw: &[u8] = &message.raw_message;
    root.headers
        .iter()
        .map(|h| {
            let start = (h.offset_start as usize).min(raw.len());
            let end = (h.offset_end as usize).clamp(start, raw.len());
            (
                h.name.as_str().to_ascii_lowercase(),
                unfold(&String::from_utf8_lossy(&raw[start..end])),
            )
        })
        .collect()
}

/// Joins folded header lines and trims; runs of whitespace become one space.
pub fn unfold(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn clean_id(id: &str) -> String {
    id.trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_string()
}

fn id_list(value: &HeaderValue<'_>) -> Vec<String> {
    match value {
        HeaderValue::Text(t) => vec![clean_id(t)],
        HeaderValue::TextList(list) => list.iter().map(|t| clean_id(t)).collect(),
        _ => Vec::new(),
    }
    .into_iter()
    .filter(|s| !s.is_empty())
    .collect()
}

fn to_mailbox(addr: &Addr<'_>) -> Option<Mailbox> {
    let address = addr.address()?.trim().to_string();
    if address.is_empty() {
        return None;
    }
    Some(Mailbox {
        name: addr
            .name()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty()),
        address,
    })
}

fn first_mailbox(address: &Address<'_>) -> Option<Mailbox> {
    address.iter().find_map(to_mailbox)
}

fn all_mailboxes(address: &Address<'_>) -> Vec<Mailbox> {
    address.iter().filter_map(to_mailbox).collect()
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests;
