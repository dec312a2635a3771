//! The live bot against the real Dovecot and Postfix started by `scripts/mailstack up`.
//! Each test works in its own folders with its own ticket id, so tests run in parallel.
// These tests are plain threads waiting for real servers, not async code: sleeping is the point.
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use postmaster_bot::config;
use postmaster_bot::shell::imap::Imap;
use postmaster_bot::shell::store::{Store, Value};
use secrecy::SecretString;

use crate::support::fixtures;

/// The running mail stack, from `$POSTMASTER_BOT_MAILSTACK/env`.
pub(crate) struct Stack {
    pub(crate) imaps_port: u16,
    pub(crate) smtps_port: u16,
    ca: String,
}

/// The `KEY=value` lines a test server's script wrote to DIR/env, as a lookup that fails the
/// test (saying how to start `what`) when the file or a key is missing.
fn server_env(dir: &str, what: &str, start: &str) -> impl Fn(&str) -> String {
    let env_file = PathBuf::from(dir).join("env");
    let text = std::fs::read_to_string(&env_file).unwrap_or_else(|_| {
        panic!(
            "{what} is not running ({} is missing): {start}",
            env_file.display()
        )
    });
    move |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key} missing in {}", env_file.display()))
            .to_string()
    }
}

fn stack() -> Stack {
    let dir = std::env::var("POSTMASTER_BOT_MAILSTACK")
        .unwrap_or_else(|_| "/tmp/postmaster-bot-mailstack".to_string());
    let get = server_env(
        &dir,
        "the test mail stack",
        "start it with `scripts/mailstack up` (as root), or run `scripts/test`, which starts it",
    );
    let s = Stack {
        imaps_port: get("MAILSTACK_IMAPS_PORT").parse().expect("port"),
        smtps_port: get("MAILSTACK_SMTPS_PORT").parse().expect("port"),
        ca: get("MAILSTACK_CA_CERT"),
    };
    if std::net::TcpStream::connect(("127.0.0.1", s.imaps_port)).is_err() {
        panic!(
            "the test mail stack is not answering on 127.0.0.1:{}: start it with `scripts/mailstack up` (as root)",
            s.imaps_port
        );
    }
    s
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique tag for this test's folders and ticket id.
fn unique() -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let t = postmaster_bot::clock::now() as u32 % 100_000;
    format!("{:05}{:02}{:03}", t, n, std::process::id() % 1000)
}

/// Where the bot's mailbox lives: this user on this IMAPS port (Dovecot's, or a Cyrus
/// instance's with its own fresh user). The Microsoft side is always on Dovecot.
pub(crate) struct Mailbox {
    pub(crate) port: u16,
    pub(crate) user: String,
    pub(crate) ca: String,
}

/// The user name tests pass to `Case::connect` and `Case::messages` for the bot's own mailbox,
/// wherever it lives.
pub(crate) const MAILBOX: &str = "postmaster@example.net";

pub(crate) struct Case {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) mailbox: Mailbox,
    pub(crate) config: PathBuf,
    pub(crate) folder: String,
    pub(crate) drafts: String,
    pub(crate) review: String,
    pub(crate) approved: String,
    /// Where the bot files sent replies: this test's own folder, so that tests sharing the
    /// mailbox never see each other's replies as earlier ones.
    pub(crate) sent: String,
    ticket: String,
    pub(crate) stack: Stack,
}

pub(crate) fn setup(mode: &str, extra: &str) -> Case {
    let stack = stack();
    let tag = unique();
    let folder = format!("t{tag}");
    let extra = if extra.contains("sent_folder") {
        extra.to_string()
    } else {
        format!("sent_folder = \"{folder}-Sent\"\n{extra}")
    };
    let mailbox = Mailbox {
        port: stack.imaps_port,
        user: MAILBOX.to_string(),
        ca: stack.ca.clone(),
    };
    let folders = format!(
        r#"folder = "{folder}"
drafts_folder = "{folder}-Drafts"
review_folder = "{folder}-Review"
approved_folder = "{folder}-Approved"
teach_folder = "{folder}-Teach"
{extra}"#
    );
    let case = Case {
        dir: tempfile::tempdir().expect("temp dir"),
        config: PathBuf::new(),
        mailbox,
        drafts: format!("{folder}-Drafts"),
        review: format!("{folder}-Review"),
        approved: format!("{folder}-Approved"),
        sent: format!("{folder}-Sent"),
        folder,
        ticket: format!("SRX{}ID", &format!("17{tag}")[..10]),
        stack,
    };
    let case = case.with_config(mode, &folders);
    block_on(async {
        let mut imap = case.connect(MAILBOX).await;
        for f in [&case.folder, &case.drafts, &case.review, &case.approved] {
            imap.ensure_folder(f, None).await.expect("create folder");
        }
        imap.logout().await;
    });
    case
}

/// A Cyrus instance of `scripts/cyrus`, by its namespace layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cyrus {
    /// `altnamespace: no`: personal folders are `INBOX.x`, `.` separates levels.
    Standard,
    /// `altnamespace: yes` with `unixhierarchysep`: folders beside INBOX, `/` separates.
    Alternative,
    /// As `Standard`, with MOVE hidden from CAPABILITY.
    WithoutMove,
}

impl Cyrus {
    /// The server's name for a folder the config writes the plain way.
    pub(crate) fn name(self, plain: &str) -> String {
        match self {
            Cyrus::Alternative => plain.to_string(),
            _ if plain == "INBOX" => plain.to_string(),
            _ => format!("INBOX.{}", plain.replace('/', ".")),
        }
    }

    fn port_key(self) -> &'static str {
        match self {
            Cyrus::Standard => "CYRUS_STD_IMAPS_PORT",
            Cyrus::Alternative => "CYRUS_ALT_IMAPS_PORT",
            Cyrus::WithoutMove => "CYRUS_NOMOVE_IMAPS_PORT",
        }
    }
}

/// Cyrus tests' users are created one at a time: they share one SASL database.
static CYRUS_USERS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A test on a fresh Cyrus user (only INBOX exists) whose config names every folder the plain
/// way (`Drafts`, `postmaster-bot/Review`...) and leaves Drafts and Sent to the server.
pub(crate) fn setup_on_cyrus(layout: Cyrus, mode: &str, extra: &str) -> Case {
    let stack = stack();
    let dir = std::env::var("POSTMASTER_BOT_CYRUS")
        .unwrap_or_else(|_| "/tmp/postmaster-bot-cyrus".to_string());
    let start =
        "start it with `scripts/cyrus up` (as root), or run `scripts/test`, which starts it";
    let get = server_env(&dir, "Cyrus IMAP", start);
    let port: u16 = get(layout.port_key()).parse().expect("port");
    if std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        panic!("Cyrus IMAP ({layout:?}) is not answering on 127.0.0.1:{port}: {start}");
    }
    let tag = unique();
    let user = format!("t{tag}@example.net");
    {
        let _one_at_a_time = CYRUS_USERS.lock().unwrap_or_else(|e| e.into_inner());
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cyrus");
        let made = Command::new(&script)
            .args(["reset-user", &user, &dir])
            .output()
            .expect("scripts/cyrus runs");
        assert!(
            made.status.success(),
            "scripts/cyrus reset-user {user} failed (it needs root): {}",
            String::from_utf8_lossy(&made.stderr)
        );
    }
    let case = Case {
        dir: tempfile::tempdir().expect("temp dir"),
        config: PathBuf::new(),
        mailbox: Mailbox {
            port,
            user,
            ca: get("CYRUS_CA_CERT"),
        },
        folder: "INBOX".to_string(),
        drafts: layout.name("Drafts"),
        review: layout.name("postmaster-bot/Review"),
        approved: layout.name("postmaster-bot/Approved"),
        sent: layout.name("Sent"),
        ticket: format!("SRX{}ID", &format!("17{tag}")[..10]),
        stack,
    };
    case.with_config(mode, extra)
}

