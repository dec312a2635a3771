//! Microsoft SNDS "Automated Data Access" files, read: `ipStatus` (the sender's IP ranges that
//! Outlook.com blocks, with the reason) and `data` (one row per IP and day: activity, filter
//! result, complaint rate, spam-trap hits). Pure: the shell fetches the bytes.
//!
//! A file is taken whole or not at all. What SNDS returns instead of data when a key is wrong
//! or expired (its HTML sign-in page), an empty body, a line cut short and a column count that
//! matches neither layout are errors that name the line, so that nothing is changed on a
//! half-read file.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

/// Why an SNDS file was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SndsError {
    #[error("{file}: an HTML page, not CSV (a sign-in page: is the key right and still valid?)")]
    Html { file: &'static str },
    #[error("{file}: the body is empty")]
    Empty { file: &'static str },
    #[error("{file} line {line}: {found} columns, expected {expected}{}", if *.cut { " (the line was cut short)" } else { "" })]
    Columns {
        file: &'static str,
        line: usize,
        found: usize,
        expected: &'static str,
        cut: bool,
    },
    #[error("{file} line {line}, column {column}: {value:?} is not {what}")]
    Value {
        file: &'static str,
        line: usize,
        column: &'static str,
        value: String,
        what: &'static str,
    },
    #[error("{file}: more than {limit} lines; not read")]
    TooLong { file: &'static str, limit: usize },
}

/// Lines one file may have: SNDS lists a sender's own IPs, a few thousand at most.
pub const MAX_LINES: usize = 100_000;

/// One line of `ipStatus`: a range of ours and whether Outlook.com blocks it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RangeStatus {
    pub first: IpAddr,
    pub last: IpAddr,
    pub blocked: bool,
    /// SNDS's reason ("Blocked due to user complaints or other evidence of spamming").
    pub reason: String,
}

impl RangeStatus {
    /// The range as CIDR blocks (one when it is aligned, as SNDS's usually are).
    pub fn networks(&self) -> Vec<IpNet> {
        match (self.first, self.last) {
            (IpAddr::V4(a), IpAddr::V4(b)) => ipnet::Ipv4Subnets::new(a, b, 0)
                .map(IpNet::V4)
                .take(64)
                .collect(),
            (IpAddr::V6(a), IpAddr::V6(b)) => ipnet::Ipv6Subnets::new(a, b, 0)
                .map(IpNet::V6)
                .take(64)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The range as the case and the operator see it: `192.0.2.0/24`, or `first-last`.
    pub fn label(&self) -> String {
        match self.networks().as_slice() {
            [one] => one.to_string(),
            _ if self.first == self.last => self.first.to_string(),
            _ => format!("{}-{}", self.first, self.last),
        }
    }

    /// Whether the whole range lies inside one of `ours`.
    pub fn within(&self, ours: &[IpNet]) -> bool {
        ours.iter()
            .any(|n| n.contains(&self.first) && n.contains(&self.last))
    }
}

/// The filter result of an IP's day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Filter {
    Green,
    Yellow,
    Red,
}

/// One line of `data`: an IP of ours on one day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DayRow {
    pub ip: IpAddr,
    pub activity_start: String,
    pub activity_end: String,
    pub rcpt_commands: u64,
    pub data_commands: u64,
    pub recipients: u64,
    pub filter: Filter,
    /// As SNDS writes it (`< 0.1%`, `0.3%`).
    pub complaint_rate: String,
    pub trap_hits: u64,
    pub sample_helo: String,
    pub sample_mail_from: String,
    pub comments: String,
}

/// Reads an `ipStatus` file: `first IP, last IP, blocked (Yes/No), reason`.
pub fn parse_ip_status(body: &[u8]) -> Result<Vec<RangeStatus>, SndsError> {
    const FILE: &str = "ipStatus";
    let records = records(FILE, body, &[4], "4")?;
    let mut out = Vec::with_capacity(records.len());
    for (line, fields) in records {
        let ip = |i: usize, column: &'static str| address(FILE, line, column, &fields[i]);
        let first = ip(0, "first IP")?;
        let last = ip(1, "last IP")?;
        if first.is_ipv4() != last.is_ipv4() || first > last {
            return Err(value(
                FILE,
                line,
                "last IP",
                &fields[1],
                "the end of the range",
            ));
        }
        let blocked = match fields[2].trim().to_ascii_lowercase().as_str() {
            "yes" | "true" | "1" | "blocked" => true,
            "no" | "false" | "0" | "" => false,
            _ => return Err(value(FILE, line, "blocked", &fields[2], "Yes or No")),
        };
        out.push(RangeStatus {
            first,
            last,
            blocked,
            reason: one_line(&fields[3]),
        });
    }
    Ok(out)
}

/// Reads a `data` file (14 columns; 13 without comments).
pub fn parse_data(body: &[u8]) -> Result<Vec<DayRow>, SndsError> {
    const FILE: &str = "data";
    let records = records(FILE, body, &[13, 14], "13 or 14")?;
    let mut out = Vec::with_capacity(records.len());
    for (line, f) in records {
        let count = |i: usize, column: &'static str| -> Result<u64, SndsError> {
            let v = f[i].trim().replace(',', "");
            if v.is_empty() {
                return Ok(0);
            }
            v.parse()
                .map_err(|_| value(FILE, line, column, &f[i], "a count"))
        };
        let filter = match f[6].trim().to_ascii_uppercase().as_str() {
            "GREEN" => Filter::Green,
            "YELLOW" => Filter::Yellow,
            "RED" => Filter::Red,
            _ => {
                return Err(value(
                    FILE,
                    line,
                    "filter result",
                    &f[6],
                    "GREEN, YELLOW or RED",
                ))
            }
        };
        out.push(DayRow {
            ip: address(FILE, line, "IP address", &f[0])?,
            activity_start: one_line(&f[1]),
            activity_end: one_line(&f[2]),
            rcpt_commands: count(3, "RCPT commands")?,
            data_commands: count(4, "DATA commands")?,
            recipients: count(5, "message recipients")?,
            filter,
            complaint_rate: one_line(&f[7]),
            trap_hits: count(10, "trap hits")?,
            sample_helo: one_line(&f[11]),
            sample_mail_from: one_line(&f[12]),
            comments: f.get(13).map(|c| one_line(c)).unwrap_or_default(),
        });
    }
    Ok(out)
}

