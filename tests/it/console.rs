//! The operator's console over HTTP, served by the daemon itself (`[web]` in the config) or by
//! `serve`, on the real Dovecot + Postfix: the queue decides as the command line does, every
//! form needs its session's token, a message's text is shown escaped, metrics parse and move,
//! and the console refuses to be reachable by others without a login.
#![allow(clippy::disallowed_methods)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::live::{block_on, setup, Case, Daemon, THREAD};

/// A free loopback port (bound, then let go: the console binds it next).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A plain HTTP client that keeps the console's session cookie, as a browser would.
pub(crate) struct Visitor {
    base: String,
    client: reqwest::Client,
    cookie: Option<String>,
}

pub(crate) struct Page {
    pub(crate) status: u16,
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) body: String,
}

impl Visitor {
    pub(crate) fn new(port: u16) -> Visitor {
        Visitor {
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            cookie: None,
        }
    }

    /// A visitor over HTTPS that trusts `ca` (PEM).
    pub(crate) fn https(port: u16, ca: &str) -> Visitor {
        let pem = std::fs::read(ca).expect("CA file");
        Visitor {
            base: format!("https://localhost:{port}"),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA"))
                .build()
                .expect("client"),
            cookie: None,
        }
    }

    fn keep_cookie(&mut self, headers: &reqwest::header::HeaderMap) {
        if let Some(set) = headers
            .get(reqwest::header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
        {
            self.cookie = set.split(';').next().map(str::to_string);
        }
    }

    /// Sends a request with the session cookie, keeps the cookie the answer sets.
    fn send(&mut self, request: reqwest::RequestBuilder) -> Page {
        let request = match &self.cookie {
            Some(c) => request.header(reqwest::header::COOKIE, c.clone()),
            None => request,
        };
        let page = block_on(async move {
            let response = request.send().await.expect("console answers");
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            Page {
                status,
                headers,
                body: response.text().await.unwrap_or_default(),
            }
        });
        self.keep_cookie(&page.headers);
        page
    }

    pub(crate) fn get(&mut self, path: &str) -> Page {
        let request = self.client.get(format!("{}{path}", self.base));
        self.send(request)
    }

    /// A GET with one more header (as a reverse proxy adds it).
    pub(crate) fn get_with(&mut self, path: &str, name: &str, value: &str) -> Page {
        let request = self
            .client
            .get(format!("{}{path}", self.base))
            .header(name, value);
        self.send(request)
    }

    pub(crate) fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let body: String = form
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let request = self
            .client
            .post(format!("{}{path}", self.base))
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body);
        self.send(request)
    }

    /// Waits (20 s at most) until the console answers.
    pub(crate) fn wait_up(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = format!("{}/healthz", self.base);
        let client = self.client.clone();
        let up = block_on(async move {
            loop {
                if client.get(&url).send().await.is_ok() {
                    return true;
                }
                if Instant::now() > deadline {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        assert!(up, "the console did not come up at {}", self.base);
    }
}

/// Form encoding (application/x-www-form-urlencoded).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                (b as char).to_string()
            }
            b' ' => "+".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of a hidden input in a page.
pub(crate) fn hidden(body: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    body.split_once(&marker)
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(v, _)| html_unescape(v))
        .unwrap_or_else(|| panic!("no hidden {name} in the page: {body}"))
}

fn html_unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#34;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&#60;", "<")
        .replace("&gt;", ">")
        .replace("&#62;", ">")
        .replace("&amp;", "&")
        .replace("&#38;", "&")
}

/// The text of the edit box of a queue page.
pub(crate) fn textarea(body: &str) -> String {
    body.split_once("<textarea id=\"body\" name=\"body\" rows=\"18\" cols=\"90\">")
        .and_then(|(_, rest)| rest.split_once("</textarea>"))
        .map(|(v, _)| html_unescape(v))
        .unwrap_or_else(|| panic!("no edit box in the page: {body}"))
}

/// A test's config with `[web]` on a free loopback port; the port.
pub(crate) fn with_console(case: &Case, extra: &str) -> u16 {
    let port = free_port();
    case.edit_config(|t| format!("{t}\n[web]\nlisten = \"127.0.0.1:{port}\"\n{extra}"));
    port
}

