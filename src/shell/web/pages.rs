//! The console's pages: each gathers what it shows from the store in one call off the async
//! threads, turns it into plain view values, and renders its template (escaped by askama).

use std::sync::Arc;

use askama::Template;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{failure, respond, store_failure, CaseQuery, Console, Peer, Visitor};
use crate::pipeline::console::{
    bar_chart, days_histogram, duration_words, line_chart, timestamp, Series,
};
use crate::shell::store::{CaseFilter, OutboxItem, Store, StoreError};

/// What the navigation shows on every page.
pub struct Nav {
    pub user: String,
    pub csrf: String,
    pub waiting: usize,
    pub login: bool,
}

/// A queued or held message as a list shows it.
pub struct QueueLine {
    pub id: i64,
    pub case_id: Option<i64>,
    pub template: String,
    pub to: String,
    pub subject: String,
    pub status: String,
    pub reason: String,
    pub age: String,
}

impl QueueLine {
    fn of(item: &OutboxItem, now: i64) -> QueueLine {
        QueueLine {
            id: item.id,
            case_id: item.case_id,
            template: item.template.clone(),
            to: item.recipients.join(", "),
            subject: item.subject.clone(),
            status: item.status.clone(),
            reason: item.reason.clone().unwrap_or_default(),
            age: if item.next_attempt_at > now {
                format!("retry in {}", duration_words(item.next_attempt_at - now))
            } else {
                format!("{} ago", duration_words(now - item.updated_at))
            },
        }
    }
}

/// A case as a table row.
pub struct CaseRow {
    pub id: i64,
    pub topic: String,
    pub provider: String,
    pub state: String,
    pub ticket: String,
    pub ips: String,
    pub opened: String,
    pub waiting: String,
}

fn case_row(c: &crate::shell::store::CaseLine, now: i64) -> CaseRow {
    let ips = if c.ips.len() > 6 {
        format!("{} and {} more", c.ips[..6].join(", "), c.ips.len() - 6)
    } else {
        c.ips.join(", ")
    };
    CaseRow {
        id: c.id,
        topic: c.topic.clone(),
        provider: c.provider.clone().unwrap_or_default(),
        state: c.state.clone(),
        ticket: c.ticket_id.clone().unwrap_or_default(),
        ips,
        opened: timestamp(c.opened_at),
        waiting: if c.state == "closed" {
            format!(
                "closed after {}",
                duration_words(c.closed_at.unwrap_or(c.updated_at) - c.opened_at)
            )
        } else {
            duration_words(now - c.updated_at)
        },
    }
}

/// The outbox rows in one status as list lines.
fn queue_lines(store: &Store, status: &str, now: i64) -> Result<Vec<QueueLine>, StoreError> {
    Ok(store
        .outbox_items(status)?
        .iter()
        .map(|i| QueueLine::of(i, now))
        .collect())
}

/// The cases in one state as table rows, at most `limit`.
fn case_rows(store: &Store, state: &str, limit: u32, now: i64) -> Result<Vec<CaseRow>, StoreError> {
    Ok(store
        .case_lines(&CaseFilter {
            state: Some(state.to_string()),
            limit,
            ..CaseFilter::default()
        })?
        .iter()
        .map(|c| case_row(c, now))
        .collect())
}

fn nav(visitor: &Visitor, console: &Console, waiting: usize) -> Nav {
    Nav {
        user: visitor.user.clone(),
        csrf: visitor.csrf.clone(),
        waiting,
        login: console.users.is_some(),
    }
}

fn waiting_count(store: &Store) -> Result<usize, StoreError> {
    Ok(store
        .outbox_by_status()?
        .iter()
        .find(|(s, _)| s == "awaiting_approval")
        .map_or(0, |(_, n)| *n as usize))
}

fn render(console: &Console, visitor: &Visitor, page: impl Template) -> Response {
    match page.render() {
        Ok(html) => respond(console, visitor, html),
        Err(e) => failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("the page could not be drawn: {e}"),
        ),
    }
}

macro_rules! visitor_or_deny {
    ($console:expr, $headers:expr, $peer:expr) => {
        match $console.visitor(&$headers, $peer) {
            Ok(v) => v,
            Err(denied) => return denied.into_response(),
        }
    };
}

