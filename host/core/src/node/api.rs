//! The requests a node answers and the answers it gives: the agent's API
//! and CLI are thin shells over these values.

use crate::VmRequest;
use crate::hypervisor::{DomainState, Inventory};
use crate::intent::Desired;
use serde::Serialize;
use std::time::Duration;

/// Identifies one API request until its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReqId(pub u64);

/// A request to the node.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Place, define and boot a VM.
    Create(Box<VmRequest>),
    /// Every VM.
    List,
    /// One VM.
    Show(String),
    /// Boot a stopped VM.
    Start(String),
    /// Stop a VM: ask the guest, then power it off after `timeout` (the
    /// node's default when None); `force` powers it off at once.
    Stop {
        /// The VM.
        name: String,
        /// Power off at once.
        force: bool,
        /// How long the guest gets to shut down.
        timeout: Option<Duration>,
    },
    /// Power off and remove a VM, and forget it.
    Delete(String),
    /// Declare a VM's expected CPU demand: what placement and the load
    /// judgement count for it until the hypervisor reports measured CPU
    /// use (the test driver never does). At most 1000 per vCPU.
    SetLoad {
        /// The VM.
        name: String,
        /// Milli-CPUs.
        cpu_milli: u32,
    },
    /// Move a VM to another host: to `to`, or where the PoP's placement
    /// policy chooses among the other hosts. Answered when it has moved.
    Migrate {
        /// The VM.
        name: String,
        /// The destination host, by name.
        to: Option<String>,
    },
    /// Take no new VMs and move every VM away.
    Drain,
    /// Take VMs again (ends a drain; moves not started yet are dropped).
    Resume,
    /// The host's capacity, allocation and hypervisor state.
    Host,
    /// Members of this PoP and summaries of the others.
    Cluster,
}

/// Identifies a request from another agent until it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InboundId(pub u64);

/// Identifies a request to another agent until its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OutboundId(pub u64);

/// What one agent asks another (request-response protocol, MessagePack).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub enum PeerRequest {
    /// Run this VM on your host (your PoP's placement chose it); refuse if it does not fit.
    Execute(Box<VmRequest>),
    /// Create this VM of a dead host again on your host, with this generation.
    Evacuate {
        /// The VM.
        spec: Box<VmRequest>,
        /// Its generation from now on.
        generation: u64,
    },
    /// Place this VM in your PoP, or forward it on; `visited` PoPs were tried.
    Forward {
        /// The request.
        spec: Box<VmRequest>,
        /// PoPs already asked.
        visited: Vec<String>,
    },
    /// Describe this VM, which runs on your host.
    Show(String),
    /// Move this VM, which runs on your host (see [`Command::Migrate`]).
    Migrate {
        /// The VM.
        name: String,
        /// The destination host, or the policy's choice.
        to: Option<String>,
    },
    /// Get ready to receive this VM from my host; refuse if it does not fit.
    Arrive {
        /// The VM as it runs on the source.
        spec: Box<VmRequest>,
        /// Whether it should run.
        desired: Desired,
        /// Its generation once it has moved.
        generation: u64,
        /// The source host.
        from_host: String,
        /// Whether the source can live-migrate it (else it moves cold).
        live: bool,
    },
    /// The VM you are receiving has left my host: take it over.
    Arrived {
        /// The VM.
        name: String,
        /// Its generation once moved.
        generation: u64,
    },
    /// The move of this VM is called off: it stays on my host.
    Abandon {
        /// The VM.
        name: String,
        /// The generation the move would have given it.
        generation: u64,
    },
    /// Join the partition of this rebalancing event.
    Join {
        /// The event.
        event: crate::rebalance::EventId,
        /// What it is for.
        kind: crate::rebalance::EventKind,
    },
    /// The event is over for you: you are free.
    Leave {
        /// The event.
        event: crate::rebalance::EventId,
    },
    /// As my PoP's speaker, grant me a slot of the PoP's bound on
    /// concurrent migrations to move this VM; refuse while the PoP is full.
    Slot {
        /// The VM.
        vm: String,
    },
    /// The move of this VM ended: its slot is free.
    SlotFree {
        /// The VM.
        vm: String,
    },
    /// Send me the whole list of your VMs (my copy fell behind your summaries).
    Vms,
    /// Send me your latest summary (your probe or answer named one I missed).
    Summary,
    /// Send me every PoP you know: I just joined (see [`crate::cluster::Membership::book`]).
    Pops,
    /// Are you alive? (SWIM's probe.) `seq` numbers my latest summary.
    Ping {
        /// The number of the sender's latest summary.
        seq: u64,
    },
    /// Is the VM you were moving to me still on its way?
    Departure {
        /// The VM.
        name: String,
        /// The generation it arrives with.
        generation: u64,
    },
}

