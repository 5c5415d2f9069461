//! Policies pushed to running agents, per PoP or cluster-wide: the task
//! that takes a signed bundle in through any agent, announces it on the
//! overlay's policy topic, fetches bundles by hash from agents that hold
//! them, verifies and compiles before activating, runs canaries and shadow
//! runs, and gossips each agent's status so that any agent can answer for
//! all of them.
//!
//! Every agent keeps the same [`table::Table`] of pushes (records merge in
//! any order to the same table) and derives from it, on its own, what its
//! slots should run; nothing coordinates the agents but the records. An
//! agent that missed records (it was down, or the gossip mesh was not
//! formed yet) sees another agent's status carry a different digest of
//! the table and asks that agent for its records.

mod canary;
mod fetch;
mod handle;
mod peers;
pub mod shadow;
pub mod status;
pub mod table;

use canary::Canaries;
use fetch::Fetches;
use handle::Command;
pub use handle::{Handle, PushOptions, RolloutError};
use peers::Peers;
pub use status::{AgentStatus, PushView, RolloutStatus, SlotStatus};

use crate::bundle::{self, Bundle};
use crate::overlay::{PolicyEvent, Service, ToOverlay};
use crate::policies::{Policies, SlotName};
use crate::store::Store;
use locus_core::cluster::PeerId as CorePeer;
use locus_policy::Loaded;
use serde::{Deserialize, Serialize};
use shadow::{ShadowReport, Shadows};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use table::{BundleRef, CanaryVerdict, Plan, Record, Scope, Stage, Table, Target};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// How often the task looks at canaries, shadows and fetches to retry.
const TICK: Duration = Duration::from_millis(250);
/// How often an agent gossips its status when nothing changed.
const STATUS_EVERY: Duration = Duration::from_secs(2);
/// How long a slot change that failed for the agent's own reasons waits
/// before it is tried again.
const RETRY_AFTER: Duration = fetch::RETRY_AFTER;

/// A message on the policy topic.
#[derive(Debug, Serialize, Deserialize)]
enum Gossip {
    /// A push, or a push's new verdicts.
    Record(Box<Record>),
    /// An agent's status.
    Status(Box<AgentStatus>),
}

/// A question on the bundle protocol.
#[derive(Debug, Serialize, Deserialize)]
enum Question {
    /// The bundle file with this hash.
    Bundle(String),
    /// Every record the agent knows.
    Records,
}

/// An answer on the bundle protocol.
#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    /// The bundle file.
    Bundle(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The records.
    Records(Vec<Record>),
    /// Not held here.
    Missing,
}

/// What the rollout task needs.
#[derive(Debug)]
pub struct Settings {
    /// This agent's peer id.
    pub peer: CorePeer,
    /// Its host name.
    pub host: String,
    /// Its PoP.
    pub pop: String,
    /// The slots.
    pub policies: Arc<Policies>,
    /// Where pushes and bundles are kept.
    pub store: Arc<Store>,
    /// The overlay.
    pub overlay: mpsc::UnboundedSender<ToOverlay>,
    /// The shadow runs the policy workers call.
    pub shadows: Arc<Shadows>,
    /// The node's key, which signs this agent's canary verdicts.
    pub keypair: libp2p::identity::Keypair,
}

/// Results of work done off the task.
enum Internal {
    Pushed(Box<Result<Checked, String>>, PushOptions, oneshot::Sender<Result<PushView, RolloutError>>),
    Fetched(String, CorePeer, Result<Vec<u8>, String>),
    Applied(SlotName, Option<String>, Result<Arc<Loaded>, Failed>),
    /// A shadow candidate: slot, push id, bundle hash, the compiled version.
    Shadowing(SlotName, String, String, Result<Arc<Loaded>, String>),
    Synced(CorePeer, Result<Vec<u8>, String>),
}

/// Why a slot change did not happen.
enum Failed {
    /// The bundle is not acceptable here: not tried again.
    Refused(String),
    /// The agent could not make the change now (its disk is full, say):
    /// tried again after [`RETRY_AFTER`].
    Later(String),
}

impl From<crate::policies::ChangeError> for Failed {
    fn from(e: crate::policies::ChangeError) -> Self {
        match e {
            crate::policies::ChangeError::Refused(_) => Failed::Refused(e.to_string()),
            crate::policies::ChangeError::NotStored(_) => Failed::Later(e.to_string()),
        }
    }
}

