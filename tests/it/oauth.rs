//! XOAUTH2 against the real Dovecot (IMAP) and Postfix (SMTP AUTH through Dovecot): Dovecot asks
//! the introspection endpoint this test serves whether a token is valid.
// Plain threads waiting for real servers: sleeping is the point.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Mutex, OnceLock};

use base64::Engine as _;
use sha2::Digest as _;

use crate::live::{setup, Case, Daemon, THREAD};

/// The loopback OAuth2 server's state: tokens, grants and, per client, how it behaves.
#[derive(Default)]
struct Server {
    /// Access token -> (expiry, uses left before it stops working).
    access: HashMap<String, (u64, Option<u32>)>,
    /// Refresh token -> client id.
    refresh: HashMap<String, String>,
    clients: HashMap<String, Client>,
    /// Device code -> (user code, client id, approved).
    devices: HashMap<String, (String, String, bool)>,
    /// Authorization code -> (client id, PKCE challenge, redirect URI).
    codes: HashMap<String, (String, String, String)>,
    serial: u64,
}

/// How the token endpoint treats one client (each test uses its own).
#[derive(Default, Clone)]
pub(crate) struct Client {
    pub(crate) secret: Option<String>,
    /// `expires_in` of the access tokens it issues.
    pub(crate) lifetime: u64,
    /// This many first access tokens are dead on arrival though they claim a long life.
    pub(crate) dead_on_arrival: u32,
    /// Each access token works for this many logins.
    pub(crate) uses: Option<u32>,
    /// Issue a new refresh token on every refresh, invalidating the old one.
    pub(crate) rotate: bool,
    /// Token requests seen.
    pub(crate) requests: u32,
}

static SERVER: Mutex<Option<Server>> = Mutex::new(None);
static LISTENING: OnceLock<()> = OnceLock::new();

fn with_server<T>(f: impl FnOnce(&mut Server) -> T) -> T {
    let mut guard = SERVER.lock().unwrap_or_else(|e| e.into_inner());
    f(guard.get_or_insert_with(Server::default))
}

fn now() -> u64 {
    postmaster_bot::clock::now() as u64
}

fn introspection_port() -> u16 {
    let dir = std::env::var("POSTMASTER_BOT_MAILSTACK")
        .unwrap_or_else(|_| "/tmp/postmaster-bot-mailstack".to_string());
    std::fs::read_to_string(format!("{dir}/env"))
        .expect("mail stack env: start it with `scripts/mailstack up`")
        .lines()
        .find_map(|l| l.strip_prefix("MAILSTACK_OAUTH2_INTROSPECTION_PORT="))
        .expect("the mail stack is too old: rerun `scripts/mailstack up`")
        .parse()
        .expect("port")
}

/// Starts the server (once per test binary) on the port Dovecot asks for introspection.
pub(crate) fn oauth_server() -> u16 {
    let port = introspection_port();
    LISTENING.get_or_init(|| {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the introspection port");
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || answer(stream));
            }
        });
    });
    port
}

static HTTPS_PORT: OnceLock<u16> = OnceLock::new();

/// The same server over HTTPS, with the test stack's certificate (its CA is not one the bot
/// trusts unless `ca_file` says so); the port.
fn https_oauth_server(stack_ca: &str) -> u16 {
    oauth_server();
    *HTTPS_PORT.get_or_init(|| {
        let tls_dir = std::path::Path::new(stack_ca)
            .parent()
            .expect("tls dir")
            .to_path_buf();
        let config = crate::fake_imap::server_config(&tls_dir);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                let config = config.clone();
                std::thread::spawn(move || {
                    let Ok(conn) = tokio_rustls::rustls::ServerConnection::new(config) else {
                        return;
                    };
                    let mut tls = tokio_rustls::rustls::StreamOwned::new(conn, tcp);
                    answer(&mut tls);
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                });
            }
        });
        port
    })
}

/// Registers a client; returns its id.
pub(crate) fn add_client(client: Client) -> String {
    with_server(|s| {
        s.serial += 1;
        let id = format!("client-{}-{}", std::process::id(), s.serial);
        s.clients.insert(id.clone(), client);
        id
    })
}

pub(crate) fn client_stats(id: &str) -> Client {
    with_server(|s| s.clients.get(id).cloned().expect("client"))
}

