//! The embedded SQLite state store: cases, timelines, processed messages, the outbox.
//!
//! Created and migrated on open. Everything one message changes is written in one transaction,
//! so a crash leaves either all of it or none of it.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

/// `execute` and `query_row` through the connection's statement cache: a message costs a dozen
/// statements, and compiling each one's SQL again every time was most of the store's time.
trait Cached {
    fn run<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
    fn row<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>;
}

impl Cached for Connection {
    fn run<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn row<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}
use serde::Serialize;

use crate::pipeline::case::{Action, Case, CaseId, Lookup, Topic};
use crate::pipeline::learned::Learned;

mod console;
pub use console::{AuditEntry, CaseFilter, CaseLine, Health, MessageLine, Quarantined};

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("failed to open state store {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("failed to create state store {path}: {source}")]
    Create {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("state store {path} is locked by another process")]
    Locked { path: String },
    #[error("state store {path}: {source}")]
    Sql {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("state store {path}: case {case} is damaged: {message}")]
    Damaged {
        path: String,
        case: CaseId,
        message: String,
    },
    #[error("state store {path} has schema version {found}, newer than this build ({supported})")]
    TooNew {
        path: String,
        found: i64,
        supported: i64,
    },
}

impl StoreError {
    /// Whether retrying later can help.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Locked { .. })
    }
}

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE cases (
    id INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    state TEXT NOT NULL,
    ticket_id TEXT,
    notice_key TEXT,
    opened_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    closed_at INTEGER,
    data TEXT NOT NULL
);
CREATE INDEX cases_ticket ON cases(ticket_id);
CREATE INDEX cases_notice ON cases(notice_key);
CREATE TABLE case_ips (
    case_id INTEGER NOT NULL REFERENCES cases(id),
    ip TEXT NOT NULL,
    PRIMARY KEY (case_id, ip)
);
CREATE INDEX case_ips_ip ON case_ips(ip);
CREATE TABLE case_messages (
    message_id TEXT NOT NULL,
    case_id INTEGER NOT NULL REFERENCES cases(id),
    PRIMARY KEY (message_id, case_id)
);
CREATE TABLE timeline (
    id INTEGER PRIMARY KEY,
    case_id INTEGER NOT NULL REFERENCES cases(id),
    at INTEGER NOT NULL,
    kind TEXT,
    action TEXT NOT NULL,
    state TEXT NOT NULL,
    message_id TEXT,
    summary TEXT NOT NULL
);
CREATE INDEX timeline_case ON timeline(case_id, at);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    message_id TEXT,
    content_hash TEXT NOT NULL,
    source TEXT NOT NULL,
    processed_at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    ticket_id TEXT,
    ips TEXT NOT NULL,
    trusted INTEGER NOT NULL,
    case_id INTEGER,
    action TEXT NOT NULL,
    reason TEXT NOT NULL,
    evidence TEXT NOT NULL
);
CREATE UNIQUE INDEX messages_message_id ON messages(message_id) WHERE message_id IS NOT NULL;
CREATE UNIQUE INDEX messages_hash ON messages(content_hash);
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL UNIQUE,
    case_id INTEGER,
    inbound_message_id TEXT,
    template TEXT NOT NULL,
    disposition TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    recipients TEXT NOT NULL,
    subject TEXT NOT NULL,
    bytes BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX outbox_status ON outbox(status);
CREATE TABLE quarantine (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    message_id TEXT,
    content_hash TEXT NOT NULL,
    error TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE TABLE mailbox_sync (
    mailbox TEXT PRIMARY KEY,
    uidvalidity INTEGER NOT NULL,
    last_uid INTEGER NOT NULL
);
"#,
    r#"
ALTER TABLE outbox ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN next_attempt_at INTEGER NOT NULL DEFAULT 0;
"#,
    r#"
ALTER TABLE messages ADD COLUMN damage TEXT NOT NULL DEFAULT '[]';
"#,
    r#"
ALTER TABLE outbox ADD COLUMN rate_key TEXT;
CREATE INDEX outbox_rate_key ON outbox(rate_key, created_at) WHERE rate_key IS NOT NULL;
"#,
    r#"
CREATE TABLE templates (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    shingles BLOB NOT NULL,
    sample TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
"#,
    r#"
ALTER TABLE outbox ADD COLUMN review_message_id TEXT;
CREATE INDEX outbox_review_message_id ON outbox(review_message_id)
    WHERE review_message_id IS NOT NULL;
"#,
    r#"
CREATE TABLE audit (
    id INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    outbox_id INTEGER,
    case_id INTEGER,
    detail TEXT NOT NULL
);
CREATE TABLE health (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX cases_state ON cases(state, updated_at);
CREATE INDEX cases_opened ON cases(opened_at);
CREATE INDEX cases_closed ON cases(closed_at) WHERE closed_at IS NOT NULL;
CREATE INDEX messages_case ON messages(case_id) WHERE case_id IS NOT NULL;
CREATE INDEX outbox_case ON outbox(case_id) WHERE case_id IS NOT NULL;
CREATE INDEX cases_topic_times ON cases(topic, closed_at, opened_at);
CREATE INDEX messages_kind ON messages(kind);
CREATE INDEX outbox_template_status ON outbox(template, status);
ALTER TABLE messages ADD COLUMN excerpt TEXT NOT NULL DEFAULT '';
"#,
];

/// How a failed delivery attempt is retried.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// The first delay, doubled per attempt, at most an hour.
    pub base_secs: i64,
    /// Attempts after which the row is held for the operator.
    pub max_attempts: i64,
}

/// What became of a failed attempt.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    /// The row is now held for the operator.
    pub held: bool,
    /// When it is due again otherwise.
    pub due: i64,
}