/// A push verified and compiled where it entered.
struct Checked {
    bundle: Bundle,
    file: Vec<u8>,
    loaded: Arc<Loaded>,
}

/// Starts the task; returns the API's handle.
pub fn spawn(
    settings: Settings,
    events: mpsc::UnboundedReceiver<PolicyEvent>,
    cancel: CancellationToken,
) -> (Handle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(64);
    let (internal_tx, internal_rx) = mpsc::unbounded_channel();
    let records: Vec<Record> = settings.store.rollouts().unwrap_or_else(|e| {
        tracing::error!(error = format!("{e:#}"), "stored policy pushes unreadable; peers will resend them");
        Vec::new()
    });
    let table = Table::from_records(records);
    let task = Rollouts {
        me: settings.peer,
        keypair: settings.keypair,
        host: settings.host,
        pop: settings.pop,
        table,
        policies: settings.policies,
        store: settings.store,
        overlay: settings.overlay,
        shadows: settings.shadows,
        internal: internal_tx,
        peers: Peers::default(),
        fetches: Fetches::default(),
        refused: BTreeMap::new(),
        busy: [false; 3],
        wait: [None; 3],
        canaries: Canaries::default(),
        since: Default::default(),
        prepared: None,
        before: Default::default(),
        shadowing: [false; 3],
        finished_shadows: Default::default(),
        dirty: true,
        last_status: Instant::now(),
    };
    let handle = tokio::spawn(task.run(rx, events, internal_rx, cancel));
    (Handle { tx }, handle)
}

