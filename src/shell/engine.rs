//! One message through the whole pipeline: parse -> classify (pure, [`Engine::prepare`]), then
//! case lookup -> step -> decide -> render -> compose -> one store transaction
//! ([`Engine::apply`]). Replay and the daemon both call these two.

use std::path::Path;
use std::sync::RwLock;

use serde::Serialize;
use tracing::{info, warn};

use crate::config::Config;
use crate::pipeline::case::{self, Action, Arrival, CaseId, Parent, State};
use crate::pipeline::classify::{self, Verdict};
use crate::pipeline::compose::{self, ComposeError, Outgoing};
use crate::pipeline::decide::{self, Disposition, Planned, Template};
use crate::pipeline::learned::Learned;
use crate::pipeline::parse::{self, Inbound};
use crate::pipeline::render::{self, IdentityView, MessageView, RenderError, Templates};
use crate::pipeline::rules::{Rules, RulesError};
use crate::pipeline::webhook;
use crate::shell::dkim::DkimVerifier;
use crate::shell::store::{
    Found, NewOutbox, OutboxItem, ProcessedMessage, Store, StoreError, StoreTx, TimelineEntry,
};

/// The engine could not be set up from its config.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("failed to read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Rules(#[from] RulesError),
    #[error(transparent)]
    Templates(#[from] RenderError),
    #[error(transparent)]
    Dkim(#[from] crate::shell::dkim::DkimSetupError),
    #[error("webhook template {path}: {message}")]
    Webhook { path: String, message: String },
}

/// Handling one message failed; nothing of it was stored.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error("failed to compose {template}: {source}")]
    Compose {
        template: &'static str,
        #[source]
        source: ComposeError,
    },
}

/// Config, rules and templates, loaded once.
pub struct Engine {
    pub config: Config,
    pub rules: Rules,
    pub templates: Templates,
    /// The bot's own DKIM check, when `[trust] verify_dkim` is on.
    dkim: Option<DkimVerifier>,
    /// Built-in exemplars and the operator's learned templates.
    learned: RwLock<Vec<Learned>>,
    /// The operator's webhook templates (`webhook{i}` for `config.webhooks[i]`).
    webhook_templates: handlebars::Handlebars<'static>,
}

/// A parsed and classified message, not yet applied to any state.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub inbound: Inbound,
    pub verdict: Verdict,
}

/// What became of one produced message.
#[derive(Debug, Clone, Serialize)]
pub struct Produced {
    pub outbox_id: i64,
    pub template: Template,
    pub disposition: Disposition,
    pub outgoing: Option<Outgoing>,
    #[serde(skip)]
    pub body: String,
    /// Why a queued message needs a person (stored as the outbox row's reason).
    pub note: Option<String>,
    /// The rate-limit group of a notification.
    #[serde(skip)]
    pub rate_key: Option<String>,
    /// What the message is about, as webhooks name it (`open_case`, `notify_operator`...).
    #[serde(skip)]
    pub event: &'static str,
}

/// The outcome of applying one message.
#[derive(Debug, Clone, Serialize)]
pub struct Handled {
    pub duplicate: bool,
    pub case_id: Option<CaseId>,
    pub case_state: Option<State>,
    pub action: Action,
    pub reason: String,
    pub produced: Vec<Produced>,
}

/// The status outbox rows get: `pending` rows are delivered by the daemon, `replayed` rows
/// never leave the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxStatus {
    Pending,
    Replayed,
}

/// What a message that was handled before produces: nothing.
fn already_handled(source: &str, message_id: Option<&str>) -> Handled {
    info!(
        source,
        message_id = message_id.unwrap_or("-"),
        "already handled: skipped"
    );
    Handled {
        duplicate: true,
        case_id: None,
        case_state: None,
        action: Action::None,
        reason: "already handled".to_string(),
        produced: Vec::new(),
    }
}

