//! What a policy returns: the Rust form of the WIT `placement`, `choice`,
//! `rejection` and `migration` types.

/// A per-host score attached to a decision, for explanations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// Row in [`Cluster::hosts`](crate::Cluster::hosts).
    pub host: u32,
    /// The policy's score for that host; higher is better.
    pub value: f32,
}

/// The chosen host.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// Row in [`Cluster::hosts`](crate::Cluster::hosts) of the chosen host.
    pub host: u32,
    /// Optional scores of the hosts the policy weighed (at most one per
    /// host), shown to operators to explain the choice. May be empty.
    pub scores: Vec<Score>,
}

/// Why a policy declined a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// No host has room for the VM.
    NoCapacity,
    /// Hosts have room but none satisfies the constraints or the policy's
    /// rules; the agent may forward the request to another PoP.
    Constraints,
    /// Anything else; see the message.
    Other,
}

/// A declined request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The kind of reason.
    pub reason: RejectReason,
    /// A sentence for the operator (the agent keeps at most 1 KiB).
    pub message: String,
}

/// The answer to a placement request.
#[derive(Debug, Clone, PartialEq)]
pub enum Placement {
    /// Run the VM on this host.
    Place(Choice),
    /// Do not run it here.
    Reject(Rejection),
}

impl Placement {
    /// Place on row `host`, without scores.
    pub fn on(host: u32) -> Self {
        Placement::Place(Choice { host, scores: Vec::new() })
    }

    /// Place on row `host`, explaining the choice with `scores`.
    pub fn on_with_scores(host: u32, scores: Vec<Score>) -> Self {
        Placement::Place(Choice { host, scores })
    }

    /// Decline, with a reason and a message for the operator.
    pub fn reject(reason: RejectReason, message: impl Into<String>) -> Self {
        Placement::Reject(Rejection { reason, message: message.into() })
    }

    /// The chosen row, if the request was placed.
    pub fn host(&self) -> Option<u32> {
        match self {
            Placement::Place(choice) => Some(choice.host),
            Placement::Reject(_) => None,
        }
    }
}

/// One live migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Migration {
    /// Row in [`Partition::vms`](crate::Partition::vms) of the VM to move.
    pub vm: u32,
    /// Row in the partition's hosts of the destination.
    pub to: u32,
}
