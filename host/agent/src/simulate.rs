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
    /// Write the run's files into this directory (made if missing):
    /// report.json, series.csv (a row per interval) and run.svg (charts).
    #[arg(long)]
    pub out: Option<PathBuf>,
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
    /// With `--scale`: run each size twice, rebalanced by the agents and by
    /// the central scheduler (both with the same migration policy and no
    /// consolidation), and print them side by side.
    #[arg(long, requires = "scale")]
    pub compare: bool,
    /// Override the scenario's placement policy.
    #[arg(long, value_parser = locus_sim::scenario::PLACEMENTS)]
    pub placement: Option<String>,
    /// Override whether underloaded hosts are consolidated.
    #[arg(long)]
    pub consolidation: Option<bool>,
    /// Override who rebalances: the agents or one central scheduler.
    #[arg(long, value_parser = ["distributed", "centralized"])]
    pub scheduler: Option<String>,
    /// Override how often the central scheduler plans, s.
    #[arg(long)]
    pub period_s: Option<f64>,
    /// Override how the policies run: natively, or as the WebAssembly
    /// components the agents load, metered by fuel.
    #[arg(long, value_parser = ["native", "wasm"])]
    pub runtime: Option<String>,
}

impl Args {
    /// `scenario` with the overrides given on the command line.
    fn apply(&self, mut scenario: locus_sim::Scenario) -> locus_sim::Scenario {
        use locus_sim::scenario::SchedulerKind;
        if let Some(p) = &self.placement {
            scenario.policies.placement.clone_from(p);
        }
        if let Some(c) = self.consolidation {
            scenario.policies.consolidation = c;
        }
        match self.scheduler.as_deref() {
            Some("centralized") => scenario.scheduler.kind = SchedulerKind::Centralized,
            Some(_) => scenario.scheduler.kind = SchedulerKind::Distributed,
            None => {}
        }
        if let Some(p) = self.period_s {
            scenario.scheduler.period_s = p;
        }
        match self.runtime.as_deref() {
            Some("wasm") => scenario.policies.runtime = locus_sim::scenario::PolicyRuntime::Wasm,
            Some(_) => scenario.policies.runtime = locus_sim::scenario::PolicyRuntime::Native,
            None => {}
        }
        scenario
    }

    /// The overrides as they were given, for the replay command.
    fn overrides(&self) -> String {
        let mut out = String::new();
        let mut add = |flag: &str, value: Option<String>| {
            if let Some(v) = value {
                out.push_str(&format!(" --{flag} {v}"));
            }
        };
        add("placement", self.placement.clone());
        add("consolidation", self.consolidation.map(|c| c.to_string()));
        add("scheduler", self.scheduler.clone());
        add("period-s", self.period_s.map(|p| p.to_string()));
        add("runtime", self.runtime.clone());
        out
    }
}

/// Runs the scenario, or the checker.
pub fn run(args: Args) -> Result<()> {
    if !args.scale.is_empty() {
        let seed = args.seed.unwrap_or_else(fresh_seed);
        if args.compare {
            return compare(&args, seed);
        }
        return scale(&args, seed);
    }
    let Some(path) = &args.scenario else { return check(args.from, args.seeds, args.trace) };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading the scenario {}", path.display()))?;
    let scenario = locus_sim::Scenario::parse(&text).with_context(|| format!("in {}", path.display()))?;
    let scenario = args.apply(scenario);
    let seed = args.seed.unwrap_or_else(fresh_seed);
    eprintln!("seed {seed}: replay with `locus sim {}{} --seed {seed}`", path.display(), args.overrides());
    let started = std::time::Instant::now();
    let title = format!("{} (seed {seed})", scenario.name);
    let mut world =
        locus_sim::World::new(scenario, seed).with_context(|| format!("in {}", path.display()))?;
    run_to(&mut world, &path.display().to_string());
    let series = world.series().to_vec();
    let report = world.finish();
    let json = serde_json::to_string_pretty(&report)?;
    println!("{json}");
    eprintln!("{:.1} s of virtual time in {:.2} s", report.virtual_s, started.elapsed().as_secs_f64());
    if let Some(path) = &args.report {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("making {}", dir.display()))?;
        let csv = locus_sim::series::csv(&series).map_err(anyhow::Error::msg)?;
        let svg = locus_sim::series::svg(&title, &series).map_err(anyhow::Error::msg)?;
        for (name, text) in [("report.json", &json), ("series.csv", &csv), ("run.svg", &svg)] {
            let path = dir.join(name);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        eprintln!("wrote report.json, series.csv and run.svg to {}", dir.display());
    }
    Ok(())
}

