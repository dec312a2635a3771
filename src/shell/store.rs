//! The state store: cases, timelines, processed messages, the outbox. It lives in an embedded
//! SQLite file (the default) or in PostgreSQL (several hosts sharing one state); the same
//! statements run on both (`db`), from one migration history (`schema`).
//!
//! Created and migrated on open. Everything one message changes is written in one transaction,
//! so a crash leaves either all of it or none of it.

use std::path::Path;

use serde::Serialize;

use crate::pipeline::case::{Action, Case, CaseId, Lookup, Topic};
use crate::pipeline::learned::Learned;

/// One row's columns, read with the store's error (the path, the column at fault).
macro_rules! col {
    ($path:expr, $row:expr, $i:expr) => {
        $row.get($i).map_err(|e| {
            $crate::shell::store::sql($path)($crate::shell::store::db::DbError::Decode(e))
        })?
    };
}

mod console;
mod copy;
pub mod db;
pub mod lease;
mod postgres;
mod schema;

pub use console::{AuditEntry, CaseFilter, CaseLine, Health, MessageLine, Quarantined};
pub use copy::{copy_store, CopyReport, TableDump};
use db::{params, Db, DbError};
pub use db::{Dialect, Row, Value};
pub use postgres::PgConnect;

/// Opens the store a configuration names: its SQLite file, or its PostgreSQL database (the
/// password read now from its source, else `PGPASSWORD`, else none).
pub fn open_state(state: &crate::config::StateConfig) -> Result<Store, StoreError> {
    match state {
        crate::config::StateConfig::Sqlite(path) => Store::open(path),
        crate::config::StateConfig::Postgres(pg) => Store::connect(pg_connect(pg)?),
    }
}

/// The connection settings of a PostgreSQL store, its password read.
pub fn pg_connect(pg: &crate::config::PostgresConfig) -> Result<PgConnect, StoreError> {
    let config: ::tokio_postgres::Config = pg.url.parse().map_err(|e| StoreError::Refused {
        path: "[state] url".to_string(),
        message: format!("not a PostgreSQL URL: {e}"),
    })?;
    let mut target = PgConnect {
        config,
        password: None,
        schema: pg.schema.clone(),
        sslmode: pg.sslmode,
        ca_file: pg.ca_file.clone(),
    };
    target.password =
        match &pg.password {
            Some(source) => Some(crate::shell::secret::resolve_blocking(source).map_err(
                |source| StoreError::Password {
                    path: target.describe(),
                    source,
                },
            )?),
            None => std::env::var("PGPASSWORD")
                .ok()
                .filter(|p| !p.is_empty())
                .map(secrecy::SecretString::from),
        };
    Ok(target)
}

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("failed to open state store {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: DbError,
    },
    #[error("failed to create state store {path}: {source}")]
    Create {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("state store {path} is locked by another process")]
    Locked { path: String },
    #[error("state store {path} is unavailable: {source}")]
    Unavailable {
        path: String,
        #[source]
        source: DbError,
    },
    #[error("state store {path}: {source}")]
    Sql {
        path: String,
        #[source]
        source: DbError,
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
    #[error("state store {path}: {message}")]
    Refused { path: String, message: String },
    #[error("the lease on mailbox {mailbox} was lost to another instance: nothing more is sent from here")]
    LeaseLost { mailbox: String },
    #[error("state store {path}: {source}")]
    Password {
        path: String,
        #[source]
        source: crate::shell::secret::SecretError,
    },
}

impl StoreError {
    /// Whether retrying later can help.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Locked { .. } | StoreError::Unavailable { .. }
        )
    }
}

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
    db: Db,
    /// Where it lives, for messages: a file, or a server without the password.
    path: String,
    /// A batch transaction is open: each message's writes nest in a savepoint.
    in_batch: bool,
    /// The mailbox this connection works for: new cases and outbox rows belong to it, and
    /// cases are found and rows delivered within it. `None` (commands, the console): all.
    mailbox: Option<String>,
    /// The lease this connection must hold for mail to leave (several instances sharing one
    /// store): checked in the transition that lets a row go out.
    fence: Option<lease::Fence>,
}

/// The mailbox of a single `[mailbox]` section, and of rows written before there were several.
pub const DEFAULT_MAILBOX: &str = "default";

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
        self.store.db.end("COMMIT").map_err(sql(&self.store.path))
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
            let _ = self.store.db.end("ROLLBACK");
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

pub(crate) fn sql(path: &str) -> impl Fn(DbError) -> StoreError + '_ {
    move |source| {
        if source.is_busy() {
            StoreError::Locked {
                path: path.to_string(),
            }
        } else if source.is_transient() {
            StoreError::Unavailable {
                path: path.to_string(),
                source,
            }
        } else {
            StoreError::Sql {
                path: path.to_string(),
                source,
            }
        }
    }
}

