//! Draft + thread + ids -> the exact bytes of an outgoing message (mail-builder).
//!
//! A reply lands on Microsoft's ticket thread: In-Reply-To, References (the parent's plus its
//! Message-ID), a `RE:` subject that keeps the ticket id, an extended Outlook Thread-Index, and
//! a Message-ID generated here from the inputs, so the same inputs give the same bytes.

use base64::Engine;
use mail_builder::headers::message_id::MessageId;
use mail_builder::headers::raw::Raw;
use mail_builder::MessageBuilder;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::pipeline::case::Parent;
use crate::pipeline::render::Draft;

/// Who we are on outgoing mail.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub address: String,
    pub organization: Option<String>,
    pub operator: Option<String>,
    /// Domain of the Message-IDs we generate.
    pub message_id_domain: String,
    /// Header stamped on everything we send; inbound mail carrying it is ours.
    pub loop_header: String,
    /// Value of the loop header (this installation's name).
    pub instance: String,
    /// Mark replies to Microsoft `Auto-Submitted: auto-replied` (RFC 3834).
    pub mark_replies_auto_submitted: bool,
}

/// A composed message, ready for the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outgoing {
    pub message_id: String,
    pub from: String,
    pub to: Vec<String>,
    pub subject: String,
    pub in_reply_to: Option<String>,
    #[serde(skip)]
    pub bytes: Vec<u8>,
}

/// A message could not be composed.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("no address to send to: {0}")]
    NoRecipient(String),
    #[error("failed to write message: {0}")]
    Write(#[from] std::io::Error),
}

/// A Message-ID derived from a seed (e.g. inbound message id + template) and the time; the
/// same seed and time always give the same id.
pub fn message_id(seed: &str, now: i64, domain: &str) -> String {
    let digest = Sha256::digest(format!("{seed}\n{now}").as_bytes());
    let tag = crate::pipeline::parse::hex(&digest[..8]);
    format!("pmb.{now}.{tag}@{domain}")
}

const MAX_REFERENCES: usize = 20;

static GATEWAY_TAG: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
    regex::Regex::new(
        r"(?i)^(?:\[(?:external|ext|extern|externe?|caution|warning|suspicious|spam\??)\]\s*|\*{1,2}external\*{1,2}\s*|external:\s*)+",
    )
    .expect("static regex is valid")
});

/// Subject prefixes of replies (English, German, Scandinavian, Dutch, Italian), lowercased.
const REPLY_PREFIXES: &[&str] = &["re:", "aw:", "sv:", "antw:", "r:"];
/// Subject prefixes of forwards, lowercased.
const FORWARD_PREFIXES: &[&str] = &["fw:", "fwd:"];

/// The subject of a reply: `RE: ` + the parent's, keeping the ticket id visible. Tags our own
/// mail gateway put in front (`[EXTERNAL]`) are not sent back to Microsoft.
pub fn reply_subject(parent_subject: &str, ticket_id: Option<&str>) -> String {
    let trimmed = GATEWAY_TAG.replace(parent_subject.trim(), "");
    let trimmed = trimmed.trim();
    let lower = trimmed.to_ascii_lowercase();
    let mut subject = if REPLY_PREFIXES.iter().any(|p| lower.starts_with(p)) {
        trimmed.to_string()
    } else {
        format!("RE: {trimmed}")
    };
    if let Some(t) = ticket_id {
        if !subject
            .to_ascii_lowercase()
            .contains(&t.to_ascii_lowercase())
        {
            subject = format!("{subject} [{t}]");
        }
    }
    subject
}

/// Composes a reply on Microsoft's ticket thread.
pub fn reply(
    parent: &Parent,
    ticket_id: Option<&str>,
    draft: &Draft,
    identity: &Identity,
    message_id: &str,
    now: i64,
) -> Result<Outgoing, ComposeError> {
    let to = parent
        .reply_to
        .clone()
        .filter(|a| a.contains('@'))
        .ok_or_else(|| {
            ComposeError::NoRecipient("the Microsoft message has no reply address".into())
        })?;
    let subject = reply_subject(&parent.subject, ticket_id);
    let mut references: Vec<String> = if parent.references.is_empty() {
        parent.in_reply_to.clone()
    } else {
        parent.references.clone()
    };
    if let Some(id) = &parent.message_id {
        references.push(id.clone());
    }
    if references.len() > MAX_REFERENCES {
        // Keep the thread root and the most recent ones (RFC 5322 allows trimming the middle).
        let tail = references.split_off(references.len() - (MAX_REFERENCES - 1));
        references.truncate(1);
        references.extend(tail);
    }

    let recipient = match &parent.reply_to_name {
        Some(name) => {
            mail_builder::headers::address::Address::new_address(Some(name.clone()), to.clone())
        }
        None => mail_builder::headers::address::Address::new_address(None::<String>, to.clone()),
    };
    let mut builder = MessageBuilder::new()
        .from((identity.name.clone(), identity.address.clone()))
        .to(recipient)
        .header("Subject", subject_header(&subject))
        .date(now)
        .message_id(message_id.to_string());
    if let Some(id) = &parent.message_id {
        builder = builder.in_reply_to(id.clone());
    }
    if !references.is_empty() {
        builder = builder.references(MessageId::new_list(references.iter().cloned()));
    }
    let topic = parent
        .thread_topic
        .clone()
        .unwrap_or_else(|| strip_reply_prefix(&parent.subject).to_string());
    builder = builder.header("Thread-Topic", Raw::new(sanitize_header(&topic)));
    if let Some(index) = parent
        .thread_index
        .as_deref()
        .and_then(|ti| extend_thread_index(ti, now, message_id))
    {
        builder = builder.header("Thread-Index", Raw::new(index));
    }
    if identity.mark_replies_auto_submitted {
        builder = builder.header("Auto-Submitted", Raw::new("auto-replied"));
    }
    builder = stamp(builder, identity).text_body(draft.body.clone());
    Ok(Outgoing {
        message_id: message_id.to_string(),
        from: identity.address.clone(),
        to: vec![to],
        subject,
        in_reply_to: parent.message_id.clone(),
        bytes: builder.write_to_vec()?,
    })
}

