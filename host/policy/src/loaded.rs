//! One loaded policy version: its compiled component and the metered,
//! bounded calls into it.
//!
//! Every decision gets a fresh instance from the `InstancePre` (the pooling
//! allocator makes that a few microseconds), used once and dropped: no
//! state survives from one decision to the next, so a decision is a pure
//! function of its inputs, as the contract promises, and a trap can never
//! poison a later call.
//!
//! A call is bounded three ways: a wall-clock deadline checked on every
//! epoch tick (so a late ticker cannot stretch it), a memory cap (the store
//! limiter), and the bytes the guest may hand back (wasmtime's hostcall
//! fuel: an answer larger than the view allows is refused before it is
//! copied out of the guest). Guest code never runs on a tokio runtime
//! thread, where wasmtime-wasi's blocking stdio would panic the process.

use crate::bindings::exports::locus::policy::{migration, placement};
use crate::bindings::locus::policy::types as wit;
use crate::convert;
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::state::State;
use crate::ticker::{Running, Ticking};
use locus_core::{ErrorKind, PolicyError, validate};
use locus_sdk as sdk;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::InstancePre;
use wasmtime::{Store, Trap, UpdateDeadline};

/// Which capabilities a component exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum World {
    /// `placement-policy`.
    #[serde(rename = "placement-policy")]
    Placement,
    /// `migration-policy`.
    #[serde(rename = "migration-policy")]
    Migration,
    /// `scheduler-policy`: both.
    #[serde(rename = "scheduler-policy")]
    Scheduler,
}

impl World {
    /// The WIT world's name.
    pub fn as_str(self) -> &'static str {
        match self {
            World::Placement => "placement-policy",
            World::Migration => "migration-policy",
            World::Scheduler => "scheduler-policy",
        }
    }

    /// True when the world exports placement.
    pub fn places(self) -> bool {
        matches!(self, World::Placement | World::Scheduler)
    }

    /// True when the world exports migration.
    pub fn plans(self) -> bool {
        matches!(self, World::Migration | World::Scheduler)
    }
}

/// Facts about a loaded component, for `locus policy check` and listings.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Info {
    /// The name it was loaded under.
    pub name: String,
    /// SHA-256 of the component bytes, hex.
    pub hash: String,
    /// Its world.
    pub world: World,
    /// Size of the component, bytes.
    pub size: usize,
    /// Time to compile (or deserialize) it.
    pub compile_time: Duration,
    /// What it imports.
    pub imports: Vec<String>,
    /// What it exports.
    pub exports: Vec<String>,
    /// The configuration it was loaded with.
    pub config: BTreeMap<String, String>,
}

impl Info {
    /// `name@` and the first 12 hex digits of the hash.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, &self.hash[..12.min(self.hash.len())])
    }
}

/// Text a policy may hand back besides its scores or migrations (a
/// rejection message; a log line), bytes.
const TEXT_BUDGET: usize = 64 << 10;

/// Limits applied to every call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallLimits {
    pub deadline: Duration,
    pub instantiate_deadline: Duration,
    pub memory_cap: usize,
    pub fuel: Option<u64>,
}

/// A policy version ready to be called, from any thread.
pub struct Loaded {
    info: Info,
    id: String,
    pre: InstancePre<State>,
    placement: Option<placement::GuestIndices>,
    migration: Option<migration::GuestIndices>,
    limits: CallLimits,
    config: Arc<BTreeMap<String, String>>,
    metrics: Metrics,
    /// Keeps the epoch ticker going while an instance lives.
    ticking: Ticking,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded").field("info", &self.info).finish_non_exhaustive()
    }
}

/// A fresh instance of a loaded policy, good for one decision.
pub struct Instance<'a> {
    loaded: &'a Loaded,
    /// The epoch ticker ticks while this lives: deadlines hold.
    _running: Running,
    /// Fuel the last call used (0 when not metered).
    fuel_used: u64,
    store: Store<State>,
    placement: Option<placement::Guest>,
    migration: Option<migration::Guest>,
}

impl std::fmt::Debug for Instance<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance").field("policy", &self.loaded.id).finish_non_exhaustive()
    }
}

