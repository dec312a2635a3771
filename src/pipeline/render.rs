//! Planned message + case -> text, through handlebars templates held in memory.
//!
//! Templates are plain text: no HTML escaping, strict mode (a missing variable is an error).
//! Built-in templates ship in the binary; a user folder can replace any of them by name.
//! Nothing here reads files: the shell hands the sources in.

use handlebars::Handlebars;
use serde::Serialize;

use crate::pipeline::decide::Template;

const ALL: [Template; 3] = [
    Template::EscalationReply,
    Template::Followup,
    Template::OperatorNotification,
];

/// The built-in template sources, by name.
pub fn builtin_sources() -> Vec<(&'static str, &'static str)> {
    vec![
        (
            "escalation_reply",
            include_str!("../../templates/escalation_reply.txt.hbs"),
        ),
        ("followup", include_str!("../../templates/followup.txt.hbs")),
        (
            "operator_notification",
            include_str!("../../templates/operator_notification.txt.hbs"),
        ),
    ]
}

/// A template could not be loaded or rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("template {origin}: {message}")]
    Template { origin: String, message: String },
    #[error("template {origin}: failed to render: {message}")]
    Render { origin: String, message: String },
    #[error("template {origin}: {message}")]
    Shape { origin: String, message: String },
}

/// The loaded templates.
#[derive(Debug)]
pub struct Templates {
    registry: Handlebars<'static>,
    origins: Vec<(String, String)>,
}

/// Text produced from a template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Draft {
    /// From a leading `Subject:` line (notifications only).
    pub subject: Option<String>,
    pub body: String,
}

impl Templates {
    /// Builds the registry from the built-in sources, replaced by any user sources given as
    /// (name, origin shown in errors, text).
    pub fn new(user: &[(String, String, String)]) -> Result<Templates, RenderError> {
        let mut registry = Handlebars::new();
        registry.set_strict_mode(true);
        registry.register_escape_fn(handlebars::no_escape);
        let mut origins = Vec::new();
        for (name, text) in builtin_sources() {
            let (origin, text) = match user.iter().find(|(n, _, _)| n == name) {
                Some((_, origin, text)) => (origin.clone(), text.clone()),
                None => (format!("built-in {name}.txt.hbs"), text.to_string()),
            };
            registry
                .register_template_string(name, &text)
                .map_err(|e| RenderError::Template {
                    origin: origin.clone(),
                    message: e.to_string(),
                })?;
            origins.push((name.to_string(), origin));
        }
        if let Some((name, origin, _)) = user
            .iter()
            .find(|(n, _, _)| !ALL.iter().any(|t| t.name() == n))
        {
            return Err(RenderError::Template {
                origin: origin.clone(),
                message: format!(
                    "unknown template `{name}`; known: escalation_reply, followup, operator_notification"
                ),
            });
        }
        Ok(Templates { registry, origins })
    }

    fn origin(&self, template: Template) -> String {
        self.origins
            .iter()
            .find(|(n, _)| n == template.name())
            .map(|(_, o)| o.clone())
            .unwrap_or_else(|| template.name().to_string())
    }

    /// Renders one template with a context. A reply to Microsoft never sees the fields meant
    /// for the operator only (text written by strangers, such as a bounce's own words): they
    /// are emptied here, whatever the template asks for.
    pub fn render(&self, template: Template, context: &Context) -> Result<Draft, RenderError> {
        if template.is_reply() {
            self.render_value(template, &context.clone().for_reply())
        } else {
            self.render_value(template, context)
        }
    }

    fn render_value<C: Serialize>(
        &self,
        template: Template,
        context: &C,
    ) -> Result<Draft, RenderError> {
        let origin = self.origin(template);
        let text = self
            .registry
            .render(template.name(), context)
            .map_err(|e| RenderError::Render {
                origin: origin.clone(),
                message: e.to_string(),
            })?;
        let (subject, body) = split_subject(&text);
        if template.is_reply() && subject.is_some() {
            return Err(RenderError::Shape {
                origin,
                message: "a reply keeps the ticket thread's subject; remove the Subject: line"
                    .to_string(),
            });
        }
        if !template.is_reply() && subject.as_deref().is_none_or(str::is_empty) {
            return Err(RenderError::Shape {
                origin,
                message: "a notification must start with a `Subject:` line".to_string(),
            });
        }
        Ok(Draft {
            subject,
            body: tidy(body),
        })
    }

    /// Renders every template with a sample context, as `check-config` does.
    pub fn check_all(&self, context: &Context) -> Result<(), RenderError> {
        for t in ALL {
            self.render(t, context)?;
        }
        Ok(())
    }
}