pub(crate) fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

impl Case {
    /// Writes the config: `mailbox_settings` are this test's folder settings and extras.
    fn with_config(mut self, mode: &str, mailbox_settings: &str) -> Case {
        self.config = self.dir.path().join("config.toml");
        let state = crate::support::state_section(self.dir.path());
        let text = format!(
            r#"mode = "{mode}"
[identity]
from = "Dana Whitfield <postmaster@example.net>"
operator = "noc@example.net"
message_id_domain = "postmaster.example.net"
[trust]
authserv_ids = ["mx1.example.net"]
{state}[policy]
notify_on_open_case = false
notify_on_close_case = false
[mailbox]
host = "127.0.0.1"
port = {imaps}
tls = "implicit"
username = "{user}"
password_env = "PMB_TEST_PASSWORD"
ca_file = "{mailbox_ca}"
{mailbox_settings}
[smtp]
host = "127.0.0.1"
port = {smtps}
tls = "implicit"
username = "postmaster@example.net"
password_env = "PMB_TEST_PASSWORD"
ca_file = "{ca}"
"#,
            imaps = self.mailbox.port,
            user = self.mailbox.user,
            mailbox_ca = self.mailbox.ca,
            smtps = self.stack.smtps_port,
            ca = self.stack.ca,
        );
        std::fs::write(&self.config, text).expect("write config");
        self
    }

    /// The test stack's CA file (its folder also holds the server certificate and key).
    pub(crate) fn stack_ca(&self) -> String {
        self.stack.ca.clone()
    }

    /// Logs in as `user` on Dovecot, or, for `MAILBOX`, wherever the bot's mailbox lives.
    pub(crate) async fn connect(&self, user: &str) -> Imap {
        let (port, user, ca) = if user == MAILBOX {
            (
                self.mailbox.port,
                self.mailbox.user.as_str(),
                &self.mailbox.ca,
            )
        } else {
            (self.stack.imaps_port, user, &self.stack.ca)
        };
        let cfg = config::parse(
            &format!(
                "[mailbox]\nhost = \"127.0.0.1\"\nport = {port}\nusername = \"{user}\"\npassword_env = \"X\"\nca_file = \"{ca}\"\n"
            ),
            "test",
        )
        .expect("valid")
        .mailbox
        .expect("mailbox");
        let _ = rustls::crypto::ring::default_provider().install_default();
        Imap::connect(&cfg, &SecretString::from("password".to_string()))
            .await
            .expect("test IMAP login")
    }

    /// A corpus message made current: today's date, this test's ticket id, and the Microsoft
    /// side's address the test stack knows.
    pub(crate) fn fixture(&self, file: &str) -> Vec<u8> {
        // A bare name is a corpus file; `hostile/h01...` names another fixture set.
        let path = if file.contains('/') {
            fixtures().join(file)
        } else {
            fixtures().join("corpus").join(file)
        };
        let raw = std::fs::read(&path).expect("fixture");
        let text = String::from_utf8_lossy(&raw)
            .replace("SRX1569221851ID", &self.ticket)
            .replace("srx1569221851id", &self.ticket.to_ascii_lowercase())
            .replace("olcdeliverability@microsoft.com", "support@microsoft.com")
            .replace("olc-noreply@microsoft.com", "support@microsoft.com");
        let now = postmaster_bot::pipeline::render::rfc2822(postmaster_bot::clock::now());
        let mut out = String::new();
        for line in text.split_inclusive('\n') {
            if line.starts_with("Date:") {
                out.push_str(&format!("Date: {now}\n"));
            } else {
                out.push_str(line);
            }
        }
        out.into_bytes()
    }

    /// Appends these messages, as they are, to the watched folder.
    pub(crate) fn deliver_raw(&self, messages: &[Vec<u8>]) {
        block_on(async {
            let mut imap = self.connect(MAILBOX).await;
            for raw in messages {
                imap.append(&self.folder, "()", raw).await.expect("append");
            }
            imap.logout().await;
        });
    }

    pub(crate) fn deliver(&self, files: &[&str]) {
        block_on(async {
            let mut imap = self.connect("postmaster@example.net").await;
            for f in files {
                // As an MTA delivers it: CRLF line ends (Cyrus refuses bare newlines).
                let text = String::from_utf8_lossy(&self.fixture(f))
                    .replace("\r\n", "\n")
                    .replace('\n', "\r\n");
                imap.append(&self.folder, "()", text.as_bytes())
                    .await
                    .expect("append");
            }
            imap.logout().await;
        });
    }

    pub(crate) fn bot(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_postmaster-bot"))
            .args(args)
            .current_dir(self.dir.path())
            .env("PMB_TEST_PASSWORD", "password")
            .output()
            .expect("binary runs")
    }

    /// `run --once` after the global `flags` (`-v`), whatever its outcome.
    pub(crate) fn try_run_once(&self, flags: &[&str]) -> Output {
        let config = self.config.display().to_string();
        let mut args = flags.to_vec();
        args.extend(["run", "--once", "--config", &config]);
        self.bot(&args)
    }

    /// `run --once -v`, which must succeed; returns its log.
    pub(crate) fn run_once_logged(&self) -> String {
        let o = self.try_run_once(&["-v"]);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{err}");
        err
    }

