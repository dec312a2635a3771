//! OAuth2 access tokens for XOAUTH2, with the `oauth2` crate: a refresh token (from the device-code
//! or browser login) or app-only client credentials. The access token is cached in memory and
//! replaced before it expires, and on demand after a server refused it; a rotated refresh token
//! is written back, 0600, atomically.

use std::path::Path;
use std::time::{Duration, Instant};

use oauth2::basic::{BasicClient, BasicErrorResponseType};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken,
    DeviceAuthorizationUrl, ErrorResponseType, PkceCodeChallenge, RedirectUrl, RefreshToken,
    RequestTokenError, Scope, StandardDeviceAuthorizationResponse, StandardErrorResponse,
    TokenResponse, TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use tracing::{info, warn};

use crate::config::{Flow, OAuth2Config, Provider, RefreshTokenStore};
use crate::shell::secret::{self, SecretError};

/// A token could not be obtained. Messages name endpoints and files, never a token.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("OAuth2 token endpoint {url} cannot be reached: {message}")]
    Unreachable { url: String, message: String },
    #[error("OAuth2 token endpoint {url} refused: {code}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused {
        url: String,
        code: String,
        description: Option<String>,
        /// `temporarily_unavailable` and the like: asking again later may work.
        transient: bool,
    },
    #[error("OAuth2 endpoint {url} answered something that is not an OAuth2 response: {message}")]
    Garbled { url: String, message: String },
    #[error(
        "no refresh token in {source_name}: run `postmaster-bot auth login --config <file>` once"
    )]
    NoRefreshToken { source_name: String },
    #[error("failed to {action} refresh token file {path}: {source}")]
    RefreshTokenFile {
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("client secret: {0}")]
    ClientSecret(#[from] SecretError),
    #[error("OAuth2 setup: {0}")]
    Setup(String),
    #[error("sign-in failed: {0}")]
    Login(String),
}

impl OAuthError {
    /// Whether asking again later can help (a network problem, a busy endpoint).
    pub fn is_transient(&self) -> bool {
        match self {
            OAuthError::Unreachable { .. } | OAuthError::Garbled { .. } => true,
            OAuthError::Refused { transient, .. } => *transient,
            _ => false,
        }
    }
}

/// Whether a cached token must be replaced now: it expires within `margin`.
pub fn needs_refresh(expires_at: Instant, now: Instant, margin: Duration) -> bool {
    expires_at.saturating_duration_since(now) <= margin
}

struct Cached {
    token: SecretString,
    expires_at: Instant,
}

/// Issues access tokens for one account; shared by the IMAP and SMTP connections.
pub struct TokenProvider {
    cfg: OAuth2Config,
    http: oauth2::reqwest::Client,
    cache: tokio::sync::Mutex<Option<Cached>>,
    warned_unsaved_rotation: std::sync::atomic::AtomicBool,
}

type Client = BasicClient<
    oauth2::EndpointMaybeSet,
    oauth2::EndpointMaybeSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
>;

type TokenError = RequestTokenError<
    oauth2::HttpClientError<oauth2::reqwest::Error>,
    oauth2::StandardErrorResponse<BasicErrorResponseType>,
>;

