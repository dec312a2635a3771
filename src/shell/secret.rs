//! Passwords from the environment, a file or a command; held as `SecretString`, whose `Debug`
//! redacts, so they never reach a log or an error message.

use std::sync::Arc;

use secrecy::SecretString;

use crate::config::{Auth, SecretSource};
use crate::shell::oauth::{OAuthError, TokenProvider};

/// A password could not be read. The message names the source, never the secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {0} is not set or empty")]
    Env(String),
    #[error("failed to read password file {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("password command `{command}` failed: {message}")]
    Command { command: String, message: String },
    #[error("systemd credential {name}: {message}")]
    Credential { name: String, message: String },
}

/// Where systemd put the credential `name` (`$CREDENTIALS_DIRECTORY/name`).
fn credential_file(
    directory: Option<&std::ffi::OsStr>,
    name: &str,
) -> Result<std::path::PathBuf, SecretError> {
    let directory = directory
        .filter(|d| !d.is_empty())
        .ok_or_else(|| SecretError::Credential {
            name: name.to_string(),
            message: "CREDENTIALS_DIRECTORY is not set (systemd sets it for a unit with \
                      LoadCredential=)"
                .to_string(),
        })?;
    Ok(std::path::Path::new(directory).join(name))
}

/// Reads a password from its source; surrounding whitespace (a trailing newline) is dropped.
/// A command runs on a blocking thread, so a slow vault never stalls the daemon's tasks.
pub async fn resolve(source: &SecretSource) -> Result<SecretString, SecretError> {
    let owned = source.clone();
    match tokio::task::spawn_blocking(move || resolve_blocking(&owned)).await {
        Ok(result) => result,
        // The closure does not panic; a runtime shutting down is the only way here.
        Err(e) => Err(SecretError::Command {
            command: format!("{source:?}"),
            message: e.to_string(),
        }),
    }
}

/// [`resolve`] for code outside the runtime (opening the state store).
pub fn resolve_blocking(source: &SecretSource) -> Result<SecretString, SecretError> {
    let text = match source {
        SecretSource::Env(name) => std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| SecretError::Env(name.clone()))?,
        SecretSource::File(path) => {
            std::fs::read_to_string(path).map_err(|source| SecretError::File {
                path: path.display().to_string(),
                source,
            })?
        }
        SecretSource::Credential(name) => {
            let path = credential_file(std::env::var_os("CREDENTIALS_DIRECTORY").as_deref(), name)?;
            std::fs::read_to_string(&path).map_err(|e| SecretError::Credential {
                name: name.clone(),
                message: format!("{}: {e}", path.display()),
            })?
        }
        SecretSource::Command(command) => {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(command)
                .stdin(std::process::Stdio::null())
                .output()
                .map_err(|e| SecretError::Command {
                    command: command.clone(),
                    message: e.to_string(),
                })?;
            if !out.status.success() {
                return Err(SecretError::Command {
                    command: command.clone(),
                    message: format!("exit status {}", out.status),
                });
            }
            String::from_utf8(out.stdout).map_err(|_| SecretError::Command {
                command: command.clone(),
                message: "output is not UTF-8".into(),
            })?
        }
    };
    Ok(SecretString::from(text.trim().to_string()))
}

/// What a connection logs in with: a password (or an access token printed by an external
/// helper), read anew each time, or a token from the OAuth2 provider.
#[derive(Clone)]
pub enum Credential {
    Secret(SecretSource),
    OAuth2(Arc<TokenProvider>),
}

/// A credential could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    OAuth(#[from] OAuthError),
}

impl CredentialError {
    /// Whether asking again later can help. A password or token *command* (a vault, a token
    /// helper) may fail for a passing reason, a network error on its side: retried with backoff
    /// like a lost connection. A variable, file or credential that is not there is a setup
    /// error, and stops the daemon with its name.
    pub fn is_transient(&self) -> bool {
        match self {
            CredentialError::Secret(SecretError::Command { .. }) => true,
            CredentialError::Secret(_) => false,
            CredentialError::OAuth(e) => e.is_transient(),
        }
    }
}