/// An agent's answer.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub enum PeerResponse {
    /// The VM, created or shown.
    Vm(Box<VmStatus>),
    /// Refused, with the reason.
    Refused(ApiError),
    /// Done, nothing to report.
    Done,
    /// Ready to receive a VM: by live migration to this URI, or cold.
    Ready {
        /// The destination hypervisor's migration URI; none for a cold move.
        uri: Option<String>,
    },
    /// Where a VM being moved stands, as its source sees it.
    Departure(Departure),
    /// Joined a partition: this host as a member.
    Joined {
        /// The host, its capacity and its VMs.
        view: Box<crate::rebalance::MemberView>,
        /// Agents to ask next (the members of a younger event that merged).
        also: Vec<(crate::cluster::PeerId, String)>,
    },
    /// In the partition of another event.
    Busy(crate::rebalance::EventId),
    /// My latest summary.
    Summary(Box<crate::cluster::HostSummary>),
    /// Alive, answering a probe; `seq` numbers my latest summary.
    Pong {
        /// The number of the answering agent's latest summary.
        seq: u64,
    },
    /// The PoPs I know, mine first.
    Pops(Vec<crate::cluster::BookEntry>),
    /// The VMs of my host.
    Vms {
        /// The version of the set, as my summaries number it.
        version: u64,
        /// Their names.
        vms: Vec<String>,
    },
}

/// A source's answer about a VM it was moving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Departure {
    /// Still moving it to you.
    Moving,
    /// The move was called off; it stays here.
    Stayed,
    /// It is not here (any more): it is yours.
    Gone,
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Reply {
    /// One VM (create, show, start, stop).
    Vm(Box<VmStatus>),
    /// Every VM (list).
    Vms(Vec<VmStatus>),
    /// The VM that was deleted.
    Deleted(String),
    /// The host (status).
    Host(Box<HostStatus>),
    /// The cluster as this agent sees it.
    Cluster(Box<ClusterStatus>),
}

/// Why a request failed; the agent maps each kind to an HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApiErrorKind {
    /// The request itself is invalid (400).
    BadRequest,
    /// No such VM (404).
    NotFound,
    /// The name is taken or the VM is busy (409).
    Conflict,
    /// No host can take it: capacity or constraints (422).
    Unplaceable,
    /// The hypervisor refused or failed (502).
    Hypervisor,
    /// The hypervisor is unreachable or the agent is stopping (503).
    Unavailable,
    /// The agent's state directory is full: the change cannot be recorded (507).
    InsufficientStorage,
}

/// A failed request with a sentence that says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// Its kind.
    pub kind: ApiErrorKind,
    /// What is wrong, for a person.
    pub message: String,
}

impl ApiError {
    pub(crate) fn new(kind: ApiErrorKind, message: impl Into<String>) -> Self {
        ApiError { kind, message: message.into() }
    }
}

/// A quantity of resources, for status reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Size {
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Memory, MiB.
    pub memory_mib: u32,
    /// Disk, GiB.
    pub disk_gib: u32,
}

impl From<locus_sdk::Resources> for Size {
    fn from(r: locus_sdk::Resources) -> Self {
        Size { vcpus: r.vcpus, memory_mib: r.memory_mib, disk_gib: r.disk_gib }
    }
}

/// A VM as the node knows it: intent, observation and what it is doing.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VmStatus {
    /// The VM's name (also its libvirt domain's name).
    pub name: String,
    /// What the hypervisor last reported.
    pub state: DomainState,
    /// What the tenant wants.
    pub desired: Desired,
    /// The host it is on.
    pub host: String,
    /// The host's PoP.
    pub pop: String,
    /// The operation in progress (creating, starting, stopping, deleting,
    /// restarting, recreating), if any.
    pub busy: Option<String>,
    /// CPU use over the last sampling interval, milli-CPUs.
    pub cpu_milli: Option<u32>,
    /// CPU time used since boot, ns.
    pub cpu_time_ns: u64,
    /// Memory held, KiB.
    pub memory_kib: u64,
    /// Times the restart policy has started it again.
    pub restarts: u32,
    /// The last hypervisor error about it.
    pub last_error: Option<String>,
    /// What was accepted and is not done yet, and why: an operation the
    /// hypervisor was unavailable for, carried out when it is back. A
    /// request answered while this is set gets 202 Accepted.
    #[serde(default)]
    pub pending: Option<String>,
    /// A move between hosts under way: `moving to HOST` or `arriving from HOST`.
    #[serde(default)]
    pub handoff: Option<String>,
    /// A live migration out of this host: how far it has got, from the
    /// hypervisor's job statistics (sampled four times a second).
    #[serde(default)]
    pub migration: Option<crate::hypervisor::MigrationProgress>,
    /// How many times it has moved between hosts.
    #[serde(default)]
    pub generation: u64,
    /// What was asked for.
    pub spec: VmRequest,
}

/// The hypervisor connection as the node sees it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HypervisorStatus {
    /// `connecting` (not reached yet), `up` or `down`.
    pub state: String,
    /// Why it is down, when it is.
    pub reason: Option<String>,
    /// What it reported when it came up.
    pub inventory: Option<Inventory>,
}

