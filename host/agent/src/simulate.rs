//! `locus sim`: runs a scenario file in the simulator (`locus-sim`) and
//! prints its report, or (`--check`) checks many short runs drawn from
//! their seeds. Every seed is printed, so any run can be replayed.

use anyhow::{Context, Result};
use std::path::PathBuf;

/// `locus sim` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The scenario (TOML; see examples/scenarios/); none with `--check` or `--scale`.
    #[arg(required_unless_present_any = ["check", "scale"])]
    pub scenario: Option<PathBuf>,
    /// The run's seed; a random one when absent (printed either way).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Also write the JSON report to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Instead of a scenario, check many short runs drawn from their seeds,
    /// with faults, each required to settle once healed.
    #[arg(long, conflicts_with = "scenario")]
    pub check: bool,
    /// With `--check`: how many seeds.
    #[arg(long, default_value_t = 100)]
    pub seeds: u64,
    /// With `--check`: the first seed.
    #[arg(long, default_value_t = 0)]
    pub from: u64,
    /// With `--check`: print every node event of a failing seed's run.
    #[arg(long)]
    pub trace: bool,
    /// Instead of a scenario, run generated ones of these many hosts
    /// (PoPs of 32, ten VMs per host, loads changing) and print a table:
    /// wall time, peak memory, events per second, overlay traffic per node.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["scenario", "check"])]
    pub scale: Vec<u32>,
    /// With `--scale`: virtual seconds each run lasts.
    #[arg(long, default_value_t = 60)]
    pub duration_s: u64,
}

/// Runs the scenario, or the checker.
pub fn run(args: Args) -> Result<()> {
    if !args.scale.is_empty() {
        return scale(&args.scale, args.duration_s, args.seed.unwrap_or_else(fresh_seed));
    }
    let Some(path) = &args.scenario else { return check(args.from, args.seeds, args.trace) };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading the scenario {}", path.display()))?;
    let scenario = locus_sim::Scenario::parse(&text).with_context(|| format!("in {}", path.display()))?;
    let seed = args.seed.unwrap_or_else(fresh_seed);
    eprintln!("seed {seed}: replay with `locus sim {} --seed {seed}`", path.display());
    let started = std::time::Instant::now();
    let world = locus_sim::World::new(scenario, seed).with_context(|| format!("in {}", path.display()))?;
    let report = world.run();
    let json = serde_json::to_string_pretty(&report)?;
    println!("{json}");
    eprintln!("{:.1} s of virtual time in {:.2} s", report.virtual_s, started.elapsed().as_secs_f64());
    if let Some(path) = args.report {
        std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Runs a generated scenario per size and prints a Markdown table.
fn scale(sizes: &[u32], duration_s: u64, seed: u64) -> Result<()> {
    let list = sizes.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    eprintln!("seed {seed}: replay with `locus sim --scale {list} --duration-s {duration_s} --seed {seed}`");
    println!(
        "| hosts | PoPs | VMs placed | virtual s | wall s | events/s | peak RSS MiB | \
         overlay msgs/node/s | overlay bytes/node/s | busiest node bytes/s | migrations |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &hosts in sizes {
        let scenario = locus_sim::scale::scenario(hosts, duration_s)?;
        let pops = scenario.pops.len();
        reset_peak_rss();
        let started = std::time::Instant::now();
        let report = locus_sim::World::new(scenario, seed)?.run();
        let wall = started.elapsed().as_secs_f64();
        let t = &report.traffic;
        println!(
            "| {hosts} | {pops} | {} | {:.0} | {wall:.1} | {:.0} | {} | {:.0} | {:.0} | {:.0} | {} |",
            report.placed,
            report.virtual_s,
            report.events as f64 / wall,
            peak_rss_mib().map_or_else(|| "?".into(), |m| m.to_string()),
            t.messages_per_node_s,
            t.bytes_per_node_s,
            t.max_bytes_per_node_s,
            report.migrations,
        );
    }
    Ok(())
}

/// Starts measuring this process's peak resident memory afresh (Linux:
/// writing 5 to clear_refs resets the high-water mark).
fn reset_peak_rss() {
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        tracing::debug!("peak memory not reset: {e}");
    }
}

/// This process's peak resident memory since the last reset, MiB.
fn peak_rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024)
}

/// Checks seeds `from..from + seeds`; fails naming every failing seed.
fn check(from: u64, seeds: u64, trace: bool) -> Result<()> {
    let started = std::time::Instant::now();
    let mut failed = Vec::new();
    for seed in from..from.saturating_add(seeds) {
        if let Err(f) = locus_sim::check::check(seed) {
            eprintln!("seed {seed} failed: replay with `locus sim --check --seeds 1 --from {seed}`");
            for p in &f.problems {
                eprintln!("  {p}");
            }
            if trace {
                locus_sim::check::trace(seed).iter().for_each(|line| eprintln!("{line}"));
            }
            failed.push(seed);
        }
    }
    eprintln!(
        "{} of {seeds} seeds from {from} settled, in {:.1} s",
        seeds - failed.len() as u64,
        started.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        anyhow::bail!("seeds {failed:?} did not settle");
    }
    Ok(())
}

/// A seed from the clock, when none is given.
fn fresh_seed() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    now.as_nanos() as u64 ^ u64::from(std::process::id())
}