/// A valid access token for postmaster@example.net, as an external helper would print.
fn grant_access(token: &str) {
    with_server(|s| {
        s.access.insert(token.to_string(), (u64::MAX, None));
    });
}

fn issue_refresh(s: &mut Server, client: &str) -> String {
    s.serial += 1;
    let token = format!("rt-{}-{}", s.serial, now());
    s.refresh.insert(token.clone(), client.to_string());
    token
}

fn form(text: &str) -> HashMap<String, String> {
    url::form_urlencoded::parse(text.as_bytes())
        .into_owned()
        .collect()
}

fn answer<S: Read + Write>(mut stream: S) {
    let mut reader = BufReader::new(&mut stream);
    let mut request_line = String::new();
    let _ = reader.read_line(&mut request_line);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; length];
    let _ = reader.read_exact(&mut body);
    drop(reader);
    let params = form(&String::from_utf8_lossy(&body));
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let (status, json) = with_server(|s| {
        if path.ends_with("/introspect") {
            introspect(s, &params)
        } else if path.ends_with("/devicecode") {
            device_code(s, &params)
        } else if path.ends_with("/token") {
            token(s, &params)
        } else {
            (404, serde_json::json!({"error": "not_found"}))
        }
    });
    let json = json.to_string();
    let reason = if status == 200 { "OK" } else { "Bad Request" };
    let _ = write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
        json.len()
    );
}

fn introspect(s: &mut Server, p: &HashMap<String, String>) -> (u16, serde_json::Value) {
    let token = p.get("token").cloned().unwrap_or_default();
    let active = match s.access.get_mut(&token) {
        Some((exp, _)) if *exp <= now() => false,
        Some((_, Some(0))) => false,
        Some((_, Some(uses))) => {
            *uses -= 1;
            true
        }
        Some((_, None)) => true,
        None => false,
    };
    if active {
        (
            200,
            serde_json::json!({"active": true, "username": "postmaster@example.net"}),
        )
    } else {
        (200, serde_json::json!({"active": false}))
    }
}

fn device_code(s: &mut Server, p: &HashMap<String, String>) -> (u16, serde_json::Value) {
    let client = p.get("client_id").cloned().unwrap_or_default();
    if !s.clients.contains_key(&client) {
        return (400, serde_json::json!({"error": "invalid_client"}));
    }
    s.serial += 1;
    let device = format!("dc-{}", s.serial);
    let user = format!("USER-{}", s.serial);
    s.devices
        .insert(device.clone(), (user.clone(), client, false));
    (
        200,
        serde_json::json!({
            "device_code": device, "user_code": user,
            "verification_uri": "https://login.example/device",
            "expires_in": 300, "interval": 1
        }),
    )
}

fn token(s: &mut Server, p: &HashMap<String, String>) -> (u16, serde_json::Value) {
    let error = |e: &str| (400, serde_json::json!({"error": e}));
    let grant = p.get("grant_type").map(String::as_str).unwrap_or("");
    let mut client_id = p.get("client_id").cloned().unwrap_or_default();
    let mut refresh = None;
    match grant {
        "client_credentials" => {
            let Some(c) = s.clients.get(&client_id) else {
                return error("invalid_client");
            };
            if c.secret.is_some() && c.secret.as_ref() != p.get("client_secret") {
                return error("invalid_client");
            }
        }
        "refresh_token" => {
            let given = p.get("refresh_token").cloned().unwrap_or_default();
            let Some(owner) = s.refresh.get(&given).cloned() else {
                return error("invalid_grant");
            };
            client_id = owner;
            let rotate = s.clients.get(&client_id).is_some_and(|c| c.rotate);
            if rotate {
                s.refresh.remove(&given);
                refresh = Some(issue_refresh(s, &client_id));
            }
        }
        "urn:ietf:params:oauth:grant-type:device_code" => {
            let code = p.get("device_code").cloned().unwrap_or_default();
            match s.devices.get(&code) {
                None => return error("expired_token"),
                Some((_, _, false)) => return error("authorization_pending"),
                Some((_, owner, true)) => client_id = owner.clone(),
            }
            s.devices.remove(&code);
            refresh = Some(issue_refresh(s, &client_id));
        }
        "authorization_code" => {
            let code = p.get("code").cloned().unwrap_or_default();
            let Some((owner, challenge, redirect)) = s.codes.remove(&code) else {
                return error("invalid_grant");
            };
            let verifier = p.get("code_verifier").cloned().unwrap_or_default();
            let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(sha2::Sha256::digest(verifier.as_bytes()));
            if computed != challenge || p.get("redirect_uri") != Some(&redirect) {
                return error("invalid_grant");
            }
            client_id = owner;
            refresh = Some(issue_refresh(s, &client_id));
        }
        _ => return error("unsupported_grant_type"),
    }
    let Some(c) = s.clients.get_mut(&client_id) else {
        return error("invalid_client");
    };
    c.requests += 1;
    let dead = c.requests <= c.dead_on_arrival;
    let (lifetime, uses) = (c.lifetime, c.uses);
    s.serial += 1;
    let access = format!("at-{}-{}", s.serial, now());
    let exp = if dead { 0 } else { now() + lifetime };
    s.access.insert(access.clone(), (exp, uses));
    let mut body = serde_json::json!({
        "access_token": access, "token_type": "Bearer", "expires_in": lifetime
    });
    if let Some(r) = refresh {
        body["refresh_token"] = serde_json::Value::String(r);
    }
    (200, body)
}

