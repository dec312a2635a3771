//! The two databases a store can live in, behind one small interface: a statement with `?N`
//! parameters in, rows of owned values out. The SQL the store writes is the subset both
//! SQLite and PostgreSQL read the same way; the few places where they differ ask the
//! [`Dialect`].

use super::postgres::Pg;

/// A value bound to a parameter or read from a column. Booleans are integers (0/1), as SQLite
/// keeps them and as the schema declares them on both databases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

/// Turns a Rust value into a parameter (see `params!`).
pub(crate) trait ToValue {
    fn to_value(&self) -> Value;
}

impl ToValue for i64 {
    fn to_value(&self) -> Value {
        Value::Int(*self)
    }
}
impl ToValue for i32 {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}
impl ToValue for u32 {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}
impl ToValue for bool {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}
impl ToValue for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_string())
    }
}
impl ToValue for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}
impl ToValue for [u8] {
    fn to_value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}
impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value {
        Value::Blob(self.clone())
    }
}
impl ToValue for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
}
impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}
impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value {
        self.as_ref().map_or(Value::Null, ToValue::to_value)
    }
}

/// The parameters of a statement, in order: `params![id, status, reason]`.
macro_rules! params {
    ($($value:expr),* $(,)?) => {
        &[$($crate::shell::store::db::ToValue::to_value(&$value)),*][..]
    };
}
pub(crate) use params;

/// A column could not be read as the type asked for.
#[derive(Debug, Clone, thiserror::Error)]
#[error("column {column} holds {found}, expected {expected}")]
pub struct DecodeError {
    column: usize,
    found: &'static str,
    expected: &'static str,
}

/// Reads a Rust value out of a column.
pub(crate) trait FromValue: Sized {
    const EXPECTED: &'static str;
    fn from_value(value: &Value) -> Option<Self>;
}

impl FromValue for i64 {
    const EXPECTED: &'static str = "an integer";
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
}
impl FromValue for u32 {
    const EXPECTED: &'static str = "an integer from 0 to 2^32-1";
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Int(i) => u32::try_from(*i).ok(),
            _ => None,
        }
    }
}
impl FromValue for bool {
    const EXPECTED: &'static str = "a boolean";
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Int(i) => Some(*i != 0),
            _ => None,
        }
    }
}
impl FromValue for String {
    const EXPECTED: &'static str = "text";
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
}
impl FromValue for Vec<u8> {
    const EXPECTED: &'static str = "bytes";
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Blob(b) => Some(b.clone()),
            // An empty blob written by SQLite's zeroblob or a text literal reads back as text.
            Value::Text(s) => Some(s.clone().into_bytes()),
            _ => None,
        }
    }
}
impl<T: FromValue> FromValue for Option<T> {
    const EXPECTED: &'static str = T::EXPECTED;
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Null => Some(None),
            other => T::from_value(other).map(Some),
        }
    }
}

/// One row of a result.
#[derive(Debug, Clone)]
pub struct Row(pub(crate) Vec<Value>);

impl Row {
    /// The value of column `i` (from 0) as `T`.
    pub(crate) fn get<T: FromValue>(&self, i: usize) -> Result<T, DecodeError> {
        let value = self.0.get(i).unwrap_or(&Value::Null);
        T::from_value(value).ok_or(DecodeError {
            column: i,
            found: match value {
                Value::Null => "NULL",
                Value::Int(_) => "an integer",
                Value::Text(_) => "text",
                Value::Blob(_) => "bytes",
            },
            expected: T::EXPECTED,
        })
    }

    /// Column `i` as text, whatever it holds (for tests and tools that print rows).
    pub fn text(&self, i: usize) -> Option<String> {
        match self.0.get(i)? {
            Value::Null => None,
            Value::Int(n) => Some(n.to_string()),
            Value::Text(s) => Some(s.clone()),
            Value::Blob(b) => Some(String::from_utf8_lossy(b).into_owned()),
        }
    }

    /// How many columns the row has.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Column `i` as an integer, if it holds one.
    pub fn int(&self, i: usize) -> Option<i64> {
        self.get(i).ok()
    }
}