#[derive(Template)]
#[template(path = "web/dashboard.html")]
pub struct Dashboard {
    pub nav: Nav,
    pub waiting: Vec<QueueLine>,
    pub held: Vec<QueueLine>,
    pub failed: Vec<QueueLine>,
    pub needs_operator: Vec<CaseRow>,
    pub on_microsoft: Vec<CaseRow>,
    pub quarantined: usize,
    pub sync: Vec<(String, String)>,
    pub chart_cases: String,
    pub chart_days: String,
    pub chart_ips: String,
}

pub async fn dashboard(
    State(console): State<Arc<Console>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Response {
    let visitor = visitor_or_deny!(console, headers, peer);
    let data = console
        .with_store(|store, _| {
            let now = crate::clock::now();
            let waiting = queue_lines(store, "awaiting_approval", now)?;
            let held = queue_lines(store, "held", now)?;
            let mut failed = queue_lines(store, "failed", now)?;
            failed.extend(queue_lines(store, "sending", now)?);
            let cases = |state: &str| case_rows(store, state, 50, now);
            let needs_operator = cases("needs_operator")?;
            let mut on_microsoft = cases("awaiting_result")?;
            on_microsoft.extend(cases("escalated")?);
            on_microsoft.extend(cases("blocked")?);
            let quarantined = store.quarantined(1000)?.len();
            let sync = health_lines(store, now)?;
            let spans = store.block_spans(crate::pipeline::console::weeks_start(now, 12))?;
            let weekly = crate::pipeline::console::weekly(&spans, now, 12);
            Ok((
                waiting,
                held,
                failed,
                needs_operator,
                on_microsoft,
                quarantined,
                sync,
                weekly,
            ))
        })
        .await;
    let (waiting, held, failed, needs_operator, on_microsoft, quarantined, sync, weekly) =
        match data {
            Ok(d) => d,
            Err(e) => return store_failure(e),
        };
    let weeks: Vec<i64> = weekly.cases.iter().map(|(w, _, _)| *w).collect();
    let page = Dashboard {
        nav: nav(&visitor, &console, waiting.len()),
        chart_cases: bar_chart(
            "Outlook.com and Microsoft 365 cases per week",
            &weeks,
            &[
                Series {
                    name: "opened",
                    colour: "#c0392b",
                    values: weekly.cases.iter().map(|c| f64::from(c.1)).collect(),
                },
                Series {
                    name: "closed",
                    colour: "#27ae60",
                    values: weekly.cases.iter().map(|c| f64::from(c.2)).collect(),
                },
            ],
        ),
        chart_days: days_histogram("Days from block to delisting", &weekly.days_to_delisting),
        chart_ips: line_chart(
            "Blocked IPs over time",
            &weeks,
            "IPs in open cases",
            "#8e44ad",
            &weekly
                .blocked_ips
                .iter()
                .map(|(_, n)| f64::from(*n))
                .collect::<Vec<_>>(),
        ),
        waiting,
        held,
        failed,
        needs_operator,
        on_microsoft,
        quarantined,
        sync,
    };
    render(&console, &visitor, page)
}

/// The daemon's mailbox health as label and value.
fn health_lines(store: &Store, now: i64) -> Result<Vec<(String, String)>, StoreError> {
    let health = store.health()?;
    let get = |key: &str| health.iter().find(|h| h.key == key);
    let mut out = Vec::new();
    match crate::shell::store::Health::oldest(&health, "last_sync") {
        Some(h) => out.push((
            "last successful sync".to_string(),
            format!("{} ago ({})", duration_words(now - h.at), h.value),
        )),
        None => out.push((
            "last successful sync".to_string(),
            "never (is the daemon running?)".to_string(),
        )),
    }
    if let Some(h) = get("waiting") {
        out.push(("waiting with".to_string(), h.value.clone()));
    }
    if let Some(h) = get("backlog") {
        out.push((
            "catch-up backlog".to_string(),
            format!("{} messages", h.value),
        ));
    }
    if let Some(h) = get("imap_reconnects") {
        out.push(("IMAP reconnects".to_string(), h.value.clone()));
    }
    if let Some(h) = get("last_error") {
        out.push((
            "last error".to_string(),
            format!("{} ago: {}", duration_words(now - h.at), h.value),
        ));
    }
    Ok(out)
}

#[derive(Template)]
#[template(path = "web/cases.html")]
pub struct Cases {
    pub nav: Nav,
    pub rows: Vec<CaseRow>,
    pub state: String,
    pub ip: String,
    pub ticket: String,
    pub provider: String,
    pub states: Vec<&'static str>,
}

pub async fn cases(
    State(console): State<Arc<Console>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Query(q): Query<CaseQuery>,
) -> Response {
    let visitor = visitor_or_deny!(console, headers, peer);
    let keep = |v: Option<String>| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    let filter = CaseFilter {
        state: keep(q.state),
        ip: keep(q.ip),
        ticket: keep(q.ticket),
        provider: keep(q.provider),
        limit: 500,
    };
    let shown = filter.clone();
    let data = console
        .with_store(move |store, _| {
            let now = crate::clock::now();
            let rows = store
                .case_lines(&filter)?
                .iter()
                .map(|c| case_row(c, now))
                .collect::<Vec<_>>();
            Ok((rows, waiting_count(store)?))
        })
        .await;
    let (rows, waiting) = match data {
        Ok(d) => d,
        Err(e) => return store_failure(e),
    };
    let page = Cases {
        nav: nav(&visitor, &console, waiting),
        rows,
        state: shown.state.unwrap_or_default(),
        ip: shown.ip.unwrap_or_default(),
        ticket: shown.ticket.unwrap_or_default(),
        provider: shown.provider.unwrap_or_default(),
        states: vec![
            "needs_operator",
            "blocked",
            "awaiting_result",
            "escalated",
            "closed",
        ],
    };
    render(&console, &visitor, page)
}

/// One line of a case's timeline.
pub struct TimelineLine {
    pub at: String,
    pub kind: String,
    pub action: String,
    pub state: String,
    pub summary: String,
}

/// A message the case was built from.
pub struct MessageView {
    pub at: String,
    pub message_id: String,
    pub source: String,
    pub kind: String,
    pub trusted: bool,
    pub action: String,
    pub reason: String,
    pub evidence: Vec<String>,
    pub excerpt: String,
}

#[derive(Template)]
#[template(path = "web/case.html")]
pub struct CasePage {
    pub nav: Nav,
    pub case: CaseRow,
    pub escalations: u32,
    pub last_bounce: String,
    pub timeline: Vec<TimelineLine>,
    pub messages: Vec<MessageView>,
    pub outbox: Vec<QueueLine>,
}

pub async fn case(
    State(console): State<Arc<Console>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    let visitor = visitor_or_deny!(console, headers, peer);
    let data = console
        .with_store(move |store, _| {
            let Some(case) = store.case(id)? else {
                return Ok(None);
            };
            let timeline = store.timeline_page(id, 500)?;
            let messages = store.case_messages(id, 200)?;
            let outbox = store.outbox(Some(id))?;
            Ok(Some((
                case,
                timeline,
                messages,
                outbox,
                waiting_count(store)?,
            )))
        })
        .await;
    let (case, timeline, messages, outbox, waiting) = match data {
        Ok(Some(d)) => d,
        Ok(None) => return failure(StatusCode::NOT_FOUND, &format!("no case #{id}")),
        Err(e) => return store_failure(e),
    };
    let now = crate::clock::now();
    let line = crate::shell::store::CaseLine {
        id: case.id,
        topic: serde_json::to_value(case.topic)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        state: case.state.as_str().to_string(),
        ticket_id: case.ticket_id.clone(),
        ips: case.ips.clone(),
        opened_at: case.opened_at,
        updated_at: case.updated_at,
        closed_at: case.closed_at,
        provider: case.provider.clone(),
    };
    let page = CasePage {
        nav: nav(&visitor, &console, waiting),
        case: case_row(&line, now),
        escalations: case.escalations,
        last_bounce: case.last_bounce.clone().unwrap_or_default(),
        timeline: timeline
            .into_iter()
            .map(|t| TimelineLine {
                at: timestamp(t.at),
                kind: t.kind.unwrap_or_default(),
                action: t.action,
                state: t.state,
                summary: t.summary,
            })
            .collect(),
        messages: messages
            .into_iter()
            .map(|m| MessageView {
                at: timestamp(m.processed_at),
                message_id: m.message_id.unwrap_or_default(),
                source: m.source,
                kind: m.kind,
                trusted: m.trusted,
                action: m.action,
                reason: m.reason,
                evidence: m.evidence,
                excerpt: m.excerpt,
            })
            .collect(),
        outbox: outbox
            .into_iter()
            .map(|o| QueueLine {
                id: o.id,
                case_id: o.case_id,
                template: o.template,
                to: o.recipients.join(", "),
                subject: o.subject,
                status: o.status,
                reason: o.reason.unwrap_or_default(),
                age: timestamp(o.created_at),
            })
            .collect(),
    };
    render(&console, &visitor, page)
}

#[derive(Template)]
#[template(path = "web/queue.html")]
pub struct QueuePage {
    pub nav: Nav,
    pub waiting: Vec<QueueLine>,
    pub held: Vec<QueueLine>,
}

pub async fn queue(
    State(console): State<Arc<Console>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Response {
    let visitor = visitor_or_deny!(console, headers, peer);
    let data = console
        .with_store(|store, _| {
            let now = crate::clock::now();
            Ok((
                queue_lines(store, "awaiting_approval", now)?,
                queue_lines(store, "held", now)?,
            ))
        })
        .await;
    let (waiting, held) = match data {
        Ok(d) => d,
        Err(e) => return store_failure(e),
    };
    let page = QueuePage {
        nav: nav(&visitor, &console, waiting.len()),
        waiting,
        held,
    };
    render(&console, &visitor, page)
}

#[derive(Template)]
#[template(path = "web/queue_item.html")]
pub struct QueueItemPage {
    pub nav: Nav,
    pub item: QueueLine,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub editable: bool,
    pub decidable: bool,
}

/// The header fields a person checks before approving, and the text, from a produced message.
fn readable(bytes: &[u8]) -> (Vec<(String, String)>, String) {
    let Some(message) = mail_parser::MessageParser::default().parse(bytes) else {
        return (Vec::new(), String::from_utf8_lossy(bytes).into_owned());
    };
    let mut headers = Vec::new();
    for name in [
        "From",
        "To",
        "Cc",
        "Subject",
        "In-Reply-To",
        "References",
        "Message-ID",
    ] {
        if let Some(value) = message.header_raw(name) {
            headers.push((name.to_string(), value.trim().to_string()));
        }
    }
    let body = message
        .body_text(0)
        .map(|b| b.into_owned())
        .unwrap_or_default();
    (headers, body)
}

pub async fn queue_item(
    State(console): State<Arc<Console>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    let visitor = visitor_or_deny!(console, headers, peer);
    let data = console
        .with_store(move |store, _| Ok((store.outbox_item(id)?, waiting_count(store)?)))
        .await;
    let (item, waiting) = match data {
        Ok((Some(item), w)) => (item, w),
        Ok((None, _)) => return failure(StatusCode::NOT_FOUND, &format!("no outbox entry #{id}")),
        Err(e) => return store_failure(e),
    };
    let (fields, body) = readable(&item.bytes);
    let page = QueueItemPage {
        nav: nav(&visitor, &console, waiting),
        editable: item.status == "awaiting_approval",
        decidable: matches!(item.status.as_str(), "awaiting_approval" | "held"),
        item: QueueLine::of(&item, crate::clock::now()),
        headers: fields,
        body,
    };
    render(&console, &visitor, page)
}

/// A message a person must see: quarantined, or held for them.
pub struct InboxLine {
    pub at: String,
    pub source: String,
    pub message_id: String,
    pub why: String,
}

/// A message handed to a person, with what they can teach it as.
pub struct HandedLine {
    pub at: String,
    pub message_id: String,
    pub kind: String,
    pub case: String,
    pub subject: String,
    pub reason: String,
    pub teachable: bool,
}

#[derive(Template)]
#[template(path = "web/inbox.html")]
pub struct InboxPage {
    pub nav: Nav,
    pub quarantined: Vec<InboxLine>,
    pub needs_operator: Vec<CaseRow>,
    pub handed: Vec<HandedLine>,
    pub kinds: Vec<&'static str>,
}

/// The Subject line of a stored excerpt.
fn excerpt_subject(excerpt: &str) -> String {
    excerpt
        .lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| {
            l.get(..8)
                .filter(|h| h.eq_ignore_ascii_case("subject:"))
                .map(|_| l[8..].trim().to_string())
        })
        .unwrap_or_default()
}

pub async fn inbox(
    State(console): State<Arc<Console>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Response {
    let visitor = visitor_or_deny!(console, headers, peer);
    let data = console
        .with_store(|store, _| {
            let now = crate::clock::now();
            let quarantined = store
                .quarantined(200)?
                .into_iter()
                .map(|q| InboxLine {
                    at: timestamp(q.at),
                    source: q.source,
                    message_id: q.message_id.unwrap_or_default(),
                    why: q.error,
                })
                .collect();
            let cases = case_rows(store, "needs_operator", 200, now)?;
            let handed = store
                .handed_to_operator(200)?
                .into_iter()
                .map(|m| HandedLine {
                    at: timestamp(m.processed_at),
                    teachable: m.trusted && m.message_id.is_some(),
                    message_id: m.message_id.unwrap_or_default(),
                    kind: m.kind,
                    case: m.ticket_id.unwrap_or_default(),
                    subject: excerpt_subject(&m.excerpt),
                    reason: m.reason,
                })
                .collect();
            Ok((quarantined, cases, handed, waiting_count(store)?))
        })
        .await;
    let (quarantined, needs_operator, handed, waiting) = match data {
        Ok(d) => d,
        Err(e) => return store_failure(e),
    };
    let page = InboxPage {
        nav: nav(&visitor, &console, waiting),
        quarantined,
        needs_operator,
        handed,
        kinds: crate::shell::teach::teachable()
            .map(|k| k.as_str())
            .collect(),
    };
    render(&console, &visitor, page)
}

pub struct AuditLine {
    pub at: String,
    pub actor: String,
    pub action: String,
    pub outbox_id: Option<i64>,
    pub case_id: Option<i64>,
    pub detail: String,
}

#[derive(Template)]
#[template(path = "web/audit.html")]
pub struct AuditPage {
    pub nav: Nav,
    pub entries: Vec<AuditLine>,
}

pub async fn audit(
    State(console): State<Arc<Console>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Response {
    let visitor = visitor_or_deny!(console, headers, peer);
    let data = console
        .with_store(|store, _| Ok((store.audit(500)?, waiting_count(store)?)))
        .await;
    let (entries, waiting) = match data {
        Ok(d) => d,
        Err(e) => return store_failure(e),
    };
    let page = AuditPage {
        nav: nav(&visitor, &console, waiting),
        entries: entries
            .into_iter()
            .map(|e| AuditLine {
                at: timestamp(e.at),
                actor: e.actor,
                action: e.action,
                outbox_id: e.outbox_id,
                case_id: e.case_id,
                detail: e.detail,
            })
            .collect(),
    };
    render(&console, &visitor, page)
}

#[derive(Template)]
#[template(path = "web/login.html")]
pub struct LoginPage {
    pub csrf: String,
}

/// The login form, on an anonymous session of its own (its token guards the form).
pub async fn login_page(State(console): State<Arc<Console>>) -> Response {
    if console.users.is_none() {
        return axum::response::Redirect::to("/").into_response();
    }
    let (id, session) = console.sessions.create(None, crate::clock::now());
    let visitor = Visitor {
        session_id: id,
        new_session: true,
        user: String::new(),
        csrf: session.csrf.clone(),
    };
    render(&console, &visitor, LoginPage { csrf: session.csrf })
}

/// A learned template as the list shows it.
pub struct TemplateLine {
    pub id: i64,
    pub kind: String,
    pub source: String,
    pub created: String,
    pub sample: String,
}

#[derive(Template)]
#[template(path = "web/templates.html")]
pub struct TemplatesPage {
    pub nav: Nav,
    pub templates: Vec<TemplateLine>,
}

pub async fn templates(
    State(console): State<Arc<Console>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Response {
    let visitor = visitor_or_deny!(console, headers, peer);
    let data = console
        .with_store(|store, _| Ok((store.templates()?, waiting_count(store)?)))
        .await;
    let (learned, waiting) = match data {
        Ok(d) => d,
        Err(e) => return store_failure(e),
    };
    let page = TemplatesPage {
        nav: nav(&visitor, &console, waiting),
        templates: learned
            .into_iter()
            .map(|t| TemplateLine {
                id: t.id,
                kind: t.kind.as_str().to_string(),
                source: t.source,
                created: timestamp(t.created_at),
                sample: t.sample,
            })
            .collect(),
    };
    render(&console, &visitor, page)
}
