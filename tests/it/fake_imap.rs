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
    /// Refuses a SEARCH with OR in it (as some Exchange versions refuse grouped or compound
    /// keys), finds UID 7 by SUBJECT, and serves UID 7's header fields: our earlier reply.
    PickySearch,
    /// Refuses every SEARCH with NO.
    RefusingSearch,
    /// Holds two bounces (UIDs 1 and 2) and, as Exchange does with a message it cannot
    /// convert, refuses with NO a FETCH of UID 2's body, alone or with UID 1.
    RefusesOneMessage,
}

/// A bounce as `Fault::RefusesOneMessage` serves it: its header fields, and the whole message.
const BOUNCE_HEADER: &str = "From: MAILER-DAEMON@mx1.example.net\r\nSubject: Undelivered Mail Returned to Sender\r\nMessage-ID: <bounce.1@mx1.example.net>\r\n\r\n";
const BOUNCE_BODY: &str = "This is the mail system at host mx1.example.net.\r\n\r\n<someone@outlook.com>: host outlook-com.olc.protection.outlook.com said: 550 5.7.1 Unfortunately, messages from [192.0.2.25] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3140).\r\n";

/// The header fields of our earlier reply that `Fault::PickySearch` serves.
const EARLIER_REPLY: &str = "Message-ID: <earlier.1@postmaster.example.net>\r\nFrom: postmaster@example.net\r\nTo: support@microsoft.com\r\nSubject: RE: SRX1234567890ID\r\nIn-Reply-To: <verdict.1@microsoft.com>\r\nX-Postmaster-Bot: postmaster-bot\r\n\r\n";

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
                        ("SELECT", _) if !matches!(fault, Fault::RefusesOneMessage) => format!("* 1 EXISTS\r\n* OK [UIDVALIDITY 42] ok\r\n* OK [UIDNEXT 2] ok\r\n{tag} OK [READ-WRITE] done\r\n").into(),
                        ("SELECT", _) if matches!(fault, Fault::RefusesOneMessage) => format!("* 2 EXISTS\r\n* OK [UIDVALIDITY 42] ok\r\n* OK [UIDNEXT 3] ok\r\n{tag} OK [READ-WRITE] done\r\n").into(),
                        ("UID", r) if r.starts_with("SEARCH") && matches!(fault, Fault::RefusesOneMessage) => format!("* SEARCH 1 2\r\n{tag} OK done\r\n").into(),
                        ("UID", r) if r.starts_with("FETCH") && matches!(fault, Fault::RefusesOneMessage) => {
                            let set = r.split(' ').nth(1).unwrap_or("");
                            if r.contains("HEADER.FIELDS") {
                                let mut out = String::new();
                                for uid in [1, 2] {
                                    let header = BOUNCE_HEADER.replace("bounce.1", &format!("bounce.{uid}"));
                                    out.push_str(&format!("* {uid} FETCH (UID {uid} RFC822.SIZE 900 BODY[HEADER.FIELDS (FROM)] {{{}}}\r\n{header})\r\n", header.len()));
                                }
                                format!("{out}{tag} OK done\r\n").into()
                            } else if set == "1" {
                                let whole = format!("{BOUNCE_HEADER}{BOUNCE_BODY}");
                                format!("* 1 FETCH (UID 1 RFC822.SIZE {n} BODY[]<0> {{{n}}}\r\n{whole})\r\n{tag} OK done\r\n", n = whole.len()).into()
                            } else {
                                format!("{tag} NO The requested message could not be converted to an RFC-822 compatible format.\r\n").into()
                            }
                        }
                        ("UID", r) if r.starts_with("SEARCH") && matches!(fault, Fault::RefusingSearch) => {
                            format!("{tag} NO Search failed\r\n").into()
                        }
                        ("UID", r) if r.starts_with("SEARCH") && matches!(fault, Fault::PickySearch) => {
                            if r.contains(" OR ") || r.starts_with("SEARCH OR") {
                                format!("{tag} BAD Command Argument Error. 11\r\n").into()
                            } else if r.contains("SUBJECT") {
                                format!("* SEARCH 7\r\n{tag} OK done\r\n").into()
                            } else {
                                format!("* SEARCH\r\n{tag} OK done\r\n").into()
                            }
                        }
                        ("UID", r) if r.starts_with("FETCH") && matches!(fault, Fault::PickySearch) => format!(
                            "* 1 FETCH (UID 7 BODY[HEADER.FIELDS (MESSAGE-ID)] {{{}}}\r\n{EARLIER_REPLY})\r\n{tag} OK done\r\n",
                            EARLIER_REPLY.len()
                        )
                        .into(),
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

