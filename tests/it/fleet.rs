//! Several instances on one PostgreSQL store, on the real Dovecot + Postfix: mailboxes are
//! spread by leases, a killed holder's mailbox is taken over within the lease, a paused one
//! never sends after it wakes, and a clean stop hands its mailboxes over at once. Every
//! escalation reply is counted where it arrives: exactly one per ticket.
// These tests are plain threads waiting for real servers, not async code: sleeping is the point.
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use postmaster_bot::shell::store::Store;

use crate::live::{setup, Case, Daemon, THREAD};

/// The lease time of these tests (the default is 30 s).
const TTL: u64 = 5;

/// Three (or two) test mailboxes as `[[mailbox]]` entries of one config on a PostgreSQL schema
/// of its own.
struct Fleet {
    dir: tempfile::TempDir,
    config: PathBuf,
    schema: String,
}

impl Fleet {
    fn new(cases: &[&Case]) -> Fleet {
        let dir = tempfile::tempdir().expect("temp dir");
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let schema = format!(
            "fleet_{}_{}_{}",
            std::process::id(),
            postmaster_bot::clock::now(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let first = std::fs::read_to_string(&cases[0].config).expect("config");
        let (top, rest) = first.split_once("[state]").expect("a [state] section");
        let policy = &rest[rest.find("[policy]").expect("[policy]")..];
        let (policy, _) = policy.split_once("[mailbox]").expect("[mailbox]");
        let smtp = &first[first.find("[smtp]").expect("[smtp]")..];
        let crate::support::Backend::Postgres { url, password } = crate::support::postgres_server()
        else {
            unreachable!("postgres_server returns a server")
        };
        std::fs::write(dir.path().join("pg-password"), password).expect("password file");
        let mut text = format!(
            "{top}[state]\nurl = \"{url}\"\nschema = \"{schema}\"\npassword_file = \"pg-password\"\nlease_seconds = {TTL}\n{policy}{smtp}"
        );
        for (i, case) in cases.iter().enumerate() {
            let own = std::fs::read_to_string(&case.config).expect("config");
            let start = own.find("[mailbox]\n").expect("[mailbox]") + "[mailbox]\n".len();
            let end = own.find("[smtp]").expect("[smtp]");
            // No teach folders: nine CREATEs per session start are seconds on a busy server,
            // and nothing here teaches.
            let settings: String = own[start..end]
                .lines()
                .filter(|l| !l.starts_with("teach_folder"))
                .map(|l| format!("{l}\n"))
                .collect();
            text.push_str(&format!(
                "[[mailbox]]\nname = \"m{}\"\n{settings}teach_folder = \"\"\n",
                i + 1
            ));
        }
        let config = dir.path().join("config.toml");
        std::fs::write(&config, text).expect("write config");
        Fleet {
            dir,
            config,
            schema,
        }
    }

    /// Starts an instance logging to `<name>.log`; `stall` arms the catch-up stall point.
    fn start(&self, name: &str, stall: Option<&Path>) -> (Daemon, PathBuf) {
        let log = self.dir.path().join(format!("{name}.log"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_postmaster-bot"));
        command
            .args(["run", "--config", &self.config.display().to_string()])
            .current_dir(self.dir.path())
            .env("PMB_TEST_PASSWORD", "password")
            .env("RUST_LOG", "postmaster_bot=info")
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        if let Some(marker) = stall {
            command.env(
                "POSTMASTER_BOT_STALLPOINT",
                format!("after_fetch:{}", marker.display()),
            );
        }
        (Daemon(command.spawn().expect("instance starts")), log)
    }

    fn store(&self) -> Store {
        crate::support::postgres_store(&self.schema)
    }

    /// Who holds each mailbox's lease now (expired leases hold nothing).
    fn holders(&self) -> Vec<(String, Option<String>)> {
        self.store()
            .leases()
            .expect("leases")
            .into_iter()
            .map(|l| (l.mailbox, l.holder.filter(|_| l.expires_in > 0)))
            .collect()
    }

    fn holder_of(&self, mailbox: &str) -> Option<String> {
        self.holders()
            .into_iter()
            .find(|(m, _)| m == mailbox)
            .and_then(|(_, h)| h)
    }

    /// Handled messages of a folder (each has its decision recorded).
    fn decided(&self, folder: &str) -> i64 {
        self.store()
            .select(
                "SELECT count(*) FROM messages WHERE source LIKE ?1",
                &[postmaster_bot::shell::store::Value::Text(format!(
                    "{folder}/%"
                ))],
            )
            .expect("count")[0]
            .int(0)
            .expect("a count")
    }
}

/// Delivers the ticket thread into a case's folder with Message-IDs of its own: the mailboxes
/// share one store, which handles a message once whichever mailbox it arrives in.
fn deliver_own_thread(case: &Case, tag: &str) {
    let ids = regex::Regex::new(r"(?im)^message-id:\s*<([^>]+)>").expect("regex");
    let texts: Vec<String> = THREAD
        .iter()
        .map(|f| String::from_utf8_lossy(&case.fixture(f)).into_owned())
        .collect();
    let originals: Vec<String> = texts
        .iter()
        .filter_map(|t| ids.captures(t).map(|c| c[1].to_string()))
        .collect();
    let raw: Vec<Vec<u8>> = texts
        .into_iter()
        .map(|mut text| {
            for id in &originals {
                text = text.replace(id.as_str(), &format!("{tag}.{id}"));
            }
            text.replace("\r\n", "\n")
                .replace('\n', "\r\n")
                .into_bytes()
        })
        .collect();
    case.deliver_raw(&raw);
}

/// Waits (at most `limit`) until `ready`; how long that took.
fn wait_until(limit: Duration, what: &str, mut ready: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The id an instance logged when it started.
fn instance_id(log: &Path) -> String {
    let text = log_of(log);
    let line = text
        .lines()
        .find(|l| l.contains("working mailboxes under leases"))
        .unwrap_or_else(|| panic!("no start line: {text}"));
    let start = line.find("instance=").expect("instance=") + "instance=".len();
    line[start..]
        .split_whitespace()
        .next()
        .expect("an id")
        .to_string()
}

fn signal(daemon: &Daemon, name: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{name}"), &daemon.0.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(ok.success(), "kill -{name}");
}

#[test]
fn a_holder_killed_in_its_catch_up_is_replaced_within_the_lease_and_every_reply_goes_once() {
    let cases: Vec<Case> = (0..3).map(|_| setup("auto", "")).collect();
    for (i, case) in cases.iter().enumerate() {
        deliver_own_thread(case, &format!("m{}", i + 1));
    }
    let fleet = Fleet::new(&cases.iter().collect::<Vec<_>>());
    let marker = fleet.dir.path().join("stalled");
    // Alone, the first instance takes all three mailboxes and stops in the middle of the first
    // catch-up that fetches a message, as a process is when the machine hangs.
    let (mut first, first_log) = fleet.start("first", Some(&marker));
    wait_until(Duration::from_secs(30), "the first instance stalls", || {
        marker.exists()
    });
    let first_id = instance_id(&first_log);
    let (second, second_log) = fleet.start("second", None);
    let (third, third_log) = fleet.start("third", None);
    for log in [&second_log, &third_log] {
        wait_until(Duration::from_secs(30), "the others start", || {
            log_of(log).contains("working mailboxes under leases")
        });
    }
    std::thread::sleep(Duration::from_millis(1500));
    signal(&first, "KILL");
    let _ = first.0.wait();
    let took = wait_until(
        Duration::from_secs(TTL + 10),
        "every mailbox held by a live instance",
        || {
            let holders = fleet.holders();
            holders.len() == 3
                && holders
                    .iter()
                    .all(|(_, h)| h.as_ref().is_some_and(|h| *h != first_id))
        },
    );
    assert!(
        took <= Duration::from_secs(TTL + 1) + Duration::from_millis(1500),
        "taken over {took:?} after the kill (lease {TTL} s + one look)"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while cases.iter().any(|c| c.delivered_replies().is_empty()) {
        assert!(
            Instant::now() < deadline,
            "no reply on some ticket in 60 s:\n--- first\n{}\n--- second\n{}\n--- third\n{}",
            log_of(&first_log),
            log_of(&second_log),
            log_of(&third_log)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for case in &cases {
        wait_until(Duration::from_secs(15), "every message decided", || {
            fleet.decided(&case.folder) == THREAD.len() as i64
        });
    }
    std::thread::sleep(Duration::from_millis(1500));
    for case in &cases {
        assert_eq!(case.delivered_replies().len(), 1, "exactly once");
    }
    for (mut daemon, log) in [(second, second_log), (third, third_log)] {
        let status = daemon.stop();
        assert!(status.success(), "{status}: {}", log_of(&log));
    }
}

#[test]
fn a_holder_paused_past_its_lease_sends_nothing_after_it_wakes_and_gives_the_mailbox_up() {
    let case = setup("auto", "");
    let fleet = Fleet::new(&[&case]);
    let (mut first, first_log) = fleet.start("first", None);
    wait_until(
        Duration::from_secs(30),
        "the first instance holds m1",
        || log_of(&first_log).contains("lease taken"),
    );
    let first_id = instance_id(&first_log);
    let (mut second, second_log) = fleet.start("second", None);
    wait_until(Duration::from_secs(60), "the second starts", || {
        log_of(&second_log).contains("working mailboxes under leases")
    });
    signal(&first, "STOP");
    wait_until(
        Duration::from_secs(TTL + 10),
        "the second takes m1 over",
        || fleet.holder_of("m1").is_some_and(|h| h != first_id),
    );
    // The refusal arrives while the first is frozen: the second answers it, once.
    case.deliver(&THREAD);
    wait_until(Duration::from_secs(60), "the second answers", || {
        !case.delivered_replies().is_empty()
    });
    signal(&first, "CONT");
    wait_until(Duration::from_secs(10), "the first gives m1 up", || {
        let text = log_of(&first_log);
        text.contains("lease lost") || text.contains("gave the mailbox up")
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        case.delivered_replies().len(),
        1,
        "the woken instance sent nothing: {}",
        log_of(&first_log)
    );
    assert!(fleet.holder_of("m1").is_some_and(|h| h != first_id));
    let listing = Command::new(env!("CARGO_BIN_EXE_postmaster-bot"))
        .args(["instances", "--config", &fleet.config.display().to_string()])
        .current_dir(fleet.dir.path())
        .output()
        .expect("instances runs");
    let shown = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.status.success() && shown.contains("mailbox m1"),
        "{shown}"
    );
    for daemon in [&mut first, &mut second] {
        let status = daemon.stop();
        assert!(status.success(), "{status}");
    }
}

#[test]
fn a_clean_stop_hands_its_mailbox_over_in_under_two_seconds() {
    let cases: Vec<Case> = (0..2).map(|_| setup("auto", "")).collect();
    let fleet = Fleet::new(&cases.iter().collect::<Vec<_>>());
    let (mut first, first_log) = fleet.start("first", None);
    wait_until(Duration::from_secs(30), "the first holds both", || {
        log_of(&first_log).matches("lease taken").count() == 2
    });
    let first_id = instance_id(&first_log);
    let (mut second, second_log) = fleet.start("second", None);
    // The newcomer gets its fair share: one mailbox each, each caught up and waiting.
    wait_until(Duration::from_secs(60), "one mailbox each", || {
        let holders = fleet.holders();
        holders
            .iter()
            .filter(|(_, h)| h.as_deref() == Some(&first_id))
            .count()
            == 1
            && holders.iter().filter(|(_, h)| h.is_some()).count() == 2
            && log_of(&second_log).contains("caught up: waiting for new mail")
    });
    let kept = fleet
        .holders()
        .into_iter()
        .find(|(_, h)| h.as_deref() == Some(&first_id))
        .map(|(m, _)| m)
        .expect("the first holds one");
    wait_until(
        Duration::from_secs(60),
        "the first's mailbox caught up",
        || {
            log_of(&first_log).lines().any(|l| {
                l.contains(&format!("mailbox{{mailbox={kept}}}"))
                    && l.contains("caught up: waiting for new mail")
            })
        },
    );
    let stopped = Instant::now();
    let status = first.stop();
    assert!(status.success(), "{status}: {}", log_of(&first_log));
    let took = wait_until(Duration::from_secs(10), "the second takes it", || {
        fleet.holder_of(&kept).is_some_and(|h| h != first_id)
    });
    let total = stopped.elapsed();
    assert!(
        total < Duration::from_secs(2),
        "handed over in {total:?} ({took:?} after the first exited):\n--- first\n{}\n--- second\n{}",
        log_of(&first_log),
        log_of(&second_log)
    );
    let status = second.stop();
    assert!(status.success(), "{status}");
}
