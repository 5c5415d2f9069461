//! `locus policy bench FILE --hosts N`: decisions per second and latency
//! percentiles of a component on a synthetic cluster, next to the same
//! policy compiled natively when it is a built-in (the baseline, measured in
//! the same run).

use crate::native as natives;
use anyhow::{Result, bail};
use locus::source;
use locus_core::Policy;
use locus_policy::{Runtime, RuntimeConfig, Slot};
use locus_sdk::Resources;
use locus_sdk::testing::{RequestBuilder, synthetic_cluster, synthetic_partition};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A component file, or the name of a built-in policy.
    policy: String,
    /// Hosts in the synthetic cluster.
    #[arg(long, default_value_t = 1000)]
    hosts: usize,
    /// How long to measure each variant, in seconds.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Configuration given to the policy, `key=value` (repeatable).
    #[arg(long = "config", value_name = "KEY=VALUE")]
    config: Vec<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, serde::Serialize)]
struct Measure {
    variant: String,
    decisions: u64,
    decisions_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
}

fn measure(variant: &str, budget: Duration, mut decide: impl FnMut() -> Result<()>) -> Result<Measure> {
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    // Warm up: instance pool, caches.
    for _ in 0..10 {
        decide()?;
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        let t = Instant::now();
        decide()?;
        hist.record((t.elapsed().as_nanos() as u64).max(1))?;
        n += 1;
    }
    let total = start.elapsed().as_secs_f64();
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    Ok(Measure {
        variant: variant.to_owned(),
        decisions: n,
        decisions_per_sec: n as f64 / total,
        p50_us: us(0.5),
        p99_us: us(0.99),
        p999_us: us(0.999),
        max_us: hist.max() as f64 / 1000.0,
    })
}

pub fn run(args: Args) -> Result<ExitCode> {
    if args.hosts == 0 || args.hosts > 1_000_000 {
        bail!("--hosts must be between 1 and 1000000");
    }
    if !(args.seconds > 0.0 && args.seconds <= 600.0) {
        bail!("--seconds must be above 0 and at most 600");
    }
    let runtime = Runtime::new(RuntimeConfig::default())?;
    let src = source::resolve(&args.policy, runtime.config().max_component_size)?;
    let loaded = runtime.load(&src.bytes, &src.name, source::config(&args.config)?)?;
    let world = loaded.info().world;
    let slot = Slot::new("bench", 1);
    slot.activate(loaded.clone());
    let native = natives::native(&src.bytes);
    let budget = Duration::from_secs_f64(args.seconds);
    let mut results = Vec::new();
    let mut variants: Vec<(&str, &dyn Policy)> = vec![("wasm", &slot)];
    if let Some(n) = &native {
        variants.push(("native", n));
    }
    if world.places() {
        let cluster = synthetic_cluster(args.hosts);
        let request = RequestBuilder::new(&cluster, Resources::new(2, 4096, 20)).build();
        for (variant, policy) in &variants {
            results.push(measure(&format!("{variant} place"), budget, || {
                policy.place(&cluster, &request).map(drop).map_err(anyhow::Error::from)
            })?);
        }
    }
    if world.plans() {
        let partition = synthetic_partition(args.hosts);
        for (variant, policy) in &variants {
            results.push(measure(&format!("{variant} plan"), budget, || {
                policy.plan(&partition).map(drop).map_err(anyhow::Error::from)
            })?);
        }
    }
    let metrics = loaded.metrics();
    if args.json {
        let out = serde_json::json!({ "policy": loaded.id(), "hosts": args.hosts, "results": results, "metrics": metrics });
        println!("{out}");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{} on {} synthetic hosts ({} s per variant)", loaded.id(), args.hosts, args.seconds);
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    table.set_header(["variant", "decisions/s", "p50 µs", "p99 µs", "p99.9 µs", "max µs"]);
    for m in &results {
        table.add_row([
            m.variant.clone(),
            format!("{:.0}", m.decisions_per_sec),
            format!("{:.1}", m.p50_us),
            format!("{:.1}", m.p99_us),
            format!("{:.1}", m.p999_us),
            format!("{:.1}", m.max_us),
        ]);
    }
    println!("{table}");
    if let [wasm, native, ..] = &results[..] {
        println!("wasm/native time ratio at p50: {:.2}", wasm.p50_us / native.p50_us.max(0.001));
    }
    Ok(ExitCode::SUCCESS)
}
