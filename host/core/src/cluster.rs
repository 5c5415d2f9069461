//! What agents tell each other, and what each knows of the others: the
//! Discovery Network Tracker's state, sans IO.
//!
//! Every agent publishes a [`HostSummary`] on its PoP's topic when it
//! changes (see [`crate::beacon`]). The PoP's *speaker* (its alive member
//! first in [`PeerId`] order) also publishes a [`PopSummary`] on the global
//! topic. From these, [`Membership`] keeps the agent's PoP's hosts and a
//! summary of every other PoP.
//!
//! Liveness within a PoP is SWIM's (Das, Gupta, Motivala, 2002): every
//! [`PROBE_EVERY`] heartbeats each agent probes one PoP-mate, in turn, with
//! a direct ping.
//! A PoP-mate that does not answer within `suspect-ms` is suspect, and the
//! prober says so on the PoP's topic; a suspect that hears it refutes it
//! with a newer summary, and one that stays suspect for `dead-ms` less
//! `suspect-ms` is dead. So each agent sends and hears a few messages per
//! heartbeat however large its PoP, rather than one from every PoP-mate;
//! a member silent for [`SILENCE_LIMIT_EVERY`] heartbeats is suspect too,
//! whoever probed it. Other PoPs' members take the liveness their speaker
//! reports. Latency between PoPs is what libp2p's ping measured to their
//! members.

use crate::node::Size;
use crate::request::Location;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A libp2p peer id in its text form; the core only compares, hashes and
/// stores it, on every message an agent hears.
///
/// So it is interned: the text is shared by every copy (a clone is a count
/// increment, not an allocation), and it carries a fixed hash of the text
/// computed once, which ids are hashed by and ordered by first. Ids of one
/// libp2p key type share their first bytes (`12D3KooW…`), so comparing the
/// text would read past them on every lookup; the hash tells two ids apart
/// in one integer compare. The order is the same in every agent, which is
/// all "the first peer id" (a PoP's speaker) needs; it is not the text's.
#[derive(Clone)]
pub struct PeerId(Interned);

#[derive(Clone)]
struct Interned {
    order: u64,
    text: Arc<str>,
}

impl PeerId {
    /// The id whose text form is `text`.
    pub fn new(text: &str) -> Self {
        PeerId(Interned { order: name_hash(text), text: Arc::from(text) })
    }

    /// Its text form.
    pub fn as_str(&self) -> &str {
        &self.0.text
    }
}

impl Default for PeerId {
    fn default() -> Self {
        PeerId::new("")
    }
}

impl From<&str> for PeerId {
    fn from(text: &str) -> Self {
        PeerId::new(text)
    }
}

impl From<String> for PeerId {
    fn from(text: String) -> Self {
        PeerId::new(&text)
    }
}

impl PartialEq for PeerId {
    fn eq(&self, other: &Self) -> bool {
        self.0.order == other.0.order
            && (Arc::ptr_eq(&self.0.text, &other.0.text) || self.0.text == other.0.text)
    }
}

impl Eq for PeerId {}

impl Ord for PeerId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // A lookup that finds its key meets the same text, usually shared.
        self.0.order.cmp(&other.0.order).then_with(|| {
            if Arc::ptr_eq(&self.0.text, &other.0.text) {
                std::cmp::Ordering::Equal
            } else {
                self.0.text.cmp(&other.0.text)
            }
        })
    }
}

impl PartialOrd for PeerId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl std::hash::Hash for PeerId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.order);
    }
}

/// Its hash is its text's, already computed: a [`PeerMap`] uses it as is.
impl nohash_hasher::IsEnabled for PeerId {}

/// A map by peer id that is looked up on every message (one probe, where a
/// tree of peer ids reads a node per level, each a cache miss at 10,000
/// agents in one simulation). Its order is fixed (the ids' hashes) but not
/// the ids': whatever depends on an order iterates something sorted.
pub type PeerMap<V> = HashMap<PeerId, V, nohash_hasher::BuildNoHashHasher<PeerId>>;

impl std::fmt::Debug for PeerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PeerId").field(&self.as_str()).finish()
    }
}

impl std::fmt::Display for PeerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Described as its text form: a string.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for PeerId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        String::schema()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for PeerId {}

impl Serialize for PeerId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for PeerId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Ok(PeerId::new(&text))
    }
}

/// Whether a member is believed to be running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Liveness {
    /// Heard from recently.
    Alive,
    /// Did not answer a probe within `suspect-ms` (or silent for long):
    /// takes no new VMs.
    Suspect,
    /// Suspect for `dead-ms` less `suspect-ms` without refuting it: its
    /// VMs are lost.
    Dead,
}

/// One host, as its agent describes it at every heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostSummary {
    /// The agent's peer id.
    pub peer: PeerId,
    /// The host's name.
    pub host: String,
    /// Its PoP.
    pub pop: String,
    /// Allocatable resources.
    pub capacity: Size,
    /// Allocated to VMs.
    pub allocated: Size,
    /// Physical CPU capacity, milli-CPUs.
    pub cpu_milli: u32,
    /// Measured CPU demand of its VMs, milli-CPUs.
    pub load_cpu_milli: u32,
    /// Overloaded, underloaded or normal, as the host judges itself.
    #[serde(default)]
    pub load_state: crate::load::LoadState,
    /// Idle and full-load power, watts.
    pub watts: (u32, u32),
    /// Whether its hypervisor is reachable.
    pub up: bool,
    /// Whether it is draining (takes no new VMs).
    #[serde(default)]
    pub draining: bool,
    /// Whether it is in standby (takes VMs only when no other host can).
    #[serde(default)]
    pub standby: bool,
    /// Power in standby, watts.
    #[serde(default)]
    pub standby_watts: u32,
    /// VMs moving out of it that hold a slot of its PoP's bound on
    /// concurrent migrations (the PoP's speaker counts them).
    #[serde(default)]
    pub moving: Vec<String>,
    /// The VMs it runs, as a digest and its latest changes.
    pub vms: VmDigest,
    /// The images its store holds, as keys
    /// ([`crate::request::image_key`] of each image's `sha256:<hex>` and
    /// of each of its names), sorted: placement tells policies which
    /// hosts hold a request's image.
    #[serde(default)]
    pub images: Vec<u64>,
    /// This summary's number since the agent started (from 1): probes and their answers
    /// name the latest, so a PoP-mate that missed one knows and asks.
    #[serde(default)]
    pub seq: u64,
}

/// A host's set of VMs as its summaries carry it: never the whole list,
/// which grows with the host, but a digest to compare against and the
/// changes of the last few heartbeats. A PoP-mate that heard every recent
/// summary applies the changes; one that missed too many, or just started,
/// finds its digest differs and asks the host for the whole list.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VmDigest {
    /// How many VMs the host runs.
    pub count: u32,
    /// The XOR of every VM name's 64-bit SipHash-1-3 (fixed keys): equal
    /// sets have equal digests, and a change updates it without the rest
    /// of the set.
    pub hash: u64,
    /// The set's version: one more per change, from 0 when the agent starts.
    pub version: u64,
    /// The changes of the last few heartbeats, oldest first.
    pub changes: Vec<VmChange>,
}

/// A VM that came to or left a host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VmChange {
    /// The set's version this change made.
    pub version: u64,
    /// The VM.
    pub vm: String,
    /// Whether it came (else it left).
    pub added: bool,
}

/// A VM name's hash in a [`VmDigest`]. A XOR of hashes is only as good as
/// the hash: FNV-1a let sets of similar names (`vm4`, `vm9` … against
/// `vm2`, `vm3` …) cancel out to the same digest; SipHash's outputs do not
/// line up that way.
fn name_hash(name: &str) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = FixedState.build_hasher();
    h.write(name.as_bytes());
    h.finish()
}

/// Puts `estimate` among the `nearest`, keeping the [`MEASURED_POPS`] smallest in order.
fn rank(nearest: &mut Vec<u32>, estimate: u32) {
    let at = nearest.partition_point(|&e| e <= estimate);
    if at < MEASURED_POPS {
        nearest.insert(at, estimate);
        nearest.truncate(MEASURED_POPS);
    }
}

/// The hashing of maps an agent iterates, with fixed keys: every run (and
/// every simulation of one seed) lays them out, and walks them, alike.
#[derive(Debug, Clone, Copy, Default)]
pub struct FixedState;

impl std::hash::BuildHasher for FixedState {
    type Hasher = siphasher::sip::SipHasher13;

    fn build_hasher(&self) -> Self::Hasher {
        siphasher::sip::SipHasher13::new_with_keys(0x6c6f_6375_735f_766d, 0x6469_6765_7374_0001)
    }
}

/// Heartbeats whose changes a summary repeats: a PoP-mate that missed
/// fewer summaries than this in a row catches up without asking.
const CHANGES_KEPT_FOR: usize = 4;
/// Changes a summary carries at most; beyond, PoP-mates ask for the list.
const MAX_CHANGES: usize = 256;

/// This host's VMs as its summaries describe them.
#[derive(Debug, Clone, Default)]
pub struct VmLog {
    set: BTreeSet<String>,
    hash: u64,
    version: u64,
    /// Recent changes, oldest first.
    recent: VecDeque<VmChange>,
    /// The version at each of the last heartbeats, oldest first.
    cuts: VecDeque<u64>,
}