/// A statement failed in the database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("{message}")]
    Postgres {
        message: String,
        /// The SQLSTATE, when the server answered with an error.
        code: Option<String>,
        /// The connection is gone: another try on a new one may succeed.
        closed: bool,
    },
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

impl DbError {
    /// SQLite's "database is busy/locked": another process holds the write lock too long.
    pub(crate) fn is_busy(&self) -> bool {
        matches!(self, DbError::Sqlite(rusqlite::Error::SqliteFailure(e, _))
            if matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
    }

    /// Whether a new try (on a new connection, or after a conflicting transaction ended) can
    /// succeed: the server went away, or PostgreSQL broke a deadlock or serialization conflict.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            DbError::Postgres { closed: true, .. } => true,
            DbError::Postgres {
                code: Some(code), ..
            } => {
                // 40001 serialization_failure, 40P01 deadlock_detected, 57P01 admin_shutdown,
                // 08xxx connection exceptions, 53xxx insufficient resources.
                code == "40001"
                    || code == "40P01"
                    || code == "57P01"
                    || code.starts_with("08")
                    || code.starts_with("53")
            }
            _ => self.is_busy(),
        }
    }
}

/// Where the SQL of the two databases differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The aggregate that joins text with a separator.
    pub(crate) fn group_concat(self, expr: &str, separator: &str) -> String {
        match self {
            Dialect::Sqlite => format!("group_concat({expr}, '{separator}')"),
            Dialect::Postgres => format!("string_agg({expr}, '{separator}')"),
        }
    }

    /// `INDEXED BY index` where SQLite's planner needs the hint; nothing on PostgreSQL.
    pub(crate) fn indexed_by(self, index: &str) -> String {
        match self {
            Dialect::Sqlite => format!("INDEXED BY {index}"),
            Dialect::Postgres => String::new(),
        }
    }

    /// The database server's clock in whole seconds: leases are timed by one clock, however
    /// far apart the hosts' clocks are.
    pub(crate) fn now(self) -> &'static str {
        match self {
            Dialect::Sqlite => "CAST(strftime('%s', 'now') AS INTEGER)",
            Dialect::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS BIGINT)",
        }
    }

    /// Starts a transaction that writes: SQLite takes its write lock at once, so two writers
    /// never both read and then fail to upgrade.
    pub(crate) fn begin_write(self) -> &'static str {
        match self {
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            Dialect::Postgres => "BEGIN",
        }
    }
}

/// A connection to either database.
pub(crate) enum Db {
    Sqlite(rusqlite::Connection),
    Postgres(Pg),
}