    pub(crate) fn run_once(&self) {
        let o = self.try_run_once(&[]);
        assert!(
            o.status.success(),
            "run --once failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// The id of the first row `queue list` shows.
    pub(crate) fn first_queued(&self) -> String {
        let config = self.config.display().to_string();
        let list = self.bot(&["queue", "list", "--config", &config]);
        let listing = String::from_utf8_lossy(&list.stdout).to_string();
        listing
            .split_whitespace()
            .find_map(|w| w.strip_prefix('#'))
            .unwrap_or_else(|| panic!("no queued reply: {listing}"))
            .to_string()
    }

    /// Another `run --once`, then the replies that reached the Microsoft side, counted after
    /// time enough for a reply sent in that run to arrive.
    pub(crate) fn replies_after_another_run(&self) -> usize {
        self.run_once();
        std::thread::sleep(Duration::from_millis(1500));
        self.delivered_replies().len()
    }

    /// Rewrites this test's config file.
    pub(crate) fn edit_config(&self, edit: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(&self.config).expect("config");
        std::fs::write(&self.config, edit(text)).expect("write config");
    }

    /// Deletes the state store, as a lost volume or a new host would.
    pub(crate) fn lose_state(&self) {
        crate::support::lose_test_store(self.dir.path());
    }

    /// The two text columns of each row a query returns (NULL as empty).
    pub(crate) fn pairs(&self, sql: &str) -> Vec<(String, String)> {
        self.query(sql, &[])
            .into_iter()
            .map(|r| {
                let text = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
                (text(0), text(1))
            })
            .collect()
    }

    /// The one integer a counting query returns.
    pub(crate) fn count(&self, sql: &str, params: &[Value]) -> i64 {
        self.store().select(sql, params).expect("count")[0]
            .int(0)
            .expect("a count")
    }

    /// The state store this test's config names.
    pub(crate) fn store(&self) -> Store {
        crate::support::test_store(self.dir.path())
    }

    /// The rows of a query on the state store, each column as text.
    pub(crate) fn query(&self, sql: &str, params: &[Value]) -> Vec<Vec<Option<String>>> {
        let store = self.store();
        store
            .select(sql, params)
            .expect("query")
            .iter()
            .map(|r| (0..r.len()).map(|i| r.text(i)).collect())
            .collect()
    }

    /// `cases show` of every case as text.
    pub(crate) fn cases_shown(&self) -> String {
        let config = self.config.display().to_string();
        let mut text = String::new();
        for id in 1..=3 {
            let o = self.bot(&["cases", "show", &id.to_string(), "--config", &config]);
            text.push_str(&String::from_utf8_lossy(&o.stdout));
        }
        text
    }

    /// Points `[mailbox]` at another IMAPS port: a fault proxy or a scripted server.
    pub(crate) fn point_imap_at(&self, port: u16) {
        let stack_port = format!("port = {}", self.stack.imaps_port);
        self.edit_config(|t| t.replacen(&stack_port, &format!("port = {port}"), 1));
    }

    pub(crate) fn messages(&self, user: &str, folder: &str) -> Vec<Vec<u8>> {
        block_on(async {
            let mut imap = self.connect(user).await;
            imap.select(folder).await.expect("select");
            let uids = imap.uids_after(0).await.expect("search");
            let all = imap.fetch(&uids).await.expect("fetch");
            imap.logout().await;
            all.into_iter().map(|(_, b)| b).collect()
        })
    }

    /// How many messages in one of the bot's folders carry no \\Seen flag.
    pub(crate) fn unread(&self, folder: &str) -> usize {
        block_on(async {
            let mut imap = self.connect(MAILBOX).await;
            imap.select(folder).await.expect("select");
            let flags = imap.flags().await.expect("flags");
            imap.logout().await;
            flags
                .iter()
                .filter(|(_, f)| !f.iter().any(|f| f.contains("Seen")))
                .count()
        })
    }

    /// Replies to this test's ticket that reached the Microsoft side's INBOX.
    pub(crate) fn delivered_replies(&self) -> Vec<mail_parser::Message<'static>> {
        self.messages("support@microsoft.com", "INBOX")
            .into_iter()
            .filter_map(|b| {
                mail_parser::MessageParser::default()
                    .parse(&b)
                    .map(|m| m.into_owned())
            })
            .filter(|m| m.subject().is_some_and(|s| s.contains(&self.ticket)))
            .collect()
    }

    pub(crate) fn wait_for_replies(&self, n: usize) -> Vec<mail_parser::Message<'static>> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let got = self.delivered_replies();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A config edit: the operator is also told about escalations.
fn notify_on_escalation(config: String) -> String {
    config.replace(
        "notify_on_close_case = false",
        "notify_on_close_case = false\nnotify_on_escalation = true",
    )
}

pub(crate) const THREAD: [&str; 3] = ["d006.eml", "d007.eml", "d008.eml"];
const REFUSAL_ID: &str =
    "CH3PR21MB9986072BF6F670B8599A9D007CAB5A882C56@CH3PR21MB9986.namprd21.prod.outlook.com";

#[test]
fn draft_mode_produces_exactly_one_threaded_draft() {
    let case = setup("draft", "");
    case.deliver(&THREAD);
    case.run_once();
    case.run_once();
    // And after the state file is lost: the draft in the Drafts folder is the witness.
    case.lose_state();
    let log = case.run_once_logged();
    let drafts = case.messages("postmaster@example.net", &case.drafts);
    assert_eq!(
        drafts.len(),
        1,
        "one draft, even after a second run and a lost state file: {log}"
    );
    let draft = mail_parser::MessageParser::default()
        .parse(&drafts[0])
        .expect("parses");
    assert_eq!(draft.in_reply_to().as_text(), Some(REFUSAL_ID));
    assert!(draft
        .subject()
        .is_some_and(|s| s.starts_with("RE: ") && s.contains(&case.ticket)));
    assert!(
        case.delivered_replies().is_empty(),
        "draft mode never sends"
    );
}

#[test]
fn auto_mode_sends_exactly_one_reply_on_the_thread() {
    let case = setup("auto", "");
    case.deliver(&THREAD);
    case.run_once();
    let replies = case.wait_for_replies(1);
    assert_eq!(replies.len(), 1);
    let reply = &replies[0];
    assert_eq!(reply.in_reply_to().as_text(), Some(REFUSAL_ID));
    let refs = reply
        .references()
        .as_text_list()
        .map(|l| l.to_vec())
        .unwrap_or_default();
    assert_eq!(
        refs.last().map(|r| r.as_ref()),
        Some(REFUSAL_ID),
        "{refs:?}"
    );
    assert!(reply.subject().is_some_and(|s| s.starts_with("RE: ")));
    // Running again, and the same message delivered again, never produce a second reply.
    case.deliver(&["d008.eml"]);
    assert_eq!(case.replies_after_another_run(), 1);
}

#[test]
fn approve_mode_sends_nothing_until_approved_then_once() {
    let case = setup("approve", "");
    case.deliver(&THREAD);
    case.run_once();
    assert_eq!(
        case.messages("postmaster@example.net", &case.review).len(),
        1,
        "mirrored for review"
    );
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        case.delivered_replies().is_empty(),
        "nothing leaves without approval"
    );
    let config = case.config.display().to_string();
    let id = case.first_queued();
    let ok = case.bot(&["queue", "approve", &id, "--config", &config]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let again = case.bot(&["queue", "approve", &id, "--config", &config]);
    assert_eq!(again.status.code(), Some(2), "an approval applies once");
    case.run_once();
    case.run_once();
    assert_eq!(case.wait_for_replies(1).len(), 1);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(case.delivered_replies().len(), 1);
    assert!(
        case.messages("postmaster@example.net", &case.review)
            .is_empty(),
        "the review draft of a sent reply is gone"
    );
}

/// A person approves in a mail client: the one review copy, edited by `edit`, is put into the
/// approved folder (the original stays behind, as a client that saves an edit as a new draft
/// leaves it). Then exactly one reply goes out, once, and no draft of it is left in either
/// folder. The reply that went out.
fn approve_in_a_mail_client(
    case: &Case,
    edit: impl Fn(&str) -> String,
) -> mail_parser::Message<'static> {
    let review = case.messages("postmaster@example.net", &case.review);
    assert_eq!(review.len(), 1, "one review copy");
    let edited = edit(&String::from_utf8_lossy(&review[0]));
    block_on(async {
        let mut imap = case.connect("postmaster@example.net").await;
        imap.append(&case.approved, "(\\Draft)", edited.as_bytes())
            .await
            .expect("append");
        imap.logout().await;
    });
    case.run_once();
    let mut replies = case.wait_for_replies(1);
    assert_eq!(replies.len(), 1);
    assert_eq!(case.replies_after_another_run(), 1, "sent once");
    for folder in [&case.review, &case.approved] {
        assert!(
            case.messages("postmaster@example.net", folder).is_empty(),
            "{folder}: the drafts of a sent reply are gone"
        );
    }
    replies.remove(0)
}

#[test]
fn approve_by_moving_the_draft_sends_the_edited_text() {
    let case = setup("approve", "");
    case.deliver(&THREAD);
    case.run_once();
    let reply = approve_in_a_mail_client(&case, |text| {
        text.replace("Kind regards,", "Best regards from a human,")
    });
    assert!(reply
        .body_text(0)
        .is_some_and(|b| b.contains("Best regards from a human")));
}

/// A mail client that saves an edited draft as a new message: a new Message-ID, and (some do)
/// no In-Reply-To. Our review token still says which reply it approves, and never leaves.
#[test]
fn approval_by_move_is_matched_by_our_token_when_the_client_rewrote_the_ids() {
    let case = setup("approve", "");
    case.deliver(&THREAD);
    case.run_once();
    let reply = approve_in_a_mail_client(&case, |original| {
        assert!(
            original.starts_with("X-Postmaster-Bot-Review: <"),
            "{original}"
        );
        original
            .split_inclusive('\n')
            .filter(|l| !l.starts_with("In-Reply-To:"))
            .map(|l| {
                if l.starts_with("Message-ID:") {
                    "Message-ID: <edited.1@client.example.net>\r\n".to_string()
                } else {
                    l.replace("Kind regards,", "Regards, edited in a client,")
                }
            })
            .collect()
    });
    assert!(reply
        .body_text(0)
        .is_some_and(|b| b.contains("edited in a client")));
    assert!(
        reply.header("X-Postmaster-Bot-Review").is_none(),
        "the review token never leaves"
    );
}

/// The outbox statuses in the state store.
fn statuses(case: &Case) -> Vec<String> {
    case.store()
        .select(
            "SELECT template || ':' || status FROM outbox ORDER BY id",
            &[],
        )
        .expect("rows")
        .iter()
        .map(|r| r.text(0).unwrap_or_default())
        .collect()
}

fn use_mode(case: &Case, mode: &str) {
    case.edit_config(|t| {
        let first = t.lines().next().unwrap_or_default().to_string();
        t.replacen(&first, &format!("mode = \"{mode}\""), 1)
    });
}

/// The issue's case: a reply approved and sent; the state file is lost; the bot starts again in
/// auto mode over the same mailbox. The mailbox remembers the reply (in Sent, where the bot
/// filed it), so nothing is sent again and the rebuilt case shows the earlier reply.
#[test]
fn a_lost_state_file_never_means_a_second_reply_after_an_approved_one() {
    let case = setup("approve", "");
    case.deliver(&THREAD);
    case.run_once();
    let config = case.config.display().to_string();
    let id = case.first_queued();
    assert!(case
        .bot(&["queue", "approve", &id, "--config", &config])
        .status
        .success());
    case.run_once();
    let replies = case.wait_for_replies(1);
    assert_eq!(replies.len(), 1);
    let sent_id = replies[0].message_id().expect("Message-ID").to_string();

    case.lose_state();
    use_mode(&case, "auto");
    let log = case.run_once_logged();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        case.delivered_replies().len(),
        1,
        "nothing sent again: {log}"
    );
    assert!(log.contains("earlier reply found in the mailbox"), "{log}");
    assert_eq!(statuses(&case), vec!["escalation_reply:in_mailbox"]);
    let shown = case.cases_shown();
    assert!(
        shown.contains(&sent_id) && shown.contains("escalations=1"),
        "{shown}"
    );
    // And again: the rebuilt store now knows it.
    case.run_once();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(case.delivered_replies().len(), 1);
}