/// `serve` on this test's config: the console alone.
pub(crate) fn start_serve(case: &Case) -> Daemon {
    Daemon(
        Command::new(env!("CARGO_BIN_EXE_postmaster-bot"))
            .args(["serve", "--config", &case.config.display().to_string()])
            .current_dir(case.dir.path())
            .env("PMB_TEST_PASSWORD", "password")
            .stderr(Stdio::null())
            .spawn()
            .expect("serve starts"),
    )
}

pub(crate) fn start_daemon(case: &Case) -> (Daemon, std::path::PathBuf) {
    case.daemon_logging_to_file("info")
}

/// The id of the first reply waiting in the console's queue, once there is one.
pub(crate) fn first_waiting(visitor: &mut Visitor) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let page = visitor.get("/queue");
        if let Some((_, rest)) = page.body.split_once("<a href=\"/queue/") {
            return rest.split('"').next().unwrap_or_default().to_string();
        }
        assert!(Instant::now() < deadline, "nothing queued: {}", page.body);
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_console_approves_an_edited_reply_once_and_refuses_a_form_without_its_token() {
    let case = setup("approve", "");
    let port = with_console(&case, "");
    case.deliver(&THREAD);
    let (mut daemon, log) = start_daemon(&case);
    let mut visitor = Visitor::new(port);
    visitor.wait_up();
    let dashboard = visitor.get("/");
    assert_eq!(dashboard.status, 200);
    let csp = dashboard
        .headers
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("script"),
        "no script may run: {csp}"
    );
    let cookie = dashboard
        .headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let id = first_waiting(&mut visitor);
    let item = visitor.get(&format!("/queue/{id}"));
    assert_eq!(item.status, 200, "{}", item.body);
    let csrf = hidden(&item.body, "csrf");
    let shown = textarea(&item.body);
    assert!(shown.contains("Kind regards,"), "{shown}");
    let edited = shown.replace("Kind regards,", "Regards from the console,");
    let decide = format!("/queue/{id}/decide");
    // Without the token, or with another session's, nothing happens.
    let refused = visitor.post(
        &decide,
        &[("action", "approve"), ("body", &edited), ("shown", &shown)],
    );
    assert_eq!(refused.status, 403, "{}", refused.body);
    let mut stranger = Visitor::new(port);
    stranger.get("/");
    let refused = stranger.post(
        &decide,
        &[("csrf", &csrf), ("action", "approve"), ("body", &edited)],
    );
    assert_eq!(
        refused.status, 403,
        "another session's token: {}",
        refused.body
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        case.delivered_replies().is_empty(),
        "nothing leaves unapproved"
    );
    // Approved with the edit: sent once, as edited.
    let approved = visitor.post(
        &decide,
        &[
            ("csrf", &csrf),
            ("action", "approve"),
            ("body", &edited),
            ("shown", &shown),
        ],
    );
    assert_eq!(approved.status, 303, "{}", approved.body);
    let again = visitor.post(
        &decide,
        &[("csrf", &csrf), ("action", "approve"), ("body", &edited)],
    );
    assert_eq!(
        again.status, 409,
        "an approval applies once: {}",
        again.body
    );
    let replies = case.wait_for_replies(1);
    assert_eq!(replies.len(), 1);
    assert!(replies[0]
        .body_text(0)
        .is_some_and(|b| b.contains("Regards from the console,")));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(case.delivered_replies().len(), 1, "sent once");
    // Who did it is on record, and the metrics moved.
    let audit = visitor.get("/audit");
    assert!(
        audit.body.contains("web:local") && audit.body.contains("approve"),
        "{}",
        audit.body
    );
    let metrics = visitor.get("/metrics");
    assert_eq!(metrics.status, 200);
    let lines = metrics.body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
    let value = |name: &str, label: Option<(&str, &str)>| {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum::<f64>()
    };
    assert!(
        value(
            "postmaster_bot_messages_handled_total",
            Some(("kind", "ms_not_qualified"))
        ) >= 1.0,
        "{}",
        metrics.body
    );
    assert_eq!(
        value("postmaster_bot_approvals_total", None),
        1.0,
        "{}",
        metrics.body
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while value("postmaster_bot_replies_total", Some(("outcome", "sent"))) < 1.0 {
        assert!(Instant::now() < deadline, "no sent reply in the metrics");
        std::thread::sleep(Duration::from_millis(200));
        let again = visitor.get("/metrics");
        let lines = again.body.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("parses");
        if scrape.samples.iter().any(|s| {
            s.metric == "postmaster_bot_replies_total"
                && s.labels.get("outcome") == Some("sent")
                && matches!(s.value, prometheus_parse::Value::Counter(v) if v >= 1.0)
        }) {
            break;
        }
    }
    assert!(value("postmaster_bot_seconds_since_last_sync", None) >= 0.0);
    assert_eq!(visitor.get("/readyz").status, 200);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(daemon.stop().success(), "{text}");
}

