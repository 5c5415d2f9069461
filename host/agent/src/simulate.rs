//! `locus sim`: runs a scenario file in the simulator (`locus-sim`) and
//! prints its report, or (`--check`) checks many short runs drawn from
//! their seeds. Every seed is printed, so any run can be replayed.

use anyhow::{Context, Result};
use std::path::PathBuf;

/// `locus sim` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The scenario (TOML; see examples/scenarios/); none with `--check`.
    #[arg(required_unless_present = "check")]
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
}

/// Runs the scenario, or the checker.
pub fn run(args: Args) -> Result<()> {
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
