//! What every agent knows about pushed policies: per scope and slot, the
//! pushes (newest last) with their plan and the canaries' verdicts. Plain
//! data with one merge rule, so that agents hearing the same records in any
//! order, any number of times, end with the same table: two racing pushes
//! end with the same winner everywhere, and a canary's failure, once heard,
//! is never forgotten.
//!
//! A push is ordered by (sequence, bundle hash, entering agent): the
//! agent a push enters numbers it one past the highest sequence it knows
//! for its scope and slot, so a push made after another one was heard
//! wins, and two made at once are ordered by their hashes.

use crate::policies::SlotName;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

/// Pushes kept per scope and slot (rollback goes back through them).
pub const HISTORY: usize = 8;
/// Scope-and-slot pairs kept: PoPs × slots with room to spare. Records for
/// more (a peer making up PoP names) are dropped.
pub const MAX_KEYS: usize = 3 * 1024;

/// Where a push applies.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Scope {
    /// Every agent.
    Cluster,
    /// The agents of one PoP.
    Pop(String),
}

impl utoipa::PartialSchema for Scope {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some("`cluster`, or `pop:NAME` for one PoP"))
            .examples(["pop:paris"])
            .into()
    }
}

impl utoipa::ToSchema for Scope {}

impl Scope {
    /// Whether an agent of `pop` is in the scope.
    pub fn contains(&self, pop: &str) -> bool {
        match self {
            Scope::Cluster => true,
            Scope::Pop(p) => p == pop,
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            _ if s == "cluster" => Ok(Scope::Cluster),
            Some(("pop", name)) if locus_core::request::valid_name(name) => Ok(Scope::Pop(name.to_owned())),
            _ => Err(format!("scope {s:?}: use `cluster` or `pop:NAME`")),
        }
    }
}

impl TryFrom<String> for Scope {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Scope> for String {
    fn from(s: Scope) -> String {
        s.to_string()
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Cluster => f.write_str("cluster"),
            Scope::Pop(p) => write!(f, "pop:{p}"),
        }
    }
}

/// The bundle a push carries, as the agents verify it (copied from its
/// signed manifest for listings; every agent checks the bundle itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BundleRef {
    /// SHA-256 of the bundle file, hex: what agents fetch it by.
    pub hash: String,
    /// The policy's name.
    pub name: String,
    /// The author's version.
    pub version: String,
    /// SHA-256 of the component, hex (what `policy list` shows).
    pub component: String,
    /// The configuration it runs with.
    pub config: BTreeMap<String, String>,
    /// Bundle size, bytes.
    pub size: u64,
    /// The signer's public key, hex; none when unsigned.
    pub signer: Option<String>,
}

/// How a push becomes active.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case", tag = "mode")]
pub enum Plan {
    /// Every agent of the scope at once.
    Direct,
    /// The listed agents first; the rest once every one of them passed.
    Canary {
        /// Peer ids of the canary agents.
        agents: Vec<String>,
        /// A canary passes after this many decisions by the new version…
        decisions: u64,
        /// …or after this long, ms, whichever comes first.
        window_ms: u64,
        /// Fraction of failed calls (traps, deadlines, invalid decisions,
        /// memory cap) above which a canary fails the push.
        max_failure_rate: f64,
    },
    /// Never acts: runs beside the active version for this long, ms.
    Shadow {
        /// How long it runs, ms.
        window_ms: u64,
    },
}

/// A canary agent's judgement of a push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CanaryVerdict {
    /// Within the failure rate.
    pub passed: bool,
    /// Calls the new version made on that agent.
    pub calls: u64,
    /// Of which failed.
    pub failures: u64,
    /// What was seen, e.g. `3 of 3 calls failed (trap 3)`.
    pub reason: String,
    /// Peer id of the agent that wrote it: the canary, or, for a canary
    /// gone silent, the agent the push entered through.
    #[serde(default)]
    pub by: String,
    /// That agent's signature (its node key) over [`CanaryVerdict::signed`].
    #[serde(default, with = "serde_bytes")]
    pub sig: Vec<u8>,
}

/// What a verdict's signature covers first.
const VERDICT_DOMAIN: &[u8] = b"locus canary verdict v1\0";

