//! The SMTP adapter (lettre): sends the exact bytes from the outbox. Only the daemon in `auto`
//! mode (and for notifications outside `draft` mode) ever builds one.

use std::time::Duration;

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls as LettreTls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};

use crate::config::{Auth, SmtpConfig, Tls};

/// Sending failed; the message names the server, never the password.
#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    #[error("SMTP setup for {server} failed: {message}")]
    Setup { server: String, message: String },
    #[error("bad address in outgoing message: {0}")]
    Address(String),
    /// What the server answered (lettre's words carry its code and text), and what we were
    /// doing: "connecting and logging in", or sending to whom.
    #[error("SMTP {server}: {doing} failed: {source}")]
    Send {
        server: String,
        doing: String,
        #[source]
        source: lettre::transport::smtp::Error,
    },
}

impl SmtpError {
    /// A 4xx or a connection problem: retry later. A 5xx or a setup error: hold for a person.
    pub fn is_transient(&self) -> bool {
        match self {
            SmtpError::Send { source, .. } => !source.is_permanent(),
            _ => false,
        }
    }

    /// The server refused the login (535 and kin), or, with XOAUTH2, answered the initial
    /// response with an error challenge, which lettre reports as a client error. Either way the
    /// refusal came before MAIL FROM: nothing was sent.
    pub fn is_auth_failure(&self) -> bool {
        match self {
            SmtpError::Send { source, .. } => {
                let code = source.status().map(|c| c.to_string());
                matches!(code.as_deref(), Some("530" | "534" | "535"))
                    || (source.is_client() && source.to_string().contains("challenge"))
            }
            _ => false,
        }
    }
}

/// A configured SMTP submission client.
#[derive(Clone)]
pub struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    server: String,
}

impl Smtp {
    /// Builds the transport; no connection is made until the first send.
    pub fn new(cfg: &SmtpConfig, password: Option<SecretString>) -> Result<Smtp, SmtpError> {
        let server = format!("{}:{}", cfg.host, cfg.port);
        let setup = |message: String| SmtpError::Setup {
            server: server.clone(),
            message,
        };
        let mut params = TlsParameters::builder(cfg.host.clone());
        // lettre brings Mozilla's roots; the system store is added like for IMAP.
        for der in crate::shell::tls::system_roots() {
            if let Ok(cert) = Certificate::from_der(der.to_vec()) {
                params = params.add_root_certificate(cert);
            }
        }
        if let Some(path) = &cfg.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| setup(format!("failed to read CA file {}: {e}", path.display())))?;
            let cert = Certificate::from_pem(&pem)
                .map_err(|e| setup(format!("CA file {}: {e}", path.display())))?;
            params = params.add_root_certificate(cert);
        }
        let params = params.build_rustls().map_err(|e| setup(e.to_string()))?;
        let tls = match cfg.tls {
            Tls::Implicit => LettreTls::Wrapper(params),
            Tls::Starttls => LettreTls::Required(params),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(cfg.host.clone())
            .port(cfg.port)
            .tls(tls)
            .timeout(Some(Duration::from_secs(60)));
        if let (Some(user), Some(pass)) = (&cfg.username, password) {
            builder = builder.credentials(Credentials::new(
                user.clone(),
                pass.expose_secret().to_string(),
            ));
            builder = builder.authentication(match cfg.auth {
                Auth::Password => vec![Mechanism::Plain, Mechanism::Login],
                Auth::Xoauth2 => vec![Mechanism::Xoauth2],
            });
        }
        Ok(Smtp {
            transport: builder.build(),
            server,
        })
    }

    /// Connects, and logs in when credentials are set; sends nothing.
    pub async fn check(&self) -> Result<(), SmtpError> {
        match self.transport.test_connection().await {
            Ok(true) => Ok(()),
            Ok(false) => Err(SmtpError::Setup {
                server: self.server.clone(),
                message: "the server did not answer NOOP".into(),
            }),
            Err(source) => Err(SmtpError::Send {
                server: self.server.clone(),
                doing: "connecting and logging in".to_string(),
                source,
            }),
        }
    }

    /// Sends exactly these bytes from `from` to `to`.
    pub async fn send(&self, from: &str, to: &[String], bytes: &[u8]) -> Result<(), SmtpError> {
        let doing = format!("sending from {from} to {}", to.join(", "));
        let from = from
            .parse()
            .map_err(|_| SmtpError::Address(from.to_string()))?;
        let to = to
            .iter()
            .map(|a| a.parse().map_err(|_| SmtpError::Address(a.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        let envelope =
            Envelope::new(Some(from), to).map_err(|e| SmtpError::Address(e.to_string()))?;
        self.transport
            .send_raw(&envelope, bytes)
            .await
            .map(drop)
            .map_err(|source| SmtpError::Send {
                server: self.server.clone(),
                doing,
                source,
            })
    }
}
