//! `/metrics` (Prometheus text format, encoded by prometheus-client) and `/readyz`, both read
//! from the state store, so they tell the same whether the console runs inside the daemon or
//! beside it (`serve`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{failure, store_failure, Console};
use crate::shell::store::{Health, Store, StoreError};

type Labels = Vec<(String, String)>;

/// What the scrape reports, read in one store call.
struct Snapshot {
    kinds: Vec<(String, i64)>,
    states: Vec<(String, i64)>,
    open_by_mailbox: Vec<(String, i64)>,
    open_by_provider: Vec<(String, i64)>,
    outbox: Vec<(String, i64)>,
    replies: Vec<(String, i64)>,
    webhooks: Vec<(String, i64)>,
    acts: Vec<(String, i64)>,
    health: Vec<Health>,
}

fn snapshot(store: &Store) -> Result<Snapshot, StoreError> {
    Ok(Snapshot {
        kinds: store.messages_by_kind()?,
        states: store.cases_by_state()?,
        open_by_mailbox: store.open_cases_by_mailbox()?,
        open_by_provider: store.open_cases_by_provider()?,
        outbox: store.outbox_by_status()?,
        replies: store.replies_by_status()?,
        webhooks: store.webhooks_by_status()?,
        acts: store.audit_by_action()?,
        health: store.health()?,
    })
}

/// The registry of one scrape: every value comes from the store as it is now.
fn registry(s: &Snapshot, now: i64) -> Registry {
    let mut registry = Registry::with_prefix("postmaster_bot");
    let counter_family = |pairs: &[(String, i64)], label: &str| {
        let family = Family::<Labels, Counter>::default();
        for (value, n) in pairs {
            family
                .get_or_create(&vec![(label.to_string(), value.clone())])
                .inc_by(u64::try_from(*n).unwrap_or(0));
        }
        family
    };
    let gauge_family = |pairs: &[(String, i64)], label: &str| {
        let family = Family::<Labels, Gauge>::default();
        for (value, n) in pairs {
            family
                .get_or_create(&vec![(label.to_string(), value.clone())])
                .set(*n);
        }
        family
    };
    registry.register(
        "messages_handled",
        "Messages handled, by the kind they were recognised as",
        counter_family(&s.kinds, "kind"),
    );
    registry.register("cases", "Cases, by state", gauge_family(&s.states, "state"));
    registry.register(
        "open_cases",
        "Cases not closed, by mailbox",
        gauge_family(&s.open_by_mailbox, "mailbox"),
    );
    registry.register(
        "open_provider_cases",
        "Cases not closed, by the receiver or block list that blocks us",
        gauge_family(&s.open_by_provider, "provider"),
    );
    registry.register(
        "outbox_rows",
        "Outbox rows (replies and notifications), by status",
        gauge_family(&s.outbox, "status"),
    );
    let outcome = |status: &str| {
        s.replies
            .iter()
            .filter(|(st, _)| st == status)
            .map(|(_, n)| *n)
            .sum::<i64>()
    };
    let replies = Family::<Labels, Counter>::default();
    for (name, statuses) in [
        ("sent", &["sent"][..]),
        ("held", &["held"][..]),
        ("failed", &["failed"][..]),
        ("drafted", &["drafted", "in_mailbox"][..]),
    ] {
        let n: i64 = statuses.iter().map(|st| outcome(st)).sum();
        replies
            .get_or_create(&vec![("outcome".to_string(), name.to_string())])
            .inc_by(u64::try_from(n).unwrap_or(0));
    }
    registry.register("replies", "Replies to Microsoft, by outcome", replies);
    let sum = |pairs: &[(String, i64)], statuses: &[&str]| -> u64 {
        pairs
            .iter()
            .filter(|(st, _)| statuses.contains(&st.as_str()))
            .map(|(_, n)| u64::try_from(*n).unwrap_or(0))
            .sum()
    };
    let deliveries = Counter::<u64>::default();
    deliveries.inc_by(sum(&s.webhooks, &["sent"]));
    registry.register(
        "webhook_deliveries",
        "Webhook notifications delivered (a 2xx answer)",
        deliveries,
    );
    let failures = Counter::<u64>::default();
    failures.inc_by(sum(&s.webhooks, &["failed", "held"]));
    registry.register(
        "webhook_failures",
        "Webhook notifications refused, held after retries, or of uncertain fate",
        failures,
    );
    let approvals = Counter::<u64>::default();
    approvals.inc_by(
        s.acts
            .iter()
            .filter(|(a, _)| a == "approve" || a == "release" || a == "approve_by_move")
            .map(|(_, n)| u64::try_from(*n).unwrap_or(0))
            .sum(),
    );
    registry.register(
        "approvals",
        "Replies approved or released by a person",
        approvals,
    );
    let health = |key: &str| s.health.iter().find(|h| h.key == key);
    let reconnects = Counter::<u64>::default();
    reconnects.inc_by(
        health("imap_reconnects")
            .and_then(|h| h.value.parse().ok())
            .unwrap_or(0),
    );
    registry.register(
        "imap_reconnects",
        "Times the daemon reconnected to the mailbox",
        reconnects,
    );
    let since = Gauge::<i64>::default();
    since.set(Health::oldest(&s.health, "last_sync").map_or(-1, |h| now - h.at));
    registry.register(
        "seconds_since_last_sync",
        "Seconds since the daemon last read the mailbox to the end (-1: never)",
        since,
    );
    // Each mailbox's own (health keys `last_sync`, or `NAME:last_sync` beside others).
    let per_mailbox: Vec<(String, i64)> = s
        .health
        .iter()
        .filter_map(|h| Some((h.mailbox_of("last_sync")?.to_string(), now - h.at)))
        .collect();
    registry.register(
        "mailbox_seconds_since_last_sync",
        "Seconds since the daemon last read each mailbox to the end",
        gauge_family(&per_mailbox, "mailbox"),
    );
    let backlog = Gauge::<i64>::default();
    backlog.set(
        health("backlog")
            .and_then(|h| h.value.parse().ok())
            .unwrap_or(0),
    );
    registry.register(
        "catch_up_backlog",
        "Messages left to read in the current catch-up",
        backlog,
    );
    registry
}

pub async fn metrics(State(console): State<Arc<Console>>) -> Response {
    let snapshot = match console.with_store(|store, _| snapshot(store)).await {
        Ok(s) => s,
        Err(e) => return store_failure(e),
    };
    let mut text = String::new();
    if prometheus_text::encode(&mut text, &registry(&snapshot, crate::clock::now())).is_err() {
        return failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the metrics could not be written",
        );
    }
    (
        [(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)],
        text,
    )
        .into_response()
}

/// Ready when the daemon read the mailbox to its end within `web.ready_minutes`.
pub async fn readyz(State(console): State<Arc<Console>>) -> Response {
    let limit = i64::from(console.web.ready_minutes) * 60;
    let last = console
        .with_store(|store, _| Ok(Health::oldest(&store.health()?, "last_sync").cloned()))
        .await;
    let now = crate::clock::now();
    match last {
        Ok(Some(h)) if now - h.at <= limit => (StatusCode::OK, "ready\n").into_response(),
        Ok(Some(h)) => failure(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "not ready: the mailbox was last read {} s ago (web.ready_minutes = {})",
                now - h.at,
                console.web.ready_minutes
            ),
        ),
        Ok(None) => failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the daemon has not read the mailbox yet",
        ),
        Err(e) => store_failure(e),
    }
}