/// The person at the browser approves the device code shown to them.
fn approve_device(user_code: &str) {
    with_server(|s| {
        for (user, _, approved) in s.devices.values_mut() {
            if user == user_code {
                *approved = true;
            }
        }
    });
}

fn refresh_token_valid(token: &str) -> bool {
    with_server(|s| s.refresh.contains_key(token))
}

fn use_xoauth2(case: &Case, token_command: &str) {
    case.edit_config(|t| {
        t.replace(
            "password_env = \"PMB_TEST_PASSWORD\"",
            &format!("auth = \"xoauth2\"\npassword_command = \"{token_command}\""),
        )
    });
}

#[test]
fn xoauth2_logs_in_to_imap_and_smtp_with_a_fresh_token_per_connection() {
    oauth_server();
    grant_access("tok-good-1");
    let case = setup("auto", "");
    let calls = case.dir.path().join("token-calls");
    use_xoauth2(
        &case,
        &format!("echo x >> {} && echo tok-good-1", calls.display()),
    );
    case.deliver(&THREAD);
    case.run_once();
    assert_eq!(
        case.wait_for_replies(1).len(),
        1,
        "sent through SMTP AUTH XOAUTH2"
    );
    let n = std::fs::read_to_string(&calls)
        .expect("calls")
        .lines()
        .count();
    assert!(n >= 2, "the token command ran for IMAP and for SMTP: {n}");
}

#[test]
fn a_rejected_token_reports_the_server_reason() {
    oauth_server();
    grant_access("tok-good-2");
    let case = setup("draft", "");
    use_xoauth2(&case, "echo tok-expired");
    let o = case.try_run_once(&[]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("XOAUTH2") && err.contains("\"status\""),
        "{err}"
    );
    assert!(
        !err.contains("tok-expired"),
        "the token never appears: {err}"
    );
}

/// Switches IMAP and SMTP to XOAUTH2 with tokens from an `[oauth2]` section for `client`.
pub(crate) fn use_oauth2(case: &Case, client: &str, flow: &str) {
    let port = oauth_server();
    let base = format!("http://127.0.0.1:{port}");
    case.edit_config(|t| {
        t.replace("password_env = \"PMB_TEST_PASSWORD\"", "auth = \"xoauth2\"")
            + &format!(
                r#"
[oauth2]
provider = "custom"
flow = "{flow}"
client_id = "{client}"
client_secret_command = "echo s3cret"
scopes = ["mail", "offline_access"]
token_url = "{base}/token"
device_authorization_url = "{base}/devicecode"
authorization_url = "{base}/authorize"
refresh_token_file = "refresh-token"
"#
            )
    });
}

fn stored_refresh_token(case: &Case) -> String {
    std::fs::read_to_string(case.dir.path().join("refresh-token"))
        .expect("refresh token file")
        .trim()
        .to_string()
}

