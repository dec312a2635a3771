//! Teaching a template from one operator decision, by CLI (`teach`) or by moving a message into
//! the teach folder: the message's template is stored, the engine uses it from then on, and the
//! taught message, if it came through the mailbox, is decided again as if it had just arrived.

use tracing::info;

use crate::pipeline::classify::{Kind, Origin};
use crate::pipeline::extract;
use crate::pipeline::learned;
use crate::shell::engine::{Engine, HandleError, Handled, OutboxStatus};
use crate::shell::store::{Store, StoreError};

/// The message cannot be taught.
#[derive(Debug, thiserror::Error)]
pub enum TeachError {
    #[error(
        "{source_name}: {kind} cannot be taught: only Microsoft's sender-support kinds (ms_*) can"
    )]
    NotTeachable { source_name: String, kind: Kind },
    #[error("{source_name}: not verified Microsoft sender support ({origin:?}): a learned template speaks only for mail our MX verified as Microsoft's")]
    NotMicrosoft { source_name: String, origin: Origin },
    #[error("{source_name}: the message has no text of its own to learn from")]
    Empty { source_name: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Handle(#[from] HandleError),
}

/// What teaching one message did.
#[derive(Debug)]
pub struct Taught {
    pub template: i64,
    /// The message's verdict before and after.
    pub before: Kind,
    pub after: Kind,
    /// The new decision, when the message had come through the mailbox.
    pub redecided: Option<Handled>,
}

/// Teaches `raw` as a template of `kind`.
pub fn teach(
    engine: &Engine,
    store: &mut Store,
    kind: Kind,
    raw: &[u8],
    source_name: &str,
    now: i64,
) -> Result<Taught, TeachError> {
    if !kind.is_microsoft_support() {
        return Err(TeachError::NotTeachable {
            source_name: source_name.to_string(),
            kind,
        });
    }
    let before = engine.prepare(raw);
    // NOTE: a learned template never makes mail trusted, and never turns a bounce or a
    // forward into Microsoft's answer: only verified sender support is taught.
    if before.verdict.origin != Origin::Microsoft {
        return Err(TeachError::NotMicrosoft {
            source_name: source_name.to_string(),
            origin: before.verdict.origin,
        });
    }
    let (own_text, _) = extract::split_own_text(&before.inbound.body, &engine.rules);
    let template = learned::learn(kind, &own_text, source_name, now);
    if template.shingles.is_empty() {
        return Err(TeachError::Empty {
            source_name: source_name.to_string(),
        });
    }
    // Taught twice (a folder move that could not be undone, the same file again): once is
    // enough, and the message is not decided a third time.
    if let Some(known) = store
        .templates()?
        .into_iter()
        .find(|t| t.kind == kind && t.shingles == template.shingles)
    {
        return Ok(Taught {
            template: known.id,
            before: before.verdict.kind,
            after: before.verdict.kind,
            redecided: None,
        });
    }
    let id = store.add_template(&template)?;
    engine.load_templates(store)?;
    let after = engine.prepare(raw);
    let known = store.has_message(
        after.inbound.message_id.as_deref(),
        &after.inbound.content_hash,
    )?;
    let redecided = if known {
        Some(engine.redecide(store, source_name, &after, now, OutboxStatus::Pending)?)
    } else {
        None
    };
    info!(
        template = id,
        kind = kind.as_str(),
        source = source_name,
        before = before.verdict.kind.as_str(),
        after = after.verdict.kind.as_str(),
        redecided = redecided.is_some(),
        "template learned"
    );
    Ok(Taught {
        template: id,
        before: before.verdict.kind,
        after: after.verdict.kind,
        redecided,
    })
}

/// The sender-support kinds an operator can teach, as folder names under the teach folder.
pub fn teachable() -> impl Iterator<Item = Kind> {
    [
        Kind::MsAck,
        Kind::MsNotQualified,
        Kind::MsMitigated,
        Kind::MsConditionallyMitigated,
        Kind::MsEscalated,
        Kind::MsInfoRequested,
        Kind::MsResolved,
        Kind::MsOther,
    ]
    .into_iter()
}
