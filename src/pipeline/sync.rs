//! Mailbox bookkeeping decisions: where to resume reading a folder.

/// What the store remembers about a folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub uid_validity: u32,
    pub last_uid: u32,
}

/// Where to resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Read UIDs above this one.
    After(u32),
    /// The folder's UIDVALIDITY changed (or was never seen): every cached UID is void, so read
    /// the whole folder again; Message-ID and content-hash dedup keep it from acting twice.
    Rescan,
}

/// Decides where to resume from the stored cursor and the folder's current UIDVALIDITY.
pub fn resume(stored: Option<Cursor>, uid_validity: u32) -> Resume {
    match stored {
        Some(c) if c.uid_validity == uid_validity => Resume::After(c.last_uid),
        _ => Resume::Rescan,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_uidvalidity_resumes_after_the_last_uid() {
        let c = Cursor {
            uid_validity: 7,
            last_uid: 41,
        };
        assert_eq!(resume(Some(c), 7), Resume::After(41));
    }

    #[test]
    fn new_or_changed_uidvalidity_rescans() {
        assert_eq!(resume(None, 7), Resume::Rescan);
        let c = Cursor {
            uid_validity: 7,
            last_uid: 41,
        };
        assert_eq!(resume(Some(c), 8), Resume::Rescan);
    }
}