/// Runs `auth login`, hands each line it prints to `act`, and returns its exit status.
fn login(
    case: &Case,
    mut act: impl FnMut(&str, &mut std::process::ChildStdin),
) -> (std::process::ExitStatus, String) {
    let mut child = Daemon(
        std::process::Command::new(env!("CARGO_BIN_EXE_postmaster-bot"))
            .args([
                "auth",
                "login",
                "--config",
                &case.config.display().to_string(),
            ])
            .current_dir(case.dir.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("auth login starts"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let mut stdin = child.0.stdin.take().expect("stdin");
    let mut printed = String::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("line");
        printed.push_str(&line);
        printed.push('\n');
        act(&line, &mut stdin);
    }
    let status = child.0.wait().expect("exits");
    let mut err = String::new();
    if let Some(mut e) = child.0.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (status, format!("{printed}{err}"))
}

#[test]
fn device_code_login_stores_a_private_refresh_token_that_the_daemon_uses_and_rotates() {
    let client = add_client(Client {
        lifetime: 3600,
        rotate: true,
        ..Client::default()
    });
    let case = setup("auto", "");
    use_oauth2(&case, &client, "device_code");
    let (status, printed) = login(&case, |line, _| {
        if let Some(code) = line.split("enter the code ").nth(1) {
            approve_device(code.trim());
        }
    });
    assert!(status.success(), "{printed}");
    assert!(
        printed.contains("https://login.example/device"),
        "{printed}"
    );
    let path = case.dir.path().join("refresh-token");
    let mode = std::fs::metadata(&path).expect("stored").permissions();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.mode() & 0o777, 0o600);
    let first = stored_refresh_token(&case);
    assert!(refresh_token_valid(&first));
    let check = case.bot(&[
        "auth",
        "check",
        "--config",
        &case.config.display().to_string(),
    ]);
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        said.contains("IMAP") && said.contains("logged in"),
        "{said}"
    );
    assert!(
        said.contains("SMTP") && said.contains("authenticated"),
        "{said}"
    );
    let first = stored_refresh_token(&case);

    case.deliver(&THREAD);
    case.run_once();
    assert_eq!(case.wait_for_replies(1).len(), 1, "sent with XOAUTH2");
    let rotated = stored_refresh_token(&case);
    assert_ne!(rotated, first, "the rotated refresh token was saved");
    assert!(refresh_token_valid(&rotated) && !refresh_token_valid(&first));
    let listing = std::fs::read_dir(case.dir.path())
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("oauth2-refresh"))
        .count();
    assert_eq!(listing, 0, "no temporary token file left behind");
}

#[test]
fn a_token_the_server_refuses_is_replaced_and_the_login_retried() {
    // The first token claims an hour of life but the server already forgot it.
    let client = add_client(Client {
        secret: Some("s3cret".into()),
        lifetime: 3600,
        dead_on_arrival: 1,
        ..Client::default()
    });
    let case = setup("draft", "");
    use_oauth2(&case, &client, "client_credentials");
    case.deliver(&THREAD);
    let err = case.run_once_logged();
    assert!(err.contains("refused the access token"), "{err}");
    assert_eq!(
        client_stats(&client).requests,
        2,
        "one refused token, one good"
    );
    assert_eq!(
        case.messages("postmaster@example.net", &case.drafts).len(),
        1
    );
}

