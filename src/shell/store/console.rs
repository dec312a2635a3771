//! What the console and the metrics read, and the two records only people and the daemon's
//! health write: the audit trail and the mailbox health. Every query is bounded (a page of
//! rows, or a count), so a page costs the same with ten cases or ten thousand.

use serde::Serialize;

use super::db::{params, Row};
use super::{Store, StoreError};
use crate::pipeline::case::CaseId;
pub use crate::pipeline::console::BlockSpan;

/// One act of a person on the outbox or the templates.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub outbox_id: Option<i64>,
    pub case_id: Option<CaseId>,
    pub detail: String,
}

/// A case as a list shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CaseLine {
    pub id: CaseId,
    pub topic: String,
    pub state: String,
    pub ticket_id: Option<String>,
    pub ips: Vec<String>,
    pub opened_at: i64,
    pub updated_at: i64,
    pub closed_at: Option<i64>,
    /// Whose block the case is (`outlook`, `gmail` ...).
    pub provider: Option<String>,
}

/// What a case list is narrowed to.
#[derive(Debug, Clone, Default)]
pub struct CaseFilter {
    pub state: Option<String>,
    pub ip: Option<String>,
    pub ticket: Option<String>,
    pub provider: Option<String>,
    pub limit: u32,
}

/// A handled message as a case page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct MessageLine {
    pub message_id: Option<String>,
    pub source: String,
    pub processed_at: i64,
    pub kind: String,
    pub ticket_id: Option<String>,
    pub trusted: bool,
    pub action: String,
    pub reason: String,
    pub evidence: Vec<String>,
    /// Header fields and text as kept (see `pipeline::console::excerpt`).
    pub excerpt: String,
}

/// A message that could not be handled.
#[derive(Debug, Clone, Serialize)]
pub struct Quarantined {
    pub at: i64,
    pub source: String,
    pub message_id: Option<String>,
    pub error: String,
}

/// One value of the daemon's health, with when it was written.
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    pub key: String,
    pub value: String,
    pub at: i64,
}

impl Health {
    /// The oldest value of `key` among all mailboxes (`key` of the default mailbox, `NAME:key`
    /// of the others): a deployment is as fresh as its stalest mailbox.
    pub fn oldest<'a>(health: &'a [Health], key: &str) -> Option<&'a Health> {
        health
            .iter()
            .filter(|h| h.mailbox_of(key).is_some())
            .min_by_key(|h| h.at)
    }

    /// The mailbox whose `key` this value is (see `Store::health_key`), if it is one.
    pub fn mailbox_of(&self, key: &str) -> Option<&str> {
        if self.key == key {
            return Some(super::DEFAULT_MAILBOX);
        }
        self.key
            .strip_suffix(key)
            .and_then(|name| name.strip_suffix(':'))
    }
}

impl Store {
    pub fn add_audit(
        &self,
        actor: &str,
        action: &str,
        outbox_id: Option<i64>,
        case_id: Option<CaseId>,
        detail: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO audit (at, actor, action, outbox_id, case_id, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![now, actor, action, outbox_id, case_id, detail],
        )?;
        Ok(())
    }

    /// The newest acts first, at most `limit`.
    pub fn audit(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        self.rows(
            "SELECT at, actor, action, outbox_id, case_id, detail FROM audit
             ORDER BY id DESC LIMIT ?1",
            params![limit],
        )?
        .iter()
        .map(|r| {
            Ok(AuditEntry {
                at: col!(&self.path, r, 0),
                actor: col!(&self.path, r, 1),
                action: col!(&self.path, r, 2),
                outbox_id: col!(&self.path, r, 3),
                case_id: col!(&self.path, r, 4),
                detail: col!(&self.path, r, 5),
            })
        })
        .collect()
    }

    /// Replaces the message of a row that still waits for approval; `false` when it no longer
    /// waits (approved or rejected meanwhile).
    pub fn replace_waiting_bytes(&self, id: i64, bytes: &[u8]) -> Result<bool, StoreError> {
        let changed = self.exec(
            "UPDATE outbox SET bytes = ?2 WHERE id = ?1 AND status = 'awaiting_approval'",
            params![id, bytes],
        )?;
        Ok(changed == 1)
    }

