//! The TOML config: [`RawConfig`] as written, [`Config`] as validated. `parse` is pure; `load`
//! reads the file and resolves relative paths against the config's folder.

use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

use crate::pipeline::case::Policy;
use crate::pipeline::classify::Context;
use crate::pipeline::compose::Identity;
use crate::pipeline::decide::{Mode, NotifyOn};
use crate::pipeline::parse::Limits;

pub mod notify;
mod oauth;
pub mod web;
pub use oauth::{Flow, OAuth2Config, Provider, RawOAuth2, RefreshTokenStore};

/// A config that cannot be used, naming the file and the key or line at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to read config {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Syntax { path: String, message: String },
    #[error("config {path}: key `{key}`: {message}")]
    Invalid {
        path: String,
        key: String,
        message: String,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub mode: Option<Mode>,
    #[serde(default)]
    pub identity: RawIdentity,
    #[serde(default)]
    pub trust: RawTrust,
    #[serde(default)]
    pub rules: RawRulesRef,
    #[serde(default)]
    pub templates: RawTemplates,
    #[serde(default)]
    pub state: RawState,
    #[serde(default)]
    pub policy: RawPolicy,
    #[serde(default)]
    pub limits: RawLimits,
    pub mailbox: Option<RawMailbox>,
    pub smtp: Option<RawSmtp>,
    pub oauth2: Option<RawOAuth2>,
    pub web: Option<web::RawWeb>,
    #[serde(default)]
    pub notify: notify::RawNotify,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMailbox {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub tls: Option<Tls>,
    pub auth: Option<Auth>,
    pub username: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password_command: Option<String>,
    pub password_credential: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub folder: Option<String>,
    pub drafts_folder: Option<String>,
    pub review_folder: Option<String>,
    pub approved_folder: Option<String>,
    pub sent_folder: Option<String>,
    pub file_sent_copies: Option<bool>,
    pub handled_keyword: Option<String>,
    pub handled_folder: Option<String>,
    pub teach_folder: Option<String>,
    pub idle: Option<bool>,
    pub idle_renew_seconds: Option<u64>,
    pub poll_seconds: Option<u64>,
    pub chunk_uids: Option<u32>,
    pub timeout_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSmtp {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub tls: Option<Tls>,
    pub auth: Option<Auth>,
    pub username: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password_command: Option<String>,
    pub password_credential: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub retry_seconds: Option<u64>,
}

/// How the bot logs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Auth {
    /// IMAP LOGIN / SMTP AUTH PLAIN with a password.
    #[default]
    Password,
    /// SASL XOAUTH2 (Microsoft 365, Outlook.com, Gmail): the access token comes from the
    /// `[oauth2]` section, or from a password source that prints one (an external helper).
    Xoauth2,
}

/// How a connection is secured. Plain text is never offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tls {
    /// TLS from the first byte (IMAPS 993, SMTPS 465).
    Implicit,
    /// STARTTLS on the plain port (IMAP 143, submission 587); refused when not offered.
    Starttls,
}

/// Where a password comes from. It is read when a connection is made, never stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
    Command(String),
    /// A systemd credential (`LoadCredential=`): the file of this name in
    /// `$CREDENTIALS_DIRECTORY`.
    Credential(String),
}

/// The IMAP mailbox the bot watches.
#[derive(Debug, Clone)]
pub struct MailboxConfig {
    pub host: String,
    pub port: u16,
    pub tls: Tls,
    pub auth: Auth,
    pub username: String,
    /// The password, or with XOAUTH2 an access token; `None`: the token comes from `[oauth2]`.
    pub password: Option<SecretSource>,
    pub ca_file: Option<PathBuf>,
    pub folder: String,
    /// `None`: the folder with the \Drafts SPECIAL-USE attribute, else "Drafts".
    pub drafts_folder: Option<String>,
    pub review_folder: String,
    pub approved_folder: String,
    /// Where sent replies are kept. `None`: the folder with the \Sent SPECIAL-USE attribute,
    /// else the provider's, else "Sent".
    pub sent_folder: Option<String>,
    /// Whether the bot files a copy of each sent reply in the Sent folder itself (APPEND).
    /// Defaults to true except where the provider files submitted mail (Exchange Online,
    /// Gmail): the Sent folder is what the bot searches before any reply.
    pub file_sent_copies: bool,
    pub handled_keyword: Option<String>,
    /// Move handled messages here (UID MOVE, or COPY + UID EXPUNGE).
    pub handled_folder: Option<String>,
    /// Messages moved into `<teach_folder>/<kind>` are learned as templates of that kind and
    /// moved back; `None` switches it off.
    pub teach_folder: Option<String>,
    pub idle: bool,
    pub idle_renew: std::time::Duration,
    pub poll_interval: std::time::Duration,
    /// How long one IMAP command may take before the connection is given up.
    pub command_timeout: std::time::Duration,
    /// UIDs read per header FETCH and written per transaction, in a catch-up and after an IDLE
    /// wake alike.
    pub chunk_uids: u32,
}

/// A mail host whose folder names and habits are known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostedBy {
    /// Exchange Online / Outlook.com: no SPECIAL-USE, "Drafts" and "Sent Items".
    Microsoft,
    /// Gmail / Google Workspace: `[Gmail]/Drafts` and `[Gmail]/Sent Mail` (SPECIAL-USE too).
    Gmail,
}

impl HostedBy {
    pub fn of(host: &str) -> Option<HostedBy> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if host == "outlook.office365.com"
            || host.ends_with(".outlook.com")
            || host == "outlook.office.com"
        {
            Some(HostedBy::Microsoft)
        } else if host == "imap.gmail.com" || host == "imap.googlemail.com" {
            Some(HostedBy::Gmail)
        } else {
            None
        }
    }

    /// Drafts and Sent, by name, for servers that do not flag them with SPECIAL-USE.
    pub fn folders(self) -> (&'static str, &'static str) {
        match self {
            HostedBy::Microsoft => ("Drafts", "Sent Items"),
            HostedBy::Gmail => ("[Gmail]/Drafts", "[Gmail]/Sent Mail"),
        }
    }
}

impl Config {
    /// Each mailbox's name and whole configuration: the `[[mailbox]]` entries, or the one
    /// `[mailbox]` as "default".
    pub fn mailbox_configs(&self) -> Vec<(String, Config)> {
        if self.mailboxes.is_empty() {
            vec![(
                crate::shell::store::DEFAULT_MAILBOX.to_string(),
                self.clone(),
            )]
        } else {
            self.mailboxes.clone()
        }
    }

    /// A daemon that may send (`auto`, `approve`) needs `[smtp]`; without it every approved or
    /// automatic reply would only be held, an approval used up for nothing.
    pub fn check_can_send(&self) -> Result<(), ConfigError> {
        if self.mode == Mode::Draft || self.smtp.is_some() || self.mailbox.is_none() {
            return Ok(());
        }
        Err(ConfigError::Invalid {
            path: self.origin.clone(),
            key: "smtp".to_string(),
            message: format!(
                "mode = \"{}\" sends replies, so it needs an [smtp] section (or mode = \"draft\")",
                self.mode
            ),
        })
    }
}

impl MailboxConfig {
    pub fn hosted_by(&self) -> Option<HostedBy> {
        HostedBy::of(&self.host)
    }

