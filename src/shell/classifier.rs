//! The catch-up's pure work (judging header fields, parsing and classifying whole messages) on
//! a thread of its own, beside the thread that reads the IMAP stream and writes the store.
//!
//! Reading the stream and applying verdicts to the store is about half of a catch-up's work,
//! parsing and classifying the other half; on one thread they take turns, on two they overlap.
//! One worker, not one per core: every compiled pattern keeps a search cache per thread that
//! uses it, and the rules are hundreds of patterns.
//!
//! Results come back in the order the work was sent, so the store still sees the messages in
//! UID order. A worker that dies (a panic) closes its channel: the waiting side gets
//! [`ClassifierError::Stopped`], never a hang.

use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::pipeline::candidate;
use crate::shell::engine::{Engine, Prepared};

/// Work queued ahead of the worker: enough to keep it busy, little enough to bound the memory
/// held in whole messages.
const QUEUE: usize = 32;

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
    jobs: Option<SyncSender<Job>>,
    done: UnboundedReceiver<Done>,
    worker: Option<JoinHandle<()>>,
    pending: usize,
}

impl Classifier {
    /// Starts the worker.
    pub fn start(engine: Arc<Engine>) -> Result<Classifier, ClassifierError> {
        let (jobs, queue) = sync_channel::<Job>(QUEUE);
        let (results, done) = unbounded_channel();
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
        })
    }

    /// Queues one message's header fields; waits while the queue is full.
    pub fn judge(&mut self, uid: u32, header: &[u8]) -> Result<(), ClassifierError> {
        self.send(Job::Header {
            uid,
            header: header.to_vec(),
        })
    }

    /// Queues one whole message; waits while the queue is full.
    pub fn prepare(
        &mut self,
        uid: u32,
        raw: &[u8],
        cut_from: Option<usize>,
    ) -> Result<(), ClassifierError> {
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

    /// The next result if it is ready.
    pub fn ready(&mut self) -> Result<Option<Done>, ClassifierError> {
        if self.pending == 0 {
            return Ok(None);
        }
        match self.done.try_recv() {
            Ok(done) => {
                self.pending -= 1;
                Ok(Some(done))
            }
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => Ok(None),
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                Err(ClassifierError::Stopped)
            }
        }
    }

    /// The next result, waiting for it; `None` when nothing is pending.
    pub async fn next(&mut self) -> Result<Option<Done>, ClassifierError> {
        if self.pending == 0 {
            return Ok(None);
        }
        let done = self.done.recv().await.ok_or(ClassifierError::Stopped)?;
        self.pending -= 1;
        Ok(Some(done))
    }
}

impl Drop for Classifier {
    fn drop(&mut self) {
        // Closing the queue ends the worker's loop once it has finished what it holds.
        self.jobs.take();
        self.done.close();
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

    #[tokio::test]
    async fn results_come_back_in_the_order_sent() {
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
        while let Some(done) = classifier.next().await.expect("worker runs") {
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

    #[tokio::test]
    async fn a_stopped_worker_is_an_error_not_a_hang() {
        let mut classifier = Classifier::start(engine()).expect("starts");
        classifier.judge(1, &message(1)).expect("queued");
        // As a panic in the worker would leave it: the results channel closed.
        classifier.done.close();
        let queued = classifier.judge(2, &message(2));
        assert!(matches!(queued, Ok(()) | Err(ClassifierError::Stopped)));
        // Results sent before the close may still come; then an error, never a wait.
        loop {
            match classifier.next().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("pending work vanished without an error"),
                Err(ClassifierError::Stopped) => break,
                Err(e) => panic!("unexpected error {e}"),
            }
        }
    }
}
