//! The other agents' policy statuses as last heard: who is in a scope, who
//! holds a bundle, and whose table differs from this agent's for long
//! enough that its records are worth asking for.

use super::status::AgentStatus;
use locus_core::cluster::PeerId as CorePeer;
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

/// A peer whose status has not been heard for this long is left out.
pub const STATUS_STALE: Duration = Duration::from_secs(30);
/// Statuses in a row carrying another digest before the records are asked
/// for (the first difference is usually gossip still in flight).
const BEHIND_BEFORE_SYNC: u8 = 2;

struct Heard {
    status: AgentStatus,
    at: Instant,
    /// Statuses in a row whose digest differed from this agent's.
    differing: u8,
}

/// What this agent heard from the others.
#[derive(Default)]
pub struct Peers {
    heard: BTreeMap<CorePeer, Heard>,
    /// Peers asked for their records and not answered yet.
    syncing: HashSet<CorePeer>,
}

impl Peers {
    /// Keeps `status` from `from`; true when this agent should now ask
    /// `from` for its records (then it counts as asked).
    pub fn heard(&mut self, from: CorePeer, status: AgentStatus, my_digest: u64) -> bool {
        let differs = status.digest != my_digest;
        let differing = match self.heard.get(&from) {
            Some(h) if differs => h.differing.saturating_add(1),
            _ => u8::from(differs),
        };
        let ask = differing >= BEHIND_BEFORE_SYNC && self.syncing.insert(from.clone());
        self.heard.insert(from, Heard { status, at: Instant::now(), differing });
        ask
    }

    /// `peer` answered (or failed to answer) the question for its records.
    pub fn synced(&mut self, peer: &CorePeer) {
        self.syncing.remove(peer);
    }

    /// The statuses heard recently.
    pub fn fresh(&self) -> impl Iterator<Item = &AgentStatus> {
        self.heard.values().filter(|h| h.at.elapsed() < STATUS_STALE).map(|h| &h.status)
    }

    /// Whether `peer` was heard recently.
    pub fn is_fresh(&self, peer: &str) -> bool {
        self.fresh().any(|s| s.peer == peer)
    }

    /// Peers that report holding bundle `hash`.
    pub fn holders(&self, hash: &str) -> Vec<CorePeer> {
        self.heard
            .iter()
            .filter(|(_, h)| h.status.bundles.iter().any(|b| b == hash))
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// Forgets peers not heard for a long time (gone, or left the cluster).
    pub fn forget_gone(&mut self) {
        self.heard.retain(|_, h| h.at.elapsed() < STATUS_STALE * 4);
    }
}