/// A scripted server with the test stack's certificate, on its own runtime (which must live as
/// long as the server is used); the runtime and the port.
fn scripted(case: &crate::live::Case, fault: Fault) -> (tokio::runtime::Runtime, u16) {
    let tls_dir = std::path::Path::new(&case.stack_ca())
        .parent()
        .expect("tls dir")
        .to_path_buf();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let port = runtime.block_on(serve(fault, tls_dir));
    (runtime, port)
}

/// Runs one pass against a scripted server; its output and the commands the server received.
fn run_recorded(fault: Fault, extra: &str) -> (std::process::Output, Vec<String>) {
    let case = setup("draft", extra);
    let (runtime, port) = scripted(&case, fault);
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

/// Asks the second witness about our usual thread on a scripted server; the answer and the
/// commands the server received.
fn witness_against(
    fault: Fault,
) -> (
    Result<Vec<postmaster_bot::shell::witness::Found>, postmaster_bot::shell::imap::ImapError>,
    Vec<String>,
) {
    use postmaster_bot::pipeline::witness::{Ours, Thread};
    let case = setup("draft", "");
    let (runtime, port) = scripted(&case, fault);
    let mailbox = postmaster_bot::config::parse(
        &format!(
            "[mailbox]\nhost = \"127.0.0.1\"\nport = {port}\nusername = \"pm\"\npassword_env = \"X\"\nca_file = \"{}\"\n",
            case.stack_ca()
        ),
        "test",
    )
    .expect("valid")
    .mailbox
    .expect("mailbox");
    let domains = vec!["microsoft.com".to_string()];
    let found = runtime.block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut imap = postmaster_bot::shell::imap::Imap::connect(
            &mailbox,
            &secrecy::SecretString::from("pw".to_string()),
        )
        .await
        .expect("login");
        let places = postmaster_bot::shell::witness::Places::new(&mailbox, "Sent", "Drafts");
        postmaster_bot::shell::witness::look(
            &mut imap,
            &places,
            &Thread {
                parent: Some("verdict.1@microsoft.com"),
                parent_date: None,
                ticket: Some("SRX1234567890ID"),
            },
            &Ours {
                loop_header: "X-Postmaster-Bot",
                instance: "postmaster-bot",
                address: "postmaster@example.net",
                microsoft_domains: &domains,
            },
            &[],
        )
        .await
    });
    (found, received(port))
}

/// A server that refuses the witness's combined search (OR keys) still answers the simple ones,
/// and the earlier reply is found by them: the second witness never depends on one server's
/// search grammar. A server that refuses every search is an error, never "nothing found".
#[test]
fn the_second_witness_asks_one_thing_at_a_time_and_a_refused_search_is_never_nothing_found() {
    let (found, commands) = witness_against(Fault::PickySearch);
    let found = found.expect("the mailbox answered");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].folder, "Sent");
    assert_eq!(
        found[0].earlier.relation,
        postmaster_bot::pipeline::witness::Relation::AnswersParent
    );
    let searches: Vec<&String> = commands
        .iter()
        .filter(|c| c.starts_with("UID SEARCH"))
        .collect();
    assert!(searches[0].contains(" OR "), "{searches:?}");
    assert!(
        searches
            .iter()
            .any(|s| s.contains("SUBJECT") && !s.contains(" OR ")),
        "{searches:?}"
    );

    let (found, _) = witness_against(Fault::RefusingSearch);
    match found {
        Err(e) => assert!(e.is_refusal(), "{e}"),
        Ok(f) => panic!("a refused search read as an answer: {f:?}"),
    }
}

/// A message the server will not give out (Exchange's "could not be converted to an RFC-822
/// compatible format") neither stops the catch-up nor passes in silence: the rest of its chunk
/// is read one by one, and it is quarantined with the server's words.
#[test]
fn a_message_the_server_will_not_fetch_is_quarantined_and_the_rest_are_read() {
    let case = setup("draft", "");
    let (_runtime, port) = scripted(&case, Fault::RefusesOneMessage);
    case.point_imap_at(port);
    let out = case.try_run_once(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("quarantined"), "{err}");
    let quarantined = case.pairs("SELECT source, error FROM quarantine");
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    assert!(quarantined[0].0.ends_with("/2"), "{quarantined:?}");
    assert!(
        quarantined[0].1.contains("could not be converted"),
        "{quarantined:?}"
    );
    let handled = case.count("SELECT count(*) FROM messages", &[]);
    assert_eq!(handled, 1, "the other message was read and handled");
    let fetches: Vec<String> = received(port)
        .into_iter()
        .filter(|c| c.starts_with("UID FETCH") && !c.contains("HEADER.FIELDS"))
        .collect();
    assert_eq!(fetches.len(), 3, "the chunk, then one by one: {fetches:?}");
}