/// The state store.
pub struct Store {
    conn: Connection,
    path: String,
    /// A batch transaction is open: each message's writes nest in a savepoint.
    in_batch: bool,
}

/// One transaction around the messages of a catch-up chunk and the cursor after them: one
/// commit (one fsync) per chunk instead of one per message. Dropped without `commit`, it rolls
/// back, so an error or a crash leaves the chunk to be read again.
pub struct Batch<'a> {
    store: &'a mut Store,
    done: bool,
}

impl Batch<'_> {
    pub fn commit(mut self) -> Result<(), StoreError> {
        self.done = true;
        self.store.in_batch = false;
        self.store
            .conn
            .execute_batch("COMMIT")
            .map_err(sql(&self.store.path))
    }
}

impl std::ops::Deref for Batch<'_> {
    type Target = Store;
    fn deref(&self) -> &Store {
        self.store
    }
}

impl std::ops::DerefMut for Batch<'_> {
    fn deref_mut(&mut self) -> &mut Store {
        self.store
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.store.in_batch = false;
            let _ = self.store.conn.execute_batch("ROLLBACK");
        }
    }
}

/// A message's transaction: its own, or a savepoint inside a [`Batch`].
enum TxScope<'a> {
    Own(Transaction<'a>),
    InBatch(rusqlite::Savepoint<'a>),
}

impl std::ops::Deref for TxScope<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        match self {
            TxScope::Own(t) => t,
            TxScope::InBatch(s) => s,
        }
    }
}

/// One timeline line of a case.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineEntry {
    pub at: i64,
    pub kind: Option<String>,
    pub action: String,
    pub state: String,
    pub message_id: Option<String>,
    pub summary: String,
}

/// A row of the outbox.
#[derive(Debug, Clone, Serialize)]
pub struct OutboxRow {
    pub id: i64,
    pub message_id: String,
    pub case_id: Option<CaseId>,
    pub template: String,
    pub disposition: String,
    pub status: String,
    pub reason: Option<String>,
    pub recipients: Vec<String>,
    pub subject: String,
    pub created_at: i64,
}

/// A new outbox row.
#[derive(Debug, Clone)]
pub struct NewOutbox<'a> {
    pub message_id: &'a str,
    pub case_id: Option<CaseId>,
    pub inbound_message_id: Option<&'a str>,
    pub template: &'a str,
    pub disposition: &'a str,
    pub status: &'a str,
    pub reason: Option<&'a str>,
    pub recipients: &'a [String],
    pub subject: &'a str,
    pub bytes: &'a [u8],
    /// Groups notifications that are rate limited together (`new_case:bounce:unverified`).
    pub rate_key: Option<&'a str>,
}

/// What is recorded about a processed message.
#[derive(Debug, Clone)]
pub struct ProcessedMessage<'a> {
    pub message_id: Option<&'a str>,
    pub content_hash: &'a str,
    pub source: &'a str,
    pub kind: &'a str,
    pub ticket_id: Option<&'a str>,
    pub ips: &'a [String],
    pub trusted: bool,
    pub case_id: Option<CaseId>,
    pub action: Action,
    pub reason: &'a str,
    pub evidence_json: &'a str,
    /// What parsing or fetching could not do (JSON list), e.g. a body fetched only in part.
    pub damage_json: &'a str,
    /// The message's header fields and text, cut short, for a person to read in the console.
    pub excerpt: &'a str,
}

fn sql(path: &str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |source| match &source {
        rusqlite::Error::SqliteFailure(e, _)
            if matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ) =>
        {
            StoreError::Locked {
                path: path.to_string(),
            }
        }
        _ => StoreError::Sql {
            path: path.to_string(),
            source,
        },
    }
}

