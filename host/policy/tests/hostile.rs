//! Hostile components, built in this repository, against the runtime. After
//! each attack the runtime keeps serving: with the previous version when the
//! slot has one, with the core's safe fallback otherwise, and the error names
//! the policy and what it did.

mod common;

use common::*;
use locus_builtin::{hostile, policies};
use locus_core::{DecidedBy, ErrorKind, Outcome, Policy, VmRequest};
use locus_policy::{LoadError, Runtime, RuntimeConfig, Slot};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A slot whose previous version is a sound best-fit and whose active
/// version is `bytes`.
fn slot_over_best_fit(rt: &Runtime, bytes: &[u8], name: &str) -> Slot {
    let slot = Slot::new("placement", 4);
    slot.activate(load(rt, policies::BEST_FIT, "best-fit"));
    slot.activate(load(rt, bytes, name));
    slot
}

/// Calls the hostile active version, checks the failure, and checks the
/// previous version answered instead.
fn attack(bytes: &[u8], name: &str, kind: ErrorKind, says: &str) {
    let rt = runtime();
    let slot = slot_over_best_fit(&rt, bytes, name);
    let c = cluster(10);
    let r = request(&c);
    let verdict = slot.place(&c, &r).expect("the previous version takes over");
    let failure = verdict.failure.expect("the active version failed");
    assert_eq!(failure.kind, kind, "{failure}");
    assert!(failure.policy.starts_with(&format!("{name}@")), "{failure}");
    assert!(failure.to_string().contains(says), "{failure}");
    assert!(verdict.decided_by.starts_with("best-fit@"));
    assert_eq!(verdict.value.host(), policies_native_best_fit(&c, &r));
    // The failed instance was dropped; the next call fails the same way and
    // is served again.
    let again = slot.place(&c, &r).expect("still serving");
    assert_eq!(again.failure.map(|f| f.kind), Some(kind));
    let m = slot.active().expect("active").metrics();
    assert_eq!(m.calls, 2);
    assert_eq!(m.errors, vec![(kind, 2)]);
}

fn policies_native_best_fit(c: &locus_sdk::Cluster, r: &locus_sdk::Request) -> Option<u32> {
    use locus_sdk::PlacementPolicy;
    policy_best_fit::BestFit::place(c, r).host()
}

#[test]
fn an_infinite_loop_is_interrupted_at_the_deadline() {
    let rt = Runtime::new(RuntimeConfig { deadline: Duration::from_millis(20), ..RuntimeConfig::default() })
        .expect("runtime");
    let spin = load(&rt, hostile::SPIN, "hostile-spin");
    let c = cluster(10);
    let start = Instant::now();
    let err = spin.place(&c, &request(&c)).expect_err("interrupted");
    let took = start.elapsed();
    assert_eq!(err.kind, ErrorKind::Deadline, "{err}");
    assert!(err.message.contains("its deadline is 20 ms"), "{err}");
    // Deadline plus a tick and scheduling noise; what matters is that it ends.
    assert!(took < Duration::from_secs(2), "took {took:?}");
    attack(hostile::SPIN, "hostile-spin", ErrorKind::Deadline, "deadline");
}

#[test]
fn a_memory_hog_is_stopped_at_the_cap() {
    attack(hostile::HOG, "hostile-hog", ErrorKind::MemoryCap, "the cap is 64.00 MiB (67108864 bytes)");
}

#[test]
fn a_panic_is_contained_and_its_message_reported() {
    attack(hostile::PANIC, "hostile-panic", ErrorKind::Trap, "policy bug: cannot handle 10 hosts");
}

#[test]
fn an_out_of_range_index_is_an_invalid_decision() {
    attack(
        hostile::BAD_INDEX,
        "hostile-bad-index",
        ErrorKind::InvalidDecision,
        "chose host row 17 but there are 10 hosts",
    );
}

#[test]
fn a_huge_returned_list_is_refused_before_it_is_copied() {
    // A million migrations for three VMs: refused by size while the list is
    // still in the guest, so copying it out cannot stretch the deadline.
    let rt = runtime();
    let slot = Slot::new("migration", 4);
    slot.activate(load(&rt, policies::RELIEVE_OVERLOAD, "relieve-overload"));
    slot.activate(load(&rt, hostile::HUGE_LIST, "hostile-huge-list"));
    let p = partition();
    let verdict = slot.plan(&p).expect("the previous version takes over");
    let failure = verdict.failure.expect("the hostile version failed");
    assert_eq!(failure.kind, ErrorKind::InvalidDecision);
    assert!(failure.message.contains("handed back more data than this call allows"), "{failure}");
    assert!(!verdict.value.is_empty(), "relieve-overload fixed the overload");
}

