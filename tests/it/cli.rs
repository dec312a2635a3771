//! The binary as operators and other tools run it.

use std::path::Path;
use std::process::{Command, Output};

use crate::support::fixtures;

fn bot(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_postmaster-bot"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn classify_json_has_the_fields_tools_read() {
    let corpus = fixtures().join("corpus");
    let files: Vec<String> = ["d008.eml", "d024.eml", "d030.eml"]
        .iter()
        .map(|f| corpus.join(f).display().to_string())
        .collect();
    let mut args = vec![
        "classify",
        "--config",
        "examples/config.toml",
        "--format",
        "json",
    ];
    args.extend(files.iter().map(String::as_str));
    let o = bot(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 3);
    for v in &lines {
        for key in ["file", "kind", "ticket_id", "ips", "trusted", "evidence"] {
            assert!(v.get(key).is_some(), "missing {key} in {v}");
        }
    }
    assert_eq!(lines[0]["kind"], "ms_not_qualified");
    assert_eq!(lines[0]["trusted"], true);
    assert_eq!(lines[1]["kind"], "other");
    assert_eq!(lines[2]["ticket_id"], "7096815524");
}

#[test]
fn quick_start_replay_shows_timeline_and_drafted_reply() {
    let out = tempfile::tempdir().expect("temp dir");
    let out_dir = out.path().display().to_string();
    let o = bot(&[
        "replay",
        "--config",
        "examples/config.toml",
        "--out",
        &out_dir,
        "examples/thread",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("-> draft_escalation_reply"), "{text}");
    assert!(
        text.contains("case #1 [outlook_block] closed ticket=SRX1569221851ID"),
        "{text}"
    );
    assert!(
        text.contains("Could you please escalate this ticket"),
        "{text}"
    );
    let written: Vec<_> = std::fs::read_dir(out.path())
        .expect("out folder")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        written.iter().any(|n| n.ends_with("escalation_reply.eml")),
        "{written:?}"
    );
}