struct Rollouts {
    me: CorePeer,
    keypair: libp2p::identity::Keypair,
    host: String,
    pop: String,
    table: Table,
    policies: Arc<Policies>,
    store: Arc<Store>,
    overlay: mpsc::UnboundedSender<ToOverlay>,
    shadows: Arc<Shadows>,
    internal: mpsc::UnboundedSender<Internal>,
    /// The other agents' statuses.
    peers: Peers,
    fetches: Fetches,
    /// Bundles this agent refused, by hash, and why.
    refused: BTreeMap<String, String>,
    /// Slots with a change under way off the task.
    busy: [bool; 3],
    /// Slots whose last change failed for the agent's own reasons, and when
    /// to try again.
    wait: [Option<Instant>; 3],
    canaries: Canaries,
    /// When each slot took the push it runs (by id), Unix ms.
    since: [Option<(String, u64)>; 3],
    /// The last push entered here, compiled when it was checked: the bundle
    /// hash and the version, activated without compiling it again.
    prepared: Option<(String, Arc<Loaded>)>,
    /// The hash each slot ran before a push first took it.
    before: [Option<String>; 3],
    /// Slots whose shadow is being compiled.
    shadowing: [bool; 3],
    /// The last report of each slot's ended shadow run.
    finished_shadows: [Option<ShadowReport>; 3],
    /// Something changed since the last status.
    dirty: bool,
    last_status: Instant,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn view(r: &Record) -> PushView {
    PushView { id: r.id(), stage: r.stage(), record: r.clone() }
}

fn encode<T: Serialize>(value: &T) -> Option<Vec<u8>> {
    crate::overlay::codec::encode(value)
        .map_err(|e| tracing::warn!("cannot encode a policy message: {e}"))
        .ok()
}

fn runs(active: &Loaded, b: &BundleRef) -> bool {
    active.info().hash == b.component && active.info().config == b.config
}

impl Rollouts {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut events: mpsc::UnboundedReceiver<PolicyEvent>,
        mut internal: mpsc::UnboundedReceiver<Internal>,
        cancel: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.reconcile();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(c) = commands.recv() => self.command(c),
                Some(e) = events.recv() => self.event(e),
                Some(i) = internal.recv() => self.internal(i),
                _ = tick.tick() => self.tick(),
            }
            if self.dirty && self.last_status.elapsed() >= Duration::from_millis(100) {
                self.publish_status();
            }
        }
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Push(bytes, options, reply) => {
                if let Err(e) = check_options(&options) {
                    let _ = reply.send(Err(e));
                    return;
                }
                let policies = self.policies.clone();
                let internal = self.internal.clone();
                tokio::spawn(async move {
                    let opened = tokio::task::spawn_blocking(move || {
                        // A push must compile where it enters, so a bad one
                        // is refused there with the compiler's reason,
                        // before any agent hears of it.
                        let bundle = verify(&policies, &bytes)?;
                        let m = &bundle.manifest;
                        let loaded = policies
                            .check(m.slot, &m.name, &bundle.component, m.config.clone())
                            .map_err(|e| e.to_string())?;
                        Ok(Checked { bundle, file: bytes, loaded })
                    })
                    .await
                    .unwrap_or_else(|e| Err(format!("verifying: {e}")));
                    let _ = internal.send(Internal::Pushed(Box::new(opened), options, reply));
                });
            }
            Command::Status(scope, reply) => {
                let _ = reply.send(self.status(scope.as_ref()));
            }
            Command::Rollback(scope, slot, reply) => {
                let _ = reply.send(self.rollback(scope, slot));
            }
        }
    }

    fn event(&mut self, e: PolicyEvent) {
        match e {
            PolicyEvent::Heard(from, bytes) => match crate::overlay::codec::decode::<Gossip>(&bytes) {
                Ok(Gossip::Record(r)) => self.heard_record(*r),
                Ok(Gossip::Status(s)) => self.heard_status(from, *s),
                Err(e) => tracing::warn!(peer = %from, error = %e, "policy gossip refused"),
            },
            PolicyEvent::Asked(crate::overlay::Asked { from, id, bytes }) => {
                let reply = match crate::overlay::codec::decode::<Question>(&bytes) {
                    Ok(Question::Bundle(hash)) => {
                        match tokio::task::block_in_place(|| self.store.bundle(&hash)) {
                            Ok(Some(b)) => Reply::Bundle(b),
                            Ok(None) => Reply::Missing,
                            Err(e) => {
                                tracing::warn!(error = format!("{e:#}"), "cannot read a stored bundle");
                                Reply::Missing
                            }
                        }
                    }
                    Ok(Question::Records) => Reply::Records(self.table.records().cloned().collect()),
                    Err(e) => {
                        tracing::warn!(peer = %from, error = %e, "bundle question refused");
                        Reply::Missing
                    }
                };
                if let Some(bytes) = encode(&reply) {
                    let _ = self.overlay.send(ToOverlay::Answer(Service::Bundles, id, bytes));
                }
            }
        }
    }

    fn heard_record(&mut self, r: Record) {
        if let Err(e) = r.check() {
            tracing::warn!(push = %r.id(), error = %e, "a policy push heard from a peer is refused");
            return;
        }
        if self.table.merge(r) {
            self.table_changed();
        }
    }

    fn heard_status(&mut self, from: CorePeer, s: AgentStatus) {
        // Gossipsub signs messages: the source is the peer that wrote it.
        if s.peer != from.as_str() {
            tracing::warn!(peer = %from, claimed = %s.peer, "a status for another peer is ignored");
            return;
        }
        if self.peers.heard(from.clone(), s, self.table.digest()) {
            self.sync(from);
        }
    }

    fn sync(&mut self, peer: CorePeer) {
        let from = peer.clone();
        self.ask(peer, &Question::Records, move |answer| Internal::Synced(from, answer));
    }

    /// Asks `peer` on the bundle protocol; its answer (or why none came)
    /// comes back to the task as `answered(answer)`.
    fn ask(
        &self,
        peer: CorePeer,
        question: &Question,
        answered: impl FnOnce(Result<Vec<u8>, String>) -> Internal + Send + 'static,
    ) {
        let internal = self.internal.clone();
        let Some(question) = encode(question) else {
            let _ = internal.send(answered(Err("the question could not be encoded".into())));
            return;
        };
        let (tx, rx) = oneshot::channel();
        let _ = self.overlay.send(ToOverlay::Ask(Service::Bundles, peer, question, tx));
        tokio::spawn(async move {
            let answer = rx.await.unwrap_or_else(|_| Err("the overlay stopped".into()));
            let _ = internal.send(answered(answer));
        });
    }

    fn internal(&mut self, i: Internal) {
        match i {
            Internal::Pushed(opened, options, reply) => {
                let _ = reply
                    .send((*opened).map_err(RolloutError::Refused).and_then(|b| self.announce(b, options)));
            }
            Internal::Fetched(hash, from, result) => {
                let bytes = result.and_then(|b| match crate::overlay::codec::decode::<Reply>(&b) {
                    Ok(Reply::Bundle(bytes)) if bundle::sha256(&bytes) == hash => Ok(bytes),
                    Ok(Reply::Bundle(_)) => Err("sent a bundle whose hash is not the one asked for".into()),
                    Ok(_) => Err("does not hold it".into()),
                    Err(e) => Err(e.to_string()),
                });
                match bytes {
                    Ok(bytes) => match tokio::task::block_in_place(|| self.store.put_bundle(&hash, &bytes)) {
                        Ok(()) => {
                            self.fetches.done(&hash, true);
                            tracing::debug!(bundle = %&hash[..12], peer = %from, size = bytes.len(), "bundle fetched");
                            self.reconcile();
                        }
                        Err(e) => {
                            self.fetches.done(&hash, false);
                            tracing::warn!(error = format!("{e:#}"), "a fetched bundle could not be stored")
                        }
                    },
                    Err(e) => {
                        self.fetches.done(&hash, false);
                        tracing::warn!(bundle = %hash.get(..12).unwrap_or(&hash), peer = %from, error = %e, "bundle fetch failed; another holder is asked next");
                    }
                }
            }
            Internal::Applied(slot, bundle, result) => {
                self.busy[slot as usize] = false;
                match result {
                    Ok(loaded) => {
                        self.since[slot as usize] = None;
                        if let Target::Push(r) = self.table.target(&self.pop, self.me.as_str(), slot)
                            && r.bundle.as_ref().is_some_and(|b| runs(&loaded, b))
                        {
                            let push = r.id();
                            self.since[slot as usize] = Some((push.clone(), now_ms()));
                            if r.stage() == Stage::Canary {
                                self.canaries.start(slot, push, loaded);
                            }
                        }
                    }
                    Err(Failed::Later(reason)) => {
                        tracing::warn!(slot = slot.as_str(), %reason, "policy change failed; tried again shortly");
                        self.wait[slot as usize] = Some(Instant::now() + RETRY_AFTER);
                    }
                    Err(Failed::Refused(reason)) => {
                        tracing::warn!(slot = slot.as_str(), %reason, "pushed policy refused");
                        if let Some(hash) = bundle {
                            self.refused.insert(hash.clone(), reason.clone());
                            if let Target::Push(r) = self.table.target(&self.pop, self.me.as_str(), slot)
                                && r.bundle.as_ref().is_some_and(|b| b.hash == hash)
                                && r.is_canary(self.me.as_str())
                            {
                                let verdict = CanaryVerdict::new(false, 0, 0, reason);
                                self.verdict(r.clone(), self.me.as_str().to_owned(), verdict);
                            }
                        }
                    }
                }
                self.dirty = true;
                self.reconcile();
            }
            Internal::Shadowing(slot, push, hash, result) => {
                self.shadowing[slot as usize] = false;
                match result {
                    Ok(loaded) => {
                        tracing::info!(slot = slot.as_str(), %push, candidate = loaded.id(), "shadow run started");
                        self.shadows.set(slot, Some(Arc::new(shadow::Run::new(push, loaded))));
                    }
                    Err(reason) => {
                        tracing::warn!(slot = slot.as_str(), %push, %reason, "shadow candidate refused");
                        self.finished_shadows[slot as usize] = None;
                        self.refused.insert(hash, reason);
                    }
                }
                self.dirty = true;
            }
            Internal::Synced(peer, result) => {
                self.peers.synced(&peer);
                let records = result.and_then(|b| match crate::overlay::codec::decode::<Reply>(&b) {
                    Ok(Reply::Records(r)) => Ok(r),
                    Ok(_) => Err("answered with something else".into()),
                    Err(e) => Err(e.to_string()),
                });
                match records {
                    Ok(records) => {
                        let mut changed = false;
                        for r in records {
                            match r.check() {
                                Ok(()) => changed |= self.table.merge(r),
                                Err(e) => {
                                    tracing::warn!(%peer, push = %r.id(), error = %e, "a policy push from a peer is refused")
                                }
                            }
                        }
                        if changed {
                            tracing::info!(%peer, "missed policy pushes taken from a peer");
                            self.table_changed();
                        }
                    }
                    Err(e) => tracing::debug!(%peer, error = %e, "policy records not synced"),
                }
            }
        }
    }

    /// Stores a verified push, announces it and acts on it.
    fn announce(&mut self, checked: Checked, o: PushOptions) -> Result<PushView, RolloutError> {
        let Checked { bundle: b, file, loaded } = checked;
        let slot = b.manifest.slot;
        let known = self.agents_in(&o.scope);
        if known.is_empty() {
            return Err(RolloutError::Refused(format!(
                "no agent of {} has reported to this one: check the scope's name (a push needs an agent of its scope up)",
                o.scope
            )));
        }
        let plan = match (o.shadow_seconds, o.canary) {
            (Some(s), _) => Plan::Shadow { window_ms: s.saturating_mul(1000) },
            (None, 0) => Plan::Direct,
            (None, n) => Plan::Canary {
                agents: spread(known, &b.hash, n as usize),
                decisions: o.canary_decisions.unwrap_or(20).max(1),
                window_ms: o.canary_seconds.unwrap_or(60).max(1).saturating_mul(1000),
                max_failure_rate: o.max_failure_rate.unwrap_or(0.05),
            },
        };
        tokio::task::block_in_place(|| self.store.put_bundle(&b.hash, &file))
            .map_err(RolloutError::NotStored)?;
        let record = Record {
            seq: self.table.next_seq(&o.scope, slot),
            scope: o.scope,
            slot,
            bundle: Some(BundleRef {
                hash: b.hash.clone(),
                name: b.manifest.name.clone(),
                version: b.manifest.version.clone(),
                component: b.manifest.component.clone(),
                config: b.manifest.config.clone(),
                size: file.len() as u64,
                signer: b.signer.clone(),
            }),
            origin: self.me.as_str().to_owned(),
            pushed_at_ms: now_ms(),
            rollback: false,
            plan,
            verdicts: BTreeMap::new(),
        };
        tracing::info!(push = %record.id(), policy = %b.manifest.name, version = %b.manifest.version, bundle = %&b.hash[..12], "policy pushed");
        self.prepared = Some((b.hash.clone(), loaded));
        self.publish(&record);
        self.table.merge(record.clone());
        self.table_changed();
        Ok(view(&record))
    }

    /// The agents of `scope` this one has heard from lately, itself included.
    fn agents_in(&self, scope: &Scope) -> Vec<String> {
        let mut agents: Vec<String> =
            self.peers.fresh().filter(|s| scope.contains(&s.pop)).map(|s| s.peer.clone()).collect();
        if scope.contains(&self.pop) {
            agents.push(self.me.as_str().to_owned());
        }
        agents
    }

    fn rollback(&mut self, scope: Scope, slot: SlotName) -> Result<PushView, RolloutError> {
        let (seq, bundle) = self.table.rollback(&scope, slot).ok_or_else(|| {
            RolloutError::NotFound(format!(
                "nothing acting was pushed to {scope} for the {} slot",
                slot.as_str()
            ))
        })?;
        let record = Record {
            scope,
            slot,
            seq,
            bundle,
            origin: self.me.as_str().to_owned(),
            pushed_at_ms: now_ms(),
            rollback: true,
            plan: Plan::Direct,
            verdicts: BTreeMap::new(),
        };
        tracing::info!(push = %record.id(), "policy rolled back");
        self.publish(&record);
        self.table.merge(record.clone());
        self.table_changed();
        Ok(view(&record))
    }

    fn publish(&self, r: &Record) {
        if let Some(bytes) = encode(&Gossip::Record(Box::new(r.clone()))) {
            let _ = self.overlay.send(ToOverlay::PolicyGossip(bytes));
        }
    }

    /// Stores the table, then brings the slots in line with it.
    fn table_changed(&mut self) {
        let records: Vec<&Record> = self.table.records().collect();
        let named: BTreeSet<String> =
            records.iter().filter_map(|r| r.bundle.as_ref().map(|b| b.hash.clone())).collect();
        if let Err(e) = tokio::task::block_in_place(|| self.store.set_rollouts(&records, &named)) {
            // Peers resend what a restart forgets; the slots still follow.
            tracing::warn!(error = format!("{e:#}"), "policy pushes not stored");
        }
        self.dirty = true;
        self.reconcile();
    }

    /// Starts whatever change each slot needs to run its target.
    fn reconcile(&mut self) {
        for slot in SlotName::ALL {
            if self.busy[slot as usize] || self.wait[slot as usize].is_some_and(|t| Instant::now() < t) {
                continue;
            }
            let active = self.policies.active(slot);
            match self.table.target(&self.pop, self.me.as_str(), slot) {
                Target::Push(r) => {
                    let Some(b) = r.bundle.clone() else { continue };
                    if active.as_deref().is_some_and(|a| runs(a, &b)) {
                        let id = r.id();
                        if self.since[slot as usize].as_ref().is_none_or(|(p, _)| *p != id) {
                            self.since[slot as usize] = Some((id, now_ms()));
                        }
                        if r.stage() == Stage::Canary
                            && !self.canaries.running(slot)
                            && !r.verdicts.contains_key(self.me.as_str())
                            && let Some(loaded) = active
                        {
                            let push = r.id();
                            self.canaries.start(slot, push, loaded);
                        }
                        continue;
                    }
                    if self.refused.contains_key(&b.hash) {
                        continue;
                    }
                    let origin = CorePeer::from(r.origin.clone());
                    match tokio::task::block_in_place(|| self.store.bundle(&b.hash)) {
                        Ok(Some(file)) => {
                            if !self.pushed(active.as_deref()) {
                                self.before[slot as usize] = active.map(|a| a.info().hash.clone());
                            }
                            self.busy[slot as usize] = true;
                            let policies = self.policies.clone();
                            let internal = self.internal.clone();
                            let prepared =
                                self.prepared.take_if(|(hash, _)| *hash == b.hash).map(|(_, loaded)| loaded);
                            tokio::task::spawn_blocking(move || {
                                let result =
                                    verify(&policies, &file).map_err(Failed::Refused).and_then(|b| {
                                        if b.manifest.slot != slot {
                                            return Err(Failed::Refused(format!(
                                                "the bundle is signed for the {} slot",
                                                b.manifest.slot.as_str()
                                            )));
                                        }
                                        let loaded = match prepared {
                                            Some(loaded) => loaded,
                                            None => policies.check(
                                                slot,
                                                &b.manifest.name,
                                                &b.component,
                                                b.manifest.config.clone(),
                                            )?,
                                        };
                                        policies.activate(slot, loaded.clone(), &b.component)?;
                                        Ok(loaded)
                                    });
                                let _ = internal.send(Internal::Applied(slot, Some(b.hash), result));
                            });
                        }
                        Ok(None) => self.fetch(b.hash, origin),
                        Err(e) => tracing::warn!(error = format!("{e:#}"), "cannot read a stored bundle"),
                    }
                }
                Target::Own => {
                    if !self.pushed(active.as_deref()) {
                        continue;
                    }
                    self.busy[slot as usize] = true;
                    let before = self.before[slot as usize].take();
                    let policies = self.policies.clone();
                    let internal = self.internal.clone();
                    tokio::task::spawn_blocking(move || {
                        let back = match before {
                            Some(hash) => {
                                policies.rollback(slot, Some(&hash)).or_else(|_| policies.reset(slot))
                            }
                            None => policies.reset(slot),
                        };
                        let back = back.map_err(|e| Failed::Later(e.to_string()));
                        let _ = internal.send(Internal::Applied(slot, None, back));
                    });
                }
            }
        }
    }

    /// Whether `active` came from a push this agent knows.
    fn pushed(&self, active: Option<&Loaded>) -> bool {
        active.is_some_and(|a| self.table.records().any(|r| r.bundle.as_ref().is_some_and(|b| runs(a, b))))
    }

    /// Asks a holder for a bundle: the agent the push entered through
    /// first, then the others that report holding it, in turn.
    fn fetch(&mut self, hash: String, origin: CorePeer) {
        let mut holders = self.peers.holders(&hash);
        holders.retain(|p| *p != origin);
        holders.insert(0, origin);
        holders.retain(|p| *p != self.me);
        let Some(peer) = self.fetches.next(&hash, &holders) else { return };
        let from = peer.clone();
        self.ask(peer, &Question::Bundle(hash.clone()), move |answer| Internal::Fetched(hash, from, answer));
    }

    fn tick(&mut self) {
        self.judge_canaries();
        self.run_shadows();
        self.peers.forget_gone();
        self.reconcile();
        if self.last_status.elapsed() >= STATUS_EVERY {
            self.publish_status();
        }
    }

    /// Judges the canaries this agent runs, and, for pushes that entered
    /// here, the canaries that went silent.
    fn judge_canaries(&mut self) {
        let me = canary::Me { peer: self.me.as_str(), host: &self.host, pop: &self.pop };
        let mine = self.canaries.judge(&self.table, &me);
        let silent = canary::silent(&self.table, self.me.as_str(), &self.peers, now_ms());
        let me = self.me.as_str().to_owned();
        for (r, v) in mine {
            self.verdict(r, me.clone(), v);
        }
        for (r, peer, v) in silent {
            self.verdict(r, peer, v);
        }
    }

    /// Adds `peer`'s verdict to a push, signed by this agent, and tells everyone.
    fn verdict(&mut self, mut r: Record, peer: String, v: CanaryVerdict) {
        let v = v.sign(&r, &peer, self.me.as_str(), &self.keypair);
        tracing::info!(push = %r.id(), %peer, passed = v.passed, reason = %v.reason, "canary verdict");
        r.verdicts.insert(peer, v);
        self.publish(&r);
        self.table.merge(r);
        self.table_changed();
    }

    /// Starts the shadow run each slot should have, and ends the ones whose
    /// time is up.
    fn run_shadows(&mut self) {
        let now = now_ms();
        for slot in SlotName::ALL {
            let want = self.table.shadow(&self.pop, slot).filter(|r| {
                matches!(r.plan, Plan::Shadow { window_ms } if r.pushed_at_ms.saturating_add(window_ms) > now)
            });
            let current = self.shadows.get(slot);
            let want_id = want.map(Record::id);
            if current.as_ref().map(|c| c.push().to_owned()) == want_id {
                continue;
            }
            if let Some(c) = current {
                tracing::info!(slot = slot.as_str(), push = c.push(), "shadow run ended");
                self.finished_shadows[slot as usize] = Some(c.report());
                self.shadows.set(slot, None);
                self.dirty = true;
            }
            let (Some(r), Some(id)) = (want, want_id) else { continue };
            let Some(b) = r.bundle.clone() else { continue };
            if self.shadowing[slot as usize] || self.refused.contains_key(&b.hash) {
                continue;
            }
            let origin = CorePeer::from(r.origin.clone());
            match tokio::task::block_in_place(|| self.store.bundle(&b.hash)) {
                Ok(Some(file)) => {
                    self.shadowing[slot as usize] = true;
                    let policies = self.policies.clone();
                    let internal = self.internal.clone();
                    let hash = b.hash.clone();
                    tokio::task::spawn_blocking(move || {
                        let result = verify(&policies, &file).and_then(|b| {
                            policies
                                .check(slot, &b.manifest.name, &b.component, b.manifest.config.clone())
                                .map_err(|e| e.to_string())
                        });
                        let _ = internal.send(Internal::Shadowing(slot, id, hash, result));
                    });
                }
                Ok(None) => self.fetch(b.hash, origin),
                Err(e) => tracing::warn!(error = format!("{e:#}"), "cannot read a stored bundle"),
            }
        }
    }

    fn my_status(&self) -> AgentStatus {
        let slots = SlotName::ALL
            .into_iter()
            .filter_map(|slot| {
                let active = self.policies.active(slot)?;
                let target = self.table.target(&self.pop, self.me.as_str(), slot);
                let (push, stage) = match target {
                    Target::Push(r) if r.bundle.as_ref().is_some_and(|b| runs(&active, b)) => {
                        let stage = if r.stage() == Stage::Canary { "canary" } else { "active" };
                        (Some(r.id()), stage)
                    }
                    _ => (None, "own"),
                };
                let m = active.metrics();
                Some(SlotStatus {
                    slot,
                    policy: active.id().to_owned(),
                    hash: active.info().hash.clone(),
                    since_ms: self.since[slot as usize]
                        .as_ref()
                        .filter(|(p, _)| push.as_ref() == Some(p))
                        .map(|(_, t)| *t),
                    push,
                    stage: stage.into(),
                    calls: m.calls,
                    failures: m.errors.iter().map(|(_, n)| n).sum(),
                })
            })
            .collect();
        let shadows = SlotName::ALL
            .into_iter()
            .filter_map(|slot| {
                self.shadows
                    .get(slot)
                    .map(|r| r.report())
                    .or_else(|| self.finished_shadows[slot as usize].clone())
            })
            .collect();
        let bundles = tokio::task::block_in_place(|| self.store.bundle_hashes())
            .unwrap_or_default()
            .into_iter()
            .filter(|h| !self.refused.contains_key(h))
            .collect();
        AgentStatus {
            peer: self.me.as_str().to_owned(),
            host: self.host.clone(),
            pop: self.pop.clone(),
            at_ms: now_ms(),
            digest: self.table.digest(),
            slots,
            shadows,
            bundles,
            problems: self
                .refused
                .iter()
                .map(|(h, why)| format!("{}: {why}", h.get(..12).unwrap_or(h)))
                .collect(),
        }
    }

    fn publish_status(&mut self) {
        self.dirty = false;
        self.last_status = Instant::now();
        if let Some(bytes) = encode(&Gossip::Status(Box::new(self.my_status()))) {
            let _ = self.overlay.send(ToOverlay::PolicyGossip(bytes));
        }
    }

    fn status(&self, scope: Option<&Scope>) -> RolloutStatus {
        let in_scope = |pop: &str| scope.is_none_or(|s| s.contains(pop));
        let pushes = self
            .table
            .records()
            .filter(|r| match (scope, &r.scope) {
                (None | Some(Scope::Cluster), _) => true,
                (Some(Scope::Pop(p)), s) => s.contains(p),
            })
            .map(view)
            .collect();
        let mut agents = vec![self.my_status()];
        agents.retain(|a| in_scope(&a.pop));
        agents.extend(self.peers.fresh().filter(|s| in_scope(&s.pop)).cloned());
        RolloutStatus { pushes, agents }
    }
}

