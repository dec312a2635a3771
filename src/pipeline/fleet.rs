//! How mailboxes are spread over the instances sharing one store: each takes free or expired
//! mailboxes up to its fair share and gives back what it holds above it, so a new instance gets
//! work and a stopped one's mailboxes go to the rest.

/// The most mailboxes one of `live` instances should hold: all of them divided evenly, rounded
/// up (so that together they hold every mailbox).
pub fn fair_share(mailboxes: usize, live: usize) -> usize {
    mailboxes.div_ceil(live.max(1))
}

/// The order an instance tries free mailboxes in: all of them, starting at a place of its own
/// (from its id), so that instances starting together do not all reach for the same first one.
pub fn trial_order(mailboxes: &[String], instance_seed: u64) -> Vec<&String> {
    if mailboxes.is_empty() {
        return Vec::new();
    }
    let start = (instance_seed % mailboxes.len() as u64) as usize;
    mailboxes[start..]
        .iter()
        .chain(&mailboxes[..start])
        .collect()
}

/// How many of the `held` mailboxes to give back when `fair` is the share: the newest ones
/// taken go first (their caches are the coldest).
pub fn surplus(held: usize, fair: usize) -> usize {
    held.saturating_sub(fair)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_every_mailbox_and_differ_by_at_most_one() {
        for mailboxes in 0..40 {
            for live in 1..8 {
                let fair = fair_share(mailboxes, live);
                assert!(fair * live >= mailboxes, "{mailboxes}/{live}");
                assert!(fair <= mailboxes.div_ceil(live), "{mailboxes}/{live}");
            }
        }
        assert_eq!(fair_share(3, 0), 3, "no live count yet: this one takes all");
        assert_eq!(fair_share(30, 3), 10);
        assert_eq!(fair_share(3, 2), 2);
    }

    #[test]
    fn instances_start_at_different_mailboxes_and_try_them_all() {
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let order = trial_order(&names, 4);
        assert_eq!(order, vec!["b", "c", "a"]);
        assert_eq!(trial_order(&[], 4).len(), 0);
        assert_eq!(surplus(3, 2), 1);
        assert_eq!(surplus(1, 2), 0);
    }
}
