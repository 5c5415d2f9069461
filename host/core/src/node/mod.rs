//! The node: one host's scheduling state machine, sans IO.
//!
//! The agent (or the simulator) feeds it [`Input`]s — API requests,
//! hypervisor results and observations, timeouts — and drains [`Output`]s
//! until it gets [`Output::Timeout`]: changes to persist, hypervisor
//! commands, replies and events. The node never waits, never reads a clock
//! and never touches libvirt, a socket or a disk; time comes in with every
//! input.
//!
//! Ordering contract for the shell: the [`Output::Persist`] changes drained
//! in one round are made durable before any command or reply of that round
//! is carried out, so intent is always written before it is acted on. The
//! shell then says [`Input::Recorded`]; when it cannot write (a full disk),
//! it withholds the round's commands for the VMs it could not record and
//! says [`Input::NotRecorded`], and the node puts those VMs back as the
//! store has them and answers the requests that depended on them.
//!
//! Policies run beside the node, not inside it: the node asks with
//! [`Output::Decide`] and takes the answer as [`Input::Decided`], the way it
//! treats hypervisor commands, so reads, heartbeats and other VMs'
//! operations never wait for a policy. An answer is checked against the
//! node's state when it arrives (room may have been taken meanwhile); one
//! that does not come within `decision-timeout-ms` is decided by the
//! built-in fallback.
//!
//! Commands to the hypervisor must be idempotent (starting a running
//! domain, destroying a stopped one or undefining a missing one succeed):
//! after a crash the node repeats whatever it cannot know was done.

pub mod api;
mod evacuation;
mod handoff;
mod journal;
mod overlay;
mod probes;
mod rebalancing;
mod slots;
mod timers;

use crate::cluster::{Gossip, Membership, MembershipConfig, PeerId, PeerMap, Topic, Transition};
use crate::hypervisor::{
    DomainSeen, DomainState, HvCommand, HvError, HvErrorKind, Inventory, Observation, OpId,
};
use crate::intent::{Change, Desired, VmIntent};
use crate::load::{LoadState, LoadTracker};
use crate::model::{HostId, HostState, Model, VmId};
use crate::pipeline::{Placer, Question};
use crate::policy::{PolicyError, Verdict};
use crate::request::Location;
pub use api::{
    ApiError, ApiErrorKind, ClusterStatus, Command, Departure, DrainStatus, HostStatus, HypervisorStatus,
    InboundId, MemberStatus, OutboundId, PeerRequest, PeerResponse, PopStatus, Reply, ReqId, Size, VmCounts,
    VmStatus,
};
use journal::Journal;
use locus_sdk::{Placement, Resources};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};
use timers::{Timer, Timers};

/// The PoP this node's host belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct PopConfig {
    /// The PoP's name, shared by every host in it.
    pub name: String,
    /// Jurisdiction code (e.g. an ISO country code) of the PoP.
    pub jurisdiction: String,
    /// Where the PoP is.
    pub location: Location,
    /// Unused renewable power available to the PoP, watts.
    pub renewable_watts: u32,
    /// Grid carbon intensity, gCO2/kWh.
    pub carbon_g_per_kwh: u32,
}

impl Default for PopConfig {
    fn default() -> Self {
        PopConfig {
            name: "local".into(),
            jurisdiction: "XX".into(),
            location: Location { lat: 0.0, lon: 0.0 },
            renewable_watts: 0,
            carbon_g_per_kwh: 300,
        }
    }
}

/// This host's resources as offered to VMs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct HostConfig {
    /// The host's name, unique in the cluster; also marks the domains it owns.
    pub name: String,
    /// vCPUs offered; default: the hypervisor's CPUs × `cpu-allocation-ratio`.
    pub vcpus: Option<u32>,
    /// Memory offered, MiB; default: the hypervisor's memory minus `reserved-memory-mib`.
    pub memory_mib: Option<u32>,
    /// Disk offered, GiB.
    pub disk_gib: u32,
    /// vCPUs offered per physical CPU when `vcpus` is not set.
    pub cpu_allocation_ratio: f32,
    /// Memory kept for the host itself when `memory-mib` is not set, MiB.
    pub reserved_memory_mib: u32,
    /// Power drawn idle, watts.
    pub idle_watts: u32,
    /// Power drawn at full load, watts.
    pub max_watts: u32,
    /// Power drawn in standby, watts.
    pub standby_watts: u32,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            name: "host".into(),
            vcpus: None,
            memory_mib: None,
            disk_gib: 1024,
            cpu_allocation_ratio: 4.0,
            reserved_memory_mib: 0,
            idle_watts: 100,
            max_watts: 300,
            standby_watts: 10,
        }
    }
}

/// Timing of the node's own decisions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct TimingConfig {
    /// How long a guest gets to shut down before it is powered off, ms.
    pub stop_timeout_ms: u64,
    /// Delay before the second restart of a VM that keeps stopping, ms;
    /// it doubles with each restart.
    pub restart_backoff_ms: u64,
    /// Longest delay between restarts, ms.
    pub restart_backoff_max_ms: u64,
    /// How long a placement waits for the policy's answer before the
    /// built-in fallback decides, ms. Far above a call's own deadline: it
    /// covers a queue of decisions when requests come faster than the
    /// policy answers.
    pub decision_timeout_ms: u64,
    /// Time a live migration is given per GiB it copies (memory and
    /// disk) before it is aborted, ms; at least a minute.
    pub migration_timeout_ms_per_gib: u64,
}

impl Default for TimingConfig {
    fn default() -> Self {
        TimingConfig {
            stop_timeout_ms: 30_000,
            restart_backoff_ms: 1_000,
            restart_backoff_max_ms: 60_000,
            decision_timeout_ms: 5_000,
            migration_timeout_ms_per_gib: 800_000,
        }
    }
}

/// How many migrations may run at once (`[moves]`): each takes a host's
/// network and its guest's dirty pages, and a PoP's links are shared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct MovesConfig {
    /// Moves leaving one host at once (Nova's default is 1 too).
    pub max_out_per_host: u32,
    /// Moves arriving on one host at once.
    pub max_in_per_host: u32,
    /// Moves leaving the hosts of one PoP at once; the PoP's speaker
    /// grants the slots.
    pub max_per_pop: u32,
}

impl Default for MovesConfig {
    fn default() -> Self {
        MovesConfig { max_out_per_host: 1, max_in_per_host: 1, max_per_pop: 4 }
    }
}

impl MovesConfig {
    /// Refuses a bound of 0, which would keep every move waiting.
    pub fn check(&self) -> Result<(), String> {
        if self.max_out_per_host == 0 || self.max_in_per_host == 0 || self.max_per_pop == 0 {
            return Err("moves.max-out-per-host, max-in-per-host and max-per-pop must be at least 1".into());
        }
        Ok(())
    }
}

/// When an empty host goes to standby (`[energy]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct EnergyConfig {
    /// A host with no VM for this long goes to standby, ms (0: never).
    pub standby_after_ms: u64,
}

impl Default for EnergyConfig {
    fn default() -> Self {
        EnergyConfig { standby_after_ms: 600_000 }
    }
}

/// Longest a graceful stop may wait for its guest before powering it off,
/// whatever a request or the configuration asks: an operation always ends.
pub const MAX_STOP_TIMEOUT: Duration = Duration::from_secs(600);

/// Names a question to the placement policy; echoed in [`Input::Decided`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DecisionId(pub u64);

/// Everything a node is configured with.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeConfig {
    /// Its overlay identity.
    pub peer: PeerId,
    /// Heartbeats and failure detection.
    pub membership: MembershipConfig,
    /// Its PoP.
    pub pop: PopConfig,
    /// Its host.
    pub host: HostConfig,
    /// Its timers.
    pub timing: TimingConfig,
    /// When it counts as overloaded or underloaded.
    pub load: crate::load::LoadConfig,
    /// Cooperative rebalancing.
    pub rebalance: crate::rebalance::RebalanceConfig,
    /// Standby of empty hosts.
    pub energy: EnergyConfig,
    /// Bounds on concurrent migrations.
    pub moves: MovesConfig,
}

