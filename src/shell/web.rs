//! The operator's console: server-rendered pages over the state store (axum, askama), no
//! script at all. Everything a message brought is escaped by the templates; the pages send a
//! Content-Security-Policy that allows no script anyway. Every POST carries its session's
//! CSRF token. Acts on the queue go through `shell::queue`, the same functions as the command
//! line, and are written to the audit trail with the user's name.
//!
//! askama over the alternatives: templates are checked when the crate compiles (a typo in a
//! page is a build error, not an error page), escaping is on by default for `.html`, and a page
//! renders without a runtime template engine, which keeps the dashboard fast on a large store.

pub mod auth;
mod metrics;
mod pages;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Form, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::serve::IncomingStream;
use axum::Router;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::web::WebConfig;
use crate::config::Config;
use crate::shell::engine::Engine;
use crate::shell::queue::{self, Actor, QueueError};
use crate::shell::store::{Store, StoreError};
use auth::{Sessions, Users, UsersError};

/// The console cannot start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("the console cannot listen on {listen}: {source}")]
    Bind {
        listen: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Users(#[from] UsersError),
    #[error("web.users_file {0} names no user: add one with `postmaster-bot web adduser NAME`")]
    NoUsers(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the console stopped: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    Setup(#[from] crate::shell::engine::SetupError),
    #[error("web TLS: {0}")]
    Tls(String),
}

/// The address a request came from, over plain TCP or TLS alike.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Peer {
        Peer(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, tls::TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, tls::TlsListener>) -> Peer {
        Peer(*stream.remote_addr())
    }
}

/// What every request handler shares.
pub struct Console {
    engine: Arc<Engine>,
    web: WebConfig,
    store: Mutex<Store>,
    users: Option<Users>,
    sessions: Sessions,
    secure_cookies: bool,
}

/// Serves the console until `shutdown` turns true.
pub async fn serve(
    engine: Arc<Engine>,
    web: WebConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), WebError> {
    let users = match &web.users_file {
        Some(path) => {
            let users = Users::load(path)?;
            if users.is_empty() {
                return Err(WebError::NoUsers(path.display().to_string()));
            }
            Some(users)
        }
        None => None,
    };
    let store = crate::shell::store::open_state(&engine.config.state)?;
    let console = Arc::new(Console {
        secure_cookies: web.tls.is_some(),
        engine,
        store: Mutex::new(store),
        users,
        sessions: Sessions::default(),
        web: web.clone(),
    });
    let listener = tokio::net::TcpListener::bind(web.listen)
        .await
        .map_err(|source| WebError::Bind {
            listen: web.listen,
            source,
        })?;
    let bound = listener.local_addr().map_err(WebError::Serve)?;
    let login = if console.users.is_some() {
        "users file"
    } else if console.web.proxy.is_some() {
        "trusted proxy header"
    } else {
        "none (loopback only)"
    };
    info!(listen = %bound, login, "console listening");
    let app = router(console).into_make_service_with_connect_info::<Peer>();
    match &web.tls {
        None => axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|stop| *stop).await;
            })
            .await
            .map_err(WebError::Serve),
        Some((cert, key)) => tls::serve(listener, app, cert, key, shutdown).await,
    }
}

fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(pages::dashboard))
        .route("/cases", get(pages::cases))
        .route("/cases/{id}", get(pages::case))
        .route("/queue", get(pages::queue))
        .route("/queue/{id}", get(pages::queue_item))
        .route("/queue/{id}/decide", post(decide))
        .route("/inbox", get(pages::inbox))
        .route("/teach", post(teach))
        .route("/templates", get(pages::templates))
        .route("/templates/{id}/remove", post(remove_template))
        .route("/audit", get(pages::audit))
        .route("/login", get(pages::login_page).post(login))
        .route("/logout", post(logout))
        .route("/metrics", get(metrics::metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(metrics::readyz))
        .route("/static/console.css", get(stylesheet))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .layer(axum::middleware::map_response(security_headers))
        .with_state(console)
}

/// No script may run, no frame may hold the console, and no page is cached or sniffed.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../../templates/web/console.css"),
    )
        .into_response()
}

/// Who is asking, and the session their forms are checked against.
pub struct Visitor {
    /// The session's cookie value, and whether it is new (to be set on the response).
    pub session_id: String,
    pub new_session: bool,
    pub user: String,
    pub csrf: String,
}

/// A request the console will not serve as asked: a login first, or a refusal.
pub enum Denied {
    Login,
    Forbidden(&'static str),
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        match self {
            Denied::Login => Redirect::to("/login").into_response(),
            Denied::Forbidden(why) => (StatusCode::FORBIDDEN, format!("{why}\n")).into_response(),
        }
    }
}

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

