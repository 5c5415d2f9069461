//! `locus bench migrate`: how fast VMs move.
//!
//! - **Live migration** (root, a system libvirtd and the peer daemon of
//!   `scripts/libvirtd-peer.sh`): one guest booting from its own qcow2
//!   disk is moved back and forth through the agents (`vm migrate`), then
//!   the very same guest by `virsh migrate` directly, with the agents
//!   stopped (the baseline): total time as the caller sees it and the
//!   guest's downtime as libvirt measured it.
//! - **Rebalancing** (test driver): in a PoP of agent processes, a host is
//!   overloaded on purpose; the time from the load change to the event
//!   solved, and the event's own duration, per round.

use crate::client::{Client, Endpoint};
use anyhow::{Context, Result, bail};
use locus_core::VmRequest;
use locus_core::node::{HostStatus, VmStatus};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `locus bench migrate` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Migrations timed per way of migrating (live part) and overloads
    /// relieved (rebalancing part).
    #[arg(long, default_value_t = 6)]
    pub rounds: usize,
    /// Agents in the PoP of the rebalancing part.
    #[arg(long, default_value_t = 9)]
    pub agents: usize,
    /// Skip the live part (it needs root and the two libvirt daemons).
    #[arg(long)]
    pub no_live: bool,
    /// The repository's `scripts` directory (starts the libvirt daemons).
    #[arg(long, default_value = "scripts")]
    pub scripts: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Medians of one way of migrating.
#[derive(Debug, Clone, Serialize)]
pub struct Way {
    /// Migrations timed.
    pub count: usize,
    /// Total time as the caller sees it, ms: median and worst.
    pub total_ms: (f64, f64),
    /// Guest downtime libvirt measured, ms: median and worst.
    pub downtime_ms: (u64, u64),
}

/// What was measured.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Through the agents (`vm migrate`).
    pub agents: Option<Way>,
    /// `virsh migrate` directly, the same guest.
    pub virsh: Option<Way>,
    /// Agents in the rebalancing PoP.
    pub pop_agents: usize,
    /// From the load change to the event solved, ms: median and worst.
    pub overload_to_solved_ms: (f64, f64),
    /// The events' own durations (start to last move), ms: median and worst.
    pub event_ms: (f64, f64),
}

struct Agent {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Agent {
    fn client(&self) -> Client {
        Client::new(Endpoint::Unix(self.socket.clone()))
    }

    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(wrapper: &[&str], dir: &Path, name: &str, uri: &str, extra: &[String]) -> Result<Agent> {
    let exe = std::env::current_exe()?;
    let state = dir.join(name);
    let mut cmd = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("LOCUS_") {
            cmd.env_remove(k);
        }
    }
    let log = dir.join(format!("{name}.log"));
    cmd.args(["agent", "--libvirt-uri", uri, "--host-name", name, "--state-dir"])
        .arg(&state)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?);
    let child = cmd.spawn().with_context(|| format!("starting agent {name}"))?;
    Ok(Agent { child, socket: state.join("agent.sock"), log })
}

async fn wait<T>(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn median_max(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v.get(v.len() / 2).copied().unwrap_or(0.0), v.last().copied().unwrap_or(0.0))
}

