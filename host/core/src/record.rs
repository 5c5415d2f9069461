//! Decision records: a compact account of each decision about where a VM
//! runs — its placement, the choice of a host to move it to, its creation
//! again after its host died, a rebalancing plan's move of it — so that
//! `locus vm why` can say how a VM came to be where it is, and the metrics
//! can count decisions by outcome and by policy.
//!
//! The node makes them, because it alone knows the filters' counts, the
//! policy asked and its answer. It has no clock: the agent stamps the
//! wall-clock time, keeps a bounded number, and answers for them.

use crate::filter::Exclusions;
use crate::pipeline::{DecidedBy, Decision, Outcome};
use crate::request::VmRequest;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// Scores kept per record: the best few explain a choice.
pub const TOP_SCORES: usize = 3;

/// What was decided about the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Kind {
    /// Where a new VM runs.
    Placement,
    /// Which host a running VM moves to (a migrate, or a drain).
    Move,
    /// Where a VM of a dead host is created again.
    Evacuation,
    /// A move in a rebalancing event's plan.
    Rebalancing,
}

impl Kind {
    /// A short name, for labels and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Placement => "placement",
            Kind::Move => "move",
            Kind::Evacuation => "evacuation",
            Kind::Rebalancing => "rebalancing",
        }
    }
}

/// Who took the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Decider {
    /// The policy (or an earlier version of it, see `failure`).
    Policy,
    /// The built-in fallback, because the policy failed (see `failure`).
    Fallback,
    /// The filters alone: they left no host.
    Filters,
    /// An operator, who named the destination (`vm migrate --to`).
    Operator,
}

impl Decider {
    /// A short name, for labels and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Decider::Policy => "policy",
            Decider::Fallback => "fallback",
            Decider::Filters => "filters",
            Decider::Operator => "operator",
        }
    }
}

/// How a decision ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Result {
    /// A host was chosen.
    Chosen,
    /// No host of this PoP: the request goes to another PoP, or is refused.
    Refused,
}

impl Result {
    /// A short name, for labels and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Result::Chosen => "chosen",
            Result::Refused => "refused",
        }
    }
}

/// Hosts left after one filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Passed {
    /// The filter: `up`, `jurisdiction`, `latency`, `anti-affinity`, `capacity`.
    pub filter: String,
    /// Hosts that passed it and every filter before it.
    pub hosts: u32,
}

/// One host's score from the policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Score {
    /// The host.
    pub host: String,
    /// Its score (higher is better).
    pub score: f32,
}

/// A policy failure behind a decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Failure {
    /// Its kind, such as `deadline` or `trap`.
    pub kind: String,
    /// The detail, naming the policy.
    pub message: String,
}

/// One decision about one VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Record {
    /// The VM.
    pub vm: String,
    /// What was decided.
    pub kind: Kind,
    /// When, in ms since the Unix epoch (stamped by the agent that kept it).
    pub at_ms: u64,
    /// The host whose agent decided.
    pub host: String,
    /// Its PoP.
    pub pop: String,
    /// The request in a few words (size, image, constraints).
    pub request: String,
    /// Hosts of the PoP considered, before any filter.
    pub considered: u32,
    /// Hosts left after each filter, in the order they apply.
    pub filters: Vec<Passed>,
    /// Who decided.
    pub decided_by: Decider,
    /// The policy that decided, or that failed before the fallback: name
    /// and the first 12 hex digits of its component's SHA-256.
    pub policy: Option<String>,
    /// The policy's failure, when the fallback or an earlier version decided.
    pub failure: Option<Failure>,
    /// How it ended.
    pub result: Result,
    /// The chosen host.
    pub chosen: Option<String>,
    /// What became of the decision: created here, handed to a PoP-mate,
    /// forwarded to another PoP, refused, and why.
    pub outcome: String,
    /// The best scores the policy gave, best first.
    pub top: Vec<Score>,
    /// From the question to the decision (queue and policy), µs.
    pub took_us: u64,
}

impl Record {
    /// The record of `decision` about `spec`, before the agent acts on it;
    /// `host_name` names the model's hosts, `outcome` says what follows.
    pub fn of(
        kind: Kind,
        spec: &VmRequest,
        decision: &Decision,
        host_name: impl Fn(crate::HostId) -> String,
        outcome: String,
    ) -> Self {
        let (decided_by, policy, failure) = match &decision.decided_by {
            DecidedBy::Policy { name, failure } => (Decider::Policy, Some(name.clone()), failure.as_ref()),
            DecidedBy::Fallback { failure } => {
                (Decider::Fallback, Some(failure.policy.clone()), Some(failure))
            }
            DecidedBy::Filters => (Decider::Filters, None, None),
        };
        let (result, chosen) = match &decision.outcome {
            Outcome::Placed { host } => (Result::Chosen, Some(host_name(*host))),
            Outcome::Rejected { .. } => (Result::Refused, None),
        };
        let mut top: Vec<Score> =
            decision.scores.iter().map(|&(h, score)| Score { host: host_name(h), score }).collect();
        top.sort_by(|a, b| b.score.total_cmp(&a.score));
        top.truncate(TOP_SCORES);
        let (considered, filters) = passed(&decision.excluded, decision.candidates);
        Record {
            vm: spec.name.clone(),
            kind,
            at_ms: 0,
            host: String::new(),
            pop: String::new(),
            request: describe(spec),
            considered,
            filters,
            decided_by,
            policy,
            failure: failure.map(|f| Failure { kind: f.kind.as_str().into(), message: f.to_string() }),
            result,
            chosen,
            outcome,
            top,
            took_us: 0,
        }
    }
}