/// What the operator's daily note says about the `data` rows of our IPs: the RED and YELLOW
/// days and the trap hits, worst first; `None` when every day was green and trap-free.
pub fn daily_summary(rows: &[DayRow], ours: &[IpNet]) -> Option<String> {
    let mut bad: Vec<&DayRow> = rows
        .iter()
        .filter(|r| ours.is_empty() || ours.iter().any(|n| n.contains(&r.ip)))
        .filter(|r| r.filter != Filter::Green || r.trap_hits > 0)
        .collect();
    if bad.is_empty() {
        return None;
    }
    let rank = |f: Filter| match f {
        Filter::Red => 0,
        Filter::Yellow => 1,
        Filter::Green => 2,
    };
    bad.sort_by(|a, b| {
        rank(a.filter)
            .cmp(&rank(b.filter))
            .then(b.trap_hits.cmp(&a.trap_hits))
            .then(a.ip.cmp(&b.ip))
    });
    let mut out = String::new();
    for r in bad.iter().take(200) {
        out.push_str(&format!(
            "{} {}: {} recipients, complaint rate {}, {} trap hits{}\n",
            r.ip,
            match r.filter {
                Filter::Red => "RED",
                Filter::Yellow => "YELLOW",
                Filter::Green => "green",
            },
            r.recipients,
            if r.complaint_rate.is_empty() {
                "-"
            } else {
                &r.complaint_rate
            },
            r.trap_hits,
            if r.comments.is_empty() {
                String::new()
            } else {
                format!(" ({})", r.comments)
            },
        ));
    }
    if bad.len() > 200 {
        out.push_str(&format!("... and {} more\n", bad.len() - 200));
    }
    Some(out)
}