    /// What the operator should know about where sent replies are kept: the Sent folder is
    /// the record the bot reads before any reply, so a lost state store cannot mean a second
    /// one. `None` when the setting needs no word.
    pub fn sent_mail_advice(&self) -> Option<String> {
        match (self.hosted_by(), &self.sent_folder, self.file_sent_copies) {
            (Some(host), _, true) => Some(format!(
                "{host:?} files submitted mail in Sent itself: file_sent_copies = true makes a second copy of each reply"
            )),
            (None, None, true) => Some(format!(
                "mailbox.sent_folder is not set and {} is not a provider known to file submitted mail: the bot files a copy of each sent reply in the server's \\Sent folder (else \"Sent\"), where it looks for its earlier replies before writing a new one; set sent_folder = \"Sent\" (your Sent folder's name) to make it explicit, and file_sent_copies = false only if the server files submitted mail itself",
                self.host
            )),
            (None, _, false) => Some(format!(
                "file_sent_copies = false: the bot counts on {} to file sent replies in {}; if it does not, a lost state store can mean a second reply on a ticket",
                self.host,
                self.sent_folder.as_deref().unwrap_or("the \\Sent folder")
            )),
            _ => None,
        }
    }
}

/// The SMTP submission server replies go through (auto mode and notifications).
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub tls: Tls,
    pub auth: Auth,
    pub username: Option<String>,
    /// The password, or with XOAUTH2 an access token; `None` with XOAUTH2: from `[oauth2]`.
    pub password: Option<SecretSource>,
    pub ca_file: Option<PathBuf>,
    /// First delay after a temporary failure; doubled per attempt, at most an hour.
    pub retry: std::time::Duration,
}

/// A secret's sources as written: `{name}_env`, `_file`, `_command`, `_credential`.
/// The `password_env`, `_file`, `_command` and `_credential` keys of a section.
macro_rules! password_keys {
    ($raw:expr) => {
        SecretKeys {
            env: &$raw.password_env,
            file: &$raw.password_file,
            command: &$raw.password_command,
            credential: &$raw.password_credential,
        }
    };
}

pub(crate) struct SecretKeys<'a> {
    pub(crate) env: &'a Option<String>,
    pub(crate) file: &'a Option<PathBuf>,
    pub(crate) command: &'a Option<String>,
    pub(crate) credential: &'a Option<String>,
}

fn secret_source(
    section: &str,
    name: &str,
    keys: SecretKeys<'_>,
    origin: &str,
) -> Result<Option<SecretSource>, ConfigError> {
    if let Some(c) = keys.credential {
        // A name, not a path: it is looked up in the directory systemd made for the service.
        if c.is_empty() || c == "." || c == ".." || c.contains('/') || c.contains('\0') {
            return Err(ConfigError::Invalid {
                path: origin.to_string(),
                key: format!("{section}.{name}_credential"),
                message: "must be a credential name as in LoadCredential=NAME:..., not a path"
                    .to_string(),
            });
        }
    }
    let given: Vec<SecretSource> = [
        keys.env.clone().map(SecretSource::Env),
        keys.file.clone().map(SecretSource::File),
        keys.command.clone().map(SecretSource::Command),
        keys.credential.clone().map(SecretSource::Credential),
    ]
    .into_iter()
    .flatten()
    .collect();
    match given.len() {
        0 => Ok(None),
        1 => Ok(given.into_iter().next()),
        _ => Err(ConfigError::Invalid {
            path: origin.to_string(),
            key: format!("{section}.{name}_env"),
            message: format!(
                "give only one of {name}_env, {name}_file, {name}_command, {name}_credential"
            ),
        }),
    }
}

fn mailbox_config(raw: &RawMailbox, origin: &str) -> Result<MailboxConfig, ConfigError> {
    let invalid = |key: &str, message: &str| ConfigError::Invalid {
        path: origin.to_string(),
        key: format!("mailbox.{key}"),
        message: message.to_string(),
    };
    let host = raw
        .host
        .clone()
        .ok_or_else(|| invalid("host", "is required"))?;
    let username = raw
        .username
        .clone()
        .ok_or_else(|| invalid("username", "is required"))?;
    let tls = raw.tls.unwrap_or(Tls::Implicit);
    let auth = raw.auth.unwrap_or_default();
    let password = secret_source("mailbox", "password", password_keys!(raw), origin)?;
    if password.is_none() && auth == Auth::Password {
        return Err(invalid(
            "password_env",
            "one of password_env, password_file, password_command or password_credential is required",
        ));
    }
    // NOTE: RFC 2177: servers may end an IDLE after 30 minutes; Exchange Online and NAT
    // boxes drop idle connections sooner, hence a 10-minute default.
    let idle_renew_seconds = raw.idle_renew_seconds.unwrap_or(600);
    if !(5..=1740).contains(&idle_renew_seconds) {
        return Err(invalid(
            "idle_renew_seconds",
            "must be 5 to 1740 (servers may drop an IDLE after 29 minutes)",
        ));
    }
    let poll_seconds = raw.poll_seconds.unwrap_or(60);
    let chunk_uids = raw.chunk_uids.unwrap_or(5000);
    if !(1..=100_000).contains(&chunk_uids) {
        return Err(invalid("chunk_uids", "must be 1 to 100000"));
    }
    if poll_seconds == 0 {
        return Err(invalid("poll_seconds", "must be at least 1"));
    }
    if let Some(k) = &raw.handled_keyword {
        check_keyword(k).map_err(|why| invalid("handled_keyword", &why))?;
    }
    for (key, folder) in [
        ("folder", &raw.folder),
        ("drafts_folder", &raw.drafts_folder),
        ("review_folder", &raw.review_folder),
        ("approved_folder", &raw.approved_folder),
        ("sent_folder", &raw.sent_folder),
        ("handled_folder", &raw.handled_folder),
        (
            "teach_folder",
            &raw.teach_folder.clone().filter(|f| !f.is_empty()),
        ),
    ] {
        if let Some(f) = folder {
            check_folder(f).map_err(|why| invalid(key, &why))?;
        }
    }
    // Exchange Online and Gmail file submitted mail in Sent themselves; elsewhere (Postfix and
    // the like) only a copy of ours makes the Sent folder the record of what went out.
    let file_sent_copies = raw
        .file_sent_copies
        .unwrap_or_else(|| HostedBy::of(&host).is_none());
    Ok(MailboxConfig {
        host,
        port: raw.port.unwrap_or(match tls {
            Tls::Implicit => 993,
            Tls::Starttls => 143,
        }),
        tls,
        auth,
        username,
        password,
        ca_file: raw.ca_file.clone(),
        folder: raw.folder.clone().unwrap_or_else(|| "INBOX".to_string()),
        drafts_folder: raw.drafts_folder.clone(),
        review_folder: raw
            .review_folder
            .clone()
            .unwrap_or_else(|| "postmaster-bot/Review".to_string()),
        approved_folder: raw
            .approved_folder
            .clone()
            .unwrap_or_else(|| "postmaster-bot/Approved".to_string()),
        sent_folder: raw.sent_folder.clone(),
        file_sent_copies,
        handled_keyword: raw.handled_keyword.clone(),
        handled_folder: raw.handled_folder.clone(),
        teach_folder: match raw.teach_folder.as_deref() {
            None => Some("postmaster-bot/Teach".to_string()),
            Some("") => None,
            Some(f) => Some(f.to_string()),
        },
        idle: raw.idle.unwrap_or(true),
        idle_renew: std::time::Duration::from_secs(idle_renew_seconds),
        poll_interval: std::time::Duration::from_secs(poll_seconds),
        command_timeout: std::time::Duration::from_secs(raw.timeout_seconds.unwrap_or(120).max(1)),
        chunk_uids,
    })
}

