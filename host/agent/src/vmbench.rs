//! `locus bench vms`: how fast a real agent process creates and boots VMs
//! on libvirt's test driver through its API, against the same define+start
//! calls made straight to libvirt in this process (the baseline: what
//! libvirt itself costs), and the agent's resident memory idle and loaded.
//!
//! What metrics cost is measured in the same run: rounds alternate an agent
//! with `[metrics] enabled = false` and one with metrics on, scraped ten
//! times a second meanwhile (150 times as often as Prometheus's usual
//! 15 s, so that even a run of a fraction of a second is scraped), each
//! with a fresh state directory; the median of each kind is reported.

use crate::client::{Client, Endpoint};
use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use locus_core::VmRequest;
use locus_core::node::VmStatus;
use serde::Serialize;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How often the metrics-on runs are scraped.
const SCRAPE_EVERY: Duration = Duration::from_millis(100);

/// `locus bench vms` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// VMs to create.
    #[arg(long, default_value_t = 1000)]
    pub count: u32,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: u32,
    /// Rounds, each one agent with metrics off and one with metrics on.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// What was measured.
#[derive(Debug, Serialize)]
pub struct Report {
    /// VMs created in each run.
    pub count: u32,
    /// Concurrent API requests.
    pub concurrency: u32,
    /// Baseline: define + start straight to libvirt, VMs/s.
    pub libvirt_direct_per_s: f64,
    /// Through the agent (API → placement → intent fsync → libvirt), with
    /// metrics on and scraped every second, VMs/s (median of the rounds).
    pub agent_per_s: f64,
    /// The same with metrics off, VMs/s (median of the rounds).
    pub agent_metrics_off_per_s: f64,
    /// How much slower metrics made it, % (negative: faster, i.e. noise).
    pub metrics_cost_pct: f64,
    /// Scrapes answered during the metrics-on runs (ten a second).
    pub scrapes: u64,
    /// Per-request latency through the agent, µs.
    pub agent_p50_us: u64,
    /// 99th percentile, µs.
    pub agent_p99_us: u64,
    /// The agent's resident memory idle (built-in policies loaded), KiB.
    pub idle_rss_kib: u64,
    /// Its resident memory holding `count` VMs, KiB.
    pub loaded_rss_kib: u64,
}

fn spec(name: String) -> VmRequest {
    VmRequest { name, vcpus: 1, memory_mib: 16, ..VmRequest::default() }
}

/// Runs the benchmark.
pub fn run(args: Args) -> Result<()> {
    if args.count == 0 || args.concurrency == 0 || args.rounds == 0 {
        bail!("--count, --concurrency and --rounds must be at least 1");
    }
    let direct = direct(args.count)?;
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        for metrics in [false, true] {
            let dir = tempfile_dir()?;
            let mut agent = AgentProcess::start(dir.path(), metrics)?;
            let result = through_agent(&args, &mut agent, dir.path(), metrics);
            agent.stop();
            let _ = std::fs::remove_dir_all(dir.path());
            if metrics { on.push(result?) } else { off.push(result?) }
        }
    }
    let median = |runs: &mut Vec<Run>| {
        runs.sort_by(|a, b| a.per_s.total_cmp(&b.per_s));
        runs[runs.len() / 2].clone()
    };
    let (on, scrapes, off) = (median(&mut on), on.iter().map(|r| r.scrapes).sum(), median(&mut off));
    let report = Report {
        count: args.count,
        concurrency: args.concurrency,
        libvirt_direct_per_s: direct,
        agent_per_s: on.per_s,
        agent_metrics_off_per_s: off.per_s,
        metrics_cost_pct: (off.per_s - on.per_s) / off.per_s * 100.0,
        scrapes,
        agent_p50_us: on.p50_us,
        agent_p99_us: on.p99_us,
        idle_rss_kib: on.idle_kib,
        loaded_rss_kib: on.loaded_kib,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("create+start of {} VMs on test:///default", report.count);
        println!("  libvirt directly (baseline, sequential): {:>9.0} VMs/s", report.libvirt_direct_per_s);
        println!(
            "  through the agent ({} in flight):         {:>9.0} VMs/s   p50 {} µs, p99 {} µs",
            report.concurrency, report.agent_per_s, report.agent_p50_us, report.agent_p99_us
        );
        println!(
            "  same, metrics off:                        {:>9.0} VMs/s   metrics cost {:+.1} % \
             (median of {} rounds each; {} scrapes at 10/s while on)",
            report.agent_metrics_off_per_s, report.metrics_cost_pct, args.rounds, report.scrapes
        );
        println!(
            "agent resident memory: idle {:.1} MiB, holding {} VMs {:.1} MiB",
            report.idle_rss_kib as f64 / 1024.0,
            report.count,
            report.loaded_rss_kib as f64 / 1024.0
        );
    }
    Ok(())
}