/// The file's records with their line numbers, every one with an accepted column count.
fn records(
    file: &'static str,
    body: &[u8],
    widths: &[usize],
    expected: &'static str,
) -> Result<Vec<(usize, Vec<String>)>, SndsError> {
    let text = String::from_utf8_lossy(body);
    let trimmed = text.trim_start_matches('\u{feff}').trim();
    if trimmed.is_empty() {
        return Err(SndsError::Empty { file });
    }
    let head: String = trimmed
        .chars()
        .take(512)
        .collect::<String>()
        .to_ascii_lowercase();
    if head.starts_with('<') || head.contains("<html") || head.contains("<!doctype") {
        return Err(SndsError::Html { file });
    }
    let complete = text.ends_with('\n');
    let lines: Vec<&str> = trimmed.lines().collect();
    if lines.len() > MAX_LINES {
        return Err(SndsError::TooLong {
            file,
            limit: MAX_LINES,
        });
    }
    let mut out = Vec::new();
    // Line by line (SNDS writes no quoted line breaks), so that an error names the line.
    for (i, text) in lines.iter().enumerate() {
        let line = i + 1;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .trim(csv::Trim::All)
            .from_reader(text.as_bytes());
        let fields: Vec<String> = match reader.records().next() {
            Some(Ok(record)) => record.iter().map(str::to_string).collect(),
            Some(Err(_)) => {
                return Err(SndsError::Columns {
                    file,
                    line,
                    found: 0,
                    expected,
                    cut: false,
                })
            }
            None => continue,
        };
        if fields.iter().all(|f| f.is_empty()) {
            continue;
        }
        // A header line, if SNDS ever sends one.
        if out.is_empty() && fields[0].to_ascii_lowercase().contains("ip") {
            continue;
        }
        if !widths.contains(&fields.len()) {
            return Err(SndsError::Columns {
                file,
                line,
                found: fields.len(),
                expected,
                // The last line, short, and no line end after it: the transfer stopped.
                cut: line == lines.len() && !complete && fields.len() < widths[0],
            });
        }
        out.push((line, fields));
    }
    Ok(out)
}

fn address(
    file: &'static str,
    line: usize,
    column: &'static str,
    v: &str,
) -> Result<IpAddr, SndsError> {
    v.trim()
        .parse()
        .map_err(|_| value(file, line, column, v, "an IP address"))
}

fn value(
    file: &'static str,
    line: usize,
    column: &'static str,
    v: &str,
    what: &'static str,
) -> SndsError {
    SndsError::Value {
        file,
        line,
        column,
        value: v.chars().take(80).collect(),
        what,
    }
}