    /// Whether an approved or released row is ready to be delivered.
    pub fn has_approved_ready(&self, now: i64) -> Result<bool, StoreError> {
        Ok(self
            .row(
                "SELECT 1 FROM outbox WHERE status = 'approved' AND next_attempt_at <= ?1
                   AND (CAST(?2 AS TEXT) IS NULL OR mailbox = ?2) LIMIT 1",
                params![now, self.mailbox],
            )?
            .is_some())
    }

    /// Sets a row's reason without changing its status (an uncertain delivery's why).
    pub fn set_reason(&self, id: i64, reason: &str) -> Result<(), StoreError> {
        self.exec(
            "UPDATE outbox SET reason = ?2 WHERE id = ?1",
            params![id, reason],
        )?;
        Ok(())
    }

    pub fn set_health(&self, key: &str, value: &str, now: i64) -> Result<(), StoreError> {
        self.exec(SET_HEALTH, params![self.health_key(key), value, now])?;
        Ok(())
    }

    /// A health key of this connection's mailbox: `name:key` beside other mailboxes', the
    /// plain key for the default one.
    fn health_key(&self, key: &str) -> String {
        match self.mailbox.as_deref() {
            Some(name) if name != super::DEFAULT_MAILBOX => format!("{name}:{key}"),
            _ => key.to_string(),
        }
    }

    /// Several health values at once, in one transaction.
    pub fn set_healths(&mut self, values: &[(&str, &str)], now: i64) -> Result<(), StoreError> {
        let keys: Vec<String> = values.iter().map(|(k, _)| self.health_key(k)).collect();
        let tx = self.begin()?;
        for (key, (_, value)) in keys.iter().zip(values) {
            tx.store.exec(SET_HEALTH, params![key, value, now])?;
        }
        tx.commit()
    }

