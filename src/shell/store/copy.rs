//! `state copy`: every row of one store into another, empty one, on either database; and the
//! rows of every table in a stable order (`dump`), which is how a copy is checked.

use super::db::{params, Dialect, Row, Value};
use super::{sql, Store, StoreError};

/// Every table of the schema, parents before the tables that refer to them, with the columns
/// that order its rows.
const TABLES: &[(&str, &str)] = &[
    ("cases", "id"),
    ("case_ips", "case_id, ip"),
    ("case_messages", "message_id, case_id"),
    ("timeline", "id"),
    ("messages", "id"),
    ("outbox", "id"),
    ("quarantine", "id"),
    ("mailbox_sync", "mailbox"),
    ("templates", "id"),
    ("audit", "id"),
    ("health", "key"),
];

/// What a running deployment keeps about itself (who holds which mailbox), not state to move:
/// neither copied nor compared.
const RUNTIME_TABLES: &[&str] = &["leases", "instances"];

/// Rows read and written per statement: a store's outbox holds whole messages.
const PAGE: i64 = 500;

/// A table's rows, each as its columns' text (`None` for NULL).
pub type TableDump = (String, Vec<Vec<Option<String>>>);

/// How many rows of each table were copied.
#[derive(Debug, Clone, Default)]
pub struct CopyReport {
    pub tables: Vec<(String, u64)>,
}

impl Store {
    /// The schema's tables as the database lists them (without the migration bookkeeping).
    fn table_names(&self) -> Result<Vec<String>, StoreError> {
        let query = match self.dialect() {
            Dialect::Sqlite => {
                "SELECT name FROM sqlite_master WHERE type = 'table'
                 AND name NOT LIKE 'sqlite_%' ORDER BY name"
            }
            Dialect::Postgres => {
                "SELECT table_name::text FROM information_schema.tables
                 WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'
                   AND table_name <> 'schema_version' ORDER BY table_name"
            }
        };
        self.rows(query, &[])?
            .iter()
            .map(|r| Ok(col!(&self.path, r, 0)))
            .collect()
    }

    /// A table's columns, in their order.
    fn columns(&self, table: &str) -> Result<Vec<String>, StoreError> {
        let query = match self.dialect() {
            Dialect::Sqlite => "SELECT name FROM pragma_table_info(?1) ORDER BY cid",
            Dialect::Postgres => {
                "SELECT column_name::text FROM information_schema.columns
                 WHERE table_schema = current_schema() AND table_name = ?1
                 ORDER BY ordinal_position"
            }
        };
        self.rows(query, params![table])?
            .iter()
            .map(|r| Ok(col!(&self.path, r, 0)))
            .collect()
    }

    /// Checks that the copy knows every table of this store's schema.
    fn known_tables(&self) -> Result<(), StoreError> {
        for table in self.table_names()? {
            if !TABLES.iter().any(|(t, _)| *t == table) && !RUNTIME_TABLES.contains(&table.as_str())
            {
                return Err(StoreError::Refused {
                    path: self.path.clone(),
                    message: format!("table {table} is not known to `state copy`"),
                });
            }
        }
        Ok(())
    }

    fn page(
        &self,
        table: &str,
        columns: &str,
        order: &str,
        offset: i64,
    ) -> Result<Vec<Row>, StoreError> {
        self.rows(
            &format!("SELECT {columns} FROM {table} ORDER BY {order} LIMIT ?1 OFFSET ?2"),
            params![PAGE, offset],
        )
    }

    /// Every row of every table, each as its columns' text, tables in schema order: what two
    /// stores holding the same state agree on, whichever database they are in.
    pub fn dump(&self) -> Result<Vec<TableDump>, StoreError> {
        self.known_tables()?;
        let mut out = Vec::new();
        for (table, order) in TABLES {
            let columns = self.columns(table)?;
            let list = columns.join(", ");
            let mut rows = Vec::new();
            let mut offset = 0;
            loop {
                let page = self.page(table, &list, order, offset)?;
                let n = page.len() as i64;
                rows.extend(
                    page.iter()
                        .map(|r| (0..columns.len()).map(|i| r.text(i)).collect()),
                );
                if n < PAGE {
                    break;
                }
                offset += n;
            }
            out.push((table.to_string(), rows));
        }
        Ok(out)
    }
}

/// Copies every row of `from` into `to`, which must be empty, in one transaction on `to` (a
/// copy that fails leaves it empty). Ids are kept, so case numbers stay what people know.
pub fn copy_store(from: &mut Store, to: &mut Store) -> Result<CopyReport, StoreError> {
    from.known_tables()?;
    to.known_tables()?;
    for (table, _) in TABLES {
        let any = to.row(&format!("SELECT 1 FROM {table} LIMIT 1"), &[])?;
        if any.is_some() {
            return Err(StoreError::Refused {
                path: to.path.clone(),
                message: format!("the target is not empty (table {table} has rows)"),
            });
        }
    }
    // One snapshot of the source, however long the copy takes.
    let snapshot = match from.dialect() {
        Dialect::Sqlite => "BEGIN",
        Dialect::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
    };
    from.db.begin(snapshot).map_err(sql(&from.path))?;
    let copied = (|| {
        let tx = to.begin()?;
        let mut report = CopyReport::default();
        for (table, order) in TABLES {
            let columns = from.columns(table)?;
            let target = tx.store.columns(table)?;
            if columns != target {
                return Err(StoreError::Refused {
                    path: tx.store.path.clone(),
                    message: format!(
                        "table {table} has columns ({}) in the target but ({}) in the source",
                        target.join(", "),
                        columns.join(", ")
                    ),
                });
            }
            let list = columns.join(", ");
            let placeholders: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
            let insert = format!(
                "INSERT INTO {table} ({list}) VALUES ({})",
                placeholders.join(", ")
            );
            let mut offset = 0;
            let mut count = 0u64;
            loop {
                let page = from.page(table, &list, order, offset)?;
                for row in &page {
                    let values: Vec<Value> = row.0.clone();
                    tx.store.exec(&insert, &values)?;
                }
                count += page.len() as u64;
                if (page.len() as i64) < PAGE {
                    break;
                }
                offset += PAGE;
            }
            if tx.store.dialect() == Dialect::Postgres && order == &"id" && count > 0 {
                // Rows came with their ids: the identity must go on after the largest.
                tx.store.row(
                    &format!(
                        "SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) FROM {table}"
                    ),
                    &[],
                )?;
            }
            report.tables.push((table.to_string(), count));
        }
        tx.commit()?;
        Ok(report)
    })();
    let _ = from.db.end("ROLLBACK");
    copied
}