/// Runs `world` to its scenario's end, showing how far it is.
fn run_to(world: &mut locus_sim::World, label: &str) {
    let end_us = world.end_us();
    let mut progress = Progress::new(end_us / 1_000_000, "virtual s", label);
    // A hundred steps: the bar moves and its ETA holds without costing the run.
    let step = (end_us / 100).max(1);
    while world.now_us() < end_us {
        world.run_until((world.now_us() + step).min(end_us));
        progress.set(world.now_us() / 1_000_000);
    }
    progress.finish();
}

/// Runs `scenario` from `seed` to its end, showing how far it is, and says what happened.
fn run_report(scenario: locus_sim::Scenario, seed: u64, label: &str) -> Result<locus_sim::Report> {
    let mut world = locus_sim::World::new(scenario, seed)?;
    run_to(&mut world, label);
    Ok(world.finish())
}

/// How far a long job is, on stderr: a bar with the time left on a
/// terminal; elsewhere (a log, CI) a line at every tenth, so that a run
/// in the background still tells how far it is.
struct Progress {
    bar: indicatif::ProgressBar,
    unit: &'static str,
    label: String,
    /// The tenths already told, off a terminal.
    told: u64,
}

impl Progress {
    fn new(len: u64, unit: &'static str, label: &str) -> Self {
        let bar = indicatif::ProgressBar::new(len);
        let style = indicatif::ProgressStyle::with_template(&format!(
            "{label} {{bar:40}} {{pos}}/{{len}} {unit}  {{elapsed}} elapsed, about {{eta}} left"
        ));
        if let Ok(style) = style {
            bar.set_style(style);
        }
        Progress { bar, unit, label: label.to_owned(), told: 0 }
    }

    fn set(&mut self, pos: u64) {
        self.bar.set_position(pos);
        let len = self.bar.length().unwrap_or(0).max(1);
        let tenths = pos.min(len) * 10 / len;
        if self.bar.is_hidden() && tenths > self.told {
            self.told = tenths;
            let (label, unit, elapsed) = (&self.label, self.unit, self.bar.elapsed());
            if pos >= len {
                eprintln!("{label}: {pos}/{len} {unit} in {elapsed:.0?}");
            } else {
                eprintln!("{label}: {pos}/{len} {unit} in {elapsed:.0?}, about {:.0?} left", self.bar.eta());
            }
        }
    }

    fn inc(&mut self) {
        self.set(self.bar.position() + 1);
    }

    /// Prints around the bar.
    fn suspend(&self, f: impl FnOnce()) {
        self.bar.suspend(f);
    }

    fn finish(self) {
        self.bar.finish_and_clear();
    }
}

