//! What each cue pattern costs to compile: the one-time price a process pays before its first
//! message in a language. A measurement, not a check: run it with
//! `cargo test --test it rule_cost -- --ignored --nocapture` after editing the rule files.

use postmaster_bot::pipeline::rules::Rules;
use std::time::{Duration, Instant};

#[test]
#[ignore = "a measurement, not a check"]
fn compile_cost_per_rule() {
    let rules = Rules::builtin().expect("the built-in rules load");
    let mut costs = Vec::new();
    for rule in &rules.phrases {
        for (n, re) in rule
            .pattern
            .iter()
            .chain(&rule.all)
            .chain(rule.none.iter())
            .enumerate()
        {
            let start = Instant::now();
            let _ = re.get();
            costs.push((start.elapsed(), format!("{}#{n}", rule.id)));
        }
    }
    costs.sort();
    costs.reverse();
    let total: Duration = costs.iter().map(|c| c.0).sum();
    println!("total {total:?}");
    for (took, id) in costs.iter().take(20) {
        println!("{took:?} {id}");
    }
}

/// The patterns of one rule (`RULE=id`), each compiled alone: which alternative costs.
#[test]
#[ignore = "a measurement, not a check"]
fn compile_cost_per_pattern() {
    let Ok(id) = std::env::var("RULE") else {
        return;
    };
    let text = include_str!("../../src/pipeline/rules/builtin.toml");
    let table: toml::Table = text.parse().expect("the built-in rules parse");
    let phrases = table["phrase"].as_array().expect("phrases");
    for phrase in phrases {
        if phrase["id"].as_str() != Some(id.as_str()) {
            continue;
        }
        for p in phrase["patterns"].as_array().into_iter().flatten() {
            let p = p.as_str().expect("a string");
            let m = postmaster_bot::pipeline::rules::matcher(p);
            let start = Instant::now();
            let _ = regex::bytes::RegexBuilder::new(&m)
                .size_limit(64 << 20)
                .dfa_size_limit(256 << 10)
                .build();
            println!("{:?} {}", start.elapsed(), &m[..m.len().min(300)]);
        }
    }
}

/// What the marker lists' alternations cost to compile.
#[test]
#[ignore = "a measurement, not a check"]
fn compile_cost_of_marker_lists() {
    let rules = Rules::builtin().expect("the built-in rules load");
    let m = &rules.markers;
    for (name, list) in [
        ("microsoft_support", &m.microsoft_support),
        ("jmrp_from", &m.jmrp_from),
        ("jmrp_subject", &m.jmrp_subject),
        ("snds", &m.snds),
        ("forward_subject", &m.forward_subject),
        ("reply_separator", &m.reply_separator),
        ("auto_reply_subject", &m.auto_reply_subject),
        ("bounce_sender", &m.bounce_sender),
        ("bounce_subject", &m.bounce_subject),
        ("bounce_body", &m.bounce_body),
        ("returned_message", &m.returned_message),
        ("candidate_subject", &m.candidate_subject),
        ("tickets", &rules.ticket_gate),
    ] {
        let start = Instant::now();
        let _ = list.is_match("");
        println!("{:?} {name} ({} patterns)", start.elapsed(), list.len());
    }
}