/// What happens to the node.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// An API request.
    Api {
        /// When it arrived.
        now: Instant,
        /// Its id, echoed in the reply.
        req: ReqId,
        /// What is asked.
        cmd: Command,
    },
    /// A hypervisor command finished.
    Hypervisor {
        /// When its result arrived.
        now: Instant,
        /// The command's id.
        op: OpId,
        /// The domain's state afterwards, or the failure.
        result: Result<DomainState, HvError>,
    },
    /// The hypervisor is reachable (at start or again): what it has.
    HypervisorUp {
        /// When.
        now: Instant,
        /// The host it describes.
        inventory: Inventory,
        /// Every domain.
        domains: Observation,
    },
    /// The hypervisor cannot be reached any more (or could not be at start).
    HypervisorDown {
        /// When.
        now: Instant,
        /// Why.
        reason: String,
    },
    /// How far a live migration (a [`HvCommand::MigrateOut`] in flight)
    /// has got.
    MigrationProgress {
        /// When it was sampled.
        now: Instant,
        /// The migration's command.
        op: OpId,
        /// Its job statistics.
        progress: crate::hypervisor::MigrationProgress,
    },
    /// A periodic sample of every domain (the Local Resources Tracker).
    Sampled {
        /// When.
        now: Instant,
        /// Every domain.
        domains: Observation,
    },
    /// Gossip heard from a peer.
    Gossip {
        /// When.
        now: Instant,
        /// The peer that published it.
        from: PeerId,
        /// What it said.
        msg: Gossip,
    },
    /// A request from another agent.
    PeerRequest {
        /// When.
        now: Instant,
        /// The sender.
        from: PeerId,
        /// Echo in [`Output::Respond`].
        id: InboundId,
        /// What it asks.
        req: PeerRequest,
    },
    /// The answer to an [`Output::Request`], or why none came.
    PeerResponse {
        /// When.
        now: Instant,
        /// The request's id.
        id: OutboundId,
        /// The answer, or a transport failure.
        result: Result<PeerResponse, String>,
    },
    /// Where a VM runs, as the overlay's records say (answer to [`Output::Locate`]).
    Located {
        /// When.
        now: Instant,
        /// The VM.
        vm: String,
        /// Its record, if one was found.
        at: Option<Box<crate::cluster::VmLocation>>,
    },
    /// The overlay connected to a peer it was not connected to: the
    /// first such peer after the agent starts is asked for every PoP it
    /// knows (see [`PeerRequest::Pops`]).
    Connected {
        /// When.
        now: Instant,
        /// The peer.
        peer: PeerId,
    },
    /// A round trip to a peer was measured.
    Rtt {
        /// When.
        now: Instant,
        /// The peer.
        peer: PeerId,
        /// The round trip.
        rtt: Duration,
    },
    /// The placement policy answered an [`Output::Decide`].
    Decided {
        /// When the answer arrived.
        now: Instant,
        /// The question's id.
        id: DecisionId,
        /// The question, handed back.
        question: Box<Question>,
        /// The policy's answer.
        answer: Result<Verdict<Placement>, PolicyError>,
    },
    /// The policy answered an [`Output::Plan`].
    Planned {
        /// When the answer arrived.
        now: Instant,
        /// The question's id.
        id: u64,
        /// The plan, validated against the partition, or why there is none.
        answer: Result<Verdict<Vec<locus_sdk::Migration>>, PolicyError>,
    },
    /// The deadline the node last asked for has passed.
    Timeout(Instant),
    /// Stop taking requests and finish what is in flight.
    Shutdown(Instant),
    /// The last round's [`Output::Persist`] changes are durable.
    Recorded,
    /// The last round's changes could not be written, and the shell
    /// withheld its hypervisor commands for the VMs they were about.
    NotRecorded {
        /// When.
        now: Instant,
        /// Why, for the clients whose requests are undone.
        reason: String,
        /// Whether for lack of space (507) rather than another fault (503).
        no_space: bool,
    },
    /// The state directory is short of space (the shell's reserve is in
    /// use) or has room again. While short, creates and starts are refused;
    /// stops and deletes go on.
    Storage {
        /// When.
        now: Instant,
        /// Short of space.
        low: bool,
    },
    /// The host's image store changed: the keys of what it holds now
    /// ([`crate::request::image_key`]). Placement sees it at once, the
    /// PoP-mates with the next host summary.
    Images {
        /// When.
        now: Instant,
        /// The keys, any order.
        keys: Vec<u64>,
    },
    /// The PoP's energy changed: the renewable power it has unused and its
    /// grid's carbon intensity now (a feed the shell follows). Placement
    /// sees it at once, the other PoPs with the next PoP summary.
    Energy {
        /// When.
        now: Instant,
        /// Unused renewable power, watts.
        renewable_watts: u32,
        /// Grid carbon intensity, gCO2/kWh.
        carbon_g_per_kwh: u32,
    },
}

/// What the node wants done.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Make this change to the stored intent durable (before the commands
    /// and replies that follow it).
    Persist(Change),
    /// Carry out a hypervisor command and report its result with `op`.
    Hypervisor {
        /// Echo in [`Input::Hypervisor`].
        op: OpId,
        /// What to do.
        cmd: HvCommand,
    },
    /// Ask the placement policy; answer with [`Input::Decided`]. Any
    /// number may be in flight, and answers may come in any order.
    Decide {
        /// Echo in the answer.
        id: DecisionId,
        /// What to decide.
        question: Box<Question>,
    },
    /// Ask the migration policy (or, for consolidation, the consolidation
    /// policy) for a plan; answer with [`Input::Planned`].
    Plan {
        /// Echo in the answer.
        id: u64,
        /// What to plan.
        question: Box<crate::rebalance::PlanQuestion>,
    },
    /// Answer an API request.
    Reply {
        /// The request.
        req: ReqId,
        /// The answer.
        reply: Result<Reply, ApiError>,
    },
    /// Publish gossip.
    Gossip {
        /// Where.
        topic: Topic,
        /// What.
        msg: Gossip,
    },
    /// Send a request to another agent; answer with [`Input::PeerResponse`].
    Request {
        /// Echo in the answer.
        id: OutboundId,
        /// The agent.
        to: PeerId,
        /// What to ask.
        req: PeerRequest,
    },
    /// Answer a peer's request.
    Respond {
        /// The request.
        id: InboundId,
        /// The answer.
        resp: PeerResponse,
    },
    /// Connect to this peer (to measure the latency to its PoP).
    Dial(PeerId),
    /// Record in the overlay where `vm` runs and what it is (`at`), or
    /// that this host no longer runs it (None).
    Announce {
        /// The VM.
        vm: String,
        /// Its record, when it runs here.
        at: Option<Box<crate::cluster::VmLocation>>,
    },
    /// Find which agent runs `vm`; answer with [`Input::Located`].
    Locate(String),
    /// Something an operator should hear about.
    Event(Event),
    /// Nothing more for now; wake the node at this instant (None: only on input).
    Timeout(Option<Instant>),
    /// The host goes to standby (`true`: run the power-down command) or
    /// wakes from it (`false`: run the wake command).
    Power {
        /// Into standby, or out of it.
        standby: bool,
    },
    /// Keep this record of a decision about a VM (the agent stamps its time).
    Record(Box<crate::record::Record>),
    /// Shutting down and nothing is in flight: the shell may exit.
    Closed,
}