/// Composes a notification to the operator.
pub fn notification(
    draft: &Draft,
    identity: &Identity,
    message_id: &str,
    now: i64,
) -> Result<Outgoing, ComposeError> {
    let to = identity
        .operator
        .clone()
        .ok_or_else(|| ComposeError::NoRecipient("no operator address configured".into()))?;
    let subject = draft.subject.clone().unwrap_or_default();
    let builder = MessageBuilder::new()
        .from((identity.name.clone(), identity.address.clone()))
        .to(to.clone())
        .header("Subject", subject_header(&subject))
        .date(now)
        .message_id(message_id.to_string())
        .header("Auto-Submitted", Raw::new("auto-generated"))
        .header("X-Auto-Response-Suppress", Raw::new("All"));
    let builder = stamp(builder, identity).text_body(draft.body.clone());
    Ok(Outgoing {
        message_id: message_id.to_string(),
        from: identity.address.clone(),
        to: vec![to],
        subject,
        in_reply_to: None,
        bytes: builder.write_to_vec()?,
    })
}

fn stamp<'x>(builder: MessageBuilder<'x>, identity: &Identity) -> MessageBuilder<'x> {
    let mut builder = builder.header(
        "X-Mailer",
        Raw::new(format!("postmaster-bot {}", env!("CARGO_PKG_VERSION"))),
    );
    if !identity.loop_header.is_empty() {
        builder = builder.header(
            identity.loop_header.clone(),
            Raw::new(sanitize_header(&identity.instance)),
        );
    }
    builder
}

/// An ASCII subject goes out as folded plain text, so a ticket id is never split across
/// encoded-words; only a non-ASCII one is RFC 2047-encoded.
fn subject_header(subject: &str) -> mail_builder::headers::HeaderType<'static> {
    let clean = sanitize_header(subject);
    if clean.is_ascii() {
        Raw::new(clean).into()
    } else {
        mail_builder::headers::text::Text::new(clean).into()
    }
}

