//! The placement pipeline: hard filters → policy → validation, with a
//! native safe fallback when the policy fails.
//!
//! The fallback is deliberately simple (first fit over the hosts that passed
//! the filters) and runs only when the policy, and any earlier version the
//! runtime keeps, could not decide. It cannot break a constraint: it chooses
//! among filtered hosts and its choice is validated like any other.

use crate::filter::{self, Exclusions, Resolved};
use crate::model::{HostId, Model};
use crate::policy::{Policy, PolicyError, Verdict};
use crate::request::VmRequest;
use crate::{validate, view};
use locus_sdk::{Cluster, Placement, RejectReason, Request};

/// Who took a decision.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum DecidedBy {
    /// The policy asked (or an earlier version of it, after `failure`).
    Policy {
        /// Name and version.
        name: String,
        /// Why the version asked first did not decide, if it did not.
        failure: Option<PolicyError>,
    },
    /// The built-in fallback, because the policy failed.
    Fallback {
        /// The policy's failure.
        failure: PolicyError,
    },
    /// Nobody: the filters left no host.
    Filters,
}

/// The result of placing one request.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "outcome")]
pub enum Outcome {
    /// Run the VM on this host.
    Placed {
        /// The host.
        host: HostId,
    },
    /// Not placed here.
    Rejected {
        /// The reason's kind.
        #[serde(serialize_with = "reason_name")]
        reason: RejectReason,
        /// A sentence for the operator.
        message: String,
    },
}

fn reason_name<S: serde::Serializer>(r: &RejectReason, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match r {
        RejectReason::NoCapacity => "no-capacity",
        RejectReason::Constraints => "constraints",
        RejectReason::Other => "other",
    })
}

/// A placement decision with what explains it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Decision {
    /// Placed or rejected.
    pub outcome: Outcome,
    /// Who decided.
    pub decided_by: DecidedBy,
    /// Hosts that passed the filters.
    pub candidates: u32,
    /// Hosts the filters excluded, by constraint.
    pub excluded: Exclusions,
    /// The policy's scores, by host, if it gave any.
    pub scores: Vec<(HostId, f32)>,
    /// Estimated round-trip time between the users and the chosen host's
    /// PoP, µs, when placed and the users' location is known.
    pub user_rtt_us: Option<u32>,
}

/// A placement question ready for a policy: the view of the hosts that
/// passed the filters. The node hands it to whoever runs policies and takes
/// the answer back; [`Question::conclude`] turns the answer into a decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    /// The candidate hosts and every PoP, as the policy sees them.
    pub cluster: Cluster,
    /// The request, as the policy sees it.
    pub request: Request,
    /// The model's host behind each row of `cluster.hosts`.
    pub rows: Vec<HostId>,
    excluded: Exclusions,
}

/// What the filters leave: a question for the policy, or a decision they
/// took alone.
#[derive(Debug, Clone, PartialEq)]
pub enum Prepared {
    /// The policy must choose among these hosts.
    Ask(Box<Question>),
    /// Nothing to choose from: rejected by the filters.
    Done(Decision),
}

/// Places requests; holds a reusable buffer, so keep one per worker.
#[derive(Debug, Default)]
pub struct Placer {
    rows: Vec<HostId>,
}

impl Placer {
    /// A placer with empty buffers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies the hard filters to `request` on `model` and builds the
    /// policy's view of what is left.
    pub fn prepare(&mut self, model: &Model, request: &VmRequest) -> Prepared {
        let mut resolved = Resolved::new(model, request);
        let mut excluded = filter::candidates(model, &resolved, &mut self.rows);
        // Hosts in standby are woken only when no other host can take it.
        if self.rows.is_empty() && model.hosts.iter().any(|h| h.state == crate::model::HostState::Standby) {
            resolved.standby = true;
            excluded = filter::candidates(model, &resolved, &mut self.rows);
        }
        let reject = |reason, message: String| {
            Prepared::Done(Decision {
                outcome: Outcome::Rejected { reason, message },
                decided_by: DecidedBy::Filters,
                candidates: 0,
                excluded,
                scores: Vec::new(),
                user_rtt_us: None,
            })
        };
        if !resolved.unknown_jurisdictions.is_empty() {
            let message = format!("unknown jurisdiction(s) {}", resolved.unknown_jurisdictions.join(", "));
            if resolved.jurisdictions.as_ref().is_none_or(Vec::is_empty) {
                return reject(RejectReason::Constraints, message);
            }
        }
        if self.rows.is_empty() {
            let reason =
                if excluded.only_capacity() { RejectReason::NoCapacity } else { RejectReason::Constraints };
            return reject(reason, format!("no host passed the filters: {}", excluded.describe()));
        }
        let mut cluster = Cluster::default();
        view::fill_cluster(model, &self.rows, &mut cluster);
        let request = view::request(model, resolved, request.user.map(Into::into), &self.rows);
        Prepared::Ask(Box::new(Question { cluster, request, rows: self.rows.clone(), excluded }))
    }

    /// Places `request` on `model` with `policy`, on the spot. The model is
    /// not changed: the caller records the VM once it really runs.
    pub fn place(&mut self, model: &Model, request: &VmRequest, policy: &dyn Policy) -> Decision {
        match self.prepare(model, request) {
            Prepared::Done(decision) => decision,
            Prepared::Ask(q) => q.conclude(policy.place(&q.cluster, &q.request)),
        }
    }
}