#[test]
fn replay_json_and_cases_commands_share_a_state_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state.sqlite3").display().to_string();
    let o = bot(&[
        "replay",
        "--config",
        "examples/config.toml",
        "--state",
        &state,
        "--format",
        "json",
        "examples/thread",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let actions: Vec<String> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
        .map(|v| {
            for key in ["file", "kind", "ticket_id", "ips", "case", "action"] {
                assert!(v.get(key).is_some(), "missing {key} in {v}");
            }
            v["action"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    assert_eq!(
        actions,
        [
            "open_case",
            "none",
            "draft_escalation_reply",
            "none",
            "close_case"
        ]
    );
    let list = bot(&["cases", "list", "--state", &state]);
    assert!(list.status.success(), "{}", stderr(&list));
    assert!(
        stdout(&list).contains("SRX1569221851ID"),
        "{}",
        stdout(&list)
    );
    let show = bot(&["cases", "show", "1", "--state", &state]);
    assert!(stdout(&show).contains("outbox #"), "{}", stdout(&show));
    let missing = bot(&["cases", "show", "99", "--state", &state]);
    assert_eq!(missing.status.code(), Some(2));
}

#[test]
fn unreadable_file_is_named_and_the_others_still_run() {
    let good = fixtures().join("corpus/d008.eml").display().to_string();
    let o = bot(&["classify", "no/such/file.eml", &good]);
    assert_eq!(o.status.code(), Some(1));
    let text = stdout(&o);
    assert!(
        text.contains("no/such/file.eml: error: failed to read file"),
        "{text}"
    );
    assert!(text.contains("d008.eml: "), "{text}");
    let o = bot(&["replay", "no/such/file.eml", &good]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("d008.eml: "), "{}", stdout(&o));
}

#[test]
fn config_errors_name_file_and_key_and_exit_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[trust]\nauthserv_idz = [\"mx1\"]\n").expect("write");
    let o = bot(&["check-config", "--config", &config.display().to_string()]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("bad.toml") && err.contains("authserv_idz"),
        "{err}"
    );

    std::fs::write(&config, "[identity]\nfrom = \"not an address\"\n").expect("write");
    let o = bot(&[
        "classify",
        "--config",
        &config.display().to_string(),
        "x.eml",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("identity.from"), "{}", stderr(&o));
}

#[test]
fn check_config_renders_templates_and_names_a_bad_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let templates = dir.path().join("templates");
    std::fs::create_dir(&templates).expect("mkdir");
    std::fs::write(
        templates.join("escalation_reply.txt.hbs"),
        "Hello {{ticket_id}}, {{no_such_field}}\n",
    )
    .expect("write");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "[trust]\nauthserv_ids = [\"mx1.example.net\"]\n[templates]\ndir = \"templates\"\n",
    )
    .expect("write");
    let o = bot(&["check-config", "--config", &config.display().to_string()]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(
        err.contains("escalation_reply.txt.hbs") && err.contains("no_such_field"),
        "{err}"
    );

    std::fs::write(
        templates.join("escalation_reply.txt.hbs"),
        "Hello {{ticket_id}}\n",
    )
    .expect("write");
    let o = bot(&["check-config", "--config", &config.display().to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(": ok"), "{}", stdout(&o));
}

#[test]
fn example_config_in_repo_is_valid() {
    for config in ["examples/config.toml", "config.example.toml"] {
        assert!(
            Path::new(env!("CARGO_MANIFEST_DIR")).join(config).exists(),
            "{config}"
        );
        let o = bot(&["check-config", "--config", config]);
        assert!(o.status.success(), "{config}: {}", stderr(&o));
    }
}

#[test]
fn readable_password_files_are_flagged_and_the_state_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let pw = dir.path().join("imap-password");
    std::fs::write(&pw, "secret\n").expect("write");
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "[trust]\nauthserv_ids = [\"mx1.example.net\"]\n[mailbox]\nhost = \"imap.example.net\"\nusername = \"pm\"\npassword_file = \"imap-password\"\n",
    )
    .expect("write");
    let o = bot(&["check-config", "--config", &config.display().to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("imap-password is readable by others"),
        "{text}"
    );
    assert!(!text.contains("secret\n") && !stderr(&o).contains("secret\n"));

    let state = dir.path().join("state.sqlite3");
    let o = bot(&[
        "replay",
        "--state",
        &state.display().to_string(),
        "examples/thread",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mode = std::fs::metadata(&state)
        .expect("state exists")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn a_locked_state_file_is_a_clear_error_and_nothing_is_half_written() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state.sqlite3");
    let o = bot(&[
        "replay",
        "--state",
        &state.display().to_string(),
        "examples/thread/01-blocklist-bounce.eml",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let holder = rusqlite::Connection::open(&state).expect("open");
    holder.execute_batch("BEGIN EXCLUSIVE").expect("lock");
    let o = bot(&[
        "replay",
        "--config",
        "examples/config.toml",
        "--state",
        &state.display().to_string(),
        "examples/thread",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let text = format!("{}{}", stdout(&o), stderr(&o));
    assert!(text.contains("locked by another process"), "{text}");
    holder.execute_batch("ROLLBACK").expect("unlock");
    drop(holder);
    let db = rusqlite::Connection::open(&state).expect("open");
    let (messages, outbox): (i64, i64) = db
        .query_row(
            "SELECT (SELECT count(*) FROM messages), (SELECT count(*) FROM outbox)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("count");
    assert_eq!(
        (messages, outbox),
        (1, 1),
        "only the first run's work is there"
    );
}

#[test]
fn an_unwritable_state_path_is_a_clear_error() {
    let o = bot(&[
        "replay",
        "--state",
        "/nonexistent-folder/state.sqlite3",
        "examples/thread",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("failed to create state store /nonexistent-folder/state.sqlite3"),
        "{err}"
    );
}

#[test]
fn every_provider_config_block_in_the_readme_is_valid() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README");
    let section = readme
        .split("## Microsoft 365, Outlook.com and Gmail")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("the provider section");
    let blocks: Vec<&str> = section
        .split("```toml\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .collect();
    assert!(
        blocks.len() >= 3,
        "the provider sections end in config blocks"
    );
    for block in blocks {
        if let Err(e) = postmaster_bot::config::parse(block, "README.md") {
            panic!("README block does not parse: {e}\n{block}");
        }
    }
}

#[test]
fn auth_commands_need_an_oauth2_section_and_check_config_tells_what_to_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[trust]\nauthserv_ids = [\"mx1.example.net\"]\n").expect("write");
    let o = bot(&["auth", "login", "--config", &config.display().to_string()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("[oauth2]"), "{}", stderr(&o));
    std::fs::write(
        &config,
        "[trust]\nauthserv_ids = [\"mx1.example.net\"]\n[mailbox]\nhost = \"outlook.office365.com\"\nusername = \"pm@contoso.com\"\nauth = \"xoauth2\"\nfile_sent_copies = true\n[oauth2]\nprovider = \"microsoft\"\ntenant = \"contoso.com\"\nclient_id = \"abc\"\n",
    )
    .expect("write");
    let o = bot(&["check-config", "--config", &config.display().to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("auth login"), "{text}");
    assert!(text.contains("second copy"), "{text}");
    // XOAUTH2 without a token source is a config error naming the key.
    std::fs::write(
        &config,
        "[mailbox]\nhost = \"imap.gmail.com\"\nusername = \"pm\"\nauth = \"xoauth2\"\n",
    )
    .expect("write");
    let o = bot(&["check-config", "--config", &config.display().to_string()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("mailbox.auth"), "{}", stderr(&o));
}

/// A mode that sends needs `[smtp]`: `check-config` and `run` refuse it without, naming the key.
#[test]
fn a_mode_that_sends_needs_an_smtp_section() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("config.toml");
    for mode in ["auto", "approve"] {
        std::fs::write(
            &config,
            format!("mode = \"{mode}\"\n[trust]\nauthserv_ids = [\"mx1.example.net\"]\n[mailbox]\nhost = \"imap.example.net\"\nusername = \"pm\"\npassword_env = \"X\"\n"),
        )
        .expect("write");
        let path = config.display().to_string();
        for args in [
            vec!["check-config", "--config", &path],
            vec!["run", "--once", "--config", &path],
        ] {
            let o = bot(&args);
            assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
            assert!(
                stderr(&o).contains("key `smtp`") && stderr(&o).contains(mode),
                "{}",
                stderr(&o)
            );
        }
    }
}

/// Where a server does not file submitted mail, `check-config` says where the bot keeps sent
/// replies and what to set; where the operator turned the copies off, it says what that risks.
#[test]
fn check_config_says_where_sent_replies_are_kept() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("config.toml");
    let base = "[trust]\nauthserv_ids = [\"mx1.example.net\"]\n[mailbox]\nhost = \"imap.example.net\"\nusername = \"pm\"\npassword_env = \"X\"\n";
    let check = |extra: &str| {
        std::fs::write(&config, format!("{base}{extra}")).expect("write");
        let o = bot(&["check-config", "--config", &config.display().to_string()]);
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    let text = check("");
    assert!(
        text.contains("sent_folder is not set") && text.contains("sent_folder = \"Sent\""),
        "{text}"
    );
    let text = check("file_sent_copies = false\n");
    assert!(text.contains("a second reply"), "{text}");
    let text = check("sent_folder = \"Sent\"\n");
    assert!(!text.contains("sent_folder"), "{text}");
}

/// The quick-start replay with `-v`, its log written to a file as a service manager would, with
/// `extra` in the environment; the log's bytes.
fn replay_log_to_file(extra: &[(&str, &str)], journal: bool) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("temp dir");
    let log_path = dir.path().join("log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut command = Command::new(env!("CARGO_BIN_EXE_postmaster-bot"));
    command
        .args(["-v", "replay", "--config", "examples/config.toml", "--out"])
        .arg(dir.path().join("out"))
        .arg("examples/thread")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("NO_COLOR")
        .env_remove("JOURNAL_STREAM")
        .env_remove("RUST_LOG")
        .envs(extra.iter().copied())
        .stdout(std::process::Stdio::null());
    if journal {
        use std::os::unix::fs::MetadataExt;
        let meta = log.metadata().expect("log file metadata");
        command.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
    }
    let status = command.stderr(log).status().expect("binary runs");
    assert!(status.success());
    std::fs::read(&log_path).expect("log written")
}

#[test]
fn a_log_written_to_a_file_has_no_escape_bytes() {
    let log = replay_log_to_file(&[], false);
    let text = String::from_utf8_lossy(&log);
    assert!(text.contains("decision"), "{text}");
    assert!(
        !log.contains(&0x1b),
        "colour codes in a redirected log: {text}"
    );
    assert!(
        text.lines().all(|l| l.starts_with("20")),
        "each line starts with its timestamp: {text}"
    );
}

#[test]
fn in_the_journal_lines_carry_no_timestamp_of_ours() {
    let log = replay_log_to_file(&[], true);
    let text = String::from_utf8_lossy(&log);
    assert!(!log.contains(&0x1b), "{text}");
    assert!(
        text.lines().all(|l| l.trim_start().starts_with("INFO")),
        "journald stamps the lines itself: {text}"
    );
    // The variable only counts when stderr is the journal's own stream: inherited by a child
    // whose stderr goes elsewhere, it changes nothing.
    let elsewhere = replay_log_to_file(&[("JOURNAL_STREAM", "1:2")], false);
    assert!(String::from_utf8_lossy(&elsewhere)
        .lines()
        .all(|l| l.starts_with("20")));
}

/// A config whose mailbox is a port that accepts connections and never answers: a daemon on it
/// stays up (waiting for the server's greeting) until it is stopped.
fn silent_mailbox_config(dir: &Path, port: u16) -> std::path::PathBuf {
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"mode = "draft"
[identity]
from = "Postmaster <postmaster@example.net>"
operator = "noc@example.net"
message_id_domain = "postmaster.example.net"
[trust]
authserv_ids = ["mx1.example.net"]
[state]
path = "state.sqlite3"
[mailbox]
host = "127.0.0.1"
port = {port}
tls = "implicit"
username = "postmaster@example.net"
password_env = "PMB_TEST_PASSWORD"
"#
        ),
    )
    .expect("write config");
    config
}

#[test]
// Polls child processes from a plain test thread: no runtime to block.
#[allow(clippy::disallowed_methods)]
fn two_daemons_started_together_on_a_new_store_one_runs_and_the_other_says_why() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = silent.local_addr().expect("address").port();
    for attempt in 0..20 {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = silent_mailbox_config(dir.path(), port);
        let start = || {
            Command::new(env!("CARGO_BIN_EXE_postmaster-bot"))
                .args(["run", "--config"])
                .arg(&config)
                .current_dir(dir.path())
                .env("PMB_TEST_PASSWORD", "secret")
                .env_remove("RUST_LOG")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("binary starts")
        };
        let mut both = [start(), start()];
        // The one refused exits at once; the one running waits on the silent server.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let refused = loop {
            if let Some(i) = both
                .iter_mut()
                .position(|c| c.try_wait().expect("wait").is_some())
            {
                break i;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "attempt {attempt}: neither daemon was refused"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let running = 1 - refused;
        std::thread::sleep(std::time::Duration::from_millis(100));
        let still_running = both[running].try_wait().expect("wait").is_none();
        let _ = both[running].kill();
        let [a, b] = both;
        let (refused_out, running_out) = if refused == 0 { (a, b) } else { (b, a) };
        let refused_out = refused_out.wait_with_output().expect("output");
        let running_out = running_out.wait_with_output().expect("output");
        let refused_err = stderr(&refused_out);
        assert_eq!(
            refused_out.status.code(),
            Some(2),
            "attempt {attempt}: {refused_err}"
        );
        assert!(
            refused_err.contains("another postmaster-bot (pid ")
                && refused_err.contains("runs on this store"),
            "attempt {attempt}: {refused_err}"
        );
        assert!(
            still_running,
            "attempt {attempt}: the other daemon stopped: {}",
            stderr(&running_out)
        );
        for err in [&refused_err, &stderr(&running_out)] {
            assert!(!err.contains("already exists"), "attempt {attempt}: {err}");
            assert!(!err.contains("SQL logic error"), "attempt {attempt}: {err}");
        }
    }
    drop(silent);
}

#[test]
fn commands_opening_a_new_store_together_all_migrate_it_once() {
    for attempt in 0..10 {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = dir.path().join("state.sqlite3");
        let children: Vec<_> = (0..4)
            .map(|n| {
                Command::new(env!("CARGO_BIN_EXE_postmaster-bot"))
                    .args(["replay", "--config", "examples/config.toml", "--state"])
                    .arg(&state)
                    .arg("--out")
                    .arg(dir.path().join(format!("out{n}")))
                    .arg("examples/thread")
                    .current_dir(env!("CARGO_MANIFEST_DIR"))
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("binary starts")
            })
            .collect();
        for child in children {
            let o = child.wait_with_output().expect("output");
            assert!(o.status.success(), "attempt {attempt}: {}", stderr(&o));
        }
    }
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd/postmaster-bot.service"),
    )
    .expect("unit in contrib/systemd");
    // A config error or a second daemon on the store exits 2: restarting cannot help.
    assert!(unit.contains("RestartPreventExitStatus=2"));
    assert!(unit.contains("Restart=on-failure"));
    // The rules' warm-up lowers its own priority (setpriority, in @resources): never denied.
    assert!(!unit.contains("~@resources") && !unit.contains("@resources @"));
    // `verify` wants the unit's binary to exist: the one just built stands in for /usr/bin's.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("postmaster-bot.service");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/bin/postmaster-bot",
            env!("CARGO_BIN_EXE_postmaster-bot"),
        ),
    )
    .expect("write unit");
    let o = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "systemd-analyze cannot run ({e}): install it with `apt-get install systemd` \
                 (scripts/test does, as root)"
            )
        });
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(!err.contains("postmaster-bot.service"), "{err}");
}

#[test]
fn completions_and_the_man_page_come_from_the_command_line_itself() {
    for shell in ["bash", "zsh", "fish"] {
        let o = bot(&["completions", shell]);
        assert!(o.status.success(), "{shell}: {}", stderr(&o));
        let text = stdout(&o);
        for command in ["check-config", "replay", "run", "queue", "completions"] {
            assert!(text.contains(command), "{shell} lacks {command}");
        }
    }
    let o = bot(&["man"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let page = stdout(&o);
    assert!(page.contains(".TH postmaster-bot 1"), "{page}");
    for section in [
        ".SH SYNOPSIS",
        ".SH \"EXIT STATUS\"",
        ".SH ENVIRONMENT",
        ".SH FILES",
    ] {
        assert!(page.contains(section), "man page lacks {section}");
    }
}

#[test]
fn the_debian_package_installs_runs_and_is_removed() {
    assert!(
        rustix::process::geteuid().is_root(),
        "installing a package needs root: run the suite as root (`scripts/test` in CI)"
    );
    let installed = Command::new("dpkg")
        .args(["-s", "postmaster-bot"])
        .output()
        .expect("dpkg runs");
    assert!(
        !installed.status.success(),
        "postmaster-bot is installed on this machine as a package: this test installs and purges \
         its own, so remove it first (dpkg -r postmaster-bot)"
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The binary this suite already built (target/debug): packaging it needs no new build.
    let built = Command::new(root.join("scripts/package-deb"))
        .args(["--no-build", "dev"])
        .current_dir(root)
        .output()
        .expect("scripts/package-deb runs");
    assert!(built.status.success(), "{}", stderr(&built));
    let deb = stdout(&built)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();
    assert!(deb.ends_with(".deb"), "{deb}");
    let dpkg = |args: &[&str]| {
        let o = Command::new("dpkg").args(args).output().expect("dpkg runs");
        assert!(o.status.success(), "dpkg {args:?}: {}", stderr(&o));
    };
    dpkg(&["-i", &root.join(&deb).display().to_string()]);
    struct Purge;
    impl Drop for Purge {
        fn drop(&mut self) {
            let _ = Command::new("dpkg").args(["-P", "postmaster-bot"]).output();
        }
    }
    let _purge = Purge;
    let version = Command::new("/usr/bin/postmaster-bot")
        .arg("--version")
        .output()
        .expect("installed binary runs");
    assert!(
        stdout(&version).contains(env!("CARGO_PKG_VERSION")),
        "{}",
        stdout(&version)
    );
    let check = Command::new("/usr/bin/postmaster-bot")
        .args([
            "check-config",
            "--config",
            "/etc/postmaster-bot/config.toml",
        ])
        .output()
        .expect("installed binary runs");
    assert!(check.status.success(), "{}", stderr(&check));
    for file in [
        "/lib/systemd/system/postmaster-bot.service",
        "/usr/share/man/man1/postmaster-bot.1.gz",
        "/usr/share/bash-completion/completions/postmaster-bot",
        "/usr/share/zsh/vendor-completions/_postmaster-bot",
        "/usr/share/fish/vendor_completions.d/postmaster-bot.fish",
    ] {
        assert!(Path::new(file).exists(), "{file} not installed");
    }
    drop(_purge);
    assert!(!Path::new("/usr/bin/postmaster-bot").exists(), "removed");
}
