//! The PostgreSQL connection of a store. The client runs on a thread of its own with a
//! runtime of its own (the store is called from inside the daemon's runtime, where blocking
//! on another is not allowed): the store sends it one statement at a time and waits for the
//! answer, as it waits for SQLite.
//!
//! Inside a transaction, writes whose answer nobody reads (`Pg::write`) are pipelined: sent at
//! once, not waited for, so a message's inserts cost one round trip together, not one each.
//! The first failure among them is reported by the next statement that is waited for, and the
//! transaction's `COMMIT` is always waited for: nothing is ever taken as written that was not.
//! The connection is made again when it was lost, except inside a transaction, whose writes
//! went with it: every statement fails until the store rolls back.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{mpsc, Arc};
use std::task::Poll;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::{Client, NoTls, Statement};

use super::db::{numbered_placeholders, DbError, Row, Value};
use crate::config::PgSslMode;

/// Everything needed to connect, resolved (the password read from its source).
#[derive(Clone)]
pub struct PgConnect {
    pub config: tokio_postgres::Config,
    pub password: Option<SecretString>,
    pub schema: Option<String>,
    pub sslmode: PgSslMode,
    pub ca_file: Option<PathBuf>,
}

impl PgConnect {
    /// The server, user, database and schema, without the password, for messages.
    pub fn describe(&self) -> String {
        let host = match self.config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".to_string(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        let user = self.config.get_user().unwrap_or("");
        let db = self.config.get_dbname().unwrap_or(user);
        let schema = self
            .schema
            .as_deref()
            .map(|s| format!(" (schema {s})"))
            .unwrap_or_default();
        format!("postgres://{user}@{host}:{port}/{db}{schema}")
    }
}