impl TokenProvider {
    pub fn new(cfg: OAuth2Config) -> Result<TokenProvider, OAuthError> {
        let mut builder = oauth2::reqwest::ClientBuilder::new()
            // Following redirects from a token endpoint opens the door to SSRF.
            .redirect(oauth2::reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30));
        if let Some(path) = &cfg.ca_file {
            let certs = crate::shell::tls::read_ca_file(path)
                .map_err(|e| OAuthError::Setup(format!("oauth2.ca_file: {e}")))?;
            for der in certs {
                let cert = oauth2::reqwest::Certificate::from_der(&der).map_err(|e| {
                    OAuthError::Setup(format!("oauth2.ca_file {}: {e}", path.display()))
                })?;
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| OAuthError::Setup(e.to_string()))?;
        Ok(TokenProvider {
            cfg,
            http,
            cache: tokio::sync::Mutex::new(None),
            warned_unsaved_rotation: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn config(&self) -> &OAuth2Config {
        &self.cfg
    }

    async fn client(&self) -> Result<Client, OAuthError> {
        let setup = |what: &str, e: oauth2::url::ParseError| {
            OAuthError::Setup(format!("{what} is not a URL: {e}"))
        };
        let mut client = BasicClient::new(ClientId::new(self.cfg.client_id.clone()))
            .set_auth_type(AuthType::RequestBody)
            .set_token_uri(
                TokenUrl::new(self.cfg.token_url.clone()).map_err(|e| setup("token_url", e))?,
            )
            .set_auth_uri_option(
                self.cfg
                    .authorization_url
                    .clone()
                    .map(AuthUrl::new)
                    .transpose()
                    .map_err(|e| setup("authorization_url", e))?,
            )
            .set_device_authorization_url_option(
                self.cfg
                    .device_authorization_url
                    .clone()
                    .map(DeviceAuthorizationUrl::new)
                    .transpose()
                    .map_err(|e| setup("device_authorization_url", e))?,
            );
        if let Some(source) = &self.cfg.client_secret {
            let secret = secret::resolve(source).await?;
            client =
                client.set_client_secret(ClientSecret::new(secret.expose_secret().to_string()));
        }
        Ok(client)
    }

    fn scopes(&self) -> impl Iterator<Item = Scope> + '_ {
        self.cfg.scopes.iter().cloned().map(Scope::new)
    }

    /// An access token valid for at least the configured margin. `refresh` forces a new one:
    /// after a server refused the cached token, or before a reconnect.
    pub async fn access_token(&self, refresh: bool) -> Result<SecretString, OAuthError> {
        let mut cache = self.cache.lock().await;
        if let Some(c) = cache.as_ref() {
            if !refresh
                && !needs_refresh(c.expires_at, Instant::now(), self.cfg.refresh_before_expiry)
            {
                return Ok(c.token.clone());
            }
        }
        let fresh = self.request_token().await?;
        let token = fresh.token.clone();
        *cache = Some(fresh);
        Ok(token)
    }

    async fn request_token(&self) -> Result<Cached, OAuthError> {
        let client = self.client().await?;
        let response = match self.cfg.flow {
            Flow::ClientCredentials => client
                .exchange_client_credentials()
                .add_scopes(self.scopes())
                .request_async(&self.http)
                .await
                .map_err(|e| self.token_error(e))?,
            Flow::DeviceCode | Flow::AuthorizationCode => {
                let stored = self.read_refresh_token()?;
                let refresh = RefreshToken::new(stored.expose_secret().to_string());
                let mut request = client.exchange_refresh_token(&refresh);
                // Google keeps the scopes of the grant; Microsoft wants them named again.
                if self.cfg.provider != Provider::Gmail {
                    request = request.add_scopes(self.scopes());
                }
                let response = request
                    .request_async(&self.http)
                    .await
                    .map_err(|e| self.token_error(e))?;
                if let Some(rotated) = response.refresh_token() {
                    if rotated.secret() != stored.expose_secret() {
                        self.save_rotated(rotated.secret())?;
                    }
                }
                response
            }
        };
        let lifetime = response.expires_in();
        info!(
            flow = ?self.cfg.flow,
            expires_in = lifetime.map(|d| d.as_secs()),
            "OAuth2 access token obtained"
        );
        Ok(Cached {
            token: SecretString::from(response.access_token().secret().to_string()),
            // No `expires_in`: an hour, the common lifetime.
            expires_at: Instant::now() + lifetime.unwrap_or(Duration::from_secs(3600)),
        })
    }

    fn token_error(&self, e: TokenError) -> OAuthError {
        let mut error = describe(&self.cfg.token_url, e);
        if let OAuthError::Refused {
            code, description, ..
        } = &mut error
        {
            if code == "invalid_grant" && self.cfg.flow != Flow::ClientCredentials {
                // Revoked, expired, or the password changed: only a new sign-in helps.
                *description = Some(format!(
                    "{}sign in again with `postmaster-bot auth login --config <file>`",
                    description
                        .take()
                        .map(|d| format!("{d}; "))
                        .unwrap_or_default()
                ));
            }
        }
        error
    }

    fn read_refresh_token(&self) -> Result<SecretString, OAuthError> {
        let (text, source_name) = match &self.cfg.refresh_token {
            Some(RefreshTokenStore::Env(name)) => (
                std::env::var(name).unwrap_or_default(),
                format!("environment variable {name}"),
            ),
            Some(RefreshTokenStore::File(path)) => match std::fs::read_to_string(path) {
                Ok(text) => (text, path.display().to_string()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    (String::new(), path.display().to_string())
                }
                Err(source) => {
                    return Err(OAuthError::RefreshTokenFile {
                        action: "read",
                        path: path.display().to_string(),
                        source,
                    })
                }
            },
            None => (String::new(), "the configuration".to_string()),
        };
        let token = text.trim();
        if token.is_empty() {
            return Err(OAuthError::NoRefreshToken { source_name });
        }
        Ok(SecretString::from(token.to_string()))
    }

    fn save_rotated(&self, token: &str) -> Result<(), OAuthError> {
        match &self.cfg.refresh_token {
            Some(RefreshTokenStore::File(path)) => {
                write_refresh_token(path, token)?;
                info!(file = %path.display(), "rotated refresh token saved");
                Ok(())
            }
            _ => {
                if !self
                    .warned_unsaved_rotation
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    warn!("the provider rotated the refresh token, but it comes from the environment and cannot be saved; the old one works until it expires");
                }
                Ok(())
            }
        }
    }

    /// `auth login` with the device-code flow (RFC 8628): `show` gets the text for the person
    /// who signs in; returns once they did, with the refresh token saved.
    pub async fn login_device_code(&self, show: impl Fn(&str)) -> Result<(), OAuthError> {
        let client = self.client().await?;
        let url = self
            .cfg
            .device_authorization_url
            .clone()
            .unwrap_or_default();
        let details: StandardDeviceAuthorizationResponse = client
            .exchange_device_code()
            .map_err(|e| OAuthError::Setup(e.to_string()))?
            .add_scopes(self.scopes())
            .request_async(&self.http)
            .await
            .map_err(|e| describe(&url, e))?;
        show(&format!(
            "To sign in, open {} and enter the code {}\n(waiting up to {} minutes)",
            details.verification_uri().as_str(),
            details.user_code().secret(),
            details.expires_in().as_secs() / 60
        ));
        let response = client
            .exchange_device_access_token(&details)
            .request_async(&self.http, tokio::time::sleep, None)
            .await
            .map_err(|e| describe(&self.cfg.token_url, e))?;
        self.keep_login(response.refresh_token().map(|t| t.secret().as_str()))
    }

    /// `auth login` with the authorization-code flow, PKCE and a loopback redirect (RFC 8252).
    /// The redirect lands on a listener on 127.0.0.1; when the browser runs on another machine,
    /// the address it ends on can be pasted on standard input instead.
    pub async fn login_authorization_code(&self, show: impl Fn(&str)) -> Result<(), OAuthError> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.cfg.redirect_port))
            .await
            .map_err(|e| {
                OAuthError::Setup(format!("cannot listen on 127.0.0.1 for the redirect: {e}"))
            })?;
        let port = listener
            .local_addr()
            .map_err(|e| OAuthError::Setup(e.to_string()))?
            .port();
        let redirect = format!("http://127.0.0.1:{port}/");
        let client = self.client().await?.set_redirect_uri(
            RedirectUrl::new(redirect.clone()).map_err(|e| OAuthError::Setup(e.to_string()))?,
        );
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client
            .authorize_url(CsrfToken::new_random)
            .map_err(|e| OAuthError::Setup(e.to_string()))?
            .add_scopes(self.scopes())
            .set_pkce_challenge(challenge);
        if self.cfg.provider == Provider::Gmail {
            // Without these Google issues no refresh token on a repeated consent.
            request = request
                .add_extra_param("access_type", "offline")
                .add_extra_param("prompt", "consent");
        }
        let (url, state) = request.url();
        show(&format!(
            "Open this address in a browser and sign in:\n{url}\n\nThe browser is sent back to {redirect}. If the browser runs on another machine, copy the address it ends on (the page will not load) and paste it here."
        ));
        let landed = wait_for_redirect(listener).await?;
        let query = landed
            .query_pairs()
            .collect::<std::collections::HashMap<_, _>>();
        if let Some(error) = query.get("error") {
            return Err(OAuthError::Login(format!(
                "the provider answered {error}{}",
                query
                    .get("error_description")
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            )));
        }
        if query.get("state").map(|s| s.as_ref()) != Some(state.secret().as_str()) {
            return Err(OAuthError::Login(
                "the redirect carries a different state: not the answer to this sign-in".into(),
            ));
        }
        let code = query
            .get("code")
            .ok_or_else(|| OAuthError::Login("the redirect carries no code".into()))?;
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .set_pkce_verifier(verifier)
            .request_async(&self.http)
            .await
            .map_err(|e| self.token_error(e))?;
        self.keep_login(response.refresh_token().map(|t| t.secret().as_str()))
    }

    fn keep_login(&self, refresh_token: Option<&str>) -> Result<(), OAuthError> {
        let token = refresh_token.ok_or_else(|| {
            OAuthError::Login(
                "the provider issued no refresh token (Microsoft needs the offline_access scope)"
                    .into(),
            )
        })?;
        match &self.cfg.refresh_token {
            Some(RefreshTokenStore::File(path)) => write_refresh_token(path, token),
            Some(RefreshTokenStore::Env(name)) => Err(OAuthError::Login(format!(
                "refresh_token_env = \"{name}\" is read-only: set refresh_token_file to let `auth login` store the token"
            ))),
            None => Err(OAuthError::Login(
                "the client-credentials flow needs no sign-in".into(),
            )),
        }
    }
}