impl Question {
    /// The decision, from the policy's answer: validated again (no `Policy`
    /// implementation is trusted more than a policy), and taken by the
    /// built-in fallback when the policy failed.
    pub fn conclude(&self, answer: Result<Verdict<Placement>, PolicyError>) -> Decision {
        let answer = answer.and_then(|v| match validate::placement(&self.cluster, &self.request, &v.value) {
            Ok(()) => Ok(v),
            Err(why) => Err(PolicyError::new(v.decided_by, crate::ErrorKind::InvalidDecision, why)),
        });
        let (placement, decided_by) = match answer {
            Ok(v) => (v.value, DecidedBy::Policy { name: v.decided_by, failure: v.failure }),
            Err(failure) => (fallback(&self.cluster, &self.request), DecidedBy::Fallback { failure }),
        };
        let candidates = self.rows.len() as u32;
        let excluded = self.excluded;
        match placement {
            Placement::Place(choice) => Decision {
                outcome: Outcome::Placed { host: self.rows[choice.host as usize] },
                decided_by,
                candidates,
                excluded,
                scores: choice.scores.iter().map(|s| (self.rows[s.host as usize], s.value)).collect(),
                user_rtt_us: self.request.user_latency(self.cluster.hosts.pop[choice.host as usize]),
            },
            Placement::Reject(r) => Decision {
                outcome: Outcome::Rejected {
                    reason: r.reason,
                    message: validate::truncate_message(r.message),
                },
                decided_by,
                candidates,
                excluded,
                scores: Vec::new(),
                user_rtt_us: None,
            },
        }
    }
}

/// The built-in safe fallback: the first filtered host with room.
pub fn fallback(cluster: &Cluster, request: &Request) -> Placement {
    let hosts = &cluster.hosts;
    let choice =
        (0..hosts.len()).find(|&i| request.size.fits_in(hosts.free(i))).map(|i| Placement::on(i as u32));
    let placement = choice.unwrap_or_else(|| {
        Placement::reject(RejectReason::NoCapacity, "fallback: no filtered host has room")
    });
    match validate::placement(cluster, request, &placement) {
        Ok(()) => placement,
        Err(e) => Placement::reject(RejectReason::Other, format!("fallback refused its own choice: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{ErrorKind, Native, Verdict};
    use locus_sdk::{Coordinates, Migration, Partition, Resources};

    struct Broken;
    impl Policy for Broken {
        fn name(&self) -> String {
            "broken@test".into()
        }
        fn place(&self, _: &Cluster, _: &Request) -> Result<Verdict<Placement>, PolicyError> {
            Err(PolicyError::new(self.name(), ErrorKind::Trap, "unreachable executed"))
        }
        fn plan(&self, _: &Partition) -> Result<Verdict<Vec<Migration>>, PolicyError> {
            Err(PolicyError::new(self.name(), ErrorKind::Trap, "unreachable executed"))
        }
    }

    struct Last;
    impl locus_sdk::PlacementPolicy for Last {
        fn place(cluster: &Cluster, _: &Request) -> Placement {
            Placement::on(cluster.hosts.len() as u32 - 1)
        }
    }

    fn model() -> Model {
        let mut m = Model::new();
        m.add_pop("paris", "FR", Coordinates::new(48.86, 2.35), 0, 50).expect("pop");
        m.add_pop("berlin", "DE", Coordinates::new(52.52, 13.4), 0, 400).expect("pop");
        m.add_host("p1", "paris", Resources::new(4, 4096, 10), 4000, (100, 200)).expect("host");
        m.add_host("b1", "berlin", Resources::new(4, 4096, 10), 4000, (100, 200)).expect("host");
        m.add_host("b2", "berlin", Resources::new(4, 4096, 10), 4000, (100, 200)).expect("host");
        m
    }

    fn request(toml_text: &str) -> VmRequest {
        toml::from_str(&format!("name='v'\nvcpus=1\nmemory-mib=512\n{toml_text}")).expect("request")
    }

    #[test]
    fn rows_map_back_to_model_hosts() {
        let m = model();
        let d = Placer::new().place(&m, &request("jurisdictions=['FR']"), &Native::placement::<Last>("last"));
        assert_eq!(d.outcome, Outcome::Placed { host: HostId(0) });
        assert_eq!(d.candidates, 1);
        assert_eq!(d.excluded.jurisdiction, 2);
    }

    #[test]
    fn a_failing_policy_falls_back_safely() {
        let m = model();
        let d = Placer::new().place(&m, &request("jurisdictions=['DE']"), &Broken);
        assert_eq!(d.outcome, Outcome::Placed { host: HostId(1) });
        assert!(
            matches!(d.decided_by, DecidedBy::Fallback { ref failure } if failure.kind == ErrorKind::Trap)
        );
    }

    #[test]
    fn nothing_left_is_a_reasoned_rejection() {
        let m = model();
        let d = Placer::new().place(&m, &request("jurisdictions=['XX']"), &Broken);
        assert!(
            matches!(d.outcome, Outcome::Rejected { reason: RejectReason::Constraints, ref message } if message.contains("XX"))
        );
        let mut big = request("");
        big.vcpus = 64;
        let d = Placer::new().place(&m, &big, &Broken);
        assert!(matches!(d.outcome, Outcome::Rejected { reason: RejectReason::NoCapacity, .. }));
    }
}
