//! Shared helpers: fixture folders, manifests and a test engine.

use std::path::{Path, PathBuf};

use postmaster_bot::config;
use postmaster_bot::shell::engine::{Engine, HandleError, Handled, OutboxStatus, Prepared};
use postmaster_bot::shell::store::Store;

/// One manifest row.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Row {
    pub file: String,
    pub kind: String,
    #[serde(default)]
    pub ticket_id: String,
    pub ips: String,
    #[allow(dead_code)]
    #[serde(default)]
    pub thread: String,
    /// The receiver or block list (sets of other receivers' bounces only).
    #[serde(default)]
    pub provider: Option<String>,
    /// The provider's code for the refusal (the same sets).
    #[serde(default)]
    pub block_code: Option<String>,
    pub expect_action: String,
    #[allow(dead_code)]
    pub notes: String,
}

impl Row {
    pub fn ips(&self) -> Vec<String> {
        let mut ips: Vec<String> = self
            .ips
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        ips.sort();
        ips
    }
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Rows of `tests/fixtures/<set>/manifest.csv`; panics (fails the test) when it is missing.
pub fn manifest(set: &str) -> Vec<Row> {
    let path = fixtures().join(set).join("manifest.csv");
    let mut reader = csv::Reader::from_path(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let rows: Vec<Row> = reader
        .deserialize()
        .map(|r| r.unwrap_or_else(|e| panic!("bad row in {}: {e}", path.display())))
        .collect();
    assert!(!rows.is_empty(), "{} has no rows", path.display());
    rows
}

/// The config the corpus assumes: our MX hosts are trusted, our identity is example.net's.
pub const TEST_CONFIG: &str = r#"
mode = "draft"
[identity]
from = "Dana Whitfield <postmaster@example.net>"
organization = "Example Net Hosting"
operator = "noc@example.net"
message_id_domain = "postmaster.example.net"
[trust]
authserv_ids = ["mx1.example.net", "mx2.example.net"]
reporting_mtas = ["example.net"]
"#;

pub fn engine() -> Engine {
    engine_with(TEST_CONFIG)
}

/// An engine on another config text.
pub fn engine_with(text: &str) -> Engine {
    let config = config::parse(text, "test config").expect("test config is valid");
    Engine::new(config).expect("engine builds")
}

/// Applies a prepared fixture as if it had arrived at its own `Date:`, as `replay` does.
pub fn apply_at_its_date(
    engine: &Engine,
    store: &mut Store,
    source: &str,
    prepared: &Prepared,
) -> Result<Handled, HandleError> {
    let now = prepared.inbound.date.unwrap_or(0);
    engine.apply(store, source, prepared, now, OutboxStatus::Replayed)
}

/// The state store the tests run on: SQLite files (the default), or schemas of the test
/// PostgreSQL server when `POSTMASTER_BOT_TEST_STORE=postgres` (how `scripts/test` runs the
/// suite a second time).
pub enum Backend {
    Sqlite,
    Postgres { url: String, password: String },
}

pub fn backend() -> Backend {
    match std::env::var("POSTMASTER_BOT_TEST_STORE").as_deref() {
        Ok("postgres") => postgres_server(),
        Ok("sqlite") | Err(_) => Backend::Sqlite,
        Ok(other) => panic!("POSTMASTER_BOT_TEST_STORE={other}: use sqlite or postgres"),
    }
}

/// A value of the test PostgreSQL's env file (`scripts/postgres up`); fails the test, saying
/// how to start the server, when it is not running.
fn postgres_env(key: &str) -> String {
    let dir = std::env::var("POSTMASTER_BOT_POSTGRES")
        .unwrap_or_else(|_| "/tmp/postmaster-bot-postgres".to_string());
    let env_file = Path::new(&dir).join("env");
    let text = std::fs::read_to_string(&env_file).unwrap_or_else(|_| {
        panic!(
            "the test PostgreSQL is not running ({} is missing): start it with \
             `scripts/postgres up` (as root), or run `scripts/test`, which starts it",
            env_file.display()
        )
    });
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| {
            panic!(
                "{key} missing in {}: run `scripts/postgres up` (as root) again",
                env_file.display()
            )
        })
        .to_string()
}

/// The test PostgreSQL server.
pub fn postgres_server() -> Backend {
    Backend::Postgres {
        url: postgres_env("POSTGRES_URL"),
        password: postgres_env("POSTGRES_PASSWORD"),
    }
}

/// The CA the test PostgreSQL's certificate is signed by (`scripts/postgres` makes it).
pub fn postgres_ca() -> String {
    postgres_env("POSTGRES_CA_CERT")
}

/// A URL naming the test server's `schema`, with the password in it (as a command line may
/// carry it).
pub fn postgres_url(schema: &str) -> String {
    let (url, password) = (
        postgres_env("POSTGRES_URL"),
        postgres_env("POSTGRES_PASSWORD"),
    );
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (user, host) = rest.split_once('@').expect("a user in the URL");
    format!("{scheme}://{user}:{password}@{host}?schema={schema}")
}

/// A store in `schema` of the test PostgreSQL (created when missing).
pub fn postgres_store(schema: &str) -> Store {
    let state = config::StateConfig::from_argument(&postgres_url(schema)).expect("test url");
    postmaster_bot::shell::store::open_state(&state).expect("the test PostgreSQL store opens")
}

/// The schema a test's folder gets on PostgreSQL: one per folder, so tests running side by
/// side never share state, and the same one each time the folder's config is written.
fn schema_of(dir: &Path) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(dir.display().to_string().as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("t_{hex}")
}

/// The `[state]` section of a test's config in `dir` (a password file is written beside it).
pub fn state_section(dir: &Path) -> String {
    match backend() {
        Backend::Sqlite => "[state]\npath = \"state.sqlite3\"\n".to_string(),
        Backend::Postgres { url, password } => {
            std::fs::write(dir.join("pg-password"), password).expect("write pg-password");
            format!(
                "[state]\nurl = \"{url}\"\nschema = \"{}\"\npassword_file = \"pg-password\"\n",
                schema_of(dir)
            )
        }
    }
}

/// A `--state` argument naming the store of a test's folder (a password in the URL, as a
/// command line may carry it).
pub fn state_argument(dir: &Path) -> String {
    match backend() {
        Backend::Sqlite => dir.join("state.sqlite3").display().to_string(),
        Backend::Postgres { .. } => postgres_url(&schema_of(dir)),
    }
}

/// Opens the store a test's config in `dir` names.
pub fn test_store(dir: &Path) -> Store {
    match backend() {
        Backend::Sqlite => Store::open(&dir.join("state.sqlite3")).expect("store opens"),
        Backend::Postgres { .. } => postgres_store(&schema_of(dir)),
    }
}

/// Deletes a test's state store, as a lost volume or a new host would.
pub fn lose_test_store(dir: &Path) {
    match backend() {
        Backend::Sqlite => {
            for f in ["state.sqlite3", "state.sqlite3-wal", "state.sqlite3-shm"] {
                let _ = std::fs::remove_file(dir.join(f));
            }
        }
        Backend::Postgres { .. } => {
            let store = test_store(dir);
            store
                .execute(&format!("DROP SCHEMA {} CASCADE", schema_of(dir)), &[])
                .expect("drop the test's schema");
        }
    }
}