fn smtp_config(raw: &RawSmtp, origin: &str) -> Result<SmtpConfig, ConfigError> {
    let host = raw.host.clone().ok_or_else(|| ConfigError::Invalid {
        path: origin.to_string(),
        key: "smtp.host".to_string(),
        message: "is required".to_string(),
    })?;
    let tls = raw.tls.unwrap_or(Tls::Starttls);
    Ok(SmtpConfig {
        host,
        port: raw.port.unwrap_or(match tls {
            Tls::Implicit => 465,
            Tls::Starttls => 587,
        }),
        tls,
        auth: raw.auth.unwrap_or_default(),
        username: raw.username.clone(),
        password: secret_source("smtp", "password", password_keys!(raw), origin)?,
        ca_file: raw.ca_file.clone(),
        retry: std::time::Duration::from_secs(raw.retry_seconds.unwrap_or(60).max(1)),
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    pub from: Option<String>,
    pub organization: Option<String>,
    pub operator: Option<String>,
    pub message_id_domain: Option<String>,
    pub loop_header: Option<String>,
    pub instance: Option<String>,
    #[serde(default)]
    pub our_networks: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrust {
    #[serde(default)]
    pub authserv_ids: Vec<String>,
    pub microsoft_domains: Option<Vec<String>>,
    pub internal_hosts: Option<Vec<String>>,
    #[serde(default)]
    pub reporting_mtas: Vec<String>,
    pub verify_dkim: Option<bool>,
    #[serde(default)]
    pub dns_servers: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRulesRef {
    pub file: Option<PathBuf>,
    /// Whether other receivers' blocks (Gmail, Yahoo, DNSBLs ...) open cases; default on.
    pub other_receivers: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTemplates {
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    pub path: Option<PathBuf>,
    pub url: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password_command: Option<String>,
    pub password_credential: Option<String>,
    pub schema: Option<String>,
    pub sslmode: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub lease_seconds: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub max_escalations_per_ticket: Option<u32>,
    pub followup_after_days: Option<u32>,
    pub max_followups: Option<u32>,
    pub notice_interval_hours: Option<u32>,
    pub notify_on_open_case: Option<bool>,
    pub notify_on_close_case: Option<bool>,
    pub notify_on_escalation: Option<bool>,
    pub mark_replies_auto_submitted: Option<bool>,
    pub max_reply_age_days: Option<u32>,
    pub max_replies_per_hour: Option<u32>,
    pub min_hours_between_replies: Option<u32>,
    pub new_case_notice_minutes: Option<u32>,
    pub max_ips_per_case: Option<usize>,
}

/// Persistent limits on replies to Microsoft, counted from the store.
#[derive(Debug, Clone, Copy)]
pub struct ReplyLimits {
    /// Replies (all tickets together) per rolling hour.
    pub max_replies_per_hour: u32,
    /// Hours between two replies on one case.
    pub min_hours_between_replies: u32,
    /// Minutes during which one source (a reporting MTA, or all unauthenticated mail
    /// together) gets at most one new-case notification.
    pub new_case_notice_minutes: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_text_bytes: Option<usize>,
    pub max_message_bytes: Option<u32>,
    pub max_ips_per_message: Option<usize>,
}

/// A validated config.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the config came from (for messages).
    pub origin: String,
    pub mode: Mode,
    pub identity: Identity,
    pub classify: Context,
    pub rules_file: Option<PathBuf>,
    pub templates_dir: Option<PathBuf>,
    pub state: StateConfig,
    /// `[[mailbox]]`: each mailbox's whole configuration, by name (empty with one `[mailbox]`;
    /// see [`Config::mailbox_configs`]).
    pub mailboxes: Vec<(String, Config)>,
    pub policy: Policy,
    pub notify_on: NotifyOn,
    pub limits: Limits,
    /// Bytes of a message fetched for classification; a longer one is cut and the cut recorded.
    pub max_message_bytes: u32,
    /// Replies to messages older than this are held, not sent (first runs over old mail).
    pub max_reply_age_days: u32,
    pub reply_limits: ReplyLimits,
    pub mailbox: Option<MailboxConfig>,
    pub smtp: Option<SmtpConfig>,
    /// Where XOAUTH2 access tokens come from when no password source prints them.
    pub oauth2: Option<OAuth2Config>,
    /// DKIM is verified again by the bot itself (DNS), as a second check beside our MX's.
    pub verify_dkim: Option<DkimCheck>,
    /// The operator's console (`run` serves it when set; `serve` needs it).
    pub web: Option<web::WebConfig>,
    /// Webhooks told what the operator is told.
    pub webhooks: Vec<notify::WebhookConfig>,
}

/// How the bot's own DKIM check reaches DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimCheck {
    /// Name servers to ask (`ip:port`); empty: the system's resolver configuration.
    pub dns_servers: Vec<std::net::SocketAddr>,
}

/// The bot's From when none is configured.
pub const DEFAULT_FROM: &str = "postmaster@localhost";
/// The loop header stamped on outgoing mail.
pub const DEFAULT_LOOP_HEADER: &str = "X-Postmaster-Bot";

impl Default for Config {
    fn default() -> Self {
        // Parsing an empty document cannot fail: every key is optional.
        parse("", "(defaults)").unwrap_or_else(|_| unreachable!("empty config is valid"))
    }
}

/// Parses and validates config text; `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let syntax = |e: toml::de::Error| ConfigError::Syntax {
        path: origin.to_string(),
        message: e.to_string(),
    };
    let document: toml::Table = toml::from_str(text).map_err(syntax)?;
    match document.get("mailbox") {
        Some(toml::Value::Array(_)) => parse_several(document, origin),
        // Read again from the text: its errors then name the line at fault.
        _ => parse_one(toml::from_str(text).map_err(syntax)?, origin),
    }
}

/// The keys of a `[[mailbox]]` entry that are not the mailbox's own: they override the
/// top-level section of that name for this mailbox only (`mode`; `identity` and `smtp` key
/// by key).
const MAILBOX_OVERRIDES: &[&str] = &["name", "mode", "identity", "smtp"];

/// `[[mailbox]]`: each entry becomes the whole configuration of its mailbox (the top level with
/// the entry's overrides), validated as a single `[mailbox]` is; the first is also the
/// top-level one (`config.mailbox`) for the commands that work on one.
fn parse_several(document: toml::Table, origin: &str) -> Result<Config, ConfigError> {
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        path: origin.to_string(),
        key: key.to_string(),
        message,
    };
    let mut base = document;
    let Some(toml::Value::Array(entries)) = base.remove("mailbox") else {
        return Err(invalid(
            "mailbox",
            "must be a list of [[mailbox]] tables".into(),
        ));
    };
    if entries.is_empty() {
        return Err(invalid("mailbox", "lists no mailbox".into()));
    }
    let mut configs: Vec<(String, Config)> = Vec::new();
    for (i, entry) in entries.into_iter().enumerate() {
        let toml::Value::Table(mut entry) = entry else {
            return Err(invalid(&format!("mailbox[{i}]"), "must be a table".into()));
        };
        let name = match entry.get("name") {
            Some(toml::Value::String(n)) if valid_mailbox_name(n) => n.clone(),
            Some(_) => {
                return Err(invalid(
                    &format!("mailbox[{i}].name"),
                    "must be lower-case letters, digits, '.', '_' or '-' (at most 64)".into(),
                ))
            }
            None => {
                return Err(invalid(
                    &format!("mailbox[{i}].name"),
                    "is required when there are several mailboxes".into(),
                ))
            }
        };
        if configs.iter().any(|(n, _)| *n == name) {
            return Err(invalid(
                &format!("mailbox[{i}].name"),
                format!("`{name}` names two mailboxes"),
            ));
        }
        let mut own = base.clone();
        for key in MAILBOX_OVERRIDES {
            let Some(value) = entry.remove(*key) else {
                continue;
            };
            match (key, value) {
                (&"name", _) => {}
                (&"mode", value) => {
                    own.insert("mode".to_string(), value);
                }
                (section, toml::Value::Table(over)) => {
                    let merged = match own.remove(*section) {
                        Some(toml::Value::Table(mut top)) => {
                            top.extend(over);
                            top
                        }
                        _ => over,
                    };
                    own.insert(section.to_string(), toml::Value::Table(merged));
                }
                (section, _) => {
                    return Err(invalid(
                        &format!("mailbox[{i}].{section}"),
                        "must be a table".into(),
                    ))
                }
            }
        }
        own.insert("mailbox".to_string(), toml::Value::Table(entry));
        let shown = format!("{origin} (mailbox {name})");
        let raw: RawConfig = own
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Syntax {
                path: shown.clone(),
                message: e.to_string(),
            })?;
        configs.push((name, parse_one(raw, &shown)?));
    }
    // Mail from any of our own identities is ours, whichever mailbox it lands in.
    let own_addresses: Vec<String> = configs
        .iter()
        .flat_map(|(_, c)| c.classify.own_addresses.clone())
        .collect();
    let own_domains: Vec<String> = configs
        .iter()
        .flat_map(|(_, c)| c.classify.own_message_id_domains.clone())
        .collect();
    for (_, c) in configs.iter_mut() {
        for a in &own_addresses {
            if !c.classify.own_addresses.contains(a) {
                c.classify.own_addresses.push(a.clone());
            }
        }
        for d in &own_domains {
            if !c.classify.own_message_id_domains.contains(d) {
                c.classify.own_message_id_domains.push(d.clone());
            }
        }
    }
    let mut first = configs[0].1.clone();
    first.mailboxes = configs;
    Ok(first)
}