/// The policy messages as a peer writes them, for tests that play a
/// hostile peer.
#[doc(hidden)]
pub mod wire {
    use super::*;

    /// A record as published on the policy topic.
    pub fn record(r: &Record) -> Vec<u8> {
        encode(&Gossip::Record(Box::new(r.clone()))).unwrap_or_default()
    }

    /// The answer to a bundle question, holding `file`.
    pub fn bundle_reply(file: Vec<u8>) -> Vec<u8> {
        encode(&Reply::Bundle(file)).unwrap_or_default()
    }
    pub use crate::overlay::{BUNDLE_PROTOCOL, POLICY_TOPIC};
}

/// `n` of `agents`, spread by the bundle's hash (another push picks others).
fn spread(mut agents: Vec<String>, bundle: &str, n: usize) -> Vec<String> {
    agents.sort_by_cached_key(|a| bundle::sha256(format!("{bundle}{a}").as_bytes()));
    agents.truncate(n);
    agents
}

/// Checks a push's options before its bundle is verified and compiled.
fn check_options(o: &PushOptions) -> Result<(), RolloutError> {
    let refused = |m: &str| Err(RolloutError::Refused(m.to_owned()));
    match (o.shadow_seconds, o.canary) {
        (Some(_), n) if n > 0 => refused("a push is either a canary or a shadow, not both"),
        (Some(0), _) => refused("a shadow runs for at least a second"),
        (_, 0)
            if o.canary_decisions.is_some() || o.canary_seconds.is_some() || o.max_failure_rate.is_some() =>
        {
            refused("canary_decisions, canary_seconds and max_failure_rate go with canary")
        }
        _ if o.max_failure_rate.is_some_and(|r| !(0.0..=1.0).contains(&r)) => {
            refused("max_failure_rate is a fraction between 0 and 1")
        }
        _ => Ok(()),
    }
}