impl VmLog {
    /// The digest of `now`, this heartbeat's set, with the changes since
    /// the last few heartbeats.
    pub fn publish<'a>(&mut self, now: impl IntoIterator<Item = &'a String>) -> VmDigest {
        let now: BTreeSet<&String> = now.into_iter().collect();
        let gone: Vec<String> = self.set.iter().filter(|v| !now.contains(v)).cloned().collect();
        let came: Vec<String> = now.into_iter().filter(|v| !self.set.contains(*v)).cloned().collect();
        for (vm, added) in gone.into_iter().map(|v| (v, false)).chain(came.into_iter().map(|v| (v, true))) {
            self.version += 1;
            self.hash ^= name_hash(&vm);
            if added {
                self.set.insert(vm.clone());
            } else {
                self.set.remove(&vm);
            }
            self.recent.push_back(VmChange { version: self.version, vm, added });
        }
        self.cuts.push_back(self.version);
        if self.cuts.len() > CHANGES_KEPT_FOR {
            let oldest = self.cuts.pop_front().unwrap_or_default();
            while self.recent.front().is_some_and(|c| c.version <= oldest) {
                self.recent.pop_front();
            }
        }
        while self.recent.len() > MAX_CHANGES {
            self.recent.pop_front();
        }
        VmDigest {
            count: self.set.len() as u32,
            hash: self.hash,
            version: self.version,
            changes: self.recent.iter().cloned().collect(),
        }
    }

    /// The digest of the set as last published, without its changes.
    pub fn head(&self) -> VmDigest {
        VmDigest { count: self.set.len() as u32, hash: self.hash, version: self.version, changes: vec![] }
    }

    /// The whole set as last published, with its version.
    pub fn full(&self) -> (u64, Vec<String>) {
        (self.version, self.set.iter().cloned().collect())
    }
}

/// A PoP-mate's VMs as this agent knows them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KnownVms {
    /// The names.
    pub set: BTreeSet<String>,
    hash: u64,
    version: u64,
    /// Whether the set matches the member's last digest.
    pub synced: bool,
}

impl KnownVms {
    /// Applies a summary's digest: the changes newer than the version
    /// known, then a check against the digest. Returns the names that
    /// came and went.
    fn apply(&mut self, d: &VmDigest) -> (Vec<String>, Vec<String>) {
        let (mut came, mut went) = (vec![], vec![]);
        if self.synced && d.hash == self.hash && d.count as usize == self.set.len() {
            self.version = d.version;
            return (came, went);
        }
        // Changes from the first version on are the whole history (a host
        // that just started, or restarted and counts from 0 again): the set
        // is rebuilt from them. Otherwise they apply when they continue
        // the version known.
        let first = d.changes.first().map(|c| c.version);
        let from_scratch = first == Some(1);
        let continues =
            self.synced && first.is_some_and(|v| v <= self.version + 1) && d.version > self.version;
        if from_scratch || continues {
            let (mut set, mut hash, after) = if from_scratch {
                (BTreeSet::new(), 0, 0)
            } else {
                (self.set.clone(), self.hash, self.version)
            };
            for c in d.changes.iter().filter(|c| c.version > after) {
                let changed = if c.added { set.insert(c.vm.clone()) } else { set.remove(&c.vm) };
                if changed {
                    hash ^= name_hash(&c.vm);
                }
            }
            came = set.difference(&self.set).cloned().collect();
            went = self.set.difference(&set).cloned().collect();
            (self.set, self.hash, self.version) = (set, hash, d.version);
        }
        self.synced = self.hash == d.hash && self.set.len() == d.count as usize;
        (came, went)
    }

    /// Takes the whole list the member sent, at `version`. Returns the
    /// names that came and went.
    fn replace(&mut self, version: u64, vms: Vec<String>) -> (Vec<String>, Vec<String>) {
        let new: BTreeSet<String> = vms.into_iter().collect();
        let came = new.difference(&self.set).cloned().collect();
        let went = self.set.difference(&new).cloned().collect();
        self.hash = new.iter().fold(0, |h, v| h ^ name_hash(v));
        self.set = new;
        self.version = version;
        self.synced = true;
        (came, went)
    }
}

/// One PoP, as its speaker describes it on the global topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PopSummary {
    /// The PoP's name.
    pub pop: String,
    /// Its jurisdiction code.
    pub jurisdiction: String,
    /// Where it is.
    pub location: Location,
    /// Unused renewable power, watts.
    pub renewable_watts: u32,
    /// Grid carbon intensity, gCO2/kWh.
    pub carbon_g_per_kwh: u32,
    /// Free resources summed over its live hosts.
    pub free: Size,
    /// The most free memory on any one live host, MiB (a VM must fit one host).
    pub largest_free_memory_mib: u32,
    /// The most free vCPUs on any one live host.
    pub largest_free_vcpus: u32,
    /// Its hosts, and how many of them are alive.
    pub hosts: u32,
    /// Its hosts alive.
    pub alive: u32,
    /// A few of its alive agents to send requests to (and to grow a
    /// rebalancing partition into), the speaker first. Its other members
    /// stay within the PoP: a summary every agent hears must not grow with
    /// the PoP.
    pub contacts: Vec<Contact>,
    /// Its members declared dead (their VMs are lost, save those its PoP
    /// creates again).
    pub dead: Vec<MemberSummary>,
    /// Its number among its PoP's summaries: each speaker numbers its
    /// summary one past the highest it knows of its PoP (its own, those it
    /// heard its PoP-mates publish, and those a peer passed it), so that
    /// the numbers grow across changes of speaker and restarts. Gossip
    /// keeps no order: a summary numbered below the one known is old news
    /// and dropped; of two numbered alike, the speaker first in peer-id
    /// order, the rightful one, wins. 0 (an agent that does not number
    /// them) is taken whenever it comes.
    #[serde(default)]
    pub version: u64,
}

impl PopSummary {
    /// Whether this summary, published by `from`, says no more than `known`.
    fn is_not_after(&self, known: &RemotePop, from: &PeerId) -> bool {
        let (v, k) = (self.version, known.summary.version);
        v != 0 && (v < k || (v == k && *from >= known.speaker))
    }
}

/// Agents a PoP summary names as contacts.
const CONTACTS: usize = 3;

/// An agent another PoP may send requests to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Contact {
    /// Its peer id.
    pub peer: PeerId,
    /// Its host's name.
    pub host: String,
}

/// A member of a PoP in its summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MemberSummary {
    /// Its peer id.
    pub peer: PeerId,
    /// Its host's name.
    pub host: String,
    /// Its liveness as the speaker sees it.
    pub liveness: Liveness,
    /// How many VMs it runs (or ran, when dead: these are lost).
    pub vm_count: u32,
}

/// Where a VM runs and what it is, as its host records it in the overlay
/// (a Kademlia record under the VM's name, replicated to several agents):
/// found by name from anywhere, and still there when its host is dead, so
/// that a PoP-mate can create the VM again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmLocation {
    /// The agent whose host runs it.
    pub peer: PeerId,
    /// That host.
    pub host: String,
    /// Its PoP.
    pub pop: String,
    /// Its generation (moves and re-creations so far).
    pub generation: u64,
    /// What it should be doing.
    pub desired: crate::intent::Desired,
    /// Its request.
    pub spec: crate::VmRequest,
}

/// What is gossiped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Gossip {
    /// On the PoP's topic, when the host changed (or to repair losses).
    /// Shared, like [`Gossip::Pop`]: each PoP-mate keeps it as it came.
    Host(Arc<HostSummary>),
    /// On the PoP's topic: the sender's probe of `peer` went unanswered.
    /// Those who know no newer summary of `peer` than `seq` suspect it;
    /// `peer` itself refutes it with a newer summary.
    Suspect {
        /// The member suspected.
        peer: PeerId,
        /// The number of its latest summary the sender knew.
        seq: u64,
    },
    /// On the global topic. Shared: every agent keeps the latest summary
    /// of each PoP as it came (a simulator delivering one to thousands of
    /// agents keeps one copy).
    Pop(Arc<PopSummary>),
}

/// Where gossip goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// The topic of one PoP.
    Pop(String),
    /// The topic every agent follows.
    Global,
}

/// Heartbeats at most between two host summaries, changed or not: an
/// agent that joined late hears every PoP-mate, and a member silent for a
/// few of these is suspect. Rare, because a lost summary is repaired
/// sooner: probes and their answers carry the number of the latest, and
/// each pair of PoP-mates exchanges one about every PoP-size heartbeats.
pub const REFRESH_EVERY: u64 = 60;
/// Heartbeats between two probes an agent sends: one a second at the
/// default heartbeat, SWIM's protocol period as memberlist sets it on a
/// LAN. Each member is then probed by someone about once a second, so a
/// dead one is found within about a second more than `dead-ms`; probing
/// at every heartbeat found it half a second sooner for twice the probes,
/// which are most of what an agent sends and hears once its PoP is calm.
pub const PROBE_EVERY: u64 = 2;