    /// Adds to a counter kept in the health table (IMAP reconnects).
    pub fn count_health(&self, key: &str, now: i64) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO health (key, value, at) VALUES (?1, '1', ?2)
             ON CONFLICT(key) DO UPDATE
             SET value = CAST(CAST(health.value AS INTEGER) + 1 AS TEXT), at = excluded.at",
            params![self.health_key(key), now],
        )?;
        Ok(())
    }

    pub fn health(&self) -> Result<Vec<Health>, StoreError> {
        self.rows("SELECT key, value, at FROM health ORDER BY key", &[])?
            .iter()
            .map(|r| {
                Ok(Health {
                    key: col!(&self.path, r, 0),
                    value: col!(&self.path, r, 1),
                    at: col!(&self.path, r, 2),
                })
            })
            .collect()
    }

    /// Cases, those that need a person first, then those waiting on Microsoft (longest
    /// waiting first), then the closed ones (newest first).
    pub fn case_lines(&self, filter: &CaseFilter) -> Result<Vec<CaseLine>, StoreError> {
        let ips = self.db.dialect().group_concat("ip", " ");
        self.rows(
            &format!(
                "SELECT c.id, c.topic, c.state, c.ticket_id, c.opened_at, c.updated_at, c.closed_at,
                        (SELECT {ips} FROM case_ips WHERE case_id = c.id), c.provider
                 FROM cases c
                 WHERE (CAST(?1 AS TEXT) IS NULL OR c.state = ?1)
                   AND (CAST(?2 AS TEXT) IS NULL OR c.id IN (SELECT case_id FROM case_ips WHERE ip = ?2))
                   AND (CAST(?3 AS TEXT) IS NULL OR lower(c.ticket_id) = lower(?3))
                   AND (CAST(?5 AS TEXT) IS NULL OR c.provider = ?5)
                 ORDER BY CASE c.state WHEN 'needs_operator' THEN 0 WHEN 'closed' THEN 2 ELSE 1 END,
                          CASE WHEN c.state = 'closed' THEN -c.updated_at ELSE c.updated_at END
                 LIMIT ?4"
            ),
            params![
                filter.state,
                filter.ip,
                filter.ticket,
                filter.limit,
                filter.provider
            ],
        )?
        .iter()
        .map(|r| {
            let ips: Option<String> = col!(&self.path, r, 7);
            Ok(CaseLine {
                id: col!(&self.path, r, 0),
                topic: col!(&self.path, r, 1),
                state: col!(&self.path, r, 2),
                ticket_id: col!(&self.path, r, 3),
                opened_at: col!(&self.path, r, 4),
                updated_at: col!(&self.path, r, 5),
                closed_at: col!(&self.path, r, 6),
                provider: col!(&self.path, r, 8),
                ips: ips
                    .map(|s| s.split(' ').map(str::to_string).collect())
                    .unwrap_or_default(),
            })
        })
        .collect()
    }

    /// How many cases are in each state.
    pub fn cases_by_state(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.counts("SELECT state, count(*) FROM cases GROUP BY state ORDER BY state")
    }

    /// How many cases are not closed in each mailbox.
    pub fn open_cases_by_mailbox(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.counts(
            "SELECT mailbox, count(*) FROM cases WHERE state != 'closed'
             GROUP BY mailbox ORDER BY mailbox",
        )
    }

    /// How many cases are not closed for each provider (`outlook`, `gmail` ...).
    pub fn open_cases_by_provider(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.counts(
            "SELECT COALESCE(provider, 'unknown'), count(*) FROM cases WHERE state != 'closed'
             GROUP BY COALESCE(provider, 'unknown') ORDER BY 1",
        )
    }

    /// How many outbox rows are in each status.
    pub fn outbox_by_status(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.counts("SELECT status, count(*) FROM outbox GROUP BY status ORDER BY status")
    }

    /// How many replies to Microsoft (not notifications) are in each outbox status.
    pub fn replies_by_status(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.counts(
            "SELECT status, count(*) FROM outbox WHERE template IN ('escalation_reply', 'followup')
             GROUP BY status ORDER BY status",
        )
    }

    /// How many webhook deliveries are in each outbox status.
    pub fn webhooks_by_status(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.counts(
            "SELECT status, count(*) FROM outbox WHERE template = 'webhook'
             GROUP BY status ORDER BY status",
        )
    }

    /// How many messages were handled of each kind.
    pub fn messages_by_kind(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.counts("SELECT kind, count(*) FROM messages GROUP BY kind ORDER BY kind")
    }

    /// How many people's acts of each kind the audit holds (approvals, rejections...).
    pub fn audit_by_action(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.counts("SELECT action, count(*) FROM audit GROUP BY action ORDER BY action")
    }

    fn counts(&self, query: &str) -> Result<Vec<(String, i64)>, StoreError> {
        self.rows(query, &[])?
            .iter()
            .map(|r| Ok((col!(&self.path, r, 0), col!(&self.path, r, 1))))
            .collect()
    }

    /// The messages a case was built from, oldest first, at most `limit`.
    pub fn case_messages(&self, case: CaseId, limit: u32) -> Result<Vec<MessageLine>, StoreError> {
        self.rows(
            "SELECT message_id, source, processed_at, kind, ticket_id, trusted, action, reason,
                    evidence, excerpt
             FROM messages WHERE case_id = ?1 ORDER BY id LIMIT ?2",
            params![case, limit],
        )?
        .iter()
        .map(|r| self.message_line(r))
        .collect()
    }

    /// The newest timeline lines of a case, at most `limit`, oldest first.
    pub fn timeline_page(
        &self,
        case: CaseId,
        limit: u32,
    ) -> Result<Vec<super::TimelineEntry>, StoreError> {
        self.rows(
            "SELECT at, kind, action, state, message_id, summary FROM (
                 SELECT id, at, kind, action, state, message_id, summary FROM timeline
                 WHERE case_id = ?1 ORDER BY at DESC, id DESC LIMIT ?2
             ) AS newest ORDER BY at, id",
            params![case, limit],
        )?
        .iter()
        .map(|r| self.timeline_entry(r))
        .collect()
    }

    /// Messages handed to a person (an answer no rule knows, or one a person must act on),
    /// newest first, at most `limit`.
    pub fn handed_to_operator(&self, limit: u32) -> Result<Vec<MessageLine>, StoreError> {
        self.rows(
            "SELECT message_id, source, processed_at, kind, ticket_id, trusted, action, reason,
                    evidence, excerpt
             FROM messages WHERE kind = 'ms_other' OR action = 'notify_operator'
             ORDER BY id DESC LIMIT ?1",
            params![limit],
        )?
        .iter()
        .map(|r| self.message_line(r))
        .collect()
    }

    /// Messages quarantined (not handled: a person must look), newest first.
    pub fn quarantined(&self, limit: u32) -> Result<Vec<Quarantined>, StoreError> {
        self.rows(
            "SELECT at, source, message_id, error FROM quarantine ORDER BY id DESC LIMIT ?1",
            params![limit],
        )?
        .iter()
        .map(|r| {
            Ok(Quarantined {
                at: col!(&self.path, r, 0),
                source: col!(&self.path, r, 1),
                message_id: col!(&self.path, r, 2),
                error: col!(&self.path, r, 3),
            })
        })
        .collect()
    }

    /// Every block case open at some time since `since`: when it opened, when it closed, and
    /// how many IPs it holds (what the dashboard's charts are drawn from, in one read of an
    /// index, not of the cases themselves).
    pub fn block_spans(&self, since: i64) -> Result<Vec<BlockSpan>, StoreError> {
        let hint = self.db.dialect().indexed_by("cases_topic_times");
        self.rows(
            &format!(
                "SELECT c.opened_at, c.closed_at,
                        (SELECT count(*) FROM case_ips WHERE case_id = c.id)
                 FROM cases c {hint}
                 WHERE c.topic IN ('outlook_block', 'm365_block')
                   AND (c.closed_at IS NULL OR c.closed_at >= ?1)"
            ),
            params![since],
        )?
        .iter()
        .map(|r| {
            Ok(BlockSpan {
                opened_at: col!(&self.path, r, 0),
                closed_at: col!(&self.path, r, 1),
                ips: col!(&self.path, r, 2),
            })
        })
        .collect()
    }

    /// A `messages` row selected as message_id, source, processed_at, kind, ticket_id,
    /// trusted, action, reason, evidence, excerpt.
    fn message_line(&self, r: &Row) -> Result<MessageLine, StoreError> {
        let evidence: String = col!(&self.path, r, 8);
        Ok(MessageLine {
            message_id: col!(&self.path, r, 0),
            source: col!(&self.path, r, 1),
            processed_at: col!(&self.path, r, 2),
            kind: col!(&self.path, r, 3),
            ticket_id: col!(&self.path, r, 4),
            trusted: col!(&self.path, r, 5),
            action: col!(&self.path, r, 6),
            reason: col!(&self.path, r, 7),
            evidence: evidence_lines(&evidence),
            excerpt: col!(&self.path, r, 9),
        })
    }
}

