//! The bot's own DKIM check (`[trust] verify_dkim = true`): mail-auth verifies a message's
//! signatures against DNS, beside our MX's verdict, so that a trusted reply needs both. The
//! result is plain data ([`DkimFacts`]) that the pure classifier reads.
//!
//! One thread owns the resolver and its runtime; callers, async or not, send it a message and
//! wait for the answer, so the check works the same in `replay` and in the daemon.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use mail_auth::hickory_resolver::config::{
    NameServerConfig, NameServerConfigGroup, ProtocolConfig, ResolverConfig, ResolverOpts,
};
use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator};

use crate::config::DkimCheck;
use crate::pipeline::classify::DkimFacts;

/// The resolver could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DkimSetupError {
    #[error("failed to set up DNS for the DKIM check: {0}")]
    Resolver(String),
    #[error("failed to start the DKIM check: {0}")]
    Thread(#[from] std::io::Error),
}

type Request = (Vec<u8>, mpsc::Sender<DkimFacts>);

/// Verifies DKIM signatures on its own thread.
pub struct DkimVerifier {
    requests: Option<mpsc::Sender<Request>>,
    worker: Option<JoinHandle<()>>,
}

/// How long one message's DNS lookups may take before the check counts as failed.
const TIMEOUT: Duration = Duration::from_secs(15);

impl DkimVerifier {
    /// Starts the verifier with the configured name servers (or the system's).
    pub fn start(check: &DkimCheck) -> Result<DkimVerifier, DkimSetupError> {
        let authenticator = authenticator(&check.dns_servers)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (tx, rx) = mpsc::channel::<Request>();
        let worker = std::thread::Builder::new()
            .name("dkim".to_string())
            .spawn(move || {
                while let Ok((raw, reply)) = rx.recv() {
                    let facts = runtime.block_on(verify(&authenticator, &raw));
                    let _ = reply.send(facts);
                }
            })?;
        Ok(DkimVerifier {
            requests: Some(tx),
            worker: Some(worker),
        })
    }

    /// The domains whose signatures on `raw` verify. Never fails: a lookup error or a timeout
    /// is a note in the facts, and no domain passes.
    pub fn verify(&self, raw: &[u8]) -> DkimFacts {
        let ask = || {
            let (tx, rx) = mpsc::channel();
            let requests = self.requests.as_ref()?;
            requests.send((raw.to_vec(), tx)).ok()?;
            rx.recv_timeout(TIMEOUT).ok()
        };
        // In the daemon's runtime the wait must not hold up other tasks on this worker.
        let answer = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(ask)
            }
            _ => ask(),
        };
        answer.unwrap_or_else(|| DkimFacts {
            passed: Vec::new(),
            note: Some("the DKIM check did not answer in time".to_string()),
        })
    }
}

impl Drop for DkimVerifier {
    fn drop(&mut self) {
        // Closing the channel ends the worker's loop.
        self.requests.take();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

fn authenticator(servers: &[SocketAddr]) -> Result<MessageAuthenticator, DkimSetupError> {
    let made = if servers.is_empty() {
        MessageAuthenticator::new_system_conf()
    } else {
        let group: NameServerConfigGroup = servers
            .iter()
            .map(|addr| NameServerConfig::new(*addr, ProtocolConfig::Udp))
            .collect::<Vec<_>>()
            .into();
        let mut opts = ResolverOpts::default();
        opts.timeout = Duration::from_secs(5);
        opts.attempts = 2;
        MessageAuthenticator::new(ResolverConfig::from_parts(None, Vec::new(), group), opts)
    };
    made.map_err(|e| DkimSetupError::Resolver(e.to_string()))
}

async fn verify(authenticator: &MessageAuthenticator, raw: &[u8]) -> DkimFacts {
    let Some(message) = AuthenticatedMessage::parse(raw) else {
        return DkimFacts {
            passed: Vec::new(),
            note: Some("mail-auth could not read the message".to_string()),
        };
    };
    let outputs = authenticator.verify_dkim(&message).await;
    let mut passed = Vec::new();
    let mut notes = Vec::new();
    for output in &outputs {
        let domain = output
            .signature()
            .map(|s| s.d.to_ascii_lowercase())
            .unwrap_or_default();
        match output.result() {
            DkimResult::Pass => passed.push(domain),
            DkimResult::None => {}
            other => notes.push(format!("d={domain}: {other:?}")),
        }
    }
    if outputs.is_empty() {
        notes.push("no DKIM signature".to_string());
    }
    DkimFacts {
        passed,
        note: (!notes.is_empty()).then(|| notes.join("; ")),
    }
}
