//! Offline replay: files are run through the whole pipeline in the order given, as if they had
//! arrived in that order, with every reply and notification written as an `.eml` file.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::pipeline::case::CaseId;
use crate::pipeline::decide::Disposition;
use crate::shell::engine::{Engine, HandleError, OutboxStatus, Prepared};
use crate::shell::store::Store;

/// Output format for people or for tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Files named by the arguments, in order: a folder gives its files in name order (its `.eml`
/// files when it has any, else every file not starting with a dot).
pub fn expand(paths: &[PathBuf]) -> Vec<Result<PathBuf, (PathBuf, std::io::Error)>> {
    let mut out = Vec::new();
    for path in paths {
        if !path.is_dir() {
            out.push(Ok(path.clone()));
            continue;
        }
        match std::fs::read_dir(path) {
            Ok(entries) => {
                let mut files: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_file())
                    .filter(|p| {
                        !p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with('.'))
                    })
                    .collect();
                if files.iter().any(|p| is_eml(p)) {
                    files.retain(|p| is_eml(p));
                }
                files.sort();
                out.extend(files.into_iter().map(Ok));
            }
            Err(e) => out.push(Err((path.clone(), e))),
        }
    }
    out
}

fn is_eml(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("eml"))
}

/// What a replay did.
#[derive(Debug, Default)]
pub struct Summary {
    pub messages: usize,
    pub failed: usize,
    pub cases: Vec<CaseId>,
    pub written: Vec<PathBuf>,
    /// Why the replay stopped early (the store failed), if it did.
    pub stopped: Option<String>,
}

/// Replays files through the engine into `store`, writing produced mail under `out`.
pub fn run(
    engine: &Engine,
    store: &mut Store,
    paths: &[PathBuf],
    out: Option<&Path>,
    format: Format,
    w: &mut dyn Write,
) -> std::io::Result<Summary> {
    let mut summary = Summary::default();
    let mut clock = 0i64;
    if let Some(dir) = out {
        std::fs::create_dir_all(dir)?;
    }
    for (seq, entry) in expand(paths).into_iter().enumerate() {
        let path = match entry {
            Ok(p) => p,
            Err((p, e)) => {
                summary.failed += 1;
                report_error(w, format, &p, &format!("failed to read folder: {e}"))?;
                continue;
            }
        };
        let raw = match std::fs::read(&path) {
            Ok(raw) => raw,
            Err(e) => {
                summary.failed += 1;
                report_error(w, format, &path, &format!("failed to read file: {e}"))?;
                continue;
            }
        };
        summary.messages += 1;
        let prepared = engine.prepare(&raw);
        // Replay time is the message's own Date, never running backwards.
        clock = match prepared.inbound.date {
            Some(d) => clock.max(d),
            None if clock == 0 => crate::clock::now(),
            None => clock,
        };
        let source = path.display().to_string();
        match engine.apply(store, &source, &prepared, clock, OutboxStatus::Replayed) {
            Ok(handled) => {
                let mut files = Vec::new();
                if let Some(dir) = out {
                    for p in &handled.produced {
                        let Some(o) = &p.outgoing else { continue };
                        let name = format!(
                            "{:03}-case{}-{}.eml",
                            seq + 1,
                            handled.case_id.unwrap_or(0),
                            p.template.name()
                        );
                        let file = dir.join(name);
                        std::fs::write(&file, &o.bytes)?;
                        files.push(file);
                    }
                }
                if let Some(id) = handled.case_id {
                    if !summary.cases.contains(&id) {
                        summary.cases.push(id);
                    }
                }
                match format {
                    Format::Json => {
                        let line = json!({
                            "file": source,
                            "message_id": prepared.inbound.message_id,
                            "kind": prepared.verdict.kind,
                            "ticket_id": prepared.verdict.ticket_id,
                            "ips": prepared.verdict.ips,
                            "trusted": prepared.verdict.trusted,
                            "provider": prepared.verdict.provider(),
                            "block_code": prepared.verdict.bounce.as_ref().and_then(|b| b.block_code.as_deref()),
                            "case": handled.case_id,
                            "state": handled.case_state.map(|s| s.as_str()),
                            "action": handled.action,
                            "reason": handled.reason,
                            "duplicate": handled.duplicate,
                            "produced": handled.produced.iter().map(|p| json!({
                                "template": p.template,
                                "disposition": p.disposition.as_str(),
                                "hold_reason": match &p.disposition { Disposition::Hold(r) => Some(r), _ => None },
                                "message_id": p.outgoing.as_ref().map(|o| &o.message_id),
                                "to": p.outgoing.as_ref().map(|o| &o.to),
                                "subject": p.outgoing.as_ref().map(|o| &o.subject),
                            })).collect::<Vec<_>>(),
                            "outputs": files,
                        });
                        writeln!(w, "{line}")?;
                    }
                    Format::Text => {
                        write_text_line(w, &source, &prepared, &handled)?;
                        for p in &handled.produced {
                            let how = match &p.disposition {
                                Disposition::Hold(r) => format!("held: {r}"),
                                d => d.as_str().to_string(),
                            };
                            let to = p
                                .outgoing
                                .as_ref()
                                .map(|o| o.to.join(", "))
                                .unwrap_or_default();
                            writeln!(w, "    -> {} to {to} ({how})", p.template.name())?;
                            if p.template.is_reply() {
                                if let Some(o) = &p.outgoing {
                                    writeln!(w, "       Subject: {}", o.subject)?;
                                    if let Some(irt) = &o.in_reply_to {
                                        writeln!(w, "       In-Reply-To: <{irt}>")?;
                                    }
                                }
                                for line in p.body.lines() {
                                    writeln!(w, "       | {line}")?;
                                }
                            }
                        }
                    }
                }
            }
            // The store failing is no fault of the message: stop rather than fail every file.
            Err(HandleError::Store(e)) => {
                summary.failed += 1;
                report_error(w, format, &path, &e.to_string())?;
                summary.stopped = Some(e.to_string());
                break;
            }
            Err(e) => {
                summary.failed += 1;
                let err = format!("{e}");
                let _ = store.quarantine(
                    &source,
                    prepared.inbound.message_id.as_deref(),
                    &prepared.inbound.content_hash,
                    &err,
                    clock,
                );
                report_error(w, format, &path, &err)?;
            }
        }
    }
    if format == Format::Text {
        for id in &summary.cases {
            write_case(w, store, *id)?;
        }
        if let Some(dir) = out {
            writeln!(w, "\nmail written to {}", dir.display())?;
        }
    }
    Ok(summary)
}