impl Store {
    /// Opens (creating and migrating as needed) the store at `path`. A new file is made
    /// readable by its owner only, since it holds mail text.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let shown = path.display().to_string();
        let existed = path.exists();
        if !existed {
            // Another process may create it first (two commands started on a new store).
            match create_private(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(source) => {
                    return Err(StoreError::Create {
                        path: shown.clone(),
                        source,
                    })
                }
            }
        }
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: shown.clone(),
            source,
        })?;
        // Every statement a message runs stays compiled (the default keeps 16).
        conn.set_prepared_statement_cache_capacity(64);
        let mut store = Store {
            conn,
            path: shown,
            in_batch: false,
        };
        store.configure()?;
        store.migrate()?;
        Ok(store)
    }

    /// The file the store lives in.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(&self.path)
    }

    // The wait below is as blocking as SQLite's own busy timeout, which every store call has.
    #[allow(clippy::disallowed_methods)]
    fn configure(&mut self) -> Result<(), StoreError> {
        let path = self.path.clone();
        self.conn
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql(&path))?;
        // NOTE: switching a new file to WAL needs it to itself, and SQLite answers "busy" at
        // once, without the busy handler, while another process opening the same new store
        // reads it: wait for it as the busy timeout would.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match self.conn.execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL;",
            ) {
                Ok(()) => return Ok(()),
                Err(e) => match sql(&path)(e) {
                    StoreError::Locked { .. } if std::time::Instant::now() < deadline => {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    other => return Err(other),
                },
            }
        }
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let path = self.path.clone();
        let version: i64 = self
            .conn
            .row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(sql(&path))?;
        let supported = MIGRATIONS.len() as i64;
        if version > supported {
            return Err(StoreError::TooNew {
                path,
                found: version,
                supported,
            });
        }
        for (i, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql(&path))?;
            // Read again under the write lock: another process opening the same store may
            // have applied this migration since the version was read above.
            let now: i64 = tx
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(sql(&path))?;
            if now > i as i64 {
                continue;
            }
            tx.execute_batch(migration).map_err(sql(&path))?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)
                .map_err(sql(&path))?;
            tx.commit().map_err(sql(&path))?;
        }
        Ok(())
    }

    /// Starts the one transaction that handling a message writes in (a savepoint inside an
    /// open [`Batch`]).
    pub fn begin(&mut self) -> Result<StoreTx<'_>, StoreError> {
        let path = self.path.clone();
        let tx = if self.in_batch {
            TxScope::InBatch(self.conn.savepoint().map_err(sql(&path))?)
        } else {
            TxScope::Own(
                self.conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(sql(&path))?,
            )
        };
        Ok(StoreTx { tx, path })
    }

    /// Opens a [`Batch`]: everything written until its `commit` lands in one transaction.
    pub fn batch(&mut self) -> Result<Batch<'_>, StoreError> {
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(sql(&self.path))?;
        self.in_batch = true;
        Ok(Batch {
            store: self,
            done: false,
        })
    }

    /// All cases, newest first.
    pub fn cases(&self) -> Result<Vec<Case>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, data FROM cases ORDER BY id")
            .map_err(sql(&self.path))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
            .map_err(sql(&self.path))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, data) = row.map_err(sql(&self.path))?;
            out.push(decode_case(&self.path, id, &data)?);
        }
        Ok(out)
    }

    /// One case.
    pub fn case(&self, id: CaseId) -> Result<Option<Case>, StoreError> {
        case_by_id(&self.conn, &self.path, id)
    }

    /// A case's timeline, oldest first.
    pub fn timeline(&self, id: CaseId) -> Result<Vec<TimelineEntry>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT at, kind, action, state, message_id, summary FROM timeline
                 WHERE case_id = ?1 ORDER BY at, id",
            )
            .map_err(sql(&self.path))?;
        let rows = stmt
            .query_map([id], |r| {
                Ok(TimelineEntry {
                    at: r.get(0)?,
                    kind: r.get(1)?,
                    action: r.get(2)?,
                    state: r.get(3)?,
                    message_id: r.get(4)?,
                    summary: r.get(5)?,
                })
            })
            .map_err(sql(&self.path))?;
        rows.collect::<Result<_, _>>().map_err(sql(&self.path))
    }

    /// Outbox rows of a case (or all with `None`), oldest first.
    pub fn outbox(&self, case: Option<CaseId>) -> Result<Vec<OutboxRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, message_id, case_id, template, disposition, status, reason,
                        recipients, subject, created_at
                 FROM outbox WHERE (?1 IS NULL OR case_id = ?1) ORDER BY id",
            )
            .map_err(sql(&self.path))?;
        let rows = stmt
            .query_map([case], |r| {
                let recipients: String = r.get(7)?;
                Ok(OutboxRow {
                    id: r.get(0)?,
                    message_id: r.get(1)?,
                    case_id: r.get(2)?,
                    template: r.get(3)?,
                    disposition: r.get(4)?,
                    status: r.get(5)?,
                    reason: r.get(6)?,
                    recipients: serde_json::from_str(&recipients).unwrap_or_default(),
                    subject: r.get(8)?,
                    created_at: r.get(9)?,
                })
            })
            .map_err(sql(&self.path))?;
        rows.collect::<Result<_, _>>().map_err(sql(&self.path))
    }

    /// Records a message that could not be handled, with the error chain.
    pub fn quarantine(
        &mut self,
        source: &str,
        message_id: Option<&str>,
        content_hash: &str,
        error: &str,
        at: i64,
    ) -> Result<(), StoreError> {
        self.conn
            .run(
                "INSERT INTO quarantine (source, message_id, content_hash, error, at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![source, message_id, content_hash, error, at],
            )
            .map_err(sql(&self.path))?;
        Ok(())
    }
}