#[test]
fn a_rejected_reply_is_never_sent() {
    let case = setup("approve", "");
    let port = with_console(&case, "");
    case.deliver(&THREAD);
    let (mut daemon, _log) = start_daemon(&case);
    let mut visitor = Visitor::new(port);
    visitor.wait_up();
    let id = first_waiting(&mut visitor);
    let item = visitor.get(&format!("/queue/{id}"));
    let csrf = hidden(&item.body, "csrf");
    let rejected = visitor.post(
        &format!("/queue/{id}/decide"),
        &[("csrf", &csrf), ("action", "reject")],
    );
    assert_eq!(rejected.status, 303, "{}", rejected.body);
    assert!(visitor
        .get(&format!("/queue/{id}"))
        .body
        .contains("rejected"));
    std::thread::sleep(Duration::from_secs(3));
    assert!(daemon.stop().success());
    assert_eq!(case.replies_after_another_run(), 0, "never sent");
}

/// The security review's kind of message, shown on every page it reaches: tags, event
/// handlers and `javascript:` links arrive as text, never as markup.
#[test]
fn everything_a_message_brought_is_shown_as_text() {
    let case = setup("draft", "");
    let port = with_console(&case, "");
    let raw = std::fs::read(
        crate::support::fixtures().join("hostile/h02-forged-bounce-with-instructions.eml"),
    )
    .expect("fixture");
    let hostile = String::from_utf8_lossy(&raw)
        .replace(
            "Subject: Undelivered Mail Returned to Sender",
            "Subject: <script>alert('subject')</script>",
        )
        .replace(
            "(Mail Delivery System)",
            "(\"><img src=x onerror=alert('name')>)",
        )
        .replace(
            "UPDATE FROM THE SENDER",
            "<script>alert('body')</script> \"><img src=x onerror=alert('attr')> <a href=\"javascript:alert('link')\">click</a>",
        )
        .replace("\n", "\r\n");
    case.deliver_raw(&[hostile.into_bytes()]);
    case.run_once();
    let mut server = start_serve(&case);
    let mut visitor = Visitor::new(port);
    visitor.wait_up();
    let mut seen = String::new();
    for path in [
        "/", "/cases", "/cases/1", "/queue", "/inbox", "/audit", "/queue/1",
    ] {
        let page = visitor.get(path);
        assert!(
            page.status == 200 || page.status == 404,
            "{path}: {}",
            page.status
        );
        let body = page.body.to_ascii_lowercase();
        // Escaped, `<img` is `&lt;img`: no tag, no event handler, no script link.
        for markup in ["<script", "<img", "href=\"javascript:"] {
            assert!(
                !body.contains(markup),
                "{path} carries {markup} as markup: {}",
                page.body
            );
        }
        seen.push_str(&page.body);
    }
    assert!(
        seen.contains("&#60;script&#62;alert(") || seen.contains("&lt;script&gt;alert("),
        "the text is shown, escaped: {seen}"
    );
    assert!(
        seen.to_ascii_lowercase()
            .contains("subject: &#60;script&#62;alert(&#39;subject&#39;)"),
        "the original message is shown, escaped: {seen}"
    );
    assert!(server.stop().success());
}

#[test]
fn a_console_others_can_reach_needs_a_login_or_it_does_not_start() {
    let case = setup("draft", "");
    case.edit_config(|t| format!("{t}\n[web]\nlisten = \"0.0.0.0:{}\"\n", free_port()));
    let config = case.config.display().to_string();
    for args in [
        vec!["check-config", "--config", &config],
        vec!["serve", "--config", &config],
        vec!["run", "--once", "--config", &config],
    ] {
        let o = case.bot(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("web.listen") && err.contains("users_file"),
            "{args:?}: {err}"
        );
    }
}