#[test]
fn a_reply_only_in_sent_is_not_sent_again_after_the_state_is_lost() {
    let case = setup("auto", "");
    case.deliver(&THREAD);
    case.run_once();
    assert_eq!(case.wait_for_replies(1).len(), 1);
    assert_eq!(case.messages("postmaster@example.net", &case.sent).len(), 1);
    case.lose_state();
    assert_eq!(case.replies_after_another_run(), 1, "nothing sent again");
    assert_eq!(statuses(&case), vec!["escalation_reply:in_mailbox"]);
    assert_eq!(case.messages("postmaster@example.net", &case.sent).len(), 1);
}

/// A refusal names the command, the folder, the server's code and its words, once; an APPEND
/// to a folder that is missing creates it (`[TRYCREATE]`) and goes on.
#[test]
fn refusals_carry_the_server_s_words_and_a_missing_folder_is_created() {
    let case = setup("draft", "");
    let missing = format!("{}-Missing", case.folder);
    block_on(async {
        let mut imap = case.connect("postmaster@example.net").await;
        let e = imap
            .append(&missing, "()", b"Subject: x\r\n\r\nx\r\n")
            .await
            .expect_err("no such folder");
        let text = e.to_string();
        assert!(e.is_refusal() && !e.is_transient(), "{text}");
        assert_eq!(e.refusal_code(), Some("TRYCREATE"), "{text}");
        assert!(
            text.contains(&format!(
                "APPEND {missing} refused: [TRYCREATE] Mailbox doesn't exist"
            )),
            "{text}"
        );
        assert_eq!(text.matches("exist").count(), 1, "once: {text}");
        let e = imap.select(&missing).await.expect_err("no such folder");
        assert!(!e.to_string().contains("info: Some("), "{e}");
        imap.append_creating(&missing, "()", b"Subject: x\r\n\r\nx\r\n")
            .await
            .expect("created, then appended");
        assert_eq!(imap.message_count(&missing).await.expect("status"), Some(1));
        imap.delete_folder(&missing).await.expect("clean up");
        imap.logout().await;
    });
}

