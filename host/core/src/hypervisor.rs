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
    /// Define a persistent domain for this request, marked as this
    /// agent's, with the VM's generation.
    Define {
        /// The VM.
        spec: Box<crate::VmRequest>,
        /// Its generation (moves and re-creations so far), written into
        /// the mark so the domain itself says which copy it is.
        generation: u64,
    },
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
        /// Its generation once arrived (a cold move's definition is marked
        /// with it).
        generation: u64,
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
        /// Its generation here.
        generation: u64,
    },
}

impl HvCommand {
    /// The command's name, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            HvCommand::Define { .. } => "define",
            HvCommand::Start(_) => "start",
            HvCommand::Shutdown(_) => "shutdown",
            HvCommand::Destroy(_) => "destroy",
            HvCommand::Undefine(_) => "undefine",
            HvCommand::Receive { .. } => "receive",
            HvCommand::MigrateOut { .. } => "migrate-out",
            HvCommand::Settle(_) => "settle",
            HvCommand::Discard { .. } => "discard",
            HvCommand::Adopt { .. } => "adopt",
        }
    }

    /// The VM it acts on.
    pub fn vm(&self) -> &str {
        match self {
            HvCommand::Define { spec, .. }
            | HvCommand::Receive { spec, .. }
            | HvCommand::Adopt { spec, .. } => &spec.name,
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
    /// The generation its mark carries; none where the mark has none (a
    /// domain defined before marks carried it).
    pub generation: Option<u64>,
}

/// A complete listing of the hypervisor's domains.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observation {
    /// Domains this agent created (marked with its owner name).
    pub ours: Vec<DomainSeen>,
    /// Names of every other domain, left alone but kept out of the VM namespace.
    pub others: Vec<String>,
}

/// How far a live migration has got, from the hypervisor's job statistics
/// (libvirt's `virDomainGetJobStats`), sampled while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MigrationProgress {
    /// Time since the migration started, ms.
    pub elapsed_ms: u64,
    /// Bytes to copy in all, memory and disk; grows while the guest
    /// dirties memory faster than it is copied.
    pub total_bytes: u64,
    /// Bytes sent so far (pages of zeros count for little).
    pub processed_bytes: u64,
    /// Bytes left to copy.
    pub remaining_bytes: u64,
    /// Passes over the guest's memory so far: more than a few means the
    /// guest dirties memory about as fast as it is copied.
    pub memory_passes: u64,
    /// Memory copy rate, bytes per second.
    pub memory_bytes_per_s: u64,
    /// How much auto-converge slows the guest's CPUs, percent (0: not).
    pub throttle_percent: u32,
}

impl MigrationProgress {
    /// Share copied, percent, as far as the total is known.
    pub fn percent(&self) -> u32 {
        if self.total_bytes == 0 {
            return 0;
        }
        let done = self.total_bytes.saturating_sub(self.remaining_bytes) as f64;
        (done * 100.0 / self.total_bytes as f64).round().clamp(0.0, 100.0) as u32
    }
}

impl std::fmt::Display for MigrationProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const MIB: u64 = 1 << 20;
        write!(
            f,
            "{} % after {:.1} s: {} MiB sent, {} of {} MiB left, memory pass {}, {} MiB/s",
            self.percent(),
            self.elapsed_ms as f64 / 1000.0,
            self.processed_bytes / MIB,
            self.remaining_bytes / MIB,
            self.total_bytes / MIB,
            self.memory_passes,
            self.memory_bytes_per_s / MIB,
        )?;
        if self.throttle_percent > 0 {
            write!(f, ", guest throttled {} %", self.throttle_percent)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::MigrationProgress;

    #[test]
    fn progress_counts_what_is_left_of_the_total() {
        let mib = 1 << 20;
        let p = MigrationProgress {
            elapsed_ms: 1500,
            total_bytes: 1024 * mib,
            processed_bytes: 300 * mib,
            remaining_bytes: 256 * mib,
            memory_passes: 2,
            memory_bytes_per_s: 110 * mib,
            throttle_percent: 20,
        };
        assert_eq!(p.percent(), 75);
        assert_eq!(
            p.to_string(),
            "75 % after 1.5 s: 300 MiB sent, 256 of 1024 MiB left, memory pass 2, 110 MiB/s, guest throttled 20 %"
        );
        // In its setup, a job has counted nothing yet.
        assert_eq!(MigrationProgress { elapsed_ms: 200, ..MigrationProgress::default() }.percent(), 0);
    }
}
