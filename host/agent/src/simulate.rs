//! `locus sim`: runs a scenario file in the simulator (`locus-sim`) and
//! prints its report. The seed is printed first, so any run can be
//! replayed with `--seed`.

use anyhow::{Context, Result};
use std::path::PathBuf;

/// `locus sim` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The scenario (TOML; see examples/scenarios/).
    pub scenario: PathBuf,
    /// The run's seed; a random one when absent (printed either way).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Also write the JSON report to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

/// Runs the scenario.
pub fn run(args: Args) -> Result<()> {
    let text = std::fs::read_to_string(&args.scenario)
        .with_context(|| format!("reading the scenario {}", args.scenario.display()))?;
    let scenario =
        locus_sim::Scenario::parse(&text).with_context(|| format!("in {}", args.scenario.display()))?;
    let seed = args.seed.unwrap_or_else(fresh_seed);
    eprintln!("seed {seed}: replay with `locus sim {} --seed {seed}`", args.scenario.display());
    let started = std::time::Instant::now();
    let report = locus_sim::World::new(scenario, seed).run();
    let json = serde_json::to_string_pretty(&report)?;
    println!("{json}");
    eprintln!("{:.1} s of virtual time in {:.2} s", report.virtual_s, started.elapsed().as_secs_f64());
    if let Some(path) = args.report {
        std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// A seed from the clock, when none is given.
fn fresh_seed() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    now.as_nanos() as u64 ^ u64::from(std::process::id())
}
