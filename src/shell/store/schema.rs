//! The schema, as one list of migrations for both databases. Each is written in the SQL both
//! read alike, in SQLite's type names; [`for_postgres`] maps those names (64-bit integers,
//! identity keys, bytes). The version is SQLite's `user_version`, or the `schema_version`
//! table on PostgreSQL; two processes opening a new store together apply each step once.

use super::db::{Db, DbError, Dialect};
use super::{sql, StoreError};

/// Every migration, oldest first; a store's version is how many it has applied.
pub(crate) const MIGRATIONS: &[&str] = &[
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
    r#"
ALTER TABLE cases ADD COLUMN mailbox TEXT NOT NULL DEFAULT 'default';
ALTER TABLE outbox ADD COLUMN mailbox TEXT NOT NULL DEFAULT 'default';
CREATE INDEX cases_mailbox ON cases(mailbox, state);
CREATE INDEX outbox_mailbox_status ON outbox(mailbox, status);
CREATE TABLE leases (
    mailbox TEXT PRIMARY KEY,
    holder TEXT,
    token INTEGER NOT NULL DEFAULT 0,
    expires_at INTEGER NOT NULL DEFAULT 0,
    acquired_at INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    seen_at INTEGER NOT NULL,
    stopped_at INTEGER
);
"#,
    r#"
ALTER TABLE cases ADD COLUMN provider TEXT;
CREATE INDEX cases_provider ON cases(provider, state);
UPDATE cases SET provider = 'outlook' WHERE topic IN ('outlook_block', 'complaints', 'snds');
UPDATE cases SET provider = 'm365' WHERE topic = 'm365_block';
"#,
];

/// A migration in PostgreSQL's type names.
pub(crate) fn for_postgres(migration: &str) -> String {
    migration
        .replace(
            "INTEGER PRIMARY KEY",
            "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
        )
        .replace("INTEGER", "BIGINT")
        .replace("BLOB", "BYTEA")
}

/// The version of this build's schema.
pub(crate) fn latest() -> i64 {
    MIGRATIONS.len() as i64
}

/// Brings the store to this build's schema; refuses a store made by a newer build.
pub(crate) fn migrate(db: &Db, path: &str) -> Result<(), StoreError> {
    match db.dialect() {
        Dialect::Sqlite => migrate_sqlite(db, path),
        Dialect::Postgres => migrate_postgres(db, path),
    }
}

fn version(db: &Db, query: &str) -> Result<i64, DbError> {
    Ok(db
        .row(query, &[])?
        .map(|r| r.get::<Option<i64>>(0))
        .transpose()?
        .flatten()
        .unwrap_or(0))
}

fn too_new(path: &str, found: i64) -> Result<(), StoreError> {
    if found > latest() {
        return Err(StoreError::TooNew {
            path: path.to_string(),
            found,
            supported: latest(),
        });
    }
    Ok(())
}

fn migrate_sqlite(db: &Db, path: &str) -> Result<(), StoreError> {
    let found = version(db, "PRAGMA user_version").map_err(sql(path))?;
    too_new(path, found)?;
    for (i, migration) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        db.begin(Dialect::Sqlite.begin_write()).map_err(sql(path))?;
        // Read again under the write lock: another process opening the same store may have
        // applied this migration since the version was read above.
        let applied = (|| {
            if version(db, "PRAGMA user_version")? > i as i64 {
                return Ok(());
            }
            db.batch(migration)?;
            db.batch(&format!("PRAGMA user_version = {}", i + 1))
        })();
        match applied {
            Ok(()) => db.end("COMMIT").map_err(sql(path))?,
            Err(e) => {
                let _ = db.end("ROLLBACK");
                return Err(sql(path)(e));
            }
        }
    }
    Ok(())
}

fn migrate_postgres(db: &Db, path: &str) -> Result<(), StoreError> {
    // Every connection opens the store (each mailbox has one): one read, without a lock,
    // settles the usual case of a store already at this build's version.
    if let Ok(found) = version(db, "SELECT max(version) FROM schema_version") {
        if found == latest() {
            return Ok(());
        }
    }
    db.begin("BEGIN").map_err(sql(path))?;
    // One transaction under a lock of the schema's own: DDL is transactional on PostgreSQL, so
    // a second instance starting at the same moment waits, then finds every step applied.
    let applied = (|| -> Result<Result<(), StoreError>, DbError> {
        db.batch(
            "SELECT pg_advisory_xact_lock(hashtext(current_schema() || ':postmaster-bot:schema'));
             CREATE TABLE IF NOT EXISTS schema_version (
                 version BIGINT NOT NULL,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
             );",
        )?;
        let found = version(db, "SELECT max(version) FROM schema_version")?;
        if let Err(e) = too_new(path, found) {
            return Ok(Err(e));
        }
        for (i, migration) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            db.batch(&for_postgres(migration))?;
            db.exec(
                "INSERT INTO schema_version (version) VALUES (?1)",
                &[super::db::Value::Int(i as i64 + 1)],
            )?;
        }
        Ok(Ok(()))
    })();
    match applied {
        Ok(Ok(())) => db.end("COMMIT").map_err(sql(path)),
        Ok(Err(e)) => {
            let _ = db.end("ROLLBACK");
            Err(e)
        }
        Err(e) => {
            let _ = db.end("ROLLBACK");
            Err(sql(path)(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_gets_64_bit_integers_identity_keys_and_bytea() {
        let pg =
            for_postgres("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER, b BLOB NOT NULL);");
        assert_eq!(
            pg,
            "CREATE TABLE t (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, n BIGINT, \
             b BYTEA NOT NULL);"
        );
        for m in MIGRATIONS {
            let pg = for_postgres(m);
            assert!(!pg.contains("INTEGER") && !pg.contains("BLOB"), "{pg}");
        }
    }
}
