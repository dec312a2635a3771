//! The mailbox as the second witness. The state store is the bot's memory of what it wrote to
//! Microsoft; the mailbox is the record it shares with Microsoft. Before a reply is sent or
//! drafted, the shell searches the folders where our mail ends up (Sent, Drafts, the review
//! folders, the watched folder) with [`search_keys`], reads the found messages' header fields with
//! [`read_copy`], and [`judge`] says whether the reply was already made. A store restored from
//! a backup, moved to a new host or lost must not mean a second reply on a ticket.

use mail_parser::{HeaderValue, MessageParser};

use crate::pipeline::decide::Template;

/// The header a review copy carries so that an approval by folder move finds its outbox row,
/// whatever the mail client did to Message-ID and In-Reply-To. Never part of what is sent.
pub const REVIEW_TOKEN_HEADER: &str = "X-Postmaster-Bot-Review";

/// Found messages read per folder at most, newest first: enough for any real thread, and a
/// folder full of look-alikes costs one bounded FETCH.
pub const MAX_COPIES_PER_FOLDER: usize = 50;

/// The thread a planned reply answers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Thread<'a> {
    /// The Message-ID of the Microsoft message answered, without angle brackets.
    pub parent: Option<&'a str>,
    /// That message's Date.
    pub parent_date: Option<i64>,
    pub ticket: Option<&'a str>,
}

/// What makes a message ours.
#[derive(Debug, Clone, Copy)]
pub struct Ours<'a> {
    /// Our loop header's name ("" when the operator switched it off) and value.
    pub loop_header: &'a str,
    pub instance: &'a str,
    /// Our From address: a reply a person wrote by hand from this mailbox counts too.
    pub address: &'a str,
    /// A reply to Microsoft goes to these domains; our mail to anyone else (a notification to
    /// the operator) is not a reply on the thread.
    pub microsoft_domains: &'a [String],
}

/// The IMAP SEARCH keys that find candidate copies, best first; empty when nothing identifies
/// the thread. The first asks the whole question: ours (our loop header, or our From) and on
/// this thread (the parent's Message-ID in In-Reply-To or References, or the ticket id in the
/// Subject). The others ask one thread criterion each, for a server that refuses the first.
/// ORs are in prefix form without parentheses, which some servers (Exchange) refuse to parse.
/// The server's match only narrows a folder down; [`judge`] decides on the exact values.
pub fn search_keys(thread: &Thread<'_>, ours: &Ours<'_>) -> Vec<String> {
    let mut on_thread = Vec::new();
    if let Some(parent) = thread.parent.map(|p| format!("<{p}>")).and_then(quoted) {
        on_thread.push(format!("HEADER In-Reply-To {parent}"));
        on_thread.push(format!("HEADER References {parent}"));
    }
    if let Some(ticket) = thread.ticket.and_then(quoted) {
        on_thread.push(format!("SUBJECT {ticket}"));
    }
    let Some(any_on_thread) = any_of(&on_thread) else {
        return Vec::new();
    };
    let mut mine = Vec::new();
    if !ours.loop_header.is_empty() {
        if let (Some(name), Some(value)) = (astring(ours.loop_header), quoted(ours.instance)) {
            mine.push(format!("HEADER {name} {value}"));
        }
    }
    if let Some(address) = quoted(ours.address) {
        mine.push(format!("FROM {address}"));
    }
    let whole = match any_of(&mine) {
        Some(mine) => format!("{mine} {any_on_thread}"),
        None => any_on_thread,
    };
    let mut keys = vec![whole];
    if on_thread.len() > 1 || !mine.is_empty() {
        keys.extend(on_thread);
    }
    keys
}

/// The header fields [`read_copy`] needs, for `BODY.PEEK[HEADER.FIELDS (...)]`.
pub fn header_fields(loop_header: &str) -> String {
    let mut fields = String::from(
        "Message-ID In-Reply-To References From To Cc Date Subject X-Postmaster-Bot-Review",
    );
    if !loop_header.is_empty() && loop_header.bytes().all(|b| b.is_ascii_graphic()) {
        fields.push(' ');
        fields.push_str(loop_header);
    }
    fields
}

/// A string as an IMAP quoted string, or `None` when it is not plain printable ASCII (a quote,
/// a backslash, a control or 8-bit byte): such a value is left out of the search rather than
/// altered into something that matches other mail.
fn quoted(value: impl AsRef<str>) -> Option<String> {
    let value = value.as_ref();
    let plain = !value.is_empty()
        && value.len() <= 512
        && value
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
    plain.then(|| format!("\"{value}\""))
}

