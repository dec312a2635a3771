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
    pub ticket_id: String,
    pub ips: String,
    #[allow(dead_code)]
    pub thread: String,
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
    let config = config::parse(TEST_CONFIG, "test config").expect("test config is valid");
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
