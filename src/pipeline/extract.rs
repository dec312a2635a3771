//! Finding things in text: ticket ids, sender-side IPs and ranges, a message's own text.

use std::collections::{BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use ipnet::{IpNet, Ipv4Net};
use regex::Regex;

use crate::pipeline::rules::Rules;

/// Text with whitespace runs collapsed to one space and typographic characters made plain, so
/// phrase patterns match across line breaks and Word-style punctuation.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    // One pass, no intermediate strings, runs of plain ASCII copied whole: every message's text
    // goes through here, more than once.
    let mut pending_space = false;
    let mut rest = text;
    while !rest.is_empty() {
        let run = rest
            .bytes()
            .position(|b| !b.is_ascii() || b.is_ascii_whitespace() || b == b'\x0b')
            .unwrap_or(rest.len());
        if run > 0 {
            if pending_space {
                out.push(' ');
                pending_space = false;
            }
            out.push_str(&rest[..run]);
            rest = &rest[run..];
            continue;
        }
        let Some(c) = rest.chars().next() else { break };
        rest = &rest[c.len_utf8()..];
        let c = plain(c);
        if c.is_whitespace() {
            pending_space = !out.is_empty();
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        out.push(c);
    }
    out
}

/// A typographic character as the plain one phrase patterns are written with.
fn plain(c: char) -> char {
    match c {
        '\u{2018}' | '\u{2019}' | '\u{201B}' | '\u{2032}' => '\'',
        '\u{201C}' | '\u{201D}' | '\u{201E}' => '"',
        '\u{2010}'..='\u{2015}' => '-',
        '\u{00A0}' | '\u{2007}' | '\u{202F}' | '\u{200B}' => ' ',
        '\u{00AB}' | '\u{00BB}' | '\u{2039}' | '\u{203A}' => '"',
        '\u{00BF}' => '?',
        '\u{00A1}' => '!',
        '\u{2026}' => '.',
        c => c,
    }
}

/// The first ticket id in `text` by rule order, with the id of the rule that found it.
pub fn ticket_id(text: &str, rules: &Rules) -> Option<(String, String)> {
    let text = normalize(text);
    if !rules.ticket_gate.is_match(&text) {
        return None;
    }
    let mut best: Option<(usize, String, String)> = None;
    for rule in &rules.tickets {
        if let Some(caps) = rule.regex.captures(&text) {
            let Some(m) = caps.get(1).or_else(|| caps.get(0)) else {
                continue;
            };
            // Earliest position wins, so "RE: SRX..." beats a request id further on.
            if best.as_ref().is_none_or(|(pos, _, _)| m.start() < *pos) {
                best = Some((m.start(), m.as_str().to_string(), rule.id.clone()));
            }
        }
    }
    best.map(|(_, id, rule)| (canonical_ticket(&id), rule))
}

static BARE_TEN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?:^|[^\d+()/.:-])(\d{10})(?:$|[^\d/.:-])").expect("static regex is valid")
});

/// A ten-digit number standing alone in a subject (`RE: 7096815524 - blocked`): the ticket
/// position of a verified support answer, when no label names it.
pub fn bare_ticket(subject: &str) -> Option<String> {
    BARE_TEN
        .captures(subject)
        .and_then(|c| c.get(1))
        .map(|m| m.as_str().to_string())
}

fn canonical_ticket(id: &str) -> String {
    if id.len() > 5 && id[..3].eq_ignore_ascii_case("srx") {
        id.to_ascii_uppercase()
    } else {
        id.to_string()
    }
}

/// Splits a message's text into its own part and the quoted or forwarded rest: the own part
/// ends at the first reply or forward separator line; `>`-quoted lines are never own text.
pub fn split_own_text(text: &str, rules: &Rules) -> (String, String) {
    let mut own = String::new();
    let mut rest = String::new();
    let mut in_rest = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if !in_rest && rules.markers.reply_separator.is_match(trimmed) {
            in_rest = true;
        }
        if in_rest || trimmed.starts_with('>') {
            rest.push_str(line);
            rest.push('\n');
        } else {
            own.push_str(line);
            own.push('\n');
        }
    }
    (own, rest)
}