impl Loaded {
    pub(crate) fn new(
        info: Info,
        pre: InstancePre<State>,
        limits: CallLimits,
        ticking: Ticking,
    ) -> Result<Self, crate::LoadError> {
        let placement = info.world.places().then(|| placement::GuestIndices::new(&pre)).transpose();
        let migration = info.world.plans().then(|| migration::GuestIndices::new(&pre)).transpose();
        let (placement, migration) = match (placement, migration) {
            (Ok(p), Ok(m)) => (p, m),
            (Err(e), _) | (_, Err(e)) => {
                return Err(crate::LoadError::Instantiate(format!("{e:#}")));
            }
        };
        let config = Arc::new(info.config.clone());
        let loaded = Self {
            id: info.id(),
            info,
            pre,
            placement,
            migration,
            limits,
            config,
            metrics: Metrics::default(),
            ticking,
        };
        // Instantiate once now: type mismatches and trapping start functions
        // are load errors, not first-call surprises.
        off_runtime(|| loaded.instance().map(drop)).map_err(|e| crate::LoadError::Instantiate(e.message))?;
        Ok(loaded)
    }

    /// Facts about the component.
    pub fn info(&self) -> &Info {
        &self.info
    }

    /// `name@hash12`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The counters.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.metrics.snapshot()
    }

    /// A fresh instance, for one decision. Call it from a thread that is not
    /// running a tokio runtime ([`Loaded::place`] and [`Loaded::plan`] see
    /// to that themselves).
    pub fn instance(&self) -> Result<Instance<'_>, PolicyError> {
        let running = self.ticking.running();
        let deadline = Instant::now() + self.limits.instantiate_deadline;
        let state =
            State::new(self.id.as_str().into(), self.config.clone(), self.limits.memory_cap, deadline);
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|s| &mut s.cap);
        // The ticker only says "look at the clock"; the wall clock decides,
        // so a ticker descheduled under load cannot stretch a deadline.
        store.set_epoch_deadline(1);
        if let Some(fuel) = self.limits.fuel
            && let Err(e) = store.set_fuel(fuel)
        {
            return Err(PolicyError::new(&self.id, ErrorKind::Instantiate, format!("{e:#}")));
        }
        store.epoch_deadline_callback(|mut cx| {
            let state = cx.data_mut();
            if Instant::now() >= state.deadline {
                state.timed_out = true;
                return Err(Trap::Interrupt.into());
            }
            Ok(UpdateDeadline::Continue(1))
        });
        let fail = |e: wasmtime::Error, store: &Store<State>| {
            let why = match store.data().output() {
                out if out.is_empty() => format!("{e:#}"),
                out => format!("{e:#}; it printed {out}"),
            };
            PolicyError::new(&self.id, ErrorKind::Instantiate, validate::truncate_message(why))
        };
        let instance = match self.pre.instantiate(&mut store) {
            Ok(i) => i,
            Err(e) => return Err(fail(e, &store)),
        };
        let placement = match self.placement.as_ref().map(|i| i.load(&mut store, &instance)).transpose() {
            Ok(p) => p,
            Err(e) => return Err(fail(e, &store)),
        };
        let migration = match self.migration.as_ref().map(|i| i.load(&mut store, &instance)).transpose() {
            Ok(m) => m,
            Err(e) => return Err(fail(e, &store)),
        };
        Ok(Instance { loaded: self, _running: running, fuel_used: 0, store, placement, migration })
    }

    /// Places with a fresh instance and validates the answer.
    pub fn place(
        &self,
        cluster: &sdk::Cluster,
        request: &sdk::Request,
    ) -> Result<sdk::Placement, PolicyError> {
        self.metered(|| self.instance()?.place(cluster, request))
    }

    /// Plans with a fresh instance and validates the answer.
    pub fn plan(&self, partition: &sdk::Partition) -> Result<Vec<sdk::Migration>, PolicyError> {
        self.metered(|| self.instance()?.plan(partition))
    }

    /// [`Loaded::place`], and the fuel the call used (0 when the runtime
    /// does not meter fuel, or the instance could not be made).
    pub fn place_fueled(
        &self,
        cluster: &sdk::Cluster,
        request: &sdk::Request,
    ) -> (Result<sdk::Placement, PolicyError>, u64) {
        let mut fuel = 0;
        let result = self.metered(|| {
            let mut instance = self.instance()?;
            let result = instance.place_once(cluster, request);
            fuel = instance.fuel_used;
            result
        });
        (result, fuel)
    }

    /// [`Loaded::plan`], and the fuel the call used.
    pub fn plan_fueled(&self, partition: &sdk::Partition) -> (Result<Vec<sdk::Migration>, PolicyError>, u64) {
        let mut fuel = 0;
        let result = self.metered(|| {
            let mut instance = self.instance()?;
            let result = instance.plan_once(partition);
            fuel = instance.fuel_used;
            result
        });
        (result, fuel)
    }

    /// Runs one decision off any tokio runtime, counting it and its failure.
    fn metered<T: Send>(
        &self,
        decide: impl FnOnce() -> Result<T, PolicyError> + Send,
    ) -> Result<T, PolicyError> {
        let start = Instant::now();
        let result = off_runtime(decide);
        self.metrics.record(start.elapsed(), result.as_ref().err().map(|e| e.kind));
        if let Err(e) = &result {
            tracing::warn!(policy = %self.id, kind = e.kind.as_str(), error = ?e.message, "policy call failed");
        }
        result
    }
}