enum Request {
    /// A statement whose changed-row count is wanted.
    Exec(String, Vec<Value>),
    /// A statement whose answer is not read, inside a transaction: sent without a reply.
    Write(String, Vec<Value>),
    Rows(String, Vec<Value>),
    Batch(String),
    Begin(&'static str),
    End(&'static str),
    /// Opens the savepoint of one message, unanswered (see [`Session::held`]).
    Savepoint,
    /// Ends that savepoint with its writes kept, unanswered.
    Release,
    /// Undoes that savepoint's writes.
    RollbackTo,
}

enum Reply {
    Count(u64),
    Rows(Vec<Row>),
    Done,
    /// A pipelined write was sent; its result comes with a later answer.
    Sent,
}

/// The store's side of the connection thread.
pub(crate) struct Pg {
    requests: mpsc::Sender<Request>,
    replies: mpsc::Receiver<Result<Reply, DbError>>,
    /// A transaction is open: writes go without waiting for the thread to take them.
    in_transaction: std::cell::Cell<bool>,
}

fn gone() -> DbError {
    DbError::Postgres {
        message: "the PostgreSQL connection thread ended".to_string(),
        code: None,
        closed: true,
    }
}

impl Pg {
    /// Connects (on the connection's own thread) and returns when the server answered.
    pub(crate) fn connect(target: PgConnect) -> Result<Pg, DbError> {
        let (requests, inbox) = mpsc::channel();
        let (outbox, replies) = mpsc::channel();
        std::thread::Builder::new()
            .name("postgres".to_string())
            .spawn(move || serve(target, inbox, outbox))
            .map_err(|e| DbError::Postgres {
                message: format!("failed to start the connection thread: {e}"),
                code: None,
                closed: true,
            })?;
        let pg = Pg {
            requests,
            replies,
            in_transaction: std::cell::Cell::new(false),
        };
        match pg.replies.recv() {
            Ok(Ok(_)) => Ok(pg),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(gone()),
        }
    }

    fn call(&self, request: Request) -> Result<Reply, DbError> {
        self.requests.send(request).map_err(|_| gone())?;
        self.replies.recv().map_err(|_| gone())?
    }

    pub(crate) fn exec(&self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
        match self.call(Request::Exec(sql.to_string(), params.to_vec()))? {
            Reply::Count(n) => Ok(n),
            _ => Ok(0),
        }
    }

    /// A write whose result is not needed: inside a transaction it is handed to the thread
    /// and not waited for (its failure comes with the next answer waited for).
    pub(crate) fn write(&self, sql: &str, params: &[Value]) -> Result<(), DbError> {
        if self.in_transaction.get() {
            self.requests
                .send(Request::Write(sql.to_string(), params.to_vec()))
                .map_err(|_| gone())
        } else {
            self.exec(sql, params).map(drop)
        }
    }

    pub(crate) fn rows(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>, DbError> {
        match self.call(Request::Rows(sql.to_string(), params.to_vec()))? {
            Reply::Rows(rows) => Ok(rows),
            _ => Ok(Vec::new()),
        }
    }

    pub(crate) fn batch(&self, sql: &str) -> Result<(), DbError> {
        self.call(Request::Batch(sql.to_string())).map(drop)
    }

    /// `BEGIN`: from here a lost connection fails every statement until [`Pg::end`].
    pub(crate) fn begin(&self, sql: &'static str) -> Result<(), DbError> {
        self.call(Request::Begin(sql))?;
        self.in_transaction.set(true);
        Ok(())
    }

    /// `COMMIT` or `ROLLBACK`.
    pub(crate) fn end(&self, sql: &'static str) -> Result<(), DbError> {
        self.in_transaction.set(false);
        self.call(Request::End(sql)).map(drop)
    }

    /// The savepoint a message is handled in, inside an open transaction; like a write, not
    /// waited for.
    pub(crate) fn savepoint(&self) -> Result<(), DbError> {
        self.requests.send(Request::Savepoint).map_err(|_| gone())
    }

    /// Keeps the savepoint's writes; not waited for.
    pub(crate) fn release(&self) -> Result<(), DbError> {
        self.requests.send(Request::Release).map_err(|_| gone())
    }

    /// Undoes the savepoint's writes.
    pub(crate) fn rollback_to(&self) -> Result<(), DbError> {
        self.call(Request::RollbackTo).map(drop)
    }
}

type Pending = Pin<Box<dyn Future<Output = Result<u64, tokio_postgres::Error>>>>;

/// A write kept back until its savepoint is known to be needed.
type Held = (String, Vec<Value>);

struct Session {
    target: PgConnect,
    runtime: tokio::runtime::Runtime,
    client: Option<Arc<Client>>,
    statements: HashMap<String, Statement>,
    /// Pipelined writes not yet answered, oldest first, each with the savepoint epoch it was
    /// sent in.
    pending: VecDeque<(u64, Pending)>,
    /// The first failure among pipelined writes, for the next statement waited for.
    deferred: Option<DbError>,
    /// The savepoint epoch of the transaction's first failure, kept after it was reported:
    /// only rolling back that savepoint mends the transaction.
    failed_epoch: Option<u64>,
    /// Counts the savepoints sent: a failure of an older epoch is not undone by rolling back
    /// the newest one.
    epoch: u64,
    /// A message's savepoint was asked for and not yet sent: its writes wait here. Most
    /// messages read nothing after their first write, so their writes go out together at the
    /// release, with no `SAVEPOINT`/`RELEASE` round of their own; a read in between sends the
    /// savepoint and the writes first.
    held: Option<Vec<Held>>,
    /// A `SAVEPOINT` was sent and not yet released or rolled back.
    savepoint_sent: bool,
    in_transaction: bool,
    /// The transaction's connection was lost: nothing more runs until it is ended.
    transaction_lost: bool,
}

fn serve(
    target: PgConnect,
    inbox: mpsc::Receiver<Request>,
    outbox: mpsc::Sender<Result<Reply, DbError>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let _ = outbox.send(Err(DbError::Postgres {
                message: format!("failed to start the connection's runtime: {e}"),
                code: None,
                closed: true,
            }));
            return;
        }
    };
    let mut session = Session {
        target,
        runtime,
        client: None,
        statements: HashMap::new(),
        pending: VecDeque::new(),
        deferred: None,
        failed_epoch: None,
        epoch: 0,
        held: None,
        savepoint_sent: false,
        in_transaction: false,
        transaction_lost: false,
    };
    let first = session.client().map(|_| Reply::Done);
    let failed = first.is_err();
    if outbox.send(first).is_err() || failed {
        return;
    }
    for request in inbox {
        let answered = !matches!(
            request,
            Request::Write(..) | Request::Savepoint | Request::Release
        );
        let reply = session.handle(request);
        if answered && outbox.send(reply).is_err() {
            break;
        }
    }
}

impl Session {
    fn client(&mut self) -> Result<Arc<Client>, DbError> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
            self.statements.clear();
        }
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let client = Arc::new(connect(&self.runtime, &self.target)?);
        self.client = Some(client.clone());
        Ok(client)
    }

    /// Waits for every pipelined write; the first failure is kept for the caller.
    fn drain(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        let failures: Vec<(u64, tokio_postgres::Error)> = self.runtime.block_on(async move {
            let mut failures = Vec::new();
            for (epoch, write) in pending {
                if let Err(e) = write.await {
                    failures.push((epoch, e));
                }
            }
            failures
        });
        if let Some((epoch, first)) = failures.into_iter().next() {
            self.note_failure_in(epoch, pg_error(first));
        }
    }

    fn note_failure(&mut self, e: DbError) {
        self.note_failure_in(self.epoch, e);
    }

    fn note_failure_in(&mut self, epoch: u64, e: DbError) {
        if matches!(e, DbError::Postgres { closed: true, .. }) && self.in_transaction {
            self.transaction_lost = true;
        }
        self.failed_epoch.get_or_insert(epoch);
        self.deferred.get_or_insert(e);
    }

    /// Sends the held savepoint and its writes: something is about to be asked that must see
    /// them, or that could fail and leave them to be undone.
    fn send_held(&mut self) {
        let Some(held) = self.held.take_if(|h| !h.is_empty()) else {
            return;
        };
        self.epoch += 1;
        self.savepoint_sent = true;
        for (sql, params) in
            std::iter::once(("SAVEPOINT message".to_string(), Vec::new())).chain(held)
        {
            if let Err(e) = self.pipeline(sql, params) {
                self.note_failure(e);
            }
        }
    }

    /// The savepoint-related requests; `None` for every other.
    fn savepoint_request(&mut self, request: &Request) -> Option<Result<Reply, DbError>> {
        match request {
            Request::Savepoint => {
                self.held = Some(Vec::new());
                self.savepoint_sent = false;
                Some(Ok(Reply::Sent))
            }
            Request::Release => {
                if let Some(held) = self.held.take() {
                    // Never sent, so never needed: the writes go on without it.
                    for (sql, params) in held {
                        if let Err(e) = self.pipeline(sql, params) {
                            self.note_failure(e);
                        }
                    }
                } else if std::mem::take(&mut self.savepoint_sent) {
                    if let Err(e) =
                        self.pipeline("RELEASE SAVEPOINT message".to_string(), Vec::new())
                    {
                        self.note_failure(e);
                    }
                }
                Some(Ok(Reply::Sent))
            }
            Request::RollbackTo => {
                if self.held.take().is_some() {
                    // Nothing of this message reached the server; a failure already kept is
                    // older and stays for the next answer.
                    return Some(Ok(Reply::Done));
                }
                if !std::mem::take(&mut self.savepoint_sent) {
                    return Some(Ok(Reply::Done));
                }
                self.drain();
                if self.failed_epoch.is_some_and(|e| e != self.epoch) {
                    // The transaction failed before this savepoint: rolling back to it cannot
                    // mend that (and would find an older savepoint of the same name).
                    return Some(Ok(Reply::Done));
                }
                self.deferred = None;
                self.failed_epoch = None;
                Some(
                    self.run(|c| async move {
                        c.batch_execute("ROLLBACK TO SAVEPOINT message; RELEASE SAVEPOINT message")
                            .await
                    })
                    .map(|()| Reply::Done),
                )
            }
            _ => None,
        }
    }

    fn handle(&mut self, request: Request) -> Result<Reply, DbError> {
        if let Some(reply) = self.savepoint_request(&request) {
            return reply;
        }
        let request = match request {
            Request::Write(sql, params) => {
                if let Some(held) = self.held.as_mut() {
                    held.push((sql, params));
                    return Ok(Reply::Sent);
                }
                // No one waits for this answer: a failure is kept for the next one asked.
                if let Err(e) = self.pipeline(sql, params) {
                    self.note_failure(e);
                }
                return Ok(Reply::Sent);
            }
            Request::End(sql) => {
                // A message's savepoint still open at the transaction's end: its writes count
                // only with a COMMIT.
                if let Some(held) = self.held.take() {
                    if sql == "COMMIT" {
                        for (s, p) in held {
                            if let Err(e) = self.pipeline(s, p) {
                                self.note_failure(e);
                            }
                        }
                    }
                }
                self.savepoint_sent = false;
                Request::End(sql)
            }
            other => {
                self.send_held();
                other
            }
        };
        self.drain();
        if let Request::End(sql) = request {
            let deferred = self.deferred.take();
            let lost = std::mem::take(&mut self.transaction_lost);
            self.in_transaction = false;
            self.failed_epoch = None;
            if lost || self.client.as_ref().is_none_or(|c| c.is_closed()) {
                return if sql == "ROLLBACK" {
                    Ok(Reply::Done)
                } else {
                    Err(lost_transaction())
                };
            }
            if let Some(e) = deferred {
                // A write of this transaction failed: it is rolled back, whatever was asked.
                let _ = self.run(|c| async move { c.batch_execute("ROLLBACK").await });
                return if sql == "ROLLBACK" {
                    Ok(Reply::Done)
                } else {
                    Err(e)
                };
            }
            return self
                .run(|c| async move { c.batch_execute(sql).await })
                .map(|()| Reply::Done);
        }
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        self.check_transaction()?;
        match request {
            Request::Exec(sql, params) => {
                let statement = self.prepared(&sql)?;
                self.run(|c| async move { c.execute(&statement, &refs(&params)).await })
                    .map(Reply::Count)
            }
            Request::Rows(sql, params) => {
                let statement = self.prepared(&sql)?;
                let rows =
                    self.run(|c| async move { c.query(&statement, &refs(&params)).await })?;
                rows.iter()
                    .map(values)
                    .collect::<Result<_, _>>()
                    .map(Reply::Rows)
            }
            Request::Batch(sql) => self
                .run(|c| async move { c.batch_execute(&sql).await })
                .map(|()| Reply::Done),
            Request::Begin(sql) => {
                let reply = self
                    .run(|c| async move { c.batch_execute(sql).await })
                    .map(|()| Reply::Done);
                self.in_transaction = reply.is_ok();
                self.failed_epoch = None;
                reply
            }
            Request::Write(..)
            | Request::End(_)
            | Request::Savepoint
            | Request::Release
            | Request::RollbackTo => Ok(Reply::Done),
        }
    }

    /// Inside a transaction whose connection was lost nothing runs until it is ended.
    fn check_transaction(&mut self) -> Result<(), DbError> {
        if self.transaction_lost
            || (self.in_transaction && self.client.as_ref().is_none_or(|c| c.is_closed()))
        {
            self.transaction_lost = true;
            return Err(lost_transaction());
        }
        Ok(())
    }

    /// Sends a write without waiting for its answer. The first poll puts the request on the
    /// connection's queue, so writes and the statements after them reach the server in the
    /// order they were made.
    fn pipeline(&mut self, sql: String, params: Vec<Value>) -> Result<(), DbError> {
        if self.deferred.is_some() {
            // The transaction already failed: the store will roll it back.
            return Ok(());
        }
        self.check_transaction()?;
        let statement = self.prepared(&sql)?;
        let client = self.client()?;
        let mut write: Pending =
            Box::pin(async move { client.execute(&statement, &refs(&params)).await });
        let first = self.runtime.block_on(futures::future::poll_fn(|cx| {
            Poll::Ready(write.as_mut().poll(cx))
        }));
        match first {
            Poll::Pending => self.pending.push_back((self.epoch, write)),
            Poll::Ready(Ok(_)) => {}
            Poll::Ready(Err(e)) => return Err(pg_error(e)),
        }
        Ok(())
    }

    fn prepared(&mut self, sql: &str) -> Result<Statement, DbError> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let text = numbered_placeholders(sql);
        let statement = self.run(|c| async move { c.prepare(&text).await })?;
        // Statements are few and fixed, but a bug building SQL text must not grow this forever.
        if self.statements.len() >= 256 {
            self.statements.clear();
        }
        self.statements.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    fn run<T, F>(&mut self, f: impl FnOnce(Arc<Client>) -> F) -> Result<T, DbError>
    where
        F: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let client = self.client()?;
        self.runtime.block_on(f(client)).map_err(|e| {
            let e = pg_error(e);
            if self.in_transaction {
                // Any failed statement aborts the transaction on the server.
                self.failed_epoch.get_or_insert(self.epoch);
                if matches!(e, DbError::Postgres { closed: true, .. }) {
                    self.transaction_lost = true;
                }
            }
            e
        })
    }
}