/// Something worth a log line.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The hypervisor came up with this inventory.
    HypervisorUp(Inventory),
    /// The hypervisor went away.
    HypervisorDown(String),
    /// A running domain matching intent was found (after a restart).
    Adopted(String),
    /// A VM with intent had no domain; it is being defined again.
    Recreating(String),
    /// A VM that should run was found stopped; the restart policy starts it.
    Restarting {
        /// The VM.
        vm: String,
        /// Restarts so far, this one included.
        restarts: u32,
    },
    /// A VM that should run was found stopped and its policy says leave it.
    LeftStopped(String),
    /// A VM that should be stopped was found running; it is being stopped.
    Stopping(String),
    /// A domain marked as this host's has no intent; the overlay's
    /// record of its VM decides whether it is adopted or removed.
    Orphan(String),
    /// A domain with no intent was taken back: the overlay's record names
    /// it the current copy.
    Reclaimed {
        /// The VM.
        vm: String,
        /// Its generation.
        generation: u64,
    },
    /// A member's liveness changed.
    Member(Transition),
    /// A VM of a dead host was created again on another host.
    Evacuated {
        /// The VM.
        vm: String,
        /// The dead host.
        from: String,
        /// Where it runs now, or why it could not be created again.
        to: Result<String, String>,
    },
    /// This host's copy of a VM is stale (the VM runs elsewhere with a
    /// newer generation) and is removed.
    Stale {
        /// The VM.
        vm: String,
        /// The host with the current copy.
        current: String,
        /// Generations: this copy's and the current one's.
        generations: (u64, u64),
    },
    /// A request was handed to another agent.
    Handed {
        /// The VM.
        vm: String,
        /// To whom.
        to: String,
        /// Why.
        why: String,
    },
    /// The placement policy did not decide; the built-in fallback did.
    FellBack {
        /// The VM.
        vm: String,
        /// What went wrong with the policy.
        failure: String,
    },
    /// The host's load changed state (sustained for the configured samples).
    Load {
        /// The new state.
        state: LoadState,
        /// CPU demand of its VMs, milli-CPUs.
        demand_cpu_milli: u32,
        /// Its physical CPUs, milli-CPUs.
        capacity_cpu_milli: u32,
    },
    /// A VM starts moving to another host.
    Moving {
        /// The VM.
        vm: String,
        /// The destination host.
        to: String,
        /// By live migration (else cold: powered off here, booted there).
        live: bool,
    },
    /// A VM moved away.
    Moved {
        /// The VM.
        vm: String,
        /// Where it runs now.
        to: String,
    },
    /// A VM is about to arrive from another host.
    Arriving {
        /// The VM.
        vm: String,
        /// The source host.
        from: String,
    },
    /// A VM arrived and is this host's now.
    Arrived {
        /// The VM.
        vm: String,
        /// The source host.
        from: String,
    },
    /// Cooperative rebalancing: an event started, grew, planned, moved.
    Rebalance(String),
    /// A rebalancing event this host led ended.
    Rebalanced(crate::rebalance::EventReport),
    /// The host went to standby or woke from it.
    Power {
        /// In standby now.
        standby: bool,
        /// Why.
        why: String,
    },
    /// A move of a VM of this host failed or was called off; it stays here.
    NotMoved {
        /// The VM.
        vm: String,
        /// Why.
        error: String,
    },
    /// A hypervisor command failed outside any request.
    Failed {
        /// The VM.
        vm: String,
        /// The error.
        error: String,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::HypervisorUp(i) => {
                write!(f, "hypervisor up: {} ({} CPUs, {} MiB)", i.hypervisor, i.cpus, i.memory_mib)
            }
            Event::Load { state, demand_cpu_milli, capacity_cpu_milli } => {
                let what = match state {
                    LoadState::Overloaded => "overloaded",
                    LoadState::Underloaded => "underloaded",
                    LoadState::Normal => "back to normal load",
                };
                write!(
                    f,
                    "host {what}: CPU demand {:.2} of {:.2} CPUs",
                    f64::from(*demand_cpu_milli) / 1000.0,
                    f64::from(*capacity_cpu_milli) / 1000.0
                )
            }
            Event::HypervisorDown(r) => write!(f, "hypervisor unavailable: {r}"),
            Event::Adopted(vm) => write!(f, "vm {vm}: adopted its running domain"),
            Event::Recreating(vm) => {
                write!(f, "vm {vm}: intended but missing from the hypervisor; defining it again")
            }
            Event::Restarting { vm, restarts } => {
                write!(f, "vm {vm}: found stopped while it should run; restart {restarts}")
            }
            Event::Stopping(vm) => {
                write!(f, "vm {vm}: found running while it should be stopped; stopping it")
            }
            Event::LeftStopped(vm) => {
                write!(f, "vm {vm}: found stopped; restart policy is never, left stopped")
            }
            Event::Orphan(vm) => write!(
                f,
                "domain {vm} is marked as this host's but has no intent; the overlay's record of it decides"
            ),
            Event::Reclaimed { vm, generation } => write!(
                f,
                "vm {vm}: its domain had no intent here; the overlay's record names it the current copy \
                 (generation {generation}); it is this host's again"
            ),
            Event::Failed { vm, error } | Event::NotMoved { vm, error } => write!(f, "vm {vm}: {error}"),
            Event::Moving { vm, to, live: true } => write!(f, "vm {vm}: live-migrating to host {to}"),
            Event::Moving { vm, to, live: false } => write!(
                f,
                "vm {vm}: moving cold to host {to} (the hypervisors cannot live-migrate: powered off here, booted there)"
            ),
            Event::Moved { vm, to } => write!(f, "vm {vm}: moved to host {to}"),
            Event::Rebalance(line) => write!(f, "rebalancing: {line}"),
            Event::Rebalanced(r) if r.solved => {
                write!(f, "rebalancing: event {}: solved in {} ms: {}", r.event, r.duration_ms, r.outcome)
            }
            Event::Rebalanced(r) => {
                write!(f, "rebalancing: event {}: ended unsolved: {}", r.event, r.outcome)
            }
            Event::Power { standby: true, why } => write!(f, "host in standby: {why}"),
            Event::Power { standby: false, why } => write!(f, "host woken from standby: {why}"),
            Event::Evacuated { vm, from, to: Ok(to) } => {
                write!(f, "vm {vm}: its host {from} is dead; created again on host {to}")
            }
            Event::Evacuated { vm, from, to: Err(why) } => {
                write!(f, "vm {vm}: its host {from} is dead; not created again: {why}")
            }
            Event::Stale { vm, current, generations: (mine, theirs) } => write!(
                f,
                "vm {vm}: this copy (generation {mine}) is stale: host {current} runs generation {theirs}; removing it"
            ),
            Event::Arriving { vm, from } => write!(f, "vm {vm}: arriving from host {from}"),
            Event::Arrived { vm, from } => {
                write!(f, "vm {vm}: arrived from host {from}; it is this host's now")
            }
            Event::FellBack { vm, failure } => {
                write!(f, "vm {vm}: placed by the built-in fallback: {failure}")
            }
            Event::Handed { vm, to, why } => write!(f, "vm {vm}: handed to {to} ({why})"),
            Event::Member(t) => {
                let liveness = match t.liveness {
                    crate::cluster::Liveness::Alive => "alive",
                    crate::cluster::Liveness::Suspect => "suspect",
                    crate::cluster::Liveness::Dead => "dead",
                };
                write!(f, "host {} (pop {}, peer {}) is {liveness}", t.host, t.pop, t.peer)?;
                if t.liveness == crate::cluster::Liveness::Dead && !t.vms.is_empty() {
                    write!(
                        f,
                        "; its {} VM(s) are lost, save those with restart always, which its PoP creates again: {}",
                        t.vms.len(),
                        t.vms.join(", ")
                    )?;
                }
                Ok(())
            }
        }
    }
}

/// Why a VM is busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Create,
    Start,
    Stop,
    Delete,
    Restart,
    Recreate,
    /// Moving to another host (the source's side of a hand-off).
    MoveOut,
    /// Arriving from another host (the destination's side).
    MoveIn,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Purpose::Create => "creating",
            Purpose::Start => "starting",
            Purpose::Stop => "stopping",
            Purpose::Delete => "deleting",
            Purpose::Restart => "restarting",
            Purpose::Recreate => "recreating",
            Purpose::MoveOut => "moving",
            Purpose::MoveIn => "arriving",
        }
    }

    /// What a client asks for (the others are the agent's own repairs).
    fn asked(self) -> bool {
        matches!(self, Purpose::Create | Purpose::Start | Purpose::Stop | Purpose::Delete)
    }

    fn verb(self) -> &'static str {
        match self {
            Purpose::Create => "create",
            Purpose::Start | Purpose::Restart => "start",
            Purpose::Stop => "stop",
            Purpose::Delete => "delete",
            Purpose::Recreate => "define",
            Purpose::MoveOut | Purpose::MoveIn => "move",
        }
    }
}

/// The step a task is at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Define,
    Start,
    Shutdown,
    /// The guest was asked to shut down; waiting for it to stop or for the
    /// deadline ([`Timer::StopDeadline`]).
    AwaitShutoff,
    Destroy,
    Undefine,
    /// Waiting for the other agent of a hand-off.
    Handoff,
    /// Live-migrating to the destination.
    Migrate,
    /// Preparing to receive a VM.
    Receive,
    /// Marking an arrived domain as this host's.
    Adopt,
    /// Ending a migration job left by a crash and looking at the domain.
    Settle,
}

/// An operation on one VM, possibly several commands long.
#[derive(Debug, Clone)]
struct Task {
    purpose: Purpose,
    step: Step,
    /// The command in flight, if one is.
    op: Option<OpId>,
    /// Who to answer when it ends.
    origin: Option<Origin>,
    /// How long a graceful stop may take.
    stop_timeout: Duration,
    /// The failure that ends a create after its rollback.
    failure: Option<ApiError>,
    /// A move: the VM as its destination reported it once arrived.
    moved: Option<Box<VmStatus>>,
    /// An arrival by live migration.
    live: bool,
    /// A live migration out: how far it has got.
    progress: Option<crate::hypervisor::MigrationProgress>,
}

impl Task {
    fn new(purpose: Purpose, step: Step, origin: Option<Origin>) -> Self {
        Task {
            purpose,
            step,
            op: None,
            origin,
            stop_timeout: Duration::ZERO,
            failure: None,
            moved: None,
            live: false,
            progress: None,
        }
    }
}

/// Who asked: a local API client or another agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Api(ReqId),
    Peer(InboundId),
    /// A move of a rebalancing plan this host leads.
    Plan(u64),
    /// A VM of a dead host this host re-creates as its PoP's speaker.
    Evacuation,
}

/// One VM: intent, what was last seen, what is going on.
#[derive(Debug, Clone)]
struct VmRecord {
    intent: VmIntent,
    id: VmId,
    seen: Option<DomainSeen>,
    task: Option<Task>,
    restarts: u32,
    restart_not_before: Option<Instant>,
    last_error: Option<String>,
    /// An accepted operation the hypervisor was unavailable for, and why.
    pending: Option<String>,
    /// A stopped VM with restart policy never was already reported.
    reported_stopped: bool,
}

impl VmRecord {
    fn state(&self) -> DomainState {
        self.seen.as_ref().map_or(DomainState::Unknown, |d| d.state)
    }
}

/// This host's VMs by name, with a count of the changes to the set of
/// names: each heartbeat asks whether the set changed since it was last
/// published, and the count answers without comparing the names.
#[derive(Debug, Default)]
struct Vms {
    map: BTreeMap<String, VmRecord>,
    version: u64,
}