impl CanaryVerdict {
    /// A verdict on `r` for `canary`, unsigned yet.
    pub fn new(passed: bool, calls: u64, failures: u64, reason: String) -> Self {
        CanaryVerdict { passed, calls, failures, reason, by: String::new(), sig: Vec::new() }
    }

    /// The bytes its signature covers: the push it judges, the canary, and
    /// what was found.
    pub fn signed(&self, r: &Record, canary: &str) -> Vec<u8> {
        let what = (
            r.scope.to_string(),
            r.slot.as_str(),
            r.seq,
            r.bundle.as_ref().map(|b| b.hash.as_str()),
            &r.origin,
            canary,
            (self.passed, self.calls, self.failures, &self.reason, &self.by),
        );
        let mut out = VERDICT_DOMAIN.to_vec();
        out.extend(rmp_serde::to_vec(&what).unwrap_or_default());
        out
    }

    /// Signs it as `by` with `key` (that agent's node key).
    pub fn sign(mut self, r: &Record, canary: &str, by: &str, key: &libp2p::identity::Keypair) -> Self {
        self.by = by.to_owned();
        self.sig = key.sign(&self.signed(r, canary)).unwrap_or_default();
        self
    }

    /// Whether it was signed by the canary itself or the push's origin.
    fn verifies(&self, r: &Record, canary: &str) -> bool {
        if self.by != canary && self.by != r.origin {
            return false;
        }
        let Ok(peer) = self.by.parse::<libp2p::PeerId>() else { return false };
        let mh = peer.as_ref();
        // Ed25519 peer ids carry their public key (identity multihash).
        let key =
            (mh.code() == 0).then(|| libp2p::identity::PublicKey::try_decode_protobuf(mh.digest()).ok());
        key.flatten().is_some_and(|k| k.verify(&self.signed(r, canary), &self.sig))
    }
}

/// One push (or rollback) of a slot to a scope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Record {
    /// Where it applies.
    pub scope: Scope,
    /// The slot.
    pub slot: SlotName,
    /// Its number among the scope's pushes of the slot.
    pub seq: u64,
    /// The bundle; none for a rollback past the scope's first push (the
    /// agents then run what they ran before any push to the scope).
    pub bundle: Option<BundleRef>,
    /// Peer id of the agent it entered through.
    pub origin: String,
    /// When it entered, Unix ms (for people; order comes from `seq`).
    pub pushed_at_ms: u64,
    /// Whether it was a rollback.
    pub rollback: bool,
    /// How it becomes active.
    pub plan: Plan,
    /// Canary verdicts, by peer id.
    pub verdicts: BTreeMap<String, CanaryVerdict>,
}

/// Where a push stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case", tag = "stage", content = "reason")]
pub enum Stage {
    /// On its canaries only, waiting for their verdicts.
    Canary,
    /// On every agent of the scope.
    Active,
    /// A canary failed it; every agent runs what it ran before.
    Failed(String),
    /// Running beside the active versions, never acting.
    Shadow,
}