/// Heartbeats of silence after which a member is suspect, probed or not.
pub const SILENCE_LIMIT_EVERY: u64 = 3 * REFRESH_EVERY;

/// Heartbeats at least between two PoP summaries: every agent hears every
/// PoP's, so a PoP changing fast is heard at this pace, not at every change.
/// With more PoPs than [`POP_REFRESH_EVERY`] over this, the pace slows
/// with the refresh (see [`pop_change_every`]).
pub const POP_SUMMARY_EVERY: u64 = 4;

/// Heartbeats at least between two PoP summaries that only report a
/// change, when a PoP refreshes every `refresh_every` heartbeats: every
/// [`POP_SUMMARY_EVERY`]th, or a fifteenth of the refresh with many PoPs.
/// All PoPs' changes together then reach an agent at most about 15 times
/// a heartbeat however large the cluster: while 10,000 hosts in 313 PoPs
/// fill, every PoP changes all the time, and at every 4th heartbeat each
/// agent would hear 78 PoP summaries a heartbeat. A liveness change is
/// not paced (see [`crate::beacon::Beacon::pop`]).
pub fn pop_change_every(refresh_every: u64) -> u64 {
    POP_SUMMARY_EVERY.max(refresh_every / (POP_REFRESH_EVERY / POP_SUMMARY_EVERY))
}

/// Heartbeats at most between two PoP summaries, changed or not: a lost
/// one is repaired, an agent that joins learns every PoP, and a PoP
/// silent for a few of these is gone. Rare, because every agent hears
/// every PoP's; rarer with more PoPs than this, as many heartbeats as
/// there are PoPs, so that an agent hears about one refresh a heartbeat
/// however large the cluster (at 10,000 hosts in 313 PoPs, every 156 s).
pub const POP_REFRESH_EVERY: u64 = 60;

/// Other PoPs whose latency an agent measures, by a ping on a connection
/// to one of their contacts: the nearest, by the estimate from their
/// coordinates. Requests are forwarded, and rebalancing partitions grow,
/// to near PoPs first, where a measure tells more than the estimate; a
/// farther PoP is ranked by its estimate. Were every PoP measured, every
/// agent would dial a contact of each (313 at 10,000 hosts), and each
/// contact would take connections from thousands of agents.
pub const MEASURED_POPS: usize = 16;

/// PoPs at most in the book an agent passes to one that joins (see
/// [`Membership::book`]): about 300 bytes each, well inside a peer
/// message; more PoPs than this reach the joining agent by their refresh.
pub const BOOK_MAX: usize = 1024;

/// Heartbeat and failure-detection timing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct MembershipConfig {
    /// Time between probes (and the pace of summaries), ms.
    pub heartbeat_ms: u64,
    /// Time a probe waits for its answer before its target is suspect, ms.
    pub suspect_ms: u64,
    /// Time from a probe to its unrefuted target being dead, ms.
    pub dead_ms: u64,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig { heartbeat_ms: 500, suspect_ms: 1500, dead_ms: 3000 }
    }
}

/// A member of this agent's PoP.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// Its last summary.
    pub summary: Arc<HostSummary>,
    /// When it was heard from.
    pub heard: Instant,
    /// Liveness.
    pub liveness: Liveness,
    /// Since when it is suspect.
    pub suspected: Option<Instant>,
    /// Round trip measured by ping, if any.
    pub rtt: Option<Duration>,
    /// Its VMs, as its summaries told them.
    pub vms: KnownVms,
}

/// What a PoP-mate's summary changed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Heard {
    /// It came (back) into view.
    pub transition: Option<Transition>,
    /// Its VMs are not known exactly: ask it for the list.
    pub behind: bool,
}

/// What a PoP-mate's probe or answer changed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeardAlive {
    /// It came (back) into view.
    pub transition: Option<Transition>,
    /// Its latest summary is not the one known (lost, or never heard): ask it.
    pub stale: bool,
}

/// Another PoP as this agent knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct RemotePop {
    /// Its speaker's last summary.
    pub summary: Arc<PopSummary>,
    /// Who spoke for it.
    pub speaker: PeerId,
    /// When it was heard from.
    pub heard: Instant,
    /// A round trip to one of its contacts was measured: measures are
    /// kept, so this holds until its contacts change.
    measured: bool,
    /// The round trip to it estimated from the coordinates, µs.
    estimated_rtt_us: u32,
}

/// A PoP summary one agent passes to another that joins, as it heard it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BookEntry {
    /// The agent that published it, speaking for its PoP.
    pub speaker: PeerId,
    /// How long ago the passing agent heard it, ms (0 for its own PoP's).
    pub age_ms: u64,
    /// The summary.
    pub summary: Arc<PopSummary>,
}

/// A liveness change worth reporting.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The member's peer id.
    pub peer: PeerId,
    /// Its host.
    pub host: String,
    /// Its PoP.
    pub pop: String,
    /// New liveness.
    pub liveness: Liveness,
    /// Its VMs (lost when dead).
    pub vms: Vec<String>,
}

/// What an agent knows of the cluster.
#[derive(Debug, Clone)]
pub struct Membership {
    config: MembershipConfig,
    me: PeerId,
    pop: String,
    /// Members of this PoP, self excluded. Whatever depends on their
    /// order walks [`Membership::members_in_order`].
    pub members: PeerMap<Member>,
    /// Other PoPs, by the hash of their names ([`name_hash`]; see
    /// [`Membership::pop`]). Every summary heard looks its PoP up here, at
    /// every agent: one probe, and the key in the table, where a name as
    /// the key is one more cache miss, on the heap, at 10,000 agents.
    pops: HashMap<u64, RemotePop, nohash_hasher::BuildNoHashHasher<u64>>,
    /// Members of other PoPs their speakers report dead: (host, PoP).
    remote_dead: BTreeMap<PeerId, (String, String)>,
    /// Round trips to peers outside this PoP, by peer.
    rtts: BTreeMap<PeerId, Duration>,
    /// Where this agent's PoP is, to rank the others by distance (none:
    /// every PoP is measured).
    here: Option<Location>,
    /// The estimated round trips to the nearest PoPs known, µs, ascending,
    /// at most [`MEASURED_POPS`]: a PoP farther than the last is not measured.
    nearest: Vec<u32>,
    /// Which PoP-mates list each VM (one, but for a moment during a move
    /// or after a host came back with stale copies). Looked up for every
    /// VM of this host now and then: hashed, one probe.
    index: HashMap<String, Vec<PeerId>, FixedState>,
    /// When a PoP summary was last heard, from any PoP.
    pop_heard: Option<Instant>,
    /// The highest [`PopSummary::version`] known of this agent's PoP.
    pop_version: u64,
    /// When PoPs silent for long were last forgotten.
    pops_aged: Option<Instant>,
    /// The members probed in turn (alive and suspect) in peer-id order,
    /// and the speaker if not this agent: read at every heartbeat, listed
    /// again only when a member's liveness changes.
    probed: Vec<PeerId>,
    speaker: Option<PeerId>,
    /// No member's liveness can age before then (none: look at the next
    /// tick). Hearing a member only pushes its deadline later, so this
    /// stays a bound until a suspicion starts, which lowers it: a
    /// heartbeat then looks at no member, where it looked at them all.
    quiet_until: Option<Instant>,
    /// One more each time a PoP-mate's VMs gained a name or a PoP-mate
    /// came back alive: when a copy of this host's VMs may have appeared.
    holders_version: u64,
}

impl Membership {
    /// Membership for peer `me` in PoP `pop`.
    pub fn new(config: MembershipConfig, me: PeerId, pop: String) -> Self {
        Membership {
            config,
            me,
            pop,
            members: PeerMap::default(),
            pops: HashMap::default(),
            remote_dead: BTreeMap::new(),
            rtts: BTreeMap::new(),
            here: None,
            nearest: vec![],
            index: HashMap::default(),
            pop_heard: None,
            pop_version: 0,
            pops_aged: None,
            quiet_until: None,
            probed: vec![],
            speaker: None,
            holders_version: 0,
        }
    }

    /// The same, for an agent whose PoP is at `here`: only the other PoPs
    /// nearest it are measured (see [`MEASURED_POPS`]).
    pub fn at(mut self, here: Location) -> Self {
        self.here = Some(here);
        self
    }

    /// Its timing.
    pub fn config(&self) -> &MembershipConfig {
        &self.config
    }

    /// Records a host summary heard on this PoP's topic. Summaries from
    /// other PoPs (a misconfigured or confused peer) are ignored.
    pub fn heard_host(&mut self, now: Instant, from: &PeerId, summary: impl Into<Arc<HostSummary>>) -> Heard {
        let summary = summary.into();
        if summary.pop != self.pop || *from != summary.peer || summary.peer == self.me {
            return Heard::default();
        }
        let m = self.members.entry(from.clone()).or_insert_with(|| Member {
            summary: summary.clone(),
            heard: now,
            liveness: Liveness::Dead,
            suspected: None,
            rtt: None,
            vms: KnownVms::default(),
        });
        let before = m.liveness;
        let (came, went) = m.vms.apply(&summary.vms);
        let behind = !m.vms.synced;
        (m.summary, m.heard, m.liveness, m.suspected) = (summary, now, Liveness::Alive, None);
        let transition = (before != Liveness::Alive).then(|| transition(m, &self.pop));
        if transition.is_some() {
            self.holders_version += 1;
            self.relist();
        }
        self.index_changes(from, came, went);
        Heard { transition, behind }
    }

