//! What a person does to the outbox: approve or release a reply, edit one that waits, reject
//! one. The command line and the console call the same functions, so an approval means the same
//! thing wherever it is given: it applies once, the text sent is the text approved, a reply goes
//! only to Microsoft's domains, and a released reply counts as the escalation it is. Every act
//! is written to the audit trail with who did it.

use crate::config::Config;
use crate::shell::store::{OutboxItem, Store, StoreError};

/// Why a person's act on the outbox was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("no outbox entry #{0}")]
    NotFound(i64),
    #[error("outbox #{id} is {status}: only a held or waiting message can be {verb}")]
    WrongStatus {
        id: i64,
        status: String,
        verb: &'static str,
    },
    #[error("outbox #{id} has no message (it could not be written: {reason})")]
    Empty { id: i64, reason: String },
    #[error("outbox #{id} goes to {recipient}, outside trust.microsoft_domains ({domains}): it is never sent")]
    OutsideDomains {
        id: i64,
        recipient: String,
        domains: String,
    },
    #[error("outbox #{id} is not released: {why}")]
    Refused { id: i64, why: String },
    #[error("outbox #{0} changed meanwhile; try again")]
    Changed(i64),
    #[error("the edited text of outbox #{id} is not a message: {why}")]
    BadEdit { id: i64, why: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Who acted, and through what: `cli:alice`, `web:alice`.
#[derive(Debug, Clone)]
pub struct Actor(pub String);

impl Actor {
    /// The person at the command line (`$USER`, else `cli`).
    pub fn command_line() -> Actor {
        let user = std::env::var("USER").unwrap_or_default();
        Actor(if user.is_empty() {
            "cli".to_string()
        } else {
            format!("cli:{user}")
        })
    }
}

fn item(store: &Store, id: i64) -> Result<OutboxItem, QueueError> {
    store.outbox_item(id)?.ok_or(QueueError::NotFound(id))
}

/// Approves a waiting reply or releases a held one: the daemon delivers it on its next pass.
/// A reply still goes only to Microsoft's domains, and a held one, released, counts as the
/// escalation it is (refused when the ticket has had all the policy allows since).
pub fn release(
    store: &mut Store,
    cfg: &Config,
    id: i64,
    actor: &Actor,
    now: i64,
) -> Result<(), QueueError> {
    let item = item(store, id)?;
    if !matches!(item.status.as_str(), "held" | "awaiting_approval") {
        return Err(QueueError::WrongStatus {
            id,
            status: item.status,
            verb: "released",
        });
    }
    if item.bytes.is_empty() {
        return Err(QueueError::Empty {
            id,
            reason: item.reason.unwrap_or_default(),
        });
    }
    let is_reply = !matches!(item.template.as_str(), "operator_notification" | "webhook");
    if is_reply {
        let domains = &cfg.classify.microsoft_domains;
        if let Some(bad) = item
            .recipients
            .iter()
            .find(|r| !crate::pipeline::decide::recipient_allowed(r, domains))
        {
            return Err(QueueError::OutsideDomains {
                id,
                recipient: bad.clone(),
                domains: domains.join(", "),
            });
        }
    }
    // A held reply did not count as an escalation; released, it does.
    let mut case = match (is_reply && item.status == "held", item.case_id) {
        (true, Some(case_id)) => store.case(case_id)?,
        _ => None,
    };
    if let Some(c) = case.as_mut() {
        crate::pipeline::case::reply_released(c, item.template == "followup", &cfg.policy, now)
            .map_err(|why| QueueError::Refused {
                id,
                why: why.to_string(),
            })?;
    }
    let (verb, act) = if item.status == "held" {
        ("released", "release")
    } else {
        ("approved", "approve")
    };
    let how = format!("{verb} by {}", actor.0);
    if !store.release_outbox(id, &how, now)? {
        return Err(QueueError::Changed(id));
    }
    if let Some(c) = case.as_mut() {
        store.update_case(c)?;
    }
    if let Some(case_id) = item.case_id {
        store.note(case_id, now, "delivery", &how)?;
    }
    store.add_audit(&actor.0, act, Some(id), item.case_id, &item.subject, now)?;
    Ok(())
}

/// Rejects a waiting or held message: it is never sent.
pub fn reject(store: &mut Store, id: i64, actor: &Actor, now: i64) -> Result<(), QueueError> {
    let item = item(store, id)?;
    let how = format!("rejected by {}", actor.0);
    let rejected = ["awaiting_approval", "held"]
        .iter()
        .map(|from| store.transition_outbox(id, from, "rejected", Some(&how), now))
        .collect::<Result<Vec<bool>, StoreError>>()?
        .contains(&true);
    if !rejected {
        return Err(QueueError::WrongStatus {
            id,
            status: item.status,
            verb: "rejected",
        });
    }
    if let Some(case) = item.case_id {
        store.note(case, now, "delivery", &how)?;
    }
    store.add_audit(
        &actor.0,
        "reject",
        Some(id),
        item.case_id,
        &item.subject,
        now,
    )?;
    Ok(())
}

/// Replaces the body of a reply that waits for approval with a person's edit; headers (the
/// recipients, the thread, the Message-ID) stay ours. The edit is what is sent once approved.
pub fn edit(
    store: &mut Store,
    id: i64,
    body: &str,
    actor: &Actor,
    now: i64,
) -> Result<(), QueueError> {
    let item = item(store, id)?;
    if item.status != "awaiting_approval" {
        return Err(QueueError::WrongStatus {
            id,
            status: item.status,
            verb: "edited",
        });
    }
    let bytes = crate::pipeline::compose::with_body(&item.bytes, body)
        .map_err(|why| QueueError::BadEdit { id, why })?;
    if !store.replace_waiting_bytes(id, &bytes)? {
        return Err(QueueError::Changed(id));
    }
    if let Some(case) = item.case_id {
        store.note(case, now, "delivery", &format!("edited by {}", actor.0))?;
    }
    store.add_audit(&actor.0, "edit", Some(id), item.case_id, &item.subject, now)?;
    Ok(())
}
