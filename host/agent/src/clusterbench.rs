//! `locus bench cluster`: a cluster of real agent processes on loopback
//! (test driver, cluster key): how long membership takes to converge, the
//! gossip traffic per agent, and the latency of a VM request that stays in
//! its PoP (the baseline) against one forwarded to another PoP.

use crate::api::cluster::ClusterView;
use crate::client::{Client, Endpoint};
use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use locus_core::VmRequest;
use locus_core::node::VmStatus;
use serde::Serialize;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `locus bench cluster` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Agents in all.
    #[arg(long, default_value_t = 20)]
    pub agents: usize,
    /// PoPs they are spread over.
    #[arg(long, default_value_t = 4)]
    pub pops: usize,
    /// Seconds over which gossip traffic is measured.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Requests timed per kind.
    #[arg(long, default_value_t = 100)]
    pub requests: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// What was measured.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Agents.
    pub agents: usize,
    /// PoPs.
    pub pops: usize,
    /// From the last agent answering its API to every agent seeing every PoP and host, s.
    pub convergence_s: f64,
    /// Gossip payload bytes per second per agent, in + out, mean.
    pub gossip_bytes_per_s_mean: f64,
    /// The busiest agent's.
    pub gossip_bytes_per_s_max: f64,
    /// Request placed in the PoP it entered (baseline), p50 / p99 µs.
    pub in_pop_us: (u64, u64),
    /// Request forwarded to another PoP (jurisdiction), p50 / p99 µs.
    pub forwarded_us: (u64, u64),
}

/// Agent processes started for a benchmark; stopped when dropped.
pub(crate) struct Agents {
    children: Vec<Child>,
    /// Each agent's API socket.
    pub sockets: Vec<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Agents {
    /// Where the agents keep their logs and keys.
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// An API client per agent.
    pub fn clients(&self) -> Vec<Client> {
        self.sockets.iter().map(|s| Client::new(Endpoint::Unix(s.clone()))).collect()
    }

    /// The last lines agent `i` logged.
    pub fn log_tail(&self, i: usize) -> String {
        let log = std::fs::read_to_string(self.dir().join(format!("a{i}.log"))).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        tail.join(" | ")
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
    }
}

const CODES: [&str; 8] = ["AA", "AB", "AC", "AD", "AE", "AF", "AG", "AH"];

/// Starts `agents` agent processes spread over `pops` PoPs on loopback
/// (PoP `p`'s agents on 127.`net+p`.0.x), each with `extra` arguments.
pub(crate) fn spawn_agents(count: usize, pops: usize, net: u8, extra: &[String]) -> Result<Agents> {
    let dir = tempfile::Builder::new().prefix("locus-cluster-bench-").tempdir()?;
    let exe = std::env::current_exe()?;
    let key = dir.path().join("cluster.key");
    std::fs::write(&key, crate::overlay::identity::new_cluster_key()?)?;
    let mut agents = Agents { children: vec![], sockets: vec![], _dir: dir };
    let root = agents._dir.path().to_owned();
    for i in 0..count {
        let (p, h) = (i % pops, i / pops);
        let state = root.join(format!("a{i}"));
        let mut cmd = Command::new(&exe);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("LOCUS_") {
                cmd.env_remove(k);
            }
        }
        cmd.args(["agent", "--libvirt-uri", "test:///default", "--host-name", &format!("p{p}-h{h}")])
            .args([
                "--pop",
                &format!("pop{p}"),
                "--set",
                &format!("pop.jurisdiction={}", CODES[p % CODES.len()]),
            ])
            .args(["--set", &format!("pop.location={{lat={},lon={}}}", 40 + p, p * 3)])
            .args(["--set", "host.vcpus=100000", "--set", "host.memory-mib=100000000", "--set", "log=warn"])
            .arg("--cluster-key")
            .arg(&key)
            .args(["--p2p-listen", &format!("/ip4/127.{}.0.{}/tcp/7946", usize::from(net) + p, h + 1)])
            .args(["--bootstrap", &format!("/ip4/127.{net}.0.1/tcp/7946"), "--state-dir"])
            .arg(&state)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(root.join(format!("a{i}.log")))?);
        agents.children.push(cmd.spawn().context("starting an agent")?);
        agents.sockets.push(state.join("agent.sock"));
    }
    Ok(agents)
}

