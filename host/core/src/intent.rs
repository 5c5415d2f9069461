//! Durable intent: what tenants asked for, as stored. The agent's store
//! keeps these records; libvirt keeps the truth about what runs. On start
//! the node reconciles the two.

use crate::VmRequest;
use crate::cluster::PeerId;
use serde::{Deserialize, Serialize};

/// What the tenant wants a VM to be doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Desired {
    /// Running.
    Running,
    /// Defined but stopped.
    Stopped,
    /// Being deleted: the record goes once the domain is gone.
    Deleted,
}

/// One VM's stored intent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmIntent {
    /// What was asked for.
    pub spec: VmRequest,
    /// What it should be doing.
    pub desired: Desired,
    /// A start (or a create's boot) was accepted while the hypervisor was
    /// unavailable and has not happened yet: it is carried out when the
    /// hypervisor is back, whatever the restart policy.
    #[serde(default)]
    pub start_owed: bool,
    /// Counts the VM's moves between hosts: the copy with the highest
    /// generation is the current one.
    #[serde(default)]
    pub generation: u64,
    /// A move between hosts under way, written before libvirt is called so
    /// that a restarted agent knows to finish or undo it.
    #[serde(default)]
    pub handoff: Option<Handoff>,
}

impl VmIntent {
    /// A VM that should run, with nothing owed.
    pub fn new(spec: VmRequest, desired: Desired) -> Self {
        VmIntent { spec, desired, start_owed: false, generation: 0, handoff: None }
    }
}

/// One side of a VM's move between two hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Handoff {
    /// This host is moving the VM to another one.
    To {
        /// The destination's agent.
        peer: PeerId,
        /// The destination host.
        host: String,
    },
    /// This host is receiving the VM from another one.
    From {
        /// The source's agent.
        peer: PeerId,
        /// The source host.
        host: String,
    },
}

impl std::fmt::Display for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Handoff::To { host, .. } => write!(f, "moving to {host}"),
            Handoff::From { host, .. } => write!(f, "arriving from {host}"),
        }
    }
}

/// A change to the stored intent, written before the actions that follow it.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Insert or replace a VM's record.
    Put(Box<VmIntent>),
    /// Remove a VM's record.
    Remove(String),
}
