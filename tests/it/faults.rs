//! Faults between the bot and its servers: connections cut mid-IDLE, a server that refuses
//! connections for a while, an SMTP server that is down or refuses a recipient. A proxy in the
//! test sits between the bot and the real Dovecot, so the shared servers are never disturbed.
// Plain threads waiting for real servers: sleeping is the point.
#![allow(clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::live::{setup, Case, THREAD};

/// A TCP proxy to 127.0.0.1:`upstream` that can cut every open connection and refuse new ones.
struct Proxy {
    port: u16,
    refuse: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let refuse = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let (r, o) = (refuse.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if r.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                if let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) {
                    let mut list = o.lock().expect("lock");
                    list.push(c2);
                    list.push(s2);
                }
                pipe(
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                pipe(server, client);
            }
        });
        Proxy { port, refuse, open }
    }

    /// Closes every open connection, as a server restart would.
    fn cut(&self) {
        for s in self.open.lock().expect("lock").drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn refuse(&self, on: bool) {
        self.refuse.store(on, Ordering::SeqCst);
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}

fn wait_for_drafts(case: &Case, n: usize, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let got = case.messages("postmaster@example.net", &case.drafts).len();
        if got >= n || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_cut_connection_mid_idle_and_a_server_outage_are_survived() {
    let case = setup("draft", "");
    let proxy = Proxy::start(case.stack.imaps_port);
    case.point_imap_at(proxy.port);
    let mut daemon = crate::live::Daemon(
        Command::new(env!("CARGO_BIN_EXE_postmaster-bot"))
            .args(["run", "--config", &case.config.display().to_string()])
            .current_dir(case.dir.path())
            .env("PMB_TEST_PASSWORD", "password")
            .spawn()
            .expect("daemon starts"),
    );
    std::thread::sleep(Duration::from_millis(1500));
    // The server goes away mid-IDLE and refuses connections for a while.
    proxy.refuse(true);
    proxy.cut();
    std::thread::sleep(Duration::from_millis(2500));
    proxy.refuse(false);
    // Mail that arrives meanwhile is handled once the server is back: after the reconnect's
    // backoff and the session's folder checks, which on a loaded 2-core CI machine (the
    // PostgreSQL pass) took more than 20 s once.
    case.deliver(&THREAD);
    assert_eq!(
        wait_for_drafts(&case, 1, Duration::from_secs(45)),
        1,
        "handled after the outage"
    );
    // Cut again right after; the daemon reconnects and does not act twice.
    proxy.cut();
    std::thread::sleep(Duration::from_millis(4000));
    assert_eq!(
        wait_for_drafts(&case, 2, Duration::from_millis(500)),
        1,
        "no second draft"
    );
    let status = daemon.stop();
    assert!(status.success(), "daemon exit status {status}");
}

fn sent_status(case: &Case) -> (String, Option<String>) {
    let row = case
        .query(
            "SELECT status, reason FROM outbox WHERE template = 'escalation_reply'",
            &[],
        )
        .into_iter()
        .next()
        .expect("row");
    (row[0].clone().unwrap_or_default(), row[1].clone())
}

#[test]
fn smtp_down_is_retried_and_a_refused_recipient_is_held() {
    // Down: the reply stays pending and goes out once the server is back.
    let case = setup("auto", "");
    let closed = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let original = std::fs::read_to_string(&case.config).expect("config") + "retry_seconds = 1\n";
    let broken = original.replacen(
        &format!("port = {}", case.stack.smtps_port),
        &format!("port = {closed}"),
        1,
    );
    std::fs::write(&case.config, &broken).expect("write");
    case.deliver(&THREAD);
    case.run_once();
    assert_eq!(sent_status(&case).0, "pending", "kept for a retry");
    assert!(case.delivered_replies().is_empty());
    std::fs::write(&case.config, &original).expect("write");
    // Not retried before its backoff is over, then sent once.
    std::thread::sleep(Duration::from_millis(1200));
    case.run_once();
    assert_eq!(case.wait_for_replies(1).len(), 1);
    assert_eq!(sent_status(&case).0, "sent");

    // 5xx: a recipient the server refuses is held for the operator, not retried.
    let case = setup("auto", "");
    let raw = case.fixture("d008.eml");
    let text =
        String::from_utf8_lossy(&raw).replace("support@microsoft.com", "nobody@microsoft.com");
    crate::live::block_on(async {
        let mut imap = case.connect("postmaster@example.net").await;
        for f in ["d006.eml", "d007.eml"] {
            imap.append(&case.folder, "()", &case.fixture(f))
                .await
                .expect("append");
        }
        imap.append(&case.folder, "()", text.as_bytes())
            .await
            .expect("append");
        imap.logout().await;
    });
    case.run_once();
    let (status, reason) = sent_status(&case);
    assert_eq!(status, "failed", "{reason:?}");
    // The reason names the recipient and carries the server's code and words, once.
    let reason = reason.unwrap_or_default();
    assert!(
        reason.contains("to nobody@microsoft.com")
            && reason.contains("550")
            && reason.matches("550").count() <= 2,
        "{reason}"
    );
    case.run_once();
    assert_eq!(sent_status(&case).0, "failed", "not retried");
}

/// An SMTP server (implicit TLS) that accepts the login and answers every RCPT with 451.
fn fake_smtp_451(case: &Case) -> u16 {
    let tls_dir = std::path::Path::new(&case.stack_ca())
        .parent()
        .expect("tls dir")
        .to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async move {
            use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
            let acceptor = crate::fake_imap::tls_acceptor(&tls_dir);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            tx.send(listener.local_addr().expect("addr").port())
                .expect("send port");
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let (read, mut write) = tokio::io::split(tls);
                    let mut lines = BufReader::new(read).lines();
                    let _ = write.write_all(b"220 fake ESMTP\r\n").await;
                    while let Ok(Some(line)) = lines.next_line().await {
                        let upper = line.to_ascii_uppercase();
                        let reply: &[u8] = if upper.starts_with("EHLO") {
                            b"250-fake\r\n250 AUTH PLAIN LOGIN\r\n"
                        } else if upper.starts_with("AUTH") {
                            b"235 2.7.0 ok\r\n"
                        } else if upper.starts_with("MAIL") {
                            b"250 2.1.0 ok\r\n"
                        } else if upper.starts_with("RCPT") {
                            b"451 4.3.0 try again later\r\n"
                        } else if upper.starts_with("QUIT") {
                            b"221 bye\r\n"
                        } else {
                            b"250 ok\r\n"
                        };
                        if write.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
    });
    rx.recv().expect("fake SMTP port")
}

#[test]
fn a_4xx_is_retried_with_a_growing_backoff() {
    let case = setup("auto", "");
    let port = fake_smtp_451(&case);
    case.edit_config(|t| {
        t.replacen(
            &format!("port = {}", case.stack.smtps_port),
            &format!("port = {port}"),
            1,
        ) + "retry_seconds = 30\n"
    });
    case.deliver(&THREAD);
    case.run_once();
    let db = case.store();
    let row = |db: &postmaster_bot::shell::store::Store| -> (String, i64, i64, String) {
        let rows = db
            .select(
                "SELECT status, attempts, next_attempt_at - updated_at, reason FROM outbox
                 WHERE template = 'escalation_reply'",
                &[],
            )
            .expect("row");
        let r = &rows[0];
        (
            r.text(0).unwrap_or_default(),
            r.int(1).expect("attempts"),
            r.int(2).expect("delay"),
            r.text(3).unwrap_or_default(),
        )
    };
    let (status, attempts, delay, reason) = row(&db);
    assert_eq!(
        (status.as_str(), attempts, delay),
        ("pending", 1, 30),
        "{reason}"
    );
    assert!(reason.contains("451"), "{reason}");
    // Not due yet: another pass leaves it alone.
    case.run_once();
    assert_eq!(row(&db).1, 1);
    // Due again: the next failure doubles the delay.
    db.execute("UPDATE outbox SET next_attempt_at = 0", &[])
        .expect("make due");
    case.run_once();
    let (status, attempts, delay, _) = row(&db);
    assert_eq!((status.as_str(), attempts, delay), ("pending", 2, 60));
}
