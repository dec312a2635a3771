//! The `[oauth2]` section: where XOAUTH2 access tokens come from when no external command
//! prints them. Provider presets fill the endpoints and scopes; every one can be overridden.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{secret_source, ConfigError, SecretKeys, SecretSource};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOAuth2 {
    pub provider: Option<Provider>,
    pub tenant: Option<String>,
    pub flow: Option<Flow>,
    pub client_id: Option<String>,
    pub client_secret_env: Option<String>,
    pub client_secret_file: Option<PathBuf>,
    pub client_secret_command: Option<String>,
    pub client_secret_credential: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub authorization_url: Option<String>,
    pub token_url: Option<String>,
    pub device_authorization_url: Option<String>,
    pub refresh_token_file: Option<PathBuf>,
    pub refresh_token_env: Option<String>,
    pub refresh_before_expiry_seconds: Option<u64>,
    pub redirect_port: Option<u16>,
    pub ca_file: Option<PathBuf>,
}

/// Whose identity platform issues the tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Microsoft 365 (Exchange Online) and Outlook.com, through the Microsoft identity platform.
    Microsoft,
    /// Gmail and Google Workspace.
    Gmail,
    /// Any RFC 6749 server: every endpoint comes from the config.
    Custom,
}

/// How the bot gets its first token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flow {
    /// RFC 8628: `auth login` prints a URL and a code; a person signs in anywhere. Delegated
    /// access with a refresh token.
    DeviceCode,
    /// RFC 6749 §4.1 with PKCE and a loopback redirect (RFC 8252): `auth login` prints a URL to
    /// open in a browser. Delegated access with a refresh token. Google's only choice for mail.
    AuthorizationCode,
    /// App-only access (Microsoft 365 `IMAP.AccessAsApp`): no person, no refresh token.
    ClientCredentials,
}

/// Where the long-lived refresh token is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshTokenStore {
    /// A file written 0600 by `auth login` and rewritten when the provider rotates the token.
    File(PathBuf),
    /// An environment variable: read-only, so a rotated token cannot be saved.
    Env(String),
}

/// A validated `[oauth2]` section.
#[derive(Debug, Clone)]
pub struct OAuth2Config {
    pub provider: Provider,
    pub flow: Flow,
    pub client_id: String,
    pub client_secret: Option<SecretSource>,
    pub scopes: Vec<String>,
    pub authorization_url: Option<String>,
    pub token_url: String,
    pub device_authorization_url: Option<String>,
    /// `None` with the client-credentials flow, which has no refresh token.
    pub refresh_token: Option<RefreshTokenStore>,
    /// A cached access token is replaced when it expires within this margin.
    pub refresh_before_expiry: Duration,
    /// The loopback port for the authorization-code redirect; 0 picks a free one.
    pub redirect_port: u16,
    /// Extra CA certificates (PEM) to trust for the identity provider's endpoints, besides
    /// Mozilla's roots: an on-premises or test identity provider with a private CA.
    pub ca_file: Option<PathBuf>,
}

/// Microsoft's delegated scopes for IMAP and SMTP, plus a refresh token.
const MICROSOFT_DELEGATED: &[&str] = &[
    "https://outlook.office.com/IMAP.AccessAsUser.All",
    "https://outlook.office.com/SMTP.Send",
    "offline_access",
];
/// App-only: whatever application permissions were granted on Exchange Online
/// (IMAP.AccessAsApp, SMTP.SendAsApp).
const MICROSOFT_APP_ONLY: &[&str] = &["https://outlook.office365.com/.default"];
const GMAIL_SCOPES: &[&str] = &["https://mail.google.com/"];

/// Endpoints and scopes a provider preset fills in.
struct Preset {
    authorization_url: Option<String>,
    token_url: Option<String>,
    device_authorization_url: Option<String>,
    scopes: Vec<String>,
}

fn preset(provider: Provider, tenant: &str, flow: Flow) -> Preset {
    let strings = |s: &[&str]| s.iter().map(|s| s.to_string()).collect();
    match provider {
        Provider::Microsoft => {
            let base = format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0");
            Preset {
                authorization_url: Some(format!("{base}/authorize")),
                token_url: Some(format!("{base}/token")),
                device_authorization_url: Some(format!("{base}/devicecode")),
                scopes: strings(if flow == Flow::ClientCredentials {
                    MICROSOFT_APP_ONLY
                } else {
                    MICROSOFT_DELEGATED
                }),
            }
        }
        Provider::Gmail => Preset {
            authorization_url: Some("https://accounts.google.com/o/oauth2/v2/auth".into()),
            token_url: Some("https://oauth2.googleapis.com/token".into()),
            device_authorization_url: Some("https://oauth2.googleapis.com/device/code".into()),
            scopes: strings(GMAIL_SCOPES),
        },
        Provider::Custom => Preset {
            authorization_url: None,
            token_url: None,
            device_authorization_url: None,
            scopes: Vec::new(),
        },
    }
}

