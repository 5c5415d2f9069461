//! Durable intent: what tenants asked for, as stored. The agent's store
//! keeps these records; libvirt keeps the truth about what runs. On start
//! the node reconciles the two.

use crate::VmRequest;
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
}

impl VmIntent {
    /// A VM that should run, with nothing owed.
    pub fn new(spec: VmRequest, desired: Desired) -> Self {
        VmIntent { spec, desired, start_owed: false }
    }
}

/// A change to the stored intent, written before the actions that follow it.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Insert or replace a VM's record.
    Put(VmIntent),
    /// Remove a VM's record.
    Remove(String),
}
