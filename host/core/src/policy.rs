//! The seam between the core and whatever decides: the [`Policy`] trait.
//!
//! `locus-policy` implements it for WebAssembly components (sandboxed,
//! metered, hot-swappable); [`Native`] implements it for policies compiled
//! into the process, which the tests, the simulator and the benchmarks'
//! baselines use. The core calls both the same way and never learns which.

use crate::validate;
use locus_sdk::{Cluster, Migration, Partition, Placement, Request};
use std::fmt;

/// What went wrong in a policy call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The policy does not implement the capability asked for.
    Unsupported,
    /// The policy trapped (a panic, an illegal operation).
    Trap,
    /// The policy ran past its deadline and was interrupted.
    Deadline,
    /// The policy tried to grow its memory past the cap.
    MemoryCap,
    /// The policy returned a decision that breaks the rules.
    InvalidDecision,
    /// The policy could not be instantiated.
    Instantiate,
}

impl ErrorKind {
    /// Every kind, for counters.
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::Unsupported,
        ErrorKind::Trap,
        ErrorKind::Deadline,
        ErrorKind::MemoryCap,
        ErrorKind::InvalidDecision,
        ErrorKind::Instantiate,
    ];

    /// A short name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Trap => "trap",
            ErrorKind::Deadline => "deadline",
            ErrorKind::MemoryCap => "memory-cap",
            ErrorKind::InvalidDecision => "invalid-decision",
            ErrorKind::Instantiate => "instantiate",
        }
    }
}

/// A failed policy call: which policy, what kind of failure, and the detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[error("policy {policy}: {}: {message}", kind.as_str())]
pub struct PolicyError {
    /// The policy's name and version, such as `best-fit@3f2a9c1d`.
    pub policy: String,
    /// What went wrong.
    pub kind: ErrorKind,
    /// The detail, for the operator.
    pub message: String,
}

impl PolicyError {
    /// A new error.
    pub fn new(policy: impl Into<String>, kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { policy: policy.into(), kind, message: message.into() }
    }
}

/// A decision and who made it.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict<T> {
    /// The decision, already validated.
    pub value: T,
    /// The policy (name and version) that made it.
    pub decided_by: String,
    /// Set when the policy asked first failed and an earlier version decided.
    pub failure: Option<PolicyError>,
}

/// Something that takes scheduling decisions.
///
/// Implementations validate every decision with [`validate`] before
/// returning it, and turn any misbehaviour into a [`PolicyError`]; they never
/// panic because of what a policy did.
pub trait Policy: Send + Sync {
    /// The name and version, for errors and explanations.
    fn name(&self) -> String;

    /// Chooses a host among `cluster.hosts` for `request`, or declines.
    fn place(&self, cluster: &Cluster, request: &Request) -> Result<Verdict<Placement>, PolicyError>;

    /// Plans migrations on `partition`.
    fn plan(&self, partition: &Partition) -> Result<Verdict<Vec<Migration>>, PolicyError>;
}

/// A shared policy (the agent shares its hot-swappable slots with the node).
impl<P: Policy + ?Sized> Policy for std::sync::Arc<P> {
    fn name(&self) -> String {
        (**self).name()
    }

    fn place(&self, cluster: &Cluster, request: &Request) -> Result<Verdict<Placement>, PolicyError> {
        (**self).place(cluster, request)
    }

    fn plan(&self, partition: &Partition) -> Result<Verdict<Vec<Migration>>, PolicyError> {
        (**self).plan(partition)
    }
}

/// A policy compiled into the process, from functions of the SDK's traits.
#[derive(Clone, Copy)]
pub struct Native {
    name: &'static str,
    place: Option<fn(&Cluster, &Request) -> Placement>,
    plan: Option<fn(&Partition) -> Vec<Migration>>,
}

impl fmt::Debug for Native {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Native").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Native {
    /// A native placement policy.
    pub fn placement<P: locus_sdk::PlacementPolicy>(name: &'static str) -> Self {
        Self { name, place: Some(P::place), plan: None }
    }

    /// A native migration policy.
    pub fn migration<M: locus_sdk::MigrationPolicy>(name: &'static str) -> Self {
        Self { name, place: None, plan: Some(M::plan) }
    }
}

impl Policy for Native {
    fn name(&self) -> String {
        format!("{}@native", self.name)
    }

    fn place(&self, cluster: &Cluster, request: &Request) -> Result<Verdict<Placement>, PolicyError> {
        let place = self.place.ok_or_else(|| self.unsupported("placement"))?;
        let value = place(cluster, request);
        validate::placement(cluster, request, &value)
            .map_err(|e| PolicyError::new(self.name(), ErrorKind::InvalidDecision, e))?;
        Ok(Verdict { value, decided_by: self.name(), failure: None })
    }

    fn plan(&self, partition: &Partition) -> Result<Verdict<Vec<Migration>>, PolicyError> {
        let plan = self.plan.ok_or_else(|| self.unsupported("migration"))?;
        let value = plan(partition);
        validate::plan(partition, &value)
            .map_err(|e| PolicyError::new(self.name(), ErrorKind::InvalidDecision, e))?;
        Ok(Verdict { value, decided_by: self.name(), failure: None })
    }
}

impl Native {
    fn unsupported(&self, what: &str) -> PolicyError {
        PolicyError::new(self.name(), ErrorKind::Unsupported, format!("it is not a {what} policy"))
    }
}
