//! The PostgreSQL connection of a store. The synchronous `postgres` client runs a runtime of
//! its own and must not block inside the daemon's, so it lives on a thread of its own: the
//! store sends it one statement at a time and waits for the rows, as it waits for SQLite.
//! The connection is made again when it was lost, except inside a transaction, whose writes
//! went with it: every statement fails until the store rolls back.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use postgres::{Client, NoTls, Statement};
use secrecy::{ExposeSecret, SecretString};

use super::db::{numbered_placeholders, DbError, Row, Value};
use crate::config::PgSslMode;

/// Everything needed to connect, resolved (the password read from its source).
#[derive(Clone)]
pub struct PgConnect {
    pub config: postgres::Config,
    pub password: Option<SecretString>,
    pub schema: Option<String>,
    pub sslmode: PgSslMode,
    pub ca_file: Option<PathBuf>,
}

impl PgConnect {
    /// The server, user, database and schema, without the password, for messages.
    pub fn describe(&self) -> String {
        let host = match self.config.get_hosts().first() {
            Some(postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
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
    Exec(String, Vec<Value>),
    Rows(String, Vec<Value>),
    Batch(String),
    Begin(&'static str),
    End(&'static str),
}

enum Reply {
    Count(u64),
    Rows(Vec<Row>),
    Done,
}

/// The store's side of the connection thread.
pub(crate) struct Pg {
    requests: mpsc::Sender<Request>,
    replies: mpsc::Receiver<Result<Reply, DbError>>,
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
        let pg = Pg { requests, replies };
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
        self.call(Request::Begin(sql)).map(drop)
    }

    /// `COMMIT` or `ROLLBACK`.
    pub(crate) fn end(&self, sql: &'static str) -> Result<(), DbError> {
        self.call(Request::End(sql)).map(drop)
    }
}

struct Session {
    target: PgConnect,
    client: Option<Client>,
    statements: HashMap<String, Statement>,
    in_transaction: bool,
    /// The transaction's connection was lost: nothing more runs until it is ended.
    transaction_lost: bool,
}

fn serve(
    target: PgConnect,
    inbox: mpsc::Receiver<Request>,
    outbox: mpsc::Sender<Result<Reply, DbError>>,
) {
    let mut session = Session {
        target,
        client: None,
        statements: HashMap::new(),
        in_transaction: false,
        transaction_lost: false,
    };
    let first = session.client().map(|_| Reply::Done);
    let failed = first.is_err();
    if outbox.send(first).is_err() || failed {
        return;
    }
    for request in inbox {
        let reply = session.handle(request);
        if outbox.send(reply).is_err() {
            break;
        }
    }
}

impl Session {
    fn client(&mut self) -> Result<&mut Client, DbError> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
            self.statements.clear();
        }
        if self.client.is_none() {
            self.client = Some(connect(&self.target)?);
        }
        self.client.as_mut().ok_or_else(gone)
    }

    fn handle(&mut self, request: Request) -> Result<Reply, DbError> {
        if let Request::End(sql) = request {
            let lost = std::mem::take(&mut self.transaction_lost);
            self.in_transaction = false;
            if lost || self.client.as_ref().is_none_or(Client::is_closed) {
                return if sql == "ROLLBACK" {
                    Ok(Reply::Done)
                } else {
                    Err(lost_transaction())
                };
            }
            return self.run(|c, _| c.batch_execute(sql).map(|()| Reply::Done));
        }
        if self.transaction_lost
            || (self.in_transaction && self.client.as_ref().is_none_or(Client::is_closed))
        {
            self.transaction_lost = true;
            return Err(lost_transaction());
        }
        match request {
            Request::Exec(sql, params) => self.run(|c, cache| {
                let stmt = prepared(c, cache, &sql)?;
                c.execute(&stmt, &refs(&params)).map(Reply::Count)
            }),
            Request::Rows(sql, params) => {
                let rows = self.run(|c, cache| {
                    let stmt = prepared(c, cache, &sql)?;
                    c.query(&stmt, &refs(&params))
                })?;
                rows.iter()
                    .map(values)
                    .collect::<Result<_, _>>()
                    .map(Reply::Rows)
            }
            Request::Batch(sql) => self.run(|c, _| c.batch_execute(&sql).map(|()| Reply::Done)),
            Request::Begin(sql) => {
                let reply = self.run(|c, _| c.batch_execute(sql).map(|()| Reply::Done));
                self.in_transaction = reply.is_ok();
                reply
            }
            Request::End(_) => Ok(Reply::Done),
        }
    }

    fn run<T>(
        &mut self,
        f: impl FnOnce(&mut Client, &mut HashMap<String, Statement>) -> Result<T, postgres::Error>,
    ) -> Result<T, DbError> {
        self.client()?;
        let Some(client) = self.client.as_mut() else {
            return Err(gone());
        };
        f(client, &mut self.statements).map_err(|e| {
            let e = pg_error(e);
            if matches!(e, DbError::Postgres { closed: true, .. }) && self.in_transaction {
                self.transaction_lost = true;
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

fn prepared(
    client: &mut Client,
    cache: &mut HashMap<String, Statement>,
    sql: &str,
) -> Result<Statement, postgres::Error> {
    if let Some(stmt) = cache.get(sql) {
        return Ok(stmt.clone());
    }
    let stmt = client.prepare(&numbered_placeholders(sql))?;
    // Statements are few and fixed, but a bug building SQL text must not grow this forever.
    if cache.len() >= 256 {
        cache.clear();
    }
    cache.insert(sql.to_string(), stmt.clone());
    Ok(stmt)
}

fn refs(params: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

/// Makes the connection (TLS as configured) and puts it in the store's schema.
fn connect(target: &PgConnect) -> Result<Client, DbError> {
    let mut config = target.config.clone();
    if let Some(password) = &target.password {
        config.password(password.expose_secret());
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    config.application_name("postmaster-bot");
    let connect_error = |e: postgres::Error| {
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
    let mut client = match target.sslmode {
        PgSslMode::Disable => {
            config.ssl_mode(postgres::config::SslMode::Disable);
            config.connect(NoTls).map_err(connect_error)?
        }
        mode => {
            config.ssl_mode(if mode == PgSslMode::Require {
                postgres::config::SslMode::Require
            } else {
                postgres::config::SslMode::Prefer
            });
            let tls = crate::shell::tls::client_config(target.ca_file.as_deref()).map_err(|e| {
                DbError::Postgres {
                    message: e.to_string(),
                    code: None,
                    closed: false,
                }
            })?;
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new((*tls).clone());
            config.connect(tls).map_err(connect_error)?
        }
    };
    if let Some(schema) = &target.schema {
        let exists = client
            .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[schema])
            .map_err(pg_error)?
            .is_some();
        if !exists {
            // Two instances starting together may both try: the loser finds it made.
            if let Err(e) = client.batch_execute(&format!("CREATE SCHEMA {}", quoted(schema))) {
                let code = e.code().map(|c| c.code().to_string());
                if !matches!(code.as_deref(), Some("42P06" | "23505")) {
                    return Err(pg_error(e));
                }
            }
        }
        client
            .batch_execute(&format!("SET search_path TO {}", quoted(schema)))
            .map_err(pg_error)?;
    }
    Ok(client)
}

/// An identifier in double quotes (schema names come from the configuration).
pub(crate) fn quoted(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

pub(crate) fn pg_error(e: postgres::Error) -> DbError {
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
fn values(row: &postgres::Row) -> Result<Row, DbError> {
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
