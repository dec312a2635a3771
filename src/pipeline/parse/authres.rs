//! `Authentication-Results` (RFC 8601) header values, parsed just far enough to read
//! method results and their properties.

use serde::Serialize;

/// One `Authentication-Results` header.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuthResults {
    /// The host that wrote it, lowercased.
    pub authserv_id: String,
    pub results: Vec<MethodResult>,
}

/// One `method=result prop=value ...` clause.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MethodResult {
    /// `dkim`, `spf`, `dmarc`, ... lowercased, without a version suffix.
    pub method: String,
    /// `pass`, `fail`, ... lowercased.
    pub result: String,
    /// Properties such as (`header.from`, `microsoft.com`); names lowercased.
    pub props: Vec<(String, String)>,
}

impl MethodResult {
    /// The value of a property, e.g. `header.d`.
    pub fn prop(&self, name: &str) -> Option<&str> {
        self.props
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses one header value. Unknown syntax yields fewer results, never an error.
pub fn parse(value: &str) -> AuthResults {
    let cleaned = strip_comments(value);
    let mut clauses = split_outside_quotes(&cleaned, ';').into_iter();
    let authserv_id = clauses
        .next()
        .and_then(|c| c.split_whitespace().next().map(str::to_ascii_lowercase))
        .unwrap_or_default();
    let results = clauses.filter_map(|c| method_result(&c)).collect();
    AuthResults {
        authserv_id,
        results,
    }
}

fn method_result(clause: &str) -> Option<MethodResult> {
    let mut tokens = split_outside_quotes(clause, ' ')
        .into_iter()
        .filter(|t| !t.is_empty());
    let head = tokens.next()?;
    let (method, result) = head.split_once('=')?;
    let method = method.split('/').next().unwrap_or(method).trim();
    let mut props = Vec::new();
    for token in tokens {
        if let Some((name, val)) = token.split_once('=') {
            props.push((
                name.trim().to_ascii_lowercase(),
                val.trim().trim_matches('"').to_string(),
            ));
        }
    }
    Some(MethodResult {
        method: method.to_ascii_lowercase(),
        result: result.trim().to_ascii_lowercase(),
        props,
    })
}

/// Removes RFC 5322 comments (nested parentheses), leaving quoted strings alone.
fn strip_comments(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut depth = 0usize;
    let mut in_quotes = false;
    let mut escaped = false;
    for c in value.chars() {
        if escaped {
            if depth == 0 {
                out.push(c);
            }
            escaped = false;
            continue;
        }
        match c {
            '\\' => {
                escaped = true;
                if depth == 0 {
                    out.push(c);
                }
            }
            '"' if depth == 0 => {
                in_quotes = !in_quotes;
                out.push(c);
            }
            '(' if !in_quotes => depth += 1,
            ')' if !in_quotes && depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

fn split_outside_quotes(value: &str, sep: char) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    for c in value.chars() {
        if c == '"' {
            in_quotes = !in_quotes;
        }
        let is_sep = if sep == ' ' {
            c.is_whitespace()
        } else {
            c == sep
        };
        if is_sep && !in_quotes {
            parts.push(std::mem::take(&mut current).trim().to_string());
        } else {
            current.push(c);
        }
    }
    parts.push(current.trim().to_string());
    parts
}