/// Longest free text a record carries (a verdict's reason), bytes.
const MAX_TEXT: usize = 1024;
/// Most canaries a push may list.
const MAX_CANARIES: usize = 1024;

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_peer(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

impl Record {
    /// Checks a record heard from a peer before it is taken in: hashes
    /// are SHA-256 in hex, names and texts as agents write them, lists
    /// bounded. What an agent makes passes; anything else is a peer's
    /// fault, refused with the reason.
    pub fn check(&self) -> Result<(), String> {
        if self.seq == 0 || !is_peer(&self.origin) {
            return Err("a push needs a number and the peer id it entered through".into());
        }
        if let Some(b) = &self.bundle {
            if !is_sha256(&b.hash) || !is_sha256(&b.component) {
                return Err("bundle and component hashes must be SHA-256 in lowercase hex".into());
            }
            if !locus_core::request::valid_name(&b.name) || b.version.len() > 64 {
                return Err(format!("bundle name {:?} or version invalid", b.name));
            }
            crate::policies::check_config(&b.config)?;
            if b.signer.as_ref().is_some_and(|k| k.len() != 64 || !k.bytes().all(|c| c.is_ascii_hexdigit())) {
                return Err("a signer is an ed25519 public key in hex".into());
            }
        }
        match &self.plan {
            Plan::Direct | Plan::Shadow { .. } => {
                if !self.verdicts.is_empty() {
                    return Err("only a canary push carries verdicts".into());
                }
            }
            Plan::Canary { agents, decisions, max_failure_rate, .. } => {
                if agents.len() > MAX_CANARIES || !agents.iter().all(|a| is_peer(a)) {
                    return Err(format!("at most {MAX_CANARIES} canaries, by peer id"));
                }
                if *decisions == 0 || !(0.0..=1.0).contains(max_failure_rate) {
                    return Err("a canary needs decisions and a failure rate between 0 and 1".into());
                }
                if self.verdicts.iter().any(|(p, v)| !agents.contains(p) || v.reason.len() > MAX_TEXT) {
                    return Err("verdicts come from the push's canaries, with a short reason".into());
                }
                if let Some((p, _)) = self.verdicts.iter().find(|(p, v)| !v.verifies(self, p)) {
                    return Err(format!(
                        "the verdict for canary {p} is not signed by it or by the agent the push entered through"
                    ));
                }
            }
        }
        Ok(())
    }

    /// How people and statuses name a push: `scope/slot#seq`.
    pub fn id(&self) -> String {
        format!("{}/{}#{}", self.scope, self.slot.as_str(), self.seq)
    }

    /// The total order of pushes to one scope and slot.
    pub fn order(&self) -> (u64, &str, &str) {
        (self.seq, self.bundle.as_ref().map_or("", |b| b.hash.as_str()), &self.origin)
    }

    /// `scope/slot`, the key pushes are grouped by.
    pub fn key(&self) -> (Scope, SlotName) {
        (self.scope.clone(), self.slot)
    }

    /// Where it stands, from its plan and the verdicts heard.
    pub fn stage(&self) -> Stage {
        match &self.plan {
            Plan::Direct => Stage::Active,
            Plan::Shadow { .. } => Stage::Shadow,
            Plan::Canary { agents, .. } => {
                // Only the canaries' own verdicts count.
                let heard = |a: &String| self.verdicts.get(a);
                if let Some(v) = agents.iter().filter_map(heard).find(|v| !v.passed) {
                    Stage::Failed(format!("canary failed: {}", v.reason))
                } else if agents.iter().all(|a| self.verdicts.contains_key(a)) {
                    Stage::Active
                } else {
                    Stage::Canary
                }
            }
        }
    }

    /// Whether `peer` is one of its canaries.
    pub fn is_canary(&self, peer: &str) -> bool {
        matches!(&self.plan, Plan::Canary { agents, .. } if agents.iter().any(|a| a == peer))
    }

    /// Adds the verdicts of another copy of the same push: the union, a
    /// failure winning over a pass from the same agent.
    fn absorb(&mut self, other: &Record) -> bool {
        let mut changed = false;
        for (peer, v) in &other.verdicts {
            match self.verdicts.get(peer) {
                Some(mine) if mine == v || !mine.passed || v.passed => {}
                _ => {
                    self.verdicts.insert(peer.clone(), v.clone());
                    changed = true;
                }
            }
        }
        changed
    }
}

/// What an agent should run in a slot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target<'a> {
    /// This push's bundle.
    Push(&'a Record),
    /// No push applies: what the agent ran before any push.
    Own,
}

/// Every push known, by scope and slot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    keys: BTreeMap<(Scope, SlotName), Vec<Record>>,
}

impl Table {
    /// A table holding `records`.
    pub fn from_records(records: impl IntoIterator<Item = Record>) -> Self {
        let mut t = Table::default();
        for r in records {
            t.merge(r);
        }
        t
    }

    /// Takes in a record heard or made; true when the table changed.
    pub fn merge(&mut self, record: Record) -> bool {
        if self.keys.len() >= MAX_KEYS && !self.keys.contains_key(&record.key()) {
            tracing::warn!(scope = %record.scope, "policy push dropped: {MAX_KEYS} scopes and slots are known already");
            return false;
        }
        let list = self.keys.entry(record.key()).or_default();
        match list.binary_search_by(|r| r.order().cmp(&record.order())) {
            Ok(i) => list[i].absorb(&record),
            Err(i) => {
                if list.len() >= HISTORY && i == 0 {
                    return false;
                }
                list.insert(i, record);
                if list.len() > HISTORY {
                    list.remove(0);
                }
                true
            }
        }
    }

