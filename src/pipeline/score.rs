//! Weighing a sender-support answer's features: every cue adds its weight to the kind it speaks
//! for (once per rule), the result table speaks for its outcome, the place in the thread and
//! the sentences' markers adjust. The top kind wins only with a clear margin; otherwise the
//! verdict is `ms_other`, uncertain, and goes to a person. A request for data from us beats
//! every other cue: unanswered, it closes the ticket.

use serde::Serialize;

use crate::pipeline::classify::{Evidence, Kind, Outcome};
use crate::pipeline::features::{self, Features};
use crate::pipeline::rules::{starts_a_word, trim_boundary, Role, Rules, Scoring};

/// The kinds a sender-support answer can be, in the order ties are reported.
const KINDS: [Kind; 8] = [
    Kind::MsInfoRequested,
    Kind::MsNotQualified,
    Kind::MsConditionallyMitigated,
    Kind::MsMitigated,
    Kind::MsResolved,
    Kind::MsOther,
    Kind::MsEscalated,
    Kind::MsAck,
];

/// Kinds that say what became of the request.
const OUTCOMES: [Kind; 5] = [
    Kind::MsNotQualified,
    Kind::MsConditionallyMitigated,
    Kind::MsMitigated,
    Kind::MsResolved,
    Kind::MsOther,
];

/// Kinds that say where the ticket stands.
const PROCESS: [Kind; 2] = [Kind::MsEscalated, Kind::MsAck];

/// Kinds that do not contradict `kind`: a templated *Mitigated* table and a prose lifting of
/// the block both close the case.
fn compatible(kind: Kind) -> Vec<Kind> {
    match kind {
        Kind::MsMitigated | Kind::MsResolved => vec![Kind::MsMitigated, Kind::MsResolved],
        k => vec![k],
    }
}

/// The second-best kind and its score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunnerUp {
    pub kind: Kind,
    pub score: f64,
}

/// The outcome of weighing.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub kind: Kind,
    /// How sure: the winner's share of the two best scores, 0 when nothing scored.
    pub confidence: f64,
    pub runner_up: Option<RunnerUp>,
    /// Why no kind was taken (too little evidence, or too close a call).
    pub uncertain: Option<String>,
    /// Every cue that scored, with its weight.
    pub evidence: Vec<Evidence>,
}

/// A cue from outside the rules (a learned template): it scores like a rule.
#[derive(Debug, Clone)]
pub struct ExtraCue {
    pub kind: Kind,
    pub weight: f64,
    /// From a learned template: when the rules alone clearly say otherwise, the verdict is
    /// uncertain rather than either.
    pub learned: bool,
    pub evidence: Evidence,
}