const SET_HEALTH: &str = "INSERT INTO health (key, value, at) VALUES (?1, ?2, ?3)
     ON CONFLICT(key) DO UPDATE SET value = excluded.value, at = excluded.at";

/// The evidence column (a JSON list of strings, or of `{rule, matched}` objects) as lines.
fn evidence_lines(json: &str) -> Vec<String> {
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(serde_json::Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Object(o) => {
                    let text = |k: &str| o.get(k).and_then(|v| v.as_str()).unwrap_or("");
                    match (text("rule"), text("matched")) {
                        ("", _) => serde_json::Value::Object(o.clone()).to_string(),
                        (rule, "") => rule.to_string(),
                        (rule, matched) => format!("{rule}: \u{201c}{matched}\u{201d}"),
                    }
                }
                other => other.to_string(),
            })
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::Health;

    #[test]
    fn the_oldest_mailbox_decides_how_fresh_the_deployment_is() {
        let h = |key: &str, at| Health {
            key: key.to_string(),
            value: String::new(),
            at,
        };
        let all = [
            h("last_sync", 50),
            h("brand-a:last_sync", 40),
            h("brand-a:waiting", 10),
            h("last_syncing", 1),
        ];
        assert_eq!(Health::oldest(&all, "last_sync").map(|x| x.at), Some(40));
        assert!(Health::oldest(&all[2..], "last_sync").is_none());
        assert_eq!(all[1].mailbox_of("last_sync"), Some("brand-a"));
        assert_eq!(all[0].mailbox_of("last_sync"), Some("default"));
        assert_eq!(all[3].mailbox_of("last_sync"), None);
    }
}
