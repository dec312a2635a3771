//! RFC 3464 / RFC 6533 delivery-status fields, read field by field.

use serde::Serialize;

/// A parsed `message/delivery-status` part.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Dsn {
    pub reporting_mta: Option<String>,
    pub recipients: Vec<DsnRecipient>,
}

/// One per-recipient block of a DSN.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DsnRecipient {
    pub final_recipient: Option<String>,
    /// `failed`, `delayed`, `delivered`, `relayed` or `expanded`, lowercased.
    pub action: Option<String>,
    /// The enhanced status code, e.g. `5.7.1`.
    pub status: Option<String>,
    pub remote_mta: Option<String>,
    pub diagnostic_code: Option<String>,
}

/// Parses the body of a delivery-status part: header-syntax blocks separated by blank lines,
/// the first one per message, the others per recipient.
pub fn parse(text: &str) -> Dsn {
    let mut blocks = split_blocks(text).into_iter();
    let mut dsn = Dsn::default();
    if let Some(first) = blocks.next() {
        let fields = header_block(&first);
        if fields.iter().any(|(n, _)| n == "final-recipient") {
            dsn.recipients.push(recipient(&fields));
        } else {
            dsn.reporting_mta = strip_type(get(&fields, "reporting-mta"));
        }
    }
    for block in blocks {
        let fields = header_block(&block);
        if !fields.is_empty() {
            dsn.recipients.push(recipient(&fields));
        }
    }
    dsn
}

fn recipient(fields: &[(String, String)]) -> DsnRecipient {
    DsnRecipient {
        final_recipient: strip_type(get(fields, "final-recipient")),
        action: get(fields, "action").map(|a| a.to_ascii_lowercase()),
        status: get(fields, "status")
            .map(|s| s.split_whitespace().next().unwrap_or_default().to_string()),
        remote_mta: strip_type(get(fields, "remote-mta")),
        diagnostic_code: strip_type(get(fields, "diagnostic-code")),
    }
}

fn get(fields: &[(String, String)], name: &str) -> Option<String> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
}

/// Drops the `type;` prefix of `rfc822; user@host` or `smtp; 550 ...`.
fn strip_type(value: Option<String>) -> Option<String> {
    value.map(|v| match v.split_once(';') {
        Some((kind, rest)) if !kind.contains(' ') => rest.trim().to_string(),
        _ => v.trim().to_string(),
    })
}

fn split_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !current.trim().is_empty() {
                blocks.push(std::mem::take(&mut current));
            }
            current.clear();
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    if !current.trim().is_empty() {
        blocks.push(current);
    }
    blocks
}

/// Parses header-syntax lines (with folding) into (lowercased name, unfolded value) pairs.
/// Lines that are neither a field nor a continuation are skipped.
pub fn header_block(text: &str) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            // Headers end at the first blank line.
            if !fields.is_empty() {
                break;
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim();
            if !name.is_empty() && !name.contains(' ') {
                fields.push((name.to_ascii_lowercase(), value.trim().to_string()));
            }
        }
    }
    for (_, value) in &mut fields {
        *value = super::unfold(value);
    }
    fields
}