impl std::ops::Deref for Vms {
    type Target = BTreeMap<String, VmRecord>;

    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl Vms {
    fn insert(&mut self, name: String, record: VmRecord) -> Option<VmRecord> {
        let old = self.map.insert(name, record);
        if old.is_none() {
            self.version += 1;
        }
        old
    }

    fn remove(&mut self, name: &str) -> Option<VmRecord> {
        let old = self.map.remove(name);
        if old.is_some() {
            self.version += 1;
        }
        old
    }

    fn get_mut(&mut self, name: &str) -> Option<&mut VmRecord> {
        self.map.get_mut(name)
    }

    /// The set's version and its names, in order, for the beacon.
    fn names(&self) -> (u64, std::collections::btree_map::Keys<'_, String, VmRecord>) {
        (self.version, self.map.keys())
    }
}

/// The hypervisor as the node last heard of it.
#[derive(Debug, Clone, PartialEq)]
enum Hypervisor {
    Connecting,
    Up(Inventory),
    Down(String),
}

/// One host's state machine. See the module documentation.
pub struct Node {
    config: NodeConfig,
    model: Model,
    host: HostId,
    placer: Placer,
    /// Placements waiting for the policy's answer.
    deciding: HashMap<DecisionId, overlay::Deciding>,
    next_decision: u64,
    vms: Vms,
    /// Names of domains this node does not own.
    others: BTreeSet<String>,
    /// Domains marked as this host's at the last observation.
    own_domains: u32,
    /// Domains marked as this host's that have no intent, at the last observation.
    orphans: BTreeMap<String, evacuation::Orphan>,
    hypervisor: Hypervisor,
    membership: Membership,
    /// PoP-mates' hosts in the model, by peer.
    remote_hosts: PeerMap<HostId>,
    /// Requests sent to other agents and what they are for.
    outbound: HashMap<OutboundId, overlay::Outbound>,
    next_outbound: u64,
    /// Every deadline, with its reason.
    timers: Timers,
    /// Requests about a VM waiting for the overlay's records to say where
    /// it is, then passed to its agent.
    locating: HashMap<String, Vec<(Origin, PeerRequest)>>,
    /// Names of creates entering here whose lookup in the overlay's records
    /// (is the name taken in another PoP?) has not concluded, with the
    /// creates already decided meanwhile, parked until it does.
    naming: HashMap<String, Vec<(overlay::Deciding, crate::pipeline::Decision)>>,
    /// Names recorded in another PoP, waiting for that PoP's agent to say
    /// whether it still runs the VM.
    confirming: HashMap<OutboundId, String>,
    ops: HashMap<OpId, String>,
    next_op: u64,
    now: Option<Instant>,
    outputs: VecDeque<Output>,
    /// What the store holds and this round's unconfirmed writes.
    journal: Journal,
    /// The state directory is short of space: creates and starts wait.
    storage_low: bool,
    /// Whether the host is overloaded or underloaded.
    load: LoadTracker,
    /// Requests whose answer waits for their change to be stored.
    awaiting_record: Vec<(Origin, String)>,
    /// Moves between hosts: waiting, under way, a drain.
    moves: handoff::Moves,
    /// Cooperative rebalancing: the event it leads or is part of.
    rebalancer: crate::rebalance::Rebalancer,
    /// Rebalancing messages and plan moves awaiting their answers.
    rebalancing: rebalancing::Outstanding,
    /// VMs of dead hosts this host is looking up to create again, by the dead host.
    evacuating: BTreeMap<String, String>,
    /// VMs of dead hosts being created again, by the dead host.
    evacuated_from: HashMap<String, String>,
    /// VMs also listed by a PoP-mate, being compared with its copy.
    conflicts: HashMap<OutboundId, String>,
    /// The PoP-mates' holders and this host's VMs (their versions) at the
    /// last look for copies: until either changes there is nothing new.
    copies_seen: Option<(u64, u64)>,
    /// What this host said on the overlay, to decide what it says next.
    beacon: crate::beacon::Beacon,
    /// PoP-mates asked for their whole list of VMs, by request.
    asked_vms: HashMap<OutboundId, PeerId>,
    /// PoP-mates asked for the latest summary they published, by request.
    asked_summary: HashMap<OutboundId, PeerId>,
    /// Every PoP known, asked of the first peer connected after start.
    book: overlay::BookPull,
    /// The probes of PoP-mates, for their liveness.
    probes: probes::Probes,
    /// In standby (powered down until a VM needs this host).
    standby: bool,
    /// Since when the host has had no VM.
    empty_since: Option<Instant>,
    /// VMs whose overlay record is being looked up to check this copy is current.
    verifying: BTreeSet<String>,
    /// When copies were last checked against the records.
    verified_at: Option<Instant>,
    closing: bool,
    closed: bool,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("host", &self.config.host.name)
            .field("vms", &self.vms.len())
            .field("hypervisor", &self.hypervisor)
            .field("ops", &self.ops.len())
            .finish_non_exhaustive()
    }
}