/// Waits until every agent's API answers.
pub(crate) async fn wait_up(agents: &Agents, clients: &[Client], deadline: Instant) -> Result<()> {
    loop {
        let mut missing = None;
        for (i, c) in clients.iter().enumerate() {
            if c.raw(hyper::Method::GET, "/healthz", None).await.is_err() {
                missing.get_or_insert(i);
            }
        }
        let Some(first) = missing else { return Ok(()) };
        if Instant::now() > deadline {
            bail!("agents did not start; agent {first} said: {}", agents.log_tail(first));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn views(clients: &[Client]) -> Vec<Option<ClusterView>> {
    let mut out = vec![];
    for c in clients {
        out.push(c.get::<ClusterView>("/v1/cluster").await.ok());
    }
    out
}

async fn timed(client: &Client, spec: &VmRequest, hist: &mut Histogram<u64>) -> Result<VmStatus> {
    let t = Instant::now();
    let s: VmStatus = client.post("/v1/vms", Some(spec)).await?;
    hist.record(t.elapsed().as_micros() as u64)?;
    Ok(s)
}

/// Runs the benchmark.
pub fn run(args: Args) -> Result<()> {
    if args.pops < 2 || args.agents < args.pops || args.pops > CODES.len() {
        bail!("need at least 2 PoPs, at most {}, and at least one agent per PoP", CODES.len());
    }
    let agents = spawn_agents(args.agents, args.pops, 60, &[])?;
    let clients = agents.clients();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let report = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(120);
        wait_up(&agents, &clients, deadline).await?;
        let up = Instant::now();
        loop {
            let all = views(&clients).await;
            let done = all.iter().all(|v| {
                v.as_ref().is_some_and(|v| {
                    v.cluster.pops.len() == args.pops
                        && v.cluster.pops.iter().map(|p| p.hosts_alive as usize).sum::<usize>() == args.agents
                })
            });
            if done {
                break;
            }
            if Instant::now() > deadline {
                bail!("membership did not converge");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let convergence = up.elapsed();
        let before = views(&clients).await;
        tokio::time::sleep(Duration::from_secs(args.seconds)).await;
        let after = views(&clients).await;
        let mut rates = vec![];
        for (b, a) in before.iter().zip(&after) {
            if let (Some(b), Some(a)) = (b, a) {
                let bytes = (a.overlay.gossip_in_bytes + a.overlay.gossip_out_bytes)
                    .saturating_sub(b.overlay.gossip_in_bytes + b.overlay.gossip_out_bytes);
                rates.push(bytes as f64 / (a.overlay.uptime_s - b.overlay.uptime_s).max(0.001));
            }
        }
        let (mut local, mut forwarded) = (Histogram::<u64>::new(3)?, Histogram::<u64>::new(3)?);
        let entry = &clients[0];
        for i in 0..args.requests {
            let spec =
                VmRequest { name: format!("local-{i}"), vcpus: 1, memory_mib: 64, ..VmRequest::default() };
            let s = timed(entry, &spec, &mut local).await?;
            if s.pop != "pop0" {
                bail!("an unconstrained request left its PoP");
            }
            let mut spec =
                VmRequest { name: format!("far-{i}"), vcpus: 1, memory_mib: 64, ..VmRequest::default() };
            spec.jurisdictions = vec![CODES[1].to_owned()];
            let s = timed(entry, &spec, &mut forwarded).await?;
            if s.pop != "pop1" {
                bail!("a request for {} landed in {}", CODES[1], s.pop);
            }
        }
        anyhow::Ok(Report {
            agents: args.agents,
            pops: args.pops,
            convergence_s: convergence.as_secs_f64(),
            gossip_bytes_per_s_mean: rates.iter().sum::<f64>() / rates.len().max(1) as f64,
            gossip_bytes_per_s_max: rates.iter().copied().fold(0.0, f64::max),
            in_pop_us: (local.value_at_quantile(0.5), local.value_at_quantile(0.99)),
            forwarded_us: (forwarded.value_at_quantile(0.5), forwarded.value_at_quantile(0.99)),
        })
    })?;
    drop(agents);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{} agents in {} PoPs on loopback (test driver, cluster key)", report.agents, report.pops);
        println!("  membership converged {:.2} s after the last agent answered", report.convergence_s);
        println!(
            "  gossip per agent: {:.0} B/s mean, {:.0} B/s max (payload in + out)",
            report.gossip_bytes_per_s_mean, report.gossip_bytes_per_s_max
        );
        println!(
            "  request placed in its own PoP (baseline): p50 {} µs, p99 {} µs",
            report.in_pop_us.0, report.in_pop_us.1
        );
        println!(
            "  request forwarded to another PoP:          p50 {} µs, p99 {} µs",
            report.forwarded_us.0, report.forwarded_us.1
        );
    }
    Ok(())
}