/// Turns the crate's error into ours, for the token and device-authorization endpoints alike.
fn describe<RE, T>(url: &str, e: RequestTokenError<RE, StandardErrorResponse<T>>) -> OAuthError
where
    RE: std::error::Error + 'static,
    T: ErrorResponseType + AsRef<str> + std::fmt::Display + 'static,
{
    let url = url.to_string();
    match e {
        RequestTokenError::ServerResponse(r) => {
            let code = r.error().as_ref().to_string();
            OAuthError::Refused {
                transient: matches!(
                    code.as_str(),
                    "temporarily_unavailable" | "server_error" | "slow_down"
                ),
                description: r.error_description().cloned(),
                code,
                url,
            }
        }
        RequestTokenError::Request(e) => {
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                message = format!("{message}: {s}");
                source = s.source();
            }
            OAuthError::Unreachable { url, message }
        }
        RequestTokenError::Parse(e, _) => OAuthError::Garbled {
            url,
            message: e.to_string(),
        },
        RequestTokenError::Other(message) => OAuthError::Garbled { url, message },
    }
}

/// Writes the refresh token readable by the owner only, replacing the old file atomically.
pub fn write_refresh_token(path: &Path, token: &str) -> Result<(), OAuthError> {
    let failed = |source| OAuthError::RefreshTokenFile {
        action: "write",
        path: path.display().to_string(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(failed)?;
    // NamedTempFile is created 0600.
    let mut tmp = tempfile::Builder::new()
        .prefix(".oauth2-refresh-token")
        .tempfile_in(dir)
        .map_err(failed)?;
    use std::io::Write;
    writeln!(tmp, "{token}").map_err(failed)?;
    tmp.as_file().sync_all().map_err(failed)?;
    tmp.persist(path).map_err(|e| failed(e.error))?;
    Ok(())
}

/// Waits for the browser's redirect on the listener, or a pasted address on standard input.
async fn wait_for_redirect(
    listener: tokio::net::TcpListener,
) -> Result<oauth2::url::Url, OAuthError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (paste_tx, mut paste_rx) = tokio::sync::mpsc::channel::<String>(1);
    // A plain thread: tokio's stdin would keep the runtime from shutting down while it reads.
    std::thread::spawn(move || {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).unwrap_or(0) > 0 {
            if paste_tx.blocking_send(line.trim().to_string()).is_err() {
                return;
            }
            line.clear();
        }
    });
    let mut stdin_open = true;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((mut stream, _)) = accepted else { continue };
                let mut buf = vec![0u8; 8192];
                let mut len = 0;
                // Only the request line matters: `GET /?code=...&state=... HTTP/1.1`.
                while len < buf.len() && !buf[..len].windows(2).any(|w| w == b"\r\n") {
                    match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf[len..])).await {
                        Ok(Ok(n)) if n > 0 => len += n,
                        _ => break,
                    }
                }
                let head = String::from_utf8_lossy(&buf[..len]);
                let target = head.split_whitespace().nth(1).unwrap_or("/");
                let Ok(url) = oauth2::url::Url::parse(&format!("http://127.0.0.1{target}")) else { continue };
                if !url.query_pairs().any(|(k, _)| k == "code" || k == "error") {
                    // A favicon or a probe: not the redirect.
                    let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
                    continue;
                }
                let body = "postmaster-bot: sign-in received. You can close this window.\n";
                let _ = stream.write_all(format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes()).await;
                return Ok(url);
            }
            pasted = paste_rx.recv(), if stdin_open => {
                let Some(text) = pasted else {
                    // Standard input closed: only the browser can answer now.
                    stdin_open = false;
                    continue;
                };
                match oauth2::url::Url::parse(&text) {
                    Ok(url) if url.query_pairs().any(|(k, _)| k == "code" || k == "error") => return Ok(url),
                    _ => warn!("that is not the address the browser ended on (it has ?code=...); try again"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_replaced_within_the_margin_before_expiry() {
        let now = Instant::now();
        let margin = Duration::from_secs(300);
        assert!(!needs_refresh(now + Duration::from_secs(3600), now, margin));
        assert!(needs_refresh(now + Duration::from_secs(299), now, margin));
        assert!(needs_refresh(now, now, margin));
    }

    #[test]
    fn the_refresh_token_file_is_private_and_replaced_whole() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("sub").join("rt");
        write_refresh_token(&path, "first").expect("write");
        write_refresh_token(&path, "second").expect("rewrite");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "second\n");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let leftovers = std::fs::read_dir(path.parent().expect("parent"))
            .expect("list")
            .count();
        assert_eq!(leftovers, 1, "no temporary file left behind");
    }
}
