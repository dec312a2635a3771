//! Webhooks against a local HTTP receiver: the operator's notification arrives signed, is tried
//! again after a 500 and after the receiver was down across restarts of the bot, and arrives
//! exactly once.
#![allow(clippy::disallowed_methods)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::live::{setup, THREAD};

/// One request the receiver got: its header fields (lower-case names) and body.
#[derive(Debug, Clone)]
struct Received {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    answered: u16,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.1 receiver on a fixed port, answering with the statuses it is given
/// (then 200), recording every request.
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start(port: u16, answers: Vec<u16>, got: Arc<Mutex<Vec<Received>>>) -> Receiver {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the receiver");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(answers));
        let thread = std::thread::spawn({
            let (got, stop) = (got.clone(), stop.clone());
            move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let code = {
                        let mut a = answers.lock().expect("answers");
                        if a.is_empty() {
                            200
                        } else {
                            a.remove(0)
                        }
                    };
                    if let Some(r) = serve_one(stream, code) {
                        got.lock().expect("got").push(r);
                    }
                }
            }
        });
        Receiver {
            port,
            got,
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = &self.got;
    }
}

fn serve_one(stream: TcpStream, code: u16) -> Option<Received> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    Some(Received {
        headers,
        body,
        answered: code,
    })
}

#[test]
fn a_webhook_is_signed_retried_through_a_500_and_an_outage_and_delivered_once() {
    let case = setup("draft", "");
    let got = Arc::new(Mutex::new(Vec::new()));
    let receiver = Receiver::start(0, vec![500], got.clone());
    let port = receiver.port;
    // The test's IMAP password variable doubles as the signing secret: the bot's environment
    // has it, and no other test's.
    case.edit_config(|t| {
        format!(
            "{}\n[[notify.webhook]]\nurl = \"http://127.0.0.1:{port}/hook\"\nformat = \"json\"\nevents = [\"open_case\"]\nsecret_env = \"PMB_TEST_PASSWORD\"\nretry_seconds = 1\n",
            t.replace("notify_on_open_case = false", "notify_on_open_case = true")
        )
    });
    case.deliver(&THREAD);
    case.run_once();
    assert_eq!(
        got.lock().expect("got").len(),
        1,
        "tried once, answered 500"
    );
    // Down: the next run's attempt finds nobody, and the row waits.
    receiver.stop();
    std::thread::sleep(Duration::from_millis(1200));
    case.run_once();
    // Back, answering 200: delivered on the next run after the backoff, and never again.
    let receiver = Receiver::start(port, vec![], got.clone());
    std::thread::sleep(Duration::from_millis(2300));
    case.run_once();
    case.run_once();
    std::thread::sleep(Duration::from_millis(1200));
    case.run_once();
    receiver.stop();
    let got = got.lock().expect("got").clone();
    let delivered: Vec<&Received> = got.iter().filter(|r| r.answered == 200).collect();
    assert_eq!(delivered.len(), 1, "delivered once: {got:?}");
    assert_eq!(got.len(), 2, "a 500, then the delivery: {got:?}");
    let r = delivered[0];
    assert_eq!(
        r.header("x-postmaster-bot-signature"),
        Some(postmaster_bot::pipeline::webhook::signature(b"password", &r.body).as_str()),
        "signed with the secret over the exact body"
    );
    assert_eq!(r.header("x-postmaster-bot-event"), Some("open_case"));
    assert_eq!(
        r.header("x-postmaster-bot-delivery"),
        got[0].header("x-postmaster-bot-delivery"),
        "the same delivery id on every try"
    );
    let json: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON body");
    assert_eq!(json["event"], "open_case");
    assert_eq!(json["source"], "postmaster-bot");
    assert!(
        json["headline"]
            .as_str()
            .is_some_and(|h| h.contains("blocked")),
        "{json}"
    );
}