impl Console {
    /// The visitor of a request. Without a login configured (loopback only) everyone is
    /// `local`; with a trusted proxy the proxy names the user; with users, the session does.
    pub fn visitor(&self, headers: &HeaderMap, peer: SocketAddr) -> Result<Visitor, Denied> {
        let now = crate::clock::now();
        let proxied_user = match &self.web.proxy {
            Some(proxy) => {
                if !proxy.from.iter().any(|net| net.contains(&peer.ip())) {
                    return Err(Denied::Forbidden(
                        "the console is only reached through its trusted proxy",
                    ));
                }
                let user = headers
                    .get(proxy.header.as_str())
                    .and_then(|v| v.to_str().ok())
                    .map(str::trim)
                    .filter(|u| auth::valid_name(u))
                    .map(str::to_string);
                match user {
                    Some(u) => Some(u),
                    None => return Err(Denied::Forbidden("the proxy named no user")),
                }
            }
            None => None,
        };
        let existing = cookie_value(headers, auth::COOKIE)
            .and_then(|id| self.sessions.get(&id, now).map(|s| (id, s)));
        let (session_id, session, new_session) = match existing {
            // A proxied session belongs to the user the proxy names now.
            Some((id, s)) if proxied_user.is_none() || s.user == proxied_user => (id, s, false),
            // With users, only the login page makes a session: a visitor who is not logged in
            // is sent there, and costs nothing here.
            _ if proxied_user.is_none() && self.users.is_some() => return Err(Denied::Login),
            _ => {
                let user = proxied_user.clone().or_else(|| Some("local".to_string()));
                let (id, s) = self.sessions.create(user, now);
                (id, s, true)
            }
        };
        let user = match (&session.user, &self.users) {
            (Some(u), _) => u.clone(),
            (None, Some(_)) => return Err(Denied::Login),
            (None, None) => "local".to_string(),
        };
        Ok(Visitor {
            session_id,
            new_session,
            user,
            csrf: session.csrf,
        })
    }

    fn set_cookie(&self, value: &str) -> HeaderValue {
        let secure = if self.secure_cookies { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{}={value}; Path=/; HttpOnly; SameSite=Strict{secure}",
            auth::COOKIE
        ))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// Runs a store call off the async threads.
    pub async fn with_store<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Store, &Config) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let console = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let mut store = console.store.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut store, &console.engine.config)
        })
        .await
        .unwrap_or_else(|e| {
            Err(StoreError::Locked {
                path: format!("(the store task failed: {e})"),
            })
        })
    }
}

/// A page for a visitor, with their session cookie when it is new.
pub fn respond(console: &Console, visitor: &Visitor, html: String) -> Response {
    let mut response = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response();
    if visitor.new_session {
        response
            .headers_mut()
            .insert(header::SET_COOKIE, console.set_cookie(&visitor.session_id));
    }
    response
}

/// An error a person can read, never a stack of internals.
pub fn failure(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{message}\n"),
    )
        .into_response()
}

pub fn store_failure(e: StoreError) -> Response {
    warn!(error = %e, "console: the state store failed");
    failure(
        StatusCode::SERVICE_UNAVAILABLE,
        "the state store cannot be read now; try again",
    )
}

/// Why a form was not taken.
enum FormRefused {
    Denied(Denied),
    Token,
}

impl IntoResponse for FormRefused {
    fn into_response(self) -> Response {
        match self {
            FormRefused::Denied(d) => d.into_response(),
            FormRefused::Token => failure(
                StatusCode::FORBIDDEN,
                "refused: the form did not carry this session's token (reload the page and try again)",
            ),
        }
    }
}

/// A form's CSRF token matches the session's; otherwise the POST is refused.
fn checked_form(
    console: &Console,
    headers: &HeaderMap,
    peer: SocketAddr,
    form: &HashMap<String, String>,
) -> Result<Visitor, FormRefused> {
    let visitor = console
        .visitor(headers, peer)
        .map_err(FormRefused::Denied)?;
    let given = form.get("csrf").map(String::as_str).unwrap_or("");
    if visitor.new_session || !auth::same_token(given, &visitor.csrf) {
        warn!(peer = %peer, "console: a form without its session's token was refused");
        return Err(FormRefused::Token);
    }
    Ok(visitor)
}

