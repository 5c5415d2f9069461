//! The runtime loads the built-in components and their decisions match the
//! same policies compiled natively.

mod common;

use common::*;
use locus_builtin::policies;
use locus_policy::World;
use locus_sdk::{MigrationPolicy, PlacementPolicy};

#[test]
fn every_builtin_loads_with_its_world() {
    let rt = runtime();
    for (name, bytes) in locus_builtin::BUILTINS {
        let p = load(&rt, bytes, name);
        let expected = if name.contains("overload") || *name == "consolidate" {
            World::Migration
        } else {
            World::Placement
        };
        assert_eq!(p.info().world, expected, "{name}");
        assert!(
            p.info()
                .imports
                .iter()
                .all(|i| !i.starts_with("wasi:clocks") && !i.starts_with("wasi:filesystem"))
        );
    }
}

#[test]
fn wasm_and_native_best_fit_agree() {
    let rt = runtime();
    let p = load(&rt, policies::BEST_FIT, "best-fit");
    for hosts in [1, 10, 100, 1000] {
        let c = cluster(hosts);
        let r = request(&c);
        assert_eq!(
            p.place(&c, &r).expect("places"),
            policy_best_fit::BestFit::place(&c, &r),
            "{hosts} hosts"
        );
    }
    let s = p.metrics();
    assert_eq!(s.calls, 4);
    assert!(s.errors.is_empty());
}

#[test]
fn wasm_and_native_relieve_overload_agree() {
    let rt = runtime();
    let p = load(&rt, policies::RELIEVE_OVERLOAD, "relieve-overload");
    let part = partition();
    let plan = p.plan(&part).expect("plans");
    assert!(!plan.is_empty());
    assert_eq!(plan, policy_relieve_overload::RelieveOverload::plan(&part));
}

#[test]
fn configuration_reaches_the_policy() {
    let rt = runtime();
    let c = locus_sdk::testing::ClusterBuilder::new()
        .pop("FR", 48.0, 2.0)
        .host(0, locus_sdk::Resources::new(16, 32_768, 500))
        .host_used(0, locus_sdk::Resources::new(16, 32_768, 500), locus_sdk::Resources::new(2, 4096, 10))
        .build();
    let r = locus_sdk::testing::RequestBuilder::new(&c, locus_sdk::Resources::new(1, 1024, 1))
        .group(locus_sdk::GroupKind::Spread, &[0])
        .build();
    let default = load(&rt, policies::SPREAD, "spread");
    assert_eq!(default.place(&c, &r).expect("places").host(), Some(1));
    let config = [("group-penalty".to_owned(), "0".to_owned())].into_iter().collect();
    let tuned = rt.load(policies::SPREAD, "spread", config).expect("loads");
    assert_eq!(tuned.place(&c, &r).expect("places").host(), Some(0));
}
