//! The state store on both databases: `state copy` between SQLite and PostgreSQL keeps every
//! row, refuses a target that holds anything, and new rows on the copy go on after the copied
//! ids.

use std::process::Command;

use postmaster_bot::pipeline::classify::Kind;
use postmaster_bot::pipeline::learned::Learned;
use postmaster_bot::shell::store::Store;

use crate::support::{apply_at_its_date, engine, fixtures, manifest, postgres_url};

/// A schema of its own on the test server, new on every run.
fn fresh_schema(tag: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        "{tag}_{}_{}_{n}",
        std::process::id(),
        postmaster_bot::clock::now()
    )
}

/// A store with a row in every table: the corpus replayed, a cursor, health, an audit line,
/// a quarantined message and a learned template.
fn filled(path: &std::path::Path) -> Store {
    let engine = engine();
    let mut store = Store::open(path).expect("store");
    for row in manifest("corpus") {
        let raw = std::fs::read(fixtures().join("corpus").join(&row.file)).expect("fixture");
        let prepared = engine.prepare(&raw);
        apply_at_its_date(&engine, &mut store, &row.file, &prepared)
            .unwrap_or_else(|e| panic!("{}: {e}", row.file));
    }
    store
        .set_cursor("postmaster@example.net@imap.example.net/INBOX", 7, 4242)
        .expect("cursor");
    store
        .set_healths(
            &[("last_sync", "1700000000"), ("mode", "idle")],
            1_700_000_000,
        )
        .expect("health");
    store
        .add_audit(
            "cli",
            "reject",
            Some(1),
            Some(1),
            "a \"quoted\" reason",
            1_700_000_001,
        )
        .expect("audit");
    store
        .quarantine(
            "INBOX/9",
            Some("<q@x>"),
            "abc",
            "bad bytes \u{fffd}",
            1_700_000_002,
        )
        .expect("quarantine");
    store
        .add_template(&Learned {
            id: 0,
            kind: Kind::MsNotQualified,
            shingles: vec![1, u64::MAX, 42],
            sample: "Not qualified ...".to_string(),
            source: "test".to_string(),
            created_at: 1_700_000_003,
        })
        .expect("template");
    store
}

fn copy(from: &str, to: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_postmaster-bot"))
        .args(["state", "copy", "--from", from, "--to", to])
        .env_remove("PGPASSWORD")
        .output()
        .expect("runs")
}

#[test]
fn state_copy_round_trips_sqlite_postgres_sqlite_row_for_row() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = dir.path().join("first.sqlite3");
    let back = dir.path().join("back.sqlite3");
    let original = filled(&first).dump().expect("dump");
    assert!(
        original
            .iter()
            .all(|(table, rows)| !rows.is_empty() || table == "case_messages"),
        "every table has rows to copy: {:?}",
        original
            .iter()
            .map(|(t, r)| (t, r.len()))
            .collect::<Vec<_>>()
    );
    let url = postgres_url(&fresh_schema("copy"));

    let there = copy(&first.display().to_string(), &url);
    assert!(
        there.status.success(),
        "{}",
        String::from_utf8_lossy(&there.stderr)
    );
    let said = String::from_utf8_lossy(&there.stdout);
    assert!(
        said.contains("row(s) copied") && !said.contains("password"),
        "{said}"
    );
    let again = copy(&first.display().to_string(), &url);
    assert_eq!(
        again.status.code(),
        Some(1),
        "a second copy into it is refused"
    );
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("not empty"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    let home = copy(&url, &back.display().to_string());
    assert!(
        home.status.success(),
        "{}",
        String::from_utf8_lossy(&home.stderr)
    );
    let round = Store::open(&back).expect("back").dump().expect("dump");
    assert_eq!(
        round, original,
        "SQLite -> PostgreSQL -> SQLite keeps every row"
    );

    // On the PostgreSQL copy, a new case is numbered after the copied ones.
    let state = postmaster_bot::config::StateConfig::from_argument(&url).expect("url");
    let mut pg = postmaster_bot::shell::store::open_state(&state).expect("connects");
    assert_eq!(pg.dump().expect("dump"), original);
    let highest = pg
        .cases()
        .expect("cases")
        .iter()
        .map(|c| c.id)
        .max()
        .unwrap_or(0);
    let mut case = pg.cases().expect("cases").remove(0);
    case.id = 0;
    case.ticket_id = Some("SRX9999999999ID".to_string());
    let tx = pg.begin().expect("tx");
    let id = tx.save_case(&mut case).expect("insert after copy");
    tx.commit().expect("commit");
    assert_eq!(id, highest + 1);
}

