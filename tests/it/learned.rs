//! Learned templates: the built-in exemplars stay in step with the corpus, the similarity
//! measure does not confuse one template with another, and a template taught once recognises
//! the next message of the same template (offline here; on the real Dovecot in `live`).

use std::process::Command;

use postmaster_bot::pipeline::extract;
use postmaster_bot::pipeline::learned::{self, Learned};
use postmaster_bot::shell::engine;

use crate::support::{engine, fixtures, manifest};

/// The corpus's trusted sender-support answers as templates, as `rules/exemplars.json` holds
/// them. `UPDATE_EXEMPLARS=1 cargo test --test it exemplars` rewrites the file.
fn corpus_exemplars() -> Vec<Learned> {
    let engine = engine();
    let mut out = Vec::new();
    for row in manifest("corpus") {
        if !row.kind.starts_with("ms_") {
            continue;
        }
        let raw = std::fs::read(fixtures().join("corpus").join(&row.file)).expect("fixture");
        let prepared = engine.prepare(&raw);
        let (own, _) = extract::split_own_text(&prepared.inbound.body, &engine.rules);
        let kind =
            serde_json::from_value(serde_json::Value::String(row.kind.clone())).expect("a kind");
        out.push(learned::learn(
            kind,
            &own,
            &format!("corpus/{}", row.file),
            0,
        ));
    }
    out
}

#[test]
fn exemplars_are_the_corpus_answers() {
    let want = corpus_exemplars();
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/pipeline/rules/exemplars.json");
    if std::env::var_os("UPDATE_EXEMPLARS").is_some() {
        let text = serde_json::to_string_pretty(&want).expect("serializes");
        std::fs::write(&path, text + "\n").expect("write exemplars");
    }
    assert_eq!(
        engine::exemplars(),
        want,
        "src/pipeline/rules/exemplars.json is stale: run UPDATE_EXEMPLARS=1 cargo test --test it exemplars"
    );
}

/// The false-match rate of the measure: no verified Microsoft message of the corpus, the
/// variants or the hostile set matches an exemplar of another kind (its own file's exemplar
/// left out), and distinct templates stay well below the threshold.
#[test]
fn the_similarity_measure_does_not_confuse_templates() {
    let exemplars = engine::exemplars();
    let engine = engine();
    let mut worst: (f64, String) = (0.0, String::new());
    let mut false_matches = Vec::new();
    for set in ["corpus", "variants", "hostile", "blind1", "blind2"] {
        for row in manifest(set) {
            let raw = std::fs::read(fixtures().join(set).join(&row.file)).expect("fixture");
            let prepared = engine.prepare(&raw);
            // Templates speak only for verified Microsoft mail; spoofs copy real wording.
            if !prepared.verdict.trusted {
                continue;
            }
            let (own, _) = extract::split_own_text(&prepared.inbound.body, &engine.rules);
            let shingles = learned::shingles(&own);
            for e in &exemplars {
                if e.source == format!("{set}/{}", row.file) {
                    continue;
                }
                let s = learned::jaccard(&shingles, &e.shingles);
                if e.kind.as_str() != row.kind && s > worst.0 {
                    worst = (s, format!("{set}/{} ~ {}", row.file, e.source));
                }
                if s >= learned::THRESHOLD && e.kind.as_str() != row.kind {
                    false_matches.push(format!("{set}/{} ~ {} ({s:.2})", row.file, e.source));
                }
            }
        }
    }
    assert!(false_matches.is_empty(), "{false_matches:?}");
    println!("closest pair of different kinds: {worst:?}");
    assert!(worst.0 < 0.35, "closest other-kind pair: {worst:?}");
}

fn bot(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_postmaster-bot"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("binary runs")
}

/// Teach by CLI: an answer in a wording no rule knows goes to the operator; taught once, it is
/// decided again, and the next ticket's answer of the same template is a refusal with its
/// reply, while an unverified copy stays untrusted.
#[test]
fn a_template_taught_by_cli_recognises_the_next_answer() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("config.toml"),
        format!(
            "mode = \"draft\"\n[identity]\nfrom = \"P <postmaster@example.net>\"\nmessage_id_domain = \"postmaster.example.net\"\n[trust]\nauthserv_ids = [\"mx1.example.net\"]\n{}[policy]\nmax_reply_age_days = 100000\n",
            crate::support::state_section(dir.path())
        ),
    )
    .expect("config");
    let state = crate::support::state_argument(dir.path());
    let learned_dir = fixtures().join("learned");
    let t1 = learned_dir.join("t1-new-wording-refusal.eml");
    let ack = fixtures().join("corpus/d007.eml");
    let replay = |files: &[&std::path::Path]| {
        let mut args = vec![
            "replay",
            "--config",
            "config.toml",
            "--state",
            &state,
            "--format",
            "json",
        ];
        let shown: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        args.extend(shown.iter().map(String::as_str));
        let o = bot(dir.path(), &args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
            .collect::<Vec<_>>()
    };
    let first = replay(&[&ack, &t1]);
    assert_eq!(first[1]["kind"], "ms_other");
    assert_eq!(first[1]["action"], "notify_operator");

    let t1_arg = t1.display().to_string();
    let o = bot(
        dir.path(),
        &[
            "teach",
            "--config",
            "config.toml",
            "--kind",
            "ms_not_qualified",
            &t1_arg,
        ],
    );
    let said = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        said.contains("now ms_not_qualified (was ms_other)"),
        "{said}"
    );
    assert!(
        said.contains("decided again: draft_escalation_reply"),
        "{said}"
    );

    let second = replay(&[
        &learned_dir.join("t2-same-template-other-ticket.eml"),
        &learned_dir.join("t3-same-template-unverified.eml"),
    ]);
    assert_eq!(second[0]["kind"], "ms_not_qualified");
    assert_eq!(second[0]["ticket_id"], "SRX1800000002ID");
    assert_eq!(second[0]["action"], "draft_escalation_reply");
    assert_eq!(
        second[1]["kind"], "other",
        "a template never makes mail trusted"
    );
    assert_eq!(second[1]["action"], "none");

    // Listed, shown, exported, removed, imported again.
    let list = String::from_utf8_lossy(
        &bot(
            dir.path(),
            &["templates", "list", "--config", "config.toml"],
        )
        .stdout,
    )
    .into_owned();
    assert!(
        list.contains("#1") && list.contains("ms_not_qualified"),
        "{list}"
    );
    let o = bot(
        dir.path(),
        &[
            "templates",
            "export",
            "shared.json",
            "--config",
            "config.toml",
        ],
    );
    assert!(o.status.success());
    assert!(bot(
        dir.path(),
        &["templates", "remove", "1", "--config", "config.toml"]
    )
    .status
    .success());
    let o = bot(
        dir.path(),
        &[
            "templates",
            "import",
            "shared.json",
            "--config",
            "config.toml",
        ],
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("1 template(s) imported"));
    let o = bot(
        dir.path(),
        &[
            "templates",
            "import",
            "shared.json",
            "--config",
            "config.toml",
        ],
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("0 template(s) imported"));
    // A bounce or a forward cannot be taught as Microsoft's answer.
    let bounce = fixtures().join("corpus/d006.eml").display().to_string();
    let o = bot(
        dir.path(),
        &[
            "teach",
            "--config",
            "config.toml",
            "--kind",
            "ms_resolved",
            &bounce,
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not verified Microsoft sender support"));
}