/// Approve (with the edit box's text) or reject a queued message.
async fn decide(
    State(console): State<Arc<Console>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let visitor = match checked_form(&console, &headers, peer, &form) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let actor = Actor(format!("web:{}", visitor.user));
    let action = form.get("action").cloned().unwrap_or_default();
    let body = form.get("body").cloned();
    let shown = form.get("shown").cloned();
    let result = console
        .with_store(move |store, cfg| {
            let now = crate::clock::now();
            let outcome = match action.as_str() {
                "approve" => {
                    // The text in the box is what is sent: an edit is saved first.
                    let edited = body.filter(|b| Some(b) != shown.as_ref());
                    let edit = match edited {
                        Some(b) => queue::edit(store, id, &b, &actor, now),
                        None => Ok(()),
                    };
                    edit.and_then(|()| queue::release(store, cfg, id, &actor, now))
                }
                "reject" => queue::reject(store, id, &actor, now),
                _ => return Ok(Err("unknown action".to_string())),
            };
            match outcome {
                Ok(()) => Ok(Ok(action)),
                Err(QueueError::Store(e)) => Err(e),
                Err(e) => Ok(Err(e.to_string())),
            }
        })
        .await;
    match result {
        Ok(Ok(action)) => {
            info!(outbox = id, user = %visitor.user, action = %action, "console: queue decision");
            Redirect::to(&format!("/queue/{id}")).into_response()
        }
        Ok(Err(why)) => failure(StatusCode::CONFLICT, &why),
        Err(e) => store_failure(e),
    }
}