impl Engine {
    /// Loads the rules file and template folder the config names.
    pub fn new(config: Config) -> Result<Engine, SetupError> {
        let rules = match &config.rules_file {
            Some(path) => {
                let text = read(path)?;
                Rules::with_overrides(Some((&path.display().to_string(), &text)))?
            }
            None => Rules::builtin()?,
        };
        Engine::with_rules(config, rules)
    }

    /// An engine on rules already loaded: the mailboxes of one configuration share one set
    /// (its patterns compile once, whichever mailbox needs them first).
    pub fn with_rules(config: Config, rules: Rules) -> Result<Engine, SetupError> {
        let mut user_templates = Vec::new();
        if let Some(dir) = &config.templates_dir {
            let entries = std::fs::read_dir(dir).map_err(|source| SetupError::Read {
                path: dir.display().to_string(),
                source,
            })?;
            let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            paths.sort();
            for path in paths {
                let Some(name) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".txt.hbs"))
                else {
                    continue;
                };
                user_templates.push((name.to_string(), path.display().to_string(), read(&path)?));
            }
        }
        let templates = Templates::new(&user_templates)?;
        let dkim = config
            .verify_dkim
            .as_ref()
            .map(DkimVerifier::start)
            .transpose()?;
        let webhook_templates = webhook_registry(&config)?;
        Ok(Engine {
            config,
            rules,
            templates,
            dkim,
            learned: RwLock::new(exemplars()),
            webhook_templates,
        })
    }

    /// Parses and classifies. Pure, but for the bot's own DKIM check (DNS) when it is on and
    /// our MX vouches for the message as Microsoft's.
    pub fn prepare(&self, raw: &[u8]) -> Prepared {
        let inbound = parse::parse(raw, self.config.limits);
        let ctx = &self.config.classify;
        let dkim = match &self.dkim {
            Some(verifier) if classify::needs_dkim(&inbound, ctx) => Some(verifier.verify(raw)),
            _ => None,
        };
        let learned = self.learned.read().unwrap_or_else(|e| e.into_inner());
        let verdict = classify::classify_with(&inbound, &self.rules, ctx, dkim.as_ref(), &learned);
        Prepared { inbound, verdict }
    }

    /// Uses the built-in exemplars and these learned templates (from the store) from now on.
    pub fn use_templates(&self, taught: Vec<Learned>) {
        let mut all = exemplars();
        all.extend(taught);
        *self.learned.write().unwrap_or_else(|e| e.into_inner()) = all;
    }

    /// The playbook of a case's provider, from the rules.
    fn playbook(&self, case: Option<&case::Case>) -> Option<&crate::pipeline::rules::Provider> {
        self.rules.provider(case?.provider.as_deref()?)
    }

    /// Loads the operator's learned templates from the store.
    pub fn load_templates(&self, store: &Store) -> Result<usize, StoreError> {
        let taught = store.templates()?;
        let n = taught.len();
        self.use_templates(taught);
        Ok(n)
    }

    /// Applies a prepared message to the store: one transaction, all or nothing.
    pub fn apply(
        &self,
        store: &mut Store,
        source: &str,
        prepared: &Prepared,
        now: i64,
        status: OutboxStatus,
    ) -> Result<Handled, HandleError> {
        self.apply_as(store, source, prepared, now, status, false)
    }

    /// Decides a message again, as if it had just arrived, after the operator taught its
    /// template: its earlier record is replaced in the same transaction, and whatever it
    /// produces now goes through every guard and cap like new mail.
    pub fn redecide(
        &self,
        store: &mut Store,
        source: &str,
        prepared: &Prepared,
        now: i64,
        status: OutboxStatus,
    ) -> Result<Handled, HandleError> {
        self.apply_as(store, source, prepared, now, status, true)
    }

    fn apply_as(
        &self,
        store: &mut Store,
        source: &str,
        prepared: &Prepared,
        now: i64,
        status: OutboxStatus,
        again: bool,
    ) -> Result<Handled, HandleError> {
        let Prepared { inbound, verdict } = prepared;
        let message_id = inbound.message_id.as_deref();
        let tx = store.begin()?;
        if again {
            tx.forget_message(message_id, &inbound.content_hash)?;
        }
        let thread_lookups =
            |v: &Verdict| case::lookups(v, &inbound.in_reply_to, &inbound.references);
        let confirmed;
        let (verdict, found) = match &verdict.own_claim {
            // The usual message: whether it was handled and which case it joins, in one read.
            None => match tx.seen_or_find_case(
                message_id,
                &inbound.content_hash,
                &thread_lookups(verdict),
            )? {
                Found::Handled => return Ok(already_handled(source, message_id)),
                Found::Case(c) => (verdict, Some(*c)),
                Found::Nothing => (verdict, None),
            },
            Some(claimed) => {
                if tx.seen(message_id, &inbound.content_hash)? {
                    return Ok(already_handled(source, message_id));
                }
                // A message claiming our Message-ID is our own only if our outbox produced it.
                let verdict = if tx.outbox_knows(claimed)? {
                    confirmed =
                        classify::confirm_own(verdict, inbound, &self.rules, &self.config.classify);
                    &confirmed
                } else {
                    verdict
                };
                (verdict, tx.find_case(&thread_lookups(verdict))?)
            }
        };
        let before = found.clone();
        let arrival = Arrival {
            message_id: inbound.message_id.clone(),
            parent: parent_of(inbound),
        };
        let mut transition = case::step(found, verdict, &arrival, &self.config.policy, now);

        let max_age = i64::from(self.config.max_reply_age_days) * 86_400;
        let stale = inbound
            .date
            .is_some_and(|d| now.saturating_sub(d) > max_age);
        let limits = &self.config.reply_limits;
        // Only a reply can be capped; other messages skip the store queries.
        let replying = matches!(
            transition.action,
            Action::DraftEscalationReply | Action::DraftFollowup
        );
        // Asked before the case is saved: the message's writes then all follow its reads.
        let cap = if replying {
            let case_id = transition.case.as_ref().map(|c| c.id).filter(|&id| id != 0);
            let (recent, last) = tx.reply_history(now - 3600, case_id)?;
            let gap = i64::from(limits.min_hours_between_replies) * 3600;
            if recent >= i64::from(limits.max_replies_per_hour) {
                Some(format!(
                    "global reply limit reached ({} per hour)",
                    limits.max_replies_per_hour
                ))
            } else if last.is_some_and(|last| now.saturating_sub(last) < gap) {
                Some(format!(
                    "a reply went out on this case less than {} hours ago",
                    limits.min_hours_between_replies
                ))
            } else {
                None
            }
        } else {
            None
        };
        if let Some(c) = transition.case.as_mut() {
            tx.save_case_after(c, before.as_ref())?;
        }
        let situation = decide::Situation {
            mode: self.config.mode,
            notify_on: self.config.notify_on,
            has_operator: self.config.identity.operator.is_some(),
            stale,
            cap: cap.as_deref(),
            microsoft_domains: &self.config.classify.microsoft_domains,
        };
        let mut plans = decide::plan(&transition, Some(verdict), &situation);
        // A held reply is not an escalation made: the case waits for a person instead.
        let held = plans.iter().find_map(|p| match &p.disposition {
            Disposition::Hold(r) if p.template.is_reply() => Some(r.clone()),
            _ => None,
        });
        if let Some(reason) = &held {
            case::reply_held(&mut transition, before.as_ref(), reason);
        } else if plans.iter().any(|p| p.template.is_reply()) {
            if let Some(c) = transition.case.as_ref() {
                tx.supersede_held_replies(c.id, now)?;
            }
        }
        // Mail that nobody authenticated opens at most one notified case per source and
        // interval: a flood of forged bounces is one notification, not thousands.
        let is_new_case = before.is_none() && transition.case.is_some();
        let rate_key = is_new_case
            .then(|| decide::new_case_source(verdict))
            .flatten();
        if let Some(key) = &rate_key {
            self.rate_limit(&tx, key, &mut plans, now)?;
        }

        let seed = inbound
            .message_id
            .clone()
            .unwrap_or_else(|| inbound.content_hash.clone());
        // A second decision produces mail of its own, never a copy of the first one's ids.
        let seed = if again {
            format!("{seed}/taught-{now}")
        } else {
            seed
        };
        let mut produced = Vec::new();
        for planned in &plans {
            let mut p = self.produce(
                &transition,
                verdict,
                inbound,
                planned,
                &seed,
                held.as_deref(),
                now,
            )?;
            if planned.template == Template::OperatorNotification {
                p.rate_key = rate_key.clone();
            }
            produced.push(p);
        }
        // NOTE: an unverified message claiming to be a refusal is never answered by itself. In
        // auto mode a person is told (at most once per interval) and the reply it would get is
        // held, to be released by hand if the message turns out to be genuine.
        if verdict.origin == classify::Origin::Unverified
            && verdict.claimed_kind == Some(classify::Kind::MsNotQualified)
            && self.config.mode == decide::Mode::Auto
        {
            let from = inbound
                .from
                .as_ref()
                .map(|f| f.address.as_str())
                .unwrap_or("?");
            let reason = format!("unverified sender: {from} did not pass our MX's checks");
            let pseudo = case::Transition {
                case: None,
                action: Action::DraftEscalationReply,
                reason: reason.clone(),
                ips: verdict.ips.clone(),
            };
            let planned = Planned {
                template: Template::EscalationReply,
                disposition: Disposition::Hold(reason.clone()),
            };
            produced.push(self.produce(&pseudo, verdict, inbound, &planned, &seed, None, now)?);
            let notice = case::Transition {
                action: Action::NotifyOperator,
                ..pseudo
            };
            let key = "unverified_refusal".to_string();
            let mut notify = vec![Planned {
                template: Template::OperatorNotification,
                disposition: decide::notification_disposition(&situation),
            }];
            self.rate_limit(&tx, &key, &mut notify, now)?;
            let mut p = self.produce(
                &notice,
                verdict,
                inbound,
                &notify[0],
                &seed,
                Some(&reason),
                now,
            )?;
            p.rate_key = Some(key);
            produced.push(p);
            warn!(
                message_id = message_id.unwrap_or("-"),
                from, "unverified message claiming a refusal: reply held, operator told"
            );
        }

        let status_str = match status {
            OutboxStatus::Pending => "pending",
            OutboxStatus::Replayed => "replayed",
        };
        for p in &mut produced {
            let (msg_id, recipients, subject, bytes) = match &p.outgoing {
                Some(o) => (
                    o.message_id.clone(),
                    o.to.clone(),
                    o.subject.clone(),
                    o.bytes.clone(),
                ),
                None => (
                    compose::message_id(&seed, now, &self.config.identity.message_id_domain),
                    Vec::new(),
                    String::new(),
                    Vec::new(),
                ),
            };
            let reason = match &p.disposition {
                Disposition::Hold(r) => Some(r.as_str()),
                _ => p.note.as_deref(),
            };
            let row_status = if matches!(p.disposition, Disposition::Hold(_)) {
                "held"
            } else {
                status_str
            };
            p.outbox_id = tx.add_outbox(
                &NewOutbox {
                    message_id: &msg_id,
                    case_id: transition.case.as_ref().map(|c| c.id),
                    inbound_message_id: message_id,
                    template: p.template.name(),
                    disposition: p.disposition.as_str(),
                    status: row_status,
                    reason,
                    recipients: &recipients,
                    subject: &subject,
                    bytes: &bytes,
                    rate_key: p.rate_key.as_deref(),
                },
                now,
            )?;
        }

        // Webhooks are told what the operator is told, in the same transaction.
        for (n, p) in produced.iter().enumerate() {
            let (Template::OperatorNotification, Some(o)) = (p.template, &p.outgoing) else {
                continue;
            };
            if matches!(p.disposition, Disposition::Hold(_)) {
                continue;
            }
            self.add_webhooks(
                &tx,
                &WebhookCall {
                    event: p.event,
                    subject: &o.subject,
                    text: &p.body,
                    case: transition.case.as_ref(),
                    seed: &format!("{seed}/{n}"),
                },
                now,
            )?;
        }

        if let Some(c) = transition.case.as_mut() {
            for p in &produced {
                if let (true, Some(o)) = (p.template.is_reply(), &p.outgoing) {
                    if !c.thread_ids.contains(&o.message_id) {
                        c.thread_ids.push(o.message_id.clone());
                    }
                }
            }
            tx.save_case(c)?;
            tx.add_timeline(
                c.id,
                &TimelineEntry {
                    at: now,
                    kind: Some(verdict.kind.as_str().to_string()),
                    action: transition.action.as_str().to_string(),
                    state: c.state.as_str().to_string(),
                    message_id: inbound.message_id.clone(),
                    summary: transition.reason.clone(),
                },
            )?;
            for p in &produced {
                let to = p
                    .outgoing
                    .as_ref()
                    .map(|o| o.to.join(", "))
                    .unwrap_or_default();
                let how = match &p.disposition {
                    Disposition::Hold(r) => format!("held: {r}"),
                    d => d.as_str().to_string(),
                };
                tx.add_timeline(
                    c.id,
                    &TimelineEntry {
                        at: now,
                        kind: None,
                        action: "outbox".to_string(),
                        state: c.state.as_str().to_string(),
                        message_id: p.outgoing.as_ref().map(|o| o.message_id.clone()),
                        summary: format!("{} to {to} ({how})", p.template.name()),
                    },
                )?;
            }
        }

        let evidence_json =
            serde_json::to_string(&verdict.evidence).unwrap_or_else(|_| "[]".into());
        tx.add_message(
            &ProcessedMessage {
                message_id,
                content_hash: &inbound.content_hash,
                source,
                kind: verdict.kind.as_str(),
                ticket_id: verdict.ticket_id.as_deref(),
                ips: &verdict.ips,
                trusted: verdict.trusted,
                case_id: transition.case.as_ref().map(|c| c.id),
                action: transition.action,
                reason: &transition.reason,
                evidence_json: &evidence_json,
                damage_json: &serde_json::to_string(&damage_of(inbound, verdict))
                    .unwrap_or_else(|_| "[]".into()),
                excerpt: &crate::pipeline::console::excerpt(&inbound.headers, &inbound.body),
            },
            now,
        )?;
        crate::shell::failpoint::hit("before_commit");
        tx.commit()?;
        crate::shell::failpoint::hit("after_commit");

        let case_id = transition.case.as_ref().map(|c| c.id);
        info!(
            source,
            message_id = message_id.unwrap_or("-"),
            kind = verdict.kind.as_str(),
            ticket = verdict.ticket_id.as_deref().unwrap_or("-"),
            case = case_id.unwrap_or(0),
            action = transition.action.as_str(),
            reason = %transition.reason,
            "decision"
        );
        for p in &produced {
            match &p.disposition {
                // History on a first run over an old mailbox: expected, and many.
                Disposition::Hold(reason)
                    if reason == decide::TOO_OLD_TO_ANSWER
                        || reason == decide::TOO_OLD_TO_NOTIFY =>
                {
                    info!(
                        case = case_id.unwrap_or(0),
                        template = p.template.name(),
                        reason = %reason,
                        "held: old mail"
                    );
                }
                Disposition::Hold(reason) => warn!(
                    case = case_id.unwrap_or(0),
                    template = p.template.name(),
                    reason = %reason,
                    "reply held for the operator"
                ),
                _ => {}
            }
        }
        Ok(Handled {
            duplicate: false,
            case_id,
            case_state: transition.case.as_ref().map(|c| c.state),
            action: transition.action,
            reason: transition.reason,
            produced,
        })
    }

    /// Tells the operator that a row is held because the server would not store its copy (a
    /// full mailbox, no right to write there): one notification on the row's case, at most one
    /// per `new_case_notice_minutes` for each refusal, so a full mailbox is one message, not one
    /// per reply. Nothing is said about a notification's own copy: that would never end.
    pub fn notify_held_copy(
        &self,
        store: &mut Store,
        item: &OutboxItem,
        why: &str,
        rate_key: &str,
        now: i64,
    ) -> Result<(), HandleError> {
        if item.template == Template::OperatorNotification.name() {
            return Ok(());
        }
        let case = item.case_id.map(|id| store.case(id)).transpose()?.flatten();
        let transition = case::Transition {
            case,
            action: Action::NotifyOperator,
            reason: format!("{} held: {why}", item.template),
            ips: Vec::new(),
        };
        let identity = &self.config.identity;
        let mut context = render::context(
            &transition,
            None,
            None,
            IdentityView::of(identity),
            self.config.mode,
            now,
        )
        .with_playbook(self.playbook(transition.case.as_ref()));
        context.held = Some(why.to_string());
        let draft = self
            .templates
            .render(Template::OperatorNotification, &context)?;
        let message_id = compose::message_id(
            &format!("{}/held/{}", item.message_id, item.id),
            now,
            &identity.message_id_domain,
        );
        let mut plans = [Planned {
            template: Template::OperatorNotification,
            disposition: match (identity.operator.is_some(), self.config.mode) {
                (false, _) => Disposition::Hold("no operator address configured".to_string()),
                (true, decide::Mode::Draft) => Disposition::Draft,
                (true, _) => Disposition::Send,
            },
        }];
        let tx = store.begin()?;
        self.rate_limit(&tx, rate_key, &mut plans, now)?;
        let disposition = &plans[0].disposition;
        let outgoing = compose::notification(&draft, identity, &message_id, now);
        let (recipients, subject, bytes) = match &outgoing {
            Ok(o) => (o.to.clone(), o.subject.clone(), o.bytes.clone()),
            Err(_) => (Vec::new(), String::new(), Vec::new()),
        };
        let held = match (disposition, &outgoing) {
            (Disposition::Hold(r), _) => Some(r.clone()),
            (_, Err(e)) => Some(format!("the notification cannot be composed: {e}")),
            _ => None,
        };
        if held.is_none() {
            self.add_webhooks(
                &tx,
                &WebhookCall {
                    event: "held",
                    subject: &subject,
                    text: &draft.body,
                    case: transition.case.as_ref(),
                    seed: &format!("{}/held/{}", item.message_id, item.id),
                },
                now,
            )?;
        }
        tx.add_outbox(
            &NewOutbox {
                message_id: &message_id,
                case_id: item.case_id,
                inbound_message_id: item.inbound_message_id.as_deref(),
                template: Template::OperatorNotification.name(),
                disposition: disposition.as_str(),
                status: if held.is_some() { "held" } else { "pending" },
                reason: held.as_deref(),
                recipients: &recipients,
                subject: &subject,
                bytes: &bytes,
                rate_key: Some(rate_key),
            },
            now,
        )?;
        tx.commit()?;
        Ok(())
    }

    /// One outbox row per webhook that wants this event: the body in the webhook's format, to
    /// its URL, delivered by the daemon like mail (retried, never twice).
    fn add_webhooks(
        &self,
        tx: &StoreTx<'_>,
        call: &WebhookCall<'_>,
        now: i64,
    ) -> Result<(), HandleError> {
        let headline = call
            .subject
            .strip_prefix("[postmaster-bot] ")
            .unwrap_or(call.subject);
        let mode = self.config.mode.to_string();
        let no_ips: Vec<String> = Vec::new();
        let event = webhook::Event {
            event: call.event,
            headline,
            text: call.text,
            case: call.case.map(|c| c.id),
            ticket: call.case.and_then(|c| c.ticket_id.as_deref()),
            ips: call.case.map_or(&no_ips, |c| &c.ips),
            at: now,
            mode: &mode,
        };
        for (i, hook) in self.config.webhooks.iter().enumerate() {
            if !hook.wants(call.event) {
                continue;
            }
            let bytes = match webhook::body(&hook.format, &event) {
                Some(b) => Ok(b),
                None => self
                    .webhook_templates
                    .render(&format!("webhook{i}"), &event)
                    .map(String::into_bytes)
                    .map_err(|e| e.to_string()),
            };
            let (status, reason, bytes) = match bytes {
                Ok(b) => ("pending", None, b),
                Err(e) => (
                    "held",
                    Some(format!("the webhook template failed: {e}")),
                    Vec::new(),
                ),
            };
            let message_id = compose::message_id(
                &format!("{}/webhook/{i}/{}", call.seed, call.event),
                now,
                &self.config.identity.message_id_domain,
            );
            tx.add_outbox(
                &NewOutbox {
                    message_id: &message_id,
                    case_id: call.case.map(|c| c.id),
                    inbound_message_id: None,
                    template: "webhook",
                    disposition: "webhook",
                    status,
                    reason: reason.as_deref(),
                    recipients: std::slice::from_ref(&hook.url),
                    subject: call.event,
                    bytes: &bytes,
                    rate_key: None,
                },
                now,
            )?;
        }
        Ok(())
    }

    /// Holds the sendable notifications among `plans` when one under the same key was planned
    /// within the configured interval.
    fn rate_limit(
        &self,
        tx: &StoreTx<'_>,
        key: &str,
        plans: &mut [Planned],
        now: i64,
    ) -> Result<(), HandleError> {
        let minutes = self.config.reply_limits.new_case_notice_minutes;
        let Some(last) = tx.last_rate_key_at(key)? else {
            return Ok(());
        };
        if now.saturating_sub(last) >= i64::from(minutes) * 60 {
            return Ok(());
        }
        for p in plans.iter_mut().filter(|p| {
            p.template == Template::OperatorNotification
                && matches!(p.disposition, Disposition::Send | Disposition::Draft)
        }) {
            p.disposition = Disposition::Hold(format!(
                "one notification per {minutes} minutes for {key}; `postmaster-bot cases list` shows every case"
            ));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn produce(
        &self,
        transition: &case::Transition,
        verdict: &Verdict,
        inbound: &Inbound,
        planned: &Planned,
        seed: &str,
        held: Option<&str>,
        now: i64,
    ) -> Result<Produced, HandleError> {
        let identity = &self.config.identity;
        let mut context = render::context(
            transition,
            Some(verdict),
            Some(message_view(inbound)),
            IdentityView::of(identity),
            self.config.mode,
            now,
        )
        .with_playbook(self.playbook(transition.case.as_ref()));
        context.held = held.map(str::to_string);
        let draft = self.templates.render(planned.template, &context)?;
        let message_id = compose::message_id(
            &format!("{seed}/{}", planned.template.name()),
            now,
            &identity.message_id_domain,
        );
        let composed = match planned.template {
            Template::OperatorNotification => {
                compose::notification(&draft, identity, &message_id, now)
            }
            Template::EscalationReply | Template::Followup => {
                let case = transition.case.as_ref();
                let own_parent = parent_of(inbound);
                // Without a case (an unverified message), the reply answers the message itself.
                let parent = match case {
                    Some(c) => c.last_microsoft.as_ref(),
                    None => Some(&own_parent),
                };
                match parent {
                    Some(parent) => compose::reply(
                        parent,
                        case.and_then(|c| c.ticket_id.as_deref())
                            .or(verdict.ticket_id.as_deref()),
                        &draft,
                        identity,
                        &message_id,
                        now,
                    ),
                    None => Err(ComposeError::NoRecipient(
                        "no Microsoft message on the case".into(),
                    )),
                }
            }
        };
        let (outgoing, disposition) = match (composed, &planned.disposition) {
            (Ok(o), d) => (Some(o), d.clone()),
            // A held message that cannot be composed is still recorded, with its reason.
            (Err(_), Disposition::Hold(r)) => (None, Disposition::Hold(r.clone())),
            (Err(source), _) => {
                return Err(HandleError::Compose {
                    template: planned.template.name(),
                    source,
                })
            }
        };
        Ok(Produced {
            outbox_id: 0,
            template: planned.template,
            disposition,
            outgoing,
            body: draft.body,
            note: None,
            rate_key: None,
            event: transition.action.as_str(),
        })
    }
}

/// A notification that webhooks are told about.
struct WebhookCall<'a> {
    event: &'static str,
    subject: &'a str,
    text: &'a str,
    case: Option<&'a case::Case>,
    /// Makes each webhook row's id its own.
    seed: &'a str,
}