fn valid_mailbox_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
}

fn parse_one(raw: RawConfig, origin: &str) -> Result<Config, ConfigError> {
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        path: origin.to_string(),
        key: key.to_string(),
        message,
    };

    let (name, address) = match &raw.identity.from {
        Some(from) => split_address(from)
            .ok_or_else(|| invalid("identity.from", format!("`{from}` is not a mail address")))?,
        None => ("Postmaster".to_string(), DEFAULT_FROM.to_string()),
    };
    if let Some(op) = &raw.identity.operator {
        if split_address(op).is_none() {
            return Err(invalid(
                "identity.operator",
                format!("`{op}` is not a mail address"),
            ));
        }
    }
    let domain = address
        .rsplit('@')
        .next()
        .unwrap_or("localhost")
        .to_string();
    let message_id_domain = raw.identity.message_id_domain.clone().unwrap_or(domain);
    if message_id_domain.is_empty() || message_id_domain.contains(['@', ' ', '<', '>']) {
        return Err(invalid(
            "identity.message_id_domain",
            format!("`{message_id_domain}` is not a domain"),
        ));
    }
    let loop_header = raw
        .identity
        .loop_header
        .clone()
        .unwrap_or_else(|| DEFAULT_LOOP_HEADER.to_string());
    if loop_header.is_empty()
        || !loop_header
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(invalid(
            "identity.loop_header",
            format!("`{loop_header}` is not a header field name"),
        ));
    }
    let mut our_networks = Vec::new();
    for (i, n) in raw.identity.our_networks.iter().enumerate() {
        let net = parse_net(n).ok_or_else(|| {
            invalid(
                &format!("identity.our_networks[{i}]"),
                format!("`{n}` is not an IP address or CIDR range"),
            )
        })?;
        our_networks.push(net);
    }
    for (i, id) in raw.trust.authserv_ids.iter().enumerate() {
        if id.trim().is_empty() || id.contains(char::is_whitespace) {
            return Err(invalid(
                &format!("trust.authserv_ids[{i}]"),
                format!("`{id}` is not an authserv-id (a host name)"),
            ));
        }
    }
    let microsoft_domains = raw
        .trust
        .microsoft_domains
        .clone()
        .unwrap_or_else(|| vec!["microsoft.com".to_string()]);
    if microsoft_domains.is_empty() {
        return Err(invalid(
            "trust.microsoft_domains",
            "must name at least one domain".to_string(),
        ));
    }
    for (i, d) in microsoft_domains.iter().enumerate() {
        if let Err(why) = check_microsoft_domain(d) {
            return Err(invalid(&format!("trust.microsoft_domains[{i}]"), why));
        }
    }
    let microsoft_domains: Vec<String> = microsoft_domains
        .iter()
        .map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase())
        .collect();
    let host_list = |key: &str, list: &[String]| -> Result<Vec<String>, ConfigError> {
        list.iter()
            .enumerate()
            .map(|(i, h)| {
                let h = h.trim().trim_end_matches('.').to_ascii_lowercase();
                if is_host_name(&h) {
                    Ok(h)
                } else {
                    Err(invalid(
                        &format!("{key}[{i}]"),
                        format!("`{h}` is not a host name"),
                    ))
                }
            })
            .collect()
    };
    let internal_hosts = host_list(
        "trust.internal_hosts",
        raw.trust.internal_hosts.as_deref().unwrap_or_default(),
    )?;
    let reporting_mtas = host_list("trust.reporting_mtas", &raw.trust.reporting_mtas)?;
    let mut dns_servers = Vec::new();
    for (i, s) in raw.trust.dns_servers.iter().enumerate() {
        let addr = s
            .parse::<std::net::SocketAddr>()
            .or_else(|_| s.parse::<std::net::IpAddr>().map(|ip| (ip, 53).into()))
            .map_err(|_| {
                invalid(
                    &format!("trust.dns_servers[{i}]"),
                    format!("`{s}` is not an IP address or ip:port"),
                )
            })?;
        dns_servers.push(addr);
    }
    if !dns_servers.is_empty() && raw.trust.verify_dkim != Some(true) {
        return Err(invalid(
            "trust.dns_servers",
            "is only used with verify_dkim = true".to_string(),
        ));
    }
    let verify_dkim = (raw.trust.verify_dkim == Some(true)).then_some(DkimCheck { dns_servers });

    let defaults = Policy::default();
    let p = &raw.policy;
    let policy = Policy {
        max_escalations_per_ticket: p
            .max_escalations_per_ticket
            .unwrap_or(defaults.max_escalations_per_ticket),
        followup_after_days: p
            .followup_after_days
            .unwrap_or(defaults.followup_after_days),
        max_followups: p.max_followups.unwrap_or(defaults.max_followups),
        notice_interval_hours: p
            .notice_interval_hours
            .unwrap_or(defaults.notice_interval_hours),
        max_ips_per_case: p.max_ips_per_case.unwrap_or(defaults.max_ips_per_case),
    };
    if !(1..=65536).contains(&policy.max_ips_per_case) {
        return Err(invalid(
            "policy.max_ips_per_case",
            "must be 1 to 65536".into(),
        ));
    }
    if policy.max_escalations_per_ticket > 3 {
        return Err(invalid(
            "policy.max_escalations_per_ticket",
            "more than 3 escalations on one ticket reads as spam to Microsoft; use 0 to 3".into(),
        ));
    }
    let notify_defaults = NotifyOn::default();
    let notify_on = NotifyOn {
        open_case: p.notify_on_open_case.unwrap_or(notify_defaults.open_case),
        close_case: p.notify_on_close_case.unwrap_or(notify_defaults.close_case),
        escalation: p.notify_on_escalation.unwrap_or(notify_defaults.escalation),
    };
    let limits = Limits {
        max_text_bytes: raw
            .limits
            .max_text_bytes
            .unwrap_or(Limits::default().max_text_bytes),
    };
    let max_message_bytes = raw.limits.max_message_bytes.unwrap_or(4 << 20);
    if max_message_bytes < 65536 {
        return Err(invalid(
            "limits.max_message_bytes",
            "must be at least 65536".to_string(),
        ));
    }
    let max_ips_per_message = raw.limits.max_ips_per_message.unwrap_or(256);
    if !(1..=65536).contains(&max_ips_per_message) {
        return Err(invalid(
            "limits.max_ips_per_message",
            "must be 1 to 65536".to_string(),
        ));
    }
    if limits.max_text_bytes < 4096 {
        return Err(invalid(
            "limits.max_text_bytes",
            "must be at least 4096".to_string(),
        ));
    }

    // Without an operator address, notifications go to the postmaster mailbox itself, where
    // the bot recognises them as its own and a person reads them.
    let operator = raw
        .identity
        .operator
        .as_deref()
        .and_then(split_address)
        .map(|(_, a)| a)
        .or_else(|| Some(address.clone()));
    let mut own_addresses = vec![address.clone()];
    own_addresses.extend(operator.clone());
    let identity = Identity {
        name,
        address,
        organization: raw.identity.organization.clone(),
        operator,
        message_id_domain: message_id_domain.clone(),
        loop_header: loop_header.clone(),
        instance: raw
            .identity
            .instance
            .clone()
            .unwrap_or_else(|| "postmaster-bot".to_string()),
        mark_replies_auto_submitted: p.mark_replies_auto_submitted.unwrap_or(false),
    };
    let mailbox = raw
        .mailbox
        .as_ref()
        .map(|m| mailbox_config(m, origin))
        .transpose()?;
    let smtp = raw
        .smtp
        .as_ref()
        .map(|m| smtp_config(m, origin))
        .transpose()?;
    let state = state_config(&raw.state, origin)?;
    let oauth2 = raw
        .oauth2
        .as_ref()
        .map(|o| oauth::oauth2_config(o, state.local_path(), origin))
        .transpose()?;
    let needs_oauth2 = |auth: Auth, password: &Option<SecretSource>| {
        auth == Auth::Xoauth2 && password.is_none() && oauth2.is_none()
    };
    if let Some(m) = &mailbox {
        if needs_oauth2(m.auth, &m.password) {
            return Err(invalid(
                "mailbox.auth",
                "xoauth2 needs an [oauth2] section, or a password_command that prints an access token".into(),
            ));
        }
    }
    if let Some(s) = &smtp {
        if needs_oauth2(s.auth, &s.password) {
            return Err(invalid(
                "smtp.auth",
                "xoauth2 needs an [oauth2] section, or a password_command that prints an access token".into(),
            ));
        }
        if s.auth == Auth::Xoauth2 && s.username.is_none() {
            return Err(invalid(
                "smtp.username",
                "is required with auth = \"xoauth2\"".into(),
            ));
        }
    }
    Ok(Config {
        oauth2,
        max_message_bytes,
        max_reply_age_days: p.max_reply_age_days.unwrap_or(7),
        reply_limits: ReplyLimits {
            max_replies_per_hour: p.max_replies_per_hour.unwrap_or(10),
            min_hours_between_replies: p.min_hours_between_replies.unwrap_or(24),
            new_case_notice_minutes: p.new_case_notice_minutes.unwrap_or(10),
        },
        verify_dkim,
        web: raw
            .web
            .as_ref()
            .map(|w| web::parse(w, origin))
            .transpose()?,
        webhooks: notify::parse(&raw.notify, origin)?,
        mailbox,
        smtp,
        origin: origin.to_string(),
        mode: raw.mode.unwrap_or_default(),
        identity,
        classify: Context {
            authserv_ids: raw
                .trust
                .authserv_ids
                .iter()
                .map(|s| s.trim().to_ascii_lowercase())
                .collect(),
            microsoft_domains,
            own_addresses,
            own_message_id_domains: vec![message_id_domain],
            loop_header,
            our_networks,
            internal_hosts,
            reporting_mtas,
            max_ips: max_ips_per_message,
            require_dkim: raw.trust.verify_dkim == Some(true),
            other_receivers: raw.rules.other_receivers.unwrap_or(true),
        },
        rules_file: raw.rules.file,
        templates_dir: raw.templates.dir,
        state,
        mailboxes: Vec::new(),
        policy,
        notify_on,
        limits,
    })
}