/// An outbox row with its bytes, for delivery.
#[derive(Debug, Clone)]
pub struct OutboxItem {
    pub id: i64,
    pub message_id: String,
    pub case_id: Option<CaseId>,
    pub inbound_message_id: Option<String>,
    pub template: String,
    pub disposition: String,
    pub status: String,
    pub recipients: Vec<String>,
    pub subject: String,
    pub bytes: Vec<u8>,
    pub reason: Option<String>,
    /// Not to be tried before this time (after a temporary failure).
    pub next_attempt_at: i64,
    /// The Message-ID its review copy was appended with, when an approved draft came back
    /// under another one (the review copy is still found and removed by it).
    pub review_message_id: Option<String>,
    /// When the row last changed status (queued, held...).
    pub updated_at: i64,
}

impl Store {
    /// Where reading `mailbox` resumes.
    pub fn cursor(
        &self,
        mailbox: &str,
    ) -> Result<Option<crate::pipeline::sync::Cursor>, StoreError> {
        self.conn
            .row(
                "SELECT uidvalidity, last_uid FROM mailbox_sync WHERE mailbox = ?1",
                [mailbox],
                |r| {
                    Ok(crate::pipeline::sync::Cursor {
                        uid_validity: r.get(0)?,
                        last_uid: r.get(1)?,
                    })
                },
            )
            .optional()
            .map_err(sql(&self.path))
    }

    /// Moves the cursor of `mailbox` forward (never backwards within one UIDVALIDITY).
    pub fn set_cursor(
        &self,
        mailbox: &str,
        uid_validity: u32,
        last_uid: u32,
    ) -> Result<(), StoreError> {
        self.conn
            .run(
                "INSERT INTO mailbox_sync (mailbox, uidvalidity, last_uid) VALUES (?1, ?2, ?3)
                 ON CONFLICT(mailbox) DO UPDATE SET
                   last_uid = CASE WHEN uidvalidity = excluded.uidvalidity
                                   THEN max(last_uid, excluded.last_uid) ELSE excluded.last_uid END,
                   uidvalidity = excluded.uidvalidity",
                params![mailbox, uid_validity, last_uid],
            )
            .map_err(sql(&self.path))?;
        Ok(())
    }

    /// Outbox rows in one status, oldest first, with their bytes.
    pub fn outbox_items(&self, status: &str) -> Result<Vec<OutboxItem>, StoreError> {
        self.outbox_query("status = ?1", [status.to_string()])
    }

    /// One outbox row with its bytes.
    pub fn outbox_item(&self, id: i64) -> Result<Option<OutboxItem>, StoreError> {
        Ok(self
            .outbox_query("id = ?1", [id.to_string()])?
            .into_iter()
            .next())
    }

