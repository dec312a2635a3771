//! The second witness's I/O: which folders keep our mail, and the searches in them. What the
//! found header fields mean is decided in `pipeline::witness`.

use tracing::debug;

use crate::config::MailboxConfig;
use crate::pipeline::witness::{self, Earlier, Ours, Thread};
use crate::shell::imap::{Imap, ImapError};

/// Where a folder stands in the life of a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Sent mail: a copy here went out.
    Sent,
    /// The watched folder and the handled folder: a copy here may have gone out (a Bcc, a
    /// client's rule, the operator's filing), but anyone can send mail here.
    Inbox,
    /// A draft: written, perhaps not sent.
    Drafts,
    /// Waiting for a person's approval (approve mode's review and approved folders).
    Review,
}

impl Place {
    /// Whether a copy here means the reply left.
    pub fn went_out(self) -> bool {
        matches!(self, Place::Sent | Place::Inbox)
    }
}

/// The folders searched, in order: where sent mail is kept first.
#[derive(Debug, Clone)]
pub struct Places {
    folders: Vec<(String, Place)>,
    approved: String,
}

impl Places {
    pub fn new(mailbox: &MailboxConfig, sent: &str, drafts: &str) -> Places {
        let mut folders: Vec<(String, Place)> = Vec::new();
        let candidates = [
            Some((sent, Place::Sent)),
            Some((mailbox.folder.as_str(), Place::Inbox)),
            mailbox.handled_folder.as_deref().map(|f| (f, Place::Inbox)),
            Some((drafts, Place::Drafts)),
            Some((mailbox.review_folder.as_str(), Place::Review)),
            Some((mailbox.approved_folder.as_str(), Place::Review)),
        ];
        for (folder, place) in candidates.into_iter().flatten() {
            if !folders.iter().any(|(f, _)| f == folder) {
                folders.push((folder.to_string(), place));
            }
        }
        Places {
            folders,
            approved: mailbox.approved_folder.clone(),
        }
    }

    /// The folder sent replies are kept in.
    pub fn sent(&self) -> &str {
        &self.folders[0].0
    }

    /// The folder a review copy is moved to for approval.
    pub fn approved(&self) -> &str {
        &self.approved
    }
}

/// One earlier reply of ours, and where it was found.
#[derive(Debug, Clone)]
pub struct Found {
    pub earlier: Earlier,
    pub folder: String,
    pub place: Place,
}

/// Searches every place for our earlier replies on `thread`, by IMAP SEARCH and a header-field
/// FETCH of at most [`witness::MAX_COPIES_PER_FOLDER`] messages per folder. A folder the server
/// does not have is skipped; a folder no search could be made in is an error (the reply waits:
/// the mailbox could not be asked). Leaves some other folder selected.
pub async fn look(
    imap: &mut Imap,
    places: &Places,
    thread: &Thread<'_>,
    ours: &Ours<'_>,
    own_ids: &[&str],
) -> Result<Vec<Found>, ImapError> {
    let keys = witness::search_keys(thread, ours);
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let fields = witness::header_fields(ours.loop_header);
    let mut found: Vec<Found> = Vec::new();
    for (folder, place) in &places.folders {
        match imap.select(folder).await {
            Ok(_) => {}
            Err(e) if e.is_refusal() => {
                debug!(folder = %folder, error = %e, "not searched for earlier replies");
                continue;
            }
            Err(e) => return Err(e),
        }
        let uids = search(imap, &keys).await?;
        let newest = &uids[uids.len().saturating_sub(witness::MAX_COPIES_PER_FOLDER)..];
        if newest.is_empty() {
            continue;
        }
        let set = newest
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let copies: Vec<_> = imap
            .header_fields(&set, &fields)
            .await?
            .iter()
            .filter_map(|(_, header)| witness::read_copy(header, ours.loop_header))
            .collect();
        for earlier in witness::earlier_replies(&copies, thread, ours, own_ids) {
            let seen = earlier.message_id.is_some()
                && found
                    .iter()
                    .any(|f| f.earlier.message_id == earlier.message_id);
            if !seen {
                found.push(Found {
                    earlier,
                    folder: folder.clone(),
                    place: *place,
                });
            }
        }
    }
    Ok(found)
}

/// The UIDs the first search the server takes finds, ascending. When it refuses the whole
/// question, the simpler ones are asked each and their answers joined; a refusal of all of them
/// is the first refusal.
async fn search(imap: &mut Imap, keys: &[String]) -> Result<Vec<u32>, ImapError> {
    let Some((whole, simpler)) = keys.split_first() else {
        return Ok(Vec::new());
    };
    let refused = match imap.search(whole).await {
        Ok(uids) => return Ok(uids),
        Err(e) if e.is_refusal() && !simpler.is_empty() => e,
        Err(e) => return Err(e),
    };
    debug!(error = %refused, "the server refused the combined search; asking one thing at a time");
    let mut uids = Vec::new();
    let mut answered = false;
    for key in simpler {
        match imap.search(key).await {
            Ok(found) => {
                answered = true;
                uids.extend(found);
            }
            Err(e) if e.is_refusal() => debug!(key = %key, error = %e, "search refused"),
            Err(e) => return Err(e),
        }
    }
    if !answered {
        return Err(refused);
    }
    uids.sort_unstable();
    uids.dedup();
    Ok(uids)
}
