//! Several mailboxes in one process, and several processes on one PostgreSQL store.
//!
//! Each mailbox is worked by the daemon's loop (`daemon::run`) in a task of its own, on a
//! store connection of its own that is scoped to the mailbox. On SQLite every mailbox runs
//! here (the store's file lock keeps other processes out). On PostgreSQL a mailbox is worked
//! only under its lease: this loop says the instance is alive, renews its leases well inside
//! their time, takes free or expired mailboxes up to its fair share (`pipeline::fleet`), gives
//! back what is above it, stops the task of a lease it lost, and hands every lease back on a
//! clean shutdown, so another instance takes over at its next look (a second at most).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::StateConfig;
use crate::pipeline::fleet::{fair_share, surplus, trial_order};
use crate::shell::daemon::{self, DaemonError};
use crate::shell::engine::Engine;
use crate::shell::store::lease::Fence;
use crate::shell::store::{open_state, Store, StoreError};

/// How often the lease loop looks for free mailboxes and at its tasks.
const TICK: Duration = Duration::from_secs(1);

/// One mailbox this process can work: its name and its engine (its whole configuration).
pub struct Mailbox {
    pub name: String,
    pub engine: Arc<Engine>,
}

/// Runs every mailbox until shutdown (one pass each with `once`); the first error of a
/// mailbox that stopped on one is returned once all have stopped.
pub async fn run(
    mailboxes: Vec<Mailbox>,
    state: &StateConfig,
    once: bool,
    shutdown: watch::Receiver<bool>,
) -> Result<(), DaemonError> {
    match state {
        StateConfig::Sqlite(_) => run_all(mailboxes, state, once, shutdown).await,
        StateConfig::Postgres(pg) => {
            Leased::new(mailboxes, state, pg.lease_seconds.into())?
                .run(once, shutdown)
                .await
        }
    }
}

/// Opens a mailbox's own store connection (blocking: a connect and, once, the migrations).
fn open_for(state: &StateConfig, name: &str, fence: Option<Fence>) -> Result<Store, StoreError> {
    let mut store = open_state(state)?;
    store.set_mailbox(name);
    if let Some(fence) = fence {
        store.set_fence(fence);
    }
    Ok(store)
}

/// A mailbox's daemon on a thread of its own: the daemon works its store with blocking calls
/// between awaits (as it always has with SQLite), which must not hold up other mailboxes.
struct Task {
    thread: std::thread::JoinHandle<()>,
    result: tokio::sync::oneshot::Receiver<Result<(), DaemonError>>,
}

impl Task {
    fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    async fn join(self) -> Result<(), DaemonError> {
        match self.result.await {
            Ok(result) => result,
            Err(_) => Err(DaemonError::Task(
                "its thread ended without a result".to_string(),
            )),
        }
    }
}

fn spawn(
    mailbox: &Mailbox,
    mut store: Store,
    once: bool,
    stop: watch::Receiver<bool>,
    ended: Option<Arc<tokio::sync::Notify>>,
) -> Result<Task, DaemonError> {
    let engine = mailbox.engine.clone();
    let name = mailbox.name.clone();
    let (done, result) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name(format!("mailbox {name}"))
        .spawn(move || {
            // Multi-threaded (one worker): the classifier blocks in place while it waits for
            // its threads, which a current-thread runtime does not allow.
            let outcome = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name(format!("mailbox {name} io"))
                .enable_all()
                .build()
            {
                Ok(runtime) => {
                    let span = tracing::info_span!("mailbox", mailbox = %name);
                    runtime.block_on(tracing::Instrument::instrument(
                        async { daemon::run(&engine, &mut store, once, stop).await },
                        span,
                    ))
                }
                Err(e) => Err(DaemonError::Task(format!("no runtime: {e}"))),
            };
            let _ = done.send(outcome);
            if let Some(ended) = ended {
                ended.notify_one();
            }
        })
        .map_err(|e| DaemonError::Task(format!("no thread for mailbox {}: {e}", mailbox.name)))?;
    Ok(Task { thread, result })
}