impl Store {
    /// Opens (creating and migrating as needed) the SQLite store at `path`. A new file is made
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
        let conn = rusqlite::Connection::open(path).map_err(|source| StoreError::Open {
            path: shown.clone(),
            source: source.into(),
        })?;
        // Every statement a message runs stays compiled (the default keeps 16).
        conn.set_prepared_statement_cache_capacity(64);
        let mut store = Store {
            db: Db::Sqlite(conn),
            path: shown,
            in_batch: false,
            mailbox: None,
            fence: None,
        };
        store.configure_sqlite()?;
        schema::migrate(&store.db, &store.path)?;
        Ok(store)
    }

    /// Connects to (creating the schema and migrating as needed) a PostgreSQL store.
    pub fn connect(target: PgConnect) -> Result<Store, StoreError> {
        let path = target.describe();
        let pg = postgres::Pg::connect(target).map_err(|source| {
            if source.is_transient() {
                StoreError::Unavailable {
                    path: path.clone(),
                    source,
                }
            } else {
                StoreError::Open {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        let store = Store {
            db: Db::Postgres(pg),
            path,
            in_batch: false,
            mailbox: None,
            fence: None,
        };
        schema::migrate(&store.db, &store.path)?;
        Ok(store)
    }

    /// Where the store lives: its file, or its server, database and schema.
    pub fn location(&self) -> &str {
        &self.path
    }

    /// Which database holds it.
    pub fn dialect(&self) -> Dialect {
        self.db.dialect()
    }

    /// Works for one mailbox from now on (see the field).
    pub fn set_mailbox(&mut self, name: &str) {
        self.mailbox = Some(name.to_string());
    }

    /// The mailbox new rows are written for.
    fn owner(&self) -> &str {
        self.mailbox.as_deref().unwrap_or(DEFAULT_MAILBOX)
    }

    // The wait below is as blocking as SQLite's own busy timeout, which every store call has.
    #[allow(clippy::disallowed_methods)]
    fn configure_sqlite(&mut self) -> Result<(), StoreError> {
        let path = self.path.clone();
        let Db::Sqlite(conn) = &self.db else {
            return Ok(());
        };
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| sql(&path)(e.into()))?;
        // NOTE: switching a new file to WAL needs it to itself, and SQLite answers "busy" at
        // once, without the busy handler, while another process opening the same new store
        // reads it: wait for it as the busy timeout would.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match conn.execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL;",
            ) {
                Ok(()) => return Ok(()),
                Err(e) => match sql(&path)(e.into()) {
                    StoreError::Locked { .. } if std::time::Instant::now() < deadline => {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    other => return Err(other),
                },
            }
        }
    }

    /// Rows of a statement, for tools and tests that look at the store's tables directly
    /// (the statement in the SQL both databases read, `?N` parameters).
    #[doc(hidden)]
    pub fn select(&self, statement: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        self.rows(statement, params)
    }

    /// Runs a statement that changes rows, for tests that put the store in a given state.
    #[doc(hidden)]
    pub fn execute(&self, statement: &str, params: &[Value]) -> Result<u64, StoreError> {
        self.exec(statement, params)
    }

    fn exec(&self, statement: &str, params: &[Value]) -> Result<u64, StoreError> {
        self.db.exec(statement, params).map_err(sql(&self.path))
    }

    /// A write whose changed-row count is not needed (pipelined on PostgreSQL; see `db`).
    fn write(&self, statement: &str, params: &[Value]) -> Result<(), StoreError> {
        self.db.write(statement, params).map_err(sql(&self.path))
    }

    fn rows(&self, statement: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        self.db.rows(statement, params).map_err(sql(&self.path))
    }

    fn row(&self, statement: &str, params: &[Value]) -> Result<Option<Row>, StoreError> {
        self.db.row(statement, params).map_err(sql(&self.path))
    }

    /// The first column of the first row, if there is a row (and it is not NULL).
    fn value<T: db::FromValue>(
        &self,
        statement: &str,
        params: &[Value],
    ) -> Result<Option<T>, StoreError> {
        match self.row(statement, params)? {
            Some(r) => Ok(col!(&self.path, r, 0)),
            None => Ok(None),
        }
    }

    /// Starts the one transaction that handling a message writes in (a savepoint inside an
    /// open [`Batch`]).
    pub fn begin(&mut self) -> Result<StoreTx<'_>, StoreError> {
        if self.in_batch {
            self.db.savepoint().map_err(sql(&self.path))?;
        } else {
            self.db
                .begin(self.db.dialect().begin_write())
                .map_err(sql(&self.path))?;
        }
        let savepoint = self.in_batch;
        Ok(StoreTx {
            store: self,
            savepoint,
            done: false,
        })
    }

    /// Opens a [`Batch`]: everything written until its `commit` lands in one transaction.
    pub fn batch(&mut self) -> Result<Batch<'_>, StoreError> {
        self.db
            .begin(self.db.dialect().begin_write())
            .map_err(sql(&self.path))?;
        self.in_batch = true;
        Ok(Batch {
            store: self,
            done: false,
        })
    }

    /// All cases, oldest first.
    pub fn cases(&self) -> Result<Vec<Case>, StoreError> {
        let mut out = Vec::new();
        for r in self.rows("SELECT id, data FROM cases ORDER BY id", &[])? {
            let id: i64 = col!(&self.path, r, 0);
            let data: String = col!(&self.path, r, 1);
            out.push(decode_case(&self.path, id, &data)?);
        }
        Ok(out)
    }

    /// Cases with the mailbox each belongs to, oldest first; only `mailbox`'s when given.
    pub fn cases_of(&self, mailbox: Option<&str>) -> Result<Vec<(String, Case)>, StoreError> {
        let mut out = Vec::new();
        for r in self.rows(
            "SELECT id, data, mailbox FROM cases
             WHERE CAST(?1 AS TEXT) IS NULL OR mailbox = ?1 ORDER BY id",
            params![mailbox],
        )? {
            let id: i64 = col!(&self.path, r, 0);
            let data: String = col!(&self.path, r, 1);
            out.push((col!(&self.path, r, 2), decode_case(&self.path, id, &data)?));
        }
        Ok(out)
    }

    /// One case.
    pub fn case(&self, id: CaseId) -> Result<Option<Case>, StoreError> {
        match self.value::<String>("SELECT data FROM cases WHERE id = ?1", params![id])? {
            Some(data) => decode_case(&self.path, id, &data).map(Some),
            None => Ok(None),
        }
    }

    /// A case's timeline, oldest first.
    pub fn timeline(&self, id: CaseId) -> Result<Vec<TimelineEntry>, StoreError> {
        self.rows(
            "SELECT at, kind, action, state, message_id, summary FROM timeline
             WHERE case_id = ?1 ORDER BY at, id",
            params![id],
        )?
        .iter()
        .map(|r| self.timeline_entry(r))
        .collect()
    }

    /// A `timeline` row selected as at, kind, action, state, message_id, summary.
    fn timeline_entry(&self, r: &Row) -> Result<TimelineEntry, StoreError> {
        Ok(TimelineEntry {
            at: col!(&self.path, r, 0),
            kind: col!(&self.path, r, 1),
            action: col!(&self.path, r, 2),
            state: col!(&self.path, r, 3),
            message_id: col!(&self.path, r, 4),
            summary: col!(&self.path, r, 5),
        })
    }

    /// Outbox rows of a case (or all with `None`), oldest first.
    pub fn outbox(&self, case: Option<CaseId>) -> Result<Vec<OutboxRow>, StoreError> {
        self.rows(
            "SELECT id, message_id, case_id, template, disposition, status, reason,
                    recipients, subject, created_at
             FROM outbox WHERE (CAST(?1 AS BIGINT) IS NULL OR case_id = ?1) ORDER BY id",
            params![case],
        )?
        .iter()
        .map(|r| {
            let recipients: String = col!(&self.path, r, 7);
            Ok(OutboxRow {
                id: col!(&self.path, r, 0),
                message_id: col!(&self.path, r, 1),
                case_id: col!(&self.path, r, 2),
                template: col!(&self.path, r, 3),
                disposition: col!(&self.path, r, 4),
                status: col!(&self.path, r, 5),
                reason: col!(&self.path, r, 6),
                recipients: serde_json::from_str(&recipients).unwrap_or_default(),
                subject: col!(&self.path, r, 8),
                created_at: col!(&self.path, r, 9),
            })
        })
        .collect()
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
        self.exec(
            "INSERT INTO quarantine (source, message_id, content_hash, error, at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![source, message_id, content_hash, error, at],
        )?;
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
        match self.row(
            "SELECT uidvalidity, last_uid FROM mailbox_sync WHERE mailbox = ?1",
            params![mailbox],
        )? {
            Some(r) => Ok(Some(crate::pipeline::sync::Cursor {
                uid_validity: col!(&self.path, r, 0),
                last_uid: col!(&self.path, r, 1),
            })),
            None => Ok(None),
        }
    }

    /// Moves the cursor of `mailbox` forward (never backwards within one UIDVALIDITY).
    pub fn set_cursor(
        &self,
        mailbox: &str,
        uid_validity: u32,
        last_uid: u32,
    ) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO mailbox_sync (mailbox, uidvalidity, last_uid) VALUES (?1, ?2, ?3)
             ON CONFLICT(mailbox) DO UPDATE SET
               last_uid = CASE WHEN mailbox_sync.uidvalidity = excluded.uidvalidity
                                AND mailbox_sync.last_uid > excluded.last_uid
                               THEN mailbox_sync.last_uid ELSE excluded.last_uid END,
               uidvalidity = excluded.uidvalidity",
            params![mailbox, uid_validity, last_uid],
        )?;
        Ok(())
    }

    /// Outbox rows in one status, oldest first, with their bytes.
    pub fn outbox_items(&self, status: &str) -> Result<Vec<OutboxItem>, StoreError> {
        self.outbox_query(
            "status = ?1 AND (CAST(?2 AS TEXT) IS NULL OR mailbox = ?2)",
            params![status, self.mailbox],
        )
    }

    /// One outbox row with its bytes.
    pub fn outbox_item(&self, id: i64) -> Result<Option<OutboxItem>, StoreError> {
        Ok(self
            .outbox_query("id = ?1", params![id])?
            .into_iter()
            .next())
    }

    fn outbox_query(&self, filter: &str, arg: &[Value]) -> Result<Vec<OutboxItem>, StoreError> {
        self.rows(
            &format!(
                "SELECT id, message_id, case_id, inbound_message_id, template, disposition, status,
                        recipients, subject, bytes, reason, next_attempt_at, review_message_id,
                        updated_at
                 FROM outbox WHERE {filter} ORDER BY id"
            ),
            arg,
        )?
        .iter()
        .map(|r| {
            let recipients: String = col!(&self.path, r, 7);
            Ok(OutboxItem {
                id: col!(&self.path, r, 0),
                message_id: col!(&self.path, r, 1),
                case_id: col!(&self.path, r, 2),
                inbound_message_id: col!(&self.path, r, 3),
                template: col!(&self.path, r, 4),
                disposition: col!(&self.path, r, 5),
                status: col!(&self.path, r, 6),
                recipients: serde_json::from_str(&recipients).unwrap_or_default(),
                subject: col!(&self.path, r, 8),
                bytes: col!(&self.path, r, 9),
                reason: col!(&self.path, r, 10),
                next_attempt_at: col!(&self.path, r, 11),
                review_message_id: col!(&self.path, r, 12),
                updated_at: col!(&self.path, r, 13),
            })
        })
        .collect()
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
        if let Some(fence) = self.fence.as_ref().filter(|_| lease::LEAVING.contains(&to)) {
            // The row goes out only while this instance still holds the mailbox's lease, in
            // the same statement: an instance paused past its lease can never send.
            let changed = self.exec(
                &format!(
                    "UPDATE outbox SET status = ?3, reason = COALESCE(?4, reason), updated_at = ?5
                     WHERE id = ?1 AND status = ?2
                       AND EXISTS (SELECT 1 FROM leases WHERE mailbox = ?6 AND holder = ?7
                                   AND token = ?8 AND expires_at > {})",
                    self.dialect().now()
                ),
                params![
                    id,
                    from,
                    to,
                    reason,
                    now,
                    fence.mailbox,
                    fence.holder,
                    fence.token
                ],
            )?;
            if changed == 0 && !self.holds(fence)? {
                return Err(StoreError::LeaseLost {
                    mailbox: fence.mailbox.clone(),
                });
            }
            return Ok(changed == 1);
        }
        let changed = self.exec(
            "UPDATE outbox SET status = ?3, reason = COALESCE(?4, reason), updated_at = ?5
             WHERE id = ?1 AND status = ?2",
            params![id, from, to, reason, now],
        )?;
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
            .value("SELECT attempts FROM outbox WHERE id = ?1", params![id])?
            .unwrap_or(0);
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
        self.exec(
            "UPDATE outbox SET status = ?3, reason = ?4, attempts = attempts + 1,
                    next_attempt_at = ?5, updated_at = ?6 WHERE id = ?1 AND status = ?2",
            params![id, from, status, reason, due, now],
        )?;
        Ok(Attempt { held, due })
    }

    /// Releases a held row (or approves one waiting for approval): the daemon delivers it on
    /// its next pass. False when the row is in neither state.
    pub fn release_outbox(&self, id: i64, reason: &str, now: i64) -> Result<bool, StoreError> {
        let changed = self.exec(
            "UPDATE outbox SET status = 'approved', reason = ?2, attempts = 0,
                    next_attempt_at = 0, updated_at = ?3
             WHERE id = ?1 AND status IN ('held', 'awaiting_approval') AND length(bytes) > 0",
            params![id, reason, now],
        )?;
        Ok(changed == 1)
    }

    /// Whether a message was handled (by Message-ID or bytes).
    pub fn has_message(
        &self,
        message_id: Option<&str>,
        content_hash: &str,
    ) -> Result<bool, StoreError> {
        Ok(self
            .row(
                "SELECT id FROM messages WHERE content_hash = ?2
                 OR (CAST(?1 AS TEXT) IS NOT NULL AND message_id = ?1) LIMIT 1",
                params![message_id, content_hash],
            )?
            .is_some())
    }

    /// Learned templates, oldest first.
    pub fn templates(&self) -> Result<Vec<Learned>, StoreError> {
        let mut out = Vec::new();
        for r in self.rows(
            "SELECT id, kind, shingles, sample, source, created_at FROM templates ORDER BY id",
            &[],
        )? {
            let id: i64 = col!(&self.path, r, 0);
            let kind: String = col!(&self.path, r, 1);
            let blob: Vec<u8> = col!(&self.path, r, 2);
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
                sample: col!(&self.path, r, 3),
                source: col!(&self.path, r, 4),
                created_at: col!(&self.path, r, 5),
            });
        }
        Ok(out)
    }

    /// Stores a learned template; returns its id.
    pub fn add_template(&self, t: &Learned) -> Result<i64, StoreError> {
        let blob: Vec<u8> = t.shingles.iter().flat_map(|h| h.to_le_bytes()).collect();
        self.inserted(
            "INSERT INTO templates (kind, shingles, sample, source, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
            params![t.kind.as_str(), blob, t.sample, t.source, t.created_at],
        )
    }

    /// Runs an `INSERT ... RETURNING id`; returns the id.
    fn inserted(&self, statement: &str, params: &[Value]) -> Result<i64, StoreError> {
        self.value(statement, params)?
            .ok_or_else(|| StoreError::Refused {
                path: self.path.clone(),
                message: "an insert returned no id".to_string(),
            })
    }

    /// Removes a learned template; false when there is none with that id.
    pub fn remove_template(&self, id: i64) -> Result<bool, StoreError> {
        Ok(self.exec("DELETE FROM templates WHERE id = ?1", params![id])? == 1)
    }

    /// Saves a case changed outside a message transaction (a released reply).
    pub fn update_case(&mut self, case: &mut Case) -> Result<(), StoreError> {
        let tx = self.begin()?;
        tx.save_case(case)?;
        tx.commit()
    }

    /// The earliest time a row waiting for a retry is due, if any.
    pub fn next_retry_at(&self) -> Result<Option<i64>, StoreError> {
        self.value(
            "SELECT min(next_attempt_at) FROM outbox
             WHERE status IN ('pending', 'approved') AND next_attempt_at > 0
               AND (CAST(?1 AS TEXT) IS NULL OR mailbox = ?1)",
            params![self.mailbox],
        )
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
        let changed = tx.store.exec(
            "UPDATE outbox SET status = ?2, reason = ?3, updated_at = ?4
             WHERE id = ?1 AND status = 'pending'",
            params![row.id, to, reason, now],
        )?;
        if changed != 1 {
            return Ok(false);
        }
        if let Some(mut case) = match row.case_id {
            Some(id) => tx.store.case(id)?,
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
        Ok(self
            .row(
                "SELECT 1 FROM outbox WHERE message_id = ?1 OR review_message_id = ?1 LIMIT 1",
                params![message_id],
            )?
            .is_some())
    }

    /// Replaces the bytes (and Message-ID) of a row, for an approved draft the operator edited;
    /// the Message-ID of its review copy is kept in `review_message_id`.
    pub fn replace_outbox_bytes(
        &self,
        id: i64,
        message_id: &str,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        self.exec(
            "UPDATE outbox SET bytes = ?2, message_id = ?3,
                    review_message_id = CASE WHEN message_id = ?3 THEN review_message_id
                                             ELSE COALESCE(review_message_id, message_id) END
             WHERE id = ?1",
            params![id, bytes, message_id],
        )?;
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
            .value("SELECT state FROM cases WHERE id = ?1", params![case_id])?
            .unwrap_or_default();
        self.exec(
            "INSERT INTO timeline (case_id, at, kind, action, state, message_id, summary)
             VALUES (?1, ?2, NULL, ?3, ?4, NULL, ?5)",
            params![case_id, at, action, state, summary],
        )?;
        Ok(())
    }
}