/// Only HTTPS, except on loopback where tests and local helpers listen.
pub(super) fn check_endpoint(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    let loopback = match parsed.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(format!(
            "`{url}` must use https (plain http only on loopback)"
        )),
    }
}

/// Validates `[oauth2]`; `state_path` places the default refresh-token file beside the store.
pub(super) fn oauth2_config(
    raw: &RawOAuth2,
    state_path: &std::path::Path,
    origin: &str,
) -> Result<OAuth2Config, ConfigError> {
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        path: origin.to_string(),
        key: format!("oauth2.{key}"),
        message,
    };
    let provider = raw
        .provider
        .ok_or_else(|| invalid("provider", "is required: microsoft, gmail or custom".into()))?;
    let flow = raw.flow.unwrap_or(match provider {
        // Google refuses mail scopes in the device flow.
        Provider::Gmail => Flow::AuthorizationCode,
        Provider::Microsoft | Provider::Custom => Flow::DeviceCode,
    });
    let tenant = raw.tenant.clone().unwrap_or_else(|| "common".to_string());
    if tenant.is_empty()
        || !tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.".contains(c))
    {
        return Err(invalid(
            "tenant",
            format!("`{tenant}` is not a tenant id or domain"),
        ));
    }
    match (provider, flow) {
        (Provider::Gmail, Flow::DeviceCode) => {
            return Err(invalid(
                "flow",
                "Google does not allow mail scopes in the device-code flow; use authorization_code".into(),
            ))
        }
        (Provider::Gmail, Flow::ClientCredentials) => {
            return Err(invalid(
                "flow",
                "Google has no client-credentials grant for Gmail; a service account with domain-wide delegation needs an external helper in [mailbox] password_command".into(),
            ))
        }
        (Provider::Microsoft, Flow::ClientCredentials)
            if ["common", "organizations", "consumers"].contains(&tenant.as_str()) =>
        {
            return Err(invalid(
                "tenant",
                "app-only access needs your tenant's id or domain, not common/organizations/consumers".into(),
            ))
        }
        _ => {}
    }
    let client_id = raw
        .client_id
        .clone()
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| {
            invalid(
                "client_id",
                "is required (the app registration's id)".into(),
            )
        })?;
    let client_secret = secret_source(
        "oauth2",
        "client_secret",
        SecretKeys {
            env: &raw.client_secret_env,
            file: &raw.client_secret_file,
            command: &raw.client_secret_command,
            credential: &raw.client_secret_credential,
        },
        origin,
    )?;
    if client_secret.is_none() && (flow == Flow::ClientCredentials || provider == Provider::Gmail) {
        return Err(invalid(
            "client_secret_env",
            "a client secret is required here (client_secret_env, _file, _command or _credential)"
                .into(),
        ));
    }
    let preset = preset(provider, &tenant, flow);
    let pick = |given: &Option<String>, preset: Option<String>| given.clone().or(preset);
    let authorization_url = pick(&raw.authorization_url, preset.authorization_url);
    let device_authorization_url = pick(
        &raw.device_authorization_url,
        preset.device_authorization_url,
    );
    let token_url = pick(&raw.token_url, preset.token_url)
        .ok_or_else(|| invalid("token_url", "is required with provider = \"custom\"".into()))?;
    for (key, url) in [
        ("token_url", Some(&token_url)),
        ("authorization_url", authorization_url.as_ref()),
        (
            "device_authorization_url",
            device_authorization_url.as_ref(),
        ),
    ] {
        if let Some(url) = url {
            check_endpoint(url).map_err(|m| invalid(key, m))?;
        }
    }
    match flow {
        Flow::DeviceCode if device_authorization_url.is_none() => {
            return Err(invalid(
                "device_authorization_url",
                "is required for the device-code flow".into(),
            ))
        }
        Flow::AuthorizationCode if authorization_url.is_none() => {
            return Err(invalid(
                "authorization_url",
                "is required for the authorization-code flow".into(),
            ))
        }
        _ => {}
    }
    let scopes = raw.scopes.clone().unwrap_or(preset.scopes);
    if scopes.is_empty() || scopes.iter().any(|s| s.is_empty() || s.contains(' ')) {
        return Err(invalid(
            "scopes",
            "give one or more scopes, each without spaces".into(),
        ));
    }
    let refresh_token = match (&raw.refresh_token_file, &raw.refresh_token_env) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "refresh_token_env",
                "give refresh_token_file or refresh_token_env, not both".into(),
            ))
        }
        _ if flow == Flow::ClientCredentials => None,
        (_, Some(env)) => Some(RefreshTokenStore::Env(env.clone())),
        (Some(file), None) => Some(RefreshTokenStore::File(file.clone())),
        (None, None) => Some(RefreshTokenStore::File(
            state_path.with_file_name("oauth2-refresh-token"),
        )),
    };
    Ok(OAuth2Config {
        provider,
        flow,
        client_id,
        client_secret,
        scopes,
        authorization_url,
        token_url,
        device_authorization_url,
        refresh_token,
        refresh_before_expiry: Duration::from_secs(
            raw.refresh_before_expiry_seconds.unwrap_or(300),
        ),
        redirect_port: raw.redirect_port.unwrap_or(0),
        ca_file: raw.ca_file.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<OAuth2Config, ConfigError> {
        let raw: RawOAuth2 = toml::from_str(text).expect("toml");
        oauth2_config(
            &raw,
            std::path::Path::new("/var/lib/pmb/state.sqlite3"),
            "t.toml",
        )
    }

    #[test]
    fn microsoft_preset_fills_endpoints_and_delegated_scopes() {
        let c = parse("provider = \"microsoft\"\ntenant = \"contoso.com\"\nclient_id = \"abc\"")
            .expect("valid");
        assert_eq!(c.flow, Flow::DeviceCode);
        assert_eq!(
            c.token_url,
            "https://login.microsoftonline.com/contoso.com/oauth2/v2.0/token"
        );
        assert!(c
            .scopes
            .iter()
            .any(|s| s.ends_with("IMAP.AccessAsUser.All")));
        assert!(c.scopes.contains(&"offline_access".to_string()));
        assert_eq!(
            c.refresh_token,
            Some(RefreshTokenStore::File(
                "/var/lib/pmb/oauth2-refresh-token".into()
            ))
        );
    }

    #[test]
    fn app_only_uses_default_scope_and_needs_a_tenant_and_secret() {
        let base = "provider = \"microsoft\"\nflow = \"client_credentials\"\nclient_id = \"abc\"\n";
        let err = parse(&format!("{base}client_secret_env = \"S\"")).unwrap_err();
        assert!(err.to_string().contains("oauth2.tenant"), "{err}");
        let err = parse(&format!("{base}tenant = \"contoso.com\"")).unwrap_err();
        assert!(err.to_string().contains("client_secret"), "{err}");
        let c = parse(&format!(
            "{base}tenant = \"contoso.com\"\nclient_secret_env = \"S\""
        ))
        .expect("valid");
        assert_eq!(c.scopes, vec!["https://outlook.office365.com/.default"]);
        assert_eq!(c.refresh_token, None);
    }

    #[test]
    fn gmail_defaults_to_the_browser_flow_and_refuses_the_device_flow() {
        let c = parse("provider = \"gmail\"\nclient_id = \"x\"\nclient_secret_env = \"S\"")
            .expect("valid");
        assert_eq!(c.flow, Flow::AuthorizationCode);
        assert_eq!(c.scopes, vec!["https://mail.google.com/"]);
        let err = parse(
            "provider = \"gmail\"\nflow = \"device_code\"\nclient_id = \"x\"\nclient_secret_env = \"S\"",
        )
        .unwrap_err();
        assert!(err.to_string().contains("device-code"), "{err}");
    }

    #[test]
    fn custom_endpoints_must_be_https_except_on_loopback() {
        let err = parse(
            "provider = \"custom\"\nclient_id = \"x\"\ntoken_url = \"http://idp.example/token\"\ndevice_authorization_url = \"https://idp.example/dc\"",
        )
        .unwrap_err();
        assert!(err.to_string().contains("oauth2.token_url"), "{err}");
        parse(
            "provider = \"custom\"\nclient_id = \"x\"\nscopes = [\"mail\"]\ntoken_url = \"http://127.0.0.1:9/token\"\ndevice_authorization_url = \"http://localhost:9/dc\"",
        )
        .expect("loopback http is fine");
        let err = parse("provider = \"custom\"\nclient_id = \"x\"").unwrap_err();
        assert!(err.to_string().contains("token_url"), "{err}");
    }
}
