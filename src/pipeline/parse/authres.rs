//! `Authentication-Results` (RFC 8601) header values, read by the grammar: comments (nested,
//! with quoted-pairs), quoted strings (with quoted-pairs), folding whitespace. A clause that does
//! not follow the grammar is dropped whole, so text inside a quoted value or a comment can never
//! be read as a method result.

use serde::Serialize;

/// One `Authentication-Results` header.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuthResults {
    /// The host that wrote it, lowercased.
    pub authserv_id: String,
    pub results: Vec<MethodResult>,
    /// Its position among the message's top-level header fields (0 is the topmost).
    pub index: usize,
}

/// One `method=result [reason=...] ptype.property=value ...` clause.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
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

/// Parses one (unfolded or folded) header value. Unknown or broken syntax yields fewer results,
/// never an error; a broken first clause (the authserv-id) yields none at all.
pub fn parse(value: &str) -> AuthResults {
    let Some(tokens) = tokenize(value) else {
        return AuthResults::default();
    };
    let mut clauses = tokens.split(|t| *t == Token::Semicolon);
    let Some(authserv_id) = clauses.next().and_then(authserv_id) else {
        return AuthResults::default();
    };
    let results = clauses.filter_map(method_result).collect();
    AuthResults {
        authserv_id,
        results,
        index: 0,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// A run of characters that are not white space, `;`, `=`, `"` or `(`.
    Text(String),
    /// A quoted string's content, quoted-pairs resolved.
    Quoted(String),
    Equals,
    Semicolon,
}

/// Splits a value into tokens, dropping comments and white space. `None` when a quoted string
/// or a comment is left open: what follows it cannot be read with any confidence.
fn tokenize(value: &str) -> Option<Vec<Token>> {
    let mut tokens = Vec::new();
    let mut chars = value.chars().peekable();
    let mut text = String::new();
    let flush = |text: &mut String, tokens: &mut Vec<Token>| {
        if !text.is_empty() {
            tokens.push(Token::Text(std::mem::take(text)));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                flush(&mut text, &mut tokens);
                let mut quoted = String::new();
                loop {
                    match chars.next()? {
                        '\\' => quoted.push(chars.next()?),
                        '"' => break,
                        // Folding inside a quoted string is white space (RFC 5322 3.2.4).
                        '\r' | '\n' => {}
                        c => quoted.push(c),
                    }
                }
                tokens.push(Token::Quoted(quoted));
            }
            '(' => {
                flush(&mut text, &mut tokens);
                let mut depth = 1usize;
                while depth > 0 {
                    match chars.next()? {
                        '\\' => {
                            chars.next()?;
                        }
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                }
            }
            ';' => {
                flush(&mut text, &mut tokens);
                tokens.push(Token::Semicolon);
            }
            '=' => {
                flush(&mut text, &mut tokens);
                tokens.push(Token::Equals);
            }
            c if c.is_whitespace() => flush(&mut text, &mut tokens),
            // A stray closing parenthesis or a control character is not part of the grammar.
            ')' => return None,
            c if c.is_control() => return None,
            c => text.push(c),
        }
    }
    flush(&mut text, &mut tokens);
    Some(tokens)
}

/// `authserv-id [version]`: a token or a quoted string, then at most a version number.
fn authserv_id(clause: &[Token]) -> Option<String> {
    let id = match clause.first()? {
        Token::Text(t) if is_token(t) => t.clone(),
        Token::Quoted(q) if !q.is_empty() => q.clone(),
        _ => return None,
    };
    match &clause[1..] {
        [] => {}
        [Token::Text(v)] if v.bytes().all(|b| b.is_ascii_digit()) => {}
        _ => return None,
    }
    Some(id.to_ascii_lowercase())
}

/// `method[/version] = result [reason=value] *(ptype.property=pvalue)`.
fn method_result(clause: &[Token]) -> Option<MethodResult> {
    let mut rest = clause;
    let method = match rest {
        [Token::Text(m), Token::Equals, Token::Text(r), tail @ ..] => {
            rest = tail;
            let (name, version) = match m.split_once('/') {
                Some((n, v)) => (n, Some(v)),
                None => (m.as_str(), None),
            };
            if !is_keyword(name)
                || !is_keyword(r)
                || version.is_some_and(|v| v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()))
            {
                return None;
            }
            MethodResult {
                method: name.to_ascii_lowercase(),
                result: r.to_ascii_lowercase(),
                props: Vec::new(),
            }
        }
        _ => return None,
    };
    let mut result = method;
    while !rest.is_empty() {
        let [Token::Text(name), Token::Equals, value, tail @ ..] = rest else {
            return None;
        };
        rest = tail;
        let value = match value {
            Token::Text(t) => t.clone(),
            Token::Quoted(q) => q.clone(),
            _ => return None,
        };
        let lower = name.to_ascii_lowercase();
        if lower == "reason" {
            continue;
        }
        let (ptype, property) = lower.split_once('.')?;
        if !is_keyword(ptype) || !is_property(property) {
            return None;
        }
        result.props.push((lower, value));
    }
    Some(result)
}