/// Runs a generated scenario per size and prints a Markdown table.
fn scale(args: &Args, seed: u64) -> Result<()> {
    let (sizes, duration_s) = (&args.scale, args.duration_s);
    let list = sizes.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    eprintln!(
        "seed {seed}: replay with `locus sim --scale {list} --duration-s {duration_s}{} --seed {seed}`",
        args.overrides()
    );
    println!(
        "| hosts | PoPs | VMs placed | virtual s | wall s | events/s | peak RSS MiB | \
         overlay msgs/node/s | overlay bytes/node/s | busiest node bytes/s | migrations |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut kinds = Vec::new();
    for &hosts in sizes {
        let scenario = args.apply(locus_sim::scale::scenario(hosts, duration_s)?);
        let pops = scenario.pops.len();
        reset_peak_rss();
        let started = std::time::Instant::now();
        let report = run_report(scenario, seed, &format!("{hosts} hosts"))?;
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
        kinds.push((hosts, report.virtual_s, report.events_by_kind));
    }
    // Where the time went: an event costs about the same whatever it is.
    println!();
    println!(
        "| hosts | events per host per virtual s | heartbeats and deadlines | host summaries | \
         PoP summaries | peer requests | their answers | samples | record lookups | other |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (hosts, virtual_s, c) in kinds {
        let per = |n: u64| n as f64 / f64::from(hosts) / virtual_s.max(1e-9);
        let other = c.suspicions + c.other_inputs + c.world;
        let all = [
            c.timers,
            c.host_summaries,
            c.pop_summaries,
            c.peer_requests,
            c.peer_responses,
            c.samples,
            c.lookups,
            other,
        ];
        let cells: Vec<String> = all.iter().map(|&n| format!("{:.2}", per(n))).collect();
        println!("| {hosts} | {:.2} | {} |", per(all.iter().sum()), cells.join(" | "));
    }
    Ok(())
}

/// Runs each generated scenario rebalanced by the agents and by the
/// central scheduler, and prints them side by side.
fn compare(args: &Args, seed: u64) -> Result<()> {
    use locus_sim::scenario::SchedulerKind;
    let (sizes, duration_s) = (&args.scale, args.duration_s);
    let list = sizes.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    eprintln!(
        "seed {seed}: replay with `locus sim --scale {list} --duration-s {duration_s} --compare{} --seed {seed}`",
        args.overrides()
    );
    eprintln!("each VM's load changes about once a minute, uniformly within 0..=2.6 CPUs");
    println!(
        "| hosts | rebalanced by | overloads | overload host·s | time to normal p50 / p99 s | \
         unsolved at end | migrations | GB moved | energy kWh | wall s |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &hosts in sizes {
        for kind in [SchedulerKind::Distributed, SchedulerKind::Centralized] {
            let mut scenario = args.apply(locus_sim::scale::scenario(hosts, duration_s)?);
            scenario.policies.consolidation = false;
            scenario.scheduler.kind = kind;
            // Busier than the scale runs: a host's demand averages 13 of
            // its 16 CPUs, so overloads are common and last.
            for l in &mut scenario.load_changes {
                l.max_milli = 2_600;
            }
            let by = if kind == SchedulerKind::Distributed { "agents" } else { "central" };
            let started = std::time::Instant::now();
            let r = run_report(scenario, seed, &format!("{hosts} hosts, {by}"))?;
            println!(
                "| {hosts} | {} | {} | {:.0} | {:.1} / {:.1} | {} | {} | {:.1} | {:.1} | {:.1} |",
                match kind {
                    SchedulerKind::Distributed => "agents (DVMS-like)",
                    SchedulerKind::Centralized => "central, every 30 s",
                },
                r.overloads,
                r.overload_host_s,
                r.overload_ms.p50 / 1000.0,
                r.overload_ms.p99 / 1000.0,
                r.overloads_unsolved,
                r.migrations,
                r.migration_bytes as f64 / 1e9,
                r.energy.kwh,
                started.elapsed().as_secs_f64(),
            );
        }
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
    let mut progress = Progress::new(seeds, "seeds", "checking");
    for seed in from..from.saturating_add(seeds) {
        if let Err(f) = locus_sim::check::check(seed) {
            progress.suspend(|| {
                eprintln!("seed {seed} failed: replay with `locus sim --check --seeds 1 --from {seed}`");
                for p in &f.problems {
                    eprintln!("  {p}");
                }
                if trace {
                    locus_sim::check::trace(seed).iter().for_each(|line| eprintln!("{line}"));
                }
            });
            failed.push(seed);
        }
        progress.inc();
    }
    progress.finish();
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