/// Search keys joined by OR in prefix form: `OR OR a b c`.
fn any_of(keys: &[String]) -> Option<String> {
    let (first, rest) = keys.split_first()?;
    Some(
        rest.iter()
            .fold(first.clone(), |acc, key| format!("OR {acc} {key}")),
    )
}

/// A header field name as an IMAP atom when it is one, else quoted.
fn astring(value: &str) -> Option<String> {
    let atom = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"(){%*\"\\]".contains(&b));
    if atom {
        Some(value.to_string())
    } else {
        quoted(value)
    }
}

/// What a found message's header fields say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Copy {
    pub message_id: Option<String>,
    pub in_reply_to: Vec<String>,
    pub references: Vec<String>,
    pub from: Option<String>,
    pub recipients: Vec<String>,
    pub subject: String,
    pub date: Option<i64>,
    /// Our loop header's value, trimmed.
    pub loop_value: Option<String>,
    /// The review token ([`REVIEW_TOKEN_HEADER`]), without angle brackets.
    pub review_token: Option<String>,
}

/// Reads the header fields of a found message. `None` when they do not parse at all.
pub fn read_copy(header: &[u8], loop_header: &str) -> Option<Copy> {
    let message = MessageParser::new().parse_headers(header)?;
    let ids = |value: &HeaderValue<'_>| -> Vec<String> {
        match value {
            HeaderValue::Text(t) => vec![t.to_string()],
            HeaderValue::TextList(l) => l.iter().map(|t| t.to_string()).collect(),
            _ => Vec::new(),
        }
    };
    let addresses = |value: Option<&mail_parser::Address<'_>>| -> Vec<String> {
        value
            .map(|a| {
                a.iter()
                    .filter_map(|addr| addr.address.as_deref())
                    .map(str::to_ascii_lowercase)
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut recipients = addresses(message.to());
    recipients.extend(addresses(message.cc()));
    let raw_value = |name: &str| -> Option<String> {
        (!name.is_empty())
            .then(|| message.header_raw(name))
            .flatten()
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
    };
    Some(Copy {
        message_id: message.message_id().map(str::to_string),
        in_reply_to: ids(message.in_reply_to()),
        references: ids(message.references()),
        from: addresses(message.from()).into_iter().next(),
        recipients,
        subject: message.subject().unwrap_or_default().to_string(),
        date: message.date().map(|d| d.to_timestamp()),
        loop_value: raw_value(loop_header),
        review_token: raw_value(REVIEW_TOKEN_HEADER)
            .map(|t| t.trim_start_matches('<').trim_end_matches('>').to_string()),
    })
}

/// How a found reply relates to the planned one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// It answers the same Microsoft message, or a later one on the thread (it references it).
    AnswersParent,
    /// It names the ticket but not the message answered now.
    OnTicket,
}

/// Who wrote a found reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Author {
    /// It carries our loop header with our instance name.
    Bot,
    /// Sent from our address by hand, without our loop header.
    Person,
}

/// One earlier reply of ours on the thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Earlier {
    pub message_id: Option<String>,
    pub relation: Relation,
    pub author: Author,
    pub date: Option<i64>,
}

/// The found copies that are our replies to Microsoft on this thread. A copy of the planned
/// reply itself (its Message-ID or review token in `own_ids`) is not an earlier reply.
pub fn earlier_replies(
    copies: &[Copy],
    thread: &Thread<'_>,
    ours: &Ours<'_>,
    own_ids: &[&str],
) -> Vec<Earlier> {
    let address = ours.address.to_ascii_lowercase();
    let mut out: Vec<Earlier> = Vec::new();
    for copy in copies {
        let is_own_row = |id: &Option<String>| {
            id.as_deref()
                .is_some_and(|id| own_ids.iter().any(|own| own.eq_ignore_ascii_case(id)))
        };
        if is_own_row(&copy.message_id) || is_own_row(&copy.review_token) {
            continue;
        }
        let by_bot = !ours.loop_header.is_empty()
            && copy
                .loop_value
                .as_deref()
                .is_some_and(|v| v == ours.instance.trim());
        let by_person = copy.from.as_deref() == Some(address.as_str());
        let author = match (by_bot, by_person) {
            (true, _) => Author::Bot,
            (false, true) => Author::Person,
            (false, false) => continue,
        };
        // Our mail to the operator is not a reply to Microsoft.
        let to_microsoft = copy
            .recipients
            .iter()
            .any(|r| crate::pipeline::decide::recipient_allowed(r, ours.microsoft_domains));
        if !to_microsoft {
            continue;
        }
        let names_parent = thread.parent.is_some_and(|p| {
            copy.in_reply_to
                .iter()
                .chain(&copy.references)
                .any(|id| id.eq_ignore_ascii_case(p))
        });
        let names_ticket = thread
            .ticket
            .is_some_and(|t| contains_ignore_case(&copy.subject, t));
        let relation = if names_parent {
            Relation::AnswersParent
        } else if names_ticket {
            Relation::OnTicket
        } else {
            continue;
        };
        // The same message found in two folders (Sent and a Bcc in the inbox) is one reply.
        if copy.message_id.is_some() && out.iter().any(|e| e.message_id == copy.message_id) {
            continue;
        }
        out.push(Earlier {
            message_id: copy.message_id.clone(),
            relation,
            author,
            date: copy.date,
        });
    }
    out
}

fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    haystack
        .to_ascii_lowercase()
        .contains(&needle.to_ascii_lowercase())
}

/// What the mailbox says about a planned reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Nothing of ours on the thread that the store does not already count: go on.
    Clear,
    /// This reply was already made (or a person answered instead): make nothing.
    Answered(Earlier),
    /// Earlier escalations on the ticket that the store did not know of use up
    /// `max_escalations_per_ticket`: the planned escalation waits for a person. `escalations`
    /// is the ticket's real count, the planned reply not included.
    OverCap { escalations: u32, earlier: Earlier },
}

/// Decides on a planned reply from the earlier replies found. `known` says whether the store
/// already counts a Message-ID (our outbox made it, or the case recorded it); `escalations` is
/// the case's count with the planned reply included.
pub fn judge(
    earlier: &[Earlier],
    template: Template,
    thread: &Thread<'_>,
    known: impl Fn(&str) -> bool,
    escalations: u32,
    max_escalations: u32,
) -> Finding {
    if let Some(e) = earlier
        .iter()
        .find(|e| e.relation == Relation::AnswersParent)
    {
        return Finding::Answered(e.clone());
    }
    let unknown: Vec<&Earlier> = earlier
        .iter()
        .filter(|e| e.message_id.as_deref().is_none_or(|id| !known(id)))
        .collect();
    // A reply on the ticket written after the message answered now answers it, whatever it
    // references: a person may have started a fresh mail with the ticket id in the subject.
    let after_parent = unknown.iter().find(|e| match (e.date, thread.parent_date) {
        (Some(d), Some(p)) => d >= p,
        _ => false,
    });
    if let Some(e) = after_parent {
        return Finding::Answered((*e).clone());
    }
    if template == Template::EscalationReply && !unknown.is_empty() {
        let before = escalations.saturating_sub(1);
        let real = before.saturating_add(unknown.len() as u32);
        if real >= max_escalations {
            return Finding::OverCap {
                escalations: real,
                earlier: unknown[0].clone(),
            };
        }
    }
    Finding::Clear
}

/// Removes every [`REVIEW_TOKEN_HEADER`] field (folded lines included) from a message's header,
/// so the token of a review copy never leaves with the reply. The body is untouched.
pub fn strip_review_token(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut rest = raw;
    let mut dropping = false;
    while !rest.is_empty() {
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |i| i + 1);
        let (line, tail) = rest.split_at(end);
        rest = tail;
        let blank = line == b"\r\n" || line == b"\n";
        if blank {
            out.extend_from_slice(line);
            out.extend_from_slice(rest);
            break;
        }
        let continuation = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if !continuation {
            let name = REVIEW_TOKEN_HEADER.as_bytes();
            dropping = line.len() > name.len()
                && line[..name.len()].eq_ignore_ascii_case(name)
                && line[name.len()..]
                    .iter()
                    .find(|b| **b != b' ' && **b != b'\t')
                    == Some(&b':');
        }
        if !dropping {
            out.extend_from_slice(line);
        }
    }
    out
}

/// A review copy: the outbox bytes with the review token of the row prepended.
pub fn with_review_token(bytes: &[u8], message_id: &str) -> Vec<u8> {
    let clean: String = message_id
        .chars()
        .filter(|c| c.is_ascii_graphic() && *c != '<' && *c != '>')
        .collect();
    let mut out = format!("{REVIEW_TOKEN_HEADER}: <{clean}>\r\n").into_bytes();
    out.extend_from_slice(&strip_review_token(bytes));
    out
}

#[cfg(test)]
mod tests;