impl Instance<'_> {
    /// Calls `place` and validates the answer, consuming the instance.
    pub fn place(
        mut self,
        cluster: &sdk::Cluster,
        request: &sdk::Request,
    ) -> Result<sdk::Placement, PolicyError> {
        self.place_once(cluster, request)
    }

    /// Calls `plan` and validates the answer, consuming the instance.
    pub fn plan(mut self, partition: &sdk::Partition) -> Result<Vec<sdk::Migration>, PolicyError> {
        self.plan_once(partition)
    }

    /// Calls `place` (an instance answers once: the guest is taken).
    fn place_once(
        &mut self,
        cluster: &sdk::Cluster,
        request: &sdk::Request,
    ) -> Result<sdk::Placement, PolicyError> {
        let pops = convert::pops(&cluster.pops);
        let jurisdictions: Vec<&str> = cluster.jurisdictions.iter().map(String::as_str).collect();
        let wit_cluster = convert::cluster(cluster, &pops, &jurisdictions);
        let wit_request = convert::request(request);
        let budget = cluster.hosts.len().saturating_mul(std::mem::size_of::<wit::Score>());
        let Some(guest) = self.placement.take() else {
            return Err(self.unsupported("placement"));
        };
        let answer = self.call(budget, |store| guest.call_place(store, wit_cluster, wit_request))?;
        let placement = convert::placement(answer, cluster.hosts.len()).map_err(|why| self.invalid(why))?;
        validate::placement(cluster, request, &placement).map_err(|why| self.invalid(why))?;
        Ok(placement)
    }

    fn plan_once(&mut self, partition: &sdk::Partition) -> Result<Vec<sdk::Migration>, PolicyError> {
        let pops = convert::pops(&partition.cluster.pops);
        let jurisdictions: Vec<&str> = partition.cluster.jurisdictions.iter().map(String::as_str).collect();
        let groups = convert::group_kinds(&partition.groups);
        let wit_partition = convert::partition(partition, &pops, &jurisdictions, &groups);
        let budget = partition.vms.len().saturating_mul(std::mem::size_of::<wit::Migration>());
        let Some(guest) = self.migration.take() else {
            return Err(self.unsupported("migration"));
        };
        let answer = self.call(budget, |store| guest.call_plan(store, wit_partition))?;
        if answer.len() > partition.vms.len() {
            return Err(self.invalid(format!(
                "returned {} migrations for {} VMs",
                answer.len(),
                partition.vms.len()
            )));
        }
        let plan: Vec<sdk::Migration> =
            answer.into_iter().map(|m| sdk::Migration { vm: m.vm, to: m.to }).collect();
        validate::plan(partition, &plan).map_err(|why| self.invalid(why))?;
        Ok(plan)
    }

    /// Runs the guest within the deadline, letting it hand back at most
    /// `budget` bytes of lists plus some text.
    fn call<R>(
        &mut self,
        budget: usize,
        f: impl FnOnce(&mut Store<State>) -> wasmtime::Result<R>,
    ) -> Result<R, PolicyError> {
        let start = Instant::now();
        self.store.data_mut().deadline = start + self.loaded.limits.deadline;
        let budget = budget.saturating_add(TEXT_BUDGET);
        self.store.set_hostcall_fuel(budget);
        let fuel = self.loaded.limits.fuel;
        if let Some(fuel) = fuel
            && let Err(e) = self.store.set_fuel(fuel)
        {
            return Err(PolicyError::new(&self.loaded.id, ErrorKind::Trap, format!("{e:#}")));
        }
        let result = f(&mut self.store);
        if let (Some(fuel), Ok(left)) = (fuel, self.store.get_fuel()) {
            self.fuel_used = fuel - left;
        }
        let state = self.store.data();
        if state.dropped_log_lines() > 0 {
            tracing::debug!(policy = %self.loaded.id, dropped = state.dropped_log_lines(), "policy log lines over the per-call limit were dropped");
        }
        match result {
            Ok(value) => {
                let output = state.output();
                if !output.is_empty() {
                    tracing::debug!(policy = %self.loaded.id, output = ?output, "policy printed");
                }
                Ok(value)
            }
            Err(e) => Err(self.classify(e, start.elapsed(), budget)),
        }
    }

    fn classify(&self, e: wasmtime::Error, took: Duration, budget: usize) -> PolicyError {
        let state = self.store.data();
        let limits = &self.loaded.limits;
        let (kind, message) = if state.timed_out {
            let message = format!(
                "stopped after {:.1} ms: its deadline is {} ms",
                took.as_secs_f64() * 1000.0,
                limits.deadline.as_millis()
            );
            (ErrorKind::Deadline, message)
        } else if let Some(bytes) = state.cap.hit {
            let message = format!(
                "stopped at the memory cap: it asked for {} of linear memory, the cap is {}",
                size(bytes),
                size(limits.memory_cap)
            );
            (ErrorKind::MemoryCap, message)
        } else if format!("{e:#}").contains("fuel allocated for hostcalls has been exhausted") {
            let message = format!(
                "handed back more data than this call allows ({budget} bytes: at most one score or migration per row of the view, and {} KiB of text)",
                TEXT_BUDGET >> 10
            );
            (ErrorKind::InvalidDecision, message)
        } else {
            match e.downcast_ref::<Trap>() {
                Some(Trap::OutOfFuel) => (
                    ErrorKind::Deadline,
                    format!("ran out of fuel: each call has {}", limits.fuel.unwrap_or_default()),
                ),
                Some(Trap::Interrupt) => (ErrorKind::Deadline, format!("interrupted ({e})")),
                Some(trap) => (ErrorKind::Trap, format!("trapped ({trap})")),
                None => (ErrorKind::Trap, format!("{e:#}")),
            }
        };
        let message = match state.output() {
            out if out.is_empty() => message,
            out => format!("{message}; it printed {out}"),
        };
        PolicyError::new(&self.loaded.id, kind, validate::truncate_message(message))
    }

    fn invalid(&self, why: String) -> PolicyError {
        PolicyError::new(&self.loaded.id, ErrorKind::InvalidDecision, why)
    }

    fn unsupported(&self, what: &str) -> PolicyError {
        PolicyError::new(&self.loaded.id, ErrorKind::Unsupported, format!("it does not export {what}"))
    }
}

/// A byte count as MiB with two decimals and the exact bytes, so two sizes
/// that differ by a page never print the same.
pub(crate) fn size(bytes: usize) -> String {
    format!("{:.2} MiB ({bytes} bytes)", bytes as f64 / f64::from(1u32 << 20))
}

/// Runs `f` where guest code may run: on this thread, unless it belongs to
/// a tokio runtime, where wasmtime-wasi's blocking stdio would panic the
/// process ("Cannot start a runtime from within a runtime"); then on a
/// short-lived thread of its own. The agent calls policies from worker
/// threads of its own, so only stray callers pay for the extra thread.
pub(crate) fn off_runtime<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_that_differ_by_a_page_print_differently() {
        assert_eq!(size(64 << 20), "64.00 MiB (67108864 bytes)");
        assert_ne!(size((64 << 20) + 65536), size(64 << 20));
    }
}
