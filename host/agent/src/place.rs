//! `locus place`: an offline dry run. Each request of a requests file goes
//! through the real placement pipeline (filters → policy → validation) over
//! a cluster description, in order, each placed VM taking its room before
//! the next request. With several `--policy`, each runs on its own copy of
//! the cluster and the summaries are shown side by side.

use anyhow::{Context, Result};
use locus::{files, source};
use locus_core::spec::{ClusterSpec, RequestsSpec};
use locus_core::{DecidedBy, Decision, Model, Outcome, Placer, VmRequest};
use locus_policy::{Runtime, RuntimeConfig, Slot};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Policy to place with: a component file or a built-in name. Repeat to
    /// compare policies.
    #[arg(long = "policy", required = true, value_name = "FILE|NAME")]
    policies: Vec<String>,
    /// Cluster description (TOML, or JSON with a .json extension).
    #[arg(long)]
    cluster: PathBuf,
    /// Requests to place, in order (TOML or JSON).
    #[arg(long)]
    requests: PathBuf,
    /// Configuration given to every policy, `key=value` (repeatable).
    #[arg(long = "config", value_name = "KEY=VALUE")]
    config: Vec<String>,
    /// Show the decision for every request (the default with one policy).
    #[arg(long)]
    details: bool,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

/// One request's fate.
#[derive(Debug, serde::Serialize)]
struct Row {
    request: String,
    host: Option<String>,
    pop: Option<String>,
    user_latency_ms: Option<f64>,
    why: String,
    decision: Decision,
}

/// What a policy did to the cluster.
#[derive(Debug, serde::Serialize)]
struct Summary {
    policy: String,
    placed: u32,
    rejected: u32,
    fallbacks: u32,
    vms_per_pop: Vec<(String, u32)>,
    hosts_in_use: u32,
    hosts: u32,
    mean_user_latency_ms: Option<f64>,
    p95_user_latency_ms: Option<f64>,
    power_kw: f64,
    grid_power_kw: f64,
    carbon_kg_per_hour: f64,
}

#[derive(Debug, serde::Serialize)]
struct Run {
    summary: Summary,
    rows: Vec<Row>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let cluster: ClusterSpec = files::parse(&args.cluster)?;
    let requests: RequestsSpec = files::parse(&args.requests)?;
    let requests = requests.expand().with_context(|| format!("in {}", args.requests.display()))?;
    let base = cluster.build().with_context(|| format!("in {}", args.cluster.display()))?;
    let config = source::config(&args.config)?;
    let runtime = Runtime::new(RuntimeConfig::default())?;
    let mut runs = Vec::new();
    for spec in &args.policies {
        let src = source::resolve(spec, runtime.config().max_component_size)?;
        let loaded =
            runtime.load(&src.bytes, &src.name, config.clone()).with_context(|| format!("loading {spec}"))?;
        if !loaded.info().world.places() {
            anyhow::bail!("{spec} is a {}, not a placement policy", loaded.info().world.as_str());
        }
        let slot = Slot::new("placement", 1);
        slot.activate(loaded);
        runs.push(place_all(base.clone(), &requests, &slot)?);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(ExitCode::SUCCESS);
    }
    if args.details || runs.len() == 1 {
        for run in &runs {
            print_rows(run);
        }
    }
    print_summaries(&runs);
    Ok(ExitCode::SUCCESS)
}

fn place_all(mut model: Model, requests: &[VmRequest], slot: &Slot) -> Result<Run> {
    let mut placer = Placer::new();
    let mut rows = Vec::with_capacity(requests.len());
    for req in requests {
        let decision = placer.place(&model, req, slot);
        let mut row = Row {
            request: req.name.clone(),
            host: None,
            pop: None,
            user_latency_ms: decision.user_rtt_us.map(|us| f64::from(us) / 1000.0),
            why: why(&decision),
            decision,
        };
        if let Outcome::Placed { host } = row.decision.outcome {
            let pop = model.hosts[host.0 as usize].pop;
            row.host = Some(model.hosts[host.0 as usize].name.clone());
            row.pop = Some(model.pops[pop.0 as usize].name.clone());
            model.record_placement(req, host).with_context(|| format!("recording {}", req.name))?;
        }
        rows.push(row);
    }
    Ok(Run { summary: summarise(&model, slot, &rows), rows })
}

fn why(d: &Decision) -> String {
    let excluded = if d.excluded == Default::default() {
        String::new()
    } else {
        format!("; excluded {}", d.excluded.describe())
    };
    match (&d.outcome, &d.decided_by) {
        (Outcome::Rejected { message, .. }, _) => message.clone(),
        (Outcome::Placed { .. }, DecidedBy::Fallback { failure }) => {
            format!("fallback after {failure}")
        }
        (Outcome::Placed { .. }, DecidedBy::Policy { failure: Some(f), name }) => format!("{name} after {f}"),
        (Outcome::Placed { .. }, _) => format!("best of {} candidates{excluded}", d.candidates),
    }
}