/// Define + start straight to libvirt, in this process.
fn direct(count: u32) -> Result<f64> {
    virt::error::clear_error_callback();
    let mut conn =
        virt::connect::Connect::open(Some("test:///default")).context("opening test:///default")?;
    let xml: Vec<String> = (0..count)
        .map(|i| {
            crate::libvirt::domain_xml::render(
                &spec(format!("direct-{i}")),
                crate::libvirt::domain_xml::Mark { owner: "bench", generation: 0 },
                "test",
                None,
            )
        })
        .collect();
    let start = Instant::now();
    let mut domains = Vec::with_capacity(count as usize);
    for x in &xml {
        let d = virt::domain::Domain::define_xml(&conn, x).context("define")?;
        d.create().context("start")?;
        domains.push(d);
    }
    let rate = f64::from(count) / start.elapsed().as_secs_f64();
    for d in domains {
        let _ = d.destroy();
        let _ = d.undefine();
    }
    let _ = conn.close();
    Ok(rate)
}

/// One run through the agent.
#[derive(Debug, Clone)]
struct Run {
    per_s: f64,
    p50_us: u64,
    p99_us: u64,
    idle_kib: u64,
    loaded_kib: u64,
    scrapes: u64,
}

fn through_agent(args: &Args, agent: &mut AgentProcess, dir: &Path, scrape: bool) -> Result<Run> {
    let socket = dir.join("agent.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        if Instant::now() > deadline {
            bail!("the agent did not start");
        }
        if let Some(status) = agent.child.try_wait()? {
            bail!("the agent exited with {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Settle: policies compiled, libvirt connected, first sample taken.
    std::thread::sleep(Duration::from_secs(2));
    let idle = rss_kib(agent.child.id())?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let scraping = tokio_util::sync::CancellationToken::new();
    let scraper = scrape.then(|| {
        let (client, stop) = (Client::new(Endpoint::Unix(socket.clone())), scraping.clone());
        rt.spawn(async move {
            let mut scrapes = 0;
            let mut every = tokio::time::interval(SCRAPE_EVERY);
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    _ = stop.cancelled() => return scrapes,
                }
                if let Ok((status, _)) = client.raw(hyper::Method::GET, "/metrics", None).await
                    && status.is_success()
                {
                    scrapes += 1;
                }
            }
        })
    });
    let (elapsed, hist) = rt.block_on(async {
        let start = Instant::now();
        let mut workers = tokio::task::JoinSet::new();
        for w in 0..args.concurrency {
            let client = Client::new(Endpoint::Unix(socket.clone()));
            let (count, conc) = (args.count, args.concurrency);
            workers.spawn(async move {
                let mut hist = Histogram::<u64>::new(3)?;
                let mut i = w;
                while i < count {
                    let t = Instant::now();
                    let _: VmStatus = client.post("/v1/vms", Some(&spec(format!("vm-{i}")))).await?;
                    hist.record(t.elapsed().as_micros() as u64)?;
                    i += conc;
                }
                anyhow::Ok(hist)
            });
        }
        let mut all = Histogram::<u64>::new(3)?;
        while let Some(h) = workers.join_next().await {
            all.add(h??)?;
        }
        anyhow::Ok((start.elapsed(), all))
    })?;
    scraping.cancel();
    let scrapes = match scraper {
        Some(task) => rt.block_on(task).unwrap_or(0),
        None => 0,
    };
    std::thread::sleep(Duration::from_secs(2));
    let loaded = rss_kib(agent.child.id())?;
    Ok(Run {
        per_s: f64::from(args.count) / elapsed.as_secs_f64(),
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
        idle_kib: idle,
        loaded_kib: loaded,
        scrapes,
    })
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc/PID/status")
}

struct AgentProcess {
    child: Child,
}

impl AgentProcess {
    fn start(dir: &Path, metrics: bool) -> Result<Self> {
        let exe = std::env::current_exe()?;
        let mut command = Command::new(exe);
        // Only these settings: none inherited from a LOCUS_* environment.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("LOCUS_") {
                command.env_remove(key);
            }
        }
        let child = command
            .args(["agent", "--libvirt-uri", "test:///default", "--host-name", "bench"])
            .args(["--dev", "--p2p-listen", "/ip4/127.0.0.1/tcp/0", "--state-dir"])
            .arg(dir)
            .args([
                "--set",
                "host.vcpus=1000000",
                "--set",
                "host.memory-mib=1000000000",
                "--set",
                "log=error",
                "--set",
                &format!("metrics.enabled={metrics}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the agent")?;
        Ok(AgentProcess { child })
    }

    fn stop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

fn tempfile_dir() -> Result<tempfile::TempDir> {
    tempfile::Builder::new().prefix("locus-bench-").tempdir().context("creating a temporary state directory")
}