#[test]
fn state_copy_refuses_a_missing_source_and_names_a_bad_url() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = copy(
        &dir.path().join("none.sqlite3").display().to_string(),
        &dir.path().join("to.sqlite3").display().to_string(),
    );
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("does not exist"));
    let bad = copy(
        "postgres://pmb@127.0.0.1:15432/pmb?schema=Bad-Name",
        &dir.path().join("to.sqlite3").display().to_string(),
    );
    assert_ne!(bad.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("state.schema"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

fn processed(hash: &str) -> postmaster_bot::shell::store::ProcessedMessage<'_> {
    postmaster_bot::shell::store::ProcessedMessage {
        message_id: None,
        content_hash: hash,
        source: "test",
        kind: "other",
        ticket_id: None,
        ips: &[],
        trusted: false,
        case_id: None,
        action: postmaster_bot::pipeline::case::Action::None,
        reason: "test",
        evidence_json: "[]",
        damage_json: "[]",
        excerpt: "",
    }
}

/// A store on the test PostgreSQL, in a schema of its own.
fn postgres_store(tag: &str) -> Store {
    crate::support::postgres_store(&fresh_schema(tag))
}

fn messages(store: &Store) -> i64 {
    store
        .select("SELECT count(*) FROM messages", &[])
        .expect("count")[0]
        .int(0)
        .expect("a count")
}

/// Writes are pipelined on PostgreSQL: one that fails is still reported by the transaction's
/// commit, which rolls everything back; in a batch, the batch's commit does.
#[test]
fn a_failed_pipelined_write_fails_the_commit_and_leaves_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    for mut store in [
        postgres_store("pipeline"),
        Store::open(&dir.path().join("s.sqlite3")).expect("sqlite"),
    ] {
        let tx = store.begin().expect("begin");
        tx.add_message(&processed("same"), 1).expect("first");
        // The duplicate fails on the server (unique content hash); SQLite says so at once.
        let second = tx.add_message(&processed("same"), 1);
        let committed = second.and_then(|()| tx.commit());
        assert!(
            committed.is_err(),
            "{:?}: the commit must fail",
            store.dialect()
        );
        assert_eq!(
            messages(&store),
            0,
            "{:?}: nothing written",
            store.dialect()
        );

        // The store goes on: the next transaction works.
        let tx = store.begin().expect("begin again");
        tx.add_message(&processed("other"), 1).expect("write");
        tx.commit().expect("commit");
        assert_eq!(messages(&store), 1);

        // In a batch, a message whose write failed fails the batch's commit.
        let mut batch = store.batch().expect("batch");
        {
            let tx = batch.begin().expect("savepoint");
            tx.add_message(&processed("third"), 1).expect("write");
            tx.commit().expect("release");
        }
        let failed = {
            let tx = batch.begin().expect("savepoint");
            let dup = tx.add_message(&processed("other"), 1);
            dup.and_then(|()| tx.commit())
        };
        let result = failed.and_then(|()| batch.commit());
        assert!(result.is_err(), "{:?}", store.dialect());
        assert_eq!(
            messages(&store),
            1,
            "{:?}: the batch left nothing",
            store.dialect()
        );
    }
}

/// In a batch each message has a savepoint (on PostgreSQL sent only once something needs it):
/// a message given up undoes exactly its own writes, whether it read in between or not, and a
/// failure of an earlier message is never undone by rolling back a later one.
#[test]
fn a_message_given_up_in_a_batch_undoes_only_its_own_writes() {
    let dir = tempfile::tempdir().expect("temp dir");
    for mut store in [
        postgres_store("savepoint"),
        Store::open(&dir.path().join("s.sqlite3")).expect("sqlite"),
    ] {
        let dialect = store.dialect();
        let mut batch = store.batch().expect("batch");
        {
            let tx = batch.begin().expect("savepoint");
            tx.add_message(&processed("kept-1"), 1).expect("write");
            tx.commit().expect("release");
        }
        {
            // Written, never read back: given up.
            let tx = batch.begin().expect("savepoint");
            tx.add_message(&processed("dropped-1"), 1).expect("write");
        }
        {
            // Written, read (which sends the savepoint), written again: given up.
            let tx = batch.begin().expect("savepoint");
            tx.add_message(&processed("dropped-2"), 1).expect("write");
            let seen = tx.seen(None, "dropped-2").expect("read");
            assert!(seen, "{dialect:?}: a message sees its own writes");
            tx.add_message(&processed("dropped-3"), 1).expect("write");
        }
        {
            let tx = batch.begin().expect("savepoint");
            assert!(!tx.seen(None, "dropped-1").expect("read"), "{dialect:?}");
            tx.add_message(&processed("kept-2"), 1).expect("write");
            tx.commit().expect("release");
        }
        batch.commit().expect("commit");
        let hashes: Vec<String> = store
            .select("SELECT content_hash FROM messages ORDER BY id", &[])
            .expect("rows")
            .iter()
            .map(|r| r.text(0).expect("text"))
            .collect();
        assert_eq!(hashes, ["kept-1", "kept-2"], "{dialect:?}");

        // A message whose write failed (the server says so only later), then one given up
        // after a read: the batch still fails as a whole.
        let mut batch = store.batch().expect("batch");
        let mut failed = false;
        {
            let tx = batch.begin().expect("savepoint");
            let dup = tx.add_message(&processed("kept-1"), 1);
            failed |= dup.and_then(|()| tx.commit()).is_err();
        }
        {
            let tx = batch.begin().expect("savepoint");
            let _ = tx.add_message(&processed("later"), 1);
            failed |= tx.seen(None, "later").is_err();
        }
        failed |= batch.commit().is_err();
        assert!(failed, "{dialect:?}: the failure was reported");
        assert_eq!(
            messages(&store),
            2,
            "{dialect:?}: nothing of that batch stayed"
        );
    }
}