/// The operator's webhook templates, checked at start: a template that does not compile is a
/// setup error naming its file. Their output is JSON, not HTML: nothing is HTML-escaped, and
/// `{{json value}}` writes a value as a JSON string, list or number.
fn webhook_registry(config: &Config) -> Result<handlebars::Handlebars<'static>, SetupError> {
    handlebars::handlebars_helper!(json: |v: Json| serde_json::to_string(v).unwrap_or_default());
    let mut registry = handlebars::Handlebars::new();
    registry.set_strict_mode(true);
    registry.register_escape_fn(handlebars::no_escape);
    registry.register_helper("json", Box::new(json));
    for (i, hook) in config.webhooks.iter().enumerate() {
        if let crate::config::notify::WebhookFormat::Template(path) = &hook.format {
            let text = read(path)?;
            registry
                .register_template_string(&format!("webhook{i}"), text)
                .map_err(|e| SetupError::Webhook {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
        }
    }
    Ok(registry)
}

/// What was wrong with a message, for the operator: the parser's notes and the work it was
/// not given (IPs beyond the per-message limit).
fn damage_of(inbound: &Inbound, verdict: &Verdict) -> Vec<String> {
    let mut damage = inbound.damage.clone();
    if verdict.ips_omitted > 0 {
        damage.push(format!(
            "{} more IPs named than limits.max_ips_per_message: counted, not kept",
            verdict.ips_omitted
        ));
    }
    damage
}

/// The built-in exemplars: the corpus's sender-support answers as learned templates, so a
/// known template in a new wording around it is still recognised (`rules/exemplars.json`).
pub fn exemplars() -> Vec<Learned> {
    serde_json::from_str(include_str!("../pipeline/rules/exemplars.json"))
        .unwrap_or_else(|_| Vec::new())
}

fn read(path: &Path) -> Result<String, SetupError> {
    std::fs::read_to_string(path).map_err(|source| SetupError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// What a reply to this message answers.
pub fn parent_of(inbound: &Inbound) -> Parent {
    let target = inbound.reply_to.as_ref().or(inbound.from.as_ref());
    Parent {
        message_id: inbound.message_id.clone(),
        subject: inbound.subject.clone(),
        references: inbound.references.clone(),
        in_reply_to: inbound.in_reply_to.clone(),
        thread_index: inbound.header("thread-index").map(str::to_string),
        thread_topic: inbound.header("thread-topic").map(str::to_string),
        reply_to: target.map(|m| m.address.clone()),
        reply_to_name: target.and_then(|m| m.name.clone()),
        date: inbound.date,
    }
}

fn message_view(inbound: &Inbound) -> MessageView {
    MessageView {
        subject: inbound.subject.clone(),
        from: inbound
            .from
            .as_ref()
            .map(|f| match &f.name {
                Some(n) => format!("{n} <{}>", f.address),
                None => f.address.clone(),
            })
            .unwrap_or_default(),
        date: inbound.date.map(render::rfc2822).unwrap_or_default(),
        message_id: inbound.message_id.clone(),
    }
}