/// Opens a bundle with the agent's trust; the reason as text.
fn verify(policies: &Policies, file: &[u8]) -> Result<Bundle, String> {
    bundle::open(file, policies.trust()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> PushOptions {
        PushOptions {
            scope: Scope::Cluster,
            canary: 0,
            canary_decisions: None,
            canary_seconds: None,
            max_failure_rate: None,
            shadow_seconds: None,
        }
    }

    #[test]
    fn push_options_that_contradict_each_other_are_refused_with_the_reason() {
        assert!(check_options(&options()).is_ok());
        let both = PushOptions { canary: 1, shadow_seconds: Some(5), ..options() };
        assert!(check_options(&both).is_err_and(|e| e.to_string().contains("not both")));
        let zero = PushOptions { shadow_seconds: Some(0), ..options() };
        assert!(check_options(&zero).is_err());
        let stray = PushOptions { canary_decisions: Some(3), ..options() };
        assert!(check_options(&stray).is_err_and(|e| e.to_string().contains("go with canary")));
        let rate = PushOptions { canary: 2, max_failure_rate: Some(1.5), ..options() };
        assert!(check_options(&rate).is_err_and(|e| e.to_string().contains("between 0 and 1")));
        let canary =
            PushOptions { canary: 2, max_failure_rate: Some(0.1), canary_decisions: Some(5), ..options() };
        assert!(check_options(&canary).is_ok());
    }

    #[test]
    fn canaries_are_spread_by_the_bundle() {
        let agents: Vec<String> = (0..10).map(|i| format!("peer{i}")).collect();
        let a = spread(agents.clone(), "bundle-a", 3);
        assert_eq!(a.len(), 3);
        assert_eq!(a, spread(agents.clone(), "bundle-a", 3), "the same bundle, the same canaries");
        assert_ne!(a, spread(agents.clone(), "bundle-b", 3), "another bundle, others");
        assert_eq!(spread(agents, "x", 20).len(), 10);
    }
}