/// Cuts a bounce's text at the returned copy of the original message.
pub fn bounce_report_text(text: &str, rules: &Rules) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if rules.markers.returned_message.is_match(line.trim()) {
            break;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

static IPV4: LazyLock<Regex> = LazyLock::new(|| {
    // NOTE: regex has no look-around; the boundary bytes are checked by hand below.
    Regex::new(r"(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})(/\d{1,2})?").expect("static regex is valid")
});
static IPV6: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"([0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})?)(/\d{1,3})?")
        .expect("static regex is valid")
});
static RANGE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})\s*(?:-|–|to|bis)\s*(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})")
        .expect("static regex is valid")
});
/// A hostname right before an address (`host.example[1.2.3.4]`, `host.example (1.2.3.4)`):
/// that address is a relay hop, never the subject of the message.
static HOP_BEFORE: LazyLock<Regex> = LazyLock::new(|| {
    // The receiving server, not ours: a host name with its address in brackets, an address
    // sent "to [...]", a "remote server (ip)", a DNS answer "A=[ip]" or server, qmail's
    // "Connected to ip" and "Giving up on ip".
    Regex::new(
        r"(?i)(?:[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}\.?\s*[\[(]{1,2}|\bconnected\s+to|\bgiving\s+up\s+on|\bto\s*\[|\bremote\s+(?:server|host|mta)\s*[\[(]?|\bA\s*=\s*\[|\bdns\s+server\s*:?)\s*$",
    )
        .expect("static regex is valid")
});

/// What qmail writes after the receiving server's address ("1.2.3.4 does not like recipient").
static HOP_AFTER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        // ...or an address with the SMTP port: a server's.
        r"(?i)^(?:\.?\s+(?:does\s+not\s+like|failed\s+after|but\s+(?:sender|greeting|connection))|\]?:(?:25|465|587)\b)",
    )
    .expect("static regex is valid")
});

/// One address or range found in text, at a byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Found {
    net: IpNet,
    is_range: bool,
}

/// Sender-side IPs and ranges named in `text`, in order of appearance, deduplicated.
///
/// Relay hops (`host[ip]`), Microsoft's own ranges from the rules, and addresses that cannot be
/// on a public block list are left out; an address inside a range named in the same text is
/// folded into that range. With `our_networks` non-empty, only addresses inside them count.
pub fn sender_ips(text: &str, rules: &Rules, our_networks: &[IpNet]) -> Vec<String> {
    sender_ips_capped(text, rules, our_networks, usize::MAX).0
}