/// Why a node could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// The PoP or host configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Node {
    /// A node for one host, with the intent stored before (in any order).
    pub fn new(config: NodeConfig, intents: Vec<VmIntent>) -> Result<Self, NodeError> {
        let mut model = Model::new();
        let (pop, host) = (&config.pop, &config.host);
        if !crate::request::valid_name(&host.name) {
            return Err(NodeError::Config(format!("host name {:?} breaks the naming rule", host.name)));
        }
        model
            .add_pop(
                &pop.name,
                &pop.jurisdiction,
                pop.location.into(),
                pop.renewable_watts,
                pop.carbon_g_per_kwh,
            )
            .map_err(|e| NodeError::Config(e.to_string()))?;
        let host_id = model
            .add_host(&host.name, &pop.name, Resources::default(), 0, (host.idle_watts, host.max_watts))
            .map_err(|e| NodeError::Config(e.to_string()))?;
        model.set_host_state(host_id, HostState::Down);
        model.set_standby_watts(host_id, host.standby_watts);
        let membership = Membership::new(config.membership.clone(), config.peer.clone(), pop.name.clone())
            .at(pop.location);
        let load = LoadTracker::new(config.load.clone());
        let rebalancer = crate::rebalance::Rebalancer::new(config.rebalance.clone(), host.name.clone());
        let mut node = Node {
            config,
            model,
            host: host_id,
            placer: Placer::new(),
            deciding: HashMap::new(),
            next_decision: 0,
            vms: Vms::default(),
            others: BTreeSet::new(),
            own_domains: 0,
            orphans: BTreeMap::new(),
            hypervisor: Hypervisor::Connecting,
            membership,
            remote_hosts: PeerMap::default(),
            outbound: HashMap::new(),
            next_outbound: 0,
            timers: Timers::default(),
            locating: HashMap::new(),
            naming: HashMap::new(),
            confirming: HashMap::new(),
            ops: HashMap::new(),
            next_op: 0,
            now: None,
            outputs: VecDeque::new(),
            journal: Journal::new(&intents),
            storage_low: false,
            load,
            awaiting_record: Vec::new(),
            moves: handoff::Moves::default(),
            rebalancer,
            rebalancing: rebalancing::Outstanding::default(),
            evacuating: BTreeMap::new(),
            evacuated_from: HashMap::new(),
            conflicts: HashMap::new(),
            copies_seen: None,
            beacon: Default::default(),
            asked_summary: HashMap::new(),
            book: overlay::BookPull::NotAsked,
            probes: Default::default(),
            asked_vms: HashMap::new(),
            verifying: BTreeSet::new(),
            standby: false,
            empty_since: None,
            verified_at: None,
            closing: false,
            closed: false,
        };
        for intent in intents {
            // Stored intents were accepted once; they are restored, not re-placed.
            match node.model.record_placement(&intent.spec, host_id) {
                Ok(id) => {
                    let name = intent.spec.name.clone();
                    node.vms.insert(name, VmRecord::new(intent, id));
                }
                Err(e) => node.event(Event::Failed { vm: intent.spec.name.clone(), error: e.to_string() }),
            }
        }
        Ok(node)
    }

    /// Feeds one input.
    pub fn handle_input(&mut self, input: Input) {
        match input {
            Input::Api { now, req, cmd } => {
                self.tick(now);
                self.api(req, cmd);
            }
            Input::Hypervisor { now, op, result } => {
                self.tick(now);
                self.hypervisor_result(now, op, result);
            }
            Input::HypervisorUp { now, inventory, domains } => {
                self.tick(now);
                self.hypervisor_up(inventory);
                self.arm_arrivals(now);
                self.observe(now, domains, true);
                self.verify_copies(now);
            }
            Input::HypervisorDown { now, reason } => {
                self.tick(now);
                if self.hypervisor != Hypervisor::Down(reason.clone()) {
                    self.event(Event::HypervisorDown(reason.clone()));
                }
                self.hypervisor = Hypervisor::Down(reason);
                self.model.set_host_state(self.host, HostState::Down);
            }
            Input::MigrationProgress { now, op, progress } => {
                self.tick(now);
                self.migration_progress(op, progress);
            }
            Input::Sampled { now, domains } => {
                self.tick(now);
                if matches!(self.hypervisor, Hypervisor::Up(_)) {
                    self.observe(now, domains, false);
                }
            }
            Input::Gossip { now, from, msg } => {
                self.tick(now);
                self.gossip(now, &from, msg);
            }
            Input::PeerRequest { now, from, id, req } => {
                self.tick(now);
                self.peer_request(id, from, req);
            }
            Input::PeerResponse { now, id, result } => {
                self.tick(now);
                self.peer_response(id, result);
            }
            Input::Located { now, vm, at } => {
                self.tick(now);
                self.located(vm, at.map(|a| *a));
            }
            Input::Connected { now, peer } => {
                self.tick(now);
                self.connected(peer);
            }
            Input::Rtt { now, peer, rtt } => {
                self.tick(now);
                self.membership.measured(&peer, rtt);
            }
            Input::Decided { now, id, question, answer } => {
                self.tick(now);
                self.decided(id, &question, answer);
            }
            Input::Planned { now, id, answer } => {
                self.tick(now);
                self.planned(now, id, answer);
            }
            Input::Timeout(now) => {
                self.tick(now);
                while let Some(timer) = self.timers.pop_due(now) {
                    match timer {
                        Timer::Heartbeat => self.heartbeat(now),
                        Timer::StopDeadline(vm) => self.stop_overdue(&vm),
                        Timer::Decision(id) => self.decision_overdue(id),
                        Timer::Arrival(vm) => self.arrival_overdue(&vm),
                        Timer::Rebalance => self.rebalance_due(now),
                    }
                }
            }
            Input::Shutdown(now) => {
                self.tick(now);
                self.closing = true;
                self.abandon_waits();
                self.abandon_decisions();
            }
            Input::Recorded => {
                self.journal.confirmed();
                for (origin, name) in std::mem::take(&mut self.awaiting_record) {
                    let reply = match self.vms.get(&name) {
                        Some(r) => Ok(Reply::Vm(Box::new(self.status(r)))),
                        None => Err(not_found(&name)),
                    };
                    self.answer(origin, reply);
                }
            }
            Input::NotRecorded { now, reason, no_space } => {
                self.tick(now);
                self.not_recorded(&reason, no_space);
            }
            Input::Storage { now, low } => {
                self.tick(now);
                self.storage_low = low;
            }
            Input::Images { now, keys } => {
                self.tick(now);
                self.model.set_images(self.host, keys);
            }
            Input::Energy { now, renewable_watts, carbon_g_per_kwh } => {
                self.tick(now);
                self.config.pop.renewable_watts = renewable_watts;
                self.config.pop.carbon_g_per_kwh = carbon_g_per_kwh;
                if let Ok(pop) = self.model.pop_id(&self.config.pop.name) {
                    let p = &mut self.model.pops[pop.0 as usize];
                    (p.renewable_watts, p.carbon_g_per_kwh) = (renewable_watts, carbon_g_per_kwh);
                }
            }
        }
        self.summarize_if_placed();
    }

    /// The next output; [`Output::Timeout`] when there is nothing else.
    pub fn poll_output(&mut self) -> Output {
        if let Some(o) = self.outputs.pop_front() {
            return o;
        }
        if self.closing && self.ops.is_empty() && self.deciding.is_empty() && !self.closed {
            self.closed = true;
            return Output::Closed;
        }
        Output::Timeout(self.timers.next())
    }

    /// The model the node places with (its PoP and host, and its VMs).
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Its part in rebalancing: the event it leads, the one it is a
    /// member of (for checkers that watch every event end).
    pub fn rebalancer(&self) -> &crate::rebalance::Rebalancer {
        &self.rebalancer
    }

    /// The current intent of every VM, as the store should hold it.
    pub fn intents(&self) -> impl Iterator<Item = &VmIntent> {
        self.vms.values().map(|r| &r.intent)
    }

    /// Time only moves forward: an input older than the newest one seen is
    /// treated as happening at the newest.
    fn tick(&mut self, now: Instant) {
        if self.now.is_none() {
            // The first heartbeat is due as soon as time is known.
            self.timers.set(Timer::Heartbeat, now);
        }
        if self.now.is_none_or(|t| now > t) {
            self.now = Some(now);
        }
    }

    fn event(&mut self, e: Event) {
        self.outputs.push_back(Output::Event(e));
    }

    fn reply(&mut self, req: ReqId, reply: Result<Reply, ApiError>) {
        self.outputs.push_back(Output::Reply { req, reply });
    }

    /// Answers whoever asked: a local client or another agent.
    fn answer(&mut self, origin: Origin, result: Result<Reply, ApiError>) {
        match origin {
            Origin::Api(req) => self.reply(req, result),
            Origin::Peer(id) => {
                let resp = match result {
                    Ok(Reply::Vm(s)) => PeerResponse::Vm(s),
                    Ok(Reply::Deleted(_)) => PeerResponse::Done,
                    Ok(_) => {
                        PeerResponse::Refused(ApiError::new(ApiErrorKind::BadRequest, "unexpected answer"))
                    }
                    Err(e) => PeerResponse::Refused(e),
                };
                self.outputs.push_back(Output::Respond { id, resp });
            }
            Origin::Plan(k) => self.plan_move_ended(k, &result),
            Origin::Evacuation => self.evacuated(result),
        }
    }

    fn persist(&mut self, name: &str) {
        if let Some(r) = self.vms.get(name) {
            self.journal.put(&r.intent);
            self.outputs.push_back(Output::Persist(Change::Put(Box::new(r.intent.clone()))));
        }
    }

    /// Puts back the VMs whose changes the store did not take: a VM it
    /// never had is forgotten, the others get their stored intent again.
    /// A request waiting on one of them fails; nothing else was done for
    /// them (the shell withheld the round's commands).
    fn not_recorded(&mut self, reason: &str, no_space: bool) {
        let kind = if no_space { ApiErrorKind::InsufficientStorage } else { ApiErrorKind::Unavailable };
        let error = |name: &str| {
            ApiError::new(kind, format!("vm {name}: the change could not be recorded: {reason}"))
        };
        for (origin, name) in std::mem::take(&mut self.awaiting_record) {
            self.answer(origin, Err(error(&name)));
        }
        for (name, before) in self.journal.lost() {
            self.ops.retain(|_, vm| *vm != name);
            match before {
                None => {
                    let Some(record) = self.vms.remove(&name) else { continue };
                    self.timers.cancel(&Timer::StopDeadline(name.clone()));
                    self.model.remove_vm(record.id);
                    self.outputs.push_back(Output::Announce { vm: name.clone(), at: None });
                    if let Some(origin) = record.task.and_then(|t| t.origin) {
                        self.answer(origin, Err(error(&name)));
                    }
                }
                Some(intent) => {
                    let Some(r) = self.vms.get_mut(&name) else { continue };
                    if r.seen.as_ref().is_none_or(|d| d.cpu_milli.is_none()) {
                        self.model.set_vm_load(r.id, intent.spec.expected_load());
                    }
                    r.intent = intent;
                    r.pending = None;
                    if let Some(task) = r.task.as_mut() {
                        task.op = None;
                    }
                    self.finish(&name, Some(error(&name)));
                }
            }
        }
    }

    /// An empty host goes to standby after `energy.standby-after-ms`.
    fn maybe_standby(&mut self, now: Instant) {
        let after = self.config.energy.standby_after_ms;
        if !self.vms.is_empty() || self.moves.draining() || after == 0 {
            self.empty_since = None;
            return;
        }
        let since = *self.empty_since.get_or_insert(now);
        if self.standby || now < since + Duration::from_millis(after) {
            return;
        }
        self.standby = true;
        self.model.set_host_state(self.host, HostState::Standby);
        self.outputs.push_back(Output::Power { standby: true });
        self.event(Event::Power { standby: true, why: format!("no VM for {} s", after / 1000) });
    }

    /// A host in standby wakes: a VM needs it.
    fn wake(&mut self, why: &str) {
        self.empty_since = None;
        if !self.standby {
            return;
        }
        self.standby = false;
        if matches!(self.hypervisor, Hypervisor::Up(_)) && !self.moves.draining() {
            self.model.set_host_state(self.host, HostState::Up);
        }
        self.outputs.push_back(Output::Power { standby: false });
        self.event(Event::Power { standby: false, why: why.to_owned() });
    }

    /// Records in the overlay that this host runs `name`, and what it is.
    fn announce(&mut self, name: &str) {
        let Some(r) = self.vms.get(name) else { return };
        let at = crate::cluster::VmLocation {
            peer: self.config.peer.clone(),
            host: self.config.host.name.clone(),
            pop: self.config.pop.name.clone(),
            generation: r.intent.generation,
            desired: r.intent.desired,
            spec: r.intent.spec.clone(),
        };
        self.outputs.push_back(Output::Announce { vm: name.to_owned(), at: Some(Box::new(at)) });
    }

    fn issue(&mut self, name: &str, step: Step, cmd: HvCommand) {
        let op = OpId(self.next_op);
        self.next_op += 1;
        if let Some(task) = self.vms.get_mut(name).and_then(|r| r.task.as_mut()) {
            task.step = step;
            task.op = Some(op);
        }
        self.ops.insert(op, name.to_owned());
        self.outputs.push_back(Output::Hypervisor { op, cmd });
    }

    fn begin(&mut self, name: &str, purpose: Purpose, origin: Option<Origin>, stop_timeout: Duration) {
        let Some(record) = self.vms.get_mut(name) else {
            return;
        };
        // Whatever was pending is being carried out now (or superseded).
        record.pending = None;
        record.task = Some(Task { stop_timeout, ..Task::new(purpose, Step::Define, origin) });
        let cmd = match purpose {
            Purpose::Create | Purpose::Recreate => (
                Step::Define,
                HvCommand::Define {
                    spec: Box::new(record.intent.spec.clone()),
                    generation: record.intent.generation,
                },
            ),
            Purpose::Start | Purpose::Restart => (Step::Start, HvCommand::Start(name.to_owned())),
            Purpose::Stop if stop_timeout.is_zero() => (Step::Destroy, HvCommand::Destroy(name.to_owned())),
            Purpose::Stop => (Step::Shutdown, HvCommand::Shutdown(name.to_owned())),
            Purpose::Delete => (Step::Destroy, HvCommand::Destroy(name.to_owned())),
            // Moves are begun by the hand-off protocol, not here.
            Purpose::MoveOut | Purpose::MoveIn => return,
        };
        self.issue(name, cmd.0, cmd.1);
    }

    // ---- API ----

    fn api(&mut self, req: ReqId, cmd: Command) {
        let result = match cmd {
            Command::List => Ok(Some(Reply::Vms(self.vms.values().map(|r| self.status(r)).collect()))),
            Command::Show(name) => self.show_anywhere(Origin::Api(req), name),
            Command::Host => Ok(Some(Reply::Host(Box::new(self.host_status())))),
            Command::Cluster => Ok(Some(Reply::Cluster(Box::new(self.cluster_status())))),
            Command::Create(spec) => {
                self.create(Origin::Api(req), spec);
                Ok(None)
            }
            Command::Start(name) => self.change(req, &name, Purpose::Start, Duration::ZERO),
            Command::Stop { name, force, timeout } => {
                let timeout = if force {
                    Duration::ZERO
                } else {
                    timeout.unwrap_or(Duration::from_millis(self.config.timing.stop_timeout_ms))
                };
                self.change(req, &name, Purpose::Stop, timeout.min(MAX_STOP_TIMEOUT))
            }
            Command::Delete(name) => self.change(req, &name, Purpose::Delete, Duration::ZERO),
            Command::SetLoad { name, cpu_milli } => self.set_load(req, &name, cpu_milli),
            Command::Migrate { name, to } => {
                let named = to.clone().map(|to| (name.clone(), to));
                let refused = self.migrate(Origin::Api(req), name, to);
                if let (None, Some((vm, to))) = (&refused, named) {
                    use crate::record::{Kind, Record};
                    let at = (self.config.host.name.as_str(), self.config.pop.name.as_str());
                    let record = Record {
                        request: format!("vm migrate --to {to}"),
                        outcome: format!("moves to host {to} (asked through this agent's API)"),
                        ..Record::moved(Kind::Move, &vm, &to, at)
                    };
                    self.outputs.push_back(Output::Record(Box::new(record)));
                }
                refused.map_or(Ok(None), Err)
            }
            Command::Drain => Ok(Some(self.drain())),
            Command::Resume => Ok(Some(self.resume())),
        };
        match result {
            Ok(Some(reply)) => self.reply(req, Ok(reply)),
            Ok(None) => {}
            Err(e) => self.reply(req, Err(e)),
        }
    }

    fn show(&self, name: &str) -> Result<Reply, ApiError> {
        let r = self.vms.get(name).ok_or_else(|| not_found(name))?;
        Ok(Reply::Vm(Box::new(self.status(r))))
    }

    fn writable(&self) -> Result<(), ApiError> {
        if self.closing {
            return Err(ApiError::new(ApiErrorKind::Unavailable, "the agent is shutting down"));
        }
        match &self.hypervisor {
            Hypervisor::Up(_) => Ok(()),
            Hypervisor::Connecting => {
                Err(ApiError::new(ApiErrorKind::Unavailable, "hypervisor unavailable: not connected yet"))
            }
            Hypervisor::Down(reason) => {
                Err(ApiError::new(ApiErrorKind::Unavailable, format!("hypervisor unavailable: {reason}")))
            }
        }
    }

    /// Records a VM's declared CPU demand; the answer waits until it is
    /// stored ([`Input::Recorded`]).
    fn set_load(&mut self, req: ReqId, name: &str, cpu_milli: u32) -> Result<Option<Reply>, ApiError> {
        let record = self.vms.get_mut(name).ok_or_else(|| not_found(name))?;
        let mut spec = record.intent.spec.clone();
        spec.load_cpu_milli = Some(cpu_milli);
        spec.validate().map_err(|e| ApiError::new(ApiErrorKind::BadRequest, e.to_string()))?;
        record.intent.spec = spec;
        let measured = record.seen.as_ref().is_some_and(|d| d.cpu_milli.is_some());
        if !measured {
            self.model.set_vm_load(record.id, cpu_milli);
        }
        self.persist(name);
        self.awaiting_record.push((Origin::Api(req), name.to_owned()));
        Ok(None)
    }

    /// While the state directory is short of space, what would need more
    /// of it (a new VM, a start) waits; stops and deletes use the reserve.
    fn room_to_record(&self) -> Result<(), ApiError> {
        if self.storage_low {
            return Err(ApiError::new(
                ApiErrorKind::InsufficientStorage,
                "the agent's state directory is full: creates and starts are refused until space is freed (stops and deletes still work)",
            ));
        }
        Ok(())
    }

    /// Checks that can be made before deciding where a VM goes. A VM
    /// created again after its host died (`generation` > 0) carries a name
    /// the summaries still give to that host, which this agent may not
    /// have declared dead yet: its PoP's speaker did.
    fn admissible(&self, spec: &crate::VmRequest, generation: u64) -> Result<(), ApiError> {
        spec.validate().map_err(|e| ApiError::new(ApiErrorKind::BadRequest, e.to_string()))?;
        if self.vms.contains_key(&spec.name) {
            return Err(ApiError::new(ApiErrorKind::Conflict, format!("vm {:?} already exists", spec.name)));
        }
        if self.others.contains(&spec.name) {
            return Err(ApiError::new(
                ApiErrorKind::Conflict,
                format!("a domain named {:?} exists on the hypervisor and is not Locus's", spec.name),
            ));
        }
        if self.orphans.contains_key(&spec.name) {
            return Err(ApiError::new(
                ApiErrorKind::Conflict,
                format!(
                    "a domain named {:?} exists on this host with no intent; the overlay's record of it decides \
                     whether it is taken back or removed",
                    spec.name
                ),
            ));
        }
        if let Some((_, host, _, _)) = self.membership.find_vm(&spec.name)
            && generation == 0
        {
            return Err(ApiError::new(
                ApiErrorKind::Conflict,
                format!("vm {:?} already exists (on host {host})", spec.name),
            ));
        }
        if self.closing {
            return Err(ApiError::new(ApiErrorKind::Unavailable, "the agent is shutting down"));
        }
        Ok(())
    }

    /// Creates a VM on this host, which the caller chose; refuses when this
    /// host cannot take it (the authoritative check: a host never takes more
    /// than it has, whoever asks).
    fn create_here(
        &mut self,
        origin: Origin,
        spec: crate::VmRequest,
        generation: u64,
    ) -> Result<(), ApiError> {
        self.admissible(&spec, generation)?;
        self.writable()?;
        self.room_to_record()?;
        // Chosen here even in standby: the placer wakes a host only when
        // no other can take the VM.
        let mut resolved = crate::filter::Resolved::new(&self.model, &spec);
        resolved.standby = true;
        let mut rows = Vec::new();
        let excluded = crate::filter::candidates(&self.model, &resolved, &mut rows);
        if !rows.contains(&self.host) {
            return Err(ApiError::new(
                ApiErrorKind::Unplaceable,
                format!("host {} cannot take {}: {}", self.config.host.name, spec.name, excluded.describe()),
            ));
        }
        let id = self
            .model
            .record_placement(&spec, self.host)
            .map_err(|e| ApiError::new(ApiErrorKind::BadRequest, e.to_string()))?;
        self.wake("a VM is placed on it");
        let name = spec.name.clone();
        let mut intent = VmIntent::new(spec, Desired::Running);
        intent.generation = generation;
        self.vms.insert(name.clone(), VmRecord::new(intent, id));
        self.persist(&name);
        self.announce(&name);
        self.begin(&name, Purpose::Create, Some(origin), Duration::ZERO);
        Ok(())
    }

    fn change(
        &mut self,
        req: ReqId,
        name: &str,
        purpose: Purpose,
        stop_timeout: Duration,
    ) -> Result<Option<Reply>, ApiError> {
        let record = self.vms.get(name).ok_or_else(|| not_found(name))?;
        if let Some(h) = &record.intent.handoff {
            return Err(ApiError::new(
                ApiErrorKind::Conflict,
                format!("vm {name} is {h}; try again when the move is done"),
            ));
        }
        let (busy, deleted) =
            (record.task.as_ref().map(|t| (t.purpose, t.step)), record.intent.desired == Desired::Deleted);
        if let Some((busy_with, step)) = busy {
            let forced = purpose == Purpose::Delete || (purpose == Purpose::Stop && stop_timeout.is_zero());
            if !(forced && step == Step::AwaitShutoff) {
                return Err(ApiError::new(
                    ApiErrorKind::Conflict,
                    format!("vm {name} is busy ({}); try again when it is done", busy_with.as_str()),
                ));
            }
            // A forced stop or a delete overrides a graceful stop that is
            // waiting for its guest: whoever asked for that stop hears so.
            self.writable()?;
            let how = if purpose == Purpose::Delete { "a delete" } else { "a forced stop" };
            let e = ApiError::new(
                ApiErrorKind::Conflict,
                format!("vm {name}: the graceful stop was overridden by {how}"),
            );
            self.finish(name, Some(e));
        }
        if deleted {
            return Err(ApiError::new(ApiErrorKind::Conflict, format!("vm {name} is being deleted")));
        }
        self.writable()?;
        if purpose == Purpose::Start {
            self.room_to_record()?;
        }
        let desired = match purpose {
            Purpose::Start => Desired::Running,
            Purpose::Stop => Desired::Stopped,
            _ => Desired::Deleted,
        };
        if let Some(r) = self.vms.get_mut(name) {
            if purpose == Purpose::Start {
                r.restarts = 0;
                r.restart_not_before = None;
                r.reported_stopped = false;
            }
            // A stop or delete cancels a start still owed.
            let owed = r.intent.start_owed && desired == Desired::Running;
            if r.intent.desired != desired || r.intent.start_owed != owed {
                r.intent.desired = desired;
                r.intent.start_owed = owed;
                self.persist(name);
            }
        }
        self.begin(name, purpose, Some(Origin::Api(req)), stop_timeout);
        Ok(None)
    }

    // ---- hypervisor ----

    fn hypervisor_up(&mut self, inventory: Inventory) {
        let h = &self.config.host;
        let vcpus = h
            .vcpus
            .unwrap_or_else(|| (inventory.cpus as f32 * h.cpu_allocation_ratio.max(0.0)).floor() as u32);
        let memory =
            h.memory_mib.unwrap_or_else(|| inventory.memory_mib.saturating_sub(h.reserved_memory_mib));
        self.model.set_host_capacity(
            self.host,
            Resources::new(vcpus, memory, h.disk_gib),
            inventory.cpus.saturating_mul(1000),
        );
        let state = if self.moves.draining() {
            HostState::Draining
        } else if self.standby {
            HostState::Standby
        } else {
            HostState::Up
        };
        self.model.set_host_state(self.host, state);
        self.event(Event::HypervisorUp(inventory.clone()));
        self.hypervisor = Hypervisor::Up(inventory);
    }

    fn hypervisor_result(&mut self, now: Instant, op: OpId, result: Result<DomainState, HvError>) {
        let Some(name) = self.ops.remove(&op) else {
            return;
        };
        let Some(record) = self.vms.get_mut(&name) else {
            return;
        };
        let Some(task) = record.task.as_mut() else {
            return;
        };
        if task.op != Some(op) {
            return;
        }
        task.op = None;
        let (purpose, step) = (task.purpose, task.step);
        match result {
            Ok(state) => {
                record.last_error = None;
                set_state(record, state);
                self.advance(now, &name, purpose, step, state);
            }
            Err(error) => self.fail(&name, purpose, step, error),
        }
    }

    /// The next step after `step` succeeded.
    fn advance(&mut self, now: Instant, name: &str, purpose: Purpose, step: Step, state: DomainState) {
        // A VM defined again after it went missing boots only if it should
        // run and its restart policy allows it (or a start is owed);
        // otherwise it waits, defined.
        let boot_again = self.vms.get(name).is_some_and(|r| {
            r.intent.desired == Desired::Running
                && (r.intent.spec.restart == crate::request::RestartPolicy::Always || r.intent.start_owed)
        });
        match (step, purpose) {
            (Step::Migrate | Step::Destroy, Purpose::MoveOut) => self.conclude(name, true),
            (Step::Settle, Purpose::MoveOut) => self.conclude(name, !state.is_active()),
            (Step::Receive | Step::Adopt | Step::Start, Purpose::MoveIn) => {
                self.arrival_step(name, step, state.is_active())
            }
            (Step::Define, Purpose::Create) => {
                self.issue(name, Step::Start, HvCommand::Start(name.to_owned()))
            }
            (Step::Define, _) if boot_again => {
                self.issue(name, Step::Start, HvCommand::Start(name.to_owned()))
            }
            (Step::Shutdown, _) if state.is_active() => {
                if let Some(task) = self.vms.get_mut(name).and_then(|r| r.task.as_mut()) {
                    task.step = Step::AwaitShutoff;
                    let at = now + task.stop_timeout;
                    self.timers.set(Timer::StopDeadline(name.to_owned()), at);
                }
            }
            (Step::Destroy, Purpose::Delete) => {
                self.issue(name, Step::Undefine, HvCommand::Undefine(name.to_owned()))
            }
            (Step::Undefine, _) => self.forget(name),
            _ => self.finish(name, None),
        }
    }

    fn fail(&mut self, name: &str, purpose: Purpose, step: Step, error: HvError) {
        let kind = match error.kind {
            HvErrorKind::Unavailable => ApiErrorKind::Unavailable,
            HvErrorKind::NotFound | HvErrorKind::Refused => ApiErrorKind::Hypervisor,
            HvErrorKind::Invalid => ApiErrorKind::BadRequest,
        };
        let api_error = ApiError::new(kind, format!("vm {name}: {} failed: {error}", step_name(step)));
        if let Some(r) = self.vms.get_mut(name) {
            r.last_error = Some(error.message.clone());
        }
        if error.kind == HvErrorKind::Unavailable && purpose.asked() {
            self.defer(name, purpose, &error);
            return;
        }
        match (purpose, step) {
            // A VM that cannot be received is not recorded here.
            (Purpose::MoveIn, Step::Receive) => {
                self.forget_with(name, Some(api_error));
            }
            // A create leaves nothing behind: an undefined domain and no intent.
            (Purpose::Create, Step::Define) => {
                self.forget_with(name, Some(api_error));
            }
            (Purpose::Create, Step::Start) => {
                if let Some(task) = self.vms.get_mut(name).and_then(|r| r.task.as_mut()) {
                    task.failure = Some(api_error);
                }
                self.issue(name, Step::Undefine, HvCommand::Undefine(name.to_owned()));
            }
            _ => {
                if !purpose.asked() {
                    self.event(Event::Failed { vm: name.to_owned(), error: api_error.message.clone() });
                }
                self.finish(name, Some(api_error));
            }
        }
    }

    /// The rule for every operation a client asked for: once its intent is
    /// recorded, an unavailable hypervisor does not undo it. The client is
    /// told it is accepted and pending (202); the agent carries it out when
    /// the hypervisor is back (reconciliation), and `vm show` says so
    /// meanwhile. A hypervisor that refuses, by contrast, fails the request
    /// (a create is rolled back).
    fn defer(&mut self, name: &str, purpose: Purpose, error: &HvError) {
        let Some(r) = self.vms.get_mut(name) else {
            return;
        };
        r.pending = Some(format!("{} when the hypervisor is back: {}", purpose.verb(), error.message));
        let owes_start = matches!(purpose, Purpose::Create | Purpose::Start);
        if owes_start && !r.intent.start_owed {
            r.intent.start_owed = true;
            self.persist(name);
        }
        self.finish(name, None);
    }

    /// Ends a VM's task and answers its request.
    fn finish(&mut self, name: &str, error: Option<ApiError>) {
        let Some(record) = self.vms.get_mut(name) else {
            return;
        };
        let Some(task) = record.task.take() else {
            return;
        };
        self.timers.cancel(&Timer::StopDeadline(name.to_owned()));
        let error = error.or(task.failure);
        if task.purpose == Purpose::MoveOut {
            // Moved successfully goes through `forget`; here it stays.
            let host = &self.config.host.name;
            let e = error.unwrap_or_else(|| {
                ApiError::new(
                    ApiErrorKind::Conflict,
                    format!("vm {name}: the move was called off; it stays on host {host}"),
                )
            });
            return self.move_ended(name, task.origin, Err(e));
        }
        if let Some(origin) = task.origin {
            let reply = match error {
                Some(e) => Err(e),
                None => Ok(Reply::Vm(Box::new(self.status_of(name)))),
            };
            self.answer(origin, reply);
        }
    }

    /// Removes a VM whose domain is gone: intent, model, record.
    fn forget(&mut self, name: &str) {
        let failure = self.vms.get_mut(name).and_then(|r| r.task.as_mut()).and_then(|t| t.failure.take());
        self.forget_with(name, failure);
    }

    fn forget_with(&mut self, name: &str, failure: Option<ApiError>) {
        let Some(record) = self.vms.remove(name) else {
            return;
        };
        self.timers.cancel(&Timer::StopDeadline(name.to_owned()));
        self.model.remove_vm(record.id);
        self.journal.remove(name);
        self.outputs.push_back(Output::Persist(Change::Remove(name.to_owned())));
        self.outputs.push_back(Output::Announce { vm: name.to_owned(), at: None });
        self.timers.cancel(&Timer::Arrival(name.to_owned()));
        if let Some(task) = record.task.as_ref().filter(|t| t.purpose == Purpose::MoveOut) {
            self.handoff_ended(name);
            let result = task.moved.clone().ok_or_else(|| {
                failure
                    .clone()
                    .unwrap_or_else(|| ApiError::new(ApiErrorKind::Hypervisor, "the move did not finish"))
            });
            return self.move_ended(name, task.origin, result);
        }
        if let Some(origin) = record.task.and_then(|t| t.origin) {
            let reply = match failure {
                Some(e) => Err(e),
                None => Ok(Reply::Deleted(name.to_owned())),
            };
            self.answer(origin, reply);
        }
    }

    /// Compares what the hypervisor has with the intent and acts on the
    /// difference. `full` reports orphans (after a (re)connection).
    fn observe(&mut self, now: Instant, domains: Observation, full: bool) {
        self.others = domains.others.into_iter().collect();
        self.own_domains = domains.ours.len() as u32;
        // Both in name order, walked together: each domain meets its VM,
        // or is an orphan. A VM seen takes its name from its domain: this
        // runs at every sample of every VM, and copies of names add up.
        let mut ours = domains.ours;
        ours.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        let mut ours = ours.into_iter().peekable();
        let mut orphans = vec![];
        let mut walk = Vec::with_capacity(self.vms.len());
        for name in self.vms.keys() {
            orphans.extend(std::iter::from_fn(|| ours.next_if(|d| d.name < *name)));
            walk.push(match ours.next_if(|d| d.name == *name) {
                Some(mut d) => (std::mem::take(&mut d.name), Some(d)),
                None => (name.clone(), None),
            });
        }
        orphans.extend(ours);
        for (name, observed) in walk {
            self.reconcile(now, &name, observed, full);
        }
        self.observe_orphans(now, orphans.into_iter(), full);
        let demand = self.demand();
        if let Some(state) = self.load.sample(demand) {
            let (demand_cpu_milli, capacity_cpu_milli) = (demand.cpu_milli, demand.cpu_capacity_milli);
            self.event(Event::Load { state, demand_cpu_milli, capacity_cpu_milli });
        }
        self.next_move();
        self.maybe_rebalance(now);
        self.maybe_standby(now);
    }

    /// What the running VMs demand: CPU as measured where the hypervisor
    /// reports it, else as declared; memory as the hypervisor reports it,
    /// else as requested. A stopped VM demands nothing.
    fn demand(&self) -> crate::load::Demand {
        let h = &self.model.hosts[self.host.0 as usize];
        let mut d = crate::load::Demand {
            cpu_capacity_milli: h.cpu_milli,
            memory_capacity_mib: h.capacity.memory_mib,
            ..Default::default()
        };
        for r in self.vms.values().filter(|r| r.state().is_active()) {
            let seen = r.seen.as_ref();
            let cpu = seen.and_then(|s| s.cpu_milli).unwrap_or_else(|| r.intent.spec.expected_load());
            let memory = seen
                .map(|s| u32::try_from(s.memory_kib / 1024).unwrap_or(u32::MAX))
                .filter(|&m| m > 0)
                .unwrap_or(r.intent.spec.memory_mib);
            d.cpu_milli = d.cpu_milli.saturating_add(cpu);
            d.memory_mib = d.memory_mib.saturating_add(memory);
        }
        d
    }

    /// Takes what a sample saw of VM `name`: its domain (whose own name
    /// is left out), or none.
    fn reconcile(&mut self, now: Instant, name: &str, observed: Option<DomainSeen>, full: bool) {
        let backoff = self.backoff_config();
        let Some(record) = self.vms.get_mut(name) else {
            return;
        };
        let before = record.state();
        match observed {
            Some(d) => {
                // The model holds the load last seen (declared loads stand
                // in only until one is): an unchanged one is not written.
                let seen_milli = record.seen.as_ref().and_then(|s| s.cpu_milli);
                if let Some(milli) = d.cpu_milli.filter(|&m| seen_milli != Some(m)) {
                    self.model.set_vm_load(record.id, milli);
                }
                let name = match record.seen.as_mut() {
                    Some(seen) => std::mem::take(&mut seen.name),
                    None => name.to_owned(),
                };
                record.seen = Some(DomainSeen { name, ..d });
            }
            None => set_state(record, DomainState::Missing),
        }
        let state = record.state();
        // A pending operation that turns out done (the hypervisor did it
        // before the connection broke) is no longer pending.
        let satisfied = match record.intent.desired {
            Desired::Running => state.is_active(),
            Desired::Stopped => matches!(state, DomainState::Shutoff | DomainState::Crashed),
            Desired::Deleted => false,
        };
        if satisfied && record.task.is_none() {
            record.pending = None;
        }
        if record.intent.start_owed && state.is_active() {
            record.intent.start_owed = false;
            self.persist(name);
        }
        let Some(record) = self.vms.get_mut(name) else {
            return;
        };
        if record.intent.handoff.is_some() {
            // A move decides what happens to the domain until it ends.
            return self.resume_handoff(name);
        }
        if let Some(task) = &record.task {
            if matches!(task.step, Step::AwaitShutoff) && !state.is_active() {
                self.finish(name, None);
            }
            return;
        }
        match (record.intent.desired, state) {
            // Finished through the hypervisor even when the domain is gone:
            // its removal also takes what the host keeps for it (its disk).
            (Desired::Deleted, _) => self.begin(name, Purpose::Delete, None, Duration::ZERO),
            (_, DomainState::Missing) => {
                self.event(Event::Recreating(name.to_owned()));
                self.begin(name, Purpose::Recreate, None, Duration::ZERO);
            }
            (Desired::Stopped, s) if s.is_active() => {
                // Stopped by an operator, found running (after a restart,
                // or started behind the agent's back): stop it again.
                let timeout = Duration::from_millis(self.config.timing.stop_timeout_ms).min(MAX_STOP_TIMEOUT);
                self.event(Event::Stopping(name.to_owned()));
                self.begin(name, Purpose::Stop, None, timeout);
            }
            (Desired::Running, DomainState::Shutoff | DomainState::Crashed) if record.intent.start_owed => {
                // Accepted while the hypervisor was away: a start, not a restart.
                self.begin(name, Purpose::Start, None, Duration::ZERO);
            }
            (Desired::Running, DomainState::Shutoff | DomainState::Crashed) => {
                if record.intent.spec.restart == crate::request::RestartPolicy::Never {
                    if !record.reported_stopped {
                        record.reported_stopped = true;
                        self.event(Event::LeftStopped(name.to_owned()));
                    }
                } else if record.restart_not_before.is_none_or(|t| now >= t) {
                    record.restarts += 1;
                    let restarts = record.restarts;
                    record.restart_not_before = Some(now + backoff(restarts));
                    self.event(Event::Restarting { vm: name.to_owned(), restarts });
                    self.begin(name, Purpose::Restart, None, Duration::ZERO);
                }
            }
            (_, s) if full && s.is_active() && before == DomainState::Unknown => {
                self.event(Event::Adopted(name.to_owned()));
            }
            _ => {}
        }
    }

    fn backoff_config(&self) -> impl Fn(u32) -> Duration + use<> {
        let (base, max) = (self.config.timing.restart_backoff_ms, self.config.timing.restart_backoff_max_ms);
        // The first restart is immediate; later ones wait base, 2·base, 4·base… up to max.
        move |restarts| {
            let factor = 1u64.checked_shl(restarts.saturating_sub(1)).unwrap_or(u64::MAX);
            Duration::from_millis(base.saturating_mul(factor).min(max))
        }
    }

    /// A guest did not shut down in time: it is powered off.
    fn stop_overdue(&mut self, name: &str) {
        let waiting = self.vms.get(name).and_then(|r| r.task.as_ref()).map(|t| t.step);
        if waiting == Some(Step::AwaitShutoff) {
            self.issue(name, Step::Destroy, HvCommand::Destroy(name.to_owned()));
        }
    }

    fn abandon_waits(&mut self) {
        let waiting: Vec<String> = self
            .vms
            .iter()
            .filter(|(_, r)| matches!(r.task.as_ref().map(|t| t.step), Some(Step::AwaitShutoff)))
            .map(|(n, _)| n.clone())
            .collect();
        for name in waiting {
            let e = ApiError::new(
                ApiErrorKind::Unavailable,
                format!(
                    "the agent is shutting down; vm {name} was asked to shut down and may still be running"
                ),
            );
            self.finish(&name, Some(e));
        }
    }

    // ---- status ----

    fn status_of(&self, name: &str) -> VmStatus {
        match self.vms.get(name) {
            Some(r) => self.status(r),
            None => VmStatus {
                name: name.to_owned(),
                state: DomainState::Missing,
                desired: Desired::Deleted,
                host: self.config.host.name.clone(),
                pop: self.config.pop.name.clone(),
                busy: None,
                cpu_milli: None,
                cpu_time_ns: 0,
                memory_kib: 0,
                restarts: 0,
                last_error: None,
                pending: None,
                handoff: None,
                migration: None,
                generation: 0,
                spec: crate::VmRequest::default(),
            },
        }
    }

    fn status(&self, r: &VmRecord) -> VmStatus {
        let seen = r.seen.as_ref();
        VmStatus {
            name: r.intent.spec.name.clone(),
            state: r.state(),
            desired: r.intent.desired,
            host: self.config.host.name.clone(),
            pop: self.config.pop.name.clone(),
            busy: r.task.as_ref().map(|t| t.purpose.as_str().to_owned()),
            cpu_milli: seen.and_then(|d| d.cpu_milli),
            cpu_time_ns: seen.map_or(0, |d| d.cpu_time_ns),
            memory_kib: seen.map_or(0, |d| d.memory_kib),
            restarts: r.restarts,
            last_error: r.last_error.clone(),
            pending: r.pending.clone(),
            handoff: r.intent.handoff.as_ref().map(|h| h.to_string()),
            migration: r.task.as_ref().and_then(|t| t.progress),
            generation: r.intent.generation,
            spec: r.intent.spec.clone(),
        }
    }

    fn host_status(&self) -> HostStatus {
        let h = &self.model.hosts[self.host.0 as usize];
        let (state, reason, inventory) = match &self.hypervisor {
            Hypervisor::Connecting => ("connecting", None, None),
            Hypervisor::Up(i) => ("up", None, Some(i.clone())),
            Hypervisor::Down(r) => ("down", Some(r.clone()), None),
        };
        let mut vms = VmCounts::default();
        for r in self.vms.values() {
            vms.total += 1;
            match r.state() {
                DomainState::Running => vms.running += 1,
                DomainState::Shutoff => vms.stopped += 1,
                _ => vms.other += 1,
            }
        }
        let jurisdiction = self.model.jurisdictions[self.model.pops[0].jurisdiction as usize].clone();
        HostStatus {
            name: h.name.clone(),
            pop: self.config.pop.name.clone(),
            jurisdiction,
            hypervisor: HypervisorStatus { state: state.to_owned(), reason, inventory },
            capacity: h.capacity.into(),
            allocated: h.allocated.into(),
            free: h.free().into(),
            load_cpu_milli: self.load.last().cpu_milli,
            cpu_milli: h.cpu_milli,
            load_memory_mib: self.load.last().memory_mib,
            load_state: self.load.state(),
            load_streak: self.load.streak(),
            drain: self.drain_status(),
            moves: self.moves_status(),
            rebalance: self.rebalancer.status(),
            power: if self.standby { "standby".into() } else { "on".into() },
            watts: h.current_watts(),
            vms,
            deciding: self.deciding.len() as u32,
            pop_renewable_watts: self.config.pop.renewable_watts,
            pop_carbon_g_per_kwh: self.config.pop.carbon_g_per_kwh,
            own_domains: self.own_domains,
            other_domains: self.others.len() as u32,
        }
    }
}

