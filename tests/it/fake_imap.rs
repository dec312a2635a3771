//! A scripted IMAP server for what a real Dovecot will not do: answer garbage, or close the
//! connection in the middle of a literal. The bot must report an error and never crash.

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::live::setup;

/// How the fake server misbehaves when the bot fetches a message.
#[derive(Clone, Copy)]
enum Fault {
    CloseMidLiteral,
    Garbage,
    /// Accepts TLS and never greets.
    SilentGreeting,
    /// Never answers this command ("CREATE", "UID STORE"), answers the rest.
    SilentOn(&'static str),
    /// Behaves, announcing these capabilities (after IMAP4rev1).
    Capabilities(&'static str),
}

/// Every command each scripted server (by port) received, tag stripped.
static RECEIVED: std::sync::Mutex<Vec<(u16, String)>> = std::sync::Mutex::new(Vec::new());

fn received(port: u16) -> Vec<String> {
    RECEIVED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(p, _)| *p == port)
        .map(|(_, c)| c.clone())
        .collect()
}

/// A TLS acceptor with the test stack's server certificate.
pub(crate) fn tls_acceptor(tls_dir: &std::path::Path) -> TlsAcceptor {
    TlsAcceptor::from(server_config(tls_dir))
}

/// The TLS server settings with the test stack's certificate (issued by its CA, for 127.0.0.1).
pub(crate) fn server_config(tls_dir: &std::path::Path) -> Arc<tokio_rustls::rustls::ServerConfig> {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(tls_dir.join("server-chain.pem"))
            .expect("cert file")
            .collect::<Result<_, _>>()
            .expect("certs");
    let key = PrivateKeyDer::from_pem_file(tls_dir.join("server.key")).expect("key");
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    Arc::new(config)
}

/// Serves one scripted session per connection on a loopback port; returns the port.
async fn serve(fault: Fault, tls_dir: std::path::PathBuf) -> u16 {
    let acceptor = tls_acceptor(&tls_dir);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let (read, mut write) = tokio::io::split(tls);
                let mut lines = BufReader::new(read).lines();
                let capabilities = match fault {
                    Fault::Capabilities(c) => format!("IMAP4rev1 {c}"),
                    _ => "IMAP4rev1 IDLE".to_string(),
                };
                if !matches!(fault, Fault::SilentGreeting) {
                    let _ = write
                        .write_all(
                            format!("* OK [CAPABILITY {capabilities}] fake ready\r\n").as_bytes(),
                        )
                        .await;
                }
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut parts = line.splitn(3, ' ');
                    let tag = parts.next().unwrap_or("*").to_string();
                    let cmd = parts.next().unwrap_or("").to_ascii_uppercase();
                    let rest = parts.next().unwrap_or("").to_ascii_uppercase();
                    let command = match rest.split(' ').next() {
                        Some(word) if cmd == "UID" => format!("UID {word}"),
                        _ => cmd.clone(),
                    };
                    RECEIVED
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((port, format!("{cmd} {rest}")));
                    if matches!(fault, Fault::SilentGreeting)
                        || matches!(fault, Fault::SilentOn(c) if c == command)
                    {
                        continue;
                    }
                    let reply: Vec<u8> = match (cmd.as_str(), rest.as_str()) {
                        ("LOGIN", _) => format!("{tag} OK LOGIN completed\r\n").into(),
                        ("CAPABILITY", _) => format!("* CAPABILITY {capabilities}\r\n{tag} OK done\r\n").into(),
                        ("LIST", _) => format!("* LIST (\\HasNoChildren) \"/\" INBOX\r\n{tag} OK done\r\n").into(),
                        ("SELECT", _) => format!("* 1 EXISTS\r\n* OK [UIDVALIDITY 42] ok\r\n* OK [UIDNEXT 2] ok\r\n{tag} OK [READ-WRITE] done\r\n").into(),
                        ("UID", r) if r.starts_with("SEARCH") => format!("* SEARCH 1\r\n{tag} OK done\r\n").into(),
                        ("UID", r) if r.starts_with("FETCH") => match fault {
                            Fault::CloseMidLiteral => {
                                let _ = write.write_all(b"* 1 FETCH (UID 1 BODY[] {5000}\r\nFrom: a@b.example\r\nSubj").await;
                                let _ = write.shutdown().await;
                                return;
                            }
                            Fault::Garbage => b"* 1 FETCH (UID \x00\xff\xfe garbage ((( \r\n\x01\x02\r\n".to_vec(),
                            _ => format!("{tag} OK done\r\n").into(),
                        },
                        ("LOGOUT", _) => format!("* BYE\r\n{tag} OK bye\r\n").into(),
                        _ => format!("{tag} OK done\r\n").into(),
                    };
                    if write.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

fn run_against(fault: Fault) -> std::process::Output {
    run_against_with(fault, "")
}

fn run_against_with(fault: Fault, extra: &str) -> std::process::Output {
    run_recorded(fault, extra).0
}

/// Runs one pass against a scripted server; its output and the commands the server received.
fn run_recorded(fault: Fault, extra: &str) -> (std::process::Output, Vec<String>) {
    let case = setup("draft", extra);
    let tls_dir = std::path::Path::new(&case.stack_ca())
        .parent()
        .expect("tls dir")
        .to_path_buf();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let port = runtime.block_on(serve(fault, tls_dir));
    case.point_imap_at(port);
    case.edit_config(|t| {
        t.replacen(
            &format!("port = {port}"),
            &format!("port = {port}\ntimeout_seconds = 3"),
            1,
        )
    });
    let out = case.try_run_once(&[]);
    drop(runtime);
    (out, received(port))
}

#[test]
fn a_server_closing_mid_literal_is_an_error_not_a_crash() {
    let out = run_against(Fault::CloseMidLiteral);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "an error exit, not a panic (101): {err}"
    );
    assert!(err.contains("127.0.0.1:"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_server_that_never_greets_or_never_answers_a_command_is_a_timeout_not_a_hang() {
    for (fault, extra, command) in [
        (
            Fault::SilentGreeting,
            "",
            "TLS handshake, greeting and login",
        ),
        (Fault::SilentOn("CREATE"), "", "CREATE"),
        (
            Fault::SilentOn("UID STORE"),
            "handled_keyword = \"PostmasterBotHandled\"",
            "UID STORE",
        ),
    ] {
        let started = std::time::Instant::now();
        let out = run_against_with(fault, extra);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{command}: {err}");
        assert!(
            err.contains(command) && err.contains("timed out"),
            "{command}: {err}"
        );
        // timeout_seconds = 3: one command's limit, not a hang.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "{command}"
        );
    }
}

#[test]
fn handled_mail_is_moved_with_copy_and_expunge_without_move_and_left_alone_without_uidplus() {
    let handled = "handled_folder = \"Handled\"";
    let (out, commands) = run_recorded(Fault::Capabilities("IDLE UIDPLUS"), handled);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let uid = |name: &str| commands.iter().position(|c| c.starts_with(name));
    let (copy, store, expunge) = (
        uid("UID COPY 1:1 \"HANDLED\""),
        uid("UID STORE 1:1 +FLAGS.SILENT (\\DELETED)"),
        uid("UID EXPUNGE 1:1"),
    );
    assert!(
        copy.is_some() && copy < store && store < expunge,
        "COPY, then \\Deleted, then UID EXPUNGE of the same UIDs: {commands:?}"
    );
    assert!(
        !commands.iter().any(|c| c.starts_with("UID MOVE")),
        "{commands:?}"
    );
    assert!(
        !commands.iter().any(|c| c == "EXPUNGE "),
        "never a plain EXPUNGE: {commands:?}"
    );

    let (out, commands) = run_recorded(Fault::Capabilities("IDLE"), handled);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("neither MOVE nor UIDPLUS"), "{err}");
    assert!(
        !commands
            .iter()
            .any(|c| c.starts_with("UID COPY") || c.contains("DELETED") || c.contains("EXPUNGE")),
        "nothing copied or deleted: {commands:?}"
    );

    let (out, commands) = run_recorded(Fault::Capabilities("IDLE MOVE"), handled);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        commands
            .iter()
            .any(|c| c.starts_with("UID MOVE 1:1 \"HANDLED\"")),
        "{commands:?}"
    );
}

#[test]
fn a_server_answering_garbage_is_an_error_not_a_crash() {
    let out = run_against(Fault::Garbage);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "an error exit, not a panic (101): {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// An Exchange Online-like server: its capability list (no SPECIAL-USE, CONDSTORE or QRESYNC),
/// XOAUTH2 only, and `* BYE` in the middle of IDLE. Counts the connections it gets.
async fn serve_exchange(
    tls_dir: std::path::PathBuf,
    connections: Arc<std::sync::atomic::AtomicUsize>,
) -> u16 {
    let acceptor = tls_acceptor(&tls_dir);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    const CAPS: &str = "IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS MOVE ID UNSELECT CHILDREN IDLE NAMESPACE LITERAL+";
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            connections.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let (read, mut write) = tokio::io::split(tls);
                let mut lines = BufReader::new(read).lines();
                let _ = write
                    .write_all(b"* OK The Microsoft Exchange IMAP4 service is ready. [fake]\r\n")
                    .await;
                let mut auth_tag = None;
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(tag) = auth_tag.take() {
                        // The XOAUTH2 client response arrived after the continuation.
                        let ok = base64_decodes_to_bearer(&line);
                        let reply = if ok {
                            format!("{tag} OK AUTHENTICATE completed.\r\n")
                        } else {
                            format!("{tag} NO AUTHENTICATE failed.\r\n")
                        };
                        let _ = write.write_all(reply.as_bytes()).await;
                        continue;
                    }
                    let mut parts = line.splitn(3, ' ');
                    let tag = parts.next().unwrap_or("*").to_string();
                    let cmd = parts.next().unwrap_or("").to_ascii_uppercase();
                    let reply = match cmd.as_str() {
                        "AUTHENTICATE" => {
                            auth_tag = Some(tag);
                            "+ \r\n".to_string()
                        }
                        "CAPABILITY" => format!("* CAPABILITY {CAPS}\r\n{tag} OK CAPABILITY completed.\r\n"),
                        "SELECT" => format!("* 0 EXISTS\r\n* 0 RECENT\r\n* OK [UIDVALIDITY 14] UIDVALIDITY value\r\n* OK [UIDNEXT 1] The next unique identifier value\r\n{tag} OK [READ-WRITE] SELECT completed.\r\n"),
                        "UID" => format!("* SEARCH\r\n{tag} OK SEARCH completed.\r\n"),
                        "LIST" => format!("* LIST (\\HasNoChildren) \"/\" Drafts\r\n{tag} OK LIST completed.\r\n"),
                        "IDLE" => {
                            // Exchange drops idle sessions: BYE in the middle of IDLE.
                            let _ = write.write_all(b"+ IDLE accepted, awaiting DONE command.\r\n").await;
                            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                            let _ = write.write_all(b"* BYE Connection is closed. 13\r\n").await;
                            let _ = write.shutdown().await;
                            return;
                        }
                        "LOGOUT" => format!("* BYE Microsoft Exchange Server IMAP4 server signing off.\r\n{tag} OK LOGOUT completed.\r\n"),
                        _ => format!("{tag} OK completed.\r\n"),
                    };
                    if write.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

fn base64_decodes_to_bearer(line: &str) -> bool {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(line.trim())
        .is_ok_and(|b| {
            let text = String::from_utf8_lossy(&b);
            // The token the external helper prints, or one the test OAuth2 server issued.
            text.contains("auth=Bearer exchange-token") || text.contains("auth=Bearer at-")
        })
}

/// Runs the daemon against the Exchange-like server until it connected three times; returns
/// the connections seen and the daemon's exit status after SIGTERM.
fn reconnects_to_exchange(case: &crate::live::Case) -> (usize, std::process::ExitStatus) {
    let tls_dir = std::path::Path::new(&case.stack_ca())
        .parent()
        .expect("tls dir")
        .to_path_buf();
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let port = runtime.block_on(serve_exchange(tls_dir, connections.clone()));
    case.point_imap_at(port);
    let mut daemon = crate::live::Daemon(
        std::process::Command::new(env!("CARGO_BIN_EXE_postmaster-bot"))
            .args(["run", "--config", &case.config.display().to_string()])
            .current_dir(case.dir.path())
            .env("PMB_TEST_PASSWORD", "password")
            .spawn()
            .expect("daemon starts"),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while connections.load(std::sync::atomic::Ordering::SeqCst) < 3
        && std::time::Instant::now() < deadline
    {
        runtime.block_on(async { tokio::time::sleep(std::time::Duration::from_millis(100)).await });
    }
    let seen = connections.load(std::sync::atomic::Ordering::SeqCst);
    (seen, daemon.stop())
}

#[test]
fn exchange_bye_during_idle_is_a_normal_reconnect() {
    let case = setup("draft", "");
    case.edit_config(|t| {
        t.replacen(
            "password_env = \"PMB_TEST_PASSWORD\"",
            "auth = \"xoauth2\"\npassword_command = \"echo exchange-token\"",
            1,
        )
    });
    let (seen, status) = reconnects_to_exchange(&case);
    assert!(
        seen >= 3,
        "the daemon reconnected after each BYE: {seen} connections"
    );
    assert!(
        status.success(),
        "still running, then stopped cleanly: {status}"
    );
}

#[test]
fn every_reconnect_to_exchange_gets_a_new_oauth2_token() {
    let client = crate::oauth::add_client(crate::oauth::Client {
        secret: Some("s3cret".into()),
        lifetime: 3600,
        ..Default::default()
    });
    let case = setup("draft", "");
    crate::oauth::use_oauth2(&case, &client, "client_credentials");
    let (seen, status) = reconnects_to_exchange(&case);
    assert!(seen >= 3, "{seen} connections");
    assert!(status.success(), "{status}");
    let requests = crate::oauth::client_stats(&client).requests as usize;
    assert!(
        requests >= seen - 1 && requests <= seen,
        "a token per connection, although the first was valid for an hour: {requests} tokens for {seen} connections"
    );
}