    fn outbox_query(&self, filter: &str, arg: [String; 1]) -> Result<Vec<OutboxItem>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT id, message_id, case_id, inbound_message_id, template, disposition, status,
                        recipients, subject, bytes, reason, next_attempt_at, review_message_id,
                        updated_at
                 FROM outbox WHERE {filter} ORDER BY id"
            ))
            .map_err(sql(&self.path))?;
        let rows = stmt
            .query_map(arg, |r| {
                let recipients: String = r.get(7)?;
                Ok(OutboxItem {
                    id: r.get(0)?,
                    message_id: r.get(1)?,
                    case_id: r.get(2)?,
                    inbound_message_id: r.get(3)?,
                    template: r.get(4)?,
                    disposition: r.get(5)?,
                    status: r.get(6)?,
                    recipients: serde_json::from_str(&recipients).unwrap_or_default(),
                    subject: r.get(8)?,
                    bytes: r.get(9)?,
                    reason: r.get(10)?,
                    next_attempt_at: r.get(11)?,
                    review_message_id: r.get(12)?,
                    updated_at: r.get(13)?,
                })
            })
            .map_err(sql(&self.path))?;
        rows.collect::<Result<_, _>>().map_err(sql(&self.path))
    }

    /// Moves an outbox row from one status to another; false when it was not in `from` (so two
    /// processes never both act on it).
    pub fn transition_outbox(
        &self,
        id: i64,
        from: &str,
        to: &str,
        reason: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let changed = self
            .conn
            .run(
                "UPDATE outbox SET status = ?3, reason = COALESCE(?4, reason), updated_at = ?5
                 WHERE id = ?1 AND status = ?2",
                params![id, from, to, reason, now],
            )
            .map_err(sql(&self.path))?;
        Ok(changed == 1)
    }

    /// Puts a row whose send failed for now back to `to`, due again after an exponential
    /// backoff (`base` doubled per attempt, at most an hour); returns when it is due. A send is
    /// retried for as long as it fails for now: it is never held for that alone.
    pub fn retry_later(
        &self,
        id: i64,
        to: &str,
        reason: &str,
        base_secs: i64,
        now: i64,
    ) -> Result<i64, StoreError> {
        let retry = Retry {
            base_secs,
            max_attempts: i64::MAX,
        };
        Ok(self
            .attempt_failed(id, "sending", to, reason, retry, now)?
            .due)
    }

    /// Records a failed delivery attempt of one row that left it in `from`: back to `to` after
    /// an exponential backoff, or `held` with the reason once `max_attempts` were made.
    pub fn attempt_failed(
        &self,
        id: i64,
        from: &str,
        to: &str,
        reason: &str,
        retry: Retry,
        now: i64,
    ) -> Result<Attempt, StoreError> {
        let attempts: i64 = self
            .conn
            .row("SELECT attempts FROM outbox WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .map_err(sql(&self.path))?;
        let held = attempts + 1 >= retry.max_attempts;
        let due = now
            + retry
                .base_secs
                .saturating_mul(1 << attempts.clamp(0, 16))
                .min(3600);
        let (status, reason) = if held {
            (
                "held",
                format!("{reason} (gave up after {} attempts)", attempts + 1),
            )
        } else {
            (to, reason.to_string())
        };
        self.conn
            .run(
                "UPDATE outbox SET status = ?3, reason = ?4, attempts = attempts + 1,
                        next_attempt_at = ?5, updated_at = ?6 WHERE id = ?1 AND status = ?2",
                params![id, from, status, reason, due, now],
            )
            .map_err(sql(&self.path))?;
        Ok(Attempt { held, due })
    }

    /// Releases a held row (or approves one waiting for approval): the daemon delivers it on
    /// its next pass. False when the row is in neither state.
    pub fn release_outbox(&self, id: i64, reason: &str, now: i64) -> Result<bool, StoreError> {
        let changed = self
            .conn
            .run(
                "UPDATE outbox SET status = 'approved', reason = ?2, attempts = 0,
                        next_attempt_at = 0, updated_at = ?3
                 WHERE id = ?1 AND status IN ('held', 'awaiting_approval') AND length(bytes) > 0",
                params![id, reason, now],
            )
            .map_err(sql(&self.path))?;
        Ok(changed == 1)
    }

    /// Whether a message was handled (by Message-ID or bytes).
    pub fn has_message(
        &self,
        message_id: Option<&str>,
        content_hash: &str,
    ) -> Result<bool, StoreError> {
        let found: Option<i64> = self
            .conn
            .row(
                "SELECT id FROM messages WHERE content_hash = ?2
                 OR (?1 IS NOT NULL AND message_id = ?1) LIMIT 1",
                params![message_id, content_hash],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql(&self.path))?;
        Ok(found.is_some())
    }

    /// Learned templates, oldest first.
    pub fn templates(&self) -> Result<Vec<Learned>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, kind, shingles, sample, source, created_at FROM templates ORDER BY id",
            )
            .map_err(sql(&self.path))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            })
            .map_err(sql(&self.path))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, kind, blob, sample, source, created_at) = row.map_err(sql(&self.path))?;
            let kind =
                serde_json::from_value(serde_json::Value::String(kind.clone())).map_err(|_| {
                    StoreError::Damaged {
                        path: self.path.clone(),
                        case: 0,
                        message: format!("template #{id} has an unknown kind {kind}"),
                    }
                })?;
            let shingles = blob
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect();
            out.push(Learned {
                id,
                kind,
                shingles,
                sample,
                source,
                created_at,
            });
        }
        Ok(out)
    }

    /// Stores a learned template; returns its id.
    pub fn add_template(&self, t: &Learned) -> Result<i64, StoreError> {
        let blob: Vec<u8> = t.shingles.iter().flat_map(|h| h.to_le_bytes()).collect();
        self.conn
            .run(
                "INSERT INTO templates (kind, shingles, sample, source, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![t.kind.as_str(), blob, t.sample, t.source, t.created_at],
            )
            .map_err(sql(&self.path))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Removes a learned template; false when there is none with that id.
    pub fn remove_template(&self, id: i64) -> Result<bool, StoreError> {
        let n = self
            .conn
            .run("DELETE FROM templates WHERE id = ?1", [id])
            .map_err(sql(&self.path))?;
        Ok(n == 1)
    }

    /// Saves a case changed outside a message transaction (a released reply).
    pub fn update_case(&mut self, case: &mut Case) -> Result<(), StoreError> {
        let tx = self.begin()?;
        tx.save_case(case)?;
        tx.commit()
    }

    /// The earliest time a row waiting for a retry is due, if any.
    pub fn next_retry_at(&self) -> Result<Option<i64>, StoreError> {
        self.conn
            .row(
                "SELECT min(next_attempt_at) FROM outbox
                 WHERE status IN ('pending', 'approved') AND next_attempt_at > 0",
                [],
                |r| r.get(0),
            )
            .map_err(sql(&self.path))
    }

    /// What the mailbox showed about a planned reply (`pipeline::witness`), in one transaction:
    /// the row leaves `pending` for `to` with the reason, the earlier reply found joins its
    /// case's thread, `escalations` (when given) becomes the case's count and hands the case to
    /// a person, and the timeline says so. False when the row was no longer pending.
    pub fn record_earlier_reply(
        &mut self,
        row: &OutboxItem,
        to: &str,
        reason: &str,
        found: Option<&str>,
        escalations: Option<u32>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let tx = self.begin()?;
        let changed = tx
            .tx
            .run(
                "UPDATE outbox SET status = ?2, reason = ?3, updated_at = ?4
                 WHERE id = ?1 AND status = 'pending'",
                params![row.id, to, reason, now],
            )
            .map_err(sql(&tx.path))?;
        if changed != 1 {
            return Ok(false);
        }
        if let Some(mut case) = match row.case_id {
            Some(id) => case_by_id(&tx.tx, &tx.path, id)?,
            None => None,
        } {
            if let Some(id) = found {
                if !case.thread_ids.iter().any(|t| t == id) {
                    case.thread_ids.push(id.to_string());
                }
            }
            if let Some(n) = escalations {
                case.escalations = n;
                case.state = crate::pipeline::case::State::NeedsOperator;
            }
            case.updated_at = now;
            tx.save_case(&mut case)?;
            tx.add_timeline(
                case.id,
                &TimelineEntry {
                    at: now,
                    kind: None,
                    action: "delivery".to_string(),
                    state: case.state.as_str().to_string(),
                    message_id: found.map(str::to_string),
                    summary: reason.to_string(),
                },
            )?;
        }
        tx.commit()?;
        Ok(true)
    }

    /// Whether the outbox made a message with this Message-ID.
    pub fn outbox_has(&self, message_id: &str) -> Result<bool, StoreError> {
        self.conn
            .row(
                "SELECT 1 FROM outbox WHERE message_id = ?1 OR review_message_id = ?1 LIMIT 1",
                [message_id],
                |_| Ok(()),
            )
            .optional()
            .map(|found| found.is_some())
            .map_err(sql(&self.path))
    }

    /// Replaces the bytes (and Message-ID) of a row, for an approved draft the operator edited;
    /// the Message-ID of its review copy is kept in `review_message_id`.
    pub fn replace_outbox_bytes(
        &self,
        id: i64,
        message_id: &str,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        self.conn
            .run(
                "UPDATE outbox SET bytes = ?2, message_id = ?3,
                        review_message_id = CASE WHEN message_id = ?3 THEN review_message_id
                                                 ELSE COALESCE(review_message_id, message_id) END
                 WHERE id = ?1",
                params![id, bytes, message_id],
            )
            .map_err(sql(&self.path))?;
        Ok(())
    }

    /// Adds a timeline line to a case outside a message transaction (delivery results).
    pub fn note(
        &self,
        case_id: CaseId,
        at: i64,
        action: &str,
        summary: &str,
    ) -> Result<(), StoreError> {
        let state: String = self
            .conn
            .row("SELECT state FROM cases WHERE id = ?1", [case_id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(sql(&self.path))?
            .unwrap_or_default();
        self.conn
            .run(
                "INSERT INTO timeline (case_id, at, kind, action, state, message_id, summary)
                 VALUES (?1, ?2, NULL, ?3, ?4, NULL, ?5)",
                params![case_id, at, action, state, summary],
            )
            .map_err(sql(&self.path))?;
        Ok(())
    }
}

/// The open transaction for one message.
pub struct StoreTx<'a> {
    tx: TxScope<'a>,
    path: String,
}

impl StoreTx<'_> {
    /// Whether this message was handled before: same Message-ID, or same bytes.
    pub fn seen(&self, message_id: Option<&str>, content_hash: &str) -> Result<bool, StoreError> {
        let found: Option<i64> = self
            .tx
            .row(
                "SELECT id FROM messages WHERE content_hash = ?2
                 OR (?1 IS NOT NULL AND message_id = ?1) LIMIT 1",
                params![message_id, content_hash],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql(&self.path))?;
        Ok(found.is_some())
    }

    /// Forgets that a message was handled (to decide it again); its case history stays.
    pub fn forget_message(
        &self,
        message_id: Option<&str>,
        content_hash: &str,
    ) -> Result<(), StoreError> {
        self.tx
            .run(
                "DELETE FROM messages WHERE content_hash = ?2 OR (?1 IS NOT NULL AND message_id = ?1)",
                params![message_id, content_hash],
            )
            .map_err(sql(&self.path))?;
        Ok(())
    }

    /// The case the first matching lookup finds.
    pub fn find_case(&self, lookups: &[Lookup]) -> Result<Option<Case>, StoreError> {
        for lookup in lookups {
            let id: Option<i64> = match lookup {
                Lookup::Ticket(t) => self
                    .tx
                    .row(
                        "SELECT id FROM cases WHERE ticket_id = ?1 ORDER BY id DESC LIMIT 1",
                        [t],
                        |r| r.get(0),
                    )
                    .optional(),
                Lookup::MessageId(m) => self
                    .tx
                    .row(
                        "SELECT case_id FROM case_messages WHERE message_id = ?1
                         ORDER BY case_id DESC LIMIT 1",
                        [m],
                        |r| r.get(0),
                    )
                    .optional(),
                Lookup::Notice(key) => self
                    .tx
                    .row(
                        "SELECT id FROM cases WHERE notice_key = ?1 AND state != 'closed'
                         ORDER BY id DESC LIMIT 1",
                        [key],
                        |r| r.get(0),
                    )
                    .optional(),
                Lookup::OpenForIps {
                    topic,
                    ips,
                    without_ticket,
                } => self.open_case_for_ips(*topic, ips, *without_ticket),
            }
            .map_err(sql(&self.path))?;
            if let Some(id) = id {
                return case_by_id(&self.tx, &self.path, id);
            }
        }
        Ok(None)
    }

    fn open_case_for_ips(
        &self,
        topic: Topic,
        ips: &[String],
        without_ticket: bool,
    ) -> Result<Option<i64>, rusqlite::Error> {
        let topic = topic_str(topic);
        let mut stmt = self.tx.prepare_cached(
            "SELECT c.id FROM cases c JOIN case_ips i ON i.case_id = c.id
             WHERE i.ip = ?1 AND c.topic = ?2 AND c.state != 'closed'
               AND (?3 = 0 OR c.ticket_id IS NULL)
             ORDER BY c.id DESC LIMIT 1",
        )?;
        for ip in ips {
            if let Some(id) = stmt
                .query_row(params![ip, topic, without_ticket], |r| r.get(0))
                .optional()?
            {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    /// Replies to Microsoft planned since `since` on a case (so only answers to verified
    /// Microsoft mail), in any status but held, rejected, superseded, replayed or found already
    /// made in the mailbox: the persistent count behind the global rate limit. A spoof moves no
    /// counter.
    pub fn replies_since(&self, since: i64) -> Result<i64, StoreError> {
        self.tx
            .row(
                "SELECT count(*) FROM outbox WHERE template != 'operator_notification'
                 AND case_id IS NOT NULL AND created_at >= ?1
                 AND status NOT IN ('held', 'rejected', 'superseded', 'replayed', 'in_mailbox')",
                [since],
                |r| r.get(0),
            )
            .map_err(sql(&self.path))
    }

    /// When the latest reply on a case was planned, if any.
    pub fn last_reply_at(&self, case_id: CaseId) -> Result<Option<i64>, StoreError> {
        self.tx
            .row(
                "SELECT max(created_at) FROM outbox WHERE case_id = ?1
                 AND template != 'operator_notification'
                 AND status NOT IN ('held', 'rejected', 'superseded', 'replayed')",
                [case_id],
                |r| r.get(0),
            )
            .map_err(sql(&self.path))
    }

    /// When the latest notification under a rate key was planned (not held), if any.
    pub fn last_rate_key_at(&self, rate_key: &str) -> Result<Option<i64>, StoreError> {
        self.tx
            .row(
                "SELECT max(created_at) FROM outbox WHERE rate_key = ?1
                 AND status NOT IN ('held', 'rejected', 'superseded')",
                [rate_key],
                |r| r.get(0),
            )
            .map_err(sql(&self.path))
    }

    /// Whether our outbox produced a message with this Message-ID.
    pub fn outbox_knows(&self, message_id: &str) -> Result<bool, StoreError> {
        self.tx
            .row(
                "SELECT 1 FROM outbox WHERE message_id = ?1 LIMIT 1",
                [message_id],
                |_| Ok(()),
            )
            .optional()
            .map(|found| found.is_some())
            .map_err(sql(&self.path))
    }

    /// A new reply on a case makes its older held replies moot: they can no longer be released.
    pub fn supersede_held_replies(&self, case_id: CaseId, now: i64) -> Result<usize, StoreError> {
        self.tx
            .run(
                "UPDATE outbox SET status = 'superseded', updated_at = ?2,
                        reason = COALESCE(reason, '') || ' (superseded by a newer reply)'
                 WHERE case_id = ?1 AND status = 'held' AND template != 'operator_notification'",
                params![case_id, now],
            )
            .map_err(sql(&self.path))
    }

    /// Stores a case: inserts it when its id is 0 and returns the id.
    pub fn save_case(&self, case: &mut Case) -> Result<CaseId, StoreError> {
        let path = &self.path;
        if case.id == 0 {
            self.tx
                .run(
                    "INSERT INTO cases (topic, state, ticket_id, notice_key, opened_at, updated_at, closed_at, data)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, '{}')",
                    params![
                        topic_str(case.topic),
                        case.state.as_str(),
                        case.ticket_id,
                        case.notice_key,
                        case.opened_at,
                        case.updated_at,
                        case.closed_at
                    ],
                )
                .map_err(sql(path))?;
            case.id = self.tx.last_insert_rowid();
        }
        let data = serde_json::to_string(case).map_err(|e| StoreError::Damaged {
            path: path.clone(),
            case: case.id,
            message: e.to_string(),
        })?;
        self.tx
            .run(
                "UPDATE cases SET topic = ?2, state = ?3, ticket_id = ?4, notice_key = ?5,
                        updated_at = ?6, closed_at = ?7, data = ?8 WHERE id = ?1",
                params![
                    case.id,
                    topic_str(case.topic),
                    case.state.as_str(),
                    case.ticket_id,
                    case.notice_key,
                    case.updated_at,
                    case.closed_at,
                    data
                ],
            )
            .map_err(sql(path))?;
        for ip in &case.ips {
            self.tx
                .run(
                    "INSERT OR IGNORE INTO case_ips (case_id, ip) VALUES (?1, ?2)",
                    params![case.id, ip],
                )
                .map_err(sql(path))?;
        }
        for id in &case.thread_ids {
            self.tx
                .run(
                    "INSERT OR IGNORE INTO case_messages (message_id, case_id) VALUES (?1, ?2)",
                    params![id, case.id],
                )
                .map_err(sql(path))?;
        }
        Ok(case.id)
    }

    /// Adds a line to a case's timeline.
    pub fn add_timeline(&self, case_id: CaseId, entry: &TimelineEntry) -> Result<(), StoreError> {
        self.tx
            .run(
                "INSERT INTO timeline (case_id, at, kind, action, state, message_id, summary)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    case_id,
                    entry.at,
                    entry.kind,
                    entry.action,
                    entry.state,
                    entry.message_id,
                    entry.summary
                ],
            )
            .map_err(sql(&self.path))?;
        Ok(())
    }

    /// Writes an outgoing message to the outbox, before anything is sent or drafted.
    pub fn add_outbox(&self, row: &NewOutbox<'_>, now: i64) -> Result<i64, StoreError> {
        let recipients = serde_json::to_string(row.recipients).unwrap_or_else(|_| "[]".into());
        self.tx
            .run(
                "INSERT INTO outbox (message_id, case_id, inbound_message_id, template, disposition,
                                     status, reason, recipients, subject, bytes, created_at, updated_at,
                                     rate_key)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?12)",
                params![
                    row.message_id,
                    row.case_id,
                    row.inbound_message_id,
                    row.template,
                    row.disposition,
                    row.status,
                    row.reason,
                    recipients,
                    row.subject,
                    row.bytes,
                    now,
                    row.rate_key
                ],
            )
            .map_err(sql(&self.path))?;
        Ok(self.tx.last_insert_rowid())
    }

    /// Records a message as handled.
    pub fn add_message(&self, m: &ProcessedMessage<'_>, now: i64) -> Result<(), StoreError> {
        let ips = serde_json::to_string(m.ips).unwrap_or_else(|_| "[]".into());
        self.tx
            .run(
                "INSERT INTO messages (message_id, content_hash, source, processed_at, kind, ticket_id,
                                       ips, trusted, case_id, action, reason, evidence, damage,
                                       excerpt)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                params![
                    m.message_id,
                    m.content_hash,
                    m.source,
                    now,
                    m.kind,
                    m.ticket_id,
                    ips,
                    m.trusted,
                    m.case_id,
                    m.action.as_str(),
                    m.reason,
                    m.evidence_json,
                    m.damage_json,
                    m.excerpt
                ],
            )
            .map_err(sql(&self.path))?;
        Ok(())
    }

    /// Makes everything written in this transaction durable.
    pub fn commit(self) -> Result<(), StoreError> {
        match self.tx {
            TxScope::Own(t) => t.commit(),
            TxScope::InBatch(s) => s.commit(),
        }
        .map_err(sql(&self.path))
    }
}

fn case_by_id(conn: &Connection, path: &str, id: CaseId) -> Result<Option<Case>, StoreError> {
    let data: Option<String> = conn
        .row("SELECT data FROM cases WHERE id = ?1", [id], |r| r.get(0))
        .optional()
        .map_err(sql(path))?;
    data.map(|d| decode_case(path, id, &d)).transpose()
}

fn decode_case(path: &str, id: CaseId, data: &str) -> Result<Case, StoreError> {
    let mut case: Case = serde_json::from_str(data).map_err(|e| StoreError::Damaged {
        path: path.to_string(),
        case: id,
        message: e.to_string(),
    })?;
    case.id = id;
    Ok(case)
}

fn topic_str(topic: Topic) -> &'static str {
    match topic {
        Topic::OutlookBlock => "outlook_block",
        Topic::M365Block => "m365_block",
        Topic::Complaints => "complaints",
        Topic::Snds => "snds",
        Topic::DeliveryNotice => "delivery_notice",
    }
}

fn create_private(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map(drop)
}