    /// Records a PoP-mate's probe or answer naming its latest summary `seq`.
    pub fn heard_alive(&mut self, now: Instant, from: &PeerId, seq: u64) -> HeardAlive {
        let Some(m) = self.members.get_mut(from) else {
            // Never summarized to us (we just started, or it did): ask.
            return HeardAlive { transition: None, stale: true };
        };
        m.heard = now;
        m.suspected = None;
        let stale = m.summary.seq != seq;
        if m.liveness == Liveness::Alive {
            return HeardAlive { transition: None, stale };
        }
        m.liveness = Liveness::Alive;
        let transition = Some(transition(m, &self.pop));
        self.holders_version += 1;
        self.relist();
        HeardAlive { transition, stale }
    }

    /// This agent's probe of `peer` went unanswered: it is suspect.
    /// Returns the transition, and the number of its latest summary known
    /// (for the others to weigh the suspicion against what they know).
    pub fn probe_failed(&mut self, now: Instant, peer: &PeerId) -> Option<(Transition, u64)> {
        let m = self.members.get_mut(peer)?;
        if m.liveness != Liveness::Alive {
            return None;
        }
        m.liveness = Liveness::Suspect;
        m.suspected = Some(now);
        let suspected = (transition(m, &self.pop), m.summary.seq);
        self.age_by(now + self.grace());
        self.relist();
        Some(suspected)
    }

    /// Another agent suspects `peer`, knowing its summaries up to `seq`.
    pub fn heard_suspect(&mut self, now: Instant, peer: &PeerId, seq: u64) -> Option<Transition> {
        let m = self.members.get_mut(peer)?;
        // A newer summary than the suspicion knew is a refutation already.
        if m.liveness != Liveness::Alive || m.summary.seq > seq {
            return None;
        }
        m.liveness = Liveness::Suspect;
        m.suspected = Some(now);
        let suspected = transition(m, &self.pop);
        self.age_by(now + self.grace());
        self.relist();
        Some(suspected)
    }

    /// The PoP-mate to probe at heartbeat `turn`: the alive and suspect
    /// members in peer-id order, one per heartbeat, each agent starting at
    /// its own place so that every member is probed about once a heartbeat.
    pub fn probe_target(&self, turn: u64) -> Option<PeerId> {
        let n = self.probed.len() as u64;
        if n == 0 {
            return None;
        }
        // Its own place: the hash its id carries (`name_hash` of its text).
        let k = (self.me.0.order.wrapping_add(turn) % n) as usize;
        self.probed.get(k).cloned()
    }

    /// Lists the members probed and the speaker again, after a liveness changed.
    fn relist(&mut self) {
        let alive = |m: &Member| m.liveness == Liveness::Alive;
        self.probed = (self.members.iter().filter(|(_, m)| m.liveness != Liveness::Dead))
            .map(|(p, _)| p.clone())
            .collect();
        self.probed.sort_unstable();
        self.speaker = self
            .members
            .iter()
            .filter(|(peer, m)| alive(m) && **peer < self.me)
            .map(|(p, _)| p)
            .min()
            .cloned();
    }

    /// Takes the whole list of VMs a PoP-mate sent when asked, at its `version`.
    pub fn heard_vms(&mut self, from: &PeerId, version: u64, vms: Vec<String>) {
        let Some(m) = self.members.get_mut(from) else { return };
        let (came, went) = m.vms.replace(version, vms);
        self.index_changes(from, came, went);
    }

    fn index_changes(&mut self, peer: &PeerId, came: Vec<String>, went: Vec<String>) {
        if !came.is_empty() {
            self.holders_version += 1;
        }
        for vm in came {
            let holders = self.index.entry(vm).or_default();
            if !holders.contains(peer) {
                holders.push(peer.clone());
            }
        }
        for vm in went {
            if let Some(holders) = self.index.get_mut(&vm) {
                holders.retain(|p| p != peer);
                if holders.is_empty() {
                    self.index.remove(&vm);
                }
            }
        }
    }

    /// A number that changes when a PoP-mate may have come to list one of
    /// this host's VMs: until it does, looking for copies finds nothing new.
    pub fn holders_version(&self) -> u64 {
        self.holders_version
    }

    /// The PoP-mates whose summaries list `vm`.
    pub fn holders(&self, vm: &str) -> &[PeerId] {
        self.index.get(vm).map_or(&[], |h| h.as_slice())
    }

    /// Records a PoP summary its speaker `from` published at `now` on the
    /// global topic, and reports the members it says died or came back;
    /// `more` when it has more hosts alive than its last summary said
    /// (copies made while they were away may meet now).
    pub fn heard_pop(
        &mut self,
        now: Instant,
        from: &PeerId,
        summary: impl Into<Arc<PopSummary>>,
    ) -> HeardPop {
        let summary = summary.into();
        if summary.pop == self.pop {
            self.pop_version = self.pop_version.max(summary.version);
            return HeardPop::default();
        }
        let mut heard = HeardPop::default();
        let key = name_hash(&summary.pop);
        let known = self.pops.get(&key).filter(|p| p.summary.pop == summary.pop);
        if known.is_some_and(|k| summary.is_not_after(k, from)) {
            return heard;
        }
        heard.new = known.is_none();
        heard.more = known.is_none_or(|p| summary.alive > p.summary.alive);
        // Its dead are as the last summary left them, unless they changed
        // (every agent hears every PoP's summary: most say what the last did).
        let same_dead = known.is_some_and(|p| p.summary.dead == summary.dead);
        let was_measured = known.is_some_and(|p| p.measured && p.summary.contacts == summary.contacts);
        let estimated_rtt_us = match known {
            Some(p) => p.estimated_rtt_us,
            None => {
                let estimate = self
                    .here
                    .map_or(0, |here| locus_sdk::geo::estimated_rtt_us(here.into(), summary.location.into()));
                rank(&mut self.nearest, estimate);
                estimate
            }
        };
        let near =
            self.nearest.len() < MEASURED_POPS || self.nearest.last().is_some_and(|&l| estimated_rtt_us <= l);
        let measured = was_measured || (near && self.rtt_to(&summary).is_some());
        match self.pops.get_mut(&key).filter(|p| p.summary.pop == summary.pop) {
            Some(p) => {
                if p.speaker != *from {
                    p.speaker = from.clone();
                }
                (p.summary, p.heard, p.measured) = (summary.clone(), now, measured);
            }
            None => {
                let (speaker, summary) = (from.clone(), summary.clone());
                let p = RemotePop { summary, speaker, heard: now, measured, estimated_rtt_us };
                // Its name's hash, unless another name has the same (one
                // in 2^64 per pair): the one heard last is known then.
                self.pops.insert(key, p);
            }
        }
        if !same_dead {
            self.remote_dead_changed(&summary, &mut heard);
        }
        self.pop_heard = Some(self.pop_heard.map_or(now, |t| t.max(now)));
        if near && !measured {
            heard.unmeasured = summary.contacts.first().map(|c| c.peer.clone());
        }
        heard
    }

    /// Takes a PoP summary another agent passed on (see [`Membership::book`]),
    /// unless the one known was published later; `None` when not taken.
    pub fn heard_from_book(&mut self, now: Instant, entry: BookEntry) -> Option<HeardPop> {
        // Heard this long ago, as far as this agent's clock tells.
        let published = now.checked_sub(Duration::from_millis(entry.age_ms)).unwrap_or(now);
        if let Some(known) = self.pop(&entry.summary.pop) {
            // Numbered summaries are ordered by their numbers; of others,
            // the one heard last is taken to be the latest.
            let later = match entry.summary.version {
                0 => published > known.heard,
                _ => !entry.summary.is_not_after(known, &entry.speaker),
            };
            if !later {
                return None;
            }
        }
        Some(self.heard_pop(published, &entry.speaker, entry.summary))
    }

    /// Every PoP this agent knows, this one first, for an agent that joins
    /// (see [`BOOK_MAX`]): summaries otherwise come only when a PoP
    /// changes or refreshes, every few minutes with many PoPs.
    pub fn book(&self, now: Instant, own: &HostSummary, pop: &crate::node::PopConfig) -> Vec<BookEntry> {
        let speaker = self.speaker().unwrap_or(&own.peer).clone();
        // Numbered as the latest known: a joining agent of this PoP numbers
        // its summaries past it, should it speak.
        let summary = PopSummary { version: self.pop_version, ..self.pop_summary(own, pop) };
        let mine = BookEntry { speaker, age_ms: 0, summary: Arc::new(summary) };
        let others = self.pops_by_name().into_iter().map(|p| BookEntry {
            speaker: p.speaker.clone(),
            age_ms: now.saturating_duration_since(p.heard).as_millis() as u64,
            summary: p.summary.clone(),
        });
        std::iter::once(mine).chain(others).take(BOOK_MAX).collect()
    }

