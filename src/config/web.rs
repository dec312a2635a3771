//! The `[web]` section: where the operator's console listens and who may use it. Listening on
//! loopback may run without a login; any other address needs users or a trusted reverse proxy,
//! since the console can approve what is sent to Microsoft.

use std::net::SocketAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;

use super::ConfigError;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWeb {
    pub listen: Option<String>,
    pub users_file: Option<PathBuf>,
    pub proxy_user_header: Option<String>,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub ready_minutes: Option<u32>,
}

/// The console's settings.
#[derive(Debug, Clone)]
pub struct WebConfig {
    pub listen: SocketAddr,
    /// `NAME:argon2-hash` lines, written by `postmaster-bot web adduser`.
    pub users_file: Option<PathBuf>,
    /// A reverse proxy that has logged the user in names them in this header; it is believed
    /// only from `trusted_proxies`.
    pub proxy: Option<ProxyAuth>,
    /// Serve HTTPS with this certificate chain and key (PEM).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// `/readyz` fails when the mailbox was last reached longer ago than this.
    pub ready_minutes: u32,
}

#[derive(Debug, Clone)]
pub struct ProxyAuth {
    pub header: String,
    pub from: Vec<IpNet>,
}

impl WebConfig {
    /// Whether anyone at all can reach the console without a login.
    pub fn open_to_anyone(&self) -> bool {
        self.users_file.is_none() && self.proxy.is_none()
    }
}

pub(super) fn parse(raw: &RawWeb, origin: &str) -> Result<WebConfig, ConfigError> {
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        path: origin.to_string(),
        key: format!("web.{key}"),
        message,
    };
    let listen_text = raw.listen.as_deref().unwrap_or("127.0.0.1:8025");
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        invalid(
            "listen",
            format!("`{listen_text}` is not an address and port such as \"127.0.0.1:8025\""),
        )
    })?;
    let proxy = match (&raw.proxy_user_header, raw.trusted_proxies.is_empty()) {
        (None, true) => None,
        (None, false) => {
            return Err(invalid(
                "trusted_proxies",
                "is only used with proxy_user_header".to_string(),
            ))
        }
        (Some(_), true) => {
            return Err(invalid(
                "trusted_proxies",
                "must name the proxy's addresses when proxy_user_header is set; the header is believed from nowhere else".to_string(),
            ))
        }
        (Some(header), false) => {
            if header.is_empty()
                || !header
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-')
            {
                return Err(invalid(
                    "proxy_user_header",
                    format!("`{header}` is not a header field name"),
                ));
            }
            let mut from = Vec::new();
            for (i, n) in raw.trusted_proxies.iter().enumerate() {
                let net = super::parse_net(n).ok_or_else(|| {
                    invalid(
                        &format!("trusted_proxies[{i}]"),
                        format!("`{n}` is not an IP address or CIDR range"),
                    )
                })?;
                from.push(net);
            }
            Some(ProxyAuth {
                header: header.clone(),
                from,
            })
        }
    };
    let tls = match (&raw.tls_cert, &raw.tls_key) {
        (Some(c), Some(k)) => Some((c.clone(), k.clone())),
        (None, None) => None,
        (Some(_), None) => return Err(invalid("tls_key", "is needed with tls_cert".into())),
        (None, Some(_)) => return Err(invalid("tls_cert", "is needed with tls_key".into())),
    };
    let web = WebConfig {
        listen,
        users_file: raw.users_file.clone(),
        proxy,
        tls,
        ready_minutes: raw.ready_minutes.unwrap_or(15).max(1),
    };
    // NOTE: the console approves what is sent to Microsoft; on an address others can reach it
    // must know who is asking.
    if !listen.ip().is_loopback() && web.open_to_anyone() {
        return Err(invalid(
            "listen",
            format!(
                "{listen} can be reached from other hosts, so the console needs users_file (`postmaster-bot web adduser NAME`) or proxy_user_header with trusted_proxies; listen on 127.0.0.1 to run it without a login"
            ),
        ));
    }
    Ok(web)
}