/// [`sender_ips`] keeping at most `limit`; the second value counts the distinct ones left out.
/// Linear in the text: sets, not list scans, so a message listing a hundred thousand
/// addresses costs no more than reading it.
pub fn sender_ips_capped(
    text: &str,
    rules: &Rules,
    our_networks: &[IpNet],
    limit: usize,
) -> (Vec<String>, usize) {
    let mut found: Vec<(usize, Found)> = Vec::new();

    for caps in RANGE.captures_iter(text) {
        let (Some(whole), Some(a), Some(b)) = (caps.get(0), caps.get(1), caps.get(2)) else {
            continue;
        };
        let (Ok(a), Ok(b)) = (
            a.as_str().parse::<Ipv4Addr>(),
            b.as_str().parse::<Ipv4Addr>(),
        ) else {
            continue;
        };
        if let Some(net) = range_to_net(a, b) {
            found.push((
                whole.start(),
                Found {
                    net,
                    is_range: true,
                },
            ));
        }
    }

    for caps in IPV4.captures_iter(text) {
        let Some(addr) = caps.get(1) else { continue };
        let bytes = text.as_bytes();
        let end = caps.get(0).map_or(addr.end(), |m| m.end());
        let before = addr.start().checked_sub(1).map(|i| bytes[i]);
        let after = bytes.get(end).copied();
        let after2 = bytes.get(end + 1).copied();
        if before.is_some_and(|b| b.is_ascii_digit() || b == b'.')
            || after.is_some_and(|b| b.is_ascii_digit())
            || (after == Some(b'.') && after2.is_some_and(|b| b.is_ascii_digit()))
        {
            continue; // part of a longer dotted number (a version, an OID)
        }
        let Ok(ip) = addr.as_str().parse::<Ipv4Addr>() else {
            continue;
        };
        if is_relay_hop(text, addr.start()) || HOP_AFTER.is_match(&text[end..]) {
            continue;
        }
        let prefix = caps.get(2).and_then(|p| p.as_str()[1..].parse::<u8>().ok());
        let (net, is_range) = match prefix {
            Some(len) => match Ipv4Net::new(ip, len) {
                Ok(n) => (IpNet::V4(n.trunc()), len < 32),
                Err(_) => continue,
            },
            None => (IpNet::from(IpAddr::V4(ip)), false),
        };
        found.push((addr.start(), Found { net, is_range }));
    }

    for caps in IPV6.captures_iter(text) {
        let Some(addr) = caps.get(1) else { continue };
        if addr.as_str().matches(':').count() < 2 {
            continue;
        }
        let Ok(ip) = addr.as_str().parse::<Ipv6Addr>() else {
            continue;
        };
        if is_relay_hop(text, addr.start()) {
            continue;
        }
        let prefix = caps.get(2).and_then(|p| p.as_str()[1..].parse::<u8>().ok());
        let (net, is_range) = match prefix {
            Some(len) => match ipnet::Ipv6Net::new(ip, len) {
                Ok(n) => (IpNet::V6(n.trunc()), len < 128),
                Err(_) => continue,
            },
            None => (IpNet::from(IpAddr::V6(ip)), false),
        };
        found.push((addr.start(), Found { net, is_range }));
    }

    found.sort_by_key(|(pos, _)| *pos);
    // Ranges by prefix length: an address is inside one of them when its own network at that
    // length is in the set, a lookup per distinct length instead of a scan of every range.
    let mut ranges: HashSet<IpNet> = HashSet::new();
    let mut lengths: BTreeSet<(bool, u8)> = BTreeSet::new();
    for (_, f) in found.iter().filter(|(_, f)| f.is_range) {
        ranges.insert(f.net);
        lengths.insert((f.net.addr().is_ipv4(), f.net.prefix_len()));
    }
    let in_a_range = |addr: IpAddr| {
        lengths.iter().any(|&(v4, len)| {
            v4 == addr.is_ipv4() && IpNet::new(addr, len).is_ok_and(|n| ranges.contains(&n.trunc()))
        })
    };

    let mut out: Vec<String> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    for (_, f) in found {
        if !is_public(&f.net.addr()) || rules.ignore_ips.iter().any(|n| n.contains(&f.net.addr())) {
            continue;
        }
        if !our_networks.is_empty() && !our_networks.iter().any(|n| n.contains(&f.net.addr())) {
            continue;
        }
        if !f.is_range && in_a_range(f.net.addr()) {
            continue;
        }
        let shown = if f.is_range {
            f.net.to_string()
        } else {
            f.net.addr().to_string()
        };
        if seen.insert(shown.clone()) && out.len() < limit {
            out.push(shown);
        }
    }
    let omitted = seen.len() - out.len();
    (out, omitted)
}

/// Whether the address at `start` follows a hostname, as in `host.example[192.0.2.1]`. Only a
/// short window is examined, so long texts stay linear.
fn is_relay_hop(text: &str, start: usize) -> bool {
    let mut from = start.saturating_sub(120);
    while !text.is_char_boundary(from) {
        from += 1;
    }
    HOP_BEFORE.is_match(&text[from..start])
}

/// The smallest exact CIDR for `a..=b`, or `None` when the range is not one CIDR block.
fn range_to_net(a: Ipv4Addr, b: Ipv4Addr) -> Option<IpNet> {
    let (lo, hi) = (u32::from(a), u32::from(b));
    if hi < lo {
        return None;
    }
    let size = u64::from(hi - lo) + 1;
    if !size.is_power_of_two() || u64::from(lo) % size != 0 {
        return None;
    }
    let len = 32 - size.trailing_zeros() as u8;
    Ipv4Net::new(a, len).ok().map(IpNet::V4)
}