/// Where the state store lives.
#[derive(Debug, Clone)]
pub enum StateConfig {
    /// An embedded SQLite file (the default, `postmaster-bot.sqlite3` beside the config).
    Sqlite(PathBuf),
    /// A PostgreSQL database several instances can share.
    Postgres(PostgresConfig),
}

impl StateConfig {
    /// The SQLite file; with PostgreSQL, a name beside the config that files kept locally
    /// (the OAuth2 refresh token) are placed next to.
    pub fn local_path(&self) -> &Path {
        match self {
            StateConfig::Sqlite(p) => p,
            StateConfig::Postgres(_) => Path::new("postmaster-bot.state"),
        }
    }

    /// A state given on the command line: a `postgres://` URL or a file.
    pub fn from_argument(text: &str) -> Result<StateConfig, ConfigError> {
        if is_postgres_url(text) {
            let raw = RawState {
                url: Some(text.to_string()),
                ..RawState::default()
            };
            state_config(&raw, "--state")
        } else {
            Ok(StateConfig::Sqlite(PathBuf::from(text)))
        }
    }
}

/// How the connection to PostgreSQL is encrypted (libpq's `sslmode` names). Whenever TLS is
/// used the server's certificate is checked against the trusted roots (and `ca_file`) and its
/// host name: `require` and `verify-full` are the same here; `verify-ca` (a certificate for
/// another name) is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgSslMode {
    Disable,
    /// TLS, checked, when the server offers it; plain when it does not.
    Prefer,
    /// TLS or no connection (the default for any host but loopback and Unix sockets, which
    /// default to `Disable`).
    Require,
}

/// `[state] url = "postgres://..."`.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// The URL as given, without `sslmode` (kept in `sslmode`).
    pub url: String,
    pub password: Option<SecretSource>,
    /// The schema the tables live in (created when missing); default the user's search path.
    pub schema: Option<String>,
    pub sslmode: PgSslMode,
    pub ca_file: Option<PathBuf>,
    /// How long a mailbox lease lasts without renewal.
    pub lease_seconds: u32,
}

pub(crate) fn is_postgres_url(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    lower.starts_with("postgres://") || lower.starts_with("postgresql://")
}

