//! `[trust] verify_dkim`: the bot's own DKIM check, against a DNS server the test runs on
//! loopback, so that a key, a broken signature and a missing record are all under test.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use mail_auth::common::crypto::Ed25519Key;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
use mail_auth::hickory_resolver::proto::op::{Message, MessageType, OpCode, ResponseCode};
use mail_auth::hickory_resolver::proto::rr::rdata::TXT;
use mail_auth::hickory_resolver::proto::rr::{RData, Record};
use postmaster_bot::config;
use postmaster_bot::shell::engine::Engine;

/// A DNS server answering TXT queries from a table; everything else is NXDOMAIN.
struct FakeDns {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    worker: Option<JoinHandle<()>>,
}

impl FakeDns {
    fn start(records: HashMap<String, String>) -> FakeDns {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let addr = socket.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let worker = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !flag.load(Ordering::SeqCst) {
                let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut reply = Message::new(query.id(), MessageType::Response, OpCode::Query);
                reply.set_recursion_available(true);
                reply.set_authoritative(true);
                for q in query.queries() {
                    reply.add_query(q.clone());
                    let name = q
                        .name()
                        .to_ascii()
                        .trim_end_matches('.')
                        .to_ascii_lowercase();
                    match records.get(&name) {
                        Some(txt) => {
                            reply.add_answer(Record::from_rdata(
                                q.name().clone(),
                                60,
                                RData::TXT(TXT::new(vec![txt.clone()])),
                            ));
                        }
                        None => {
                            reply.set_response_code(ResponseCode::NXDomain);
                        }
                    }
                }
                if let Ok(bytes) = reply.to_vec() {
                    let _ = socket.send_to(&bytes, peer);
                }
            }
        });
        FakeDns {
            addr,
            stop,
            worker: Some(worker),
        }
    }
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

const MESSAGE: &str = "Authentication-Results: mx1.example.net; dkim=pass header.d=microsoft.com; spf=pass smtp.mailfrom=microsoft.com; dmarc=pass header.from=microsoft.com\r\nFrom: Outlook.com Deliverability Support <support@microsoft.com>\r\nTo: postmaster@example.net\r\nSubject: RE: SRX1700000099ID - blocked\r\nDate: Tue, 24 Sep 2019 13:40:02 +0000\r\nMessage-ID: <dkim-test@microsoft.com>\r\n\r\nWe have completed reviewing the IP(s) you submitted.\r\n\r\nNot qualified for mitigation\r\n192.0.2.9\r\nOur investigation has determined that the above IP(s) do not qualify for mitigation.\r\n";

fn signed(key_der: &[u8], domain: &str, message: &str) -> String {
    let key = Ed25519Key::from_pkcs8_der(key_der).expect("key");
    let signature = DkimSigner::from_key(key)
        .domain(domain)
        .selector("s1")
        .headers(["From", "To", "Subject", "Date", "Message-ID"])
        .sign(message.as_bytes())
        .expect("signs");
    format!("{}{message}", signature.to_header())
}

fn engine(dns: &FakeDns) -> Engine {
    let text = format!(
        "[trust]\nauthserv_ids = [\"mx1.example.net\"]\nverify_dkim = true\ndns_servers = [\"{}\"]\n",
        dns.addr
    );
    Engine::new(config::parse(&text, "test").expect("valid")).expect("engine")
}

#[test]
fn verify_dkim_is_a_second_independent_check() {
    let der = Ed25519Key::generate_pkcs8().expect("key");
    let public = Ed25519Key::from_pkcs8_der(&der).expect("key").public_key();
    use base64::Engine as _;
    let record = format!(
        "v=DKIM1; k=ed25519; p={}",
        base64::engine::general_purpose::STANDARD.encode(public)
    );
    let dns = FakeDns::start(HashMap::from([(
        "s1._domainkey.microsoft.com".to_string(),
        record,
    )]));
    let engine = engine(&dns);

    // Our MX and the bot's own check agree: trusted.
    let good = signed(&der, "microsoft.com", MESSAGE);
    let v = engine.prepare(good.as_bytes()).verdict;
    assert!(v.trusted, "{:?}", v.evidence);
    assert_eq!(v.kind.as_str(), "ms_not_qualified");
    assert!(
        v.evidence
            .iter()
            .any(|e| e.matched.contains("bot verified DKIM d=microsoft.com")),
        "{:?}",
        v.evidence
    );

    // The body was changed after signing: our MX's word alone is not enough.
    let tampered = good.replace("192.0.2.9", "192.0.2.99");
    let v = engine.prepare(tampered.as_bytes()).verdict;
    assert!(!v.trusted, "{:?}", v.evidence);
    assert_eq!(v.kind.as_str(), "other");

    // No signature at all, or one by a domain that is not the From's.
    let v = engine.prepare(MESSAGE.as_bytes()).verdict;
    assert!(!v.trusted);
    let other = signed(&der, "attacker.example", MESSAGE);
    let v = engine.prepare(other.as_bytes()).verdict;
    assert!(!v.trusted, "{:?}", v.evidence);

    // Without the key in DNS the signature cannot be checked: not trusted either.
    drop(engine);
    let empty = FakeDns::start(HashMap::new());
    let engine = self::engine(&empty);
    let v = engine.prepare(good.as_bytes()).verdict;
    assert!(!v.trusted, "{:?}", v.evidence);
    // Mail our MX does not vouch for is never looked up at all.
    let spoof = good.replace("dmarc=pass", "dmarc=fail");
    assert!(!engine.prepare(spoof.as_bytes()).verdict.trusted);
}