/// The open transaction for one message. Dropped without `commit`, it rolls back.
pub struct StoreTx<'a> {
    store: &'a mut Store,
    /// A savepoint inside a [`Batch`], not a transaction of its own.
    savepoint: bool,
    done: bool,
}

impl Drop for StoreTx<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let _ = if self.savepoint {
            self.store.db.rollback_to()
        } else {
            self.store.db.end("ROLLBACK")
        };
    }
}

impl StoreTx<'_> {
    /// [`Store::select`] inside the transaction.
    #[doc(hidden)]
    pub fn select(&self, statement: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        self.store.select(statement, params)
    }

    /// Whether this message was handled before: same Message-ID, or same bytes.
    pub fn seen(&self, message_id: Option<&str>, content_hash: &str) -> Result<bool, StoreError> {
        self.store.has_message(message_id, content_hash)
    }

    /// Forgets that a message was handled (to decide it again); its case history stays.
    pub fn forget_message(
        &self,
        message_id: Option<&str>,
        content_hash: &str,
    ) -> Result<(), StoreError> {
        self.store.exec(
            "DELETE FROM messages WHERE content_hash = ?2 OR (CAST(?1 AS TEXT) IS NOT NULL AND message_id = ?1)",
            params![message_id, content_hash],
        )?;
        Ok(())
    }

    /// The case the first matching lookup finds.
    pub fn find_case(&self, lookups: &[Lookup]) -> Result<Option<Case>, StoreError> {
        match self.first_match(None, lookups)? {
            Found::Case(case) => Ok(Some(*case)),
            Found::Handled | Found::Nothing => Ok(None),
        }
    }

    /// [`seen`](Self::seen), then [`find_case`](Self::find_case), answered by one statement:
    /// on a database across the network each waited-for read is a round trip, and these two
    /// are asked for every message.
    pub fn seen_or_find_case(
        &self,
        message_id: Option<&str>,
        content_hash: &str,
        lookups: &[Lookup],
    ) -> Result<Found, StoreError> {
        self.first_match(Some((message_id, content_hash)), lookups)
    }

    /// Asks the lookups (after the handled-message check, when given) as `UNION ALL` members
    /// ranked by their order, a bounded number per statement (SQLite allows 500 members), and
    /// returns the best-ranked answer.
    fn first_match(
        &self,
        handled: Option<(Option<&str>, &str)>,
        lookups: &[Lookup],
    ) -> Result<Found, StoreError> {
        let mut members = Vec::new();
        let mut params = Vec::new();
        let next = |params: &mut Vec<Value>, value: Value| {
            params.push(value);
            params.len()
        };
        let mut statements = Vec::new();
        let mut flush = |members: &mut Vec<String>, params: &mut Vec<Value>| {
            if !members.is_empty() {
                let sql = members
                    .iter()
                    .enumerate()
                    .map(|(i, m)| format!("SELECT rank, id, data FROM ({m}) AS l{i}"))
                    .collect::<Vec<_>>()
                    .join(" UNION ALL ");
                statements.push((
                    format!("{sql} ORDER BY rank LIMIT 1"),
                    std::mem::take(params),
                ));
                members.clear();
            }
        };
        if let Some((message_id, content_hash)) = handled {
            let m = next(&mut params, db::ToValue::to_value(&message_id));
            let h = next(&mut params, db::ToValue::to_value(&content_hash));
            members.push(format!(
                "SELECT -1 AS rank, id, NULL AS data FROM messages WHERE content_hash = ?{h}
                 OR (CAST(?{m} AS TEXT) IS NOT NULL AND message_id = ?{m}) LIMIT 1"
            ));
        }
        let scope = || db::ToValue::to_value(&self.store.mailbox);
        let mut rank = 0usize;
        for lookup in lookups {
            let keys: Vec<(String, Vec<Value>)> = match lookup {
                Lookup::Ticket(t) => vec![(
                    "SELECT {rank} AS rank, id, data FROM cases WHERE ticket_id = ?{a}
                       AND (CAST(?{s} AS TEXT) IS NULL OR mailbox = ?{s})
                     ORDER BY id DESC LIMIT 1"
                        .to_string(),
                    vec![scope(), db::ToValue::to_value(t)],
                )],
                Lookup::MessageId(m) => vec![(
                    "SELECT {rank} AS rank, c.id, c.data FROM case_messages m
                       JOIN cases c ON c.id = m.case_id
                     WHERE m.message_id = ?{a} AND (CAST(?{s} AS TEXT) IS NULL OR c.mailbox = ?{s})
                     ORDER BY m.case_id DESC LIMIT 1"
                        .to_string(),
                    vec![scope(), db::ToValue::to_value(m)],
                )],
                Lookup::OpenForProvider(provider) => vec![(
                    "SELECT {rank} AS rank, id, data FROM cases
                     WHERE topic = 'receiver_block' AND provider = ?{a} AND state != 'closed'
                       AND NOT EXISTS (SELECT 1 FROM case_ips i WHERE i.case_id = cases.id)
                       AND (CAST(?{s} AS TEXT) IS NULL OR mailbox = ?{s})
                     ORDER BY id DESC LIMIT 1"
                        .to_string(),
                    vec![scope(), db::ToValue::to_value(provider)],
                )],
                Lookup::Notice(key) => vec![(
                    "SELECT {rank} AS rank, id, data FROM cases
                     WHERE notice_key = ?{a} AND state != 'closed'
                       AND (CAST(?{s} AS TEXT) IS NULL OR mailbox = ?{s})
                     ORDER BY id DESC LIMIT 1"
                        .to_string(),
                    vec![scope(), db::ToValue::to_value(key)],
                )],
                Lookup::OpenForIps {
                    topic,
                    ips,
                    without_ticket,
                    provider,
                } => ips
                    .iter()
                    .map(|ip| {
                        (
                            "SELECT {rank} AS rank, c.id, c.data FROM cases c
                               JOIN case_ips i ON i.case_id = c.id
                             WHERE i.ip = ?{a} AND c.topic = ?{b} AND c.state != 'closed'
                               AND (?{c} = 0 OR c.ticket_id IS NULL)
                               AND (CAST(?{d} AS TEXT) IS NULL OR c.provider = ?{d})
                               AND (CAST(?{s} AS TEXT) IS NULL OR c.mailbox = ?{s})
                             ORDER BY c.id DESC LIMIT 1"
                                .to_string(),
                            vec![
                                scope(),
                                db::ToValue::to_value(ip),
                                db::ToValue::to_value(&topic_str(*topic)),
                                db::ToValue::to_value(without_ticket),
                                db::ToValue::to_value(provider),
                            ],
                        )
                    })
                    .collect(),
            };
            for (template, values) in keys {
                let mut sql = template.replace("{rank}", &rank.to_string());
                for (name, value) in ["{s}", "{a}", "{b}", "{c}", "{d}"].iter().zip(values) {
                    sql = sql.replace(name, &next(&mut params, value).to_string());
                }
                members.push(sql);
                rank += 1;
                if members.len() == MEMBERS_PER_STATEMENT {
                    flush(&mut members, &mut params);
                }
            }
        }
        flush(&mut members, &mut params);
        let path = &self.store.path;
        for (statement, params) in statements {
            let Some(r) = self.store.row(&statement, &params)? else {
                continue;
            };
            let rank: i64 = col!(path, r, 0);
            let id: i64 = col!(path, r, 1);
            if rank < 0 {
                return Ok(Found::Handled);
            }
            let data: String = col!(path, r, 2);
            return decode_case(path, id, &data).map(|c| Found::Case(Box::new(c)));
        }
        Ok(Found::Nothing)
    }

    /// What the reply caps need, in one read: how many replies to Microsoft were planned since
    /// `since` on any case (verified Microsoft mail only, so a spoof moves no counter), in any
    /// status but held, rejected, superseded, replayed or found already made in the mailbox;
    /// and when the latest reply on `case` was planned, if any.
    pub fn reply_history(
        &self,
        since: i64,
        case: Option<CaseId>,
    ) -> Result<(i64, Option<i64>), StoreError> {
        let row = self.store.row(
            "SELECT
               (SELECT count(*) FROM outbox WHERE template != 'operator_notification'
                  AND case_id IS NOT NULL AND created_at >= ?1
                  AND status NOT IN ('held', 'rejected', 'superseded', 'replayed', 'in_mailbox')),
               (SELECT max(created_at) FROM outbox WHERE case_id = ?2
                  AND template != 'operator_notification'
                  AND status NOT IN ('held', 'rejected', 'superseded', 'replayed'))",
            params![since, case],
        )?;
        let path = &self.store.path;
        match row {
            Some(r) => Ok((col!(path, r, 0), col!(path, r, 1))),
            None => Ok((0, None)),
        }
    }

    /// When the latest notification under a rate key was planned (not held), if any.
    pub fn last_rate_key_at(&self, rate_key: &str) -> Result<Option<i64>, StoreError> {
        self.store.value(
            "SELECT max(created_at) FROM outbox WHERE rate_key = ?1
             AND status NOT IN ('held', 'rejected', 'superseded')",
            params![rate_key],
        )
    }

    /// Whether our outbox produced a message with this Message-ID.
    pub fn outbox_knows(&self, message_id: &str) -> Result<bool, StoreError> {
        Ok(self
            .store
            .row(
                "SELECT 1 FROM outbox WHERE message_id = ?1 LIMIT 1",
                params![message_id],
            )?
            .is_some())
    }

    /// A new reply on a case makes its older held replies moot: they can no longer be released.
    pub fn supersede_held_replies(&self, case_id: CaseId, now: i64) -> Result<usize, StoreError> {
        Ok(self.store.exec(
            "UPDATE outbox SET status = 'superseded', updated_at = ?2,
                    reason = COALESCE(reason, '') || ' (superseded by a newer reply)'
             WHERE case_id = ?1 AND status = 'held' AND template != 'operator_notification'",
            params![case_id, now],
        )? as usize)
    }

    /// Stores a case: inserts it when its id is 0 and returns the id.
    pub fn save_case(&self, case: &mut Case) -> Result<CaseId, StoreError> {
        self.save_case_after(case, None)
    }

    /// [`save_case`](Self::save_case) of a case loaded as `before` in this transaction: only
    /// the IPs and thread Message-IDs it gained are written (the rest are stored already), so
    /// a long thread does not cost a longer statement with every message.
    pub fn save_case_after(
        &self,
        case: &mut Case,
        before: Option<&Case>,
    ) -> Result<CaseId, StoreError> {
        let before = before.filter(|b| b.id == case.id && case.id != 0);
        let gained = |now: &[String], then: Option<&[String]>| -> Vec<String> {
            match then {
                Some(then) => {
                    let then: std::collections::HashSet<&String> = then.iter().collect();
                    now.iter().filter(|x| !then.contains(x)).cloned().collect()
                }
                None => now.to_vec(),
            }
        };
        let new_ips = gained(&case.ips, before.map(|b| b.ips.as_slice()));
        let new_thread_ids = gained(&case.thread_ids, before.map(|b| b.thread_ids.as_slice()));
        let store = &*self.store;
        let path = &store.path;
        if case.id == 0 {
            case.id = store.inserted(
                "INSERT INTO cases (topic, state, ticket_id, notice_key, opened_at, updated_at, closed_at,
                                    data, mailbox, provider)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, '{}', ?8, ?9) RETURNING id",
                params![
                    topic_str(case.topic),
                    case.state.as_str(),
                    case.ticket_id,
                    case.notice_key,
                    case.opened_at,
                    case.updated_at,
                    case.closed_at,
                    store.owner(),
                    case.provider
                ],
            )?;
        }
        let data = serde_json::to_string(case).map_err(|e| StoreError::Damaged {
            path: path.clone(),
            case: case.id,
            message: e.to_string(),
        })?;
        store.write(
            "UPDATE cases SET topic = ?2, state = ?3, ticket_id = ?4, notice_key = ?5,
                    updated_at = ?6, closed_at = ?7, data = ?8, provider = ?9 WHERE id = ?1",
            params![
                case.id,
                topic_str(case.topic),
                case.state.as_str(),
                case.ticket_id,
                case.notice_key,
                case.updated_at,
                case.closed_at,
                data,
                case.provider
            ],
        )?;
        // One statement for all of a case's IPs and one for its thread: a long thread is
        // saved with every message, and each row its own statement was most of a save.
        if let Some(values) = padded_with_first(case.id, &new_ips) {
            store.write(
                &format!(
                    "INSERT INTO case_ips (case_id, ip) VALUES {} ON CONFLICT DO NOTHING",
                    pairs_with_first(values.len() - 1, false)
                ),
                &values,
            )?;
        }
        if let Some(values) = padded_with_first(case.id, &new_thread_ids) {
            store.write(
                &format!(
                    "INSERT INTO case_messages (message_id, case_id) VALUES {} ON CONFLICT DO NOTHING",
                    pairs_with_first(values.len() - 1, true)
                ),
                &values,
            )?;
        }
        Ok(case.id)
    }

    /// Adds a line to a case's timeline.
    pub fn add_timeline(&self, case_id: CaseId, entry: &TimelineEntry) -> Result<(), StoreError> {
        self.store.write(
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
        )?;
        Ok(())
    }

    /// Writes an outgoing message to the outbox, before anything is sent or drafted. It belongs
    /// to its case's mailbox (a reply planned by `teach` on the command line is delivered by the
    /// mailbox the ticket lives in), else to this connection's.
    pub fn add_outbox(&self, row: &NewOutbox<'_>, now: i64) -> Result<i64, StoreError> {
        let recipients = serde_json::to_string(row.recipients).unwrap_or_else(|_| "[]".into());
        self.store.inserted(
            "INSERT INTO outbox (message_id, case_id, inbound_message_id, template, disposition,
                                 status, reason, recipients, subject, bytes, created_at, updated_at,
                                 rate_key, mailbox)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?12,
                     COALESCE((SELECT mailbox FROM cases WHERE id = ?2), ?13)) RETURNING id",
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
                row.rate_key,
                self.store.owner()
            ],
        )
    }

    /// Records a message as handled.
    pub fn add_message(&self, m: &ProcessedMessage<'_>, now: i64) -> Result<(), StoreError> {
        let ips = serde_json::to_string(m.ips).unwrap_or_else(|_| "[]".into());
        self.store.write(
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
        )?;
        Ok(())
    }

    /// Makes everything written in this transaction durable.
    pub fn commit(mut self) -> Result<(), StoreError> {
        self.done = true;
        let path = self.store.path.clone();
        if self.savepoint {
            // Pipelined on PostgreSQL like the writes before it: the batch's COMMIT waits for
            // all of them, and a store failure anywhere makes the whole chunk read again.
            self.store.db.release()
        } else {
            self.store.db.end("COMMIT")
        }
        .map_err(sql(&path))
    }
}

