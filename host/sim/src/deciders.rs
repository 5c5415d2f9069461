//! The policies the simulated agents (and the central scheduler) call, and
//! how long each decision takes in virtual time: natively built, fast, each
//! decision a fixed [`NATIVE_DECIDE_US`]; or the real WebAssembly
//! components, as the agents run them, metered by fuel so that a
//! decision's virtual duration follows from the work it did and the run
//! replays exactly (NaNs canonicalized, no wall-clock deadline in play).

use crate::scenario::{Policies, PolicyRuntime};
use locus_core::rebalance::EventKind;
use locus_core::{Native, Policy, PolicyError, Verdict};
use locus_policy::{Loaded, Runtime, RuntimeConfig};
use locus_sdk::{Cluster, Migration, Partition, Placement, Request};
use std::sync::Arc;
use std::time::Duration;

/// Virtual time a native policy takes to answer, µs.
pub const NATIVE_DECIDE_US: u64 = 2_000;
/// Fuel one WebAssembly decision may burn: a policy that loops is stopped
/// by it, deterministically, long before any wall-clock deadline.
pub const FUEL_PER_DECISION: u64 = 2_000_000_000;
/// A fresh instance per decision, before the guest runs, µs (the
/// placement benchmark's `instantiate/best-fit`, rounded up).
const INSTANCE_US: u64 = 10;
/// Fuel units (about one per WebAssembly instruction) run per µs on the
/// reference machine: `best-fit` burns 0.31 million at 1,000 hosts and
/// 3.0 million at 10,000, and its call takes 23 µs and about 240 µs there
/// (docs/BENCHMARKS.md, "Placement decision").
const FUEL_PER_US: u64 = 12_500;

/// The scenario's policies, ready to be asked.
pub enum Deciders {
    /// Built into the simulator.
    Native {
        /// Placement.
        placement: Native,
        /// Relieving overloads.
        migration: Native,
        /// Emptying underloaded hosts.
        consolidation: Native,
    },
    /// The WebAssembly components.
    Wasm {
        /// Keeps the engine (and its epoch ticker) for the components.
        _runtime: Box<Runtime>,
        /// Placement.
        placement: Arc<Loaded>,
        /// Relieving overloads.
        migration: Arc<Loaded>,
        /// Emptying underloaded hosts.
        consolidation: Arc<Loaded>,
    },
}

impl std::fmt::Debug for Deciders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Deciders::Native { .. } => "Deciders::Native",
            Deciders::Wasm { .. } => "Deciders::Wasm",
        })
    }
}

impl Deciders {
    /// The policies `policies` names, built the way it asks.
    pub fn new(policies: &Policies) -> Result<Self, String> {
        match policies.runtime {
            PolicyRuntime::Native => Ok(Deciders::Native {
                placement: native_placement(&policies.placement),
                migration: Native::migration::<policy_relieve_overload::RelieveOverload>("relieve-overload"),
                consolidation: Native::migration::<policy_consolidate::Consolidate>("consolidate"),
            }),
            PolicyRuntime::Wasm => {
                let config = RuntimeConfig {
                    fuel: Some(FUEL_PER_DECISION),
                    canonicalize_nans: true,
                    deadline: Duration::from_secs(600),
                    instantiate_deadline: Duration::from_secs(600),
                    ..RuntimeConfig::default()
                };
                let runtime = Runtime::new(config).map_err(|e| format!("policy runtime: {e:#}"))?;
                let load = |name: &str| {
                    let bytes =
                        locus_builtin::builtin(name).ok_or_else(|| format!("no built-in policy {name}"))?;
                    runtime.load(bytes, name, Default::default()).map_err(|e| format!("policy {name}: {e}"))
                };
                Ok(Deciders::Wasm {
                    placement: load(&policies.placement)?,
                    migration: load("relieve-overload")?,
                    consolidation: load("consolidate")?,
                    _runtime: Box::new(runtime),
                })
            }
        }
    }

    /// Where the request goes, and how long deciding took, µs.
    pub fn place(
        &self,
        cluster: &Cluster,
        request: &Request,
    ) -> (Result<Verdict<Placement>, PolicyError>, u64) {
        match self {
            Deciders::Native { placement, .. } => (placement.place(cluster, request), NATIVE_DECIDE_US),
            Deciders::Wasm { placement, .. } => verdict(placement, placement.place_fueled(cluster, request)),
        }
    }

    /// The plan for an event of `kind`, and how long planning took, µs.
    pub fn plan(
        &self,
        kind: EventKind,
        partition: &Partition,
    ) -> (Result<Verdict<Vec<Migration>>, PolicyError>, u64) {
        match self {
            Deciders::Native { migration, consolidation, .. } => {
                let policy = if kind == EventKind::Overload { migration } else { consolidation };
                (policy.plan(partition), NATIVE_DECIDE_US)
            }
            Deciders::Wasm { migration, consolidation, .. } => {
                let policy = if kind == EventKind::Overload { migration } else { consolidation };
                verdict(policy, policy.plan_fueled(partition))
            }
        }
    }
}

/// A component's answer as the node takes it, and its virtual duration.
fn verdict<T>(
    policy: &Loaded,
    (result, fuel): (Result<T, PolicyError>, u64),
) -> (Result<Verdict<T>, PolicyError>, u64) {
    let us = INSTANCE_US + fuel / FUEL_PER_US;
    (result.map(|value| Verdict { value, decided_by: policy.id().to_owned(), failure: None }), us.max(1))
}

/// The native placement policy `name` (checked against
/// [`crate::scenario::PLACEMENTS`] when the scenario was parsed).
fn native_placement(name: &str) -> Native {
    match name {
        "green" => Native::placement::<policy_green::Green>("green"),
        "best-fit" => Native::placement::<policy_best_fit::BestFit>("best-fit"),
        "first-fit" => Native::placement::<policy_first_fit::FirstFit>("first-fit"),
        "nearest" => Native::placement::<policy_nearest::Nearest>("nearest"),
        _ => Native::placement::<policy_spread::Spread>("spread"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use locus_sdk::Resources;
    use locus_sdk::testing::{RequestBuilder, synthetic_cluster};

    #[test]
    fn a_component_decides_as_its_native_build_does_and_takes_longer_on_a_bigger_view() {
        let wasm = Policies { runtime: PolicyRuntime::Wasm, ..Policies::default() };
        let (native, wasm) =
            (Deciders::new(&Policies::default()).expect("native"), Deciders::new(&wasm).expect("wasm"));
        let (small, big) = (synthetic_cluster(10), synthetic_cluster(1_000));
        for c in [&small, &big] {
            let r = RequestBuilder::new(c, Resources::new(2, 4096, 20)).build();
            let ((n, n_us), (w, w_us)) = (native.place(c, &r), wasm.place(c, &r));
            assert_eq!(n.expect("native").value.host(), w.expect("wasm").value.host());
            assert_eq!(n_us, NATIVE_DECIDE_US);
            assert!(w_us > INSTANCE_US, "{w_us}");
        }
        let r = |c| RequestBuilder::new(c, Resources::new(2, 4096, 20)).build();
        let (_, small_us) = wasm.place(&small, &r(&small));
        let (_, big_us) = wasm.place(&big, &r(&big));
        assert!(big_us > small_us, "{small_us} µs at 10 hosts, {big_us} µs at 1,000");
        assert_eq!(wasm.place(&big, &r(&big)).1, big_us, "the same decision, the same duration");
    }
}