/// Adds a console user through the command line, the password on standard input.
pub(crate) fn add_user(case: &Case, name: &str, password: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_postmaster-bot"))
        .args([
            "web",
            "adduser",
            name,
            "--config",
            &case.config.display().to_string(),
        ])
        .current_dir(case.dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("adduser runs");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{password}\n").as_bytes())
        .expect("password");
    let o = child.wait_with_output().expect("adduser ends");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn login_works_a_wrong_password_is_refused_and_failures_are_limited() {
    let case = setup("draft", "");
    let port = with_console(&case, "users_file = \"web-users\"");
    add_user(&case, "alice", "a long enough password");
    let users = std::fs::metadata(case.dir.path().join("web-users")).expect("users file");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(users.permissions().mode() & 0o777, 0o600);
    }
    let mut server = start_serve(&case);
    let mut visitor = Visitor::new(port);
    visitor.wait_up();
    let first = visitor.get("/");
    assert_eq!(first.status, 303, "a login first");
    let login = visitor.get("/login");
    let csrf = hidden(&login.body, "csrf");
    let wrong = visitor.post(
        "/login",
        &[
            ("csrf", &csrf),
            ("user", "alice"),
            ("password", "not her password"),
        ],
    );
    assert_eq!(wrong.status, 401);
    assert_eq!(visitor.get("/").status, 303, "still not logged in");
    let right = visitor.post(
        "/login",
        &[
            ("csrf", &csrf),
            ("user", "alice"),
            ("password", "a long enough password"),
        ],
    );
    assert_eq!(right.status, 303, "{}", right.body);
    let home = visitor.get("/");
    assert_eq!(home.status, 200);
    assert!(home.body.contains("alice"));
    // A login form posted without its token is refused, whatever the password.
    let mut other = Visitor::new(port);
    let no_token = other.post(
        "/login",
        &[("user", "alice"), ("password", "a long enough password")],
    );
    assert_eq!(no_token.status, 403);
    // Too many failures from one address: refused for a while, even the right password.
    let mut guesser = Visitor::new(port);
    let page = guesser.get("/login");
    let token = hidden(&page.body, "csrf");
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(
            guesser
                .post(
                    "/login",
                    &[("csrf", &token), ("user", "alice"), ("password", "guess")],
                )
                .status,
        );
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    let locked = guesser.post(
        "/login",
        &[
            ("csrf", &token),
            ("user", "alice"),
            ("password", "a long enough password"),
        ],
    );
    assert_eq!(locked.status, 429);
    assert!(server.stop().success());
}

#[test]
fn the_console_serves_https_with_secure_cookies() {
    let case = setup("draft", "");
    let tls = Path::new(&case.stack_ca())
        .parent()
        .expect("tls dir")
        .to_path_buf();
    let port = with_console(
        &case,
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"",
            tls.join("server-chain.pem").display(),
            tls.join("server.key").display()
        ),
    );
    let mut server = start_serve(&case);
    let mut visitor = Visitor::https(port, &case.stack_ca());
    visitor.wait_up();
    // A client that never finishes its handshake holds nobody else up.
    let _silent = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let page = visitor.get("/");
    assert_eq!(page.status, 200, "{}", page.body);
    let cookie = page
        .headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(cookie.contains("; Secure"), "{cookie}");
    assert!(server.stop().success());
}

/// Behind a reverse proxy that logs people in: the user it names, from its address only.
#[test]
fn a_trusted_proxy_names_the_user_and_nobody_else_can() {
    let case = setup("draft", "");
    let port = with_console(
        &case,
        "proxy_user_header = \"X-Forwarded-User\"\ntrusted_proxies = [\"127.0.0.1/32\"]",
    );
    let mut server = start_serve(&case);
    let mut visitor = Visitor::new(port);
    visitor.wait_up();
    let page = visitor.get_with("/", "X-Forwarded-User", "bob");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("<span class=\"who\">bob</span>"),
        "{}",
        page.body
    );
    assert_eq!(Visitor::new(port).get("/").status, 403, "no user named");
    assert_eq!(
        Visitor::new(port)
            .get_with("/", "X-Forwarded-User", "<b>eve</b>")
            .status,
        403,
        "a name that is not a user name"
    );
    assert!(server.stop().success());
    // The header from anywhere but the proxy is not believed.
    case.edit_config(|t| t.replace("127.0.0.1/32", "192.0.2.1"));
    let mut server = start_serve(&case);
    let mut visitor = Visitor::new(port);
    visitor.wait_up();
    assert_eq!(visitor.get_with("/", "X-Forwarded-User", "bob").status, 403);
    assert!(server.stop().success());
}