/// VM counts by state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VmCounts {
    /// All VMs the node holds intent for.
    pub total: u32,
    /// Running.
    pub running: u32,
    /// Defined and stopped.
    pub stopped: u32,
    /// Anything else (paused, crashed, missing, unknown).
    pub other: u32,
}

/// The host: capacity, allocation, hypervisor.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostStatus {
    /// The host's name.
    pub name: String,
    /// Its PoP.
    pub pop: String,
    /// The PoP's jurisdiction code.
    pub jurisdiction: String,
    /// The hypervisor connection.
    pub hypervisor: HypervisorStatus,
    /// Allocatable resources.
    pub capacity: Size,
    /// Allocated to VMs.
    pub allocated: Size,
    /// Still free.
    pub free: Size,
    /// CPU demand of its running VMs at the last sample, milli-CPUs:
    /// measured where the hypervisor reports CPU time, declared
    /// (`load-cpu-milli`) otherwise.
    pub load_cpu_milli: u32,
    /// Its physical CPUs, milli-CPUs (what CPU demand is judged against).
    pub cpu_milli: u32,
    /// Memory demand of its running VMs at the last sample, MiB (judged
    /// against `capacity.memory-mib`).
    pub load_memory_mib: u32,
    /// Overloaded, underloaded or normal, once sustained (`[load]`).
    pub load_state: crate::load::LoadState,
    /// Samples in a row that agree with the latest.
    pub load_streak: u32,
    /// A drain in progress or finished, until `host resume`.
    #[serde(default)]
    pub drain: Option<DrainStatus>,
    /// VM moves under way or waiting, from this host.
    #[serde(default)]
    pub moves: Vec<String>,
    /// Cooperative rebalancing: the event it leads or is part of, and how
    /// recent events ended.
    #[serde(default)]
    pub rebalance: crate::rebalance::RebalanceStatus,
    /// `on`, or `standby` (emptied; woken when a VM needs it).
    #[serde(default)]
    pub power: String,
    /// Power drawn now, watts (modelled from its CPU demand; its standby
    /// watts in standby).
    #[serde(default)]
    pub watts: u32,
    /// VMs by state.
    pub vms: VmCounts,
    /// Placements waiting for the placement policy's answer.
    pub deciding: u32,
    /// Renewable power the PoP has unused now, watts.
    pub pop_renewable_watts: u32,
    /// The PoP's grid carbon intensity now, gCO2/kWh.
    pub pop_carbon_g_per_kwh: u32,
    /// Domains on the hypervisor marked as this host's, at the last sample.
    pub own_domains: u32,
    /// Domains on the hypervisor that this agent did not create (left alone).
    pub other_domains: u32,
}

/// How a drain is going.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DrainStatus {
    /// VMs on the host when the drain began.
    pub total: u32,
    /// Moved away since.
    pub moved: u32,
    /// Still here.
    pub remaining: u32,
    /// VMs that could not be moved, with the reason (tried again at `host drain`).
    pub failed: Vec<(String, String)>,
}

/// A host of the cluster, as `locus cluster status` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MemberStatus {
    /// Its agent's peer id.
    pub peer: String,
    /// Its name.
    pub host: String,
    /// Its PoP.
    pub pop: String,
    /// alive, suspect or dead.
    pub liveness: crate::cluster::Liveness,
    /// Free resources, when known (hosts of this PoP).
    pub free: Option<Size>,
    /// Measured round trip, ms.
    pub rtt_ms: Option<f64>,
    /// Overloaded, underloaded or normal, as it judges itself (hosts of
    /// this PoP).
    #[serde(default)]
    pub load: Option<crate::load::LoadState>,
    /// Its VMs.
    pub vms: u32,
}

/// A PoP, as `locus cluster status` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PopStatus {
    /// Its name.
    pub pop: String,
    /// Its jurisdiction.
    pub jurisdiction: String,
    /// Hosts alive / known.
    pub hosts_alive: u32,
    /// Hosts known.
    pub hosts: u32,
    /// Free resources on its live hosts.
    pub free: Size,
    /// Measured round trip from this agent, ms (none for its own PoP).
    pub rtt_ms: Option<f64>,
    /// The agent that speaks for it.
    pub speaker: String,
    /// Where it is.
    pub location: crate::Location,
    /// Renewable power it has unused, watts.
    #[serde(default)]
    pub renewable_watts: u32,
    /// Its grid's carbon intensity, gCO2/kWh.
    #[serde(default)]
    pub carbon_g_per_kwh: u32,
}

/// The cluster as one agent sees it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterStatus {
    /// This agent's peer id.
    pub peer: String,
    /// Its host.
    pub host: String,
    /// Its PoP.
    pub pop: String,
    /// Every PoP, its own first.
    pub pops: Vec<PopStatus>,
    /// This PoP's hosts, from their own summaries, and other PoPs' dead hosts, from
    /// their speakers (other PoPs' live hosts are counted in `pops`, not listed).
    pub hosts: Vec<MemberStatus>,
}