/// Whether an address could be a public sending IP.
fn is_public(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.octets()[0] == 0
                || v4.octets()[0] >= 240)
        }
        IpAddr::V6(v6) => {
            let seg0 = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg0 & 0xfe00) == 0xfc00
                || (seg0 & 0xffc0) == 0xfe80)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Whitespace runs become one space, the ends are trimmed, typographic characters
        /// become plain: the same as mapping each character, then joining the words.
        #[test]
        fn normalize_maps_then_joins_words(text in "(?s)[ \t\r\na-z\u{A0}\u{2019}\u{2026}\u{200B}\u{3000}é]{0,40}") {
            let by_words = text
                .chars()
                .map(|c| normalize(&c.to_string()).chars().next().unwrap_or(' '))
                .collect::<String>()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            proptest::prop_assert_eq!(normalize(&text), by_words);
        }
    }

    fn rules() -> Rules {
        Rules::builtin().expect("built-in rules compile")
    }

    #[track_caller]
    fn check_ips(text: &str, expect: &[&str]) {
        assert_eq!(sender_ips(text, &rules(), &[]), expect, "text: {text}");
    }

    #[test]
    fn relay_hops_and_microsoft_hosts_are_not_ours() {
        check_ips(
            "host hotmail-com.olc.protection.outlook.com[104.47.18.161] said: 550 5.7.1 messages from [192.0.2.25] weren't sent",
            &["192.0.2.25"],
        );
        check_ips(
            "host mx2.example.com [198.18.3.4] said: 550 messages from 203.0.113.9 weren't sent",
            &["203.0.113.9"],
        );
        check_ips("received from app2.example.net [198.51.100.141]", &[]);
        check_ips("mail from 40.107.236.166 and 52.101.8.42", &[]);
    }

    #[test]
    fn versions_private_and_timestamps_are_not_ips() {
        check_ips("Exim 4.97.1 and 1.3.6.1.4.1 and 10.0.0.1 at 07:41:12", &[]);
        check_ips("[192.0.2.25      12] Gmail has detected", &["192.0.2.25"]);
    }

    #[test]
    fn ranges_become_cidr_and_absorb_their_members() {
        check_ips("192.0.2.0 - 192.0.2.255 (192.0.2.0/24)", &["192.0.2.0/24"]);
        check_ips(
            "range 198.51.100.0/28 incl. 198.51.100.3",
            &["198.51.100.0/28"],
        );
        check_ips("IPv6 2001:db8::25 too", &["2001:db8::25"]);
    }

    #[test]
    fn our_networks_filter_keeps_only_ours() {
        let ours = vec!["192.0.2.0/24".parse().expect("valid")];
        assert_eq!(
            sender_ips("198.51.100.7 and 192.0.2.9", &rules(), &ours),
            vec!["192.0.2.9"]
        );
    }

    #[test]
    fn ticket_ids_in_subjects() {
        let r = rules();
        let t = |s: &str| ticket_id(s, &r).map(|(id, _)| id);
        assert_eq!(
            t("RE: SRX1569221851ID - Mail from"),
            Some("SRX1569221851ID".into())
        );
        assert_eq!(
            t("Outlook.com Deliverability Support - Request ID: 7096815524"),
            Some("7096815524".into())
        );
        assert_eq!(
            t("Service Request Number 7098992114"),
            Some("7098992114".into())
        );
        assert_eq!(t("Invoice 7096815524 attached"), None);
        assert_eq!(t("srx1569221851id"), Some("SRX1569221851ID".into()));
    }

    #[test]
    fn quoted_and_forwarded_text_is_not_own_text() {
        let r = rules();
        let (own, rest) =
            split_own_text("Hello\n> quoted\nmore\n-----Original Message-----\nold", &r);
        assert_eq!(own, "Hello\nmore\n");
        assert_eq!(rest, "> quoted\n-----Original Message-----\nold\n");
    }
}