fn split_subject(text: &str) -> (Option<String>, &str) {
    let trimmed = text.trim_start_matches(['\n', '\r']);
    match trimmed.split_once('\n') {
        Some((first, rest)) if first.len() > 8 && first[..8].eq_ignore_ascii_case("subject:") => {
            (Some(first[8..].trim().to_string()), rest)
        }
        _ => (None, text),
    }
}

/// Trims trailing spaces, collapses runs of blank lines and ends with one newline.
fn tidy(body: &str) -> String {
    let mut out = String::new();
    let mut blank = 0;
    for line in body.lines() {
        let line = line.trim_end();
        if line.is_empty() {
            blank += 1;
            continue;
        }
        if !out.is_empty() && blank > 0 {
            out.push('\n');
        }
        blank = 0;
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn missing_variable_is_an_error_naming_the_template() {
        let user = vec![(
            "escalation_reply".to_string(),
            "my/escalation_reply.txt.hbs".to_string(),
            "Hello {{no_such_variable}}".to_string(),
        )];
        let templates = Templates::new(&user).expect("template parses");
        let err = templates
            .render_value(Template::EscalationReply, &json!({}))
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("my/escalation_reply.txt.hbs"), "{text}");
        assert!(text.contains("no_such_variable"), "{text}");
    }

    #[test]
    fn no_html_escaping_in_plain_text() {
        let user = vec![("followup".to_string(), "f".to_string(), "{{x}}".to_string())];
        let templates = Templates::new(&user).expect("template parses");
        let draft = templates
            .render_value(Template::Followup, &json!({"x": "<a> & \"b\""}))
            .expect("renders");
        assert_eq!(draft.body, "<a> & \"b\"\n");
    }

    #[test]
    fn unknown_template_name_is_rejected() {
        let user = vec![(
            "escalate".to_string(),
            "x/escalate.txt.hbs".to_string(),
            String::new(),
        )];
        assert!(Templates::new(&user).is_err());
    }
}

/// What templates can use. Every field is always present (strict mode), possibly empty.
#[derive(Debug, Clone, Serialize)]
pub struct Context {
    pub action: String,
    pub kind: String,
    pub reason: String,
    pub headline: String,
    pub ticket_id: Option<String>,
    /// The IPs the action concerns.
    pub ips: Vec<String>,
    pub ip_list: String,
    /// Block-list evidence a reply may quote: from our own MTA, reduced by the rules to the
    /// SMTP code, status, our IP and Microsoft's words (`classify::Bounce::quote`).
    pub bounce: Option<String>,
    /// The latest bounce's own text, as a stranger may have written it: operator
    /// notifications only; empty in replies.
    pub bounce_text: Option<String>,
    /// Why a planned reply is held, for the operator's notification.
    pub held: Option<String>,
    pub case: CaseView,
    pub message: Option<MessageView>,
    pub identity: IdentityView,
    pub mode: String,
    pub evidence: Vec<String>,
    /// The time of rendering, RFC 2822.
    pub now: String,
    /// Whose block the case is (`outlook`, `gmail`, `spamhaus` ...).
    pub provider: Option<String>,
    /// The provider's code for the refusal (`TSS04`).
    pub block_code: Option<String>,
    /// How to get off the provider's list (the rules' `[[provider]]`), for the operator.
    pub playbook: Option<crate::pipeline::rules::Provider>,
}

impl Context {
    /// Adds the provider's playbook; a new case of another receiver's block is headed with the
    /// provider's name.
    pub fn with_playbook(mut self, playbook: Option<&crate::pipeline::rules::Provider>) -> Context {
        if let Some(p) = playbook {
            if self.action == "open_case" && self.case.topic == "receiver_block" {
                let about = if self.ip_list.is_empty() {
                    format!("case #{}", self.case.id)
                } else {
                    self.ip_list.clone()
                };
                self.headline = format!("blocked by {}: {about}", p.name);
            }
        }
        self.playbook = playbook.cloned();
        self
    }

    /// The context a reply to Microsoft is rendered with: nothing meant for the operator only.
    pub fn for_reply(mut self) -> Context {
        self.bounce_text = None;
        self.held = None;
        self.evidence.clear();
        self
    }
}

/// The case as templates see it.
#[derive(Debug, Clone, Serialize)]
pub struct CaseView {
    pub id: i64,
    pub topic: String,
    pub state: String,
    pub ips: Vec<String>,
    pub opened: String,
    pub escalations: u32,
    pub last_escalated: String,
}

/// The message that caused the action.
#[derive(Debug, Clone, Serialize)]
pub struct MessageView {
    pub subject: String,
    pub from: String,
    pub date: String,
    pub message_id: Option<String>,
}

/// Who writes.
#[derive(Debug, Clone, Serialize)]
pub struct IdentityView {
    pub name: String,
    pub address: String,
    pub organization: Option<String>,
}

