//! Placement decision cost: the same best-fit policy as a WebAssembly
//! component and compiled natively, on the same inputs, both called through
//! `locus_core::Policy` (so both include the host's validation). The WASM
//! side is what the agent does per decision: a fresh instance, the call,
//! the instance dropped. Then the two parts apart (instantiation; the call
//! on a fresh instance), and the cost of a hot swap.
//!
//! `cargo bench -p locus-policy --bench placement` (or `make bench`).

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use locus_builtin::policies;
use locus_core::{Native, Policy};
use locus_policy::{Runtime, RuntimeConfig, Slot};
use locus_sdk::testing::{RequestBuilder, synthetic_cluster as cluster};
use locus_sdk::{Cluster, Request, Resources};
use std::collections::BTreeMap;
use std::hint::black_box;

fn request(c: &Cluster) -> Request {
    RequestBuilder::new(c, Resources::new(2, 4096, 20)).build()
}

fn placement(crit: &mut Criterion) {
    let rt = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let wasm = Slot::new("placement", 1);
    wasm.activate(rt.load(policies::BEST_FIT, "best-fit", BTreeMap::new()).expect("loads"));
    let native = Native::placement::<policy_best_fit::BestFit>("best-fit");
    let mut group = crit.benchmark_group("placement");
    for hosts in [10usize, 100, 1000, 10_000] {
        let c = cluster(hosts);
        let r = request(&c);
        assert_eq!(
            wasm.place(&c, &r).expect("wasm decides").value,
            native.place(&c, &r).expect("native decides").value,
            "both decide the same"
        );
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::new("wasm/best-fit", hosts), &(&c, &r), |b, (c, r)| {
            b.iter(|| black_box(wasm.place(c, r).expect("decides")))
        });
        group.bench_with_input(BenchmarkId::new("native/best-fit", hosts), &(&c, &r), |b, (c, r)| {
            b.iter(|| black_box(native.place(c, r).expect("decides")))
        });
    }
    group.finish();
}

fn parts(crit: &mut Criterion) {
    let rt = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let p = rt.load(policies::BEST_FIT, "best-fit", BTreeMap::new()).expect("loads");
    crit.bench_function("instantiate/best-fit", |b| {
        b.iter(|| black_box(p.instance().expect("instantiates")))
    });
    let mut group = crit.benchmark_group("call");
    for hosts in [100usize, 1000] {
        let c = cluster(hosts);
        let r = request(&c);
        group.bench_with_input(BenchmarkId::new("wasm/best-fit", hosts), &(&c, &r), |b, (c, r)| {
            b.iter_batched(
                || p.instance().expect("instantiates"),
                |i| black_box(i.place(c, r).expect("decides")),
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

fn hot_swap(crit: &mut Criterion) {
    let rt = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let slot = Slot::new("placement", 1);
    let pre = rt.precompile(policies::BEST_FIT).expect("precompiles");
    let mut group = crit.benchmark_group("swap");
    group.sample_size(20);
    group.bench_function("precompiled", |b| {
        b.iter(|| slot.activate(rt.load_precompiled(&pre, "best-fit", BTreeMap::new()).expect("loads")))
    });
    group.bench_function("uncompiled", |b| {
        b.iter(|| slot.activate(rt.load(policies::BEST_FIT, "best-fit", BTreeMap::new()).expect("loads")))
    });
    group.finish();
}

criterion_group!(benches, placement, parts, hot_swap);
criterion_main!(benches);
