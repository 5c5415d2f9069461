//! Hot swap: while calls are in flight on several threads, the active
//! version is swapped back and forth; no call fails, and every answer is
//! exactly what the version that gave it decides (never a mix).

mod common;

use common::*;
use locus_builtin::policies;
use locus_core::Policy;
use locus_policy::{Slot, SlotError};
use locus_sdk::PlacementPolicy;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[test]
fn swapping_under_load_never_fails_a_call() {
    let rt = runtime();
    let first = load(&rt, policies::FIRST_FIT, "first-fit");
    let best = load(&rt, policies::BEST_FIT, "best-fit");
    let slot = Arc::new(Slot::new("placement", 4));
    slot.activate(first.clone());
    let c = cluster(200);
    let r = request(&c);
    let expect_first = policy_first_fit::FirstFit::place(&c, &r);
    let expect_best = policy_best_fit::BestFit::place(&c, &r);
    assert_ne!(
        expect_first, expect_best,
        "the two versions must decide differently for this test to mean anything"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let (slot, stop, calls, c, r) = (slot.clone(), stop.clone(), calls.clone(), c.clone(), r.clone());
            let (first_id, best_id) = (first.id().to_owned(), best.id().to_owned());
            let (ef, eb) = (expect_first.clone(), expect_best.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let v = slot.place(&c, &r).expect("no call fails during a swap");
                    assert!(v.failure.is_none());
                    if v.decided_by == first_id {
                        assert_eq!(v.value, ef);
                    } else {
                        assert_eq!(v.decided_by, best_id);
                        assert_eq!(v.value, eb);
                    }
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for i in 0..200 {
        slot.activate(if i % 2 == 0 { best.clone() } else { first.clone() });
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("worker passed its checks");
    }
    assert!(calls.load(Ordering::Relaxed) > 0);
}

#[test]
fn earlier_versions_are_kept_for_rollback() {
    let rt = runtime();
    let slot = Slot::new("placement", 2);
    assert_eq!(slot.rollback(None).unwrap_err(), SlotError::NoHistory);
    let names = ["first-fit", "best-fit", "spread"];
    let versions: Vec<_> =
        names.iter().map(|n| load(&rt, locus_builtin::builtin(n).expect("builtin"), n)).collect();
    for v in &versions {
        slot.activate(v.clone());
    }
    slot.activate(versions[2].clone()); // the same version again changes nothing
    let history: Vec<_> = slot.history().iter().map(|p| p.info().name.clone()).collect();
    assert_eq!(history, ["best-fit", "first-fit"]);
    let hash = versions[0].info().hash.clone();
    assert_eq!(slot.rollback(Some(&hash[..8])).expect("kept").info().name, "first-fit");
    assert_eq!(slot.active().expect("active").info().name, "first-fit");
    let history: Vec<_> = slot.history().iter().map(|p| p.info().name.clone()).collect();
    assert_eq!(history, ["spread", "best-fit"]);
    assert!(matches!(slot.rollback(Some("ffffffff")), Err(SlotError::NoSuchVersion(_))));

    // A new configuration of the active component is a new version: the
    // old configuration is what a rollback brings back.
    let config = BTreeMap::from([("weight".to_owned(), "2".to_owned())]);
    let reconfigured = rt.load(policies::FIRST_FIT, "first-fit", config.clone()).expect("loads");
    slot.activate(reconfigured);
    assert_eq!(slot.active().expect("active").info().config, config);
    let back = slot.rollback(None).expect("kept");
    assert_eq!((back.info().name.as_str(), back.info().config.is_empty()), ("first-fit", true));
}

#[test]
fn a_precompiled_component_loads_and_decides_the_same() {
    let rt = runtime();
    let pre = rt.precompile(policies::BEST_FIT).expect("precompiles");
    let fast = rt.load_precompiled(&pre, "best-fit", BTreeMap::new()).expect("loads");
    let slow = load(&rt, policies::BEST_FIT, "best-fit");
    assert_eq!(fast.info().hash, slow.info().hash);
    let c = cluster(50);
    let r = request(&c);
    assert_eq!(fast.place(&c, &r).expect("places"), slow.place(&c, &r).expect("places"));
}
