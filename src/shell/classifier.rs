//! The catch-up's pure work (judging header fields, parsing and classifying whole messages) on
//! a thread of its own, beside the thread that reads the IMAP stream and writes the store.
//!
//! Reading the stream and applying verdicts to the store is about half of a catch-up's work,
//! parsing and classifying the other half; on one thread they take turns, on two they overlap.
//! One worker, not one per core: every compiled pattern keeps a search cache per thread that
//! uses it, and the rules are hundreds of patterns. (Measured on two cores: a second worker
//! made the catch-up no faster, the server and the stream already use the other core, and its
//! caches cost 12 MB.)
//!
//! Results come back in the order the work was sent, so the store still sees the messages in
//! UID order. A worker that dies (a panic) closes its channel: the waiting side gets
//! [`ClassifierError::Stopped`], never a hang.

use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::pipeline::candidate;
use crate::shell::engine::{Engine, Prepared};

/// Bytes of whole messages sent to the worker and not yet taken back beyond which the sender
/// should wait for results ([`Classifier::over_budget`]): a flood of large messages cannot
/// pile up in memory.
const BODY_BUDGET: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClassifierError {
    #[error("the classifier thread stopped (a bug: see the panic message above)")]
    Stopped,
    #[error("could not start the classifier thread: {0}")]
    Start(#[from] std::io::Error),
}

enum Job {
    Header {
        uid: u32,
        header: Vec<u8>,
    },
    Body {
        uid: u32,
        raw: Vec<u8>,
        cut_from: Option<usize>,
    },
}

/// What the worker made of one piece of work.
pub enum Done {
    /// Whether a message must be fetched whole, and why.
    Header {
        uid: u32,
        needs_body: Option<&'static str>,
    },
    /// A whole message, parsed and classified, with its bytes (a message that cannot be applied
    /// is quarantined with them).
    Body {
        uid: u32,
        raw: Vec<u8>,
        cut_from: Option<usize>,
        prepared: Box<Prepared>,
    },
}

pub struct Classifier {
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    worker: Option<JoinHandle<()>>,
    pending: usize,
    body_bytes: usize,
}

impl Classifier {
    /// Starts the worker.
    pub fn start(engine: Arc<Engine>) -> Result<Classifier, ClassifierError> {
        let (jobs, queue) = channel::<Job>();
        let (results, done) = channel();
        let worker = std::thread::Builder::new()
            .name("classify".to_string())
            .spawn(move || {
                for job in queue {
                    let done = match job {
                        Job::Header { uid, header } => Done::Header {
                            uid,
                            needs_body: candidate::needs_body(
                                &header,
                                &engine.rules,
                                &engine.config.classify,
                            ),
                        },
                        Job::Body { uid, raw, cut_from } => Done::Body {
                            prepared: Box::new(engine.prepare(&raw)),
                            uid,
                            raw,
                            cut_from,
                        },
                    };
                    if results.send(done).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Classifier {
            jobs: Some(jobs),
            done,
            worker: Some(worker),
            pending: 0,
            body_bytes: 0,
        })
    }

    /// Queues one message's header fields.
    pub fn judge(&mut self, uid: u32, header: &[u8]) -> Result<(), ClassifierError> {
        self.send(Job::Header {
            uid,
            header: header.to_vec(),
        })
    }

    /// Queues one whole message. Take results back while [`Classifier::over_budget`].
    pub fn prepare(
        &mut self,
        uid: u32,
        raw: &[u8],
        cut_from: Option<usize>,
    ) -> Result<(), ClassifierError> {
        self.body_bytes += raw.len();
        self.send(Job::Body {
            uid,
            raw: raw.to_vec(),
            cut_from,
        })
    }

    fn send(&mut self, job: Job) -> Result<(), ClassifierError> {
        let jobs = self.jobs.as_ref().ok_or(ClassifierError::Stopped)?;
        jobs.send(job).map_err(|_| ClassifierError::Stopped)?;
        self.pending += 1;
        Ok(())
    }

    /// Nothing sent is waiting to be taken back.
    pub fn idle(&self) -> bool {
        self.pending == 0
    }

    /// Too many bytes of whole messages are out: wait for results before sending more.
    pub fn over_budget(&self) -> bool {
        self.body_bytes > BODY_BUDGET && self.pending > 0
    }

    fn took(&mut self, done: Done) -> Done {
        self.pending -= 1;
        if let Done::Body { raw, .. } = &done {
            self.body_bytes = self.body_bytes.saturating_sub(raw.len());
        }
        done
    }

    /// The next result if it is ready.
    pub fn ready(&mut self) -> Result<Option<Done>, ClassifierError> {
        if self.pending == 0 {
            return Ok(None);
        }
        match self.done.try_recv() {
            Ok(done) => Ok(Some(self.took(done))),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(ClassifierError::Stopped),
        }
    }

    /// The next result, waiting for it; `None` when nothing is pending. On the async runtime it
    /// must run on the multi-threaded scheduler: the wait gives the thread's other tasks away
    /// (`block_in_place`).
    pub fn wait(&mut self) -> Result<Option<Done>, ClassifierError> {
        if self.pending == 0 {
            return Ok(None);
        }
        let waited = match tokio::runtime::Handle::try_current() {
            Ok(_) => tokio::task::block_in_place(|| self.done.recv()),
            Err(_) => self.done.recv(),
        };
        let done = waited.map_err(|_| ClassifierError::Stopped)?;
        Ok(Some(self.took(done)))
    }
}

impl Drop for Classifier {
    fn drop(&mut self) {
        // Closing the queue ends the worker's loop once it has finished what it holds.
        self.jobs.take();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> Arc<Engine> {
        let config = crate::config::parse(
            "[identity]\nfrom = \"postmaster@example.net\"\n[trust]\nauthserv_ids = [\"mx1.example.net\"]\n",
            "test",
        )
        .expect("valid");
        Arc::new(Engine::new(config).expect("engine"))
    }

    fn message(n: u32) -> Vec<u8> {
        format!(
            "From: MAILER-DAEMON@example.org\r\nSubject: Undelivered Mail {n}\r\nMessage-ID: <{n}@example.org>\r\n\r\nbody {n}\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn results_come_back_in_the_order_sent() {
        let mut classifier = Classifier::start(engine()).expect("starts");
        for uid in 1..=100 {
            let raw = message(uid);
            if uid % 2 == 0 {
                classifier.judge(uid, &raw).expect("queued");
            } else {
                classifier.prepare(uid, &raw, None).expect("queued");
            }
        }
        let mut order = Vec::new();
        while let Some(done) = classifier.wait().expect("worker runs") {
            match done {
                Done::Header { uid, needs_body } => {
                    assert_eq!(needs_body, Some("bounce sender"), "uid {uid}");
                    order.push(uid);
                }
                Done::Body {
                    uid, raw, prepared, ..
                } => {
                    assert_eq!(raw, message(uid));
                    assert_eq!(prepared.inbound.subject, format!("Undelivered Mail {uid}"));
                    order.push(uid);
                }
            }
        }
        assert_eq!(order, (1..=100).collect::<Vec<_>>());
        assert!(classifier.ready().expect("nothing pending").is_none());
    }

    #[test]
    fn a_stopped_worker_is_an_error_not_a_hang() {
        let mut classifier = Classifier::start(engine()).expect("starts");
        classifier.judge(1, &message(1)).expect("queued");
        // As a panic in the worker would leave it: the thread gone, its channels closed.
        let (_, orphan) = channel();
        drop(std::mem::replace(&mut classifier.done, orphan));
        let queued = classifier.judge(2, &message(2));
        assert!(matches!(queued, Ok(()) | Err(ClassifierError::Stopped)));
        assert!(matches!(classifier.wait(), Err(ClassifierError::Stopped)));
        assert!(matches!(classifier.ready(), Err(ClassifierError::Stopped)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_on_the_runtime_does_not_block_it() {
        let mut classifier = Classifier::start(engine()).expect("starts");
        let beside = tokio::spawn(async { 42 });
        for uid in 1..=20 {
            classifier
                .prepare(uid, &message(uid), None)
                .expect("queued");
        }
        let mut n = 0;
        while classifier.wait().expect("worker runs").is_some() {
            n += 1;
        }
        assert_eq!(n, 20);
        assert_eq!(beside.await.expect("ran"), 42);
    }

    #[test]
    fn large_messages_out_ask_the_sender_to_wait() {
        let mut classifier = Classifier::start(engine()).expect("starts");
        let mut large = message(1);
        large.resize(BODY_BUDGET + 1, b'x');
        assert!(!classifier.over_budget());
        classifier.prepare(1, &large, None).expect("queued");
        assert!(classifier.over_budget());
        assert!(classifier.wait().expect("worker runs").is_some());
        assert!(!classifier.over_budget());
    }
}
