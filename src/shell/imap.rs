//! The IMAP adapter (async-imap over tokio-rustls): connect with implicit TLS or STARTTLS, log in,
//! select, fetch new messages by UID without setting \Seen, append drafts, wait with IDLE.
//! No decisions are made here: every branch is about I/O.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_imap::extensions::idle::IdleResponse;
use async_imap::imap_proto::{AttributeValue, MailboxDatum, Response, ResponseCode, Status};
use futures::TryStreamExt;
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;
use tracing::{debug, info};

use crate::config::{Auth, MailboxConfig, Tls};
use crate::shell::tls::{self, TlsSetupError};

type Stream = tokio_rustls::client::TlsStream<TcpStream>;
type Session = async_imap::Session<Stream>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// UIDs fetched per FETCH command, so memory stays bounded on a large catch-up.
const FETCH_BATCH: usize = 50;

/// An IMAP operation failed; the message names the server.
#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    #[error("failed to connect to {server}: {source}")]
    Connect {
        server: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS with {server} failed: {message}")]
    Tls {
        server: String,
        message: String,
        /// The connection dropped during the handshake (not a certificate or protocol error).
        transient: bool,
    },
    #[error(transparent)]
    TlsSetup(#[from] TlsSetupError),
    #[error("{server} does not offer STARTTLS: {message}")]
    NoStartTls { server: String, message: String },
    #[error("login to {server} as {user} failed: {message}")]
    Login {
        server: String,
        user: String,
        message: String,
    },
    /// The server answered this command with a tagged NO or BAD: its code (RFC 5530's
    /// OVERQUOTA, TRYCREATE, NOPERM...) and its words, as it wrote them.
    #[error("{server}: {command} refused: {}", refusal_text(code.as_deref(), text))]
    Refused {
        server: String,
        command: String,
        code: Option<String>,
        text: String,
    },
    #[error("{server}: {command} failed: {source}")]
    Command {
        server: String,
        command: String,
        #[source]
        source: async_imap::error::Error,
    },
    #[error("{server}: {command} timed out")]
    Timeout { server: String, command: String },
    #[error("{server}: folder {folder} has no UIDVALIDITY")]
    NoUidValidity { server: String, folder: String },
    #[error("{server} closed the connection")]
    Closed { server: String },
    #[error("{server}: the session is out of step after {why}; reconnecting")]
    Unreliable { server: String, why: String },
}

impl ImapError {
    /// The server refused this one command (NO, BAD, a refused APPEND, or a value it cannot
    /// carry): other commands can still succeed.
    pub fn is_refusal(&self) -> bool {
        use async_imap::error::Error;
        matches!(
            self,
            ImapError::Refused { .. }
                | ImapError::Command {
                    source: Error::No(_) | Error::Bad(_) | Error::Append | Error::Validate(_),
                    ..
                }
        )
    }

    /// The response code of a refusal (`TRYCREATE`, `OVERQUOTA`...), upper case.
    pub fn refusal_code(&self) -> Option<&str> {
        match self {
            ImapError::Refused { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// After this error the session's state is unknown (an APPEND refused before its literal
    /// may leave the server waiting for it): a new connection is the safe next step.
    pub fn needs_reconnect(&self) -> bool {
        !self.is_refusal()
            || matches!(
                self,
                ImapError::Command {
                    source: async_imap::error::Error::Append,
                    ..
                }
            )
    }

    /// Whether reconnecting later can help; a login or TLS failure needs a config change.
    pub fn is_transient(&self) -> bool {
        match self {
            ImapError::Tls { transient, .. } => *transient,
            // A refusal says what the server will not do; asking again on a new connection
            // changes nothing, except where the code says the trouble is passing (RFC 5530).
            ImapError::Refused { code, .. } => {
                matches!(code.as_deref(), Some("UNAVAILABLE" | "INUSE" | "SERVERBUG"))
            }
            ImapError::Login { .. } | ImapError::TlsSetup(_) | ImapError::NoStartTls { .. } => {
                false
            }
            _ => true,
        }
    }
}

/// The XOAUTH2 client response: `user=U ^A auth=Bearer T ^A ^A`.
pub fn xoauth2_initial(user: &str, token: &SecretString) -> Vec<u8> {
    format!(
        "user={user}\x01auth=Bearer {}\x01\x01",
        token.expose_secret()
    )
    .into_bytes()
}

/// SASL XOAUTH2 for async-imap. On failure the server sends a JSON challenge; it is kept for
/// the error message and answered with an empty line, as the mechanism requires.
struct Xoauth2 {
    initial: Vec<u8>,
    sent: bool,
    reason: Arc<Mutex<Option<String>>>,
}

impl async_imap::Authenticator for Xoauth2 {
    type Response = Vec<u8>;

    fn process(&mut self, challenge: &[u8]) -> Vec<u8> {
        if !self.sent {
            self.sent = true;
            return std::mem::take(&mut self.initial);
        }
        if let Ok(mut r) = self.reason.lock() {
            *r = Some(String::from_utf8_lossy(challenge).into_owned());
        }
        Vec::new()
    }
}

/// Reads the server's greeting; a connection closed before it is an error naming the server.
async fn read_greeting<T>(client: &mut async_imap::Client<T>, server: &str) -> Result<(), ImapError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + std::fmt::Debug + Send,
{
    client
        .read_response()
        .await
        .map_err(|source| ImapError::Connect {
            server: server.to_string(),
            source,
        })?
        .ok_or_else(|| ImapError::Closed {
            server: server.to_string(),
        })?;
    Ok(())
}

/// Runs one IMAP command with a time limit, naming the server and the command in the error.
/// Takes the server name and limit by value so the caller can hold the session borrowed.
/// A folder name as an IMAP quoted string; `None` for one no quoted string can carry.
fn quote(name: &str) -> Option<String> {
    if name.is_empty() || name.contains(['\r', '\n', '\0']) {
        return None;
    }
    Some(format!(
        "\"{}\"",
        name.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}

/// `[CODE] text`, or the text alone.
fn refusal_text(code: Option<&str>, text: &str) -> String {
    match code {
        Some(code) => format!("[{code}] {text}"),
        None => text.to_string(),
    }
}

/// A refusal's code and words. A code imap-proto knows comes parsed; one it does not (RFC 5530's
/// OVERQUOTA, NOPERM...) stays at the head of the text, where it is read from.
fn refusal_parts(
    code: Option<&ResponseCode<'_>>,
    information: Option<&str>,
) -> (Option<String>, String) {
    let text = information.unwrap_or("").trim();
    if let Some(code) = code {
        let name = match code {
            ResponseCode::TryCreate => "TRYCREATE".to_string(),
            ResponseCode::Alert => "ALERT".to_string(),
            ResponseCode::Parse => "PARSE".to_string(),
            ResponseCode::ReadOnly => "READ-ONLY".to_string(),
            other => format!("{other:?}").to_ascii_uppercase(),
        };
        return (Some(name), text.to_string());
    }
    if let Some((code, rest)) = text.strip_prefix('[').and_then(|t| t.split_once(']')) {
        let code = code
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        if !code.is_empty() {
            return (Some(code), rest.trim().to_string());
        }
    }
    (None, text.to_string())
}

/// How an error names a command: a folder command with its folder (`CREATE "INBOX.Drafts"`),
/// others by their first two words (`UID FETCH`), never a search's whole criteria.
fn command_name(command: &str) -> String {
    let words: Vec<&str> = command.splitn(4, ' ').collect();
    match words.as_slice() {
        ["UID", verb @ ("MOVE" | "COPY"), _set, folder] => {
            return format!("UID {verb} to {folder}")
        }
        ["UID", "STORE", _set, flags] => return format!("UID STORE {flags}"),
        _ => {}
    }
    let verb = words.first().copied().unwrap_or("");
    if ["LIST", "CREATE", "SUBSCRIBE", "STATUS", "DELETE"].contains(&verb) {
        let end = [" (", " RETURN "]
            .iter()
            .filter_map(|cut| command.find(cut))
            .min()
            .unwrap_or(command.len());
        return command[..end].to_string();
    }
    command.split(' ').take(2).collect::<Vec<_>>().join(" ")
}

/// A command's tagged completion: OK, or the refusal with the server's code and words.
fn completion(
    status: &Status,
    outcome: &async_imap::imap_proto::Outcome<'_>,
    server: &str,
    command: &str,
) -> Result<(), ImapError> {
    if *status == Status::Ok {
        return Ok(());
    }
    let (code, text) = refusal_parts(outcome.code.as_ref(), outcome.information.as_deref());
    Err(ImapError::Refused {
        server: server.to_string(),
        command: command.to_string(),
        code,
        text,
    })
}

/// async-imap words a NO or BAD as `code: Some(TryCreate), info: Some("...")` (or as a debug
/// dump of the whole outcome): back to the server's code and text.
fn from_library_words(words: &str) -> (Option<String>, String) {
    let info = ["info: Some(\"", "information: Some(\""]
        .iter()
        .find_map(|key| words.split_once(key))
        .and_then(|(_, rest)| rest.rsplit_once("\")"))
        .map(|(text, _)| text.replace("\\\"", "\""));
    let code = words
        .split_once("code: Some(")
        .map(|(_, rest)| {
            rest.split(['(', ')', ' ', ','])
                .next()
                .unwrap_or(rest)
                .to_string()
        })
        .map(|c| {
            if c == "TryCreate" {
                "TRYCREATE".to_string()
            } else {
                c.to_ascii_uppercase()
            }
        });
    match info {
        Some(text) => {
            let (bracketed, text) = refusal_parts(None, Some(&text));
            (code.or(bracketed), text)
        }
        None => (code, words.to_string()),
    }
}

async fn guarded<T>(
    server: &str,
    timeout: Duration,
    command: &str,
    fut: impl std::future::Future<Output = Result<T, async_imap::error::Error>>,
) -> Result<T, ImapError> {
    use async_imap::error::Error;
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r.map_err(|source| match source {
            Error::No(words) | Error::Bad(words) => {
                let (code, text) = from_library_words(&words);
                ImapError::Refused {
                    server: server.to_string(),
                    command: command.to_string(),
                    code,
                    text,
                }
            }
            source => ImapError::Command {
                server: server.to_string(),
                command: command.to_string(),
                source,
            },
        }),
        Err(_) => Err(ImapError::Timeout {
            server: server.to_string(),
            command: command.to_string(),
        }),
    }
}

/// Where the server keeps the user's own folders (RFC 2342 NAMESPACE) and how it separates
/// their levels: Dovecot answers `(("" "/"))`, Debian's Cyrus `(("INBOX." "."))` (or `(("" "/"))`
/// with `altnamespace`). Folder names in the config are written with `/` and mapped to it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Namespace {
    pub prefix: String,
    /// `None`: a flat server, or one that did not say.
    pub delimiter: Option<char>,
}

impl Namespace {
    /// The server's name for a folder the config names the plain way: `postmaster-bot/Review`
    /// becomes `INBOX.postmaster-bot.Review` under Cyrus' default namespace. INBOX, and a name
    /// that already starts with the personal prefix (`INBOX.Drafts`), are used as given.
    pub fn folder(&self, configured: &str) -> String {
        let head_is = |p: &str| {
            configured
                .get(..p.len())
                .is_some_and(|h| h.eq_ignore_ascii_case(p))
        };
        if configured.eq_ignore_ascii_case("INBOX")
            || (!self.prefix.is_empty() && head_is(&self.prefix))
        {
            return configured.to_string();
        }
        let path = match self.delimiter {
            Some(d) if d != '/' => configured.replace('/', &d.to_string()),
            _ => configured.to_string(),
        };
        // INBOX's own children (`INBOX/Postmaster`) are named from INBOX on every server.
        if head_is("INBOX/") {
            return path;
        }
        format!("{}{}", self.prefix, path)
    }

    /// A folder below one already in the server's terms.
    pub fn child(&self, parent: &str, name: &str) -> String {
        format!("{parent}{}{name}", self.delimiter.unwrap_or('/'))
    }
}

/// The first personal namespace of an untagged `* NAMESPACE` line; `None` for a server with
/// none, or an answer this reader does not understand (a literal, say): the caller then falls
/// back to the hierarchy delimiter alone.
pub fn parse_namespace(line: &[u8]) -> Option<Namespace> {
    let line = std::str::from_utf8(line).ok()?.trim_end();
    let rest = line
        .get(..12)
        .filter(|h| h.eq_ignore_ascii_case("* NAMESPACE "))
        .map(|_| &line[12..])?;
    let rest = rest.strip_prefix("((")?;
    let (prefix, rest) = quoted(rest)?;
    let rest = rest.strip_prefix(' ')?;
    let delimiter = if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case("NIL") {
        None
    } else {
        let (d, _) = quoted(rest)?;
        let mut chars = d.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) => Some(c),
            _ => return None,
        }
    };
    Some(Namespace { prefix, delimiter })
}

/// An IMAP quoted string at the start of `s` (backslash escapes `\\` and `\"`), and what follows.
fn quoted(s: &str) -> Option<(String, &str)> {
    let mut chars = s.strip_prefix('"')?.char_indices();
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &s[i + 2..])),
            '\\' => out.push(chars.next()?.1),
            c => out.push(c),
        }
    }
    None
}

