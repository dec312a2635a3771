//! XOAUTH2 against the real Dovecot (IMAP) and Postfix (SMTP AUTH through Dovecot): Dovecot asks
//! the introspection endpoint this test serves whether a token is valid.
// Plain threads waiting for real servers: sleeping is the point.
#![allow(clippy::disallowed_methods)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Mutex, OnceLock};

use crate::live::{setup, Case, THREAD};

/// Tokens the introspection endpoint accepts (each test adds its own).
static GOOD: Mutex<Vec<String>> = Mutex::new(Vec::new());
static SERVER: OnceLock<()> = OnceLock::new();

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

/// Serves RFC 7662 introspection (once per test binary) and accepts `good` for
/// postmaster@example.net.
fn serve_introspection(good: &str) {
    GOOD.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(good.to_string());
    SERVER.get_or_init(|| {
        let listener = TcpListener::bind(("127.0.0.1", introspection_port()))
            .expect("bind the introspection port");
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                answer(stream);
            }
        });
    });
}

fn answer(stream: std::net::TcpStream) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
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
    let body = String::from_utf8_lossy(&body);
    let good = GOOD.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let active = body
        .split('&')
        .any(|kv| good.iter().any(|g| kv == format!("token={g}")));
    let json = if active {
        r#"{"active": true, "username": "postmaster@example.net"}"#
    } else {
        r#"{"active": false}"#
    };
    let mut out = stream;
    let _ = write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
        json.len()
    );
}

fn use_xoauth2(case: &Case, token_command: &str) {
    let text = std::fs::read_to_string(&case.config)
        .expect("config")
        .replace(
            "password_env = \"PMB_TEST_PASSWORD\"",
            &format!("auth = \"xoauth2\"\npassword_command = \"{token_command}\""),
        );
    std::fs::write(&case.config, text).expect("write");
}

#[test]
fn xoauth2_logs_in_to_imap_and_smtp_with_a_fresh_token_per_connection() {
    serve_introspection("tok-good-1");
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
    serve_introspection("tok-good-2");
    let case = setup("draft", "");
    use_xoauth2(&case, "echo tok-expired");
    let o = case.bot(&[
        "run",
        "--once",
        "--config",
        &case.config.display().to_string(),
    ]);
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