/// A field as one line of at most 300 characters: it is shown to the operator.
fn one_line(v: &str) -> String {
    v.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect::<String>()
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "192.0.2.0,192.0.2.255,Yes,Blocked due to user complaints or other evidence of spamming\r\n198.51.100.7,198.51.100.7,No,\r\n";

    #[test]
    fn ip_status_lists_ranges_with_their_reason() {
        let ranges = parse_ip_status(STATUS.as_bytes()).expect("parses");
        assert_eq!(ranges.len(), 2);
        assert!(ranges[0].blocked);
        assert_eq!(ranges[0].label(), "192.0.2.0/24");
        assert_eq!(
            ranges[0].reason,
            "Blocked due to user complaints or other evidence of spamming"
        );
        assert!(!ranges[1].blocked);
        assert_eq!(ranges[1].label(), "198.51.100.7/32");
        let ours: Vec<IpNet> = vec!["192.0.2.0/23".parse().expect("net")];
        assert!(ranges[0].within(&ours));
        assert!(!ranges[1].within(&ours));
        // An unaligned range is shown as it is.
        let odd = parse_ip_status(b"192.0.2.3,192.0.2.9,Yes,x\n").expect("parses");
        assert_eq!(odd[0].label(), "192.0.2.3-192.0.2.9");
    }

    #[test]
    fn data_rows_and_the_daily_note() {
        let body = "192.0.2.10,11/29/2026 1:00 AM,11/29/2026 11:00 PM,5200,5100,5300,RED,0.5%,11/29/2026 3:00 AM,11/29/2026 9:00 PM,7,mail.example.net,news@example.net,\n\
                    192.0.2.11,11/29/2026 1:00 AM,11/29/2026 11:00 PM,100,100,100,GREEN,< 0.1%,,,0,mail.example.net,news@example.net,\n\
                    192.0.2.12,11/29/2026 1:00 AM,11/29/2026 11:00 PM,\"1,200\",1100,1250,YELLOW,0.2%,,,0,mail.example.net,news@example.net,JMR Block\n";
        let rows = parse_data(body.as_bytes()).expect("parses");
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[2].rcpt_commands, 1200);
        assert_eq!(rows[0].filter, Filter::Red);
        let note = daily_summary(&rows, &[]).expect("a note");
        let lines: Vec<&str> = note.lines().collect();
        assert_eq!(lines.len(), 2, "{note}");
        assert!(lines[0]
            .starts_with("192.0.2.10 RED: 5300 recipients, complaint rate 0.5%, 7 trap hits"));
        assert!(lines[1].contains("YELLOW") && lines[1].ends_with("(JMR Block)"));
        assert_eq!(daily_summary(&rows[1..2], &[]), None);
    }

    #[test]
    fn bad_files_are_refused_whole_with_the_line_named() {
        let html = b"<!DOCTYPE html><html><head><title>Sign in</title></head></html>";
        assert_eq!(
            parse_ip_status(html),
            Err(SndsError::Html { file: "ipStatus" })
        );
        assert_eq!(
            parse_data(b"  \r\n"),
            Err(SndsError::Empty { file: "data" })
        );
        let cut = format!("{STATUS}203.0.113.0,203.0.113.255");
        let e = parse_ip_status(cut.as_bytes()).expect_err("cut");
        assert_eq!(
            e.to_string(),
            "ipStatus line 3: 2 columns, expected 4 (the line was cut short)"
        );
        let wide = "192.0.2.0,192.0.2.255,Yes,reason,extra\n";
        let e = parse_ip_status(wide.as_bytes()).expect_err("wide");
        assert_eq!(e.to_string(), "ipStatus line 1: 5 columns, expected 4");
        let bad = "192.0.2.0,not-an-ip,Yes,r\n";
        let e = parse_ip_status(bad.as_bytes()).expect_err("bad ip");
        assert!(e.to_string().contains("line 1, column last IP"), "{e}");
        let backwards = "192.0.2.9,192.0.2.1,Yes,r\n";
        assert!(parse_ip_status(backwards.as_bytes()).is_err());
        let colour = "192.0.2.10,a,b,1,1,1,PURPLE,0%,,,0,h,m,\n";
        let e = parse_data(colour.as_bytes()).expect_err("colour");
        assert!(e.to_string().contains("GREEN, YELLOW or RED"), "{e}");
    }

    #[test]
    fn any_bytes_give_an_answer_not_a_panic() {
        for body in [
            &b"\xff\xfe\x00garbage,,,\n"[..],
            b"\",\"\n\"",
            b"1.2.3.4,1.2.3.4,Yes,\"unterminated\n",
            b"\xef\xbb\xbf192.0.2.1,192.0.2.1,Yes,bom\n",
        ] {
            let _ = parse_ip_status(body);
            let _ = parse_data(body);
        }
        assert_eq!(
            parse_ip_status(b"\xef\xbb\xbf192.0.2.1,192.0.2.1,Yes,bom\n")
                .expect("a BOM is no error")
                .len(),
            1
        );
    }
}