/// One line of a LIST answer: the folder's name and its attributes (`\Drafts`, `\Noselect`...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub delimiter: Option<char>,
    pub attributes: Vec<String>,
}

/// One message of a FETCH response: its UID, its RFC822.SIZE and the body section asked for
/// (a whole message, a part of it or some header fields), as far as the server sent them.
#[derive(Debug, Clone, Copy)]
pub struct Fetched<'a> {
    pub uid: Option<u32>,
    pub size: Option<u32>,
    pub data: Option<&'a [u8]>,
}

/// A selected folder's sync state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selected {
    pub uid_validity: u32,
    pub uid_next: Option<u32>,
    pub exists: u32,
}

/// Why a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The server reported a change (or sent something we did not wait for).
    Changed,
    /// The IDLE renewal or poll interval passed.
    Timeout,
    /// Shutdown was requested.
    Shutdown,
}

/// A logged-in IMAP connection.
pub struct Imap {
    session: Option<Session>,
    server: String,
    capabilities: Vec<String>,
    timeout: Duration,
    /// The folder selected now and its UIDVALIDITY.
    selected: Option<(String, u32)>,
    /// Why the session can no longer be trusted to be in step with the server.
    unreliable: Option<String>,
    /// New mail announced (EXISTS, RECENT) during a command read by `Imap::run_checked`.
    announced: bool,
    /// Where the user's folders live on this server, learned at login.
    namespace: Namespace,
}