/// SQLite: every mailbox at once, in this process.
async fn run_all(
    mailboxes: Vec<Mailbox>,
    state: &StateConfig,
    once: bool,
    shutdown: watch::Receiver<bool>,
) -> Result<(), DaemonError> {
    let mut tasks = Vec::new();
    for mailbox in &mailboxes {
        let store = open_for(state, &mailbox.name, None)?;
        tasks.push((
            mailbox.name.clone(),
            spawn(mailbox, store, once, shutdown.clone(), None)?,
        ));
    }
    let mut first_error = None;
    for (name, task) in tasks {
        if let Err(e) = finished(&name, task.join().await) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// What a finished task says, logged with its mailbox.
fn finished(name: &str, joined: Result<(), DaemonError>) -> Result<(), DaemonError> {
    if let Err(e) = &joined {
        warn!(mailbox = %name, error = %e, "mailbox stopped");
    }
    joined
}

/// A mailbox this instance holds the lease of, and the task working it.
struct Held {
    fence: Fence,
    task: Task,
    stop: watch::Sender<bool>,
    renewed: Instant,
    /// Told to stop (handed to another instance, or its lease lost): no longer renewed, and
    /// not counted in this instance's share; the lease is released when the task has ended.
    stopping: bool,
}

/// PostgreSQL: the lease loop.
struct Leased {
    mailboxes: Vec<Mailbox>,
    state: StateConfig,
    ttl: i64,
    id: String,
    host: String,
    /// The loop's own connection: heartbeats and leases.
    control: Store,
    held: HashMap<String, Held>,
    seed: u64,
    /// The first look was made (see `tick`).
    looked: bool,
    /// Told by a mailbox's task when it ends.
    ended: Arc<tokio::sync::Notify>,
    /// With `once`: the mailboxes whose one pass this instance made (not taken again).
    worked: std::collections::HashSet<String>,
    /// Mailboxes whose daemon stopped on an error that trying again does not mend (a folder
    /// the server refuses, a rejected login): not taken again here; when every mailbox is
    /// one, the instance stops with the first such error, as a single daemon does.
    failed: std::collections::HashSet<String>,
}

impl Leased {
    fn new(mailboxes: Vec<Mailbox>, state: &StateConfig, ttl: i64) -> Result<Leased, StoreError> {
        let host = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned();
        let mut random = [0u8; 8];
        let _ = getrandom::fill(&mut random);
        let seed = u64::from_le_bytes(random);
        let id = format!("{host}:{}:{:06x}", std::process::id(), seed & 0xff_ffff);
        Ok(Leased {
            mailboxes,
            state: state.clone(),
            ttl,
            id,
            host,
            control: open_state(state)?,
            held: HashMap::new(),
            seed,
            looked: false,
            ended: Arc::new(tokio::sync::Notify::new()),
            worked: std::collections::HashSet::new(),
            failed: std::collections::HashSet::new(),
        })
    }

    async fn run(
        mut self,
        once: bool,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), DaemonError> {
        info!(instance = %self.id, mailboxes = self.mailboxes.len(), ttl = self.ttl, "working mailboxes under leases");
        let mut first_error: Option<DaemonError> = None;
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                // A task that ended is collected at once (with `once`, the process ends then).
                _ = self.ended.notified() => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                break;
            }
            if let Err(e) = self.tick(once, &shutdown, &mut first_error).await {
                // The store is away: the leases run out on their own; tasks that cannot
                // renew are stopped on the next tick that reaches it.
                warn!(error = %e, "lease bookkeeping failed; trying again");
            }
            if self.held.is_empty() && (once || self.failed.len() == self.mailboxes.len()) {
                if once && self.worked.is_empty() {
                    info!("every mailbox is worked by another instance: nothing to do here");
                }
                break;
            }
        }
        self.stop_all().await;
        let _ = self.control.instance_stopped(&self.id, crate::clock::now());
        first_error.map_or(Ok(()), Err)
    }

    /// One look: alive, renew, reap, take, give back. It never waits for a mailbox's task (a
    /// task stuck in a slow server must not stop the leases of the others from being renewed).
    async fn tick(
        &mut self,
        once: bool,
        shutdown: &watch::Receiver<bool>,
        first_error: &mut Option<DaemonError>,
    ) -> Result<(), StoreError> {
        let now = crate::clock::now();
        self.control
            .heartbeat(&self.id, &self.host, std::process::id(), now)?;
        // Renewed at a third of the lease: two looks can fail before it runs out.
        let renew_every = Duration::from_secs((self.ttl / 3).max(1) as u64);
        for (name, held) in self.held.iter_mut() {
            if held.stopping || held.task.is_finished() || held.renewed.elapsed() < renew_every {
                continue;
            }
            if self.control.renew_lease(&held.fence, self.ttl)? {
                held.renewed = Instant::now();
            } else {
                warn!(mailbox = %name, token = held.fence.token, "lease lost: stopping this mailbox here");
                let _ = held.stop.send(true);
                held.stopping = true;
            }
        }
        self.reap(first_error).await;
        if once && !self.held.is_empty() {
            return Ok(());
        }
        let live = self.control.live_instances(self.ttl)?.max(1) as usize;
        let fair = if once {
            self.mailboxes.len()
        } else {
            fair_share(self.mailboxes.len(), live)
        };
        let working = self.working();
        // The first look only says this instance is alive: instances started together then see
        // each other before any takes more than its share.
        let first_look = !std::mem::replace(&mut self.looked, true);
        if working < fair && !*shutdown.borrow() && (!first_look || once) {
            self.take(fair, once)?;
        } else if surplus(working, fair) > 0 {
            // Another instance came: give it work. The mailboxes taken last go back.
            let mut newest: Vec<(&String, &mut Held)> =
                self.held.iter_mut().filter(|(_, h)| !h.stopping).collect();
            newest.sort_by_key(|(_, h)| std::cmp::Reverse(h.fence.token));
            for (name, held) in newest.into_iter().take(surplus(working, fair)) {
                info!(mailbox = %name, fair, "handing this mailbox to a less busy instance");
                let _ = held.stop.send(true);
                held.stopping = true;
            }
        }
        Ok(())
    }

    /// The mailboxes this instance works and is not giving up: what its share counts.
    fn working(&self) -> usize {
        self.held.values().filter(|h| !h.stopping).count()
    }

    /// Collects the tasks that ended: their leases go back (unless lost), their errors are kept.
    async fn reap(&mut self, first_error: &mut Option<DaemonError>) {
        let ended: Vec<String> = self
            .held
            .iter()
            .filter(|(_, h)| h.task.is_finished())
            .map(|(n, _)| n.clone())
            .collect();
        for name in ended {
            let Some(held) = self.held.remove(&name) else {
                continue;
            };
            let result = held.task.join().await;
            match result {
                Err(DaemonError::Store(StoreError::LeaseLost { .. })) => {
                    info!(mailbox = %name, "gave the mailbox up: its lease is another instance's");
                }
                other => {
                    // Handed back, so another instance (or this one, next look) works it.
                    if let Err(e) = self.control.release_lease(&held.fence) {
                        warn!(mailbox = %name, error = %e, "failed to hand the lease back; it runs out on its own");
                    } else if held.stopping {
                        info!(mailbox = %name, "lease handed back");
                    }
                    if let Err(e) = finished(&name, other) {
                        if !held.stopping {
                            self.failed.insert(name.clone());
                            first_error.get_or_insert(e);
                        }
                    }
                }
            }
        }
    }

    /// Takes free or expired mailboxes up to the fair share, each with a task of its own.
    fn take(&mut self, fair: usize, once: bool) -> Result<(), StoreError> {
        let names: Vec<String> = self.mailboxes.iter().map(|m| m.name.clone()).collect();
        for name in trial_order(&names, self.seed) {
            if self.working() >= fair {
                break;
            }
            if self.held.contains_key(name)
                || self.failed.contains(name)
                || (once && self.worked.contains(name))
            {
                continue;
            }
            let Some(mailbox) = self.mailboxes.iter().find(|m| &m.name == name) else {
                continue;
            };
            let mut token = self.control.acquire_lease(name, &self.id, self.ttl, None)?;
            if token.is_none() {
                // A holder that ran on this host and whose process is gone (a crash, a restart
                // by systemd) cannot send any more: its lease need not be waited out.
                let holder = self
                    .control
                    .leases()?
                    .into_iter()
                    .find(|l| &l.mailbox == name)
                    .and_then(|l| l.holder);
                if let Some(dead) = holder.filter(|h| self.died_here(h)) {
                    info!(mailbox = %name, holder = %dead, "its holder ran here and has ended: taking the lease at once");
                    token = self
                        .control
                        .acquire_lease(name, &self.id, self.ttl, Some(&dead))?;
                }
            }
            let Some(token) = token else {
                continue;
            };
            let fence = Fence {
                mailbox: name.clone(),
                holder: self.id.clone(),
                token,
            };
            let store = match open_for(&self.state, name, Some(fence.clone())) {
                Ok(store) => store,
                Err(e) => {
                    let _ = self.control.release_lease(&fence);
                    return Err(e);
                }
            };
            let (stop, stopped) = watch::channel(false);
            let task = match spawn(mailbox, store, once, stopped, Some(self.ended.clone())) {
                Ok(task) => task,
                Err(e) => {
                    warn!(mailbox = %name, error = %e, "cannot work this mailbox here");
                    let _ = self.control.release_lease(&fence);
                    continue;
                }
            };
            info!(mailbox = %name, token, "lease taken: working this mailbox");
            self.worked.insert(name.clone());
            self.held.insert(
                name.clone(),
                Held {
                    fence,
                    task,
                    stop,
                    renewed: Instant::now(),
                    stopping: false,
                },
            );
        }
        Ok(())
    }

    /// Whether an instance id names a process of this host that has ended. (An id of another
    /// host, or a live process, is waited out: only the lease's expiry is proof then.)
    fn died_here(&self, holder: &str) -> bool {
        let mut parts = holder.rsplitn(3, ':');
        let (Some(_random), Some(pid), Some(host)) = (parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        if host != self.host || holder == self.id {
            return false;
        }
        let Ok(pid) = pid.parse::<i32>() else {
            return false;
        };
        // Our own pid under another id: that process is gone (a container restarted with the
        // same host name and pid).
        if pid == std::process::id() as i32 {
            return true;
        }
        match rustix::process::Pid::from_raw(pid) {
            Some(pid) => matches!(
                rustix::process::test_kill_process(pid),
                Err(rustix::io::Errno::SRCH)
            ),
            None => false,
        }
    }

    async fn stop_all(&mut self) {
        for held in self.held.values() {
            let _ = held.stop.send(true);
        }
        for (_, held) in self.held.drain() {
            let _ = held.task.join().await;
            if let Err(e) = self.control.release_lease(&held.fence) {
                warn!(mailbox = %held.fence.mailbox, error = %e, "failed to hand the lease back; it runs out on its own");
            } else {
                info!(mailbox = %held.fence.mailbox, "lease handed back");
            }
        }
    }
}