impl VmRecord {
    fn new(intent: VmIntent, id: VmId) -> Self {
        VmRecord {
            intent,
            id,
            seen: None,
            task: None,
            restarts: 0,
            restart_not_before: None,
            last_error: None,
            pending: None,
            reported_stopped: false,
        }
    }
}

fn set_state(record: &mut VmRecord, state: DomainState) {
    match record.seen.as_mut() {
        Some(d) => d.state = state,
        None => {
            record.seen = Some(DomainSeen {
                name: record.intent.spec.name.clone(),
                state,
                cpu_time_ns: 0,
                cpu_milli: None,
                memory_kib: 0,
                generation: None,
            })
        }
    }
}

fn not_found(name: &str) -> ApiError {
    ApiError::new(ApiErrorKind::NotFound, format!("no vm named {name:?}"))
}

fn step_name(step: Step) -> &'static str {
    match step {
        Step::Define => "define",
        Step::Start => "start",
        Step::Shutdown | Step::AwaitShutoff => "shutdown",
        Step::Destroy => "power-off",
        Step::Undefine => "undefine",
        Step::Handoff => "hand-off",
        Step::Migrate => "live migration",
        Step::Receive => "preparing to receive",
        Step::Adopt => "taking over",
        Step::Settle => "settling",
    }
}

#[cfg(test)]
mod tests;