impl Imap {
    /// Connects, secures and logs in.
    pub async fn connect(cfg: &MailboxConfig, password: &SecretString) -> Result<Imap, ImapError> {
        let server = format!("{}:{}", cfg.host, cfg.port);
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&server))
            .await
            .map_err(|_| ImapError::Connect {
                server: server.clone(),
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
            })?
            .map_err(|source| ImapError::Connect {
                server: server.clone(),
                source,
            })?;
        // A server that accepts the connection and then says nothing (or stops halfway through
        // the handshake or the login) must not hold the daemon: the whole log-in is one
        // command under the time limit.
        match tokio::time::timeout(
            cfg.command_timeout,
            Imap::secure_and_log_in(cfg, password, tcp, &server),
        )
        .await
        {
            Ok(imap) => imap,
            Err(_) => Err(ImapError::Timeout {
                server,
                command: "TLS handshake, greeting and login".into(),
            }),
        }
    }

    async fn secure_and_log_in(
        cfg: &MailboxConfig,
        password: &SecretString,
        tcp: TcpStream,
        server: &str,
    ) -> Result<Imap, ImapError> {
        let server = server.to_string();
        let connector = TlsConnector::from(tls::client_config(cfg.ca_file.as_deref())?);
        let name = ServerName::try_from(cfg.host.clone()).map_err(|e| ImapError::Tls {
            server: server.clone(),
            message: e.to_string(),
            transient: false,
        })?;
        // rustls reports certificate and protocol errors as InvalidData; anything else is the
        // connection going away during the handshake.
        let tls_err = |e: std::io::Error| ImapError::Tls {
            server: server.clone(),
            transient: e.kind() != std::io::ErrorKind::InvalidData,
            message: e.to_string(),
        };
        let stream = match cfg.tls {
            Tls::Implicit => connector.connect(name, tcp).await.map_err(tls_err)?,
            Tls::Starttls => {
                let mut plain = async_imap::Client::new(tcp);
                read_greeting(&mut plain, &server).await?;
                plain
                    .run_command_and_check_ok("STARTTLS", None)
                    .await
                    .map_err(|e| ImapError::NoStartTls {
                        server: server.clone(),
                        message: e.to_string(),
                    })?;
                connector
                    .connect(name, plain.into_inner())
                    .await
                    .map_err(tls_err)?
            }
        };
        let mut client = async_imap::Client::new(stream);
        if cfg.tls == Tls::Implicit {
            read_greeting(&mut client, &server).await?;
        }
        let mut session = match cfg.auth {
            Auth::Password => client
                .login(&cfg.username, password.expose_secret())
                .await
                .map_err(|(e, _)| ImapError::Login {
                    server: server.clone(),
                    user: cfg.username.clone(),
                    message: e.to_string(),
                })?,
            Auth::Xoauth2 => {
                let reason = Arc::new(Mutex::new(None));
                let authenticator = Xoauth2 {
                    initial: xoauth2_initial(&cfg.username, password),
                    sent: false,
                    reason: reason.clone(),
                };
                client
                    .authenticate("XOAUTH2", authenticator)
                    .await
                    .map_err(|(e, _)| {
                        let why = reason
                            .lock()
                            .ok()
                            .and_then(|r| r.clone())
                            .map(|r| format!(" (server says: {r})"))
                            .unwrap_or_default();
                        ImapError::Login {
                            server: server.clone(),
                            user: cfg.username.clone(),
                            message: format!("XOAUTH2: {e}{why}"),
                        }
                    })?
            }
        };
        let caps = session
            .capabilities()
            .await
            .map_err(|source| ImapError::Command {
                server: server.clone(),
                command: "CAPABILITY".into(),
                source,
            })?;
        let capabilities: Vec<String> = caps
            .iter()
            .map(|c| match c {
                async_imap::types::Capability::Imap4rev1 => "IMAP4REV1".to_string(),
                async_imap::types::Capability::Auth(a) => {
                    format!("AUTH={}", a.to_ascii_uppercase())
                }
                async_imap::types::Capability::Atom(a) => a.to_ascii_uppercase(),
            })
            .collect();
        info!(server = %server, user = %cfg.username, "imap logged in");
        debug!(?capabilities, "imap capabilities");
        let mut imap = Imap {
            session: Some(session),
            server,
            capabilities,
            timeout: cfg.command_timeout,
            selected: None,
            unreliable: None,
            announced: false,
            namespace: Namespace::default(),
        };
        imap.namespace = imap.learn_namespace().await?;
        debug!(prefix = %imap.namespace.prefix, delimiter = ?imap.namespace.delimiter, "personal namespace");
        Ok(imap)
    }

    /// The personal namespace (RFC 2342) where the server announces NAMESPACE, and the
    /// hierarchy delimiter from `LIST "" ""` (RFC 3501 6.3.8) where it does not say.
    async fn learn_namespace(&mut self) -> Result<Namespace, ImapError> {
        let mut learned = None;
        if self.has_capability("NAMESPACE") {
            learned = self.ask_namespace().await?;
        }
        if let Some(ns) = learned.as_ref().filter(|ns| ns.delimiter.is_some()) {
            return Ok(ns.clone());
        }
        let delimiter = match self.list_answer("LIST \"\" \"\"").await {
            Ok(root) => root.first().and_then(|l| l.delimiter),
            Err(e) if e.is_refusal() => None,
            Err(e) => return Err(e),
        };
        Ok(Namespace {
            prefix: learned.map(|ns| ns.prefix).unwrap_or_default(),
            delimiter,
        })
    }

    /// NAMESPACE, exchanged on the raw stream: async-imap's parser (imap-proto 0.17) does not
    /// know the answer and would stop at it. Right after login nothing else is in flight, so
    /// the exchange is ours alone; it is read a byte at a time up to the end of our tagged line,
    /// leaving nothing buffered that async-imap would miss.
    async fn ask_namespace(&mut self) -> Result<Option<Namespace>, ImapError> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const TAG: &[u8] = b"pmbns ";
        const MOST: usize = 16 * 1024;
        let server = self.server.clone();
        let timeout = self.timeout;
        let session = self.session()?;
        let exchange = async {
            let stream = session.get_mut();
            stream.write_all(b"pmbns NAMESPACE\r\n").await?;
            stream.flush().await?;
            let (mut line, mut read, mut found) = (Vec::new(), 0usize, None);
            loop {
                line.push(stream.read_u8().await?);
                read += 1;
                if read > MOST {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "the NAMESPACE answer is longer than 16 KiB",
                    ));
                }
                if !line.ends_with(b"\r\n") {
                    continue;
                }
                if let Some(done) = line.strip_prefix(TAG) {
                    let ok = done.len() >= 2 && done[..2].eq_ignore_ascii_case(b"OK");
                    return Ok(found.filter(|_| ok));
                }
                if found.is_none() {
                    found = parse_namespace(&line);
                }
                line.clear();
            }
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(found)) => Ok(found),
            Ok(Err(e)) => Err(ImapError::Command {
                server,
                command: "NAMESPACE".into(),
                source: async_imap::error::Error::Io(e),
            }),
            Err(_) => Err(ImapError::Timeout {
                server,
                command: "NAMESPACE".into(),
            }),
        }
    }

    /// Where the user's folders live on this server.
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// The mailbox settings with every configured folder in this server's terms (see
    /// `Namespace::folder`).
    pub fn localized(&self, mailbox: &MailboxConfig) -> MailboxConfig {
        let ns = &self.namespace;
        let mut m = mailbox.clone();
        m.folder = ns.folder(&m.folder);
        m.review_folder = ns.folder(&m.review_folder);
        m.approved_folder = ns.folder(&m.approved_folder);
        for f in [
            &mut m.drafts_folder,
            &mut m.sent_folder,
            &mut m.handled_folder,
            &mut m.teach_folder,
        ] {
            *f = f.as_deref().map(|name| ns.folder(name));
        }
        m
    }

    /// Set after a command that may have left the server and the client out of step (an
    /// APPEND refused before its literal): nothing more should be sent on this connection.
    pub fn unreliable(&self) -> Option<&str> {
        self.unreliable.as_deref()
    }

    /// The error that ends a session which became unreliable.
    pub fn unreliable_error(&self) -> Option<ImapError> {
        self.unreliable.as_ref().map(|why| ImapError::Unreliable {
            server: self.server.clone(),
            why: why.clone(),
        })
    }

    /// Whether the server announced a capability (e.g. `IDLE`).
    pub fn has_capability(&self, name: &str) -> bool {
        self.capabilities
            .iter()
            .any(|c| c.eq_ignore_ascii_case(name))
    }

    fn session(&mut self) -> Result<&mut Session, ImapError> {
        self.session.as_mut().ok_or_else(|| ImapError::Closed {
            server: self.server.clone(),
        })
    }

    fn cmd_err(&self, command: &str) -> impl Fn(async_imap::error::Error) -> ImapError + '_ {
        let command = command.to_string();
        move |source| ImapError::Command {
            server: self.server.clone(),
            command: command.clone(),
            source,
        }
    }

    /// Selects a folder.
    pub async fn select(&mut self, folder: &str) -> Result<Selected, ImapError> {
        // A failed SELECT leaves no folder selected (RFC 3501 6.3.1).
        self.selected = None;
        let timeout = self.timeout;
        let server = self.server.clone();
        let session = self.session()?;
        let mailbox = guarded(
            &server,
            timeout,
            &format!("SELECT {folder}"),
            session.select(folder),
        )
        .await?;
        let uid_validity = mailbox
            .uid_validity
            .ok_or_else(|| ImapError::NoUidValidity {
                server: self.server.clone(),
                folder: folder.to_string(),
            })?;
        self.selected = Some((folder.to_string(), uid_validity));
        Ok(Selected {
            uid_validity,
            uid_next: mailbox.uid_next,
            exists: mailbox.exists,
        })
    }

    /// The UIDVALIDITY of `folder` when it is the folder selected now. Selecting it again
    /// costs: on a large maildir, a SELECT after new mail rescans the whole folder.
    pub fn selected_validity(&self, folder: &str) -> Option<u32> {
        match &self.selected {
            Some((f, v)) if f == folder => Some(*v),
            _ => None,
        }
    }

    /// Whether the selected folder holds a message with this Message-ID.
    pub async fn has_message_id(&mut self, message_id: &str) -> Result<bool, ImapError> {
        Ok(!self.find_message_id(message_id).await?.is_empty())
    }

    /// The UIDs of the selected folder's messages with this Message-ID.
    pub async fn find_message_id(&mut self, message_id: &str) -> Result<Vec<u32>, ImapError> {
        // Quotes and backslashes cannot be part of a Message-ID we search for.
        let quoted = format!("<{}>", message_id.replace(['"', '\\', '\r', '\n'], ""));
        self.search(&format!("HEADER Message-ID \"{quoted}\""))
            .await
    }

    /// `UID SEARCH key` in the selected folder, ascending. The key is built by the caller from
    /// values it quoted itself (`pipeline::witness::search_keys`). A NO or BAD is an error,
    /// never an empty answer.
    pub async fn search(&mut self, key: &str) -> Result<Vec<u32>, ImapError> {
        let mut uids = Vec::new();
        self.run_checked(&format!("UID SEARCH {key}"), |response| {
            if let Response::MailboxData(MailboxDatum::Search(found)) = response {
                uids.extend_from_slice(found);
            }
            Ok::<(), ImapError>(())
        })
        .await?;
        uids.sort_unstable();
        uids.dedup();
        Ok(uids)
    }

    /// UIDs above `after` in the selected folder, ascending.
    pub async fn uids_after(&mut self, after: u32) -> Result<Vec<u32>, ImapError> {
        let uids = self
            .search(&format!("UID {}:*", after.saturating_add(1)))
            .await?;
        // NOTE: RFC 3501: "n:*" always matches the highest UID, even when it is below n.
        Ok(uids.into_iter().filter(|u| *u > after).collect())
    }

    /// The header fields of these UIDs (`BODY.PEEK[HEADER.FIELDS (fields)]`), by UID.
    pub async fn header_fields(
        &mut self,
        set: &str,
        fields: &str,
    ) -> Result<Vec<(u32, Vec<u8>)>, ImapError> {
        let mut out = Vec::new();
        let items = format!("(UID BODY.PEEK[HEADER.FIELDS ({fields})])");
        self.for_each_fetched(set, &items, |f| {
            if let (Some(uid), Some(data)) = (f.uid, f.data) {
                out.push((uid, data.to_vec()));
            }
            Ok::<(), ImapError>(())
        })
        .await?;
        Ok(out)
    }

    /// Runs one command and reads its responses up to its own tagged completion, handing each
    /// untagged one to `each` as it arrives (nothing is buffered beyond one response); every
    /// response must come within the command time limit, and the completion must be OK: a NO
    /// or BAD is an error. (async-imap's SEARCH and FETCH read a tagged NO or BAD as the end of
    /// an empty answer: a refused search would say "nothing there" and a refused FETCH would
    /// let the cursor pass messages never read.) An error from `each` ends the command early;
    /// the connection is then given up.
    async fn run_checked<E: From<ImapError>>(
        &mut self,
        command: &str,
        mut each: impl FnMut(&Response<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        use async_imap::error::Error;
        let timeout = self.timeout;
        let server = self.server.clone();
        let name = command_name(command);
        let mut announced = false;
        let session = self.session()?;
        let tag = guarded(&server, timeout, &name, session.run_command(command)).await?;
        let result = loop {
            let next = guarded(&server, timeout, &name, async {
                session.read_response().await.map_err(Error::Io)
            })
            .await;
            let response = match next {
                Ok(Some(response)) => response,
                Ok(None) => {
                    break Err(ImapError::Closed {
                        server: server.clone(),
                    }
                    .into())
                }
                Err(e) => break Err(e.into()),
            };
            match response.parsed() {
                Response::Done {
                    tag: done,
                    status,
                    outcome,
                } if *done == tag => {
                    break completion(status, outcome, &server, &name).map_err(E::from)
                }
                Response::MailboxData(MailboxDatum::Exists(_) | MailboxDatum::Recent(_)) => {
                    announced = true;
                }
                parsed => {
                    if let Err(e) = each(parsed) {
                        break Err(e);
                    }
                }
            }
        };
        self.announced |= announced;
        result
    }

    /// Fetches whole messages by UID with BODY.PEEK[] (nothing is marked \\Seen), in batches.
    pub async fn fetch(&mut self, uids: &[u32]) -> Result<Vec<(u32, Vec<u8>)>, ImapError> {
        let mut out = Vec::with_capacity(uids.len());
        for chunk in uids.chunks(FETCH_BATCH) {
            let set = chunk
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",");
            self.for_each_fetched(&set, "(UID BODY.PEEK[])", |f| {
                if let (Some(uid), Some(data)) = (f.uid, f.data) {
                    out.push((uid, data.to_vec()));
                }
                Ok::<(), ImapError>(())
            })
            .await?;
        }
        out.sort_by_key(|(uid, _)| *uid);
        out.dedup_by_key(|(uid, _)| *uid);
        Ok(out)
    }

    /// `UID FETCH set items` for items naming one body section, handing each message to `each`
    /// as it arrives (see `Imap::run_checked`). Unsolicited FETCH responses (another client's
    /// flag change) come with no data.
    pub async fn for_each_fetched<E: From<ImapError>>(
        &mut self,
        set: &str,
        items: &str,
        mut each: impl FnMut(Fetched<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        self.run_checked(&format!("UID FETCH {set} {items}"), |response| {
            let Response::Fetch(_, attributes) = response else {
                return Ok(());
            };
            let mut fetched = Fetched {
                uid: None,
                size: None,
                data: None,
            };
            for attribute in attributes {
                match attribute {
                    AttributeValue::Uid(uid) => fetched.uid = Some(*uid),
                    AttributeValue::Rfc822Size(size) => fetched.size = Some(*size),
                    AttributeValue::BodySection {
                        data: Some(data), ..
                    } => fetched.data = Some(data),
                    _ => {}
                }
            }
            each(fetched)
        })
        .await
    }

    /// `LIST "" pattern`, asking for the SPECIAL-USE attributes where the server wants to be
    /// asked (RFC 6154 with LIST-EXTENDED); other servers give them with a plain LIST, if at all.
    pub async fn list(&mut self, pattern: &str) -> Result<Vec<Listed>, ImapError> {
        let quoted = self.quoted("LIST", pattern)?;
        let ask = if self.has_capability("SPECIAL-USE") && self.has_capability("LIST-EXTENDED") {
            " RETURN (SPECIAL-USE)"
        } else {
            ""
        };
        self.list_answer(&format!("LIST \"\" {quoted}{ask}")).await
    }

    async fn list_answer(&mut self, command: &str) -> Result<Vec<Listed>, ImapError> {
        let mut out = Vec::new();
        self.run_checked(command, |response| {
            if let Response::MailboxData(MailboxDatum::List(data)) = response {
                out.push(Listed {
                    name: data.name.to_string(),
                    delimiter: data.delimiter.as_deref().and_then(|d| d.chars().next()),
                    attributes: data
                        .name_attributes
                        .iter()
                        .map(|a| format!("{a:?}"))
                        .collect(),
                });
            }
            Ok::<(), ImapError>(())
        })
        .await?;
        Ok(out)
    }

    /// A folder name as a quoted string, or a refusal of our own naming the command.
    fn quoted(&self, command: &str, name: &str) -> Result<String, ImapError> {
        quote(name).ok_or_else(|| ImapError::Refused {
            server: self.server.clone(),
            command: command.to_string(),
            code: None,
            text: format!("{name:?} cannot be written as an IMAP folder name"),
        })
    }

    /// The first folder carrying a SPECIAL-USE attribute such as `\Drafts`.
    pub async fn special_use(&mut self, attribute: &str) -> Result<Option<String>, ImapError> {
        let wanted = attribute.trim_start_matches('\\').to_ascii_lowercase();
        Ok(self
            .list("*")
            .await?
            .into_iter()
            .find(|l| {
                l.attributes
                    .iter()
                    .any(|a| a.to_ascii_lowercase().contains(&wanted))
            })
            .map(|l| l.name))
    }

    /// Whether the server lists this folder.
    pub async fn folder_exists(&mut self, folder: &str) -> Result<bool, ImapError> {
        let quoted = self.quoted("LIST", folder)?;
        let listed = self.list_answer(&format!("LIST \"\" {quoted}")).await?;
        Ok(listed.iter().any(|l| {
            l.name == folder
                && !l
                    .attributes
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case("NoSelect") || a.contains("NonExistent"))
        }))
    }

    /// Creates a folder unless it exists, with its SPECIAL-USE attribute (`\Drafts`, `\Sent`)
    /// where the server takes one at creation (RFC 6154 CREATE-SPECIAL-USE), and subscribes
    /// it, so that mail clients showing subscribed folders only show it too.
    pub async fn ensure_folder(
        &mut self,
        folder: &str,
        special_use: Option<&str>,
    ) -> Result<(), ImapError> {
        if self.folder_exists(folder).await? {
            return Ok(());
        }
        let quoted = self.quoted("CREATE", folder)?;
        let mut created = false;
        if let Some(attribute) = special_use.filter(|_| self.has_capability("CREATE-SPECIAL-USE")) {
            let command = format!("CREATE {quoted} (USE ({attribute}))");
            match self
                .run_checked(&command, |_| Ok::<(), ImapError>(()))
                .await
            {
                Ok(()) => created = true,
                // A server that will not flag this folder (USEATTR) may still make it.
                Err(e) if e.is_refusal() => {
                    debug!(folder, error = %e, "creating it without its SPECIAL-USE attribute");
                }
                Err(e) => return Err(e),
            }
        }
        if !created {
            let command = format!("CREATE {quoted}");
            match self
                .run_checked(&command, |_| Ok::<(), ImapError>(()))
                .await
            {
                Ok(()) => {}
                // Another client may have created it in the meantime: that is not a failure.
                Err(e) if e.is_refusal() && self.folder_exists(folder).await? => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        info!(folder, "folder created");
        if let Err(e) = self
            .run_checked(&format!("SUBSCRIBE {quoted}"), |_| Ok::<(), ImapError>(()))
            .await
        {
            if !e.is_refusal() {
                return Err(e);
            }
            info!(folder, error = %e, "the new folder could not be subscribed");
        }
        Ok(())
    }

    /// How many messages a folder holds (STATUS, without selecting it); `None` when the server
    /// does not know the folder.
    pub async fn message_count(&mut self, folder: &str) -> Result<Option<u32>, ImapError> {
        let quoted = self.quoted("STATUS", folder)?;
        let mut count = None;
        let asked = self
            .run_checked(&format!("STATUS {quoted} (MESSAGES)"), |response| {
                if let Response::MailboxData(MailboxDatum::Status { status, .. }) = response {
                    for attribute in status {
                        if let async_imap::imap_proto::StatusAttribute::Messages(n) = attribute {
                            count = Some(*n);
                        }
                    }
                }
                Ok::<(), ImapError>(())
            })
            .await;
        match asked {
            Ok(()) => Ok(Some(count.unwrap_or(0))),
            Err(e) if e.is_refusal() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes a folder (tests use it to force a new UIDVALIDITY).
    pub async fn delete_folder(&mut self, folder: &str) -> Result<(), ImapError> {
        let quoted = self.quoted("DELETE", folder)?;
        self.run_checked(&format!("DELETE {quoted}"), |_| Ok::<(), ImapError>(()))
            .await
    }

    /// Flags of every message in the selected folder, by UID.
    pub async fn flags(&mut self) -> Result<Vec<(u32, Vec<String>)>, ImapError> {
        let server = self.server.clone();
        let timeout = self.timeout;
        let session = self.session()?;
        let fetched: Vec<async_imap::types::Fetch> =
            guarded(&server, timeout, "UID FETCH FLAGS", async {
                session
                    .uid_fetch("1:*", "(UID FLAGS)")
                    .await?
                    .try_collect::<Vec<_>>()
                    .await
            })
            .await?;
        Ok(fetched
            .iter()
            .filter_map(|f| {
                f.uid
                    .map(|uid| (uid, f.flags().map(|fl| format!("{fl:?}")).collect()))
            })
            .collect())
    }

    /// Appends a message to a folder with flags such as `(\Draft \Seen)`.
    pub async fn append(
        &mut self,
        folder: &str,
        flags: &str,
        bytes: &[u8],
    ) -> Result<(), ImapError> {
        use async_imap::error::Error;
        use tokio::io::AsyncWriteExt;
        let server = self.server.clone();
        let timeout = self.timeout;
        let name = format!("APPEND {folder}");
        let quoted = quote(folder).ok_or_else(|| ImapError::Refused {
            server: server.clone(),
            command: name.clone(),
            code: None,
            text: "the folder name cannot be sent to the server".to_string(),
        })?;
        let session = self.session()?;
        // Our own APPEND: async-imap's says only "could not append" and drops the server's
        // words and code ([TRYCREATE], [OVERQUOTA]) that say what to do next.
        let tag = guarded(
            &server,
            timeout,
            &name,
            session.run_command(&format!("APPEND {quoted} {flags} {{{}}}", bytes.len())),
        )
        .await?;
        let mut sent = false;
        let result = loop {
            let next = guarded(&server, timeout, &name, async {
                session.read_response().await.map_err(Error::Io)
            })
            .await;
            let response = match next {
                Ok(Some(response)) => response,
                Ok(None) => {
                    break Err(ImapError::Closed {
                        server: server.clone(),
                    })
                }
                Err(e) => break Err(e),
            };
            match response.parsed() {
                Response::Continue { .. } if !sent => {
                    sent = true;
                    let written = guarded(&server, timeout, &name, async {
                        let stream = session.get_mut();
                        stream.write_all(bytes).await?;
                        stream.write_all(b"\r\n").await?;
                        stream.flush().await.map_err(Error::Io)
                    })
                    .await;
                    if let Err(e) = written {
                        break Err(e);
                    }
                }
                Response::Done {
                    tag: done,
                    status,
                    outcome,
                } if *done == tag => break completion(status, outcome, &server, &name),
                _ => {}
            }
        };
        // Refused before or after the literal, the server answered the command: the session is
        // in step. Anything else (a cut, a timeout) leaves it unknown.
        if let Err(e) = &result {
            if !matches!(e, ImapError::Refused { .. }) {
                self.unreliable = Some(format!("APPEND to {folder} failed"));
            }
        }
        result
    }

    /// An APPEND, and when the server says the folder is missing (`[TRYCREATE]`), the folder's
    /// creation and the APPEND again.
    pub async fn append_creating(
        &mut self,
        folder: &str,
        flags: &str,
        bytes: &[u8],
    ) -> Result<(), ImapError> {
        match self.append(folder, flags, bytes).await {
            Err(e) if e.refusal_code() == Some("TRYCREATE") => {
                info!(folder, "the server says the folder is missing: creating it");
                self.ensure_folder(folder, None).await?;
                self.append(folder, flags, bytes).await
            }
            other => other,
        }
    }

    /// Sets a keyword on a set of UIDs (`1,5,9:12`) of the selected folder in one command.
    pub async fn add_keyword(&mut self, set: &str, keyword: &str) -> Result<(), ImapError> {
        self.run_checked(
            &format!("UID STORE {set} +FLAGS.SILENT ({keyword})"),
            |_| Ok::<(), ImapError>(()),
        )
        .await
    }

    /// Moves a set of UIDs of the selected folder: UID MOVE (RFC 6851), else UID COPY, then
    /// \Deleted and UID EXPUNGE of those UIDs only (RFC 4315); never a bare EXPUNGE, which would
    /// remove other clients' deleted mail.
    pub async fn move_uids(&mut self, set: &str, folder: &str) -> Result<bool, ImapError> {
        let quoted = self.quoted("UID MOVE", folder)?;
        if self.has_capability("MOVE") {
            self.run_checked(&format!("UID MOVE {set} {quoted}"), |_| {
                Ok::<(), ImapError>(())
            })
            .await?;
            return Ok(true);
        }
        // Without UIDPLUS only a plain EXPUNGE could remove the originals, and it would remove
        // whatever else someone flagged \Deleted in the watched folder.
        if !self.has_capability("UIDPLUS") {
            return Ok(false);
        }
        self.run_checked(&format!("UID COPY {set} {quoted}"), |_| {
            Ok::<(), ImapError>(())
        })
        .await?;
        self.delete_uids(set).await?;
        Ok(true)
    }

    /// Removes messages of the selected folder: flagged `\Deleted`, then expunged by UID where
    /// the server can (UIDPLUS); without it a plain EXPUNGE, which also removes whatever else
    /// the folder holds flagged `\Deleted`, so it is only used on the bot's own folders.
    pub async fn delete_uids(&mut self, set: &str) -> Result<(), ImapError> {
        let ignore = |_: &Response<'_>| Ok::<(), ImapError>(());
        self.run_checked(
            &format!("UID STORE {set} +FLAGS.SILENT (\\Deleted)"),
            ignore,
        )
        .await?;
        if self.has_capability("UIDPLUS") {
            self.run_checked(&format!("UID EXPUNGE {set}"), ignore)
                .await
        } else {
            self.run_checked("EXPUNGE", ignore).await
        }
    }

    /// Lets the server know we are alive and collects pending updates (new mail announced in
    /// its answer is noted for `drain_unsolicited`).
    pub async fn noop(&mut self) -> Result<(), ImapError> {
        self.run_checked("NOOP", |_| Ok::<(), ImapError>(())).await
    }

    /// Waits for a change with IDLE (re-issued after `renew`), or sleeps `poll` when the server
    /// has no IDLE. Whatever wakes it, the caller catches up by UID range afterwards.
    pub async fn wait(
        &mut self,
        use_idle: bool,
        renew: Duration,
        poll: Duration,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
        nudge: impl std::future::Future<Output = ()>,
    ) -> Result<Wake, ImapError> {
        if *shutdown.borrow() {
            return Ok(Wake::Shutdown);
        }
        if !(use_idle && self.has_capability("IDLE")) {
            tokio::select! {
                _ = tokio::time::sleep(poll) => return self.noop().await.map(|_| Wake::Timeout),
                _ = shutdown.changed() => return Ok(Wake::Shutdown),
                _ = nudge => return Ok(Wake::Changed),
            }
        }
        let session = self.session.take().ok_or_else(|| ImapError::Closed {
            server: self.server.clone(),
        })?;
        // Mail that came in after the catch-up's last command is announced when IDLE starts,
        // possibly before the server's continuation; the library queues such an announcement
        // instead of ending the wait, so it is looked for here, or it would wait a whole renewal.
        let queued = session.unsolicited_responses.clone();
        let mut handle = session.idle();
        handle.init().await.map_err(self.cmd_err("IDLE"))?;
        debug!(idle = true, "waiting for the server");
        let outcome = if announces_new_mail(|| queued.try_recv().ok()) {
            debug!("new mail announced as IDLE started");
            Ok(Wake::Changed)
        } else {
            let (wait, stop) = handle.wait_with_timeout(renew);
            let outcome = tokio::select! {
                r = wait => r.map(|resp| match resp {
                    IdleResponse::NewData(_) => {
                        debug!("woken by the server");
                        Wake::Changed
                    }
                    IdleResponse::Timeout => Wake::Timeout,
                    IdleResponse::ManualInterrupt => Wake::Shutdown,
                }),
                _ = shutdown.changed() => Ok(Wake::Shutdown),
                // Something for the bot to do that is not in the mailbox (an approval given in
                // the console or on the command line): IDLE ends with DONE like any other wake.
                _ = nudge => Ok(Wake::Changed),
            };
            drop(stop);
            outcome
        };
        let outcome = outcome.map_err(self.cmd_err("IDLE"))?;
        let session = tokio::time::timeout(Duration::from_secs(30), handle.done())
            .await
            .map_err(|_| ImapError::Timeout {
                server: self.server.clone(),
                command: "DONE".into(),
            })?
            .map_err(self.cmd_err("DONE"))?;
        self.session = Some(session);
        Ok(outcome)
    }

    /// Drains notifications the library queued for us (we always re-read by UID range).
    /// Empties the queue of unsolicited responses; true when one of them announced new mail
    /// (`EXISTS`, `RECENT`) that arrived while the bot was busy, so that it catches up again
    /// rather than wait for a notification the server already sent.
    pub fn drain_unsolicited(&mut self) -> bool {
        let announced = std::mem::take(&mut self.announced);
        let queued = self
            .session
            .as_ref()
            .is_some_and(|s| announces_new_mail(|| s.unsolicited_responses.try_recv().ok()));
        announced | queued
    }

    /// Logs out politely; errors are of no interest at that point.
    pub async fn logout(&mut self) {
        if let Some(mut s) = self.session.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), s.logout()).await;
        }
    }
}