#[test]
fn a_token_endpoint_with_a_private_ca_is_trusted_only_through_ca_file() {
    let client = add_client(Client {
        secret: Some("s3cret".into()),
        lifetime: 3600,
        ..Client::default()
    });
    let case = setup("draft", "");
    use_oauth2(&case, &client, "client_credentials");
    let https = format!("https://127.0.0.1:{}", https_oauth_server(&case.stack_ca()));
    case.edit_config(|t| t.replace(&format!("http://127.0.0.1:{}", oauth_server()), &https));
    // Without it, the certificate is refused and no token is asked for.
    let o = case.try_run_once(&[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(client_stats(&client).requests, 0, "{err}");
    case.edit_config(|t| {
        t.replace(
            "[oauth2]\n",
            &format!("[oauth2]\nca_file = \"{}\"\n", case.stack_ca()),
        )
    });
    case.deliver(&THREAD);
    let o = case.try_run_once(&[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(client_stats(&client).requests >= 1);
    assert_eq!(
        case.messages("postmaster@example.net", &case.drafts).len(),
        1
    );
}

#[test]
fn a_token_expiring_soon_is_replaced_before_use_and_smtp_gets_a_new_one_when_refused() {
    // Tokens live 60 s, inside the 300 s margin: every use asks for a new one.
    let short = add_client(Client {
        secret: Some("s3cret".into()),
        lifetime: 60,
        ..Client::default()
    });
    let case = setup("auto", "");
    use_oauth2(&case, &short, "client_credentials");
    case.deliver(&THREAD);
    case.run_once();
    assert_eq!(case.wait_for_replies(1).len(), 1);
    assert_eq!(
        client_stats(&short).requests,
        2,
        "one token for IMAP, a new one for SMTP"
    );

    // Long-lived tokens that work for one login only: IMAP uses it up, SMTP is refused, the
    // bot asks for a new token and the reply still leaves, once.
    let single = add_client(Client {
        secret: Some("s3cret".into()),
        lifetime: 3600,
        uses: Some(1),
        ..Client::default()
    });
    let case = setup("auto", "");
    use_oauth2(&case, &single, "client_credentials");
    case.deliver(&THREAD);
    let err = case.run_once_logged();
    assert!(
        err.contains("SMTP server refused the access token"),
        "{err}"
    );
    assert_eq!(case.wait_for_replies(1).len(), 1);
    assert_eq!(
        client_stats(&single).requests,
        2,
        "the cached token, then a new one"
    );
}

#[test]
fn authorization_code_login_accepts_the_address_pasted_from_another_machine() {
    let client = add_client(Client {
        lifetime: 3600,
        ..Client::default()
    });
    let case = setup("draft", "");
    use_oauth2(&case, &client, "authorization_code");
    let (status, printed) = login(&case, |line, stdin| {
        let Some(landed) = sign_in(line, &client) else {
            return;
        };
        // The browser ran elsewhere: the address it ended on is pasted into `auth login`.
        writeln!(stdin, "not an address").expect("paste");
        writeln!(stdin, "{landed}").expect("paste");
    });
    assert!(status.success(), "{printed}");
    assert!(refresh_token_valid(&stored_refresh_token(&case)));
}

/// Plays the provider for an authorization URL printed by `auth login`: checks PKCE, issues a
/// code for `client`, and returns the address the browser would be sent back to.
fn sign_in(line: &str, client: &str) -> Option<String> {
    let url = url::Url::parse(line.trim()).ok()?;
    if !url.path().ends_with("/authorize") {
        return None;
    }
    let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!(
        q.get("code_challenge_method").map(String::as_str),
        Some("S256")
    );
    let redirect = q.get("redirect_uri").expect("redirect_uri").clone();
    let code = format!("code-{client}");
    with_server(|s| {
        s.codes.insert(
            code.clone(),
            (
                client.to_string(),
                q["code_challenge"].clone(),
                redirect.clone(),
            ),
        )
    });
    Some(format!("{redirect}?code={code}&state={}", q["state"]))
}

#[test]
fn authorization_code_login_uses_pkce_and_the_loopback_redirect() {
    let client = add_client(Client {
        lifetime: 3600,
        ..Client::default()
    });
    let case = setup("draft", "");
    use_oauth2(&case, &client, "authorization_code");
    let (status, printed) = login(&case, |line, _| {
        let Some(landed) = sign_in(line, &client) else {
            return;
        };
        // The provider sends the browser back to the bot's loopback listener.
        let back = url::Url::parse(&landed).expect("redirect");
        let mut browser = std::net::TcpStream::connect((
            back.host_str().expect("host"),
            back.port().expect("port"),
        ))
        .expect("the bot listens on loopback");
        write!(
            browser,
            "GET /?{} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            back.query().unwrap_or("")
        )
        .expect("request");
        let mut page = String::new();
        let _ = browser.read_to_string(&mut page);
        assert!(page.contains("sign-in received"), "{page}");
    });
    assert!(status.success(), "{printed}");
    assert!(refresh_token_valid(&stored_refresh_token(&case)));
    case.deliver(&THREAD);
    case.run_once();
    assert_eq!(
        case.messages("postmaster@example.net", &case.drafts).len(),
        1
    );
}

#[test]
fn a_revoked_refresh_token_stops_with_a_sign_in_hint_and_no_token_in_the_output() {
    let client = add_client(Client {
        lifetime: 3600,
        ..Client::default()
    });
    let case = setup("draft", "");
    use_oauth2(&case, &client, "device_code");
    std::fs::write(
        case.dir.path().join("refresh-token"),
        "rt-revoked-long-ago\n",
    )
    .expect("w");
    let o = case.try_run_once(&[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("invalid_grant") && err.contains("auth login"),
        "{err}"
    );
    assert!(!err.contains("rt-revoked-long-ago"), "{err}");
}
