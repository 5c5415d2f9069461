//! Shadow runs: a candidate version called on the same live questions as
//! a slot's active version, after the active answer has gone back to the
//! node, and never acting. The policy workers call it; the rollout task
//! starts and ends runs and reports how often the two agreed.

use crate::policies::SlotName;
use arc_swap::ArcSwapOption;
use locus_core::Question;
use locus_core::rebalance::PlanQuestion;
use locus_policy::Loaded;
use locus_sdk::{Migration, Placement};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How a shadow run went so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ShadowReport {
    /// The push (`scope/slot#seq`).
    pub push: String,
    /// The candidate's policy id.
    pub candidate: String,
    /// Questions both answered.
    pub calls: u64,
    /// Of which they answered the same (the same host, or both refused;
    /// the same migrations).
    pub agreed: u64,
    /// `agreed / calls`; 1 with no calls.
    pub agreement: f64,
    /// Calls where the candidate failed (trap, deadline, invalid decision…).
    pub candidate_failures: u64,
    /// The candidate's median call latency, µs.
    pub candidate_p50_us: f64,
    /// The active version's median call latency over the same run, µs.
    pub active_p50_us: f64,
}

/// One run: the candidate and its tally.
#[derive(Debug)]
pub struct Run {
    push: String,
    candidate: Arc<Loaded>,
    tally: Mutex<Tally>,
}

#[derive(Debug, Default)]
struct Tally {
    calls: u64,
    agreed: u64,
    failures: u64,
    candidate_us: Vec<u32>,
    active_us: Vec<u32>,
}

/// Latencies kept per run for the medians (the most recent ones).
const SAMPLES: usize = 4096;

impl Run {
    /// A run of `candidate` for `push`.
    pub fn new(push: String, candidate: Arc<Loaded>) -> Self {
        Run { push, candidate, tally: Mutex::default() }
    }

    /// The push it shadows.
    pub fn push(&self) -> &str {
        &self.push
    }

    fn record(&self, agreed: Option<bool>, candidate: Duration, active: Duration) {
        let Ok(mut t) = self.tally.lock() else { return };
        t.calls += 1;
        match agreed {
            Some(true) => t.agreed += 1,
            Some(false) => {}
            None => t.failures += 1,
        }
        let Tally { candidate_us, active_us, .. } = &mut *t;
        for (v, d) in [(candidate_us, candidate), (active_us, active)] {
            if v.len() == SAMPLES {
                v.remove(0);
            }
            v.push(u32::try_from(d.as_micros()).unwrap_or(u32::MAX));
        }
    }

    /// The tally so far.
    pub fn report(&self) -> ShadowReport {
        let Ok(t) = self.tally.lock() else { return ShadowReport::default() };
        let median = |v: &[u32]| {
            let mut v = v.to_vec();
            v.sort_unstable();
            v.get(v.len() / 2).map_or(0.0, |&x| f64::from(x))
        };
        ShadowReport {
            push: self.push.clone(),
            candidate: self.candidate.id().to_owned(),
            calls: t.calls,
            agreed: t.agreed,
            agreement: if t.calls == 0 { 1.0 } else { t.agreed as f64 / t.calls as f64 },
            candidate_failures: t.failures,
            candidate_p50_us: median(&t.candidate_us),
            active_p50_us: median(&t.active_us),
        }
    }
}

/// The same decision: the same host, or both declined for the same kind of
/// reason (scores and messages may differ).
fn same_placement(a: &Placement, b: &Placement) -> bool {
    match (a, b) {
        (Placement::Place(a), Placement::Place(b)) => a.host == b.host,
        (Placement::Reject(a), Placement::Reject(b)) => a.reason == b.reason,
        _ => false,
    }
}

/// The shadow run of each slot, if any.
#[derive(Debug, Default)]
pub struct Shadows {
    slots: [ArcSwapOption<Run>; 3],
}

/// A question answered by the active version, kept to ask the shadow.
#[derive(Debug)]
pub enum Asked {
    /// A placement and the active answer (none if it failed).
    Place(Box<Question>, Option<Placement>, Duration),
    /// A plan of `slot` and the active answer.
    Plan(SlotName, Box<PlanQuestion>, Option<Vec<Migration>>, Duration),
}

impl Shadows {
    /// The run of `slot`.
    pub fn get(&self, slot: SlotName) -> Option<Arc<Run>> {
        self.slots[slot as usize].load_full()
    }

    /// Starts (or, with `None`, ends) `slot`'s run.
    pub fn set(&self, slot: SlotName, run: Option<Arc<Run>>) {
        self.slots[slot as usize].store(run);
    }

    /// Whether questions of `slot` should be kept for its shadow.
    pub fn watching(&self, slot: SlotName) -> bool {
        self.slots[slot as usize].load().is_some()
    }

    /// Asks the shadow of the question's slot, if it still runs, and tallies.
    pub fn ask(&self, asked: Asked) {
        match asked {
            Asked::Place(q, active, took) => {
                let Some(run) = self.get(SlotName::Placement) else { return };
                let start = Instant::now();
                let answer = run.candidate.place(&q.cluster, &q.request).ok();
                let agreed = answer.map(|a| active.as_ref().is_some_and(|b| same_placement(&a, b)));
                run.record(agreed, start.elapsed(), took);
            }
            Asked::Plan(slot, q, active, took) => {
                let Some(run) = self.get(slot) else { return };
                let start = Instant::now();
                let answer = run.candidate.plan(&q.partition).ok();
                let agreed = answer.map(|mut a| {
                    a.sort_unstable();
                    active.as_ref().is_some_and(|b| {
                        let mut b = b.clone();
                        b.sort_unstable();
                        a == b
                    })
                });
                run.record(agreed, start.elapsed(), took);
            }
        }
    }
}