    /// Every record, by scope and slot, oldest first.
    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.keys.values().flatten()
    }

    /// The records of one scope and slot, oldest first.
    pub fn pushes(&self, scope: &Scope, slot: SlotName) -> &[Record] {
        self.keys.get(&(scope.clone(), slot)).map_or(&[], Vec::as_slice)
    }

    /// The sequence number the next push to `scope`'s `slot` gets.
    pub fn next_seq(&self, scope: &Scope, slot: SlotName) -> u64 {
        self.pushes(scope, slot).last().map_or(1, |r| r.seq + 1)
    }

    /// A digest of everything known, to tell whether two agents differ.
    pub fn digest(&self) -> u64 {
        let mut h = siphasher::sip::SipHasher13::new();
        for r in self.records() {
            r.order().hash(&mut h);
            for (peer, v) in &r.verdicts {
                (peer, v.passed).hash(&mut h);
            }
        }
        h.finish()
    }

    /// What an agent `peer` of `pop` should run in `slot`: a PoP's pushes
    /// take precedence over the cluster's; within a scope, the newest push
    /// that is active (or in canary on this agent) wins; failed pushes and
    /// shadows are passed over, and a rollback past a scope's first push
    /// hands the slot to the next scope.
    pub fn target(&self, pop: &str, peer: &str, slot: SlotName) -> Target<'_> {
        for scope in [Scope::Pop(pop.to_owned()), Scope::Cluster] {
            for r in self.pushes(&scope, slot).iter().rev() {
                let runs = match r.stage() {
                    Stage::Active => true,
                    Stage::Canary => r.is_canary(peer),
                    Stage::Failed(_) | Stage::Shadow => false,
                };
                if runs {
                    if r.bundle.is_some() {
                        return Target::Push(r);
                    }
                    break;
                }
            }
        }
        Target::Own
    }

    /// The shadow an agent of `pop` should run beside `slot`'s active
    /// version: the newest push of its scopes, if that is a shadow.
    pub fn shadow(&self, pop: &str, slot: SlotName) -> Option<&Record> {
        [Scope::Pop(pop.to_owned()), Scope::Cluster]
            .iter()
            .filter_map(|s| self.pushes(s, slot).last())
            .find(|r| matches!(r.plan, Plan::Shadow { .. }))
    }

    /// The rollback of `scope`'s `slot`: a new push of the bundle active
    /// before the newest acting push, or of none.
    pub fn rollback(&self, scope: &Scope, slot: SlotName) -> Option<(u64, Option<BundleRef>)> {
        let pushes = self.pushes(scope, slot);
        let acting = |r: &&Record| matches!(r.stage(), Stage::Active | Stage::Canary);
        let newest = pushes.iter().rev().position(|r| acting(&r))?;
        let earlier = pushes.iter().rev().skip(newest + 1).find(|r| r.stage() == Stage::Active);
        Some((self.next_seq(scope, slot), earlier.and_then(|r| r.bundle.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bundle(hash: &str) -> Option<BundleRef> {
        Some(BundleRef {
            hash: hash.into(),
            name: "p".into(),
            version: "1".into(),
            component: format!("c{hash}"),
            config: BTreeMap::new(),
            size: 10,
            signer: None,
        })
    }

    fn push(scope: Scope, seq: u64, hash: &str, origin: &str, plan: Plan) -> Record {
        Record {
            scope,
            slot: SlotName::Placement,
            seq,
            bundle: bundle(hash),
            origin: origin.into(),
            pushed_at_ms: 0,
            rollback: false,
            plan,
            verdicts: BTreeMap::new(),
        }
    }

    fn canary(agents: &[&str]) -> Plan {
        Plan::Canary {
            agents: agents.iter().map(|a| a.to_string()).collect(),
            decisions: 3,
            window_ms: 1000,
            max_failure_rate: 0.1,
        }
    }

    fn verdict(passed: bool) -> CanaryVerdict {
        CanaryVerdict::new(passed, 3, u64::from(!passed) * 3, "seen".into())
    }

    fn target_hash(t: &Table, pop: &str, peer: &str) -> Option<String> {
        match t.target(pop, peer, SlotName::Placement) {
            Target::Push(r) => r.bundle.as_ref().map(|b| b.hash.clone()),
            Target::Own => None,
        }
    }

    #[test]
    fn scopes_parse_and_print() {
        assert_eq!("cluster".parse::<Scope>(), Ok(Scope::Cluster));
        assert_eq!("pop:paris".parse::<Scope>(), Ok(Scope::Pop("paris".into())));
        assert!("pop:".parse::<Scope>().is_err());
        assert!("pop:a b".parse::<Scope>().is_err());
        assert!("paris".parse::<Scope>().is_err());
        assert_eq!(Scope::Pop("x".into()).to_string(), "pop:x");
    }

    #[test]
    fn a_pop_push_beats_the_cluster_and_applies_to_its_pop_only() {
        let mut t = Table::default();
        t.merge(push(Scope::Cluster, 1, "a", "o", Plan::Direct));
        t.merge(push(Scope::Pop("paris".into()), 1, "b", "o", Plan::Direct));
        assert_eq!(target_hash(&t, "paris", "x").as_deref(), Some("b"));
        assert_eq!(target_hash(&t, "berlin", "x").as_deref(), Some("a"));
        assert_eq!(target_hash(&t, "berlin", "x").as_deref(), Some("a"));
        let mut back = push(Scope::Pop("paris".into()), 2, "", "o", Plan::Direct);
        back.bundle = None;
        back.rollback = true;
        t.merge(back);
        assert_eq!(
            target_hash(&t, "paris", "x").as_deref(),
            Some("a"),
            "a rollback hands over to the cluster"
        );
    }

    #[test]
    fn a_canary_runs_on_its_agents_until_every_one_passed_and_a_failure_reverts_everyone() {
        let paris = Scope::Pop("paris".into());
        let mut t = Table::default();
        t.merge(push(paris.clone(), 1, "old", "o", Plan::Direct));
        let mut c = push(paris.clone(), 2, "new", "o", canary(&["c1", "c2"]));
        t.merge(c.clone());
        assert_eq!(target_hash(&t, "paris", "c1").as_deref(), Some("new"));
        assert_eq!(target_hash(&t, "paris", "other").as_deref(), Some("old"));
        c.verdicts.insert("c1".into(), verdict(true));
        // A failure claimed for an agent that is not a canary counts for nothing.
        c.verdicts.insert("bystander".into(), verdict(false));
        t.merge(c.clone());
        assert_eq!(t.pushes(&paris, SlotName::Placement)[1].stage(), Stage::Canary);
        assert_eq!(target_hash(&t, "paris", "other").as_deref(), Some("old"), "one canary is not all");
        let mut failed = c.clone();
        failed.verdicts.insert("c2".into(), verdict(false));
        t.merge(failed);
        assert_eq!(target_hash(&t, "paris", "c1").as_deref(), Some("old"));
        assert!(
            matches!(t.pushes(&paris, SlotName::Placement)[1].stage(), Stage::Failed(r) if r.contains("seen"))
        );
        // A pass heard later does not undo the failure.
        c.verdicts.insert("c2".into(), verdict(true));
        t.merge(c);
        assert_eq!(target_hash(&t, "paris", "c2").as_deref(), Some("old"));
    }

    #[test]
    fn rollback_goes_to_the_push_before_the_acting_one() {
        let s = Scope::Cluster;
        let mut t = Table::default();
        assert_eq!(t.rollback(&s, SlotName::Placement), None);
        t.merge(push(s.clone(), 1, "a", "o", Plan::Direct));
        assert_eq!(t.rollback(&s, SlotName::Placement), Some((2, None)));
        t.merge(push(s.clone(), 2, "b", "o", Plan::Direct));
        t.merge(push(s.clone(), 3, "s", "o", Plan::Shadow { window_ms: 1 }));
        let (seq, to) = t.rollback(&s, SlotName::Placement).expect("rollback");
        assert_eq!((seq, to.map(|b| b.hash)), (4, Some("a".into())));
        assert!(t.shadow("any", SlotName::Placement).is_some());
    }

    #[test]
    fn records_from_peers_are_checked() {
        let good = push(Scope::Cluster, 1, &"a".repeat(64), "12D3KooWpeer", canary(&["c1"]));
        let mut good = good;
        if let Some(b) = good.bundle.as_mut() {
            b.component = "b".repeat(64);
        }
        assert_eq!(good.check(), Ok(()));
        let mut bad = good.clone();
        if let Some(b) = bad.bundle.as_mut() {
            b.hash = "aé".repeat(20);
        }
        assert!(bad.check().is_err(), "a hash that is not hex");
        let mut bad = good.clone();
        bad.verdicts.insert("bystander".into(), verdict(false));
        assert!(bad.check().is_err(), "a verdict from an agent that is not a canary");
        let mut bad = good.clone();
        bad.origin = "a\u{1b}[2J".into();
        assert!(bad.check().is_err(), "an origin that is not a peer id");
        let mut bad = good;
        bad.plan = Plan::Canary { agents: vec![], decisions: 0, window_ms: 0, max_failure_rate: f64::NAN };
        assert!(bad.check().is_err(), "a canary without decisions or rate");
    }

    #[test]
    fn a_verdict_counts_only_signed_by_its_canary_or_the_push_origin() {
        let canary_key = libp2p::identity::Keypair::generate_ed25519();
        let origin_key = libp2p::identity::Keypair::generate_ed25519();
        let stranger = libp2p::identity::Keypair::generate_ed25519();
        let (c, o) =
            (canary_key.public().to_peer_id().to_string(), origin_key.public().to_peer_id().to_string());
        let mut r = push(Scope::Cluster, 1, &"a".repeat(64), &o, canary(&[c.as_str()]));
        if let Some(b) = r.bundle.as_mut() {
            b.component = "b".repeat(64);
        }
        let signed = |key: &libp2p::identity::Keypair, by: &str| verdict(false).sign(&r, &c, by, key);
        let mut ok = r.clone();
        ok.verdicts.insert(c.clone(), signed(&canary_key, &c));
        assert_eq!(ok.check(), Ok(()), "signed by the canary");
        ok.verdicts.insert(c.clone(), signed(&origin_key, &o));
        assert_eq!(ok.check(), Ok(()), "signed by the push's origin (a silent canary)");
        let mut forged = r.clone();
        forged.verdicts.insert(c.clone(), signed(&stranger, &c));
        assert!(forged.check().is_err(), "someone else's key under the canary's name");
        let mut changed = r.clone();
        let mut v = signed(&canary_key, &c);
        v.reason = "something else".into();
        changed.verdicts.insert(c.clone(), v);
        assert!(changed.check().is_err(), "changed after signing");
        let mut unsigned = r;
        unsigned.verdicts.insert(c.clone(), verdict(false));
        assert!(unsigned.check().is_err(), "unsigned");
    }

    fn arb_record() -> impl Strategy<Value = Record> {
        (
            0..2usize,
            1..4u64,
            0..3usize,
            0..2usize,
            prop::collection::btree_map(0..3usize, any::<bool>(), 0..3),
        )
            .prop_map(|(scope, seq, hash, origin, verdicts)| {
                let scope = if scope == 0 { Scope::Cluster } else { Scope::Pop("p".into()) };
                let plan = if hash == 2 { canary(&["a0", "a1", "a2"]) } else { Plan::Direct };
                let mut r = push(scope, seq, &format!("h{hash}"), &format!("o{origin}"), plan);
                r.verdicts = verdicts.into_iter().map(|(a, ok)| (format!("a{a}"), verdict(ok))).collect();
                r
            })
    }

    proptest! {
        /// Agents that hear the same records in any order, with repeats,
        /// end with the same table and the same target on every agent.
        #[test]
        fn merging_converges_whatever_the_order(
            records in prop::collection::vec(arb_record(), 1..12),
            seed in any::<u64>(),
        ) {
            let a = Table::from_records(records.clone());
            let mut shuffled = records.clone();
            shuffled.extend(records.iter().take(seed as usize % records.len()).cloned());
            let n = shuffled.len();
            for i in 0..n {
                shuffled.swap(i, (seed as usize).wrapping_mul(i + 7) % n);
            }
            let b = Table::from_records(shuffled);
            prop_assert_eq!(a.digest(), b.digest());
            for peer in ["a0", "a1", "x"] {
                prop_assert_eq!(target_hash(&a, "p", peer), target_hash(&b, "p", peer));
            }
        }
    }
}