/// The case id and then `items`, the last repeated up to a power of two: rows a statement
/// inserts (a repeat changes nothing), in few enough shapes that each stays compiled.
fn padded_with_first(case_id: CaseId, items: &[String]) -> Option<Vec<Value>> {
    let last = items.last()?;
    let mut values = vec![Value::Int(case_id)];
    values.extend(items.iter().map(|i| Value::Text(i.clone())));
    values.resize(
        items.len().next_power_of_two() + 1,
        Value::Text(last.clone()),
    );
    Some(values)
}

/// `(?1, ?2), (?1, ?3), ...`: `n` rows pairing the first parameter with each of the others
/// (`first_last`: the first parameter goes second in each pair).
fn pairs_with_first(n: usize, first_last: bool) -> String {
    (0..n)
        .map(|i| {
            if first_last {
                format!("(?{}, ?1)", i + 2)
            } else {
                format!("(?1, ?{})", i + 2)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Members of one lookup statement: well under SQLite's 500 compound members.
const MEMBERS_PER_STATEMENT: usize = 64;

/// What [`StoreTx::seen_or_find_case`] found.
#[derive(Debug)]
pub enum Found {
    /// The message was handled before.
    Handled,
    /// The case it belongs to.
    Case(Box<Case>),
    /// Neither: new mail for no existing case.
    Nothing,
}

fn decode_case(path: &str, id: CaseId, data: &str) -> Result<Case, StoreError> {
    let mut case: Case = serde_json::from_str(data).map_err(|e| StoreError::Damaged {
        path: path.to_string(),
        case: id,
        message: e.to_string(),
    })?;
    case.id = id;
    // Cases saved before providers were known are Microsoft's, by their topic.
    if case.provider.is_none() {
        case.provider = match case.topic {
            Topic::OutlookBlock | Topic::Complaints | Topic::Snds => Some("outlook".to_string()),
            Topic::M365Block => Some("m365".to_string()),
            Topic::DeliveryNotice | Topic::ReceiverBlock => None,
        };
    }
    Ok(case)
}

fn topic_str(topic: Topic) -> &'static str {
    match topic {
        Topic::OutlookBlock => "outlook_block",
        Topic::M365Block => "m365_block",
        Topic::Complaints => "complaints",
        Topic::Snds => "snds",
        Topic::DeliveryNotice => "delivery_notice",
        Topic::ReceiverBlock => "receiver_block",
    }
}

fn create_private(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map(drop)
}