impl IdentityView {
    /// What templates may say of who writes (not the operator's address or our headers).
    pub fn of(identity: &crate::pipeline::compose::Identity) -> IdentityView {
        IdentityView {
            name: identity.name.clone(),
            address: identity.address.clone(),
            organization: identity.organization.clone(),
        }
    }
}

/// Builds the template context for one transition.
pub fn context(
    transition: &crate::pipeline::case::Transition,
    verdict: Option<&crate::pipeline::classify::Verdict>,
    message: Option<MessageView>,
    identity: IdentityView,
    mode: crate::pipeline::decide::Mode,
    now: i64,
) -> Context {
    use crate::pipeline::case::Action;
    let case = transition.case.as_ref();
    let ips = if transition.ips.is_empty() {
        case.map(|c| c.ips.clone()).unwrap_or_default()
    } else {
        transition.ips.clone()
    };
    let ip_list = ips.join(", ");
    let ticket_id = case
        .and_then(|c| c.ticket_id.clone())
        .or_else(|| verdict.and_then(|v| v.ticket_id.clone()));
    let kind = verdict.map(|v| v.kind.as_str()).unwrap_or("none");
    let about = match (&ticket_id, ip_list.is_empty()) {
        (Some(t), false) => format!("{t} ({ip_list})"),
        (Some(t), true) => t.clone(),
        (None, false) => ip_list.clone(),
        (None, true) => format!("case #{}", case.map_or(0, |c| c.id)),
    };
    let headline = match transition.action {
        Action::OpenCase => format!("blocked by Microsoft: {about}"),
        Action::CloseCase => format!("block lifted: {about}"),
        Action::DraftEscalationReply => format!("escalation reply for {about}"),
        Action::DraftFollowup => format!("follow-up for {about}"),
        Action::NotifyOperator => match kind {
            "jmrp_report" => format!("JMRP complaint about {about}"),
            "snds_notice" => format!("SNDS request for {about}"),
            "ms_info_requested" => format!("Microsoft asks for information on {about}"),
            "ms_conditionally_mitigated" => format!("conditionally mitigated: {about}"),
            "ms_not_qualified" => format!("refused again after escalation: {about}"),
            "ndr_other" => format!("bounce needs attention: {about}"),
            _ => format!("needs attention: {about}"),
        },
        Action::None => format!("no action: {about}"),
    };
    Context {
        action: transition.action.as_str().to_string(),
        kind: kind.to_string(),
        reason: transition.reason.clone(),
        headline,
        ticket_id,
        ips,
        ip_list,
        bounce: case
            .and_then(|c| c.bounce_quote.clone())
            .or_else(|| verdict.and_then(|v| v.bounce.as_ref().and_then(|b| b.quote.clone())))
            .filter(|b| !b.is_empty()),
        bounce_text: verdict
            .and_then(|v| v.bounce.as_ref().map(|b| b.diagnostic.clone()))
            .or_else(|| case.and_then(|c| c.last_bounce.clone()))
            .filter(|b| !b.is_empty()),
        held: None,
        case: CaseView {
            id: case.map_or(0, |c| c.id),
            topic: case
                .map(|c| {
                    serde_json::to_value(c.topic)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                })
                .unwrap_or_default(),
            state: case
                .map(|c| c.state.as_str().to_string())
                .unwrap_or_default(),
            ips: case.map(|c| c.ips.clone()).unwrap_or_default(),
            opened: case.map(|c| rfc2822(c.opened_at)).unwrap_or_default(),
            escalations: case.map_or(0, |c| c.escalations),
            last_escalated: case
                .and_then(|c| c.last_escalated_at)
                .map(rfc2822)
                .unwrap_or_default(),
        },
        message,
        identity,
        mode: mode.as_str().to_string(),
        evidence: verdict
            .map(|v| {
                v.evidence
                    .iter()
                    .map(|e| match e.weight {
                        Some(w) => format!("{} [{w:+.1}]: {}", e.rule, e.matched),
                        None => format!("{}: {}", e.rule, e.matched),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        now: rfc2822(now),
        provider: case
            .and_then(|c| c.provider.clone())
            .or_else(|| verdict.and_then(|v| v.provider().map(str::to_string))),
        block_code: verdict
            .and_then(|v| v.bounce.as_ref().and_then(|b| b.block_code.clone()))
            .or_else(|| case.and_then(|c| c.block_code.clone())),
        playbook: None,
    }
}

/// Unix seconds as an RFC 2822 date in UTC.
pub fn rfc2822(ts: i64) -> String {
    chrono::DateTime::from_timestamp(ts, 0)
        .map(|d| d.format("%a, %d %b %Y %H:%M:%S +0000").to_string())
        .unwrap_or_default()
}
