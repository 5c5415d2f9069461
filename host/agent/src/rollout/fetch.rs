//! Bundle fetches: one at a time per bundle, each failure sending the next
//! question to the next holder after a pause, so that a dead, slow or lying
//! holder costs a retry rather than the push.

use locus_core::cluster::PeerId as CorePeer;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// How long a bundle whose fetch failed waits before it is asked for again.
pub const RETRY_AFTER: Duration = Duration::from_secs(2);

/// The fetches under way and the ones that failed.
#[derive(Default)]
pub struct Fetches {
    /// Bundles being fetched, by hash.
    under_way: HashSet<String>,
    /// Failed fetches per bundle, to ask another holder each time.
    failures: HashMap<String, usize>,
    /// Bundles whose last fetch failed, and when to ask again.
    after: HashMap<String, Instant>,
}

impl Fetches {
    /// The holder to ask for `hash` now, among `holders` (the push's origin
    /// first): none while a fetch of it is under way or waiting after a
    /// failure. The fetch then counts as under way.
    pub fn next(&mut self, hash: &str, holders: &[CorePeer]) -> Option<CorePeer> {
        if holders.is_empty()
            || self.under_way.contains(hash)
            || self.after.get(hash).is_some_and(|t| Instant::now() < *t)
        {
            return None;
        }
        self.after.remove(hash);
        let peer = holders[self.failures.get(hash).copied().unwrap_or(0) % holders.len()].clone();
        self.under_way.insert(hash.to_owned());
        Some(peer)
    }

    /// The fetch of `hash` ended; a failure makes the next one wait and ask
    /// the next holder.
    pub fn done(&mut self, hash: &str, ok: bool) {
        self.under_way.remove(hash);
        if ok {
            self.failures.remove(hash);
        } else {
            *self.failures.entry(hash.to_owned()).or_default() += 1;
            self.after.insert(hash.to_owned(), Instant::now() + RETRY_AFTER);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_fetch_waits_then_asks_the_next_holder() {
        let holders = [CorePeer::from("origin".to_owned()), CorePeer::from("other".to_owned())];
        let mut f = Fetches::default();
        assert_eq!(f.next("h", &holders), Some(holders[0].clone()));
        assert_eq!(f.next("h", &holders), None, "one fetch at a time");
        f.done("h", false);
        assert_eq!(f.next("h", &holders), None, "a failure waits");
        f.after.insert("h".into(), Instant::now());
        assert_eq!(f.next("h", &holders), Some(holders[1].clone()), "then asks the next holder");
        assert_eq!(f.next("x", &[]), None, "nobody to ask");
    }
}