/// "This is a ...": teaches the template of a message the bot handed to a person. The message
/// is fetched from the mailbox by its Message-ID (the store keeps only an excerpt), learned,
/// and decided again, exactly as `postmaster-bot teach --message-id` does.
async fn teach(
    State(console): State<Arc<Console>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let visitor = match checked_form(&console, &headers, peer, &form) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let kind_name = form.get("kind").cloned().unwrap_or_default();
    let Ok(kind) = serde_json::from_value::<crate::pipeline::classify::Kind>(
        serde_json::Value::String(kind_name.clone()),
    ) else {
        return failure(StatusCode::BAD_REQUEST, "not a kind");
    };
    let message_id = form
        .get("message_id")
        .map(|m| {
            m.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
        .unwrap_or_default();
    if message_id.is_empty() || message_id.len() > 998 {
        return failure(StatusCode::BAD_REQUEST, "no Message-ID");
    }
    let raw = match crate::shell::daemon::fetch_message(&console.engine, &message_id).await {
        Ok(Some(raw)) => raw,
        Ok(None) => {
            return failure(
                StatusCode::NOT_FOUND,
                "that message is no longer in the watched or handled folder",
            )
        }
        Err(e) => {
            warn!(error = %e, "console: the mailbox could not be read for teaching");
            return failure(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("the mailbox could not be read: {e}"),
            );
        }
    };
    let engine = Arc::clone(&console.engine);
    let actor = format!("web:{}", visitor.user);
    let result = console
        .with_store(move |store, _| {
            let now = crate::clock::now();
            let source = format!("<{message_id}>");
            match crate::shell::teach::teach(&engine, store, kind, &raw, &source, now) {
                Ok(taught) => {
                    store.add_audit(
                        &actor,
                        "teach",
                        None,
                        None,
                        &format!("{source} is {kind_name} (template #{})", taught.template),
                        now,
                    )?;
                    Ok(Ok(()))
                }
                Err(crate::shell::teach::TeachError::Store(e)) => Err(e),
                Err(e) => Ok(Err(e.to_string())),
            }
        })
        .await;
    match result {
        Ok(Ok(())) => {
            info!(user = %visitor.user, "console: template taught");
            Redirect::to("/templates").into_response()
        }
        Ok(Err(why)) => failure(StatusCode::UNPROCESSABLE_ENTITY, &why),
        Err(e) => store_failure(e),
    }
}

async fn remove_template(
    State(console): State<Arc<Console>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let visitor = match checked_form(&console, &headers, peer, &form) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let engine = Arc::clone(&console.engine);
    let actor = format!("web:{}", visitor.user);
    let result = console
        .with_store(move |store, _| {
            let removed = store.remove_template(id)?;
            if removed {
                engine.load_templates(store)?;
                store.add_audit(
                    &actor,
                    "remove_template",
                    None,
                    None,
                    &format!("template #{id}"),
                    crate::clock::now(),
                )?;
            }
            Ok(removed)
        })
        .await;
    match result {
        Ok(true) => Redirect::to("/templates").into_response(),
        Ok(false) => failure(StatusCode::NOT_FOUND, &format!("no template #{id}")),
        Err(e) => store_failure(e),
    }
}

async fn login(
    State(console): State<Arc<Console>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let Some(users) = &console.users else {
        return Redirect::to("/").into_response();
    };
    let now = crate::clock::now();
    // The login form is tied to a session too: no other site can log a visitor in.
    let anonymous = cookie_value(&headers, auth::COOKIE)
        .and_then(|id| console.sessions.get(&id, now).map(|s| (id, s)));
    let Some((old_id, session)) = anonymous else {
        return failure(
            StatusCode::FORBIDDEN,
            "refused: reload the login page and try again",
        );
    };
    if !auth::same_token(form.get("csrf").map_or("", String::as_str), &session.csrf) {
        return failure(
            StatusCode::FORBIDDEN,
            "refused: reload the login page and try again",
        );
    }
    if console.sessions.locked_out(peer.ip(), now) {
        warn!(peer = %peer.ip(), "console: login refused, too many failures from this address");
        return failure(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed logins from this address: try again in 15 minutes",
        );
    }
    let name = form.get("user").cloned().unwrap_or_default();
    let password = form.get("password").cloned().unwrap_or_default();
    let ok = tokio::task::spawn_blocking({
        let users = users.clone();
        let name = name.clone();
        move || users.check(&name, &password)
    })
    .await
    .unwrap_or(false);
    if !ok {
        console.sessions.failed(peer.ip(), now);
        warn!(peer = %peer.ip(), user = ?name, "console: failed login");
        return failure(StatusCode::UNAUTHORIZED, "wrong user name or password");
    }
    console.sessions.succeeded(peer.ip());
    // A new session on login: a token seen before it is worth nothing after.
    console.sessions.remove(&old_id);
    let (id, _) = console.sessions.create(Some(name.clone()), now);
    info!(peer = %peer.ip(), user = %name, "console: logged in");
    let mut response = Redirect::to("/").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, console.set_cookie(&id));
    response
}

async fn logout(
    State(console): State<Arc<Console>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    match checked_form(&console, &headers, peer, &form) {
        Ok(v) => {
            console.sessions.remove(&v.session_id);
            Redirect::to("/login").into_response()
        }
        Err(r) => r.into_response(),
    }
}

/// Query parameters of a case list.
#[derive(Debug, Default, serde::Deserialize)]
pub struct CaseQuery {
    pub state: Option<String>,
    pub ip: Option<String>,
    pub ticket: Option<String>,
    pub provider: Option<String>,
}

mod tls {
    //! HTTPS for the console with the same rustls (ring) as the mail connections.

    use std::net::SocketAddr;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use axum::extract::connect_info::IntoMakeServiceWithConnectInfo;
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::watch;
    use tokio_rustls::server::TlsStream;
    use tokio_rustls::{rustls, TlsAcceptor};
    use tracing::debug;

    use super::WebError;

    pub async fn serve(
        listener: TcpListener,
        app: IntoMakeServiceWithConnectInfo<axum::Router, super::Peer>,
        cert: &Path,
        key: &Path,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), WebError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .and_then(|i| i.collect::<Result<_, _>>())
            .map_err(|e| WebError::Tls(format!("{}: {e}", cert.display())))?;
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| WebError::Tls(format!("{}: {e}", key.display())))?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| WebError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| WebError::Tls(e.to_string()))?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TlsListener::new(listener, acceptor).map_err(WebError::Serve)?;
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|stop| *stop).await;
            })
            .await
            .map_err(WebError::Serve)
    }

    /// Handshakes at once, at most this many.
    const HANDSHAKES: usize = 64;

    /// A listener whose connections are TLS-accepted before axum sees them. Handshakes run side
    /// by side (a slow or silent client holds only its own), each within ten seconds; a failed
    /// one drops that connection only.
    pub struct TlsListener {
        ready: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
        local: SocketAddr,
        acceptor_task: tokio::task::JoinHandle<()>,
    }

    impl TlsListener {
        fn new(listener: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<TlsListener> {
            let local = listener.local_addr()?;
            let (tx, ready) = tokio::sync::mpsc::channel(HANDSHAKES);
            let limit = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES));
            let acceptor_task = tokio::spawn(async move {
                loop {
                    let (tcp, addr) = match listener.accept().await {
                        Ok(c) => c,
                        Err(e) => {
                            debug!(error = %e, "console: accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
                        return;
                    };
                    let (tx, acceptor) = (tx.clone(), acceptor.clone());
                    tokio::spawn(async move {
                        let _permit = permit;
                        match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                            .await
                        {
                            Ok(Ok(tls)) => {
                                let _ = tx.send((tls, addr)).await;
                            }
                            Ok(Err(e)) => {
                                debug!(peer = %addr, error = %e, "console: TLS handshake failed")
                            }
                            Err(_) => debug!(peer = %addr, "console: TLS handshake timed out"),
                        }
                    });
                }
            });
            Ok(TlsListener {
                ready,
                local,
                acceptor_task,
            })
        }
    }

    impl Drop for TlsListener {
        fn drop(&mut self) {
            self.acceptor_task.abort();
        }
    }

    impl axum::serve::Listener for TlsListener {
        type Io = TlsStream<TcpStream>;
        type Addr = SocketAddr;

        async fn accept(&mut self) -> (Self::Io, Self::Addr) {
            match self.ready.recv().await {
                Some(connection) => connection,
                // The acceptor ended: nothing will come again.
                None => std::future::pending().await,
            }
        }

        fn local_addr(&self) -> std::io::Result<Self::Addr> {
            Ok(self.local)
        }
    }
}