fn script(dir: &Path, name: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(dir.join(name)).args(args).output().with_context(|| format!("running {name}"))?;
    if !out.status.success() {
        bail!("{name} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn virsh(uri: &str, args: &[&str]) -> Result<String> {
    let out = Command::new("virsh").arg("-c").arg(uri).args(args).output().context("running virsh")?;
    if !out.status.success() {
        bail!("virsh {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The downtime of the last migration into `uri`, ms, as libvirt measured it.
fn downtime(uri: &str, vm: &str) -> Result<u64> {
    let info = virsh(uri, &["domjobinfo", vm, "--completed"])?;
    info.lines()
        .find_map(|l| l.strip_prefix("Total downtime:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no downtime in the completed job's statistics")
}

fn live(args: &Args) -> Result<(Way, Way)> {
    script(&args.scripts, "libvirtd.sh", &["start"])?;
    script(&args.scripts, "libvirtd-peer.sh", &["start"])?;
    let env: std::collections::HashMap<String, String> = script(&args.scripts, "libvirtd-peer.sh", &["env"])?
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let get = |k: &str| env.get(k).cloned().with_context(|| format!("{k} missing from libvirtd-peer.sh env"));
    let (peer_uri, host_uri, shared) =
        (get("LOCUS_PEER_URI")?, get("LOCUS_HOST_URI_FROM_PEER")?, get("LOCUS_SHARED_DIR")?);
    let uris = ["qemu:///system".to_owned(), peer_uri.clone()];
    let dir = tempfile::Builder::new().prefix("locus-migrate-bench-").tempdir()?;
    let key = dir.path().join("cluster.key");
    std::fs::write(&key, crate::overlay::identity::new_cluster_key()?)?;
    let common = |ip: &str, migration_uri: &str| -> Vec<String> {
        let mut v: Vec<String> = [
            "--pop",
            "bench",
            "--p2p-listen",
            &format!("/ip4/{ip}/tcp/7946"),
            "--bootstrap",
            "/ip4/127.62.0.1/tcp/7946",
            "--set",
            "rebalance.enabled=false",
            "--set",
            "log=info,libp2p=warn",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(["--cluster-key".to_owned(), key.display().to_string()]);
        v.extend(["--set".to_owned(), format!("images.dir={:?}", format!("{shared}/bench-images"))]);
        v.extend(["--set".to_owned(), format!("migration-uri={migration_uri:?}")]);
        v
    };
    let peer_exec = args.scripts.join("libvirtd-peer.sh").display().to_string();
    let pid = std::process::id();
    let vm = format!("bench-mig-{pid}");
    // Declared before the agents, so dropped after they stop (else one would restart it).
    let _guest = Guest { name: &vm, uris: &uris };
    let names = [format!("bench-a-{pid}"), format!("bench-b-{pid}")];
    let mut agents = vec![
        spawn(&[], dir.path(), &names[0], "qemu:///system", &common("127.62.0.1", &host_uri))?,
        spawn(
            &[&peer_exec, "exec"],
            dir.path(),
            &names[1],
            "qemu:///system",
            &common("127.62.0.2", &peer_uri),
        )?,
    ];
    let image = dir.path().join("spin.raw");
    let mut bytes = vec![0u8; 1 << 20];
    bytes[..2].copy_from_slice(&[0xEB, 0xFE]);
    bytes[510] = 0x55;
    bytes[511] = 0xAA;
    std::fs::write(&image, &bytes)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let through_agents = rt.block_on(async {
        let clients: Vec<Client> = agents.iter().map(Agent::client).collect();
        for c in &clients {
            wait("the agents answer", Duration::from_secs(60), async || {
                c.get::<HostStatus>("/v1/host").await.ok()
            })
            .await?;
            let file = tokio::fs::File::open(&image).await?;
            let _: serde_json::Value =
                c.put_file("/v1/images/spin", file).await.context("importing the image")?;
        }
        wait("the agents see each other", Duration::from_secs(30), async || {
            let v: crate::api::cluster::ClusterView = clients[0].get("/v1/cluster").await.ok()?;
            (v.cluster.hosts.len() == 2).then_some(())
        })
        .await?;
        let spec = VmRequest {
            name: vm.clone(),
            vcpus: 1,
            memory_mib: 64,
            image: Some("spin".into()),
            ..VmRequest::default()
        };
        let created: VmStatus = clients[0].post("/v1/vms", Some(&spec)).await?;
        let mut at = names.iter().position(|n| *n == created.host).context("the guest's host")?;
        let (mut totals, mut downs) = (vec![], vec![]);
        for _ in 0..args.rounds {
            let to = 1 - at;
            let body = crate::api::vms::MigrateBody { to: Some(names[to].clone()) };
            let t = Instant::now();
            let moved: VmStatus = clients[at].post(&format!("/v1/vms/{vm}/migrate"), Some(&body)).await?;
            totals.push(t.elapsed().as_secs_f64() * 1000.0);
            if moved.host != names[to] {
                bail!("the guest landed on {}", moved.host);
            }
            downs.push(downtime(&uris[to], &vm)?);
            at = to;
        }
        anyhow::Ok((Way::of(totals, downs), at))
    });
    // A failed run says what the agents logged.
    let through_agents = through_agents.map_err(|e| {
        let logs: Vec<String> = agents
            .iter()
            .map(|a| {
                let text = std::fs::read_to_string(&a.log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("--- {}:\n{}", a.log.display(), tail.join("\n"))
            })
            .collect();
        e.context(format!("the agents' logs end:\n{}", logs.join("\n")))
    })?;
    let (agents_way, mut at) = through_agents;
    // The baseline: the same guest, by virsh alone, the agents stopped.
    for a in &mut agents {
        a.stop();
    }
    let disk = virsh(&uris[at], &["domblklist", &vm, "--details"])?
        .lines()
        .find_map(|l| l.split_whitespace().nth(3).filter(|p| p.ends_with(".qcow2")).map(str::to_owned))
        .context("the guest's disk")?;
    let size = {
        let info = virsh(&uris[at], &["domblkinfo", &vm, "vda"])?;
        info.lines()
            .find_map(|l| l.strip_prefix("Capacity:"))
            .map(|v| v.trim().to_owned())
            .context("disk size")?
    };
    let base = format!("{shared}/bench-images/blobs/{}", sha256_hex(&bytes));
    let (mut totals, mut downs) = (vec![], vec![]);
    for _ in 0..args.rounds {
        let to = 1 - at;
        // What the destination agent would prepare: the guest's own disk on the base.
        let mut create =
            vec!["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", &base, &disk, &size];
        let wrapped: Vec<&str>;
        if to == 1 {
            wrapped = [&[peer_exec.as_str(), "exec"][..], &create[..]].concat();
            create = wrapped;
        }
        let status = Command::new(create[0]).args(&create[1..]).status()?;
        if !status.success() {
            bail!("creating the destination disk failed");
        }
        let dest = if to == 1 { &peer_uri } else { &host_uri };
        let t = Instant::now();
        virsh(
            &uris[at],
            &[
                "migrate",
                "--live",
                "--p2p",
                "--persistent",
                "--undefinesource",
                "--copy-storage-inc",
                "--auto-converge",
                &vm,
                dest,
            ],
        )?;
        totals.push(t.elapsed().as_secs_f64() * 1000.0);
        downs.push(downtime(&uris[to], &vm)?);
        // The source's copy of the disk goes, as the agent removes it.
        if at == 1 {
            let _ = Command::new(&peer_exec).args(["exec", "rm", "-f", &disk]).status();
        } else {
            let _ = std::fs::remove_file(&disk);
        }
        at = to;
    }
    Ok((agents_way, Way::of(totals, downs)))
}

/// The bench's guest, removed from both daemons however the run ends: one
/// left spinning after a failure slows whatever runs next on the machine.
struct Guest<'a> {
    name: &'a str,
    uris: &'a [String; 2],
}

impl Drop for Guest<'_> {
    fn drop(&mut self) {
        for uri in self.uris {
            let _ = virsh(uri, &["destroy", self.name]);
            let _ = virsh(uri, &["undefine", self.name]);
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

impl Way {
    fn of(totals: Vec<f64>, mut downs: Vec<u64>) -> Way {
        downs.sort_unstable();
        let count = totals.len();
        Way {
            count,
            total_ms: median_max(totals),
            downtime_ms: (
                downs.get(downs.len() / 2).copied().unwrap_or(0),
                downs.last().copied().unwrap_or(0),
            ),
        }
    }
}

/// One PoP of agents on the test driver: host 0 is overloaded, again and again.
fn rebalancing(args: &Args) -> Result<((f64, f64), (f64, f64))> {
    let dir = tempfile::Builder::new().prefix("locus-rebalance-bench-").tempdir()?;
    let key = dir.path().join("cluster.key");
    std::fs::write(&key, crate::overlay::identity::new_cluster_key()?)?;
    let mut agents = vec![];
    for h in 0..args.agents {
        let extra: Vec<String> = [
            "--pop",
            "bench",
            "--set",
            "pop.jurisdiction=FR",
            "--p2p-listen",
            &format!("/ip4/127.63.0.{}/tcp/7946", h + 1),
            "--bootstrap",
            "/ip4/127.63.0.1/tcp/7946",
            "--set",
            "sample-interval-ms=250",
            "--set",
            "load.sustain-samples=2",
            "--set",
            "rebalance.consolidate-interval-ms=0",
            "--set",
            "log=info",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(["--cluster-key".to_owned(), key.display().to_string()])
        .collect();
        agents.push(spawn(&[], dir.path(), &format!("h{h}"), "test:///default", &extra)?);
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let clients: Vec<Client> = agents.iter().map(Agent::client).collect();
        for c in &clients {
            wait("the agents answer", Duration::from_secs(60), async || {
                c.get::<HostStatus>("/v1/host").await.ok()
            })
            .await?;
        }
        wait("the PoP converges", Duration::from_secs(60), async || {
            for c in &clients {
                let v: crate::api::cluster::ClusterView = c.get("/v1/cluster").await.ok()?;
                if v.cluster.hosts.len() != args.agents {
                    return None;
                }
            }
            Some(())
        })
        .await?;
        let (mut to_solved, mut events) = (vec![], vec![]);
        for round in 0..args.rounds {
            let names: Vec<String> = (0..5).map(|k| format!("r{round}-{k}")).collect();
            for name in &names {
                let spec = VmRequest {
                    name: name.clone(),
                    vcpus: 4,
                    memory_mib: 256,
                    load_cpu_milli: Some(0),
                    ..VmRequest::default()
                };
                let s: VmStatus = clients[0].post("/v1/vms", Some(&spec)).await?;
                if s.host != "h0" {
                    let body = crate::api::vms::MigrateBody { to: Some("h0".into()) };
                    let _: VmStatus =
                        clients[0].post(&format!("/v1/vms/{name}/migrate"), Some(&body)).await?;
                }
            }
            let before = clients[0].get::<HostStatus>("/v1/host").await?.rebalance.recent.len();
            let t = Instant::now();
            for name in &names {
                let body = serde_json::to_vec(&crate::api::vms::Load { cpu_milli: 3400 })?;
                let _: VmStatus = clients[0]
                    .send(
                        hyper::Method::PUT,
                        &format!("/v1/vms/{name}/load"),
                        Some(("application/json", body)),
                    )
                    .await?;
            }
            let report = wait("the overload is solved", Duration::from_secs(60), async || {
                let h: HostStatus = clients[0].get("/v1/host").await.ok()?;
                h.rebalance.recent.get(before).filter(|r| r.solved).cloned()
            })
            .await?;
            to_solved.push(t.elapsed().as_secs_f64() * 1000.0);
            events.push(report.duration_ms as f64);
            // Clean up: every VM of the round, wherever it is now.
            for c in &clients {
                let vms: Vec<VmStatus> = c.get("/v1/vms").await?;
                for v in vms.iter().filter(|v| v.name.starts_with(&format!("r{round}-"))) {
                    let _: serde_json::Value = c.delete(&format!("/v1/vms/{}", v.name)).await?;
                }
            }
        }
        anyhow::Ok((median_max(to_solved), median_max(events)))
    })
    .with_context(|| {
        format!(
            "see the agents' logs in {}",
            agents[0].log.parent().map(Path::display).map(|d| d.to_string()).unwrap_or_default()
        )
    })
}

/// Runs the benchmark.
pub fn run(args: Args) -> Result<()> {
    if args.agents < 2 || args.rounds == 0 {
        bail!("need at least 2 agents and 1 round");
    }
    let live = if args.no_live { None } else { Some(live(&args)?) };
    let (to_solved, event) = rebalancing(&args)?;
    let report = Report {
        agents: live.as_ref().map(|l| l.0.clone()),
        virsh: live.map(|l| l.1),
        pop_agents: args.agents,
        overload_to_solved_ms: to_solved,
        event_ms: event,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    if let (Some(a), Some(v)) = (&report.agents, &report.virsh) {
        println!(
            "live migration of one 64 MiB guest with a qcow2 disk between two libvirt daemons ({} each way):",
            a.count
        );
        println!(
            "  through the agents (vm migrate): total median {:.0} ms (max {:.0}), downtime median {} ms (max {})",
            a.total_ms.0, a.total_ms.1, a.downtime_ms.0, a.downtime_ms.1
        );
        println!(
            "  virsh migrate directly (baseline): total median {:.0} ms (max {:.0}), downtime median {} ms (max {})",
            v.total_ms.0, v.total_ms.1, v.downtime_ms.0, v.downtime_ms.1
        );
    }
    println!("an overloaded host in a PoP of {} agents (test driver, cold moves):", report.pop_agents);
    println!(
        "  load raised to overload solved: median {:.0} ms (max {:.0}); the event itself: median {:.0} ms (max {:.0})",
        report.overload_to_solved_ms.0, report.overload_to_solved_ms.1, report.event_ms.0, report.event_ms.1
    );
    Ok(())
}