/// Header text with control characters removed, so nothing can inject a header line.
fn sanitize_header(value: &str) -> String {
    value
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

fn strip_reply_prefix(subject: &str) -> &str {
    let mut s = subject.trim();
    loop {
        let lower = s.to_ascii_lowercase();
        match REPLY_PREFIXES
            .iter()
            .chain(FORWARD_PREFIXES)
            .find(|p| lower.starts_with(*p))
        {
            Some(p) => s = s[p.len()..].trim_start(),
            None => return s,
        }
    }
}

/// Seconds between 1601-01-01 and 1970-01-01, the FILETIME epoch offset.
const FILETIME_UNIX_OFFSET: i64 = 11_644_473_600;

/// Extends an Outlook `Thread-Index` by one 5-byte child block (MS-OXOMSG 2.2.1.3): the time
/// since the header block's time, in the coarse or fine unit, then 8 bits derived from `seed`.
/// Returns `None` for a value that is not a conversation index.
pub fn extend_thread_index(parent: &str, now: i64, seed: &str) -> Option<String> {
    let engine = base64::engine::general_purpose::STANDARD;
    let mut bytes = engine.decode(parent.trim()).ok()?;
    if bytes.len() < 22 || (bytes.len() - 22) % 5 != 0 {
        return None;
    }
    let header_time = bytes[1..6]
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
        << 24;
    let now_ft = u64::try_from(now.saturating_add(FILETIME_UNIX_OFFSET)).ok()? * 10_000_000;
    let diff = now_ft.saturating_sub(header_time);
    let block: u32 = if diff >> 49 == 0 {
        ((diff >> 18) & 0x7fff_ffff) as u32
    } else {
        0x8000_0000 | ((diff >> 23) & 0x7fff_ffff) as u32
    };
    bytes.extend_from_slice(&block.to_be_bytes());
    let random = Sha256::digest(seed.as_bytes())[0];
    bytes.push(random);
    Some(engine.encode(bytes))
}

/// The most text a person's edit of a reply may hold.
pub const MAX_EDITED_BODY: usize = 64 * 1024;

/// A produced message with its text replaced by a person's edit: every header of ours stays
/// (recipients, thread, Message-ID), the body is encoded anew as UTF-8 text. The edit cannot
/// reach the headers: it is the body of a MIME part that mail-builder encodes.
pub fn with_body(message: &[u8], body: &str) -> Result<Vec<u8>, String> {
    if body.len() > MAX_EDITED_BODY {
        return Err(format!(
            "{} bytes, more than the {MAX_EDITED_BODY} an edit may hold",
            body.len()
        ));
    }
    if body.trim().is_empty() {
        return Err("the text is empty".to_string());
    }
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the message has no header block")?;
    let mut out = Vec::with_capacity(end + body.len() + 256);
    let mut dropping = false;
    for line in message[..end + 2].split_inclusive(|b| *b == b'\n') {
        let folded = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if !folded {
            let name = line.split(|b| *b == b':').next().unwrap_or_default();
            dropping = name.eq_ignore_ascii_case(b"Content-Type")
                || name.eq_ignore_ascii_case(b"Content-Transfer-Encoding");
        }
        if !dropping {
            out.extend_from_slice(line);
        }
    }
    // Browsers send a textarea with CRLF; the encoder writes its own line ends.
    let text = body.replace("\r\n", "\n");
    mail_builder::mime::MimePart::new("text/plain", text.as_str()).write_part(&mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_index_grows_by_one_child_block() {
        let parent = "AQHVct2Q6+/dh+Jt5JTwV0r22ZqzgA==";
        let engine = base64::engine::general_purpose::STANDARD;
        let before = engine.decode(parent).expect("valid base64");
        let extended = extend_thread_index(parent, 1_569_340_000, "seed").expect("extends");
        let after = engine.decode(&extended).expect("valid base64");
        assert_eq!(after.len(), before.len() + 5);
        assert_eq!(&after[..before.len()], &before[..]);
        assert!(extend_thread_index("bm90IGFuIGluZGV4", 0, "s").is_none());
    }

    #[test]
    fn an_edit_replaces_the_text_and_keeps_every_header_of_ours() {
        let original = b"From: Dana <postmaster@example.net>\r\nTo: support@microsoft.com\r\nSubject: RE: SRX1\r\nMessage-ID: <pmb.1@x>\r\nIn-Reply-To: <p@m>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain;\r\n charset=\"utf-8\"\r\nContent-Transfer-Encoding: 7bit\r\n\r\nold text\r\n";
        let edited = with_body(
            original,
            "Bonjour,\r\nle blocage persiste. \u{e9}\r\nBcc: evil@example.org\r\n",
        )
        .expect("edits");
        let parsed = mail_parser::MessageParser::default()
            .parse(&edited)
            .expect("parses");
        assert_eq!(parsed.message_id(), Some("pmb.1@x"));
        assert_eq!(parsed.in_reply_to().as_text(), Some("p@m"));
        assert_eq!(parsed.subject(), Some("RE: SRX1"));
        let text = parsed.body_text(0).expect("text");
        assert!(text.contains("le blocage persiste. \u{e9}"), "{text}");
        assert!(!text.contains("old text"));
        // The edit is body, never a header.
        assert!(parsed.bcc().is_none());
        let head = String::from_utf8_lossy(&edited);
        assert_eq!(head.matches("Content-Type").count(), 1, "{head}");
        assert!(with_body(original, " \r\n").is_err());
        assert!(with_body(b"no header block", "x").is_err());
        assert!(with_body(original, &"x".repeat(MAX_EDITED_BODY + 1)).is_err());
    }

    #[test]
    fn reply_subject_keeps_ticket_and_single_prefix() {
        assert_eq!(
            reply_subject("RE: SRX1ID - blocked", Some("SRX1ID")),
            "RE: SRX1ID - blocked"
        );
        assert_eq!(
            reply_subject("SRX1ID - blocked", Some("SRX1ID")),
            "RE: SRX1ID - blocked"
        );
        assert_eq!(
            reply_subject("blocked", Some("7096815524")),
            "RE: blocked [7096815524]"
        );
    }

    #[test]
    fn message_ids_are_deterministic() {
        assert_eq!(
            message_id("a", 1, "x.example"),
            message_id("a", 1, "x.example")
        );
        assert_ne!(
            message_id("a", 1, "x.example"),
            message_id("b", 1, "x.example")
        );
    }
}