fn lost_transaction() -> DbError {
    DbError::Postgres {
        message: "the connection to PostgreSQL was lost inside a transaction; its writes were \
                  not committed"
            .to_string(),
        code: None,
        closed: true,
    }
}

fn refs(params: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

/// Makes the connection (TLS as configured) and puts it in the store's schema.
fn connect(runtime: &tokio::runtime::Runtime, target: &PgConnect) -> Result<Client, DbError> {
    let mut config = target.config.clone();
    if let Some(password) = &target.password {
        config.password(password.expose_secret());
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    config.application_name("postmaster-bot");
    let connect_error = |e: tokio_postgres::Error| {
        let mut e = pg_error(e);
        if let DbError::Postgres {
            message, closed, ..
        } = &mut e
        {
            *message = format!("failed to connect to {}: {message}", target.describe());
            // A server that refuses or is down may be back soon; a wrong password is not
            // transient, but the message says which it was.
            *closed = true;
        }
        e
    };
    let client = match target.sslmode {
        PgSslMode::Disable => {
            config.ssl_mode(tokio_postgres::config::SslMode::Disable);
            start(runtime, &config, NoTls).map_err(connect_error)?
        }
        mode => {
            config.ssl_mode(if mode == PgSslMode::Require {
                tokio_postgres::config::SslMode::Require
            } else {
                tokio_postgres::config::SslMode::Prefer
            });
            let tls = crate::shell::tls::client_config(target.ca_file.as_deref()).map_err(|e| {
                DbError::Postgres {
                    message: e.to_string(),
                    code: None,
                    closed: false,
                }
            })?;
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new((*tls).clone());
            start(runtime, &config, tls).map_err(connect_error)?
        }
    };
    if let Some(schema) = &target.schema {
        runtime.block_on(async {
            let exists = client
                .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[schema])
                .await
                .map_err(pg_error)?
                .is_some();
            if !exists {
                // Two instances starting together may both try: the loser finds it made.
                if let Err(e) = client
                    .batch_execute(&format!("CREATE SCHEMA {}", quoted(schema)))
                    .await
                {
                    let code = e.code().map(|c| c.code().to_string());
                    if !matches!(code.as_deref(), Some("42P06" | "23505")) {
                        return Err(pg_error(e));
                    }
                }
            }
            client
                .batch_execute(&format!("SET search_path TO {}", quoted(schema)))
                .await
                .map_err(pg_error)
        })?;
    }
    // Stored message excerpts run to a few kilobytes, which PostgreSQL compresses on every
    // insert: lz4 does that at a fraction of the default's CPU. A server without it (before
    // 14, or built without lz4) keeps its default.
    let _ = runtime.block_on(client.batch_execute("SET default_toast_compression = lz4"));
    // Every statement is prepared once per connection and looks rows up by key: a plan made
    // once serves every execution, where PostgreSQL would by default plan the first five of
    // each afresh (most of its own time in a catch-up).
    let _ = runtime.block_on(client.batch_execute("SET plan_cache_mode = force_generic_plan"));
    Ok(client)
}

/// Connects and hands the connection's I/O to the runtime that drives it.
fn start<T>(
    runtime: &tokio::runtime::Runtime,
    config: &tokio_postgres::Config,
    tls: T,
) -> Result<Client, tokio_postgres::Error>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = runtime.block_on(config.connect(tls))?;
    runtime.spawn(connection);
    Ok(client)
}