/// "This is a ...": an answer in a wording no rule knows, taught from the console, is decided
/// again and answered; the template is listed, and removed again, and both acts are audited.
#[test]
fn a_message_handed_to_a_person_is_taught_from_the_console() {
    let case = setup("draft", "");
    let port = with_console(&case, "");
    case.deliver(&["d006.eml", "d007.eml", "learned/t1-new-wording-refusal.eml"]);
    case.run_once();
    let mut server = start_serve(&case);
    let mut visitor = Visitor::new(port);
    visitor.wait_up();
    let inbox = visitor.get("/inbox");
    assert!(inbox.body.contains("id=\"handed\""), "{}", inbox.body);
    let csrf = hidden(&inbox.body, "csrf");
    let id = "LRN0000000000000000000000000000000000001@CH3PR21MB9986.namprd21.prod.outlook.com";
    assert!(
        inbox.body.contains(id),
        "the unknown wording is listed: {}",
        inbox.body
    );
    let taught = visitor.post(
        "/teach",
        &[
            ("csrf", &csrf),
            ("message_id", id),
            ("kind", "ms_not_qualified"),
        ],
    );
    assert_eq!(taught.status, 303, "{}", taught.body);
    let templates = visitor.get("/templates");
    assert!(
        templates.body.contains("ms_not_qualified"),
        "{}",
        templates.body
    );
    // Decided again: the escalation reply is drafted on the next pass.
    assert!(server.stop().success());
    case.run_once();
    let replies = case
        .messages(crate::live::MAILBOX, &case.drafts)
        .iter()
        .filter(|d| {
            let t = String::from_utf8_lossy(d);
            t.contains("please escalate") || t.contains("escalate this ticket")
        })
        .count();
    assert_eq!(replies, 1, "the taught refusal is answered");
    let mut server = start_serve(&case);
    visitor.wait_up();
    let page = visitor.get("/templates");
    let remove = page
        .body
        .split_once("action=\"/templates/")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(path, _)| format!("/templates/{path}"))
        .expect("a remove form");
    let csrf = hidden(&page.body, "csrf");
    assert_eq!(visitor.post(&remove, &[("csrf", &csrf)]).status, 303);
    assert!(!visitor.get("/templates").body.contains("ms_not_qualified"));
    let audit = visitor.get("/audit").body;
    assert!(
        audit.contains("teach") && audit.contains("remove_template"),
        "{audit}"
    );
    assert!(server.stop().success());
}

#[test]
fn the_console_and_webhook_config_blocks_in_the_readme_are_valid() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README");
    let section = readme
        .split("\n## Console")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("the console section");
    let blocks: Vec<&str> = section
        .split("```toml\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .collect();
    assert!(blocks.len() >= 3, "{blocks:?}");
    for block in blocks {
        if let Err(e) = postmaster_bot::config::parse(block, "README.md") {
            panic!("README block does not parse: {e}\n{block}");
        }
    }
}

/// A webhook's own template is checked when the bot starts: a broken one names its file.
#[test]
fn a_webhook_template_is_checked_at_start() {
    let case = setup("draft", "");
    std::fs::write(
        case.dir.path().join("hook.json.hbs"),
        "{\"say\": {{json headline}}, \"ips\": {{json ips}}}",
    )
    .expect("template");
    case.edit_config(|t| {
        format!("{t}\n[[notify.webhook]]\nurl = \"http://127.0.0.1:9/hook\"\ntemplate = \"hook.json.hbs\"\n")
    });
    let config = case.config.display().to_string();
    let ok = case.bot(&["check-config", "--config", &config]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    std::fs::write(case.dir.path().join("hook.json.hbs"), "{{#if}").expect("template");
    let bad = case.bot(&["check-config", "--config", &config]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{err}");
    assert!(err.contains("hook.json.hbs"), "{err}");
    case.edit_config(|t| t.replace("http://127.0.0.1:9/hook", "http://hooks.example.com/x"));
    let plain = case.bot(&["check-config", "--config", &config]);
    let err = String::from_utf8_lossy(&plain.stderr);
    assert_eq!(plain.status.code(), Some(2), "{err}");
    assert!(
        err.contains("notify.webhook[0].url") && err.contains("https"),
        "{err}"
    );
}