/// Weighs the features.
pub fn score(features: &Features, rules: &Rules, extra: &[ExtraCue]) -> Scored {
    let scoring = &rules.scoring;
    let mut scores = [0.0f64; KINDS.len()];
    let slot = |k: Kind| KINDS.iter().position(|x| *x == k).unwrap_or(5);
    let mut evidence = Vec::new();

    // Each rule counts once, with its best sentence; two rules of one kind that match the same
    // sentence count once too (a phrase in two tables is one piece of evidence).
    let mut hits: Vec<(Kind, usize, f64, Evidence)> = Vec::new();
    for rule in rules
        .phrases
        .iter()
        .filter(|r| r.role == Role::Cue && r.speaks(&features.languages))
    {
        let Some(kind) = rule.kind else { continue };
        let mut best: Option<(f64, usize, String, &'static str)> = None;
        let mut consider = |i: usize, matched: String| {
            let Some(sentence) = features.sentences.get(i) else {
                return;
            };
            let (w, note) = if kind == Kind::MsInfoRequested && sentence.invitation {
                (0.0, " (an invitation to write, not a request)")
            } else if kind == Kind::MsEscalated && sentence.concluded {
                (
                    rule.weight * scoring.past_factor,
                    " (a finished review, not an escalation under way)",
                )
            } else if sentence.past {
                (rule.weight * scoring.past_factor, " (recalls the past)")
            } else {
                (rule.weight, "")
            };
            if best.as_ref().is_none_or(|(b, _, _, _)| w > *b) {
                best = Some((w, i, matched, note));
            }
        };
        if let Some(re) = rule.pattern.as_ref().and_then(|r| r.get()) {
            let text = features.text.as_bytes();
            for m in re.find_iter(text).filter(|m| starts_a_word(text, m)) {
                // A word boundary written as a class may have taken one character of context.
                let words = trim_boundary(&String::from_utf8_lossy(m.as_bytes()));
                consider(features.sentence_at(features::word_start(&m)), words);
            }
        }
        for (i, words) in features.co_occurring(rule) {
            consider(i, words);
        }
        if let Some((w, i, matched, note)) = best {
            hits.push((
                kind,
                i,
                w,
                Evidence::weighted(&rule.id, format!("{matched}{note}"), w),
            ));
        }
    }
    let mut counted: std::collections::HashMap<(Kind, usize), usize> =
        std::collections::HashMap::new();
    for (n, (kind, sentence, w, _)) in hits.iter().enumerate() {
        match counted.get(&(*kind, *sentence)) {
            Some(&other) if hits[other].2 >= *w => {}
            _ => {
                counted.insert((*kind, *sentence), n);
            }
        }
    }
    for (n, (kind, sentence, w, mut e)) in hits.into_iter().enumerate() {
        if counted.get(&(kind, sentence)) == Some(&n) {
            scores[slot(kind)] += w;
        } else {
            e.weight = Some(0.0);
            e.matched
                .push_str(" (same sentence as another cue of this kind)");
        }
        evidence.push(e);
    }
    for cue in extra {
        scores[slot(cue.kind)] += cue.weight;
        evidence.push(cue.evidence.clone());
    }
    if !features.table.is_empty() {
        let kind = table_kind(features);
        scores[slot(kind)] += scoring.table_weight;
        evidence.extend(features.table_evidence.iter().cloned());
        evidence.push(Evidence::weighted(
            "table",
            format!("result table with {} IP(s): {kind}", features.table.len()),
            scoring.table_weight,
        ));
    }
    // A conditional unblocking also lifts a block: its lifting words do not contradict it.
    if scores[slot(Kind::MsConditionallyMitigated)] > 0.0 {
        for k in [Kind::MsResolved, Kind::MsMitigated] {
            scores[slot(k)] *= scoring.subsumed_factor;
        }
    }
    if features.answers_our_reply && scores[slot(Kind::MsAck)] > 0.0 {
        evidence.push(Evidence::weighted(
            "thread.answers_our_reply",
            "answers our reply: not an acknowledgement".to_string(),
            -scores[slot(Kind::MsAck)],
        ));
        scores[slot(Kind::MsAck)] = 0.0;
    }
    if features.automated && scores[slot(Kind::MsAck)] > 0.0 {
        scores[slot(Kind::MsAck)] += scoring.automated_weight;
        evidence.push(Evidence::weighted(
            "automated",
            "Auto-Submitted or a no-reply sender".to_string(),
            scoring.automated_weight,
        ));
    }

    let score_of = |k: Kind| scores[slot(k)];
    let best = |kinds: &[Kind], but: &[Kind]| {
        kinds
            .iter()
            .copied()
            .filter(|k| !but.contains(k))
            .map(|k| (k, score_of(k)))
            .fold(
                (Kind::MsOther, 0.0f64),
                |a, b| if b.1 > a.1 { b } else { a },
            )
    };
    let (outcome, outcome_score) = best(&OUTCOMES, &[]);
    let (process, process_score) = best(&PROCESS, &[]);
    // What the message decides outranks where the ticket stands, when it says so clearly.
    let (top, top_score, rival, rival_score) = if outcome_score >= scoring.min_score
        && outcome_score >= process_score * scoring.outcome_over_process
    {
        let (r, rs) = best(&OUTCOMES, &compatible(outcome));
        (outcome, outcome_score, r, rs)
    } else {
        let (r, rs) = best(&PROCESS, &[process]);
        let (r, rs) = if outcome_score > rs {
            (outcome, outcome_score)
        } else {
            (r, rs)
        };
        (process, process_score, r, rs)
    };
    let runner_up = (rival_score > 0.0).then_some(RunnerUp {
        kind: rival,
        score: rival_score,
    });
    let confidence = if top_score > 0.0 {
        top_score / (top_score + rival_score.max(0.0))
    } else {
        0.0
    };
    let request = score_of(Kind::MsInfoRequested);
    let (kind, uncertain) = if request >= scoring.request_min {
        (Kind::MsInfoRequested, None)
    } else if top_score < scoring.min_score {
        (
            Kind::MsOther,
            Some(format!(
                "no kind reached the threshold ({top_score:.1} < {:.1})",
                scoring.min_score
            )),
        )
    } else if top_score - rival_score < scoring.min_margin
        || top_score < rival_score * scoring.min_ratio
    {
        (
            Kind::MsOther,
            Some(format!(
                "too close to call: {top} {top_score:.1} against {rival} {rival_score:.1}"
            )),
        )
    } else if let Some(conflict) = learned_conflict(features, rules, extra) {
        (Kind::MsOther, Some(conflict))
    } else if top == Kind::MsNotQualified
        && (top_score < scoring.refusal_min
            || process_score >= top_score * scoring.refusal_process_guard)
    {
        // A refusal leads to an unattended reply: it needs strong evidence, and no strong sign
        // that the message is mainly something else (an acknowledgement echoing our request).
        (
            Kind::MsOther,
            Some(format!(
                "a refusal on uncertain evidence ({top_score:.1}; {process} {process_score:.1})"
            )),
        )
    } else {
        (top, None)
    };
    // A request wins by its own threshold: its confidence is its share against the best other
    // reading of the message.
    let confidence = if kind == Kind::MsInfoRequested {
        request / (request + top_score.max(0.0))
    } else {
        confidence
    };
    Scored {
        kind,
        confidence: if uncertain.is_some() {
            confidence.min(0.5)
        } else {
            confidence
        },
        runner_up,
        uncertain,
        evidence,
    }
}

/// A learned template and the rules' own clear verdict disagree: say so rather than pick one.
fn learned_conflict(features: &Features, rules: &Rules, extra: &[ExtraCue]) -> Option<String> {
    let learned = extra.iter().find(|c| c.learned)?;
    let by_rules = score(features, rules, &[]);
    (by_rules.uncertain.is_none() && !compatible(learned.kind).contains(&by_rules.kind)).then(
        || {
            format!(
                "a learned template says {} but the wording says {}",
                learned.kind, by_rules.kind
            )
        },
    )
}

/// The kind a result table speaks for: any refused IP makes it a refusal.
pub fn table_kind(features: &Features) -> Kind {
    let has = |o: Outcome| features.table.iter().any(|t| t.outcome == o);
    if has(Outcome::NotQualified) {
        Kind::MsNotQualified
    } else if has(Outcome::ConditionallyMitigated) {
        Kind::MsConditionallyMitigated
    } else {
        Kind::MsMitigated
    }
}

/// Defaults for [`Scoring`]: the built-in rules file sets them too.
impl Default for Scoring {
    fn default() -> Self {
        Scoring {
            min_score: 3.5,
            min_margin: 1.0,
            min_ratio: 1.5,
            request_min: 5.0,
            refusal_min: 5.5,
            table_weight: 8.0,
            past_factor: 0.25,
            subsumed_factor: 0.3,
            automated_weight: 1.5,
            outcome_over_process: 0.5,
            refusal_process_guard: 0.6,
        }
    }
}
