//! The console in a real browser: headless Chromium from Debian's packages, driven over
//! WebDriver (chromedriver, fantoccini), against the daemon on the real Dovecot + Postfix. The
//! operator sees the case, edits and approves the reply, and it reaches Microsoft's side once;
//! a rejected reply never leaves; a hostile message runs no script; a form posted from another
//! site is refused; logging in works. Screenshots of the dashboard, a case and the queue are
//! saved under `target/screenshots/`.
#![allow(clippy::disallowed_methods)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};

use crate::console::{add_user, start_daemon, start_serve, with_console};
use crate::live::{setup, Case, Daemon, THREAD};

/// A headless Chromium session and the chromedriver serving it.
struct Browser {
    runtime: tokio::runtime::Runtime,
    client: Client,
    _driver: Daemon,
    _profile: tempfile::TempDir,
}

fn need(binary: &str) {
    if !std::path::Path::new(binary).exists() {
        panic!(
            "{binary} is missing: the browser tests need Debian's chromium and chromium-driver; `scripts/test` (as root) installs them, or `apt-get install chromium chromium-driver`"
        );
    }
}

impl Browser {
    fn start() -> Browser {
        need("/usr/bin/chromium");
        need("/usr/bin/chromedriver");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let driver = Daemon(
            Command::new("/usr/bin/chromedriver")
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver starts"),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().expect("profile dir");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".to_string(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                    "--window-size=1280,1100",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }),
        );
        let client = runtime
            .block_on(
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(caps)
                    .connect(&format!("http://127.0.0.1:{port}")),
            )
            .expect("a Chromium session");
        Browser {
            runtime,
            client,
            _driver: driver,
            _profile: profile,
        }
    }

    fn goto(&self, url: &str) {
        self.try_goto(url)
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    fn try_goto(&self, url: &str) -> Result<(), fantoccini::error::CmdError> {
        self.runtime.block_on(self.client.goto(url))
    }

    /// The text of the first element `css` finds, waiting a little for the page to load.
    fn text(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let found = self.runtime.block_on(async {
                let element = self.client.find(Locator::Css(css)).await.ok()?;
                element.text().await.ok()
            });
            match found {
                Some(text) => return text,
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                None => panic!("no {css} on the page: {}", self.source()),
            }
        }
    }

    /// Waits (10 s at most) until the text of `css` is one of `wanted` (a click's page load).
    fn wait_text(&self, css: &str, wanted: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.text(css);
            if wanted.contains(&text.as_str()) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{css} is {text:?}, not one of {wanted:?}: {}",
                self.source()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Clicks every element `css` finds (opens every `<details>`).
    fn click_all(&self, css: &str) {
        self.runtime
            .block_on(async {
                for element in self.client.find_all(Locator::Css(css)).await? {
                    element.click().await?;
                }
                Ok::<(), fantoccini::error::CmdError>(())
            })
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// The texts of every element `css` finds.
    fn texts(&self, css: &str) -> Vec<String> {
        self.runtime
            .block_on(async {
                let mut out = Vec::new();
                for element in self.client.find_all(Locator::Css(css)).await? {
                    out.push(element.text().await?);
                }
                Ok::<_, fantoccini::error::CmdError>(out)
            })
            .unwrap_or_default()
    }

    fn count(&self, css: &str) -> usize {
        self.runtime
            .block_on(self.client.find_all(Locator::Css(css)))
            .map(|all| all.len())
            .unwrap_or(0)
    }

    fn source(&self) -> String {
        self.runtime
            .block_on(self.client.source())
            .unwrap_or_default()
    }

    fn click(&self, css: &str) {
        self.runtime
            .block_on(async { self.client.find(Locator::Css(css)).await?.click().await })
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    fn fill(&self, css: &str, text: &str) {
        self.runtime
            .block_on(async {
                let element = self.client.find(Locator::Css(css)).await?;
                element.clear().await?;
                element.send_keys(text).await
            })
            .unwrap_or_else(|e| panic!("fill {css}: {e}"));
    }

    /// The value of a form field (a textarea's text as it is now).
    fn value(&self, css: &str) -> String {
        self.runtime
            .block_on(async {
                self.client
                    .find(Locator::Css(css))
                    .await?
                    .prop("value")
                    .await
            })
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    /// Waits (10 s at most) until the page's source holds `needle`.
    fn wait_source(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.source().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} on the page: {}",
                self.source()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether a script opened an alert.
    fn alert_open(&self) -> bool {
        self.runtime.block_on(self.client.get_alert_text()).is_ok()
    }

    /// Saves a screenshot of the page as `target/screenshots/NAME.png`.
    fn screenshot(&self, name: &str) {
        let png = self
            .runtime
            .block_on(self.client.screenshot())
            .expect("screenshot");
        let dir = screenshots();
        std::fs::create_dir_all(&dir).expect("screenshot folder");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
    }

    /// Reloads `url` until `css` holds `needle` (30 s at most).
    fn wait_for(&self, url: &str, css: &str, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // The console may not listen yet (a daemon just started takes its lease and
            // opens its store first): that is "not yet", until the deadline.
            if let Err(e) = self.try_goto(url) {
                assert!(Instant::now() < deadline, "open {url}: {e}");
                std::thread::sleep(Duration::from_millis(300));
                continue;
            }
            let found = self.runtime.block_on(async {
                let element = self.client.find(Locator::Css(css)).await.ok()?;
                element.text().await.ok()
            });
            if let Some(text) = found.filter(|t| t.contains(needle)) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{url}: no {needle:?} in {css}: {}",
                self.source()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let client = self.client.clone();
        let _ = self.runtime.block_on(client.close());
    }
}

fn screenshots() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("screenshots")
}

/// The hostile bounce of the security review, with markup everywhere a stranger can write.
fn hostile_bounce() -> Vec<u8> {
    let raw = std::fs::read(
        crate::support::fixtures().join("hostile/h02-forged-bounce-with-instructions.eml"),
    )
    .expect("fixture");
    String::from_utf8_lossy(&raw)
        .replace(
            "Subject: Undelivered Mail Returned to Sender",
            "Subject: <script>alert('subject')</script>",
        )
        .replace(
            "UPDATE FROM THE SENDER",
            "<script>alert('body')</script> \"><img src=x onerror=alert('attr')>",
        )
        .replace('\n', "\r\n")
        .into_bytes()
}

fn queue_id_on(browser: &Browser, console: &str) -> String {
    browser.wait_for(&format!("{console}/queue"), "#queue", "#");
    browser
        .text("#queue td a")
        .trim_start_matches('#')
        .to_string()
}

#[test]
fn in_a_browser_the_operator_edits_and_approves_once_rejects_and_no_stranger_s_script_runs() {
    let browser = Browser::start();

    // Approve, with an edit: the edited reply reaches Microsoft's side once.
    let case = setup("approve", "");
    let port = with_console(&case, "");
    let console = format!("http://127.0.0.1:{port}");
    case.deliver(&THREAD);
    let (mut daemon, _log) = start_daemon(&case);
    let waiting = browser.wait_for(&format!("{console}/"), "#waiting", "support@microsoft.com");
    assert!(waiting.contains("RE:"), "{waiting}");
    browser.screenshot("dashboard");
    browser.goto(&format!("{console}/cases/1"));
    assert!(browser.text("#timeline").contains("draft_escalation_reply"));
    browser.screenshot("case");
    let id = queue_id_on(&browser, &console);
    browser.screenshot("queue");
    // A form on another site, posted to the console: the browser sends no cookie with it
    // (SameSite=Strict) and it carries no token: refused.
    browser.goto(&format!(
        "data:text/html,<form method=post action=\"{console}/queue/{id}/decide\"><input name=action value=approve><button id=go>go</button></form>"
    ));
    browser.click("#go");
    browser.wait_source("refused");
    browser.goto(&format!("{console}/queue/{id}"));
    assert_eq!(browser.text("#status"), "awaiting_approval");
    browser.screenshot("queue-item");
    let text = browser.value("#body");
    assert!(text.contains("Kind regards,"), "{text}");
    browser.fill(
        "#body",
        &text.replace("Kind regards,", "Edited in the browser,"),
    );
    browser.click("#approve");
    browser.wait_text("#status", &["approved", "sending", "sent"]);
    let replies = case.wait_for_replies(1);
    assert_eq!(replies.len(), 1);
    assert!(replies[0]
        .body_text(0)
        .is_some_and(|b| b.contains("Edited in the browser,")));
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(case.delivered_replies().len(), 1, "sent once");

    // A stranger's markup arrives as text: no script element, no image, no alert.
    case.deliver_raw(&[hostile_bounce()]);
    // It joins case #1 (the same IP): wait until its page shows the message.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        browser.goto(&format!("{console}/cases/1"));
        if browser.source().contains("forged-bounce-0002") {
            break;
        }
        assert!(Instant::now() < deadline, "{}", browser.source());
        std::thread::sleep(Duration::from_millis(300));
    }
    for page in ["/", "/cases", "/cases/1", "/inbox"] {
        browser.goto(&format!("{console}{page}"));
        assert_eq!(browser.count("script"), 0, "{page}: {}", browser.source());
        assert_eq!(browser.count("main img"), 0, "{page}: {}", browser.source());
        assert!(!browser.alert_open(), "{page}: a script ran");
    }
    browser.goto(&format!("{console}/cases/1"));
    browser.click_all("details summary");
    assert!(
        browser
            .texts("pre.original")
            .iter()
            .any(|t| t.contains("<script>alert('subject')</script>")),
        "shown as text: {}",
        browser.source()
    );
    assert!(daemon.stop().success());

    // Reject: nothing leaves.
    let other = setup("approve", "");
    let port = with_console(&other, "");
    let console = format!("http://127.0.0.1:{port}");
    other.deliver(&THREAD);
    let (mut daemon, _log) = start_daemon(&other);
    let id = queue_id_on(&browser, &console);
    browser.goto(&format!("{console}/queue/{id}"));
    browser.click("#reject");
    browser.wait_text("#status", &["rejected"]);
    std::thread::sleep(Duration::from_secs(3));
    assert!(daemon.stop().success());
    assert_eq!(
        other.replies_after_another_run(),
        0,
        "a rejected reply never leaves"
    );
}

#[test]
fn in_a_browser_a_login_is_needed_and_a_wrong_password_is_refused() {
    let browser = Browser::start();
    let case: Case = setup("draft", "");
    let port = with_console(&case, "users_file = \"web-users\"");
    add_user(&case, "alice", "a long enough password");
    let mut server = start_serve(&case);
    let console = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the console did not listen");
        std::thread::sleep(Duration::from_millis(100));
    }
    browser.goto(&format!("{console}/"));
    browser.wait_source("id=\"password\"");
    browser.fill("#user", "alice");
    browser.fill("#password", "not her password");
    browser.click("#login");
    browser.wait_source("wrong user name or password");
    browser.goto(&format!("{console}/login"));
    browser.fill("#user", "alice");
    browser.fill("#password", "a long enough password");
    browser.click("#login");
    browser.wait_text("nav .who", &["alice"]);
    browser.click("nav form button");
    browser.wait_source("id=\"password\"");
    assert!(server.stop().success());
}