/// Takes every queued unsolicited response (`next` gives one at a time); true when one of them
/// announced new mail.
fn announces_new_mail(
    mut next: impl FnMut() -> Option<async_imap::types::UnsolicitedResponse>,
) -> bool {
    use async_imap::types::UnsolicitedResponse;
    let mut new_mail = false;
    while let Some(r) = next() {
        new_mail |= matches!(
            r,
            UnsolicitedResponse::Exists(_) | UnsolicitedResponse::Recent(_)
        );
    }
    new_mail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_personal_namespace_is_read_from_the_answer() {
        let ns = |line: &str| parse_namespace(line.as_bytes());
        assert_eq!(
            ns("* NAMESPACE ((\"INBOX.\" \".\")) NIL ((\"\" \".\"))\r\n"),
            Some(Namespace {
                prefix: "INBOX.".into(),
                delimiter: Some('.')
            })
        );
        assert_eq!(
            ns("* namespace ((\"\" \"/\" \"X-PARAM\" (\"A\"))) NIL NIL\r\n"),
            Some(Namespace {
                prefix: String::new(),
                delimiter: Some('/')
            })
        );
        assert_eq!(
            ns("* NAMESPACE ((\"\" NIL)) NIL NIL\r\n"),
            Some(Namespace::default())
        );
        assert_eq!(
            ns("* NAMESPACE ((\"a\\\\b\\\"\" \"\\\\\")) NIL NIL"),
            Some(Namespace {
                prefix: "a\\b\"".into(),
                delimiter: Some('\\')
            })
        );
        for odd in [
            "* NAMESPACE NIL NIL NIL\r\n",
            "* NAMESPACE (({5}\r\n",
            "* NAMESPACE ((\"INBOX.",
            "* NAMESPACE ((\"\" \"ab\")) NIL NIL",
            "* NAMESPACE ",
            "* NAMESPACE ((\"é",
            "",
        ] {
            assert_eq!(ns(odd), None, "{odd:?}");
        }
    }

    #[test]
    fn folders_written_the_plain_way_take_the_server_s_prefix_and_delimiter() {
        let cyrus = Namespace {
            prefix: "INBOX.".into(),
            delimiter: Some('.'),
        };
        let dovecot = Namespace {
            prefix: String::new(),
            delimiter: Some('/'),
        };
        let dotted = Namespace {
            prefix: String::new(),
            delimiter: Some('.'),
        };
        for (name, on_cyrus, on_dovecot, on_dotted) in [
            ("INBOX", "INBOX", "INBOX", "INBOX"),
            ("inbox", "inbox", "inbox", "inbox"),
            ("Drafts", "INBOX.Drafts", "Drafts", "Drafts"),
            (
                "postmaster-bot/Review",
                "INBOX.postmaster-bot.Review",
                "postmaster-bot/Review",
                "postmaster-bot.Review",
            ),
            (
                "INBOX.Drafts",
                "INBOX.Drafts",
                "INBOX.Drafts",
                "INBOX.Drafts",
            ),
            (
                "INBOX/Postmaster",
                "INBOX.Postmaster",
                "INBOX/Postmaster",
                "INBOX.Postmaster",
            ),
            ("Sent Items", "INBOX.Sent Items", "Sent Items", "Sent Items"),
        ] {
            assert_eq!(cyrus.folder(name), on_cyrus, "{name}");
            assert_eq!(dovecot.folder(name), on_dovecot, "{name}");
            assert_eq!(dotted.folder(name), on_dotted, "{name}");
        }
        assert_eq!(cyrus.child("INBOX.Teach", "jmrp"), "INBOX.Teach.jmrp");
        assert_eq!(Namespace::default().child("Teach", "jmrp"), "Teach/jmrp");
        // Any bytes: no panic on a name that splits a character.
        assert_eq!(cyrus.folder("IN\u{e9}"), "INBOX.IN\u{e9}");
    }

    #[test]
    fn a_command_is_named_by_its_folder_or_flags_never_by_a_search() {
        assert_eq!(
            command_name("UID MOVE 1:5 \"Handled\""),
            "UID MOVE to \"Handled\""
        );
        assert_eq!(
            command_name("UID COPY 7 \"INBOX.Handled\""),
            "UID COPY to \"INBOX.Handled\""
        );
        assert_eq!(
            command_name("UID STORE 3 +FLAGS.SILENT (\\Deleted)"),
            "UID STORE +FLAGS.SILENT (\\Deleted)"
        );
        assert_eq!(
            command_name("STATUS \"Sent Items\" (MESSAGES)"),
            "STATUS \"Sent Items\""
        );
        assert_eq!(
            command_name("CREATE \"Drafts\" (USE (\\Drafts))"),
            "CREATE \"Drafts\""
        );
        assert_eq!(
            command_name("LIST \"\" \"*\" RETURN (SPECIAL-USE)"),
            "LIST \"\" \"*\""
        );
        assert_eq!(
            command_name("UID SEARCH OR HEADER X \"y\" FROM \"z\""),
            "UID SEARCH"
        );
        assert_eq!(command_name("NOOP"), "NOOP");
    }

    #[test]
    fn a_refusal_keeps_the_server_s_code_and_words() {
        assert_eq!(
            from_library_words(
                "code: Some(TryCreate), info: Some(\"Mailbox doesn't exist: X (0.001 secs).\")"
            ),
            (
                Some("TRYCREATE".to_string()),
                "Mailbox doesn't exist: X (0.001 secs).".to_string()
            )
        );
        assert_eq!(
            from_library_words(
                "outcome: Outcome { code: None, information: Some(\"[OVERQUOTA] Quota exceeded (mailbox for user is full)\") }"
            ),
            (
                Some("OVERQUOTA".to_string()),
                "Quota exceeded (mailbox for user is full)".to_string()
            )
        );
        assert_eq!(
            refusal_parts(None, Some(" [NOPERM] Permission denied ")),
            (Some("NOPERM".to_string()), "Permission denied".to_string())
        );
        assert_eq!(refusal_parts(None, Some("Invalid mailbox name")).0, None);
        assert_eq!(refusal_text(Some("CANNOT"), "x"), "[CANNOT] x");
        assert_eq!(quote("a\"b\\c").as_deref(), Some("\"a\\\"b\\\\c\""));
        assert_eq!(quote("a\r\nb"), None);
    }
}