/// An identifier in double quotes (schema names come from the configuration).
pub(crate) fn quoted(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

pub(crate) fn pg_error(e: tokio_postgres::Error) -> DbError {
    let closed = e.is_closed();
    match e.as_db_error() {
        Some(db) => DbError::Postgres {
            message: match db.detail() {
                Some(detail) => format!("{}: {} ({detail})", db.severity(), db.message()),
                None => format!("{}: {}", db.severity(), db.message()),
            },
            code: Some(db.code().code().to_string()),
            closed,
        },
        None => {
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                message = format!("{message}: {s}");
                source = s.source();
            }
            let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
            DbError::Postgres {
                message,
                code: None,
                closed: closed || io,
            }
        }
    }
}

/// A row's columns as values.
fn values(row: &tokio_postgres::Row) -> Result<Row, DbError> {
    let mut out = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let ty = column.type_();
        let got = match *ty {
            Type::INT8 => row.try_get::<_, Option<i64>>(i).map(|v| v.map(Value::Int)),
            Type::INT4 => row
                .try_get::<_, Option<i32>>(i)
                .map(|v| v.map(|n| Value::Int(n.into()))),
            Type::INT2 => row
                .try_get::<_, Option<i16>>(i)
                .map(|v| v.map(|n| Value::Int(n.into()))),
            Type::BOOL => row
                .try_get::<_, Option<bool>>(i)
                .map(|v| v.map(|b| Value::Int(b.into()))),
            Type::BYTEA => row
                .try_get::<_, Option<Vec<u8>>>(i)
                .map(|v| v.map(Value::Blob)),
            _ => row
                .try_get::<_, Option<String>>(i)
                .map(|v| v.map(Value::Text)),
        };
        out.push(
            got.map_err(|e| DbError::Postgres {
                message: format!("column {i} ({ty}) cannot be read: {e}"),
                code: None,
                closed: false,
            })?
            .unwrap_or(Value::Null),
        );
    }
    Ok(Row(out))
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            // The server infers a parameter's type from where it is used (`?3 = 0` is an int4):
            // the integer is sent as that type, or refused when it does not fit.
            Value::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::BOOL => (*i != 0).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR => i.to_string().as_str().to_sql(ty, out),
                _ => Err(format!("an integer cannot be sent as {ty}").into()),
            },
            Value::Text(s) => s.as_str().to_sql(ty, out),
            Value::Blob(b) => b.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}
