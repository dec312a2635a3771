//! Mailbox leases: which instance works which mailbox when several share one store. A lease
//! row holds the holder, an expiry on the database's clock and a fencing token that grows by
//! one with every new holder; the transition that lets a row's mail leave checks it in the same
//! statement (`Store::transition_outbox`), so a holder that was paused or cut off past its
//! expiry can never send, even before it notices.

use serde::Serialize;

use super::db::params;
use super::{Store, StoreError};

/// Outbox statuses a row enters just before its mail goes to a server: entering one needs the
/// lease.
pub const LEAVING: &[&str] = &["sending", "drafting", "mirroring"];

/// The lease a store connection works under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub mailbox: String,
    pub holder: String,
    pub token: i64,
}

/// A lease row, as `instances` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LeaseLine {
    pub mailbox: String,
    pub holder: Option<String>,
    pub token: i64,
    /// Seconds left on the database's clock (negative: expired).
    pub expires_in: i64,
}

/// An instance, as `instances` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceLine {
    pub id: String,
    pub host: String,
    pub pid: i64,
    pub started_at: i64,
    /// Seconds since it last said it was alive (database clock).
    pub seen_ago: i64,
    pub stopped_at: Option<i64>,
}

impl Store {
    /// Works under `fence` from now on: rows leave only while it holds.
    pub fn set_fence(&mut self, fence: Fence) {
        self.fence = Some(fence);
    }

    /// The database's clock, in seconds.
    pub fn db_now(&self) -> Result<i64, StoreError> {
        Ok(self
            .value(&format!("SELECT {}", self.dialect().now()), &[])?
            .unwrap_or(0))
    }

    /// Takes the lease on `mailbox` when it is free or expired, or held by `dead` (an instance
    /// known to have ended); returns the new fencing token.
    pub fn acquire_lease(
        &self,
        mailbox: &str,
        holder: &str,
        ttl_secs: i64,
        dead: Option<&str>,
    ) -> Result<Option<i64>, StoreError> {
        self.exec(
            "INSERT INTO leases (mailbox) VALUES (?1) ON CONFLICT DO NOTHING",
            params![mailbox],
        )?;
        let now = self.dialect().now();
        self.value(
            &format!(
                "UPDATE leases SET holder = ?2, token = token + 1, expires_at = {now} + ?3,
                        acquired_at = {now}
                 WHERE mailbox = ?1
                   AND (holder IS NULL OR expires_at <= {now} OR holder = ?4)
                 RETURNING token"
            ),
            params![mailbox, holder, ttl_secs, dead],
        )
    }

    /// Extends a lease still held; false when it was lost (expired, or taken since).
    pub fn renew_lease(&self, fence: &Fence, ttl_secs: i64) -> Result<bool, StoreError> {
        let now = self.dialect().now();
        let changed = self.exec(
            &format!(
                "UPDATE leases SET expires_at = {now} + ?4
                 WHERE mailbox = ?1 AND holder = ?2 AND token = ?3 AND expires_at > {now}"
            ),
            params![fence.mailbox, fence.holder, fence.token, ttl_secs],
        )?;
        Ok(changed == 1)
    }

    /// Hands a lease back (clean shutdown, or a mailbox given to a less busy instance): another
    /// instance may take it at once.
    pub fn release_lease(&self, fence: &Fence) -> Result<(), StoreError> {
        self.exec(
            "UPDATE leases SET holder = NULL, expires_at = 0
             WHERE mailbox = ?1 AND holder = ?2 AND token = ?3",
            params![fence.mailbox, fence.holder, fence.token],
        )?;
        Ok(())
    }

    /// Whether `fence` still holds (not expired, not taken).
    pub fn holds(&self, fence: &Fence) -> Result<bool, StoreError> {
        Ok(self
            .row(
                &format!(
                    "SELECT 1 FROM leases WHERE mailbox = ?1 AND holder = ?2 AND token = ?3
                       AND expires_at > {}",
                    self.dialect().now()
                ),
                params![fence.mailbox, fence.holder, fence.token],
            )?
            .is_some())
    }

    /// Says this instance is alive (first call: registers it).
    pub fn heartbeat(&self, id: &str, host: &str, pid: u32, now: i64) -> Result<(), StoreError> {
        let clock = self.dialect().now();
        self.exec(
            &format!(
                "INSERT INTO instances (id, host, pid, started_at, seen_at) VALUES (?1, ?2, ?3, ?4, {clock})
                 ON CONFLICT(id) DO UPDATE SET seen_at = {clock}, stopped_at = NULL"
            ),
            params![id, host, pid, now],
        )?;
        Ok(())
    }

    /// Marks this instance stopped (clean shutdown).
    pub fn instance_stopped(&self, id: &str, now: i64) -> Result<(), StoreError> {
        self.exec(
            "UPDATE instances SET stopped_at = ?2 WHERE id = ?1",
            params![id, now],
        )?;
        Ok(())
    }

    /// How many instances said they were alive within `secs` (this one included).
    pub fn live_instances(&self, secs: i64) -> Result<i64, StoreError> {
        Ok(self
            .value(
                &format!(
                    "SELECT count(*) FROM instances WHERE stopped_at IS NULL AND seen_at > {} - ?1",
                    self.dialect().now()
                ),
                params![secs],
            )?
            .unwrap_or(1))
    }

    /// Every lease, by mailbox.
    pub fn leases(&self) -> Result<Vec<LeaseLine>, StoreError> {
        self.rows(
            &format!(
                "SELECT mailbox, holder, token, expires_at - {} FROM leases ORDER BY mailbox",
                self.dialect().now()
            ),
            &[],
        )?
        .iter()
        .map(|r| {
            Ok(LeaseLine {
                mailbox: col!(&self.path, r, 0),
                holder: col!(&self.path, r, 1),
                token: col!(&self.path, r, 2),
                expires_in: col!(&self.path, r, 3),
            })
        })
        .collect()
    }

    /// Every instance that ran on this store in the last `days` days, newest first.
    pub fn instances(&self, days: i64) -> Result<Vec<InstanceLine>, StoreError> {
        let now = self.dialect().now();
        self.rows(
            &format!(
                "SELECT id, host, pid, started_at, {now} - seen_at, stopped_at FROM instances
                 WHERE seen_at > {now} - ?1 ORDER BY started_at DESC"
            ),
            params![days * 86_400],
        )?
        .iter()
        .map(|r| {
            Ok(InstanceLine {
                id: col!(&self.path, r, 0),
                host: col!(&self.path, r, 1),
                pid: col!(&self.path, r, 2),
                started_at: col!(&self.path, r, 3),
                seen_ago: col!(&self.path, r, 4),
                stopped_at: col!(&self.path, r, 5),
            })
        })
        .collect()
    }
}