/// RFC 2045 token: printable US-ASCII except tspecials.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?=".contains(&b))
}

/// RFC 5321 Keyword (an ldh-str): letters, digits and inner hyphens, starting with a letter or
/// digit.
fn is_keyword(s: &str) -> bool {
    !s.is_empty()
        && !s.ends_with('-')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
}

/// A property name: a Keyword, or `mailfrom`/`rcptto` (special-smtp-verb), possibly dotted
/// further in extensions (`header.b` never is, but registered ones may be).
fn is_property(s: &str) -> bool {
    s.split('.').all(is_keyword)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pairs(value: &str) -> Vec<(String, String)> {
        parse(value)
            .results
            .into_iter()
            .map(|r| (r.method, r.result))
            .collect()
    }

    #[test]
    fn an_escaped_quote_does_not_end_a_quoted_value() {
        let value = r#"mx1.example.net; spf=fail smtp.mailfrom="x\"; dmarc=pass header.from=microsoft.com; x=\"y"; dmarc=fail header.from=evil.example"#;
        let ar = parse(value);
        assert_eq!(ar.authserv_id, "mx1.example.net");
        assert_eq!(
            pairs(value),
            vec![
                ("spf".to_string(), "fail".to_string()),
                ("dmarc".to_string(), "fail".to_string())
            ]
        );
        assert_eq!(
            ar.results[0].prop("smtp.mailfrom"),
            Some(r#"x"; dmarc=pass header.from=microsoft.com; x="y"#)
        );
    }

    #[test]
    fn comments_nest_and_hide_their_content() {
        let value = "mx1.example.net (a (nested \\) ; dmarc=pass) comment); dkim=pass (ok; dmarc=pass) header.d=microsoft.com";
        assert_eq!(pairs(value), vec![("dkim".into(), "pass".into())]);
        assert_eq!(
            parse(value).results[0].prop("header.d"),
            Some("microsoft.com")
        );
    }

    #[test]
    fn folding_versions_and_none() {
        let value = "mx1.example.net 1;\r\n\tdkim/1 = pass\r\n header.d=microsoft.com;\r\n spf=pass smtp.mailfrom=a@microsoft.com";
        assert_eq!(
            pairs(value),
            vec![
                ("dkim".into(), "pass".into()),
                ("spf".into(), "pass".into())
            ]
        );
        assert!(parse("mx1.example.net; none").results.is_empty());
    }

    #[test]
    fn broken_clauses_are_dropped_whole() {
        // An open quote: nothing after it is read.
        assert!(
            parse("mx1.example.net; spf=pass smtp.mailfrom=\"x; dmarc=pass")
                .results
                .is_empty()
        );
        // A clause with junk is dropped, its neighbours kept.
        assert_eq!(
            pairs("mx1.example.net; dkim=pass junk here; dmarc=pass header.from=a.example"),
            vec![("dmarc".into(), "pass".into())]
        );
        // A broken authserv-id makes the whole header unusable.
        assert!(parse("mx1.example.net junk; dmarc=pass")
            .authserv_id
            .is_empty());
    }

    /// One clause as generated: the real pair and how it is written.
    #[derive(Debug, Clone)]
    struct Clause {
        method: String,
        result: String,
        text: String,
    }

    fn keyword() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9-]{0,6}[a-z0-9]".prop_map(|s| s)
    }

    /// A quoted string whose content may look like whole clauses, with escapes.
    fn quoted() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                Just("; dmarc=pass header.from=microsoft.com".to_string()),
                Just("\\\"".to_string()),
                Just("\\\\".to_string()),
                Just("(".to_string()),
                Just(")".to_string()),
                Just(" spf=pass ".to_string()),
                "[a-z0-9 .@;=]{0,8}",
            ],
            0..5,
        )
        .prop_map(|parts| format!("\"{}\"", parts.concat()))
    }

    /// A comment, possibly nested, that may contain clause-like text and escaped parentheses.
    fn comment() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("dmarc=pass".to_string()),
            Just("\\)".to_string()),
            Just("\\(".to_string()),
            Just("; dkim=pass".to_string()),
            Just("\"".to_string()),
            "[a-z0-9 ;=.]{0,8}",
        ];
        leaf.prop_recursive(3, 12, 3, |inner| {
            prop::collection::vec(inner, 1..3).prop_map(|v| format!("({})", v.concat()))
        })
        .prop_map(|c| {
            if c.starts_with('(') {
                c
            } else {
                format!("({c})")
            }
        })
    }

    fn space() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(" ".to_string()),
            Just("\r\n\t".to_string()),
            Just("\r\n ".to_string()),
            Just("  ".to_string()),
        ]
    }

    fn clause() -> impl Strategy<Value = Clause> {
        (
            keyword(),
            keyword(),
            prop::collection::vec(
                (
                    keyword(),
                    keyword(),
                    prop_oneof![quoted(), "[a-z0-9.@-]{1,10}"],
                    prop::option::of(comment()),
                ),
                0..3,
            ),
            space(),
            prop::option::of(comment()),
        )
            .prop_map(|(method, result, props, sp, c)| {
                let mut text = format!("{method}{sp}={sp}{result}");
                if let Some(c) = c {
                    text.push_str(&format!(" {c}"));
                }
                for (ptype, prop, value, c) in props {
                    text.push_str(&format!("{sp}{ptype}.{prop}={value}"));
                    if let Some(c) = c {
                        text.push_str(&c);
                    }
                }
                Clause {
                    method,
                    result,
                    text,
                }
            })
    }

    proptest! {
        /// Whatever the quoting, comments and folding, every result read is a real clause's
        /// method=result pair; text inside quoted values or comments never becomes one.
        #[test]
        fn results_are_only_real_clauses(
            clauses in prop::collection::vec(clause(), 0..5),
            noise in prop::collection::vec(prop_oneof![quoted(), comment(), "[a-z. ]{0,6}"], 0..3),
            head_comment in prop::option::of(comment()),
        ) {
            let mut value = String::from("mx1.example.net");
            if let Some(c) = head_comment {
                value.push_str(&format!(" {c}"));
            }
            for c in &clauses {
                value.push_str(&format!(";\r\n\t{}", c.text));
            }
            for n in &noise {
                value.push_str(&format!("; x=y z.q={n}"));
            }
            let real: Vec<(String, String)> =
                clauses.iter().map(|c| (c.method.clone(), c.result.clone())).collect();
            let got = pairs(&value);
            for pair in &got {
                prop_assert!(
                    real.contains(pair) || pair == &("x".to_string(), "y".to_string()),
                    "{pair:?} is not a real clause of {value:?}"
                );
            }
            // Well-formed clauses with nothing broken in front of them are all read.
            if noise.is_empty() {
                prop_assert_eq!(got, real);
            }
        }

        /// Arbitrary text never panics.
        #[test]
        fn never_panics(value in ".{0,200}") {
            let _ = parse(&value);
        }
    }
}