/// A connection lost inside a transaction loses the transaction, never part of it, and the
/// store connects again for the next one.
#[test]
fn a_connection_lost_inside_a_transaction_fails_it_and_the_next_one_reconnects() {
    let mut store = postgres_store("lost");
    let tx = store.begin().expect("begin");
    tx.add_message(&processed("before"), 1).expect("write");
    let pid = tx_backend_pid(&tx);
    let killer = postgres_store("killer");
    killer
        .select("SELECT pg_terminate_backend(?1)", &[pid])
        .expect("terminate");
    let after = tx.add_message(&processed("after"), 1);
    let committed = after.and_then(|()| tx.commit());
    let e = committed.expect_err("the transaction is gone");
    assert!(
        e.is_transient(),
        "a lost connection is worth another try: {e}"
    );
    assert_eq!(
        messages(&store),
        0,
        "reconnected, and nothing of it was written"
    );
    let tx = store.begin().expect("begin on a new connection");
    tx.add_message(&processed("again"), 1).expect("write");
    tx.commit().expect("commit");
    assert_eq!(messages(&store), 1);
}

fn tx_backend_pid(
    tx: &postmaster_bot::shell::store::StoreTx<'_>,
) -> postmaster_bot::shell::store::Value {
    let rows = tx.select("SELECT pg_backend_pid()", &[]).expect("pid");
    postmaster_bot::shell::store::Value::Int(rows[0].int(0).expect("an integer pid"))
}

/// TLS to PostgreSQL: `verify-full` against the test server's own CA is encrypted; without that
/// CA the same connection is refused; `disable` is plain.
#[test]
fn a_tls_connection_to_postgres_checks_the_certificate_and_name() {
    let crate::support::Backend::Postgres { url, password } = crate::support::postgres_server()
    else {
        unreachable!("postgres_server returns a server")
    };
    let ca = crate::support::postgres_ca();
    let schema = fresh_schema("tls");
    let connect = |mode: &str, ca_file: Option<&str>| {
        let text = format!(
            "[state]\nurl = \"{}\"\nschema = \"{schema}\"\nsslmode = \"{mode}\"\n{}",
            url.replace("127.0.0.1", "localhost"),
            ca_file
                .map(|c| format!("ca_file = \"{c}\"\n"))
                .unwrap_or_default()
        );
        let config = postmaster_bot::config::parse(&text, "test").expect("valid");
        let postmaster_bot::config::StateConfig::Postgres(pg) = config.state else {
            unreachable!("a postgres:// url")
        };
        let mut target = postmaster_bot::shell::store::pg_connect(&pg).expect("settings");
        target.password = Some(password.clone().into());
        Store::connect(target)
    };
    let encrypted = |store: &Store| {
        store
            .select(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .expect("pg_stat_ssl")[0]
            .int(0)
            == Some(1)
    };
    let checked = connect("verify-full", Some(&ca)).expect("TLS with the test CA");
    assert!(encrypted(&checked), "the connection is TLS");
    let refused = match connect("require", None) {
        Ok(_) => panic!("an unknown CA must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(refused.to_lowercase().contains("certificate"), "{refused}");
    let plain = connect("disable", None).expect("plain");
    assert!(!encrypted(&plain));
}

/// The configuration shown in README's "Several mailboxes and hosts" is valid as written.
#[test]
fn the_config_blocks_of_several_mailboxes_and_hosts_in_the_readme_are_valid() {
    let readme =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .expect("README");
    let section = readme
        .split("\n## Several mailboxes and hosts")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("the section");
    let blocks: Vec<&str> = section
        .split("```toml\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .collect();
    assert_eq!(blocks.len(), 2, "{blocks:?}");
    for block in blocks {
        if let Err(e) = postmaster_bot::config::parse(block, "README.md") {
            panic!("README block does not parse: {e}\n{block}");
        }
    }
}
