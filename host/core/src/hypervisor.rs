//! What the core asks of a host's hypervisor and what it hears back, as
//! plain values. The agent carries these out with libvirt; the simulator
//! with a model. Nothing here talks to a hypervisor.

use serde::{Deserialize, Serialize};

/// Identifies one hypervisor command until its result comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(pub u64);

/// One thing to do to a domain. Each names the VM (the domain has the VM's name).
#[derive(Debug, Clone, PartialEq)]
pub enum HvCommand {
    /// Define a persistent domain for this request, marked as this agent's.
    Define(Box<crate::VmRequest>),
    /// Boot a defined domain.
    Start(String),
    /// Ask the guest to shut down (ACPI); returns at once.
    Shutdown(String),
    /// Power the domain off at once.
    Destroy(String),
    /// Remove the domain's definition.
    Undefine(String),
    /// Get ready to receive this VM from another host: for a live move
    /// (`live`), prepare what libvirt does not copy (its disk, on the same
    /// base image); for a cold one, define it here, stopped.
    Receive {
        /// The VM, as its source runs it.
        spec: Box<crate::VmRequest>,
        /// Whether it arrives by live migration.
        live: bool,
    },
    /// Live-migrate the running domain to the hypervisor at `uri`
    /// (peer-to-peer, persistent there, undefined here, its disk copied),
    /// aborting after `timeout`. Succeeds with `Missing`: it is gone from here.
    MigrateOut {
        /// The VM.
        vm: String,
        /// The destination hypervisor's migration URI.
        uri: String,
        /// Longest the migration may take before it is aborted.
        timeout: std::time::Duration,
    },
    /// End any migration job of the domain (aborting it), then report its
    /// state: what a restarted source does before it decides whether its
    /// copy left.
    Settle(String),
    /// Remove what an arrival that was called off left here: the disk
    /// prepared for it and an inactive domain still marked as host
    /// `from`'s (a failed migration can leave its definition behind).
    /// Never touches a running domain or one marked as anyone else's.
    Discard {
        /// The VM.
        vm: String,
        /// The source host.
        from: String,
    },
    /// Mark a domain that arrived from host `from` as this host's.
    Adopt {
        /// The VM.
        spec: Box<crate::VmRequest>,
        /// The host whose mark it carries now.
        from: String,
    },
}

impl HvCommand {
    /// The VM it acts on.
    pub fn vm(&self) -> &str {
        match self {
            HvCommand::Define(r) => &r.name,
            HvCommand::Receive { spec, .. } | HvCommand::Adopt { spec, .. } => &spec.name,
            HvCommand::Start(n)
            | HvCommand::Shutdown(n)
            | HvCommand::Destroy(n)
            | HvCommand::Undefine(n)
            | HvCommand::Settle(n)
            | HvCommand::Discard { vm: n, .. }
            | HvCommand::MigrateOut { vm: n, .. } => n,
        }
    }
}

/// A domain's run state as the hypervisor reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum DomainState {
    /// Not observed yet (the hypervisor has not answered since the agent started).
    #[default]
    Unknown,
    /// Running.
    Running,
    /// Paused or suspended.
    Paused,
    /// Shutting down.
    ShuttingDown,
    /// Defined but not running.
    Shutoff,
    /// The guest crashed.
    Crashed,
    /// Defined by intent but absent from the hypervisor.
    Missing,
    /// On a host the cluster believes dead.
    Lost,
}

impl DomainState {
    /// True when the guest occupies the host (running, paused or on its way down).
    pub fn is_active(self) -> bool {
        matches!(self, DomainState::Running | DomainState::Paused | DomainState::ShuttingDown)
    }
}

/// Why a command failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HvErrorKind {
    /// The hypervisor cannot be reached.
    Unavailable,
    /// No such domain.
    NotFound,
    /// The hypervisor refused (bad definition, no resources, wrong state…).
    Refused,
    /// The request names something this host does not have, such as an
    /// image that is not in its store: the client's to fix.
    Invalid,
}

/// A failed command, with the hypervisor's own message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HvError {
    /// Its kind.
    pub kind: HvErrorKind,
    /// What the hypervisor said.
    pub message: String,
}

/// The host as its hypervisor describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Inventory {
    /// Physical CPUs (threads).
    pub cpus: u32,
    /// Physical memory, MiB.
    pub memory_mib: u32,
    /// The hypervisor's name for itself (driver and version).
    pub hypervisor: String,
    /// Where other hosts' hypervisors reach this one to live-migrate VMs
    /// here; none when it cannot receive live migrations (libvirt's test
    /// driver), and VMs then move cold.
    #[serde(default)]
    pub migration_uri: Option<String>,
}

/// One of this agent's domains as sampled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSeen {
    /// Its name (the VM's name).
    pub name: String,
    /// Run state.
    pub state: DomainState,
    /// CPU time used since it booted, ns.
    pub cpu_time_ns: u64,
    /// CPU use over the last sampling interval, milli-CPUs (None on the first sample).
    pub cpu_milli: Option<u32>,
    /// Memory the guest holds, KiB.
    pub memory_kib: u64,
}

/// A complete listing of the hypervisor's domains.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observation {
    /// Domains this agent created (marked with its owner name).
    pub ours: Vec<DomainSeen>,
    /// Names of every other domain, left alone but kept out of the VM namespace.
    pub others: Vec<String>,
}