impl Db {
    pub(crate) fn dialect(&self) -> Dialect {
        match self {
            Db::Sqlite(_) => Dialect::Sqlite,
            Db::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Runs a statement; returns how many rows it changed.
    pub(crate) fn exec(&self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
        match self {
            Db::Sqlite(conn) => {
                let mut stmt = conn.prepare_cached(sql)?;
                Ok(stmt.execute(rusqlite::params_from_iter(params.iter()))? as u64)
            }
            Db::Postgres(pg) => pg.exec(sql, params),
        }
    }

    /// Runs a statement whose changed-row count nobody reads. On PostgreSQL, inside a
    /// transaction, it is pipelined: a failure is reported by the next statement waited for,
    /// at the latest the transaction's end.
    pub(crate) fn write(&self, sql: &str, params: &[Value]) -> Result<(), DbError> {
        match self {
            Db::Sqlite(_) => self.exec(sql, params).map(drop),
            Db::Postgres(pg) => pg.write(sql, params),
        }
    }

    /// Runs a query; returns all its rows.
    pub(crate) fn rows(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>, DbError> {
        match self {
            Db::Sqlite(conn) => {
                let mut stmt = conn.prepare_cached(sql)?;
                let width = stmt.column_count();
                let mut rows = stmt.query(rusqlite::params_from_iter(params.iter()))?;
                let mut out = Vec::new();
                while let Some(row) = rows.next()? {
                    let mut values = Vec::with_capacity(width);
                    for i in 0..width {
                        values.push(sqlite_value(row.get_ref(i)?, i)?);
                    }
                    out.push(Row(values));
                }
                Ok(out)
            }
            Db::Postgres(pg) => pg.rows(sql, params),
        }
    }

    /// The first row of a query, if any.
    pub(crate) fn row(&self, sql: &str, params: &[Value]) -> Result<Option<Row>, DbError> {
        Ok(self.rows(sql, params)?.into_iter().next())
    }

    /// Starts a transaction (`BEGIN` or `BEGIN IMMEDIATE`).
    pub(crate) fn begin(&self, sql: &'static str) -> Result<(), DbError> {
        match self {
            Db::Sqlite(conn) => Ok(conn.execute_batch(sql)?),
            Db::Postgres(pg) => pg.begin(sql),
        }
    }

    /// Ends a transaction: `COMMIT` or `ROLLBACK`.
    pub(crate) fn end(&self, sql: &'static str) -> Result<(), DbError> {
        match self {
            Db::Sqlite(conn) => Ok(conn.execute_batch(sql)?),
            Db::Postgres(pg) => pg.end(sql),
        }
    }

    /// Opens the savepoint one message is handled in, inside a transaction. On PostgreSQL it
    /// is sent only when something needs it (see `postgres::Session`).
    pub(crate) fn savepoint(&self) -> Result<(), DbError> {
        match self {
            Db::Sqlite(conn) => Ok(conn.execute_batch("SAVEPOINT message")?),
            Db::Postgres(pg) => pg.savepoint(),
        }
    }

    /// Keeps the message's writes.
    pub(crate) fn release(&self) -> Result<(), DbError> {
        match self {
            Db::Sqlite(conn) => Ok(conn.execute_batch("RELEASE SAVEPOINT message")?),
            Db::Postgres(pg) => pg.release(),
        }
    }

    /// Undoes the message's writes.
    pub(crate) fn rollback_to(&self) -> Result<(), DbError> {
        match self {
            Db::Sqlite(conn) => {
                Ok(conn.execute_batch("ROLLBACK TO SAVEPOINT message; RELEASE SAVEPOINT message")?)
            }
            Db::Postgres(pg) => pg.rollback_to(),
        }
    }

    /// Runs statements without parameters (migrations, transaction control).
    pub(crate) fn batch(&self, sql: &str) -> Result<(), DbError> {
        match self {
            Db::Sqlite(conn) => Ok(conn.execute_batch(sql)?),
            Db::Postgres(pg) => pg.batch(sql),
        }
    }
}

fn sqlite_value(value: rusqlite::types::ValueRef<'_>, column: usize) -> Result<Value, DbError> {
    use rusqlite::types::ValueRef;
    Ok(match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        // No column is REAL; an integer written through a float expression reads back whole.
        ValueRef::Real(f) => Value::Int(f as i64),
        ValueRef::Text(t) => {
            Value::Text(String::from_utf8(t.to_vec()).map_err(|_| DecodeError {
                column,
                found: "text that is not UTF-8",
                expected: "text",
            })?)
        }
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    })
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(*i),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

/// `?N` placeholders as PostgreSQL's `$N`, outside quoted text.
pub(crate) fn numbered_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    for c in sql.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted => out.push('$'),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_renumbered_outside_quotes_only() {
        assert_eq!(
            numbered_placeholders("SELECT '?1' FROM t WHERE a = ?1 AND b = ?12"),
            "SELECT '?1' FROM t WHERE a = $1 AND b = $12"
        );
    }

    #[test]
    fn a_column_of_another_type_is_an_error_naming_it() {
        let row = Row(vec![Value::Text("x".into()), Value::Null]);
        let e = row.get::<i64>(0).expect_err("text is no integer");
        assert_eq!(e.to_string(), "column 0 holds text, expected an integer");
        assert_eq!(row.get::<Option<i64>>(1).ok(), Some(None));
        assert!(row.get::<i64>(1).is_err());
        assert!(row.get::<i64>(7).is_err(), "a missing column is no panic");
    }
}