fn summarise(model: &Model, slot: &Slot, rows: &[Row]) -> Summary {
    let placed = rows.iter().filter(|r| r.host.is_some()).count() as u32;
    let fallbacks =
        rows.iter().filter(|r| matches!(r.decision.decided_by, DecidedBy::Fallback { .. })).count() as u32;
    let mut latencies: Vec<f64> = rows.iter().filter_map(|r| r.user_latency_ms).collect();
    latencies.sort_by(f64::total_cmp);
    let mean = (!latencies.is_empty()).then(|| latencies.iter().sum::<f64>() / latencies.len() as f64);
    let p95 = latencies.get((latencies.len() * 95).div_ceil(100).saturating_sub(1)).copied();
    // Hosts without VMs are assumed powered down; renewable power offsets a
    // PoP's draw before the grid's carbon counts.
    let mut power_w = 0u64;
    let mut grid_w = 0u64;
    let mut carbon_g_per_h = 0f64;
    for (p, pop) in model.pops.iter().enumerate() {
        let draw: u64 = model
            .hosts
            .iter()
            .filter(|h| h.pop.0 as usize == p && h.vm_count > 0)
            .map(|h| u64::from(h.current_watts()))
            .sum();
        let grid = draw.saturating_sub(u64::from(pop.renewable_watts));
        power_w += draw;
        grid_w += grid;
        carbon_g_per_h += grid as f64 * f64::from(pop.carbon_g_per_kwh) / 1000.0;
    }
    Summary {
        policy: slot.active().map_or_else(String::new, |p| p.id().to_owned()),
        placed,
        rejected: rows.len() as u32 - placed,
        fallbacks,
        vms_per_pop: model.pops.iter().map(|p| (p.name.clone(), p.vm_count)).collect(),
        hosts_in_use: model.hosts.iter().filter(|h| h.vm_count > 0).count() as u32,
        hosts: model.hosts.len() as u32,
        mean_user_latency_ms: mean,
        p95_user_latency_ms: p95,
        power_kw: power_w as f64 / 1000.0,
        grid_power_kw: grid_w as f64 / 1000.0,
        carbon_kg_per_hour: carbon_g_per_h / 1000.0,
    }
}

fn table() -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    t
}

fn print_rows(run: &Run) {
    println!("Placements by {}:", run.summary.policy);
    let mut t = table();
    t.set_header(["request", "host", "pop", "user RTT ms", "why"]);
    for r in &run.rows {
        t.add_row([
            r.request.clone(),
            r.host.clone().unwrap_or_else(|| "—".into()),
            r.pop.clone().unwrap_or_else(|| "—".into()),
            r.user_latency_ms.map_or_else(|| "—".into(), |l| format!("{l:.1}")),
            r.why.clone(),
        ]);
    }
    println!("{t}\n");
}

fn print_summaries(runs: &[Run]) {
    let Some(first) = runs.first() else { return };
    let mut t = table();
    let mut header = vec!["".to_owned()];
    header.extend(runs.iter().map(|r| r.summary.policy.clone()));
    t.set_header(header);
    let mut row = |label: &str, f: &dyn Fn(&Summary) -> String| {
        let mut cells = vec![label.to_owned()];
        cells.extend(runs.iter().map(|r| f(&r.summary)));
        t.add_row(cells);
    };
    let opt = |v: Option<f64>| v.map_or_else(|| "—".to_owned(), |v| format!("{v:.1}"));
    row("placed", &|s| s.placed.to_string());
    row("rejected", &|s| s.rejected.to_string());
    row("fallback decisions", &|s| s.fallbacks.to_string());
    for (i, (pop, _)) in first.summary.vms_per_pop.iter().enumerate() {
        row(&format!("VMs in {pop}"), &|s| s.vms_per_pop.get(i).map_or(0, |p| p.1).to_string());
    }
    row("hosts in use", &|s| format!("{} / {}", s.hosts_in_use, s.hosts));
    row("mean user RTT ms", &|s| opt(s.mean_user_latency_ms));
    row("p95 user RTT ms", &|s| opt(s.p95_user_latency_ms));
    row("power kW (busy hosts)", &|s| format!("{:.2}", s.power_kw));
    row("grid power kW", &|s| format!("{:.2}", s.grid_power_kw));
    row("carbon kg CO2/h", &|s| format!("{:.2}", s.carbon_kg_per_hour));
    println!("{t}");
}