fn state_config(raw: &RawState, origin: &str) -> Result<StateConfig, ConfigError> {
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        path: origin.to_string(),
        key: format!("state.{key}"),
        message,
    };
    let Some(url) = &raw.url else {
        for (key, given) in [
            ("schema", raw.schema.is_some()),
            ("sslmode", raw.sslmode.is_some()),
            ("ca_file", raw.ca_file.is_some()),
            ("lease_seconds", raw.lease_seconds.is_some()),
            (
                "password_env",
                raw.password_env.is_some()
                    || raw.password_file.is_some()
                    || raw.password_command.is_some()
                    || raw.password_credential.is_some(),
            ),
        ] {
            if given {
                return Err(invalid(
                    key,
                    "is for PostgreSQL: give `url` too".to_string(),
                ));
            }
        }
        return Ok(StateConfig::Sqlite(
            raw.path
                .clone()
                .unwrap_or_else(|| PathBuf::from("postmaster-bot.sqlite3")),
        ));
    };
    if raw.path.is_some() {
        return Err(invalid(
            "url",
            "give `path` (SQLite) or `url` (PostgreSQL), not both".into(),
        ));
    }
    if !is_postgres_url(url) {
        return Err(invalid(
            "url",
            "must start with postgres:// or postgresql://".into(),
        ));
    }
    // tokio-postgres knows disable/prefer/require only; the stricter names are read here.
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut sslmode_in_url = None;
    let mut schema_in_url = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", v)) => sslmode_in_url = Some(v.to_string()),
            // As Prisma and others read it: the one PostgreSQL setting a URL must carry for a
            // store to be named on the command line.
            Some(("schema", v)) => schema_in_url = Some(v.to_string()),
            Some(("sslrootcert", _)) => {
                return Err(invalid(
                    "url",
                    "give the CA file as `ca_file`, not sslrootcert".into(),
                ))
            }
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let parsed: tokio_postgres::Config = url
        .parse()
        .map_err(|e| invalid("url", format!("not a PostgreSQL URL: {e}")))?;
    let password = secret_source("state", "password", password_keys!(raw), origin)?;
    if password.is_some() && parsed.get_password().is_some() {
        return Err(invalid(
            "url",
            "holds a password and password_* is set too: keep it in one place (better out of the URL)"
                .into(),
        ));
    }
    let loopback = parsed.get_hosts().iter().all(|h| match h {
        tokio_postgres::config::Host::Tcp(name) => {
            name == "localhost"
                || name
                    .trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        #[cfg(unix)]
        tokio_postgres::config::Host::Unix(_) => true,
    });
    let sslmode = match raw.sslmode.as_deref().or(sslmode_in_url.as_deref()) {
        // Loopback traffic cannot be read on the way: plain, as most local servers expect
        // (a self-signed certificate there would fail the check TLS always makes here).
        None if loopback => PgSslMode::Disable,
        None => PgSslMode::Require,
        Some("disable") => PgSslMode::Disable,
        Some("prefer" | "allow") => PgSslMode::Prefer,
        Some("require" | "verify-full") => PgSslMode::Require,
        Some("verify-ca") => return Err(invalid(
            "sslmode",
            "verify-ca is not offered: the certificate's name is always checked (use verify-full)"
                .into(),
        )),
        Some(other) => {
            return Err(invalid(
                "sslmode",
                format!("unknown mode {other:?} (disable, prefer, require or verify-full)"),
            ))
        }
    };
    if raw.schema.is_some() && schema_in_url.is_some() {
        return Err(invalid(
            "schema",
            "given in the URL and as `schema`: give it once".into(),
        ));
    }
    let schema = raw.schema.clone().or(schema_in_url);
    if let Some(schema) = &schema {
        let ok = !schema.is_empty()
            && schema.len() <= 63
            && schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && !schema.starts_with(|c: char| c.is_ascii_digit())
            && !schema.starts_with("pg_");
        if !ok {
            return Err(invalid(
                "schema",
                "must be lower-case letters, digits and _ (at most 63, not starting with a digit or pg_)"
                    .into(),
            ));
        }
    }
    let lease_seconds = raw.lease_seconds.unwrap_or(30);
    if !(5..=3600).contains(&lease_seconds) {
        return Err(invalid("lease_seconds", "must be from 5 to 3600".into()));
    }
    Ok(StateConfig::Postgres(PostgresConfig {
        url,
        password,
        schema,
        sslmode,
        ca_file: raw.ca_file.clone(),
        lease_seconds,
    }))
}

/// A CIDR range, or one address as a range of one.
pub(crate) fn parse_net(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .ok()
}

/// Reads and validates a config file; relative paths in it are taken from its folder.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: origin.clone(),
        source,
    })?;
    let mut config = parse(&text, &origin)?;
    let base = path.parent().unwrap_or(Path::new("."));
    resolve_paths(&mut config, base);
    for (_, mailbox) in config.mailboxes.iter_mut() {
        resolve_paths(mailbox, base);
    }
    Ok(config)
}

/// Relative paths in a config are taken from its folder.
fn resolve_paths(config: &mut Config, base: &Path) {
    let resolve = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    };
    if let Some(p) = config.rules_file.as_mut() {
        resolve(p);
    }
    if let Some(p) = config.templates_dir.as_mut() {
        resolve(p);
    }
    match &mut config.state {
        StateConfig::Sqlite(p) => resolve(p),
        StateConfig::Postgres(pg) => {
            if let Some(p) = pg.ca_file.as_mut() {
                resolve(p);
            }
            if let Some(SecretSource::File(p)) = pg.password.as_mut() {
                resolve(p);
            }
        }
    }
    if let Some(m) = config.mailbox.as_mut() {
        if let Some(p) = m.ca_file.as_mut() {
            resolve(p);
        }
        if let Some(SecretSource::File(p)) = m.password.as_mut() {
            resolve(p);
        }
    }
    if let Some(s) = config.smtp.as_mut() {
        if let Some(p) = s.ca_file.as_mut() {
            resolve(p);
        }
        if let Some(SecretSource::File(p)) = s.password.as_mut() {
            resolve(p);
        }
    }
    for w in config.webhooks.iter_mut() {
        if let notify::WebhookFormat::Template(p) = &mut w.format {
            resolve(p);
        }
    }
    if let Some(w) = config.web.as_mut() {
        for p in w.users_file.iter_mut() {
            resolve(p);
        }
        if let Some((cert, key)) = w.tls.as_mut() {
            resolve(cert);
            resolve(key);
        }
    }
    if let Some(o) = config.oauth2.as_mut() {
        if let Some(SecretSource::File(p)) = o.client_secret.as_mut() {
            resolve(p);
        }
        if let Some(RefreshTokenStore::File(p)) = o.refresh_token.as_mut() {
            resolve(p);
        }
    }
}

/// Free and consumer mail domains: anyone can have an address there, so verified mail from
/// them proves nothing about Microsoft's sender support.
const CONSUMER_DOMAINS: &[&str] = &[
    "outlook.com",
    "hotmail.com",
    "live.com",
    "msn.com",
    "passport.com",
    "windowslive.com",
    "gmail.com",
    "googlemail.com",
    "yahoo.com",
    "ymail.com",
    "aol.com",
    "icloud.com",
    "me.com",
    "mac.com",
    "gmx.com",
    "gmx.net",
    "gmx.de",
    "web.de",
    "mail.com",
    "proton.me",
    "protonmail.com",
    "yandex.com",
    "yandex.ru",
    "mail.ru",
    "zoho.com",
    "fastmail.com",
    "onmicrosoft.com",
];

