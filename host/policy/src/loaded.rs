//! One loaded policy version: its compiled component, its instance pool,
//! and the metered, bounded calls into it.
//!
//! Calls take an instance from the pool (or instantiate one from the
//! `InstancePre`, about 10 µs), set the epoch deadline, call, and return the
//! instance to the pool. An instance that failed in any way is dropped, never
//! reused: after a trap its state cannot be trusted.

use crate::bindings::exports::locus::policy::{migration, placement};
use crate::bindings::locus::policy::types as wit;
use crate::convert;
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::state::State;
use locus_core::{ErrorKind, PolicyError, validate};
use locus_sdk as sdk;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmtime::component::InstancePre;
use wasmtime::{Store, Trap};

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

/// Limits applied to every call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallLimits {
    pub deadline: Duration,
    pub deadline_ticks: u64,
    pub instantiate_ticks: u64,
    pub memory_cap: usize,
    pub pool_size: usize,
    pub reuse_instances: bool,
}

struct Instance {
    store: Store<State>,
    placement: Option<placement::Guest>,
    migration: Option<migration::Guest>,
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
    pool: Mutex<Vec<Instance>>,
    metrics: Metrics,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded").field("info", &self.info).finish_non_exhaustive()
    }
}

impl Loaded {
    pub(crate) fn new(
        info: Info,
        pre: InstancePre<State>,
        limits: CallLimits,
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
            pool: Mutex::new(Vec::new()),
            metrics: Metrics::default(),
        };
        // Instantiate once now: type mismatches and trapping start functions
        // are load errors, not first-call surprises.
        let instance = loaded.instantiate().map_err(|e| crate::LoadError::Instantiate(e.message))?;
        loaded.release(instance);
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

    fn instantiate(&self) -> Result<Instance, PolicyError> {
        let state = State::new(self.id.as_str().into(), self.config.clone(), self.limits.memory_cap);
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|s| &mut s.cap);
        store.set_epoch_deadline(self.limits.instantiate_ticks);
        let fail = |e: wasmtime::Error| PolicyError::new(&self.id, ErrorKind::Instantiate, format!("{e:#}"));
        let instance = self.pre.instantiate(&mut store).map_err(fail)?;
        let placement =
            self.placement.as_ref().map(|i| i.load(&mut store, &instance)).transpose().map_err(fail)?;
        let migration =
            self.migration.as_ref().map(|i| i.load(&mut store, &instance)).transpose().map_err(fail)?;
        Ok(Instance { store, placement, migration })
    }

    fn release(&self, instance: Instance) {
        if !self.limits.reuse_instances {
            return;
        }
        if let Ok(mut pool) = self.pool.lock()
            && pool.len() < self.limits.pool_size
        {
            pool.push(instance);
        }
    }

    /// Runs `f` on an instance within the call limits, then `finish` on its
    /// answer (conversion and validation), classifying and counting failures.
    fn call<R, T>(
        &self,
        f: impl FnOnce(&mut Instance) -> Option<wasmtime::Result<R>>,
        finish: impl FnOnce(R) -> Result<T, String>,
    ) -> Result<T, PolicyError> {
        let start = Instant::now();
        let pooled = self.pool.lock().ok().and_then(|mut p| p.pop());
        let result = match pooled.map_or_else(|| self.instantiate(), Ok) {
            Err(e) => Err(e),
            Ok(mut instance) => {
                instance.store.set_epoch_deadline(self.limits.deadline_ticks);
                instance.store.data_mut().log_lines = 0;
                match f(&mut instance) {
                    None => {
                        self.release(instance);
                        Err(PolicyError::new(&self.id, ErrorKind::Unsupported, "capability not exported"))
                    }
                    Some(Ok(value)) => match finish(value) {
                        Ok(value) => {
                            self.release(instance);
                            Ok(value)
                        }
                        Err(why) => Err(PolicyError::new(&self.id, ErrorKind::InvalidDecision, why)),
                    },
                    Some(Err(e)) => Err(self.classify(e, &instance, start.elapsed())),
                }
            }
        };
        self.metrics.record(start.elapsed(), result.as_ref().err().map(|e| e.kind));
        if let Err(e) = &result {
            tracing::warn!(policy = %self.id, kind = e.kind.as_str(), "policy call failed: {}", e.message);
        }
        result
    }

    fn classify(&self, e: wasmtime::Error, instance: &Instance, took: Duration) -> PolicyError {
        let state = instance.store.data();
        let (kind, message) = if let Some(bytes) = state.cap.hit {
            let message = format!(
                "stopped at the memory cap: tried to grow to {} MiB, the cap is {} MiB",
                bytes >> 20,
                self.limits.memory_cap >> 20
            );
            (ErrorKind::MemoryCap, message)
        } else {
            match e.downcast_ref::<Trap>() {
                Some(Trap::Interrupt | Trap::OutOfFuel) => (
                    ErrorKind::Deadline,
                    format!(
                        "interrupted after {:.1} ms, past its {} ms deadline",
                        took.as_secs_f64() * 1000.0,
                        self.limits.deadline.as_millis()
                    ),
                ),
                Some(trap) => {
                    let stderr = state.stderr_text();
                    let detail = if stderr.is_empty() { String::new() } else { format!(": {stderr}") };
                    (ErrorKind::Trap, format!("trapped ({trap}){detail}"))
                }
                None => (ErrorKind::Trap, format!("{e:#}")),
            }
        };
        PolicyError::new(&self.id, kind, validate::truncate_message(message))
    }

    /// Calls the policy's `place` and validates the answer.
    pub fn place(
        &self,
        cluster: &sdk::Cluster,
        request: &sdk::Request,
    ) -> Result<sdk::Placement, PolicyError> {
        let pops = convert::pops(&cluster.pops);
        let jurisdictions: Vec<&str> = cluster.jurisdictions.iter().map(String::as_str).collect();
        let wit_cluster = convert::cluster(cluster, &pops, &jurisdictions);
        let wit_request = convert::request(request);
        self.call(
            |i| i.placement.as_ref().map(|g| g.call_place(&mut i.store, wit_cluster, wit_request)),
            |answer: wit::Placement| {
                let placement = convert::placement(answer, cluster.hosts.len())?;
                validate::placement(cluster, request, &placement)?;
                Ok(placement)
            },
        )
    }

    /// Calls the policy's `plan` and validates the answer.
    pub fn plan(&self, partition: &sdk::Partition) -> Result<Vec<sdk::Migration>, PolicyError> {
        let pops = convert::pops(&partition.cluster.pops);
        let jurisdictions: Vec<&str> = partition.cluster.jurisdictions.iter().map(String::as_str).collect();
        let groups = convert::group_kinds(&partition.groups);
        let wit_partition = convert::partition(partition, &pops, &jurisdictions, &groups);
        self.call(
            |i| i.migration.as_ref().map(|g| g.call_plan(&mut i.store, wit_partition)),
            |answer: Vec<wit::Migration>| {
                if answer.len() > partition.vms.len() {
                    return Err(format!(
                        "returned {} migrations for {} VMs",
                        answer.len(),
                        partition.vms.len()
                    ));
                }
                let plan: Vec<sdk::Migration> =
                    answer.into_iter().map(|m| sdk::Migration { vm: m.vm, to: m.to }).collect();
                validate::plan(partition, &plan)?;
                Ok(plan)
            },
        )
    }
}
