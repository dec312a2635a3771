//! `[[notify.webhook]]`: chat rooms and incident tools told what the operator is told. Each
//! webhook gets the notifications of the events it names, through the same outbox as mail.

use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigError;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotify {
    #[serde(default)]
    pub webhook: Vec<RawWebhook>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    pub url: Option<String>,
    pub format: Option<String>,
    pub template: Option<PathBuf>,
    pub events: Option<Vec<String>>,
    pub secret_env: Option<String>,
    pub retry_seconds: Option<u64>,
}

/// How a webhook's body is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookFormat {
    Json,
    Slack,
    Teams,
    Mattermost,
    /// A handlebars template of the operator's (its context: `event`, `headline`, `text`,
    /// `case`, `ticket`, `ips`, `at`, `mode`).
    Template(PathBuf),
}

/// The events a webhook can ask for: what an operator notification is about.
pub const EVENTS: &[&str] = &[
    "open_case",
    "close_case",
    "notify_operator",
    "draft_escalation_reply",
    "draft_followup",
    "held",
];

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: String,
    pub format: WebhookFormat,
    /// Empty: every event.
    pub events: Vec<String>,
    /// The environment variable holding the HMAC-SHA256 key that signs each body.
    pub secret_env: Option<String>,
    /// The first retry after a 5xx or a connection failure; doubled per attempt.
    pub retry_seconds: u64,
}

impl WebhookConfig {
    pub fn wants(&self, event: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == event)
    }
}

pub(super) fn parse(raw: &RawNotify, origin: &str) -> Result<Vec<WebhookConfig>, ConfigError> {
    let mut out = Vec::new();
    for (i, w) in raw.webhook.iter().enumerate() {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: origin.to_string(),
            key: format!("notify.webhook[{i}].{key}"),
            message,
        };
        let url = w
            .url
            .clone()
            .ok_or_else(|| invalid("url", "is required".to_string()))?;
        super::oauth::check_endpoint(&url).map_err(|why| invalid("url", why))?;
        let format = match (&w.template, w.format.as_deref()) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "template",
                    "is given with format: choose one".to_string(),
                ))
            }
            (Some(t), None) => WebhookFormat::Template(t.clone()),
            (None, None | Some("json")) => WebhookFormat::Json,
            (None, Some("slack")) => WebhookFormat::Slack,
            (None, Some("teams")) => WebhookFormat::Teams,
            (None, Some("mattermost")) => WebhookFormat::Mattermost,
            (None, Some(other)) => {
                return Err(invalid(
                    "format",
                    format!("`{other}` is not json, slack, teams or mattermost"),
                ))
            }
        };
        let events = w.events.clone().unwrap_or_default();
        if let Some(bad) = events.iter().find(|e| !EVENTS.contains(&e.as_str())) {
            return Err(invalid(
                "events",
                format!("`{bad}` is not one of {}", EVENTS.join(", ")),
            ));
        }
        if let Some(name) = &w.secret_env {
            if name.is_empty() || name.contains(['=', '\0']) {
                return Err(invalid(
                    "secret_env",
                    format!("`{name}` is not an environment variable name"),
                ));
            }
        }
        out.push(WebhookConfig {
            url,
            format,
            events,
            secret_env: w.secret_env.clone(),
            retry_seconds: w.retry_seconds.unwrap_or(60).clamp(1, 3600),
        });
    }
    Ok(out)
}
