//! Webhook delivery: one HTTP POST of an outbox row's bytes, signed when the webhook has a
//! secret. Like mail, a row is marked `sending` before the request; a refused connection, a
//! 5xx, 408 or 429 puts it back with a backoff (across restarts: the row is in the store), any
//! other 4xx fails it for a person, and an answer that never came leaves it `sending` for a
//! person (held; `queue release` sends it again), since the receiver may have it: a webhook is
//! never delivered twice on its own.

use std::time::Duration;

use tracing::{info, warn};

use crate::config::notify::WebhookConfig;
use crate::pipeline::webhook::{signature, DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER};
use crate::shell::store::{OutboxItem, Retry, Store, StoreError};

const TIMEOUT: Duration = Duration::from_secs(30);
/// Tries before a row that keeps failing is held for a person.
const MAX_ATTEMPTS: i64 = 10;

/// What became of one delivery attempt.
enum Outcome {
    Delivered(u16),
    /// Certainly not received: try again later.
    Again(String),
    /// The receiver refused it for good.
    Refused(String),
    /// Perhaps received: a person decides.
    Uncertain(String),
}

/// Delivers one pending webhook row.
/// Delivers one webhook row that is `from` (`pending`, or `approved` when a person released it).
pub async fn deliver(
    hooks: &[WebhookConfig],
    client: &reqwest::Client,
    store: &mut Store,
    item: &OutboxItem,
    from: &str,
) -> Result<(), StoreError> {
    let now = crate::clock::now();
    let url = item.recipients.first().map(String::as_str).unwrap_or("");
    let Some(hook) = hooks.iter().find(|h| h.url == url) else {
        store.transition_outbox(
            item.id,
            from,
            "held",
            Some("no [[notify.webhook]] has this url any more"),
            now,
        )?;
        return Ok(());
    };
    let secret = match &hook.secret_env {
        Some(name) => match std::env::var(name) {
            Ok(s) if !s.is_empty() => Some(s),
            _ => {
                let why =
                    format!("the webhook's secret_env {name} is not set: nothing is sent unsigned");
                store.transition_outbox(item.id, from, "held", Some(&why), now)?;
                warn!(outbox = item.id, url, "{why}");
                return Ok(());
            }
        },
        None => None,
    };
    if !store.transition_outbox(item.id, from, "sending", None, now)? {
        return Ok(());
    }
    let mut request = client
        .post(url)
        .timeout(TIMEOUT)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(
            reqwest::header::USER_AGENT,
            concat!("postmaster-bot/", env!("CARGO_PKG_VERSION")),
        )
        .header(EVENT_HEADER, &item.subject)
        .header(DELIVERY_HEADER, &item.message_id)
        .body(item.bytes.clone());
    if let Some(secret) = &secret {
        request = request.header(SIGNATURE_HEADER, signature(secret.as_bytes(), &item.bytes));
    }
    let outcome = match request.send().await {
        Ok(response) => {
            let status = response.status();
            let code = status.as_u16();
            if status.is_success() {
                Outcome::Delivered(code)
            } else if status.is_server_error() || code == 408 || code == 429 {
                Outcome::Again(format!("{url} answered {status}"))
            } else {
                Outcome::Refused(format!("{url} answered {status}"))
            }
        }
        // Nothing reached the receiver: a refused or failed connection.
        Err(e) if e.is_connect() => Outcome::Again(format!("{url}: {e}")),
        Err(e) => Outcome::Uncertain(format!(
            "{url}: {e}; the receiver may have it, so it is not sent again: check there"
        )),
    };
    let now = crate::clock::now();
    match outcome {
        Outcome::Delivered(code) => {
            store.transition_outbox(item.id, "sending", "sent", None, now)?;
            info!(outbox = item.id, url, status = code, event = %item.subject, "webhook delivered");
        }
        Outcome::Again(why) => {
            let retry = Retry {
                base_secs: i64::try_from(hook.retry_seconds).unwrap_or(60),
                max_attempts: MAX_ATTEMPTS,
            };
            let held = store
                .attempt_failed(item.id, "sending", from, &why, retry, now)?
                .held;
            warn!(outbox = item.id, url, held, reason = %why, "webhook not delivered; tried again later");
        }
        Outcome::Refused(why) => {
            store.transition_outbox(item.id, "sending", "failed", Some(&why), now)?;
            warn!(outbox = item.id, url, reason = %why, "webhook refused");
        }
        Outcome::Uncertain(why) => {
            store.transition_outbox(item.id, "sending", "held", Some(&why), now)?;
            warn!(outbox = item.id, url, reason = %why, "webhook delivery uncertain; held for a person");
        }
    }
    Ok(())
}

/// The client for one pass of deliveries: rustls (ring) with the web's roots, no redirects
/// (a receiver that moved is a configuration to fix, not a place to follow a signed body to).
pub fn client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .build()
}
