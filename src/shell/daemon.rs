//! The daemon: catch up by UID range, run each new message through the engine, deliver the
//! outbox (send, draft or queue), then wait with IDLE (or poll) and do it again. Reconnects with
//! capped exponential backoff; stops cleanly on SIGINT/SIGTERM between two steps (in a
//! catch-up, between two chunks).

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::config::{Auth, MailboxConfig, SmtpConfig};
use crate::pipeline::candidate;
use crate::pipeline::decide::{Mode, Template};
use crate::pipeline::sync::{self, Resume};
use crate::pipeline::witness::{self, Author, Earlier, Finding, Ours, Thread};
use crate::shell::classifier::{Classifier, ClassifierError, Done};
use crate::shell::engine::{Engine, HandleError, OutboxStatus, Prepared};
use crate::shell::imap::{Fetched, Imap, ImapError, Wake};
use crate::shell::oauth::{OAuthError, TokenProvider};
use crate::shell::progress::Progress;
use crate::shell::secret::{Credential, CredentialError};
use crate::shell::smtp::{Smtp, SmtpError};
use crate::shell::store::{OutboxItem, Retry, Store, StoreError};
use crate::shell::teach;
use crate::shell::witness::{look, Place, Places};

/// The daemon cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("no [mailbox] section in the config: the daemon needs a mailbox to watch")]
    NoMailbox,
    #[error("[mailbox] has no password and no [oauth2] section to get a token from")]
    NoCredential,
    #[error(transparent)]
    Credential(#[from] CredentialError),
    #[error(transparent)]
    OAuth(#[from] OAuthError),
    #[error(transparent)]
    Imap(#[from] ImapError),
    #[error(transparent)]
    Smtp(#[from] SmtpError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Classifier(#[from] ClassifierError),
    #[error("a mailbox's task failed: {0}")]
    Task(String),
}

impl DaemonError {
    fn is_transient(&self) -> bool {
        match self {
            DaemonError::Imap(e) => e.is_transient(),
            DaemonError::Store(e) => e.is_transient(),
            DaemonError::Credential(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// How often a waiting daemon looks in the store for replies approved elsewhere.
const APPROVAL_CHECK: Duration = Duration::from_secs(2);

/// Flags for the IMAP folders the bot writes to.
const DRAFT_FLAGS: &str = "(\\Draft \\Seen)";
const REVIEW_FLAGS: &str = "(\\Draft)";

/// Runs until shutdown (or after one pass with `once`).
pub async fn run(
    engine: &Arc<Engine>,
    store: &mut Store,
    once: bool,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), DaemonError> {
    let mailbox = engine
        .config
        .mailbox
        .clone()
        .ok_or(DaemonError::NoMailbox)?;
    // One provider for IMAP and SMTP: one token cache, one refresh-token file.
    let provider = engine
        .config
        .oauth2
        .clone()
        .map(TokenProvider::new)
        .transpose()?
        .map(Arc::new);
    let credential = Credential::pick(mailbox.auth, mailbox.password.as_ref(), provider.as_ref())
        .ok_or(DaemonError::NoCredential)?;
    // In draft mode nothing may ever be sent, so no SMTP client is even built.
    let mailer = match &engine.config.smtp {
        Some(_) if engine.config.mode == crate::pipeline::decide::Mode::Draft => None,
        Some(cfg) => Some(
            Mailer::new(
                cfg,
                Credential::pick(cfg.auth, cfg.password.as_ref(), provider.as_ref()),
            )
            .await?,
        ),
        None => None,
    };
    if let Some(advice) = mailbox.sent_mail_advice().filter(|_| mailer.is_some()) {
        warn!("{advice}");
    }
    // The multilingual rules compile lazily; they compile now on a background thread, with
    // what the connect and the header pass leave of the CPU, so that no message waits for them
    // later. One pass (`--once`) does not wait for the thread at exit: what it did not need,
    // it drops.
    let rules = engine.rules.clone();
    let warm_up = crate::shell::background::spawn("rules", move || rules.warm_up())
        .ok()
        .filter(|_| !once);
    let result = session_loop(
        engine,
        store,
        once,
        &mut shutdown,
        &mailbox,
        &credential,
        mailer.as_ref(),
    )
    .await;
    // A daemon that stops on an error says so at once, not after the warm-up's idle-priority
    // compile (which can take long on a busy machine).
    if let Some(handle) = warm_up.filter(|_| result.is_ok()) {
        let _ = handle.join();
    }
    result
}

/// Connects, works, and reconnects with backoff until shutdown (or one pass with `once`).
async fn session_loop(
    engine: &Arc<Engine>,
    store: &mut Store,
    once: bool,
    shutdown: &mut watch::Receiver<bool>,
    mailbox: &MailboxConfig,
    credential: &Credential,
    mailer: Option<&Mailer>,
) -> Result<(), DaemonError> {
    let mut delay = Duration::from_secs(1);
    // A new token on every reconnect, and once more straight away when a login is refused:
    // the cached one may have been revoked or have expired early.
    let mut refresh = false;
    let mut retried_login = false;
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let password = match credential.get(refresh).await {
            Ok(p) => p,
            Err(e) if e.is_transient() && !once => {
                warn!(error = %e, retry_in = ?delay, "no password or access token for now; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(jitter(delay)) => {}
                    _ = shutdown.changed() => return Ok(()),
                }
                delay = (delay * 2).min(Duration::from_secs(300));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let started = std::time::Instant::now();
        match session(engine, store, mailbox, &password, mailer, once, shutdown).await {
            Ok(()) => return Ok(()),
            Err(DaemonError::Imap(ImapError::Login { message, .. }))
                if credential.renewable() && !retried_login =>
            {
                warn!(reason = %message, "the server refused the access token; asking for a new one");
                refresh = true;
                retried_login = true;
            }
            Err(e) if e.is_transient() && !once => {
                refresh = true;
                retried_login = false;
                let now = crate::clock::now();
                // For the console and the metrics: a store that cannot take it changes nothing.
                let _ = store.count_health("imap_reconnects", now);
                let _ = store.set_health("last_error", &e.to_string(), now);
                // A session that ran for a while was healthy: start the backoff over.
                if started.elapsed() > Duration::from_secs(60) {
                    delay = Duration::from_secs(1);
                }
                warn!(error = %e, retry_in = ?delay, "connection lost; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(jitter(delay)) => {}
                    _ = shutdown.changed() => return Ok(()),
                }
                delay = (delay * 2).min(Duration::from_secs(300));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Creates a folder unless it exists; a refusal is logged with the server's words, not fatal.
async fn ensure_or_warn(
    imap: &mut Imap,
    folder: &str,
    special_use: Option<&str>,
) -> Result<bool, ImapError> {
    match imap.ensure_folder(folder, special_use).await {
        Ok(()) => Ok(true),
        Err(e) if e.is_refusal() => {
            warn!(folder, error = %e, "the server will not create this folder; what goes there is held");
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// The folder flagged with a SPECIAL-USE attribute, else the one of that name (written the
/// plain way, mapped to the server's namespace).
async fn named_folder(imap: &mut Imap, attribute: &str, name: &str) -> Result<String, ImapError> {
    Ok(match imap.special_use(attribute).await? {
        Some(found) => found,
        None => imap.namespace().folder(name),
    })
}

/// The folders one session works with, in the server's terms.
pub struct Folders {
    pub drafts: String,
    pub sent: String,
    /// Every folder the bot writes to in this mode; each is created when missing.
    pub written: Vec<Written>,
}

/// A folder the bot writes to.
pub struct Written {
    /// What it is for, as `auth check` shows it.
    pub role: &'static str,
    pub name: String,
    /// The SPECIAL-USE attribute it is created with.
    pub special_use: Option<&'static str>,
}

impl Folders {
    /// `mailbox` is already localized (`Imap::localized`).
    pub async fn plan(
        mode: Mode,
        mailbox: &MailboxConfig,
        imap: &mut Imap,
        sends: bool,
    ) -> Result<Folders, ImapError> {
        let hosted = mailbox.hosted_by().map(|h| h.folders());
        let drafts = match &mailbox.drafts_folder {
            Some(f) => f.clone(),
            None => named_folder(imap, "\\Drafts", hosted.map_or("Drafts", |h| h.0)).await?,
        };
        let sent = match &mailbox.sent_folder {
            Some(f) => f.clone(),
            None => named_folder(imap, "\\Sent", hosted.map_or("Sent", |h| h.1)).await?,
        };
        let mut written = Vec::new();
        let mut add = |role, name: &str, special_use| {
            written.push(Written {
                role,
                name: name.to_string(),
                special_use,
            })
        };
        if mode == Mode::Draft {
            add("drafts", &drafts, Some("\\Drafts"));
        }
        if mailbox.file_sent_copies && sends {
            add("sent", &sent, Some("\\Sent"));
        }
        if mode == Mode::Approve {
            add("review", &mailbox.review_folder, None);
            add("approved", &mailbox.approved_folder, None);
        }
        if let Some(folder) = &mailbox.handled_folder {
            add("handled", folder, None);
        }
        if let Some(base) = &mailbox.teach_folder {
            add("teach", base, None);
            for kind in teach::teachable() {
                add("teach", &imap.namespace().child(base, kind.as_str()), None);
            }
        }
        Ok(Folders {
            drafts,
            sent,
            written,
        })
    }
}

/// Removes the copies of an outbox message (by its Message-ID) from one of the bot's folders.
async fn remove_draft(imap: &mut Imap, folder: &str, message_id: &str) -> Result<(), ImapError> {
    imap.select(folder).await?;
    let uids = imap.find_message_id(message_id).await?;
    if !uids.is_empty() {
        imap.delete_uids(&uid_set(&uids)).await?;
        debug!(folder, message_id, "review draft removed");
    }
    Ok(())
}

/// Up to 25% random-looking extra delay, so many bots do not reconnect in step.
fn jitter(d: Duration) -> Duration {
    let nanos = u64::from(crate::clock::now().unsigned_abs() as u32 ^ std::process::id());
    d + d.mul_f64((nanos % 250) as f64 / 1000.0)
}

async fn session(
    engine: &Arc<Engine>,
    store: &mut Store,
    mailbox: &MailboxConfig,
    password: &SecretString,
    mailer: Option<&Mailer>,
    once: bool,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), DaemonError> {
    let mut imap = Imap::connect(mailbox, password).await?;
    let mailbox = &imap.localized(mailbox);
    let result = work(engine, store, mailbox, &mut imap, mailer, once, shutdown).await;
    // A session that ends on an error the connection survived (a refusal, the store) still
    // says goodbye; a broken connection has nobody to say it to.
    if let Err(e) = &result {
        let connection_alive = match e {
            DaemonError::Imap(e) => e.is_refusal(),
            _ => true,
        };
        if connection_alive {
            imap.logout().await;
        }
    }
    result
}

/// One session's work on a logged-in connection, until shutdown, one pass (`once`) or an error.
#[allow(clippy::too_many_arguments)]
async fn work(
    engine: &Arc<Engine>,
    store: &mut Store,
    mailbox: &MailboxConfig,
    imap: &mut Imap,
    mailer: Option<&Mailer>,
    once: bool,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), DaemonError> {
    // One worker for the session's passes: its patterns' search caches stay warm between them.
    let mut classifier = Classifier::start(Arc::clone(engine))?;
    let Folders {
        drafts,
        sent,
        written,
    } = Folders::plan(engine.config.mode, mailbox, imap, mailer.is_some()).await?;
    // A server that refuses to create one is told about once here; the rows for that folder
    // are then held with the server's words, and the rest of the work goes on.
    // The handled folder is ensured by every catch-up pass, which needs the answer.
    for folder in written.iter().filter(|w| w.role != "handled") {
        // Creating a dozen folders on a busy server takes seconds: a stop asked meanwhile (a
        // clean shutdown handing the mailbox to another instance) is not kept waiting for them.
        if *shutdown.borrow() {
            info!("shutting down");
            imap.logout().await;
            return Ok(());
        }
        ensure_or_warn(imap, &folder.name, folder.special_use).await?;
    }
    let places = Places::new(mailbox, &sent, &drafts);
    engine.load_templates(store)?;
    settle_uncertain(store, mailbox, &places, &drafts, imap).await?;
    let mut again = 0;
    // Said once per session: the operator (and a test) sees when a mailbox is up to date.
    let mut announced = false;
    loop {
        // Templates taught elsewhere (the console, the command line) count from this pass on.
        engine.load_templates(store)?;
        collect_teachings(engine, store, mailbox, imap).await?;
        catch_up(engine, store, mailbox, imap, &mut classifier, shutdown).await?;
        let synced_at = crate::clock::now();
        if *shutdown.borrow() {
            info!("shutting down");
            imap.logout().await;
            return Ok(());
        }
        if engine.config.mode == crate::pipeline::decide::Mode::Approve {
            collect_approvals(engine, store, mailbox, imap).await?;
        }
        deliver(engine, store, mailbox, &places, &drafts, imap, mailer).await?;
        // For the console and the metrics, once the pass's mail is out (one write, off the
        // path from a new message to its reply).
        let waiting = if mailbox.idle && imap.has_capability("IDLE") {
            format!("IDLE (renewed every {} s)", mailbox.idle_renew.as_secs())
        } else {
            format!("polling every {} s", mailbox.poll_interval.as_secs())
        };
        store.set_healths(
            &[
                ("last_sync", mailbox.folder.as_str()),
                ("waiting", &waiting),
            ],
            synced_at,
        )?;
        if let Some(e) = imap.unreliable_error() {
            // The rows that failed are marked; a fresh connection delivers the rest.
            if once {
                warn!(error = %e, "ending the pass early; rows not copied yet wait for the next run");
                return Ok(());
            }
            return Err(e.into());
        }
        if once {
            imap.logout().await;
            return Ok(());
        }
        if imap.selected_validity(&mailbox.folder).is_none() {
            imap.select(&mailbox.folder).await?;
        }
        // At most a few passes in a row without waiting: a server that keeps announcing mail
        // that is not there must not keep the bot from waiting.
        if imap.drain_unsolicited() && again < 3 {
            again += 1;
            debug!("new mail arrived during the pass: catching up again");
            continue;
        }
        again = 0;
        // Wake up in time for a reply waiting to be retried.
        let until_retry = store
            .next_retry_at()?
            .map(|t| Duration::from_secs(t.saturating_sub(crate::clock::now()).max(1) as u64));
        if !announced {
            info!(how = %waiting, "caught up: waiting for new mail");
            announced = true;
        }
        let renew = until_retry.map_or(mailbox.idle_renew, |d| d.min(mailbox.idle_renew));
        let poll = until_retry.map_or(mailbox.poll_interval, |d| d.min(mailbox.poll_interval));
        // An approval or release given while the bot waits (console, command line) is sent
        // within seconds, not at the next wake-up.
        let store_ref: &Store = store;
        let approved = async {
            loop {
                tokio::time::sleep(APPROVAL_CHECK).await;
                if store_ref
                    .has_approved_ready(crate::clock::now())
                    .unwrap_or(false)
                {
                    return;
                }
            }
        };
        match imap
            .wait(mailbox.idle, renew, poll, shutdown, approved)
            .await?
        {
            Wake::Shutdown => {
                info!("shutting down");
                imap.logout().await;
                return Ok(());
            }
            Wake::Changed | Wake::Timeout => {}
        }
    }
}

/// Reads every message above the stored cursor, oldest first, header first: a chunk's header
/// fields are judged by `candidate::needs_body`, only the messages that can matter are fetched
/// whole, and the chunk's messages and the cursor after it are written in one transaction. A
/// crash re-reads the chunk; dedup keeps a message from being handled twice.
async fn catch_up(
    engine: &Engine,
    store: &mut Store,
    mailbox: &MailboxConfig,
    imap: &mut Imap,
    classifier: &mut Classifier,
    shutdown: &watch::Receiver<bool>,
) -> Result<(), DaemonError> {
    let handled_folder = match &mailbox.handled_folder {
        Some(folder) if ensure_or_warn(imap, folder, None).await? => Some(folder),
        _ => None,
    };
    let key = format!("{}@{}/{}", mailbox.username, mailbox.host, mailbox.folder);
    // Still selected since the last pass (woken by IDLE, say): no new SELECT; the UIDs that
    // arrived since the cursor (UID SEARCH, numbers only) bound the read, so a flood is read
    // in the same chunks and transactions as a catch-up. Else SELECT, and read up to
    // UIDNEXT - 1; later mail gets a higher UID and waits for the next pass.
    let (uid_validity, selected) = match imap.selected_validity(&mailbox.folder) {
        Some(v) => (v, None),
        None => {
            let s = imap.select(&mailbox.folder).await?;
            (s.uid_validity, Some(s))
        }
    };
    let after = match sync::resume(store.cursor(&key)?, uid_validity) {
        Resume::After(uid) => uid,
        Resume::Rescan => {
            info!(folder = %mailbox.folder, uid_validity, "reading the whole folder (new or changed UIDVALIDITY)");
            0
        }
    };
    let (last, estimate) = match selected {
        Some(s) => match s.uid_next {
            Some(next) => (next.saturating_sub(1), s.exists),
            None => (
                imap.uids_after(0).await?.last().copied().unwrap_or(0),
                s.exists,
            ),
        },
        None => {
            let arrived = imap.uids_after(after).await?;
            let count = u32::try_from(arrived.len()).unwrap_or(u32::MAX);
            (arrived.last().copied().unwrap_or(after), count)
        }
    };
    if last <= after {
        store.set_cursor(&key, uid_validity, after)?;
        return Ok(());
    }
    let header_items = candidate::fetch_items(&engine.config.classify);
    let limit = engine.config.max_message_bytes;
    let body_items = format!("(UID RFC822.SIZE BODY.PEEK[]<0.{limit}>)");
    let span = last - after;
    let mut progress = Progress::new(u64::from(span.min(estimate)));
    // Only a real catch-up is worth a word: a message or two after an IDLE wake is none.
    let backlog = span.min(estimate) > mailbox.chunk_uids;
    if backlog {
        store.set_health(
            "backlog",
            &span.min(estimate).to_string(),
            crate::clock::now(),
        )?;
    }
    // A pass that failed ended its session and its worker: nothing is left pending here.
    debug_assert!(classifier.idle());
    let mut from = after.saturating_add(1);
    loop {
        // A signal stops the catch-up between two chunks; the cursor covers the ones done.
        if *shutdown.borrow() || from > last {
            break;
        }
        let to = last.min(from.saturating_add(mailbox.chunk_uids - 1));
        let range = format!("{from}:{to}");
        debug!(range = %range, "reading header fields");
        let mut read = 0u64;
        imap.for_each_fetched(&range, &header_items, |f| {
            // Unsolicited FETCH responses (another client's flag change) carry no header.
            let (Some(uid), Some(header)) = (f.uid, f.data) else {
                return Ok::<(), DaemonError>(());
            };
            if uid < from || uid > to {
                return Ok(());
            }
            read += 1;
            Ok(classifier.judge(uid, header)?)
        })
        .await?;
        let mut wanted = Vec::new();
        while let Some(done) = classifier.wait()? {
            if let Done::Header {
                uid,
                needs_body: Some(reason),
            } = done
            {
                debug!(uid, reason, "reading whole");
                wanted.push(uid);
            }
        }
        let fetched = wanted.len() as u64;
        let mut batch = store.batch()?;
        if !wanted.is_empty() {
            let returned = std::cell::RefCell::new(std::collections::HashSet::new());
            let mut refused = Vec::new();
            let mut on_body = |f: Fetched<'_>| {
                let (Some(uid), Some(raw)) = (f.uid, f.data) else {
                    return Ok::<(), DaemonError>(());
                };
                if !wanted.contains(&uid) || !returned.borrow_mut().insert(uid) {
                    return Ok(());
                }
                debug!(uid, bytes = raw.len(), "fetched whole");
                crate::shell::failpoint::hit("after_fetch");
                crate::shell::failpoint::stall("after_fetch");
                // Exchange reports sizes that are estimates: only a body as long as the limit
                // was cut.
                let cut = raw.len() >= limit as usize;
                let size = f.size.map_or(raw.len(), |s| s as usize);
                classifier.prepare(uid, raw, cut.then_some(size))?;
                // Apply what is ready while the stream goes on; wait when too much is out.
                while let Some(done) = classifier.ready()? {
                    handle_done(engine, &mut batch, mailbox, done)?;
                }
                while classifier.over_budget() {
                    if let Some(done) = classifier.wait()? {
                        handle_done(engine, &mut batch, mailbox, done)?;
                    }
                }
                Ok(())
            };
            let set = uid_set(&wanted);
            match imap.for_each_fetched(&set, &body_items, &mut on_body).await {
                Ok(()) => {}
                // One message the server will not give out (Exchange: "could not be converted
                // to an RFC-822 compatible format") must neither stop the catch-up nor be
                // passed over in silence: the rest are read one by one, and a refused one is
                // quarantined with the server's words.
                Err(DaemonError::Imap(e)) if e.is_refusal() => {
                    warn!(range = %set, error = %e, "the server refused a FETCH; reading those messages one by one");
                    for &uid in &wanted {
                        if returned.borrow().contains(&uid) {
                            continue;
                        }
                        match imap
                            .for_each_fetched(&uid.to_string(), &body_items, &mut on_body)
                            .await
                        {
                            Ok(()) => {}
                            Err(DaemonError::Imap(e)) if e.is_refusal() => refused.push((uid, e)),
                            Err(e) => return Err(e),
                        }
                    }
                }
                Err(e) => return Err(e),
            }
            for (uid, e) in refused {
                warn!(uid, error = %e, "the server will not give out this message: quarantined");
                batch.quarantine(
                    &format!("{}/{uid}", mailbox.folder),
                    None,
                    &format!("imap:{uid_validity}:{uid}"),
                    &format!("the server refused to fetch it: {e}"),
                    crate::clock::now(),
                )?;
            }
            while let Some(done) = classifier.wait()? {
                handle_done(engine, &mut batch, mailbox, done)?;
            }
        }
        if let Some(keyword) = &mailbox.handled_keyword {
            match imap.add_keyword(&range, keyword).await {
                Ok(()) => {}
                Err(e) if e.is_refusal() => {
                    warn!(keyword = %keyword, error = %e, "the handled keyword was not set");
                }
                Err(e) => return Err(e.into()),
            }
        }
        crate::shell::failpoint::hit("before_cursor");
        batch.set_cursor(&key, uid_validity, to)?;
        batch.commit()?;
        if let Some(folder) = handled_folder {
            match imap.move_uids(&range, folder).await {
                Ok(true) => {}
                Ok(false) => {
                    warn!(folder = %folder, "the server has neither MOVE nor UIDPLUS: handled mail stays where it is")
                }
                Err(e) if e.is_refusal() => {
                    warn!(folder = %folder, error = %e, "handled mail stays where it is");
                }
                Err(e) => return Err(e.into()),
            }
        }
        progress.advance(read, fetched);
        from = to.saturating_add(1);
        if to == u32::MAX {
            break;
        }
    }
    progress.finish();
    if backlog {
        store.set_health("backlog", "0", crate::clock::now())?;
    }
    Ok(())
}

fn handle_done(
    engine: &Engine,
    store: &mut Store,
    mailbox: &MailboxConfig,
    done: Done,
) -> Result<(), DaemonError> {
    match done {
        Done::Body {
            uid,
            raw,
            cut_from,
            prepared,
        } => handle_fetched(engine, store, mailbox, uid, &raw, *prepared, cut_from),
        // Every header was taken back before the bodies were asked for.
        Done::Header { .. } => Ok(()),
    }
}

/// Applies one fetched and classified message inside the chunk's batch; a message that cannot
/// be handled is quarantined, never lost and never retried forever.
fn handle_fetched(
    engine: &Engine,
    store: &mut Store,
    mailbox: &MailboxConfig,
    uid: u32,
    raw: &[u8],
    mut prepared: Prepared,
    cut_from: Option<usize>,
) -> Result<(), DaemonError> {
    let now = crate::clock::now();
    if let Some(size) = cut_from {
        let note = format!(
            "fetched only the first {} of {size} bytes for classification",
            raw.len()
        );
        warn!(uid, size, "{note}");
        prepared.inbound.truncated = true;
        prepared.inbound.damage.push(note);
    }
    let source = format!("{}/{uid}", mailbox.folder);
    match engine.apply(store, &source, &prepared, now, OutboxStatus::Pending) {
        Ok(_) => Ok(()),
        // The store failing is no fault of the message: stop before the cursor moves, so the
        // chunk is read again once the store is back.
        Err(HandleError::Store(e)) => Err(e.into()),
        Err(e) => {
            warn!(uid, error = %e, "message quarantined");
            Ok(store.quarantine(
                &source,
                prepared.inbound.message_id.as_deref(),
                &prepared.inbound.content_hash,
                &format!("{e:#}"),
                now,
            )?)
        }
    }
}

/// `1,2,3,7` as `1:3,7`: short commands for long runs of UIDs.
fn uid_set(uids: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < uids.len() {
        let start = uids[i];
        let mut end = start;
        while i + 1 < uids.len() && uids[i + 1] == end.wrapping_add(1) {
            i += 1;
            end = uids[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    out
}

/// Attempts one row gets at an IMAP APPEND before it is held for the operator.
const MAX_COPY_ATTEMPTS: i64 = 5;

/// Delivers pending outbox rows by their disposition, and approved ones. A row that fails is
/// retried later or held, by itself: the rows behind it are still delivered. Only a lost
/// connection ends the pass (the session reconnects).
async fn deliver(
    engine: &Engine,
    store: &mut Store,
    mailbox: &MailboxConfig,
    places: &Places,
    drafts: &str,
    imap: &mut Imap,
    mailer: Option<&Mailer>,
) -> Result<(), DaemonError> {
    let now = crate::clock::now();
    let mode = engine.config.mode;
    let automatic_reply = |item: &OutboxItem| {
        item.template != "operator_notification"
            && match item.disposition.as_str() {
                "send" | "draft" => true,
                "queue" => mode == Mode::Approve,
                _ => false,
            }
    };
    // The mailbox is asked about every reply before any is sent, drafted or mirrored for
    // review, and before any APPEND of this pass can leave the session out of step.
    let mut cleared = std::collections::HashSet::new();
    let mut known = std::collections::HashSet::new();
    let mut hooks = None;
    for item in store.outbox_items("pending")? {
        known.insert(item.id);
        if item.next_attempt_at > now || !automatic_reply(&item) || imap.unreliable().is_some() {
            continue;
        }
        if second_witness(engine, store, imap, places, &item).await? {
            cleared.insert(item.id);
        }
    }
    for item in store.outbox_items("pending")? {
        if item.next_attempt_at > now || (automatic_reply(&item) && !cleared.contains(&item.id)) {
            continue;
        }
        match item.disposition.as_str() {
            "draft" => {
                let copy = Copy::draft(drafts);
                copy_row(store, imap, &item, "pending", &copy, engine).await?;
            }
            "webhook" => deliver_webhook(engine, store, &item, &mut hooks).await?,
            // A row from an older version or another mode: approve mode is what mirrors it.
            "queue" if mode != Mode::Approve => {
                hold(
                    store,
                    &item,
                    "pending",
                    &format!(
                        "waits for approval, but the bot runs in {mode} mode: `postmaster-bot queue release {}` sends it",
                        item.id
                    ),
                    now,
                )?;
            }
            "queue" => {
                let copy = Copy::review(&mailbox.review_folder);
                copy_row(store, imap, &item, "pending", &copy, engine).await?;
            }
            "send" => {
                send(
                    engine, store, mailbox, places, imap, mailer, &item, "pending",
                )
                .await?
            }
            other => {
                hold(
                    store,
                    &item,
                    "pending",
                    &format!("unknown disposition {other}"),
                    now,
                )?;
            }
        }
    }
    for item in store.outbox_items("approved")? {
        if item.next_attempt_at > now {
            continue;
        }
        if item.disposition == "webhook" {
            deliver_webhook(engine, store, &item, &mut hooks).await?;
            continue;
        }
        if mode == Mode::Draft {
            // Released in draft mode: it becomes a draft, never a sent message.
            let copy = Copy::draft(drafts);
            copy_row(store, imap, &item, "approved", &copy, engine).await?;
        } else {
            send(
                engine, store, mailbox, places, imap, mailer, &item, "approved",
            )
            .await?;
        }
    }
    // A notification this pass produced (a row the server would not store) goes out now, not
    // after the next wake-up, which may be minutes away.
    for item in store.outbox_items("pending")? {
        if known.contains(&item.id) {
            continue;
        }
        if item.disposition == "webhook" {
            deliver_webhook(engine, store, &item, &mut hooks).await?;
            continue;
        }
        if item.template != "operator_notification" {
            continue;
        }
        if item.disposition == "draft" {
            copy_row(store, imap, &item, "pending", &Copy::draft(drafts), engine).await?;
        } else {
            send(
                engine, store, mailbox, places, imap, mailer, &item, "pending",
            )
            .await?;
        }
    }
    Ok(())
}

/// Delivers one webhook row, with one HTTP client per pass (made when the first is needed).
async fn deliver_webhook(
    engine: &Engine,
    store: &mut Store,
    item: &OutboxItem,
    client: &mut Option<reqwest::Client>,
) -> Result<(), DaemonError> {
    if client.is_none() {
        match crate::shell::webhook::client() {
            Ok(c) => *client = Some(c),
            Err(e) => {
                warn!(error = %e, "no HTTP client for webhooks; they wait");
                return Ok(());
            }
        }
    }
    if let Some(c) = client.as_ref() {
        crate::shell::webhook::deliver(&engine.config.webhooks, c, store, item, &item.status)
            .await?;
    }
    Ok(())
}

/// Asks the mailbox, the second witness besides the store, whether a planned reply was already
/// made: our earlier reply on its thread in Sent, the watched folder, Drafts or the review
/// folders. Found, the row is settled (made before, waiting for approval as the earlier copy,
/// or held when earlier escalations unknown to the store use up the ticket's allowance) and
/// `false` comes back; nothing found, the reply goes on.
async fn second_witness(
    engine: &Engine,
    store: &mut Store,
    imap: &mut Imap,
    places: &Places,
    item: &OutboxItem,
) -> Result<bool, DaemonError> {
    let Some(case) = item.case_id.map(|id| store.case(id)).transpose()?.flatten() else {
        return Ok(true);
    };
    let parent = item.inbound_message_id.as_deref();
    let thread = Thread {
        parent,
        parent_date: case
            .last_microsoft
            .as_ref()
            .filter(|p| p.message_id.as_deref() == parent)
            .and_then(|p| p.date),
        ticket: case.ticket_id.as_deref(),
    };
    let identity = &engine.config.identity;
    let ours = Ours {
        loop_header: &identity.loop_header,
        instance: &identity.instance,
        address: &identity.address,
        microsoft_domains: &engine.config.classify.microsoft_domains,
    };
    // A pending row has written no copy of its own (an APPEND or send left in doubt is settled
    // before, in `settle_uncertain`), so a copy bearing its Message-ID was made by an earlier
    // state store that minted the same id (the same message in the same second): it is an
    // earlier reply like any other. Only a review copy that came back under another id is
    // this row's own.
    let own_ids: Vec<&str> = item.review_message_id.as_deref().into_iter().collect();
    let now = crate::clock::now();
    let found = match look(imap, places, &thread, &ours, &own_ids).await {
        Ok(found) => found,
        // Without the mailbox's word nothing goes out; the row waits and is tried again.
        Err(e) if e.is_refusal() => {
            let reason = format!("the mailbox could not be searched for an earlier reply: {e}");
            let retry = Retry {
                base_secs: 60,
                max_attempts: MAX_COPY_ATTEMPTS,
            };
            let held = store
                .attempt_failed(item.id, "pending", "pending", &reason, retry, now)?
                .held;
            warn!(outbox = item.id, error = %e, held, "reply waits: the mailbox could not be asked");
            if held {
                note(store, item, now, &format!("held: {reason}"))?;
            }
            return Ok(false);
        }
        Err(e) => return Err(e.into()),
    };
    if found.is_empty() {
        return Ok(true);
    }
    let mut known = std::collections::HashSet::new();
    for f in &found {
        if let Some(id) = &f.earlier.message_id {
            let this_row = id.eq_ignore_ascii_case(&item.message_id);
            if !this_row && (case.thread_ids.contains(id) || store.outbox_has(id)?) {
                known.insert(id.clone());
            }
        }
    }
    let earlier: Vec<Earlier> = found.iter().map(|f| f.earlier.clone()).collect();
    let template = if item.template == Template::Followup.name() {
        Template::Followup
    } else {
        Template::EscalationReply
    };
    let finding = witness::judge(
        &earlier,
        template,
        &thread,
        |id| known.contains(id),
        case.escalations,
        engine.config.policy.max_escalations_per_ticket,
    );
    let place_of = |e: &Earlier| found.iter().find(|f| f.earlier == *e);
    match finding {
        Finding::Clear => Ok(true),
        Finding::Answered(e) => {
            let Some(at) = place_of(&e) else {
                return Ok(true);
            };
            let id = e.message_id.as_deref().unwrap_or("without a Message-ID");
            let who = match e.author {
                Author::Bot => "our earlier reply",
                Author::Person => "a reply written by hand",
            };
            let adopt = at.place == Place::Review
                && engine.config.mode == Mode::Approve
                && item.disposition == "queue";
            // Anyone can mail the watched folder: a copy found there may be a Bcc of our reply
            // or a forgery made to silence it. A person decides, and meanwhile nothing is sent.
            let from_inbox = at.place == Place::Inbox;
            let (to, reason) = if from_inbox {
                (
                    "held",
                    format!(
                        "{who} <{id}> on this thread is in {}, where anyone can send mail: release this reply if that copy is not ours, or reject it",
                        at.folder
                    ),
                )
            } else if adopt {
                (
                    "awaiting_approval",
                    format!(
                        "an earlier copy of this reply (<{id}>) waits in {}: approve that one by moving it to {}",
                        at.folder, places.approved()
                    ),
                )
            } else if at.place.went_out() {
                (
                    "in_mailbox",
                    format!(
                        "{who} <{id}> on this thread is in {}: nothing sent again",
                        at.folder
                    ),
                )
            } else {
                (
                    "in_mailbox",
                    format!(
                        "{who} <{id}> on this thread is already written in {}: nothing written again",
                        at.folder
                    ),
                )
            };
            // A held reply is no escalation made (see `case::reply_held`).
            let escalations = from_inbox.then(|| case.escalations.saturating_sub(1));
            if store.record_earlier_reply(
                item,
                to,
                &reason,
                e.message_id.as_deref(),
                escalations,
                now,
            )? {
                info!(outbox = item.id, case = case.id, found = id, folder = %at.folder, status = to, "earlier reply found in the mailbox: nothing sent");
            }
            Ok(false)
        }
        Finding::OverCap {
            escalations,
            earlier,
        } => {
            let folder = place_of(&earlier).map_or("the mailbox", |f| f.folder.as_str());
            let id = earlier
                .message_id
                .as_deref()
                .unwrap_or("without a Message-ID");
            let reason = format!(
                "ticket {} already had {escalations} escalation(s), <{id}> in {folder} among them, which the state store did not know of (policy.max_escalations_per_ticket = {}): a person decides",
                case.ticket_id.as_deref().unwrap_or("-"),
                engine.config.policy.max_escalations_per_ticket
            );
            if store.record_earlier_reply(
                item,
                "held",
                &reason,
                earlier.message_id.as_deref(),
                Some(escalations),
                now,
            )? {
                warn!(
                    outbox = item.id,
                    case = case.id,
                    found = id,
                    folder,
                    "earlier escalations found in the mailbox: reply held"
                );
            }
            Ok(false)
        }
    }
}

/// Where an APPEND puts a row, and the statuses around it.
struct Copy<'a> {
    folder: &'a str,
    flags: &'static str,
    /// Marks the window between the APPEND and the record of it.
    during: &'static str,
    done: &'static str,
}

impl<'a> Copy<'a> {
    fn draft(folder: &'a str) -> Copy<'a> {
        Copy {
            folder,
            flags: DRAFT_FLAGS,
            during: "drafting",
            done: "drafted",
        }
    }

    fn review(folder: &'a str) -> Copy<'a> {
        Copy {
            folder,
            flags: REVIEW_FLAGS,
            during: "mirroring",
            done: "awaiting_approval",
        }
    }
}

/// Appends one row to a folder. A refusal (the server said NO or BAD) or a message the server
/// would not take holds or delays this row only; a lost connection leaves it marked, to be
/// looked up by Message-ID after reconnecting, and ends the pass.
async fn copy_row(
    store: &mut Store,
    imap: &mut Imap,
    item: &OutboxItem,
    from: &str,
    copy: &Copy<'_>,
    engine: &Engine,
) -> Result<(), DaemonError> {
    let now = crate::clock::now();
    // After an APPEND that left the session out of step, copies wait for a fresh connection.
    if imap.unreliable().is_some() {
        return Ok(());
    }
    if !store.transition_outbox(item.id, from, copy.during, None, now)? {
        return Ok(());
    }
    // A review copy carries its row's token, which an approval by folder move is matched by
    // even when the mail client rewrote Message-ID and In-Reply-To; it is stripped on the way back.
    let bytes = if copy.done == "awaiting_approval" {
        std::borrow::Cow::Owned(witness::with_review_token(&item.bytes, &item.message_id))
    } else {
        std::borrow::Cow::Borrowed(&item.bytes)
    };
    match imap.append_creating(copy.folder, copy.flags, &bytes).await {
        Ok(()) => {
            crate::shell::failpoint::hit("after_append");
            store.transition_outbox(item.id, copy.during, copy.done, None, now)?;
            let what = if copy.done == "drafted" {
                format!("{} drafted in {}", item.template, copy.folder)
            } else {
                format!("{} waits for approval", item.template)
            };
            note(store, item, now, &what)?;
            info!(outbox = item.id, template = %item.template, folder = copy.folder, status = copy.done, "copied");
            Ok(())
        }
        Err(e) if e.is_refusal() => {
            let base = engine
                .config
                .smtp
                .as_ref()
                .map_or(60, |s| s.retry.as_secs() as i64);
            let reason = e.to_string();
            // What trying again cannot mend (a full mailbox, no right to write there, a folder
            // that cannot be made) holds the row at once, with the server's words.
            let max_attempts = if permanent(&e) { 1 } else { MAX_COPY_ATTEMPTS };
            let held = store
                .attempt_failed(
                    item.id,
                    copy.during,
                    from,
                    &reason,
                    Retry {
                        base_secs: base,
                        max_attempts,
                    },
                    now,
                )?
                .held;
            warn!(outbox = item.id, error = %e, held, "copy refused; the other rows go on");
            if held {
                note(store, item, now, &format!("held: {reason}"))?;
                let why = format!("the server would not store it in {}: {reason}", copy.folder);
                let key = format!(
                    "refused:{}:{}",
                    copy.folder,
                    e.refusal_code().unwrap_or("NO")
                );
                match engine.notify_held_copy(store, item, &why, &key, now) {
                    Ok(()) => {}
                    Err(HandleError::Store(e)) => return Err(e.into()),
                    Err(e) => warn!(outbox = item.id, error = %e, "the operator could not be told"),
                }
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// A refusal that asking again will not change (RFC 5530 codes, and a folder that is still
/// missing after the bot tried to create it).
fn permanent(e: &ImapError) -> bool {
    matches!(
        e.refusal_code(),
        Some("OVERQUOTA" | "NOPERM" | "CANNOT" | "TRYCREATE" | "LIMIT" | "TOOBIG")
    )
}

/// Holds a row for the operator with the reason.
fn hold(
    store: &Store,
    item: &OutboxItem,
    from: &str,
    reason: &str,
    now: i64,
) -> Result<(), StoreError> {
    if store.transition_outbox(item.id, from, "held", Some(reason), now)? {
        note(store, item, now, &format!("held: {reason}"))?;
        warn!(outbox = item.id, reason, "held for the operator");
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn send(
    engine: &Engine,
    store: &mut Store,
    mailbox: &MailboxConfig,
    places: &Places,
    imap: &mut Imap,
    mailer: Option<&Mailer>,
    item: &OutboxItem,
    from_status: &str,
) -> Result<(), DaemonError> {
    let now = crate::clock::now();
    // NOTE: checked again at the last moment, whatever put the row here (a release by hand, a
    // row from an older version): a reply to Microsoft goes only to Microsoft's domains.
    let domains = &engine.config.classify.microsoft_domains;
    if item.template != "operator_notification"
        && (item.recipients.is_empty()
            || !item
                .recipients
                .iter()
                .all(|r| crate::pipeline::decide::recipient_allowed(r, domains)))
    {
        hold(
            store,
            item,
            from_status,
            &format!(
                "reply address {} is outside trust.microsoft_domains",
                item.recipients.join(", ")
            ),
            now,
        )?;
        return Ok(());
    }
    let Some(mailer) = mailer else {
        let reason = if engine.config.mode == crate::pipeline::decide::Mode::Draft {
            "draft mode: nothing is sent"
        } else {
            "no [smtp] section configured"
        };
        store.transition_outbox(item.id, from_status, "held", Some(reason), now)?;
        warn!(outbox = item.id, reason, "not sent; held for the operator");
        return Ok(());
    };
    // The token comes first: without one nothing is attempted and the row stays as it is.
    let smtp = match mailer.client(false).await {
        Ok(smtp) => smtp,
        Err(e) if e.is_transient() => {
            warn!(outbox = item.id, error = %e, "no SMTP credential for now; sending on a later pass");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    // Recorded before the first SMTP byte: a crash from here on leaves `sending`, which is
    // never retried automatically.
    if !store.transition_outbox(item.id, from_status, "sending", None, now)? {
        return Ok(());
    }
    crate::shell::failpoint::hit("before_smtp");
    let from = &engine.config.identity.address;
    let retry_later = |store: &Store, reason: &str| {
        let base = mailer.cfg.retry.as_secs() as i64;
        store.retry_later(item.id, from_status, reason, base, crate::clock::now())
    };
    let mut result = smtp.send(from, &item.recipients, &item.bytes).await;
    // A refused login happens before MAIL FROM, so nothing left: safe to try a new token once.
    if matches!(&result, Err(e) if e.is_auth_failure()) && mailer.renewable() {
        warn!(
            outbox = item.id,
            "the SMTP server refused the access token; asking for a new one"
        );
        match mailer.client(true).await {
            Ok(smtp) => result = smtp.send(from, &item.recipients, &item.bytes).await,
            Err(e) => {
                let due = retry_later(store, &e.to_string())?;
                warn!(outbox = item.id, error = %e, retry_at = due, "no new access token; retrying later");
                return Ok(());
            }
        }
    }
    match result {
        Ok(()) => {
            crate::shell::failpoint::hit("after_250");
            store.transition_outbox(item.id, "sending", "sent", None, crate::clock::now())?;
            note(
                store,
                item,
                now,
                &format!("{} sent to {}", item.template, item.recipients.join(", ")),
            )?;
            info!(outbox = item.id, message_id = %item.message_id, to = ?item.recipients, "sent");
            // The review draft has done its work: left in the review (or approved) folder it
            // would look like a reply still waiting. The Sent folder keeps the copy.
            if from_status == "approved" && imap.unreliable().is_none() {
                let ids = std::iter::once(&item.message_id).chain(&item.review_message_id);
                for id in ids {
                    for folder in [&mailbox.review_folder, &mailbox.approved_folder] {
                        if let Err(e) = remove_draft(imap, folder, id).await {
                            if !e.is_refusal() {
                                return Err(e.into());
                            }
                            warn!(outbox = item.id, folder = %folder, error = %e, "sent, but its review draft could not be removed");
                        }
                    }
                }
            }
            // The Sent folder is the record the second witness reads: where the server does
            // not file submitted mail itself, the bot does.
            if mailbox.file_sent_copies && imap.unreliable().is_none() {
                let sent = places.sent();
                match imap.append_creating(sent, "(\\Seen)", &item.bytes).await {
                    Ok(()) => {}
                    Err(e) if e.is_refusal() => {
                        warn!(outbox = item.id, folder = %sent, error = %e, "sent, but the copy to the Sent folder was refused");
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        // A refused login sent nothing either: wait for a fixed credential, never drop the reply.
        Err(e) if e.is_transient() || e.is_auth_failure() => {
            let due = retry_later(store, &e.to_string())?;
            warn!(outbox = item.id, error = %e, retry_at = due, "send failed for now; retrying later");
        }
        Err(e) => {
            store.transition_outbox(
                item.id,
                "sending",
                "failed",
                Some(&e.to_string()),
                crate::clock::now(),
            )?;
            warn!(outbox = item.id, error = %e, "send refused; held for the operator");
        }
    }
    Ok(())
}

/// A search for a copy the server refused counts as not found: the row then goes the careful
/// way (another APPEND is looked up again next time; an uncertain send goes to a person).
fn present_or_refused(found: Result<bool, ImapError>) -> Result<bool, ImapError> {
    match found {
        Err(e) if e.is_refusal() => {
            warn!(error = %e, "the server refused the search for a copy; taking it as not found");
            Ok(false)
        }
        other => other,
    }
}

/// Rows left in `sending` by a crash or a lost connection after DATA may or may not have left.
/// They are never resent blindly: found in the Sent folder they are `sent`; otherwise they go
/// to the approval queue with the reason, where a person decides.
async fn settle_uncertain(
    store: &mut Store,
    mailbox: &MailboxConfig,
    places: &Places,
    drafts: &str,
    imap: &mut Imap,
) -> Result<(), DaemonError> {
    // A draft or review copy whose APPEND may have happened: look for it before writing again.
    let now = crate::clock::now();
    for (status, folder, done) in [
        ("drafting", drafts, "drafted"),
        (
            "mirroring",
            mailbox.review_folder.as_str(),
            "awaiting_approval",
        ),
    ] {
        for item in store.outbox_items(status)? {
            let present = imap.select(folder).await.is_ok()
                && present_or_refused(imap.has_message_id(&item.message_id).await)?;
            if present {
                store.transition_outbox(item.id, status, done, None, now)?;
            } else {
                // A row whose APPEND keeps losing the connection must not stop the others.
                store.attempt_failed(
                    item.id,
                    status,
                    "pending",
                    &format!("the connection was lost during the APPEND to {folder}"),
                    Retry {
                        base_secs: 1,
                        max_attempts: MAX_COPY_ATTEMPTS,
                    },
                    now,
                )?;
            }
        }
    }
    let uncertain = store.outbox_items("sending")?;
    if uncertain.is_empty() {
        return Ok(());
    }
    let now = crate::clock::now();
    for item in uncertain {
        if item.disposition == "webhook" {
            let reason = "fate uncertain: the bot stopped during the delivery; release it to send it again if the receiver does not have it";
            store.transition_outbox(item.id, "sending", "held", Some(reason), now)?;
            warn!(
                outbox = item.id,
                "uncertain webhook delivery held; never resent automatically"
            );
            continue;
        }
        let mut found = false;
        if imap.select(places.sent()).await.is_ok() {
            found = present_or_refused(imap.has_message_id(&item.message_id).await)?;
        }
        if found {
            store.transition_outbox(
                item.id,
                "sending",
                "sent",
                Some("found in the Sent folder after a restart"),
                now,
            )?;
            note(
                store,
                &item,
                now,
                "found in the Sent folder after a restart",
            )?;
            info!(
                outbox = item.id,
                "uncertain send found in Sent: marked sent"
            );
        } else {
            let reason = "fate uncertain: the bot stopped during the send; check the recipient's copy before approving";
            store.transition_outbox(item.id, "sending", "awaiting_approval", Some(reason), now)?;
            note(store, &item, now, reason)?;
            warn!(
                outbox = item.id,
                "uncertain send queued for a person; never resent automatically"
            );
        }
    }
    Ok(())
}

/// An operator teaches a template by moving a message into `<teach_folder>/<kind>`: it is
/// learned, decided again, and moved back to where the bot keeps handled mail.
async fn collect_teachings(
    engine: &Engine,
    store: &mut Store,
    mailbox: &MailboxConfig,
    imap: &mut Imap,
) -> Result<(), DaemonError> {
    let Some(base) = &mailbox.teach_folder else {
        return Ok(());
    };
    let back = mailbox
        .handled_folder
        .as_deref()
        .unwrap_or(mailbox.folder.as_str());
    for kind in teach::teachable() {
        let folder = imap.namespace().child(base, kind.as_str());
        if imap.message_count(&folder).await?.unwrap_or(0) == 0 {
            continue;
        }
        if let Err(e) = imap.select(&folder).await {
            if !e.is_refusal() {
                return Err(e.into());
            }
            warn!(folder = %folder, error = %e, "the teach folder cannot be read");
            continue;
        }
        let uids = imap.uids_after(0).await?;
        for (uid, raw) in imap.fetch(&uids).await? {
            let source = format!("{folder}/{uid}");
            match teach::teach(engine, store, kind, &raw, &source, crate::clock::now()) {
                Ok(t) => info!(
                    template = t.template,
                    kind = kind.as_str(),
                    uid,
                    before = t.before.as_str(),
                    after = t.after.as_str(),
                    "learned from the teach folder"
                ),
                Err(teach::TeachError::Store(e)) => return Err(e.into()),
                Err(e) => warn!(folder = %folder, uid, error = %e, "not learned; moved back"),
            }
        }
        if !uids.is_empty() && !imap.move_uids(&uid_set(&uids), back).await? {
            warn!(folder = %folder, "the server has neither MOVE nor UIDPLUS: taught mail stays in the teach folder (it is learned once)");
        }
    }
    Ok(())
}

/// Fetches one message of the watched folder (or the handled folder) by its Message-ID, on a
/// connection of its own (`teach --message-id`).
pub async fn fetch_message(
    engine: &Engine,
    message_id: &str,
) -> Result<Option<Vec<u8>>, DaemonError> {
    let mailbox = engine
        .config
        .mailbox
        .clone()
        .ok_or(DaemonError::NoMailbox)?;
    let provider = engine
        .config
        .oauth2
        .clone()
        .map(TokenProvider::new)
        .transpose()?
        .map(Arc::new);
    let credential = Credential::pick(mailbox.auth, mailbox.password.as_ref(), provider.as_ref())
        .ok_or(DaemonError::NoCredential)?;
    let password = credential.get(false).await?;
    let mut imap = Imap::connect(&mailbox, &password).await?;
    let mailbox = imap.localized(&mailbox);
    let mut found = None;
    for folder in [Some(&mailbox.folder), mailbox.handled_folder.as_ref()]
        .into_iter()
        .flatten()
    {
        imap.select(folder).await?;
        if let Some(uid) = imap.find_message_id(message_id).await?.first() {
            found = imap
                .fetch(&[*uid])
                .await?
                .into_iter()
                .next()
                .map(|(_, raw)| raw);
            break;
        }
    }
    imap.logout().await;
    Ok(found)
}

/// An operator approves a queued reply by moving its draft into the approved folder; the text
/// sent is the draft's, edits included.
async fn collect_approvals(
    _engine: &Engine,
    store: &mut Store,
    mailbox: &MailboxConfig,
    imap: &mut Imap,
) -> Result<(), DaemonError> {
    let waiting = store.outbox_items("awaiting_approval")?;
    if waiting.is_empty() {
        return Ok(());
    }
    match imap.select(&mailbox.approved_folder).await {
        Ok(_) => {}
        Err(e) if e.is_refusal() => {
            warn!(folder = %mailbox.approved_folder, error = %e, "approvals by folder move cannot be read");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    }
    // Header first, as the watched folder: only a draft that approves a waiting reply is
    // fetched whole, so a folder full of other mail costs a header read per pass, not a download.
    let uids = imap.uids_after(0).await?;
    let fields = witness::header_fields("");
    let mut approving: Vec<(u32, i64)> = Vec::new();
    for chunk in uids.chunks(APPROVED_HEADER_CHUNK) {
        for (uid, header) in imap.header_fields(&uid_set(chunk), &fields).await? {
            let row = witness::read_copy(&header, "").and_then(|c| approved_row(&c, &waiting));
            if let Some(row) = row {
                approving.push((uid, row.id));
            }
        }
    }
    if approving.is_empty() {
        return Ok(());
    }
    let wanted: Vec<u32> = approving.iter().map(|(uid, _)| *uid).collect();
    let now = crate::clock::now();
    for (uid, raw) in imap.fetch(&wanted).await? {
        let Some(row) = approving
            .iter()
            .find(|(u, _)| *u == uid)
            .and_then(|(_, id)| waiting.iter().find(|w| w.id == *id))
        else {
            continue;
        };
        // The whole draft is read again: what is sent is what is in it now.
        let Some(copy) = witness::read_copy(&raw, "") else {
            continue;
        };
        if approved_row(&copy, &waiting).map(|r| r.id) != Some(row.id) {
            continue;
        }
        if let Some(id) = &copy.message_id {
            store.replace_outbox_bytes(row.id, id, &witness::strip_review_token(&raw))?;
        }
        if store.transition_outbox(
            row.id,
            "awaiting_approval",
            "approved",
            Some("moved to the approved folder"),
            now,
        )? {
            note(store, row, now, "approved in the mail client")?;
            store.add_audit(
                "mail-client",
                "approve_by_move",
                Some(row.id),
                row.case_id,
                &row.subject,
                now,
            )?;
            info!(outbox = row.id, "approved by folder move");
        }
    }
    Ok(())
}

/// UIDs per header FETCH in the approved folder.
const APPROVED_HEADER_CHUNK: usize = 500;

/// The waiting reply a draft in the approved folder approves: by our token first (clients keep
/// unknown headers), then by its Message-ID, then by the Microsoft message it answers.
fn approved_row<'a>(copy: &witness::Copy, waiting: &'a [OutboxItem]) -> Option<&'a OutboxItem> {
    let is_row = |w: &&OutboxItem, id: &str| {
        w.message_id == id || w.review_message_id.as_deref() == Some(id)
    };
    copy.review_token
        .as_deref()
        .and_then(|t| waiting.iter().find(|w| is_row(w, t)))
        .or_else(|| {
            let id = copy.message_id.as_deref()?;
            waiting.iter().find(|w| is_row(w, id))
        })
        .or_else(|| {
            waiting.iter().find(|w| {
                w.template != "operator_notification"
                    && w.inbound_message_id
                        .as_ref()
                        .is_some_and(|p| copy.in_reply_to.contains(p))
            })
        })
}

fn note(store: &Store, item: &OutboxItem, now: i64, summary: &str) -> Result<(), StoreError> {
    match item.case_id {
        Some(case) => store.note(case, now, "delivery", summary),
        None => Ok(()),
    }
}

/// The SMTP side: a client built once for a password, or per send when the credential is a
/// token that expires.
pub struct Mailer {
    cfg: SmtpConfig,
    credential: Option<Credential>,
    fixed: Option<Smtp>,
}

impl Mailer {
    async fn new(cfg: &SmtpConfig, credential: Option<Credential>) -> Result<Mailer, DaemonError> {
        let fixed = match (&credential, cfg.auth) {
            (Some(Credential::Secret(_)), Auth::Password) | (None, _) => {
                let password = match &credential {
                    Some(c) => Some(c.get(false).await?),
                    None => None,
                };
                Some(Smtp::new(cfg, password)?)
            }
            _ => None,
        };
        Ok(Mailer {
            cfg: cfg.clone(),
            credential,
            fixed,
        })
    }

    async fn client(&self, refresh: bool) -> Result<Smtp, DaemonError> {
        match (&self.fixed, &self.credential) {
            (Some(smtp), _) => Ok(smtp.clone()),
            (None, Some(credential)) => {
                Ok(Smtp::new(&self.cfg, Some(credential.get(refresh).await?))?)
            }
            (None, None) => Ok(Smtp::new(&self.cfg, None)?),
        }
    }

    fn renewable(&self) -> bool {
        self.credential.as_ref().is_some_and(Credential::renewable)
    }
}

#[cfg(test)]
mod tests {
    use super::uid_set;

    #[test]
    fn uid_sets_collapse_runs() {
        assert_eq!(uid_set(&[1, 2, 3, 7, 9, 10]), "1:3,7,9:10");
        assert_eq!(uid_set(&[5]), "5");
        assert_eq!(uid_set(&[]), "");
    }
}