fn report_error(
    w: &mut dyn Write,
    format: Format,
    path: &Path,
    error: &str,
) -> std::io::Result<()> {
    match format {
        Format::Json => writeln!(
            w,
            "{}",
            json!({"file": path.display().to_string(), "error": error})
        ),
        Format::Text => writeln!(w, "{}: error: {error}", path.display()),
    }
}

fn write_text_line(
    w: &mut dyn Write,
    source: &str,
    prepared: &Prepared,
    handled: &crate::shell::engine::Handled,
) -> std::io::Result<()> {
    let name = Path::new(source)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(source);
    let v = &prepared.verdict;
    let case = handled
        .case_id
        .map(|c| format!("case #{c}"))
        .unwrap_or_else(|| "no case".to_string());
    writeln!(
        w,
        "{name}: {kind} ticket={ticket} ips={ips} {case} -> {action} ({reason})",
        kind = v.kind,
        ticket = v.ticket_id.as_deref().unwrap_or("-"),
        ips = if v.ips.is_empty() {
            "-".to_string()
        } else {
            v.ips.join(",")
        },
        action = handled.action,
        reason = handled.reason,
    )
}

/// Writes a case and its timeline for people.
pub fn write_case(w: &mut dyn Write, store: &Store, id: CaseId) -> std::io::Result<()> {
    let case = match store.case(id) {
        Ok(Some(c)) => c,
        Ok(None) => return writeln!(w, "case #{id}: not found"),
        Err(e) => return writeln!(w, "case #{id}: {e}"),
    };
    writeln!(w)?;
    writeln!(
        w,
        "case #{} [{}] {} ticket={} ips={} escalations={}",
        case.id,
        serde_json::to_value(case.topic)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        case.state,
        case.ticket_id.as_deref().unwrap_or("-"),
        if case.ips.is_empty() {
            "-".to_string()
        } else {
            case.ips.join(",")
        },
        case.escalations
    )?;
    match store.timeline(id) {
        Ok(entries) => {
            for e in entries {
                writeln!(
                    w,
                    "  {}  {:<26} {:<22} {}",
                    crate::pipeline::render::rfc2822(e.at),
                    e.kind.as_deref().unwrap_or(""),
                    e.action,
                    e.summary
                )?;
            }
        }
        Err(e) => writeln!(w, "  timeline unavailable: {e}")?,
    }
    Ok(())
}