impl Record {
    /// The record of a move of `vm` to host `to` that no filter took part
    /// in (an operator's, or a rebalancing plan's), decided on `host` of
    /// `pop`; the caller says who decided and why.
    pub fn moved(kind: Kind, vm: &str, to: &str, (host, pop): (&str, &str)) -> Self {
        Record {
            vm: vm.to_owned(),
            kind,
            at_ms: 0,
            host: host.to_owned(),
            pop: pop.to_owned(),
            request: String::new(),
            considered: 0,
            filters: Vec::new(),
            decided_by: Decider::Operator,
            policy: None,
            failure: None,
            result: Result::Chosen,
            chosen: Some(to.to_owned()),
            outcome: String::new(),
            top: Vec::new(),
            took_us: 0,
        }
    }
}

/// Hosts considered, and those left after each filter in turn.
fn passed(x: &Exclusions, candidates: u32) -> (u32, Vec<Passed>) {
    let steps = [
        ("up", x.not_up),
        ("jurisdiction", x.jurisdiction),
        ("latency", x.latency),
        ("anti-affinity", x.anti_affinity),
        ("capacity", x.capacity),
    ];
    let considered = candidates + steps.iter().map(|(_, n)| n).sum::<u32>();
    let mut left = considered;
    let filters = steps
        .iter()
        .map(|&(filter, excluded)| {
            left -= excluded;
            Passed { filter: filter.into(), hosts: left }
        })
        .collect();
    (considered, filters)
}

/// A request in a few words.
pub fn describe(spec: &VmRequest) -> String {
    let mut s = format!("{} vCPU, {} MiB", spec.vcpus, spec.memory_mib);
    if spec.disk_gib > 0 {
        let _ = write!(s, ", {} GiB disk", spec.disk_gib);
    }
    if let Some(image) = &spec.image {
        let _ = write!(s, ", image {image}");
    }
    if !spec.jurisdictions.is_empty() {
        let _ = write!(s, ", in {}", spec.jurisdictions.join("|"));
    }
    if let Some(ms) = spec.max_latency_ms {
        let _ = write!(s, ", within {ms} ms of its users");
    }
    if let Some(g) = &spec.group {
        let _ = write!(s, ", group {}", g.name);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{ErrorKind, PolicyError};
    use crate::{HostId, VmRequest};

    fn decision(decided_by: DecidedBy, outcome: Outcome) -> Decision {
        Decision {
            outcome,
            decided_by,
            candidates: 3,
            excluded: Exclusions { not_up: 1, jurisdiction: 0, latency: 2, anti_affinity: 0, capacity: 4 },
            scores: vec![(HostId(0), 0.2), (HostId(2), 0.9), (HostId(1), 0.5), (HostId(3), 0.1)],
            user_rtt_us: None,
        }
    }

    fn spec() -> VmRequest {
        toml::from_str("name = 'web-1'\nvcpus = 2\nmemory-mib = 2048\nimage = 'debian'").expect("request")
    }

    #[test]
    fn counts_hosts_left_after_each_filter_and_keeps_the_best_scores() {
        let d = decision(
            DecidedBy::Policy { name: "best-fit@0123456789ab".into(), failure: None },
            Outcome::Placed { host: HostId(2) },
        );
        let r = Record::of(Kind::Placement, &spec(), &d, |h| format!("h{}", h.0), "created here".into());
        assert_eq!(r.considered, 10);
        let left: Vec<u32> = r.filters.iter().map(|p| p.hosts).collect();
        assert_eq!(left, [9, 9, 7, 7, 3]);
        assert_eq!(r.chosen.as_deref(), Some("h2"));
        assert_eq!(r.result, Result::Chosen);
        assert_eq!(r.decided_by, Decider::Policy);
        let top: Vec<&str> = r.top.iter().map(|s| s.host.as_str()).collect();
        assert_eq!(top, ["h2", "h1", "h0"]);
        assert_eq!(r.request, "2 vCPU, 2048 MiB, image debian");
    }

    #[test]
    fn a_fallback_keeps_the_failed_policy_and_why() {
        let failure = PolicyError::new("green@aa", ErrorKind::Deadline, "no answer within 5000 ms");
        let d = decision(DecidedBy::Fallback { failure }, Outcome::Placed { host: HostId(0) });
        let r = Record::of(Kind::Evacuation, &spec(), &d, |h| format!("h{}", h.0), String::new());
        assert_eq!(r.decided_by, Decider::Fallback);
        assert_eq!(r.policy.as_deref(), Some("green@aa"));
        let f = r.failure.as_ref().map(|f| f.kind.as_str());
        assert_eq!(f, Some("deadline"));
    }

    #[test]
    fn a_refusal_chooses_no_host() {
        let d = decision(
            DecidedBy::Filters,
            Outcome::Rejected { reason: locus_sdk::RejectReason::NoCapacity, message: "full".into() },
        );
        let r = Record::of(Kind::Placement, &spec(), &d, |h| format!("h{}", h.0), "refused".into());
        assert_eq!((r.result, r.chosen, r.policy), (Result::Refused, None, None));
    }
}