    /// Takes the dead another PoP's `summary` lists: the newly dead, and
    /// those it no longer lists, back.
    fn remote_dead_changed(&mut self, summary: &PopSummary, heard: &mut HeardPop) {
        for m in &summary.dead {
            if !self.remote_dead.contains_key(&m.peer) {
                self.remote_dead.insert(m.peer.clone(), (m.host.clone(), summary.pop.clone()));
                heard.transitions.push(remote_transition(m, &summary.pop, Liveness::Dead));
            }
        }
        let back: Vec<PeerId> = self
            .remote_dead
            .iter()
            .filter(|(peer, (_, pop))| *pop == summary.pop && !summary.dead.iter().any(|m| m.peer == **peer))
            .map(|(peer, _)| peer.clone())
            .collect();
        for peer in back {
            if let Some((host, pop)) = self.remote_dead.remove(&peer) {
                let m = MemberSummary { peer, host, liveness: Liveness::Alive, vm_count: 0 };
                heard.transitions.push(remote_transition(&m, &pop, Liveness::Alive));
            }
        }
    }

    /// The smallest round trip measured to any of a PoP's contacts.
    pub fn rtt_to(&self, pop: &PopSummary) -> Option<Duration> {
        pop.contacts.iter().filter_map(|c| self.rtts.get(&c.peer)).min().copied()
    }

    /// The round trip to another PoP, µs: as measured, or else as
    /// estimated from its coordinates (see [`MEASURED_POPS`]).
    pub fn latency_us(&self, pop: &RemotePop) -> u64 {
        self.rtt_to(&pop.summary).map_or(u64::from(pop.estimated_rtt_us), |d| d.as_micros() as u64)
    }

    /// Records a measured round trip to `peer`.
    pub fn measured(&mut self, peer: &PeerId, rtt: Duration) {
        if let Some(m) = self.members.get_mut(peer) {
            m.rtt = Some(rtt);
            return;
        }
        self.rtts.insert(peer.clone(), rtt);
    }

    /// Ages every member: a suspect unrefuted for long is dead, and one
    /// silent for long is suspect. Returns the liveness changes.
    pub fn tick(&mut self, now: Instant) -> Vec<Transition> {
        let config = &self.config;
        let grace = self.grace();
        let silence = Duration::from_millis(config.heartbeat_ms * SILENCE_LIMIT_EVERY);
        let dead = Duration::from_millis(config.dead_ms);
        let mut changes = vec![];
        if self.quiet_until.is_none_or(|t| now >= t) {
            let mut quiet_until: Option<Instant> = None;
            for m in self.members.values_mut() {
                let liveness = match (m.liveness, m.suspected) {
                    (Liveness::Suspect, Some(since)) if now.saturating_duration_since(since) >= grace => {
                        Liveness::Dead
                    }
                    (Liveness::Alive, _) if now.saturating_duration_since(m.heard) >= silence => {
                        m.suspected = Some(now);
                        Liveness::Suspect
                    }
                    (l, _) => l,
                };
                if liveness != m.liveness {
                    m.liveness = liveness;
                    changes.push(transition(m, &self.pop));
                }
                let ages_at = match (m.liveness, m.suspected) {
                    (Liveness::Suspect, Some(since)) => Some(since + grace),
                    (Liveness::Alive, _) => Some(m.heard + silence),
                    _ => None,
                };
                if let Some(at) = ages_at {
                    quiet_until = Some(quiet_until.map_or(at, |t| t.min(at)));
                }
            }
            self.quiet_until = quiet_until;
            changes.sort_unstable_by(|a, b| a.peer.cmp(&b.peer));
            if !changes.is_empty() {
                self.relist();
            }
        }
        // A PoP whose speaker went silent for long is forgotten until it
        // speaks again; looked for once a refresh, not at every heartbeat:
        // there may be hundreds of PoPs, and this is slow to come anyway.
        let refresh = self.pop_refresh();
        if self.pops_aged.is_none_or(|t| now.saturating_duration_since(t) >= refresh) {
            self.pops_aged = Some(now);
            let forget = (dead * 4).max(4 * refresh);
            let before = self.pops.len();
            self.pops.retain(|_, p| now.saturating_duration_since(p.heard) < forget);
            if self.pops.len() < before {
                self.nearest.clear();
                for p in self.pops.values() {
                    rank(&mut self.nearest, p.estimated_rtt_us);
                }
            }
        }
        changes
    }

    /// Whether this agent sees more than half of the hosts it knows of
    /// alive (itself included): its PoP-mates as it hears them, and the
    /// members of PoPs whose speakers it heard lately as they report them.
    /// An agent cut off from the rest sees its peers go silent and must
    /// not act on their deaths: it may be the one that is away.
    pub fn in_majority(&self, now: Instant) -> bool {
        let dead = Duration::from_millis(self.config.dead_ms);
        let refresh = self.pop_refresh();
        // A PoP's summaries come as rarely as every refresh: one lost must
        // not count its hosts as gone.
        let recent = dead.max(3 * refresh);
        // But some PoP's summary comes every refresh over the number of
        // PoPs: an agent that heard none for ten of those hears none of
        // them, whatever it heard before (at 313 PoPs, after 5 s, where a
        // PoP's refresh is 156 s).
        let remote = u32::try_from(self.pops.len()).unwrap_or(u32::MAX).max(1);
        let lately = dead.max(10 * refresh / remote);
        let hearing = self.pop_heard.is_some_and(|t| now.saturating_duration_since(t) < lately);
        let mut known = 1 + self.members.len();
        let mut alive = 1 + self.members.values().filter(|m| m.liveness == Liveness::Alive).count();
        for p in self.pops.values() {
            known += p.summary.hosts as usize;
            if hearing && now.saturating_duration_since(p.heard) < recent {
                alive += p.summary.alive as usize;
            }
        }
        2 * alive > known
    }

    /// Heartbeats at most between two summaries of a PoP, alive: the
    /// refresh (see [`POP_REFRESH_EVERY`]).
    pub fn pop_refresh_every(&self) -> u64 {
        POP_REFRESH_EVERY.max(self.pops.len() as u64 + 1)
    }

    /// How long a suspect has to refute the suspicion.
    fn grace(&self) -> Duration {
        Duration::from_millis(self.config.dead_ms.saturating_sub(self.config.suspect_ms))
    }

    /// Some member's liveness may age at `at`.
    fn age_by(&mut self, at: Instant) {
        self.quiet_until = Some(self.quiet_until.map_or(at, |t| t.min(at)));
    }

    /// The longest a PoP's speaker stays silent while alive.
    fn pop_refresh(&self) -> Duration {
        Duration::from_millis(self.config.heartbeat_ms * self.pop_refresh_every())
    }

    /// True when this agent speaks for its PoP: no alive member comes before it in peer-id order.
    pub fn is_speaker(&self) -> bool {
        self.speaker().is_none()
    }

    /// The PoP-mate that speaks for the PoP: the alive member with the
    /// first peer id (in [`PeerId`] order), or none when that is this agent.
    pub fn speaker(&self) -> Option<&PeerId> {
        self.speaker.as_ref()
    }

    /// The highest [`PopSummary::version`] known of this agent's PoP: its
    /// speaker numbers the next one past it.
    pub fn pop_version(&self) -> u64 {
        self.pop_version
    }

    /// This PoP's summary, from this agent's own summary and its members'.
    pub fn pop_summary(&self, own: &HostSummary, pop: &crate::node::PopConfig) -> PopSummary {
        let mut free = Size::default();
        let (mut largest_mem, mut largest_cpu) = (0, 0);
        let members = self.members_in_order();
        let alive_members = members.iter().copied().filter(|(_, m)| m.liveness == Liveness::Alive);
        let live = std::iter::once(own).chain(alive_members.clone().map(|(_, m)| &*m.summary));
        for h in live.filter(|h| h.up) {
            let f = minus(h.capacity, h.allocated);
            free = plus(free, f);
            largest_mem = largest_mem.max(f.memory_mib);
            largest_cpu = largest_cpu.max(f.vcpus);
        }
        let contacts = std::iter::once(Contact { peer: own.peer.clone(), host: own.host.clone() })
            .chain(
                alive_members.clone().map(|(p, m)| Contact { peer: p.clone(), host: m.summary.host.clone() }),
            )
            .take(CONTACTS)
            .collect();
        let dead = members
            .iter()
            .copied()
            .filter(|(_, m)| m.liveness == Liveness::Dead)
            .map(|(peer, m)| MemberSummary {
                peer: peer.clone(),
                host: m.summary.host.clone(),
                liveness: Liveness::Dead,
                vm_count: m.summary.vms.count,
            })
            .collect();
        PopSummary {
            pop: pop.name.clone(),
            jurisdiction: pop.jurisdiction.clone(),
            location: pop.location,
            renewable_watts: pop.renewable_watts,
            carbon_g_per_kwh: pop.carbon_g_per_kwh,
            free,
            largest_free_memory_mib: largest_mem,
            largest_free_vcpus: largest_cpu,
            hosts: 1 + self.members.len() as u32,
            alive: 1 + alive_members.count() as u32,
            contacts,
            dead,
            version: 0,
        }
    }