impl Credential {
    /// `source` when given; else, for XOAUTH2 only, the shared OAuth2 provider (config
    /// validation guarantees one). `None`: log in without credentials (an open relay).
    pub fn pick(
        auth: Auth,
        source: Option<&SecretSource>,
        oauth: Option<&Arc<TokenProvider>>,
    ) -> Option<Credential> {
        match (source, oauth) {
            (Some(s), _) => Some(Credential::Secret(s.clone())),
            (None, Some(p)) if auth == Auth::Xoauth2 => Some(Credential::OAuth2(p.clone())),
            _ => None,
        }
    }

    /// The secret to log in with; `refresh` asks the OAuth2 provider for a new token even if the
    /// cached one looks valid (after a server refused it, or on a reconnect).
    pub async fn get(&self, refresh: bool) -> Result<SecretString, CredentialError> {
        match self {
            Credential::Secret(source) => Ok(resolve(source).await?),
            Credential::OAuth2(provider) => Ok(provider.access_token(refresh).await?),
        }
    }

    /// Whether a second try with a new token can succeed where the first was refused.
    pub fn renewable(&self) -> bool {
        matches!(self, Credential::OAuth2(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_systemd_credential_is_read_from_the_directory_systemd_names() {
        let dir = std::ffi::OsStr::new("/run/credentials/postmaster-bot.service");
        assert_eq!(
            credential_file(Some(dir), "imap-password").expect("path"),
            std::path::Path::new("/run/credentials/postmaster-bot.service/imap-password")
        );
        let err = credential_file(None, "imap-password").expect_err("outside systemd");
        let text = err.to_string();
        assert!(
            text.contains("imap-password") && text.contains("CREDENTIALS_DIRECTORY"),
            "{text}"
        );
    }
    use secrecy::ExposeSecret;

    #[test]
    fn a_failing_command_is_retried_and_a_missing_variable_is_not() {
        let failed = resolve_now(SecretSource::Command("exit 3".into())).expect_err("fails");
        assert!(CredentialError::from(failed).is_transient());
        let missing =
            resolve_now(SecretSource::Env("PMB_SURELY_UNSET_VARIABLE".into())).expect_err("unset");
        assert!(!CredentialError::from(missing).is_transient());
    }

    fn resolve_now(source: SecretSource) -> Result<SecretString, SecretError> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(resolve(&source))
    }

    #[test]
    fn file_and_command_sources_trim_the_newline() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").expect("write");
        let from_file = resolve_now(SecretSource::File(file)).expect("file");
        assert_eq!(from_file.expose_secret(), "s3cret");
        let from_cmd =
            resolve_now(SecretSource::Command("printf 'hunter2\\n'".into())).expect("command");
        assert_eq!(from_cmd.expose_secret(), "hunter2");
    }

    #[test]
    fn only_xoauth2_falls_back_to_the_oauth2_provider() {
        let cfg =
            crate::config::parse("[oauth2]\nprovider = \"microsoft\"\nclient_id = \"x\"", "t")
                .expect("valid")
                .oauth2
                .expect("oauth2");
        let provider = Arc::new(TokenProvider::new(cfg).expect("provider"));
        assert!(Credential::pick(Auth::Password, None, Some(&provider)).is_none());
        assert!(matches!(
            Credential::pick(Auth::Xoauth2, None, Some(&provider)),
            Some(Credential::OAuth2(_))
        ));
        let helper = SecretSource::Command("print-token".into());
        assert!(matches!(
            Credential::pick(Auth::Xoauth2, Some(&helper), Some(&provider)),
            Some(Credential::Secret(_))
        ));
    }

    #[test]
    fn errors_name_the_source_never_the_secret() {
        let err = resolve_now(SecretSource::Env("PMB_SURELY_UNSET_VARIABLE".into())).unwrap_err();
        assert!(err.to_string().contains("PMB_SURELY_UNSET_VARIABLE"));
        let err = resolve_now(SecretSource::Command("exit 3".into())).unwrap_err();
        assert!(err.to_string().contains("exit status"), "{err}");
        let secret = SecretString::from("topsecret".to_string());
        assert!(!format!("{secret:?}").contains("topsecret"));
    }
}
