//! The policy workers: a bounded pool of plain threads that answer the
//! node's placement questions and rebalancing plans beside it, so no
//! policy call ever runs on the task that owns the node, or on any tokio
//! thread.
//!
//! Guest code must stay off tokio's threads (wasmtime-wasi's blocking stdio
//! panics there), and a slow but legal policy must not hold up reads,
//! heartbeats or other VMs' operations. Each worker takes the questions
//! already queued (up to a batch), answers them through the placement slot
//! (a fresh instance per decision, falling back to earlier versions), and
//! sends the answers back in one message, so a burst of creates still ends
//! in one intent commit.

use crate::metrics::Telemetry;
use crate::policies::SlotName;
use crate::rollout::shadow::{Asked, Shadows};
use locus_core::node::DecisionId;
use locus_core::rebalance::{EventKind, PlanQuestion};
use locus_core::{Policy, PolicyError, Question, Verdict};
use locus_sdk::{Migration, Placement};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;
use tokio::sync::mpsc;

/// Questions a worker answers before it reports.
const BATCH: usize = 32;

/// One answered question.
#[derive(Debug)]
pub enum Answered {
    /// A placement.
    Placed {
        /// The question's id.
        id: DecisionId,
        /// The question, handed back to the node.
        question: Box<Question>,
        /// The policy's answer.
        answer: Result<Verdict<Placement>, PolicyError>,
    },
    /// A rebalancing plan.
    Planned {
        /// The question's id.
        id: u64,
        /// The policy's answer.
        answer: Result<Verdict<Vec<Migration>>, PolicyError>,
    },
}

enum Job {
    Place(DecisionId, Box<Question>),
    Plan(u64, Box<PlanQuestion>),
}

/// The policies the workers call: placement, and the two that plan.
#[derive(Clone)]
pub struct Deciding {
    /// Places new VMs.
    pub placement: Arc<dyn Policy>,
    /// Relieves overloaded hosts.
    pub migration: Arc<dyn Policy>,
    /// Empties underloaded hosts.
    pub consolidation: Arc<dyn Policy>,
    /// Candidates run beside the active versions, after they answered.
    pub shadows: Arc<Shadows>,
}

impl std::fmt::Debug for Deciding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deciding")
            .field("placement", &self.placement.name())
            .field("migration", &self.migration.name())
            .field("consolidation", &self.consolidation.name())
            .finish()
    }
}

impl Deciding {
    /// Answers with the active version; when the slot has a shadow run,
    /// keeps the question and answer in `asked` for it.
    fn answer(&self, job: Job, asked: &mut Vec<Asked>, telemetry: &Telemetry) -> Answered {
        let start = Instant::now();
        match job {
            Job::Place(id, question) => {
                let answer = self.placement.place(&question.cluster, &question.request);
                counted(telemetry, SlotName::Placement, &answer, start);
                if self.shadows.watching(SlotName::Placement) {
                    let value = answer.as_ref().ok().map(|v| v.value.clone());
                    asked.push(Asked::Place(question.clone(), value, start.elapsed()));
                }
                Answered::Placed { id, question, answer }
            }
            Job::Plan(id, question) => {
                let (policy, slot) = match question.kind {
                    EventKind::Overload => (&self.migration, SlotName::Migration),
                    EventKind::Consolidate => (&self.consolidation, SlotName::Consolidation),
                };
                let answer = policy.plan(&question.partition);
                counted(telemetry, slot, &answer, start);
                if self.shadows.watching(slot) {
                    let value = answer.as_ref().ok().map(|v| v.value.clone());
                    asked.push(Asked::Plan(slot, question, value, start.elapsed()));
                }
                Answered::Planned { id, answer }
            }
        }
    }
}

/// The pool. Dropping it lets the workers finish what is queued and joins them.
pub struct Deciders {
    jobs: Option<crossbeam_channel::Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Deciders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deciders").field("workers", &self.threads.len()).finish()
    }
}

impl Deciders {
    /// Starts `workers` threads deciding with `policy`; answers go to `answers`.
    pub fn spawn(
        workers: usize,
        policy: Deciding,
        answers: mpsc::UnboundedSender<Vec<Answered>>,
        telemetry: Telemetry,
    ) -> std::io::Result<Self> {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let mut threads = Vec::new();
        for n in 0..workers.max(1) {
            let (rx, policy, answers, telemetry) =
                (rx.clone(), policy.clone(), answers.clone(), telemetry.clone());
            let thread = std::thread::Builder::new().name(format!("locus-policy-{n}")).spawn(move || {
                yield_to_the_node();
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter().take(BATCH - 1));
                    let mut asked = Vec::new();
                    let answered: Vec<Answered> =
                        batch.into_iter().map(|job| policy.answer(job, &mut asked, &telemetry)).collect();
                    if answers.send(answered).is_err() {
                        return;
                    }
                    // The node has its answers; the shadows may take their time.
                    for a in asked {
                        policy.shadows.ask(a);
                    }
                }
            })?;
            threads.push(thread);
        }
        Ok(Deciders { jobs: Some(tx), threads })
    }

    /// Queues a placement question.
    pub fn ask(&self, id: DecisionId, question: Box<Question>) {
        self.queue(Job::Place(id, question));
    }

    /// Queues a plan question.
    pub fn plan(&self, id: u64, question: Box<PlanQuestion>) {
        self.queue(Job::Plan(id, question));
    }

    fn queue(&self, job: Job) {
        if let Some(jobs) = &self.jobs {
            // The workers outlive the sender; a send fails only once they
            // are gone, and then the node's timeout decides.
            let _ = jobs.send(job);
        }
    }
}

/// Counts a policy call: its duration by the version that answered (or
/// failed), and a failure by kind; one that an earlier version recovered
/// from counts as a failure too.
fn counted<T>(
    telemetry: &Telemetry,
    slot: SlotName,
    answer: &Result<Verdict<T>, PolicyError>,
    start: Instant,
) {
    let Some(m) = telemetry.get() else { return };
    let (policy, failure) = match answer {
        Ok(v) => (v.decided_by.as_str(), v.failure.as_ref().map(|f| f.kind.as_str())),
        Err(e) => (e.policy.as_str(), Some(e.kind.as_str())),
    };
    m.policy_call(slot.as_str(), policy, start.elapsed(), failure);
}

/// Policy workers run at a lower CPU priority (nice 10) than the agent's
/// other threads: when the cores are busy, a policy burning its whole
/// deadline yields to reads, heartbeats and hypervisor results instead of
/// taking turns with them. On an idle machine it changes nothing.
fn yield_to_the_node() {
    const NICE: i32 = 10;
    let thread = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(thread), NICE) {
        tracing::debug!(error = %e, "policy worker keeps the agent's priority");
    }
}

impl Drop for Deciders {
    fn drop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