/// Brands whose every country domain (`hotmail.fr`, `live.co.uk`, `outlook.de`) is a consumer
/// mail domain.
const CONSUMER_BRANDS: &[&str] = &["outlook", "hotmail", "live", "msn", "gmail", "yahoo"];

/// A domain whose verified mail may count as Microsoft's: a real domain, not a consumer mail
/// service nor a suffix that contains one.
fn check_microsoft_domain(domain: &str) -> Result<(), String> {
    let d = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    if !is_host_name(&d) || !d.contains('.') {
        return Err(format!("`{domain}` is not a domain name"));
    }
    let labels: Vec<&str> = d.split('.').collect();
    let first_label = labels.first().copied().unwrap_or_default();
    // A registry suffix such as `co.uk` would take in every domain under it.
    const SECOND_LEVEL: &[&str] = &[
        "co", "com", "net", "org", "ac", "gov", "edu", "ne", "or", "go", "gob", "ltd", "plc",
    ];
    if labels.len() == 2 && labels[1].len() == 2 && SECOND_LEVEL.contains(&labels[0]) {
        return Err(format!("`{domain}` is a registry suffix, not a domain"));
    }
    let covers_consumer = CONSUMER_DOMAINS
        .iter()
        .any(|c| *c == d || c.ends_with(&format!(".{d}")));
    if covers_consumer || CONSUMER_BRANDS.contains(&first_label) {
        return Err(format!(
            "`{domain}` is (or contains) a consumer mail domain where anyone can have an address; \
             name the domains Microsoft's sender support writes from, such as microsoft.com"
        ));
    }
    Ok(())
}