/// A watched folder the server refuses is a stop with the server's words, never a loop of
/// reconnects.
#[test]
fn a_refused_watched_folder_stops_the_daemon_with_the_reason() {
    let case = setup("draft", "");
    let folder_line = format!("folder = \"{}\"", case.folder);
    case.edit_config(|t| t.replacen(&folder_line, "folder = \"NoSuchFolder-pmb\"", 1));
    let mut daemon = Daemon(
        Command::new(env!("CARGO_BIN_EXE_postmaster-bot"))
            .args(["run", "--config", &case.config.display().to_string()])
            .current_dir(case.dir.path())
            .env("PMB_TEST_PASSWORD", "password")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("daemon starts"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = daemon.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running: a refusal made it spin"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut daemon.0.stderr.take().expect("stderr"), &mut err)
        .expect("stderr");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("SELECT NoSuchFolder-pmb refused") && !err.contains("reconnecting"),
        "{err}"
    );
}

/// Our reply's Bcc copy in the watched folder (the corpus's d010, a human-approved reply sent by
/// another tool) is a witness too, but one anyone could forge: nothing is sent, and the reply
/// waits for a person with the reason, rather than being dropped in silence.
#[test]
fn a_copy_of_our_reply_in_the_watched_folder_holds_the_reply_for_a_person() {
    let case = setup("auto", "");
    let mut thread = THREAD.to_vec();
    thread.push("d010.eml");
    case.deliver(&thread);
    assert_eq!(case.replies_after_another_run(), 0, "nothing sent");
    assert_eq!(statuses(&case), vec!["escalation_reply:held"]);
    let config = case.config.display().to_string();
    let list = String::from_utf8_lossy(&case.bot(&["queue", "list", "--config", &config]).stdout)
        .into_owned();
    assert!(list.contains("anyone can send mail"), "{list}");
}

/// A reply waiting for approval when the state was lost: auto mode must not send a new one
/// beside it; approve mode takes the waiting copy as the reply to approve.
#[test]
fn a_reply_only_in_the_review_folder_is_not_sent_after_the_state_is_lost() {
    let case = setup("approve", "");
    case.deliver(&THREAD);
    case.run_once();
    assert_eq!(
        case.messages("postmaster@example.net", &case.review).len(),
        1
    );
    case.lose_state();
    use_mode(&case, "auto");
    assert_eq!(case.replies_after_another_run(), 0, "nothing sent");
    assert_eq!(statuses(&case), vec!["escalation_reply:in_mailbox"]);

    // In approve mode again, after one more loss: no second review copy, and moving the one
    // that waits approves this reply.
    case.lose_state();
    use_mode(&case, "approve");
    case.run_once();
    assert_eq!(statuses(&case), vec!["escalation_reply:awaiting_approval"]);
    approve_in_a_mail_client(&case, str::to_string);
}

#[test]
fn a_password_command_that_fails_once_is_retried_and_the_daemon_logs_in() {
    let case = setup("draft", "");
    // A vault that is briefly unreachable: the first call fails, the next ones answer.
    let marker = case.dir.path().join("vault-was-down");
    let script = case.dir.path().join("vault.sh");
    std::fs::write(
        &script,
        format!(
            "if [ -e '{m}' ]; then printf password; else touch '{m}'; echo 'vault: connection refused' >&2; exit 1; fi\n",
            m = marker.display()
        ),
    )
    .expect("script");
    case.edit_config(|t| {
        t.replacen(
            "password_env = \"PMB_TEST_PASSWORD\"",
            &format!("password_command = \"sh {}\"", script.display()),
            1,
        )
    });
    let (mut daemon, log) = case.daemon_logging_to_file("info");
    let text = daemon.wait_in_log(&log, "imap logged in");
    assert!(
        text.contains("no password or access token for now; retrying"),
        "{text}"
    );
    assert!(daemon.stop().success());
}

#[test]
fn mail_arriving_during_idle_is_read_in_bounded_chunks() {
    let case = setup("draft", "chunk_uids = 2");
    let (mut daemon, log) = case.daemon_logging_to_file("debug");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    daemon.wait_in_log(&log, "waiting for the server");
    // Five messages at once: the wake reads them two UIDs at a time, never `n:*`.
    case.deliver(&["d006.eml", "d007.eml", "d008.eml", "d009.eml", "d010.eml"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = read_log();
        let woken = text
            .split_once("woken by the server")
            .map_or("", |(_, w)| w);
        if woken.matches("reading header fields").count() >= 3 || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(daemon.stop().success());
    // On a loaded machine the five may come in over more than one wake: every read after the
    // first wake counts, and each must be bounded.
    let woken = text
        .split_once("woken by the server")
        .map_or("", |(_, w)| w);
    let ranges: Vec<(u32, u32)> = woken
        .lines()
        .filter_map(|l| l.split("range=").nth(1))
        .map(|r| {
            let r = r.split_whitespace().next().unwrap_or("");
            let (a, b) = r.split_once(':').unwrap_or_else(|| panic!("range {r}"));
            (
                a.parse().unwrap_or_else(|_| panic!("range {r}")),
                b.parse()
                    .unwrap_or_else(|_| panic!("range {r}: an open end")),
            )
        })
        .collect();
    assert!(ranges.len() >= 3, "{text}");
    assert!(
        ranges.iter().all(|(a, b)| b >= a && b - a < 2),
        "{ranges:?}"
    );
}

/// A daemon started by a test; killed when dropped, so a failing assertion never leaves it
/// running (it would hold the test runner's output pipe open).
pub(crate) struct Daemon(pub(crate) std::process::Child);

impl Case {
    /// Starts the daemon on this case with its log (at `level`) written to a file; the daemon
    /// and the log's path.
    pub(crate) fn daemon_logging_to_file(&self, level: &str) -> (Daemon, PathBuf) {
        let log = self.dir.path().join("daemon.log");
        let daemon = Daemon(
            Command::new(env!("CARGO_BIN_EXE_postmaster-bot"))
                .args(["run", "--config", &self.config.display().to_string()])
                .current_dir(self.dir.path())
                .env("PMB_TEST_PASSWORD", "password")
                .env("RUST_LOG", format!("postmaster_bot={level}"))
                .stderr(std::fs::File::create(&log).expect("log file"))
                .spawn()
                .expect("daemon starts"),
        );
        (daemon, log)
    }
}

impl Daemon {
    /// Waits (30 s at most) until the log holds `needle`, the daemon still running; the log.
    pub(crate) fn wait_in_log(&mut self, log: &Path, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.contains(needle) {
                return text;
            }
            assert!(
                self.0.try_wait().expect("wait").is_none(),
                "the daemon stopped before '{needle}': {text}"
            );
            assert!(Instant::now() < deadline, "no '{needle}' in 30 s: {text}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then the exit status.
    pub(crate) fn stop(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        self.0.wait().expect("daemon exits")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// What `time_until_draft` waits for in the daemon's log before it delivers the thread.
pub(crate) enum Ready {
    /// The first pass is done and the daemon waits (IDLE or poll).
    Waiting,
    /// The daemon has issued IDLE this many times (the first, then each renewal).
    Idling(usize),
}

/// Starts the daemon, waits until it is `ready` (by its own log, so a slow start on a loaded
/// machine is not counted), delivers the thread and returns how long the draft took to appear.
pub(crate) fn time_until_draft(case: &Case, ready: Ready) -> Duration {
    let (mut child, log) = case.daemon_logging_to_file("debug");
    let (needle, times) = match ready {
        Ready::Waiting => ("caught up: waiting for new mail", 1),
        Ready::Idling(n) => ("waiting for the server idle=true", n),
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.matches(needle).count() >= times {
            break;
        }
        assert!(
            child.0.try_wait().expect("wait").is_none(),
            "the daemon stopped before '{needle}' x{times}: {text}"
        );
        assert!(
            Instant::now() < deadline,
            "not '{needle}' x{times} in 90 s: {text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let start = Instant::now();
    case.deliver(&THREAD);
    let deadline = start + Duration::from_secs(40);
    let took = loop {
        if !case
            .messages("postmaster@example.net", &case.drafts)
            .is_empty()
        {
            break start.elapsed();
        }
        if Instant::now() > deadline {
            break Duration::from_secs(999);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // SIGTERM: the daemon stops cleanly.
    let status = child.stop();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "daemon exit status {status}: {text}");
    took
}

#[test]
fn idle_is_reissued_and_still_wakes_the_daemon() {
    // The mail arrives once IDLE has been renewed (DONE, catch-up, IDLE again); the next
    // renewal would come 15 s later. Waking well before it is the re-issued IDLE's doing.
    let case = setup("draft", "idle_renew_seconds = 15\npoll_seconds = 3600");
    let took = time_until_draft(&case, Ready::Idling(2));
    assert!(took < Duration::from_secs(12), "took {took:?}");
}

#[test]
fn new_uidvalidity_rescans_without_a_second_reply() {
    let case = setup("draft", "handled_keyword = \"$PostmasterBot\"");
    case.deliver(&THREAD);
    case.run_once();
    assert_eq!(
        case.messages("postmaster@example.net", &case.drafts).len(),
        1
    );
    // Nothing was marked read; handled messages carry the keyword.
    let flags = block_on(async {
        let mut imap = case.connect("postmaster@example.net").await;
        imap.select(&case.folder).await.expect("select");
        let f = imap.flags().await.expect("flags");
        imap.logout().await;
        f
    });
    assert_eq!(flags.len(), 3);
    for (_, f) in &flags {
        assert!(!f.iter().any(|x| x.contains("Seen")), "{f:?}");
        assert!(f.iter().any(|x| x.contains("PostmasterBot")), "{f:?}");
    }
    // The folder is recreated (a new UIDVALIDITY) and the same mail lands in it again.
    block_on(async {
        let mut imap = case.connect("postmaster@example.net").await;
        imap.delete_folder(&case.folder).await.expect("delete");
        imap.ensure_folder(&case.folder, None)
            .await
            .expect("create");
        imap.logout().await;
    });
    case.deliver(&THREAD);
    case.run_once();
    assert_eq!(
        case.messages("postmaster@example.net", &case.drafts).len(),
        1,
        "no second draft"
    );
}

#[test]
fn handled_mail_can_be_moved_to_a_folder() {
    let case = setup(
        "draft",
        &format!("handled_folder = \"t-handled-{}\"", unique()),
    );
    let handled = std::fs::read_to_string(&case.config)
        .expect("config")
        .lines()
        .find_map(|l| {
            l.strip_prefix("handled_folder = \"")
                .map(|v| v.trim_end_matches('"').to_string())
        })
        .expect("handled folder");
    case.deliver(&THREAD);
    case.run_once();
    assert!(case
        .messages("postmaster@example.net", &case.folder)
        .is_empty());
    assert_eq!(case.messages("postmaster@example.net", &handled).len(), 3);
    assert_eq!(
        case.messages("postmaster@example.net", &case.drafts).len(),
        1
    );
}

#[test]
fn starttls_works_for_imap_and_smtp() {
    let case = setup("auto", "");
    let env = std::fs::read_to_string(
        PathBuf::from(
            std::env::var("POSTMASTER_BOT_MAILSTACK")
                .unwrap_or_else(|_| "/tmp/postmaster-bot-mailstack".into()),
        )
        .join("env"),
    )
    .expect("env");
    let port = |k: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .expect("port")
            .to_string()
    };
    case.edit_config(|t| {
        let text = t
            .replacen(
                &format!("port = {}\ntls = \"implicit\"", case.stack.imaps_port),
                &format!("port = {}\ntls = \"starttls\"", port("MAILSTACK_IMAP_PORT")),
                1,
            )
            .replacen(
                &format!("port = {}\ntls = \"implicit\"", case.stack.smtps_port),
                &format!("port = {}\ntls = \"starttls\"", port("MAILSTACK_SMTP_PORT")),
                1,
            );
        assert_eq!(text.matches("starttls").count(), 2, "{text}");
        text
    });
    case.deliver(&THREAD);
    case.run_once();
    assert_eq!(case.wait_for_replies(1).len(), 1);
}

#[test]
fn an_untrusted_certificate_is_fatal_and_names_the_host() {
    let case = setup("draft", "");
    case.edit_config(|t| {
        t.lines()
            .filter(|l| !l.starts_with("ca_file"))
            .map(|l| format!("{l}\n"))
            .collect()
    });
    let o = case.try_run_once(&[]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("127.0.0.1:") && err.contains("TLS"), "{err}");
    assert!(!err.contains("password"), "{err}");
}

#[test]
fn notifications_follow_the_mode_and_sent_mail_is_filed() {
    let with_ticket = |case: &Case, user: &str, folder: &str| {
        case.messages(user, folder)
            .into_iter()
            .filter(|b| String::from_utf8_lossy(b).contains(&case.ticket))
            .count()
    };
    // auto: the notification is mailed to the operator; the reply is copied to Sent (the bot
    // creates the folder).
    let auto = setup("auto", "");
    auto.edit_config(notify_on_escalation);
    auto.deliver(&THREAD);
    auto.run_once();
    assert_eq!(auto.wait_for_replies(1).len(), 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while with_ticket(&auto, "noc@example.net", "INBOX") == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        with_ticket(&auto, "noc@example.net", "INBOX"),
        1,
        "one notification mailed"
    );
    // Everything sent (the reply and the notification) is copied, as a mail client would.
    assert_eq!(auto.messages("postmaster@example.net", &auto.sent).len(), 2);

    // draft: the same notification is only a draft; nothing reaches the operator.
    let draft = setup("draft", "");
    draft.edit_config(notify_on_escalation);
    draft.deliver(&THREAD);
    draft.run_once();
    assert_eq!(
        draft
            .messages("postmaster@example.net", &draft.drafts)
            .len(),
        2
    );
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(with_ticket(&draft, "noc@example.net", "INBOX"), 0);
}

// Behaviour, not speed: the bench measures the latency (scripts/bench, "IDLE: notification to
// draft"). A loaded two-core CI machine running the whole suite can take seconds for what takes
// a second alone, so the bounds only tell a wake-up from the interval that would come next.

#[test]
fn idle_wakes_the_daemon() {
    // Polling alone would not look again for an hour.
    let case = setup("draft", "poll_seconds = 3600");
    let took = time_until_draft(&case, Ready::Idling(1));
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

#[test]
fn without_idle_the_daemon_polls() {
    let case = setup("draft", "idle = false\npoll_seconds = 1");
    let took = time_until_draft(&case, Ready::Waiting);
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

/// Puts every sent row back into `sending`, as a crash between DATA and the 250 would leave it.
fn simulate_crash_during_send(case: &Case) -> usize {
    case.store()
        .execute(
            "UPDATE outbox SET status = 'sending' WHERE status = 'sent'",
            &[],
        )
        .expect("update") as usize
}

#[test]
fn an_uncertain_send_is_never_resent_automatically() {
    // Without a copy in Sent, the row goes to a person.
    let case = setup("auto", "file_sent_copies = false");
    case.deliver(&THREAD);
    case.run_once();
    assert_eq!(case.wait_for_replies(1).len(), 1);
    assert_eq!(simulate_crash_during_send(&case), 1);
    assert_eq!(case.replies_after_another_run(), 1, "not resent");
    let list = case.bot(&[
        "queue",
        "list",
        "--config",
        &case.config.display().to_string(),
    ]);
    assert!(String::from_utf8_lossy(&list.stdout).contains("escalation_reply"));

    // With the copy in Sent, it is recognised as sent.
    let case = setup("auto", "");
    case.deliver(&THREAD);
    case.run_once();
    assert_eq!(case.wait_for_replies(1).len(), 1);
    assert_eq!(simulate_crash_during_send(&case), 1);
    case.run_once();
    let sent = case.count("SELECT count(*) FROM outbox WHERE status = 'sent'", &[]);
    assert_eq!(sent, 1);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(case.delivered_replies().len(), 1, "not resent");
}

/// Kills the bot at each step of handling a message, restarts it, and checks that no reply went
/// out twice, none was lost without a record, and the case survived.
#[test]
fn a_crash_at_any_step_never_sends_twice_or_loses_the_reply() {
    // (failpoint, replies delivered after the restart)
    let steps = [
        ("after_fetch", 1),
        ("before_commit", 1),
        ("after_commit", 1),
        ("before_cursor", 1),
        ("before_smtp", 0),
        ("after_250", 1),
    ];
    for (point, expected) in steps {
        let case = setup("auto", "");
        case.deliver(&THREAD);
        let crashed = Command::new(env!("CARGO_BIN_EXE_postmaster-bot"))
            .args([
                "run",
                "--once",
                "--config",
                &case.config.display().to_string(),
            ])
            .current_dir(case.dir.path())
            .env("PMB_TEST_PASSWORD", "password")
            .env("POSTMASTER_BOT_FAILPOINT", point)
            .output()
            .expect("binary runs");
        assert!(
            !crashed.status.success(),
            "{point}: the failpoint did not fire"
        );
        case.run_once();
        case.run_once();
        let replies = case.wait_for_replies(expected);
        std::thread::sleep(Duration::from_millis(800));
        assert_eq!(
            case.delivered_replies().len(),
            expected,
            "{point}: replies delivered"
        );
        assert!(replies.len() <= 1, "{point}: sent twice");
        let rows = case.count(
            "SELECT count(*) FROM outbox WHERE template = 'escalation_reply'",
            &[],
        );
        let cases = case.count(
            "SELECT count(*) FROM cases WHERE ticket_id = ?1",
            &[Value::Text(case.ticket.clone())],
        );
        assert_eq!(rows, 1, "{point}: exactly one reply on record");
        assert_eq!(cases, 1, "{point}: the case survived");
        if expected == 0 {
            let status = case.query(
                "SELECT status FROM outbox WHERE template = 'escalation_reply'",
                &[],
            )[0][0]
                .clone()
                .unwrap_or_default();
            assert_eq!(
                status, "awaiting_approval",
                "{point}: an unsent reply waits for a person"
            );
        }
    }
}

#[test]
fn a_crash_right_after_the_draft_append_never_drafts_twice() {
    let case = setup("draft", "");
    case.deliver(&THREAD);
    let crashed = Command::new(env!("CARGO_BIN_EXE_postmaster-bot"))
        .args([
            "run",
            "--once",
            "--config",
            &case.config.display().to_string(),
        ])
        .current_dir(case.dir.path())
        .env("PMB_TEST_PASSWORD", "password")
        .env("POSTMASTER_BOT_FAILPOINT", "after_append")
        .output()
        .expect("binary runs");
    assert!(!crashed.status.success(), "the failpoint did not fire");
    assert_eq!(
        case.messages("postmaster@example.net", &case.drafts).len(),
        1
    );
    case.run_once();
    case.run_once();
    assert_eq!(
        case.messages("postmaster@example.net", &case.drafts).len(),
        1,
        "no second draft"
    );
}

#[test]
fn a_large_catch_up_reads_headers_first_cuts_long_messages_and_reports_progress() {
    let case = setup("draft", "");
    case.edit_config(|t| t + "\n[limits]\nmax_message_bytes = 65536\n");
    // 2,500 customer messages, then one block-list bounce longer than the fetch limit.
    let mut bounce = case.fixture("d006.eml");
    bounce.extend(std::iter::repeat_n(b"padding after the report\r\n".as_slice(), 6000).flatten());
    block_on(async {
        let mut imap = case.connect("postmaster@example.net").await;
        for i in 0..2500 {
            let m = format!(
                "From: Customer {i} <c{i}@shop.example.com>\r\nTo: postmaster@example.net\r\nSubject: Order {i}\r\nMessage-ID: <order{i}@shop.example.com>\r\n\r\nHello, where is order {i}?\r\n"
            );
            imap.append(&case.folder, "()", m.as_bytes())
                .await
                .expect("append");
        }
        imap.append(&case.folder, "()", &bounce)
            .await
            .expect("append");
        imap.logout().await;
    });
    let err = case.run_once_logged();
    assert!(
        err.contains("catching up"),
        "a long catch-up says so: {err}"
    );
    let done = err
        .lines()
        .find(|l| l.contains("caught up"))
        .expect("a closing line");
    assert!(
        done.contains("2501") && done.contains("fetched") && done.contains('1'),
        "{done}"
    );
    let rows = case.pairs("SELECT kind, damage FROM messages");
    assert_eq!(rows.len(), 1, "only the bounce was read whole: {rows:?}");
    assert_eq!(rows[0].0, "ndr_ms_blocklist");
    assert!(
        rows[0].1.contains("fetched only the first 65536"),
        "{}",
        rows[0].1
    );

    // On a terminal (a pseudo-terminal from script(1)) the same catch-up draws a progress bar.
    case.lose_state();
    let command = format!(
        "{} run --once --config {}",
        env!("CARGO_BIN_EXE_postmaster-bot"),
        case.config.display()
    );
    let o = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .current_dir(case.dir.path())
        .env("PMB_TEST_PASSWORD", "password")
        .output()
        .expect("script(1) runs");
    let screen = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{screen}");
    assert!(
        screen.contains("catch-up") && screen.contains("/2501 messages"),
        "a progress bar: {screen}"
    );
}

/// The security review's first finding, on the real servers: a spoofed refusal in auto mode
/// must not stop the real escalation reply or the operator's notifications.
#[test]
fn a_spoof_then_the_real_thread_in_auto_mode_delivers_the_reply_and_the_notification() {
    let case = setup("auto", "");
    case.deliver(&["hostile/h01-spoofed-refusal.eml"]);
    case.deliver(&THREAD);
    case.run_once();
    let replies = case.wait_for_replies(1);
    assert_eq!(replies.len(), 1, "the real escalation reply went out");
    assert_eq!(replies[0].in_reply_to().as_text(), Some(REFUSAL_ID));
    // The operator was told about the spoof (the open-case notice is off in these tests).
    let deadline = Instant::now() + Duration::from_secs(10);
    let told = || {
        case.messages("noc@example.net", "INBOX")
            .iter()
            .filter(|b| {
                let t = String::from_utf8_lossy(b);
                t.contains(&case.ticket) && t.contains("our MX did not verify")
            })
            .count()
    };
    while told() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(told(), 1, "one notification about the spoof");
    // The reply the spoof would have got is held, with its reason, for a person.
    let config = case.config.display().to_string();
    let list = String::from_utf8_lossy(&case.bot(&["queue", "list", "--config", &config]).stdout)
        .into_owned();
    assert!(
        list.contains("held:") && list.contains("unverified sender"),
        "{list}"
    );
    // Another pass changes nothing: no retry loop, no second reply.
    assert_eq!(case.replies_after_another_run(), 1);
}

/// A row the server refuses to store (here: a draft left from an older run, for a folder whose
/// name the server will not take) is retried and then held by itself; the rest of the outbox is delivered in
/// the same pass, and a row waiting for an approve mode the bot no longer runs in is held.
#[test]
fn a_row_the_server_refuses_holds_only_itself() {
    use postmaster_bot::shell::store::NewOutbox;
    let case = setup("auto", "");
    // A name the server will not take (not valid modified UTF-7): refused without a code.
    let missing = format!("{}-Bad&Name", case.folder);
    let drafts_line = format!("drafts_folder = \"{}\"", case.drafts);
    case.edit_config(|t| t.replace(&drafts_line, &format!("drafts_folder = \"{missing}\"")));
    {
        let mut store = case.store();
        let tx = store.begin().expect("tx");
        for (n, disposition) in [(1, "draft"), (2, "queue")] {
            tx.add_outbox(
                &NewOutbox {
                    message_id: &format!("leftover-{n}@postmaster.example.net"),
                    case_id: None,
                    inbound_message_id: None,
                    template: "operator_notification",
                    disposition,
                    status: "pending",
                    reason: None,
                    recipients: &["noc@example.net".to_string()],
                    subject: "leftover",
                    bytes: format!("From: postmaster@example.net\r\nTo: noc@example.net\r\nSubject: leftover {n}\r\nMessage-ID: <leftover-{n}@postmaster.example.net>\r\n\r\nleft over\r\n").as_bytes(),
                    rate_key: None,
                },
                0,
            )
            .expect("seed");
        }
        tx.commit().expect("commit");
    }
    case.deliver(&THREAD);
    case.run_once();
    assert_eq!(
        case.wait_for_replies(1).len(),
        1,
        "the real reply is not held up"
    );
    let store = case.store();
    let rows = store.outbox(None).expect("outbox");
    let draft = rows
        .iter()
        .find(|r| r.message_id.starts_with("leftover-1"))
        .expect("row");
    assert_eq!(
        draft.status, "pending",
        "refused once, retried later: {draft:?}"
    );
    assert!(
        draft
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("refused")),
        "{draft:?}"
    );
    let queued = rows
        .iter()
        .find(|r| r.message_id.starts_with("leftover-2"))
        .expect("row");
    assert_eq!(queued.status, "held", "{queued:?}");
    assert!(
        queued
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("queue release")),
        "{queued:?}"
    );
}

/// Teaching on the real Dovecot: an answer in a wording no rule knows goes to the operator;
/// taught once by CLI (by its Message-ID) it is decided again and drafted, and the next
/// ticket's answer of the same template is drafted too; an unverified copy is not. Then the
/// same by moving the message into the teach folder from a mail client.
#[test]
fn a_template_taught_by_cli_or_by_folder_move_answers_the_next_ticket() {
    let drafts_with = |case: &Case, needle: &str| {
        case.messages("postmaster@example.net", &case.drafts)
            .iter()
            .filter(|b| {
                let t = String::from_utf8_lossy(b);
                t.contains(needle) && t.contains("please escalate")
                    || (t.contains(needle) && t.contains("escalate this ticket"))
            })
            .count()
    };
    let case = setup("draft", "");
    case.deliver(&["d006.eml", "d007.eml", "learned/t1-new-wording-refusal.eml"]);
    case.run_once();
    assert_eq!(
        drafts_with(&case, &case.ticket),
        0,
        "an unknown wording is not answered"
    );
    let config = case.config.display().to_string();
    let o = case.bot(&[
        "teach",
        "--config",
        &config,
        "--kind",
        "ms_not_qualified",
        "--message-id",
        "LRN0000000000000000000000000000000000001@CH3PR21MB9986.namprd21.prod.outlook.com",
    ]);
    let said = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        said.contains("decided again: draft_escalation_reply"),
        "{said}"
    );
    case.run_once();
    assert_eq!(
        drafts_with(&case, &case.ticket),
        1,
        "the taught refusal is answered"
    );
    case.deliver(&[
        "learned/t2-same-template-other-ticket.eml",
        "learned/t3-same-template-unverified.eml",
    ]);
    case.run_once();
    assert_eq!(
        drafts_with(&case, "SRX1800000002ID"),
        1,
        "the next ticket's answer"
    );
    assert_eq!(
        drafts_with(&case, "SRX1800000003ID"),
        0,
        "never an unverified copy"
    );

    // By folder move: another mailbox folder, another state file.
    let moved = setup("draft", "");
    moved.deliver(&["d007.eml", "learned/t1-new-wording-refusal.eml"]);
    moved.run_once();
    assert_eq!(drafts_with(&moved, &moved.ticket), 0);
    let teach = format!("{}-Teach/ms_not_qualified", moved.folder);
    block_on(async {
        let mut imap = moved.connect("postmaster@example.net").await;
        imap.select(&moved.folder).await.expect("select");
        let uids = imap
            .find_message_id(
                "LRN0000000000000000000000000000000000001@CH3PR21MB9986.namprd21.prod.outlook.com",
            )
            .await
            .expect("search");
        assert_eq!(uids.len(), 1);
        assert!(imap
            .move_uids(&uids[0].to_string(), &teach)
            .await
            .expect("move"));
        imap.logout().await;
    });
    let log = moved.run_once_logged();
    assert!(log.contains("learned from the teach folder"), "{log}");
    assert_eq!(
        drafts_with(&moved, &moved.ticket),
        1,
        "decided again after the move"
    );
    assert!(
        moved.messages("postmaster@example.net", &teach).is_empty(),
        "moved back"
    );
    assert_eq!(
        moved
            .messages("postmaster@example.net", &moved.folder)
            .iter()
            .filter(
                |b| String::from_utf8_lossy(b).contains("LRN0000000000000000000000000000000000001")
            )
            .count(),
        1,
        "back where it was"
    );
}

/// The logins of `user` the test stack's Dovecot has logged so far.
fn dovecot_logins(user: &str) -> usize {
    let dir = std::env::var("POSTMASTER_BOT_MAILSTACK")
        .unwrap_or_else(|_| "/tmp/postmaster-bot-mailstack".to_string());
    let log = std::fs::read_to_string(Path::new(&dir).join("log/dovecot.log")).unwrap_or_default();
    let needle = format!("Login: user=<{user}>");
    log.lines().filter(|l| l.contains(&needle)).count()
}

/// A test on the stack's `overquota@example.net`, whose mailbox takes mail in INBOX only (see
/// `scripts/mailstack`): folders named the plain way, INBOX emptied of earlier runs' mail.
fn setup_over_quota(mode: &str) -> Case {
    let mut case = setup(mode, "");
    case.mailbox.user = "overquota@example.net".to_string();
    case.folder = "INBOX".to_string();
    case.review = "postmaster-bot/Review".to_string();
    case.approved = "postmaster-bot/Approved".to_string();
    case.drafts = "Drafts".to_string();
    case.sent = "Sent".to_string();
    let case = case.with_config(mode, "");
    block_on(async {
        let mut imap = case.connect(MAILBOX).await;
        imap.select("INBOX").await.expect("select");
        let uids = imap.uids_after(0).await.expect("search");
        if !uids.is_empty() {
            let set = uids
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",");
            imap.delete_uids(&set).await.expect("expunge");
        }
        imap.logout().await;
    });
    case
}

/// The issue's quota case: the review copy's APPEND is refused with [OVERQUOTA]. The row is held
/// with the server's words, the operator is told once, and the daemon goes on watching on the
/// connection it has: one login, however long it runs (no reconnect loop).
#[test]
fn a_mailbox_over_quota_holds_the_row_tells_the_operator_once_and_keeps_watching() {
    let case = setup_over_quota("approve");
    case.deliver(&THREAD);
    let logins = dovecot_logins("overquota@example.net");
    let (mut daemon, log) = case.daemon_logging_to_file("info");
    daemon.wait_in_log(&log, "copy refused");
    // Time enough for a reconnect loop (its first retry comes after a second) to show.
    std::thread::sleep(Duration::from_secs(5));
    let text = daemon.wait_in_log(&log, "OVERQUOTA");
    assert!(daemon.stop().success(), "{text}");
    assert_eq!(
        dovecot_logins("overquota@example.net") - logins,
        1,
        "one login: a refusal is not a lost connection\n{text}"
    );
    assert!(!text.contains("reconnecting"), "{text}");
    let config = case.config.display().to_string();
    let listed = case.bot(&["queue", "list", "--config", &config]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains("held") && listed.contains("[OVERQUOTA]"),
        "held with the server's words: {listed}"
    );
    // Told once, by mail, with the server's words; another run says nothing more.
    case.run_once();
    std::thread::sleep(Duration::from_millis(1500));
    let told: Vec<String> = case
        .messages("noc@example.net", "INBOX")
        .iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .filter(|m| m.contains(&case.ticket) && m.contains("OVERQUOTA"))
        .collect();
    assert_eq!(told.len(), 1, "{told:?}");
    assert!(told[0].contains("queue release"), "{}", told[0]);
    assert!(case.delivered_replies().is_empty(), "nothing was approved");
}
