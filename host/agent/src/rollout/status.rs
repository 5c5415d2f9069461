//! What agents report about their policies, and what the API answers:
//! each agent's active version per slot and the push behind it, shadow
//! reports, and every push with its stage.

use super::shadow::ShadowReport;
use super::table::{Record, Stage};
use crate::policies::SlotName;
use serde::{Deserialize, Serialize};

/// One agent's policies, as it reports them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AgentStatus {
    /// Its peer id.
    pub peer: String,
    /// Its host.
    pub host: String,
    /// Its PoP.
    pub pop: String,
    /// When it reported, Unix ms.
    pub at_ms: u64,
    /// Digest of the pushes it knows (equal on agents that agree).
    pub digest: u64,
    /// Each slot.
    pub slots: Vec<SlotStatus>,
    /// Shadow runs, running or finished.
    pub shadows: Vec<ShadowReport>,
    /// Bundles it holds (and serves), by hash.
    pub bundles: Vec<String>,
    /// Pushes it refused, and why.
    pub problems: Vec<String>,
}

/// What one slot of one agent runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SlotStatus {
    /// The slot.
    pub slot: SlotName,
    /// The active version's id (`name@hash-prefix`).
    pub policy: String,
    /// SHA-256 of its component.
    pub hash: String,
    /// The push it runs (`scope/slot#seq`); none: its own (configured or
    /// loaded on this agent).
    pub push: Option<String>,
    /// `own`, `canary` or `active`.
    pub stage: String,
    /// Calls of the active version since it was activated.
    pub calls: u64,
    /// Of which failed.
    pub failures: u64,
    /// When this agent activated the push it runs, Unix ms.
    pub since_ms: Option<u64>,
}

/// A push and where it stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PushView {
    /// `scope/slot#seq`.
    pub id: String,
    /// Where it stands.
    pub stage: Stage,
    /// The push.
    pub record: Record,
}

/// Every push of a scope and every agent's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RolloutStatus {
    /// Pushes, oldest first per scope and slot.
    pub pushes: Vec<PushView>,
    /// Agents (of the scope), this one first.
    pub agents: Vec<AgentStatus>,
}