#[test]
fn a_component_importing_the_clock_is_refused_at_load() {
    let err = runtime().load(hostile::CLOCK, "hostile-clock", BTreeMap::new()).expect_err("refused");
    assert!(matches!(err, LoadError::Forbidden(ref names) if names.len() == 2), "{err}");
    let text = err.to_string();
    assert!(text.contains("wasi:clocks/wall-clock") && text.contains("wasi:clocks/monotonic-clock"), "{err}");
    assert!(text.contains("must not depend on when it is taken"), "{err}");
}

#[test]
fn malformed_bytes_are_refused_with_a_reason() {
    let rt = Runtime::new(RuntimeConfig { max_component_size: 200_000, ..RuntimeConfig::default() })
        .expect("runtime");
    let refuse = |bytes: &[u8]| rt.load(bytes, "bad", BTreeMap::new()).expect_err("refused");
    assert_eq!(refuse(b"garbage, not wasm at all"), LoadError::NotWasm);
    assert_eq!(refuse(b""), LoadError::NotWasm);
    let core = wat::parse_str("(module (func (export \"place\")))").expect("wat");
    assert_eq!(refuse(&core), LoadError::CoreModule);
    assert!(refuse(&core).to_string().contains("wasm32-wasip2"));
    assert_eq!(refuse(&vec![0; 300_000]), LoadError::TooLarge { size: 300_000, cap: 200_000 });
    let mut truncated = policies::BEST_FIT[..1000].to_vec();
    truncated.extend_from_slice(&[0xff; 16]);
    assert!(matches!(refuse(&truncated), LoadError::Compile(_)));
    let empty = wat::parse_str("(component)").expect("wat");
    assert_eq!(
        refuse(&empty).to_string(),
        "component exports neither locus:policy/placement@0.1.0 nor locus:policy/migration@0.1.0 (it exports: nothing)"
    );
    let future = wat::parse_str(
        r#"(component (component $c) (instance $i (instantiate $c)) (export "locus:policy/placement@0.2.0" (instance $i)))"#,
    )
    .expect("wat");
    assert!(matches!(refuse(&future), LoadError::WrongVersion { .. }));
    let wrong_shape = wat::parse_str(
        r#"(component (component $c) (instance $i (instantiate $c)) (export "locus:policy/placement@0.1.0" (instance $i)))"#,
    )
    .expect("wat");
    assert!(refuse(&wrong_shape).to_string().contains("place"), "a placement export without `place`");
}

#[test]
fn without_a_previous_version_the_pipeline_falls_back() {
    let rt = runtime();
    let slot = Slot::new("placement", 4);
    slot.activate(load(&rt, hostile::PANIC, "hostile-panic"));
    let mut model = locus_core::Model::new();
    model.add_pop("paris", "FR", locus_sdk::Coordinates::new(48.86, 2.35), 0, 50).expect("pop");
    model.add_host("h1", "paris", locus_sdk::Resources::new(8, 8192, 100), 8000, (100, 200)).expect("host");
    let req: VmRequest = serde_json::from_str(r#"{"name":"v","vcpus":1,"memory-mib":512}"#).expect("request");
    let d = locus_core::Placer::new().place(&model, &req, &slot);
    assert!(matches!(d.outcome, Outcome::Placed { .. }));
    assert!(matches!(d.decided_by, DecidedBy::Fallback { ref failure } if failure.kind == ErrorKind::Trap));
}

#[test]
fn metered_by_fuel_a_call_reports_the_same_fuel_every_time_and_an_infinite_loop_runs_out() {
    let metered = RuntimeConfig {
        fuel: Some(50_000_000),
        deadline: Duration::from_secs(60),
        canonicalize_nans: true,
        ..RuntimeConfig::default()
    };
    let rt = Runtime::new(metered).expect("runtime");
    let spread = load(&rt, policies::SPREAD, "spread");
    let c = cluster(10);
    let r = request(&c);
    let (first, fuel) = spread.place_fueled(&c, &r);
    let (again, fuel_again) = spread.place_fueled(&c, &r);
    assert!(first.is_ok() && fuel > 0, "{first:?} {fuel}");
    assert_eq!((first.ok(), fuel), (again.ok(), fuel_again), "the same call, the same fuel");
    let (_, bigger) = spread.place_fueled(&cluster(100), &request(&cluster(100)));
    assert!(bigger > 3 * fuel, "ten times the hosts: {bigger} against {fuel}");
    // Out of fuel long before the minute's deadline: the budget, not the clock, stops it.
    let spin = load(&rt, hostile::SPIN, "hostile-spin");
    let start = Instant::now();
    let (err, used) = spin.place_fueled(&c, &r);
    let err = err.expect_err("runs out");
    assert_eq!(err.kind, ErrorKind::Deadline, "{err}");
    assert!(err.message.contains("ran out of fuel: each call has 50000000"), "{err}");
    assert_eq!(used, 50_000_000);
    assert!(start.elapsed() < Duration::from_secs(10));
}