/// A DNS host name: dot-separated labels of letters, digits and inner hyphens.
fn is_host_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// An IMAP keyword (RFC 3501 `flag-keyword` = atom): printable ASCII without atom-specials, so
/// it can go into `UID STORE` as it is.
fn check_keyword(keyword: &str) -> Result<(), String> {
    let ok = !keyword.is_empty()
        && keyword.len() <= 128
        && keyword
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"(){%*\"\\]".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{keyword}` is not an IMAP keyword: use letters, digits and `$-_.`, \
             without spaces, parentheses, quotes, backslashes, `%`, `*`, `{{` or `]`"
        ))
    }
}

/// A folder name the bot can pass to SELECT, APPEND, CREATE and LIST: no control characters,
/// no LIST wildcards, not empty.
fn check_folder(folder: &str) -> Result<(), String> {
    if folder.trim().is_empty() {
        return Err("is empty".to_string());
    }
    if folder.len() > 512 {
        return Err("is longer than 512 bytes".to_string());
    }
    if let Some(c) = folder
        .chars()
        .find(|c| c.is_control() || *c == '*' || *c == '%')
    {
        return Err(format!(
            "`{}` contains {c:?}, which an IMAP folder name cannot carry here",
            folder.escape_debug()
        ));
    }
    if folder != folder.trim() {
        return Err(format!("`{folder}` starts or ends with white space"));
    }
    Ok(())
}

/// Splits `Name <addr@host>` or `addr@host` into (name, address).
fn split_address(text: &str) -> Option<(String, String)> {
    let text = text.trim();
    let (name, addr) = match (text.find('<'), text.rfind('>')) {
        (Some(open), Some(close)) if open < close => (
            text[..open].trim().trim_matches('"').to_string(),
            text[open + 1..close].trim().to_string(),
        ),
        _ => (String::new(), text.to_string()),
    };
    let (local, domain) = addr.split_once('@')?;
    if local.is_empty() || domain.is_empty() || addr.contains(char::is_whitespace) {
        return None;
    }
    let name = if name.is_empty() {
        "Postmaster".to_string()
    } else {
        name
    };
    Some((name, addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn microsoft_and_gmail_hosts_get_their_folder_names() {
        assert_eq!(
            HostedBy::of("Outlook.Office365.com."),
            Some(HostedBy::Microsoft)
        );
        assert_eq!(
            HostedBy::of("imap-mail.outlook.com"),
            Some(HostedBy::Microsoft)
        );
        assert_eq!(HostedBy::of("imap.gmail.com"), Some(HostedBy::Gmail));
        assert_eq!(HostedBy::of("imap.example.net"), None);
        assert_eq!(HostedBy::Microsoft.folders(), ("Drafts", "Sent Items"));
        assert_eq!(HostedBy::Gmail.folders().0, "[Gmail]/Drafts");
    }

    #[test]
    fn a_password_can_be_a_systemd_credential_named_not_a_path() {
        let base = "[identity]\nfrom = \"postmaster@example.net\"\n[mailbox]\nhost = \"imap.example.net\"\nusername = \"pm\"\n";
        let c = parse(
            &format!("{base}password_credential = \"imap-password\"\n"),
            "c.toml",
        )
        .expect("valid");
        assert_eq!(
            c.mailbox.and_then(|m| m.password),
            Some(SecretSource::Credential("imap-password".into()))
        );
        for bad in ["../etc/shadow", "", ".."] {
            let err = parse(
                &format!("{base}password_credential = \"{bad}\"\n"),
                "c.toml",
            )
            .expect_err(bad);
            assert!(
                err.to_string().contains("mailbox.password_credential"),
                "{err}"
            );
        }
        let err = parse(
            &format!("{base}password_credential = \"a\"\npassword_env = \"B\"\n"),
            "c.toml",
        )
        .expect_err("two sources");
        assert!(err.to_string().contains("password_credential"), "{err}");
    }

    #[test]
    fn empty_config_has_safe_defaults() {
        let c = parse("", "t").expect("valid");
        assert_eq!(c.mode, Mode::Draft);
        assert!(c.classify.authserv_ids.is_empty());
        assert_eq!(c.classify.microsoft_domains, vec!["microsoft.com"]);
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err = parse("[trust]\nauthserv_id = [\"mx\"]\n", "c.toml").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("c.toml") && text.contains("authserv_id"),
            "{text}"
        );
        assert!(
            text.contains("line 2") || text.contains(":2:") || text.contains("2 |"),
            "{text}"
        );
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = parse("[identity]\nfrom = \"nobody\"\n", "c.toml").unwrap_err();
        assert!(err.to_string().contains("identity.from"), "{err}");
        let err = parse("mode = \"yolo\"\n", "c.toml").unwrap_err();
        assert!(err.to_string().contains("mode"), "{err}");
        let err = parse("[identity]\nour_networks = [\"10.0.0.0/33\"]\n", "c.toml").unwrap_err();
        assert!(
            err.to_string().contains("identity.our_networks[0]"),
            "{err}"
        );
    }

    #[test]
    fn identity_and_trust_are_read() {
        let c = parse(
            "[identity]\nfrom = \"Example Postmaster <postmaster@example.net>\"\noperator = \"noc@example.net\"\nmessage_id_domain = \"postmaster.example.net\"\n[trust]\nauthserv_ids = [\"MX1.example.net\"]\n",
            "c.toml",
        )
        .expect("valid");
        assert_eq!(c.identity.name, "Example Postmaster");
        assert_eq!(c.identity.address, "postmaster@example.net");
        assert_eq!(c.identity.operator.as_deref(), Some("noc@example.net"));
        assert_eq!(c.classify.authserv_ids, vec!["mx1.example.net"]);
        assert_eq!(
            c.classify.own_message_id_domains,
            vec!["postmaster.example.net"]
        );
    }

    #[test]
    fn consumer_mail_domains_cannot_be_microsofts() {
        for d in [
            "outlook.com",
            "hotmail.fr",
            "live.co.uk",
            "msn.com",
            "gmail.com",
            "com",
            "co.uk",
            "onmicrosoft.com",
        ] {
            let text = format!("[trust]\nmicrosoft_domains = [\"microsoft.com\", \"{d}\"]\n");
            let err = parse(&text, "c.toml").expect_err(d).to_string();
            assert!(err.contains("trust.microsoft_domains[1]"), "{d}: {err}");
        }
        let c = parse(
            "[trust]\nmicrosoft_domains = [\"Microsoft.com.\", \"support.microsoft.com\"]\n",
            "c.toml",
        )
        .expect("valid");
        assert_eq!(
            c.classify.microsoft_domains,
            vec!["microsoft.com", "support.microsoft.com"]
        );
    }

    #[test]
    fn keywords_and_folders_follow_the_imap_grammar() {
        let mailbox =
            "[mailbox]\nhost = \"imap.example.net\"\nusername = \"u\"\npassword_env = \"P\"\n";
        for bad in [
            "$Done) UID 1:* +FLAGS (\\\\Deleted",
            "two words",
            "\\\\Seen",
            "a\\\"b",
            "x]",
        ] {
            let text = format!("{mailbox}handled_keyword = \"{bad}\"\n");
            let err = parse(&text, "c.toml").expect_err(bad).to_string();
            assert!(err.contains("mailbox.handled_keyword"), "{bad}: {err}");
        }
        assert!(parse(
            &format!("{mailbox}handled_keyword = \"$PostmasterBot\"\n"),
            "c.toml"
        )
        .is_ok());
        for bad in ["", "a\\r\\nb", "Review*", "%", " Review"] {
            let text = format!("{mailbox}review_folder = \"{bad}\"\n");
            let err = parse(&text, "c.toml").expect_err(bad).to_string();
            assert!(err.contains("mailbox.review_folder"), "{bad:?}: {err}");
        }
        assert!(parse(
            &format!("{mailbox}drafts_folder = \"[Gmail]/Drafts\"\n"),
            "c.toml"
        )
        .is_ok());
    }

    #[test]
    fn trust_hosts_are_host_names() {
        let err = parse(
            "[trust]\nreporting_mtas = [\"out1.example.net; x\"]\n",
            "c.toml",
        )
        .expect_err("bad host")
        .to_string();
        assert!(err.contains("trust.reporting_mtas[0]"), "{err}");
        let err = parse("[trust]\ndns_servers = [\"127.0.0.1:53\"]\n", "c.toml")
            .expect_err("dns without dkim")
            .to_string();
        assert!(err.contains("trust.dns_servers"), "{err}");
    }

    #[test]
    fn several_mailboxes_each_get_the_top_level_with_their_overrides() {
        let text = r#"
mode = "draft"
[identity]
from = "Postmaster <postmaster@a.example>"
operator = "noc@a.example"
[[mailbox]]
name = "a"
host = "imap.a.example"
username = "postmaster@a.example"
password_env = "A"
[[mailbox]]
name = "b"
host = "imap.b.example"
username = "postmaster@b.example"
password_env = "B"
mode = "approve"
[mailbox.identity]
from = "Postmaster <postmaster@b.example>"
"#;
        let c = parse(text, "c.toml").expect("valid");
        let all = c.mailbox_configs();
        let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        let (a, b) = (&all[0].1, &all[1].1);
        assert_eq!(a.mode, Mode::Draft);
        assert_eq!(b.mode, Mode::Approve);
        assert_eq!(b.identity.address, "postmaster@b.example");
        assert_eq!(
            b.identity.operator.as_deref(),
            Some("noc@a.example"),
            "kept from the top"
        );
        assert_eq!(
            b.mailbox.as_ref().map(|m| m.host.as_str()),
            Some("imap.b.example")
        );
        assert!(
            a.classify
                .own_addresses
                .iter()
                .any(|x| x == "postmaster@b.example"),
            "another mailbox's identity is our own mail too"
        );
        assert_eq!(
            c.mailbox.as_ref().map(|m| m.host.as_str()),
            Some("imap.a.example")
        );
    }

    #[test]
    fn several_mailboxes_need_distinct_names_and_errors_name_the_mailbox() {
        let entry = |name: &str, extra: &str| {
            format!(
                "[[mailbox]]\n{name}host = \"h\"\nusername = \"u\"\npassword_env = \"P\"\n{extra}"
            )
        };
        let unnamed = format!("{}{}", entry("name = \"a\"\n", ""), entry("", ""));
        let e = parse(&unnamed, "c.toml").expect_err("a name is needed");
        assert!(e.to_string().contains("mailbox[1].name"), "{e}");
        let twice = format!(
            "{}{}",
            entry("name = \"a\"\n", ""),
            entry("name = \"a\"\n", "")
        );
        assert!(parse(&twice, "c.toml")
            .expect_err("twice")
            .to_string()
            .contains("names two"));
        let bad = entry("name = \"A B\"\n", "");
        assert!(parse(&bad, "c.toml").is_err());
        let typo = format!(
            "{}{}",
            entry("name = \"a\"\n", ""),
            entry("name = \"b\"\n", "foldr = \"x\"\n")
        );
        let e = parse(&typo, "c.toml").expect_err("unknown key");
        assert!(
            e.to_string().contains("mailbox b") && e.to_string().contains("foldr"),
            "{e}"
        );
    }

    #[test]
    fn a_postgres_state_is_validated_and_its_url_may_name_the_schema() {
        let c = parse(
            "[state]\nurl = \"postgres://u@db.example/x?schema=pmb&sslmode=verify-full\"\npassword_env = \"P\"\n",
            "c.toml",
        )
        .expect("valid");
        let StateConfig::Postgres(pg) = c.state else {
            panic!("postgres")
        };
        assert_eq!(pg.schema.as_deref(), Some("pmb"));
        assert_eq!(pg.sslmode, PgSslMode::Require);
        assert_eq!(pg.lease_seconds, 30);
        assert!(!pg.url.contains("sslmode"));
        let remote =
            parse("[state]\nurl = \"postgres://u@db.example/x\"\n", "c.toml").expect("valid");
        assert!(matches!(
            remote.state,
            StateConfig::Postgres(PostgresConfig {
                sslmode: PgSslMode::Require,
                ..
            })
        ));
        let local =
            parse("[state]\nurl = \"postgres://u@127.0.0.1/x\"\n", "c.toml").expect("valid");
        assert!(matches!(
            local.state,
            StateConfig::Postgres(PostgresConfig {
                sslmode: PgSslMode::Disable,
                ..
            })
        ));
        for (bad, key) in [
            (
                "url = \"postgres://u:pw@h/x\"\npassword_env = \"P\"",
                "state.url",
            ),
            (
                "url = \"postgres://u@h/x\"\nsslmode = \"verify-ca\"",
                "state.sslmode",
            ),
            (
                "url = \"postgres://u@h/x\"\nschema = \"Bad\"",
                "state.schema",
            ),
            ("url = \"mysql://u@h/x\"", "state.url"),
            ("path = \"s.db\"\nschema = \"x\"", "state.schema"),
            (
                "url = \"postgres://u@h/x\"\nlease_seconds = 1",
                "state.lease_seconds",
            ),
        ] {
            let e = parse(&format!("[state]\n{bad}\n"), "c.toml").expect_err(bad);
            assert!(e.to_string().contains(key), "{bad}: {e}");
        }
    }
}