    /// The members, in peer-id order.
    pub fn members_in_order(&self) -> Vec<(&PeerId, &Member)> {
        let mut members: Vec<_> = self.members.iter().collect();
        members.sort_unstable_by_key(|(peer, _)| *peer);
        members
    }

    /// The other PoPs, in name order.
    pub fn pops_by_name(&self) -> Vec<&RemotePop> {
        let mut pops: Vec<&RemotePop> = self.pops.values().collect();
        pops.sort_unstable_by(|a, b| a.summary.pop.cmp(&b.summary.pop));
        pops
    }

    /// Another PoP, by name, as its summaries tell.
    pub fn pop(&self, name: &str) -> Option<&RemotePop> {
        self.pops.get(&name_hash(name)).filter(|p| p.summary.pop == name)
    }

    /// The other PoPs, in no particular order.
    pub fn remote_pops(&self) -> impl Iterator<Item = &RemotePop> {
        self.pops.values()
    }

    /// Alive agents of another PoP, to forward a request to.
    pub fn contacts(&self, pop: &str) -> Vec<PeerId> {
        self.pop(pop).map(|p| p.summary.contacts.iter().map(|c| c.peer.clone()).collect()).unwrap_or_default()
    }

    /// Where a VM of this PoP runs, as far as its summaries tell: (peer,
    /// host, pop, liveness). VMs of other PoPs are found in the overlay's
    /// records; summaries do not carry them across PoPs.
    pub fn find_vm(&self, name: &str) -> Option<(PeerId, String, String, Liveness)> {
        // A dead host's last summary still lists the VMs it ran, one of
        // which may run elsewhere now: a live holder wins.
        let rank = |l: Liveness| match l {
            Liveness::Alive => 0,
            Liveness::Suspect => 1,
            Liveness::Dead => 2,
        };
        self.holders(name)
            .iter()
            .filter_map(|peer| self.members.get(peer).map(|m| (peer, m)))
            .map(|(peer, m)| (peer.clone(), m.summary.host.clone(), self.pop.clone(), m.liveness))
            .min_by_key(|found| rank(found.3))
    }

    /// A member of another PoP its speaker reports dead: (host, pop).
    pub fn remote_dead(&self, peer: &PeerId) -> Option<&(String, String)> {
        self.remote_dead.get(peer)
    }
}

/// What a PoP summary changed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeardPop {
    /// Its members that died or came back.
    pub transitions: Vec<Transition>,
    /// More of its hosts are alive than its last summary said, or it is new.
    pub more: bool,
    /// This agent did not know the PoP (it is new, or was forgotten).
    pub new: bool,
    /// A contact to measure the latency to it by, while it is unmeasured.
    pub unmeasured: Option<PeerId>,
}

fn remote_transition(m: &MemberSummary, pop: &str, liveness: Liveness) -> Transition {
    Transition { peer: m.peer.clone(), host: m.host.clone(), pop: pop.to_owned(), liveness, vms: vec![] }
}

fn transition(m: &Member, pop: &str) -> Transition {
    Transition {
        peer: m.summary.peer.clone(),
        host: m.summary.host.clone(),
        pop: pop.to_owned(),
        liveness: m.liveness,
        vms: m.vms.set.iter().cloned().collect(),
    }
}

/// `a - b`, never below zero.
pub(crate) fn minus(a: Size, b: Size) -> Size {
    Size {
        vcpus: a.vcpus.saturating_sub(b.vcpus),
        memory_mib: a.memory_mib.saturating_sub(b.memory_mib),
        disk_gib: a.disk_gib.saturating_sub(b.disk_gib),
    }
}

fn plus(a: Size, b: Size) -> Size {
    Size {
        vcpus: a.vcpus.saturating_add(b.vcpus),
        memory_mib: a.memory_mib.saturating_add(b.memory_mib),
        disk_gib: a.disk_gib.saturating_add(b.disk_gib),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A host of 8 vCPUs with one VM, `vm-{peer}`, as its first summary says.
    pub(crate) fn summary(peer: &str, pop: &str) -> HostSummary {
        HostSummary {
            load_state: crate::load::LoadState::Normal,
            peer: PeerId::from(peer),
            host: format!("h-{peer}"),
            pop: pop.into(),
            capacity: Size { vcpus: 8, memory_mib: 8192, disk_gib: 100 },
            allocated: Size { vcpus: 2, memory_mib: 1024, disk_gib: 0 },
            cpu_milli: 8000,
            load_cpu_milli: 0,
            watts: (100, 200),
            up: true,
            draining: false,
            standby: false,
            standby_watts: 10,
            moving: vec![],
            vms: digest(&[&format!("vm-{peer}")]),
            images: vec![],
            seq: 1,
        }
    }

    fn digest(names: &[&str]) -> VmDigest {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        VmLog::default().publish(&names)
    }

    #[test]
    fn a_vm_a_dead_host_still_lists_is_found_where_it_runs_now() {
        let now = Instant::now();
        let mut m = Membership::new(MembershipConfig::default(), PeerId::new("me"), "p".into());
        let (mut a, mut b) = (summary("a", "p"), summary("b", "p"));
        a.vms = digest(&["x"]);
        b.vms = digest(&["x"]);
        m.heard_host(now, &PeerId::new("a"), a);
        m.heard_host(now + Duration::from_secs(3), &PeerId::new("b"), b);
        m.probe_failed(now + Duration::from_secs(3), &PeerId::new("a"));
        m.tick(now + Duration::from_millis(4500));
        let (peer, _, _, liveness) = m.find_vm("x").expect("found");
        assert_eq!((peer.as_str(), liveness), ("b", Liveness::Alive));
    }

    #[test]
    fn an_unanswered_probe_makes_a_member_suspect_then_dead_and_a_word_revives_it() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut m = Membership::new(MembershipConfig::default(), PeerId::new("b"), "paris".into());
        let a = PeerId::new("a");
        assert!(m.heard_host(t0, &a, summary("a", "paris")).transition.is_some());
        assert!(!m.is_speaker(), "a < b speaks while alive");
        assert!(
            m.heard_host(t0, &PeerId::new("x"), summary("a", "paris")).transition.is_none(),
            "spoofed sender"
        );
        assert!(
            m.heard_host(t0, &PeerId::new("c"), summary("c", "berlin")).transition.is_none(),
            "other PoP"
        );
        assert!(m.tick(ms(10_000)).is_empty(), "quiet is not dead: probes tell");
        let (s, seq) = m.probe_failed(ms(10_000), &a).expect("suspect");
        assert_eq!((s.liveness, seq), (Liveness::Suspect, 1));
        assert!(m.probe_failed(ms(10_100), &a).is_none(), "suspect already");
        assert!(m.is_speaker(), "b takes over once a is suspect");
        assert!(m.tick(ms(11_400)).is_empty(), "suspect for less than dead-ms less suspect-ms");
        let d = m.tick(ms(11_500));
        assert_eq!((d[0].liveness, d[0].vms.clone()), (Liveness::Dead, vec!["vm-a".to_owned()]));
        let back = m.heard_host(ms(12_000), &a, summary("a", "paris")).transition.expect("revived");
        assert_eq!(back.liveness, Liveness::Alive);

        // Silent for long, probed or not: suspect.
        let limit = m.config().heartbeat_ms * SILENCE_LIMIT_EVERY;
        assert!(m.tick(ms(12_000 + limit - 1)).is_empty());
        assert_eq!(m.tick(ms(12_000 + limit))[0].liveness, Liveness::Suspect);
    }

    #[test]
    fn a_suspicion_spreads_unless_a_newer_summary_refuted_it_and_a_probe_revives() {
        let t0 = Instant::now();
        let mut m = Membership::new(MembershipConfig::default(), PeerId::new("me"), "p".into());
        let a = PeerId::new("a");
        assert!(m.heard_alive(t0, &a, 3).stale, "never summarized: ask");
        m.heard_host(t0, &a, summary("a", "p"));
        let fresh = m.heard_alive(t0 + Duration::from_millis(1000), &a, 1);
        assert_eq!((fresh.stale, fresh.transition), (false, None));
        let mut newer = summary("a", "p");
        newer.seq = 2;
        m.heard_host(t0, &a, newer);
        assert!(m.heard_suspect(t0, &a, 1).is_none(), "summary 2 refutes a suspicion knowing 1");
        let t = m.heard_suspect(t0, &a, 2).expect("suspect");
        assert_eq!(t.liveness, Liveness::Suspect);
        let back = m.heard_alive(t0 + Duration::from_millis(700), &a, 3);
        assert!(back.stale, "summary 3 was missed");
        assert_eq!(back.transition.map(|t| t.liveness), Some(Liveness::Alive));
        assert!(m.tick(t0 + Duration::from_secs(5)).is_empty(), "no longer suspect");
    }

    #[test]
    fn probes_go_round_every_live_member_in_turn() {
        let t0 = Instant::now();
        let mut m = Membership::new(MembershipConfig::default(), PeerId::new("me"), "p".into());
        assert_eq!(m.probe_target(1), None, "alone");
        for p in ["a", "b", "c", "d"] {
            m.heard_host(t0, &PeerId::from(p), summary(p, "p"));
        }
        let round: BTreeSet<PeerId> = (0..4).filter_map(|t| m.probe_target(t)).collect();
        assert_eq!(round.len(), 4, "four turns, four members");
        m.probe_failed(t0, &PeerId::new("b"));
        m.tick(t0 + Duration::from_secs(2));
        let round: BTreeSet<PeerId> = (0..6).filter_map(|t| m.probe_target(t)).collect();
        assert!(!round.contains(&PeerId::new("b")) && round.len() == 3, "the dead are not probed");
    }

    #[test]
    fn only_the_pops_nearest_are_dialled_to_measure_their_latency() {
        let t0 = Instant::now();
        let here = Location { lat: 0.0, lon: 0.0 };
        let mut m = Membership::new(MembershipConfig::default(), PeerId::new("me"), "home".into()).at(here);
        // Twice as many PoPs as are measured, one degree of longitude apart,
        // heard farthest first.
        let pop = |i: usize| PopSummary {
            pop: format!("p{i:02}"),
            jurisdiction: "FR".into(),
            location: Location { lat: 0.0, lon: (i + 1) as f32 },
            renewable_watts: 0,
            carbon_g_per_kwh: 0,
            free: Size::default(),
            largest_free_memory_mib: 0,
            largest_free_vcpus: 0,
            hosts: 1,
            alive: 1,
            contacts: vec![Contact { peer: PeerId::from(format!("c{i}")), host: format!("h{i}") }],
            dead: vec![],
            version: 0,
        };
        let n = 2 * MEASURED_POPS;
        let first: Vec<bool> = (0..n)
            .rev()
            .map(|i| m.heard_pop(t0, &PeerId::from(format!("c{i}")), pop(i)).unmeasured.is_some())
            .collect();
        assert!(first.iter().all(|&dial| dial), "each nearer than all heard before");
        let again: Vec<usize> = (0..n)
            .filter(|&i| m.heard_pop(t0, &PeerId::from(format!("c{i}")), pop(i)).unmeasured.is_some())
            .collect();
        assert_eq!(again, (0..MEASURED_POPS).collect::<Vec<_>>(), "once all are known, the nearest only");
        m.measured(&PeerId::new("c3"), Duration::from_millis(3));
        assert_eq!(m.heard_pop(t0, &PeerId::new("c3"), pop(3)).unmeasured, None);
        let ranked =
            |m: &Membership| m.pops_by_name().iter().filter(|p| m.rtt_to(&p.summary).is_some()).count();
        assert_eq!(ranked(&m), 1);
        assert_eq!(m.latency_us(m.pop("p03").expect("known")), 3_000, "as measured");
        let estimated: Vec<u64> =
            (0..n).map(|i| m.latency_us(m.pop(&format!("p{i:02}")).expect("known"))).collect();
        assert!(
            estimated[MEASURED_POPS..].is_sorted() && estimated[n - 1] > estimated[4],
            "the others by distance"
        );
    }

    #[test]
    fn pop_summaries_aggregate_live_hosts_and_carry_liveness_across_pops() {
        let t0 = Instant::now();
        let pop = crate::node::PopConfig { name: "paris".into(), ..Default::default() };
        let mut paris = Membership::new(MembershipConfig::default(), PeerId::new("a"), "paris".into());
        for peer in ["b", "c", "d"] {
            paris.heard_host(t0, &PeerId::from(peer), summary(peer, "paris"));
        }
        let own = summary("a", "paris");
        let s = paris.pop_summary(&own, &pop);
        assert_eq!((s.free.vcpus, s.free.memory_mib, s.largest_free_memory_mib), (24, 28672, 7168));
        assert_eq!((s.hosts, s.alive, s.contacts.len()), (4, 4, CONTACTS), "counted, a few named");
        assert_eq!(s.contacts[0].peer, PeerId::new("a"), "the speaker first");
        assert!(s.dead.is_empty());

        let mut berlin = Membership::new(MembershipConfig::default(), PeerId::new("z"), "berlin".into());
        let news = berlin.heard_pop(t0, &PeerId::new("a"), s.clone());
        assert!(news.transitions.is_empty() && news.more, "a new PoP: its hosts may hold copies");
        assert_eq!(news.unmeasured, Some(PeerId::new("a")), "a contact to measure the latency by");
        let again = berlin.heard_pop(t0, &PeerId::new("a"), s.clone());
        assert!(!again.more && again.unmeasured.is_some(), "the same again, still unmeasured");
        berlin.measured(&PeerId::new("b"), Duration::from_millis(12));
        assert_eq!(
            berlin.rtt_to(&berlin.pop("paris").expect("known").summary),
            Some(Duration::from_millis(12))
        );
        assert_eq!(berlin.heard_pop(t0, &PeerId::new("a"), s.clone()).unmeasured, None, "measured");
        let mut others = s.clone();
        others.contacts.retain(|c| c.peer != PeerId::new("b"));
        let moved = berlin.heard_pop(t0, &PeerId::new("a"), others);
        assert!(moved.unmeasured.is_some(), "none of its contacts now is measured");
        berlin.heard_pop(t0, &PeerId::new("a"), s.clone());
        assert_eq!(berlin.find_vm("vm-b"), None, "another PoP's VMs are found in the records");
        assert_eq!(berlin.contacts("paris").len(), CONTACTS);
        assert!(berlin.in_majority(t0), "5 of 5 hosts alive");

        // b, c and d stop answering; a keeps speaking.
        for peer in ["b", "c", "d"] {
            paris.probe_failed(t0 + Duration::from_secs(1), &PeerId::from(peer));
        }
        paris.tick(t0 + Duration::from_secs(4));
        let s = paris.pop_summary(&own, &pop);
        assert_eq!(s.free.vcpus, 6, "a dead host's room is not offered");
        assert_eq!((s.hosts, s.alive, s.dead.len()), (4, 1, 3));
        let later = t0 + Duration::from_secs(4);
        let news = berlin.heard_pop(later, &PeerId::new("a"), s);
        assert_eq!(news.transitions.iter().map(|t| t.liveness).collect::<Vec<_>>(), [Liveness::Dead; 3]);
        assert_eq!(berlin.contacts("paris"), [PeerId::new("a")]);
        assert_eq!(berlin.remote_dead(&PeerId::new("b")), Some(&("h-b".to_owned(), "paris".to_owned())));
        assert!(!berlin.in_majority(later), "2 of 5 hosts alive");

        // b comes back.
        paris.heard_host(later, &PeerId::new("b"), summary("b", "paris"));
        let news = berlin.heard_pop(later, &PeerId::new("a"), paris.pop_summary(&own, &pop));
        assert!(news.more);
        assert_eq!(
            news.transitions.iter().map(|t| (t.peer.as_str(), t.liveness)).collect::<Vec<_>>(),
            [("b", Liveness::Alive)]
        );
        assert_eq!(berlin.remote_dead(&PeerId::new("b")), None);
    }

    #[test]
    fn a_pop_summary_numbered_below_the_one_known_is_dropped_and_a_tie_goes_to_the_first_speaker() {
        let t0 = Instant::now();
        let pop = crate::node::PopConfig { name: "paris".into(), ..Default::default() };
        let paris = Membership::new(MembershipConfig::default(), PeerId::new("a"), "paris".into());
        let base = paris.pop_summary(&summary("a", "paris"), &pop);
        let numbered = |version: u64, alive: u32| PopSummary { version, alive, ..base.clone() };
        let mut berlin = Membership::new(MembershipConfig::default(), PeerId::new("z"), "berlin".into());
        let (a, b) = (PeerId::new("a"), PeerId::new("b"));
        let mut alive_after = |from: &PeerId, s: PopSummary| {
            berlin.heard_pop(t0, from, s);
            berlin.pop("paris").expect("known").summary.alive
        };
        assert_eq!(alive_after(&b, numbered(2, 3)), 3);
        assert_eq!(alive_after(&b, numbered(1, 2)), 3, "published before: dropped");
        assert_eq!(alive_after(&b, numbered(2, 2)), 3, "the same number again: dropped");
        assert_eq!(alive_after(&b, numbered(3, 4)), 4, "later: taken");
        assert_eq!(alive_after(&a, numbered(3, 1)), 1, "a tie, from a speaker before b: taken");
        assert_eq!(alive_after(&b, numbered(3, 4)), 1, "a tie, from a speaker after a: dropped");
        assert_eq!(alive_after(&b, numbered(0, 5)), 5, "unnumbered: taken");

        // Paris's own agents keep the highest number heard, to number past it.
        let mut c = Membership::new(MembershipConfig::default(), PeerId::new("c"), "paris".into());
        c.heard_pop(t0, &b, numbered(7, 2));
        c.heard_pop(t0, &b, numbered(5, 2));
        assert_eq!(c.pop_version(), 7);
    }

    #[test]
    fn a_book_passes_every_pop_with_its_age_and_an_older_summary_does_not_replace_a_newer_one() {
        let t0 = Instant::now();
        let pop = |name: &str| crate::node::PopConfig { name: name.into(), ..Default::default() };
        // Paris (a, b) and Madrid (m) are heard by Berlin's agent z.
        let mut paris = Membership::new(MembershipConfig::default(), PeerId::new("a"), "paris".into());
        paris.heard_host(t0, &PeerId::new("b"), summary("b", "paris"));
        let paris_summary = paris.pop_summary(&summary("a", "paris"), &pop("paris"));
        let madrid = Membership::new(MembershipConfig::default(), PeerId::new("m"), "madrid".into());
        let madrid_summary = madrid.pop_summary(&summary("m", "madrid"), &pop("madrid"));
        let mut berlin = Membership::new(MembershipConfig::default(), PeerId::new("z"), "berlin".into());
        berlin.heard_pop(t0, &PeerId::new("a"), paris_summary.clone());
        berlin.heard_pop(t0 + Duration::from_secs(5), &PeerId::new("m"), madrid_summary);

        let now = t0 + Duration::from_secs(8);
        let book = berlin.book(now, &summary("z", "berlin"), &pop("berlin"));
        let rows: Vec<(&str, &str, u64, u32)> = book
            .iter()
            .map(|e| (e.summary.pop.as_str(), e.speaker.as_str(), e.age_ms, e.summary.alive))
            .collect();
        assert_eq!(
            rows,
            [("berlin", "z", 0, 1), ("madrid", "m", 3000, 1), ("paris", "a", 8000, 2)],
            "its own PoP first, then the others by name, each as long ago as heard"
        );

        // Warsaw's w joins and is passed the book 100 ms later; it had
        // heard Madrid itself since, with two hosts alive.
        let mut warsaw = Membership::new(MembershipConfig::default(), PeerId::new("w"), "warsaw".into());
        let later = now + Duration::from_millis(100);
        let mut madrid_now = madrid_summary_with(2);
        madrid_now.pop = "madrid".into();
        warsaw.heard_pop(now - Duration::from_secs(1), &PeerId::new("m"), madrid_now);
        let taken: Vec<bool> =
            book.into_iter().map(|e| warsaw.heard_from_book(later, e).is_some_and(|h| h.new)).collect();
        assert_eq!(taken, [true, false, true], "Madrid heard 2 s ago is newer than the book's, 3.1 s old");
        let alive: Vec<(&str, u32)> =
            warsaw.pops_by_name().iter().map(|p| (p.summary.pop.as_str(), p.summary.alive)).collect();
        assert_eq!(alive, [("berlin", 1), ("madrid", 2), ("paris", 2)]);
        let paris_heard = warsaw.pop("paris").expect("known").heard;
        assert_eq!(later - paris_heard, Duration::from_secs(8), "aged as told (its transit is not known)");

        fn madrid_summary_with(alive: u32) -> PopSummary {
            let m = Membership::new(MembershipConfig::default(), PeerId::new("m"), "madrid".into());
            let pop = crate::node::PopConfig { name: "madrid".into(), ..Default::default() };
            PopSummary { alive, hosts: alive, ..m.pop_summary(&summary("m", "madrid"), &pop) }
        }
    }

    #[test]
    fn with_many_pops_each_refreshes_rarely_and_an_agent_that_hears_none_lately_counts_none_alive() {
        let t0 = Instant::now();
        let s = |at: Duration| t0 + at;
        let mut berlin = Membership::new(MembershipConfig::default(), PeerId::new("z"), "berlin".into());
        let mut paris = Membership::new(MembershipConfig::default(), PeerId::new("a"), "paris".into());
        paris.heard_host(t0, &PeerId::new("b"), summary("b", "paris"));
        let pop = crate::node::PopConfig { name: "paris".into(), ..Default::default() };
        let mut summary = paris.pop_summary(&summary("a", "paris"), &pop);
        assert_eq!(berlin.pop_refresh_every(), POP_REFRESH_EVERY, "few PoPs: the refresh");
        for i in 0..99 {
            summary.pop = format!("p{i}");
            berlin.heard_pop(
                s(Duration::from_millis(i * 100)),
                &PeerId::from(format!("s{i}")),
                summary.clone(),
            );
        }
        assert_eq!(berlin.pop_refresh_every(), 100, "as many heartbeats as PoPs");
        // Each PoP refreshes every 50 s, some PoP every 0.5 s.
        assert!(berlin.in_majority(s(Duration::from_secs(14))), "every host alive, and heard lately");
        assert!(
            !berlin.in_majority(s(Duration::from_secs(15))),
            "no PoP heard for 5 s, where one comes every 0.5 s: cut off from all"
        );
        summary.pop = "p0".into();
        berlin.heard_pop(s(Duration::from_secs(60)), &PeerId::new("s0"), summary);
        assert!(
            berlin.in_majority(s(Duration::from_secs(60))),
            "hearing again: every PoP heard in 3 refreshes counts"
        );
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_pop_mate_follows_a_hosts_vms_by_their_changes_and_asks_for_the_list_when_it_fell_behind() {
        let t0 = Instant::now();
        let mut m = Membership::new(MembershipConfig::default(), PeerId::new("me"), "p".into());
        let a = PeerId::new("a");
        let mut log = VmLog::default();
        let mut s = summary("a", "p");
        let mut hear = |m: &mut Membership, vms: VmDigest| {
            s.vms = vms;
            m.heard_host(t0, &a, s.clone()).behind
        };
        assert!(!hear(&mut m, log.publish(&names(&[]))), "an empty host is known at once");
        assert!(!hear(&mut m, log.publish(&names(&["x", "y"]))), "two came");
        assert!(!hear(&mut m, log.publish(&names(&["y", "z"]))), "one went, one came");
        assert_eq!(m.holders("z"), std::slice::from_ref(&a));
        assert!(m.holders("x").is_empty());
        assert_eq!(m.find_vm("y").map(|f| f.1), Some("h-a".to_owned()));

        // Summaries lost for longer than the changes are repeated: behind.
        for k in 0..CHANGES_KEPT_FOR + 1 {
            log.publish(&names(&["y", &format!("n{k}")]));
        }
        let d = log.publish(&names(&["y", "w"]));
        assert!(hear(&mut m, d), "missed too many: asks for the list");
        let (version, vms) = log.full();
        m.heard_vms(&a, version, vms);
        assert_eq!(m.members[&a].vms.set, ["w", "y"].map(String::from).into());
        assert!(m.holders("z").is_empty() && m.holders("w") == std::slice::from_ref(&a));
        assert!(!hear(&mut m, log.publish(&names(&["w", "y", "v"]))));

        // Restarted, the agent counts from 0 and its changes are its whole
        // history; once they are not, the digest tells the difference.
        let mut restarted = VmLog::default();
        assert!(!hear(&mut m, restarted.publish(&names(&["w"]))), "the whole history: rebuilt");
        assert!(m.holders("y").is_empty() && m.holders("w") == std::slice::from_ref(&a));
        for k in 0..CHANGES_KEPT_FOR + 1 {
            restarted.publish(&names(&[&format!("n{k}")]));
        }
        let mut again = VmLog::default();
        for k in 0..CHANGES_KEPT_FOR + 1 {
            again.publish(&names(&[&format!("m{k}")]));
        }
        assert!(hear(&mut m, again.publish(&names(&["u"]))), "restarted unheard for long: asks");
        let (version, vms) = again.full();
        m.heard_vms(&a, version, vms);
        assert!(!hear(&mut m, again.publish(&names(&["w", "u"]))));
        assert_eq!(m.members[&a].vms.set, ["u", "w"].map(String::from).into());
    }

    #[test]
    fn sets_of_similar_names_have_different_digests() {
        // FNV-1a hashes XORed to the same digest for these two sets.
        let named = |v: &[u8]| v.iter().map(|n| format!("vm{n}")).collect::<Vec<_>>();
        let (a, b) = (named(&[0, 4, 9, 10, 11]), named(&[0, 2, 3, 5, 8]));
        let mut log = VmLog::default();
        let mut known = KnownVms::default();
        known.apply(&log.publish(&a));
        let d = log.publish(&b);
        assert_ne!(VmLog::default().publish(&a).hash, d.hash);
        known.apply(&d);
        assert!(known.synced && known.set.iter().eq(b.iter().collect::<BTreeSet<_>>()));
    }

    proptest::proptest! {
        /// However summaries are lost, a PoP-mate that says it knows a
        /// host's VMs knows them exactly, and asking once puts it right.
        #[test]
        fn known_vms_are_exact_whenever_they_claim_to_be(
            steps in proptest::collection::vec((proptest::collection::btree_set(0u8..12, 0..8), proptest::bool::weighted(0.3)), 1..60)
        ) {
            let mut log = VmLog::default();
            let mut known = KnownVms::default();
            for (set, lost) in steps {
                let now: Vec<String> = set.iter().map(|v| format!("vm{v}")).collect::<BTreeSet<_>>().into_iter().collect();
                let d = log.publish(&now);
                if lost {
                    continue;
                }
                known.apply(&d);
                if known.synced {
                    proptest::prop_assert_eq!(known.set.iter().cloned().collect::<Vec<_>>(), now.clone());
                } else {
                    let (version, vms) = log.full();
                    known.replace(version, vms);
                    proptest::prop_assert_eq!(known.set.iter().cloned().collect::<Vec<_>>(), now.clone());
                }
            }
        }
    }
}
