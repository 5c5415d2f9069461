//! `locus bench rollout`: how long a signed push takes to be active on
//! every agent of a scope, from the moment it enters one agent's API to
//! each agent's own activation (verified, fetched by hash, verified and
//! compiled, activated, stored), against loading the same bundle on one
//! agent through its API (the baseline: no overlay, no fetch). Pushes of
//! components the agents never compiled, and pushes that change only the
//! configuration of one they run (no compile), are timed apart.

use crate::client::Client;
use crate::clusterbench::{spawn_agents, wait_up};
use crate::policies::{PolicyVersion, SlotName};
use crate::rollout::RolloutStatus;
use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// `locus bench rollout` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Agents in the pushed-to PoP.
    #[arg(long, default_value_t = 20)]
    pub agents: usize,
    /// Configuration-only pushes timed.
    #[arg(long, default_value_t = 5)]
    pub pushes: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// What was measured.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Agents in the scope.
    pub agents: usize,
    /// Bundle sizes, bytes (what each agent but the entry fetches), largest.
    pub bundle_bytes: u64,
    /// Bytes fetched over the overlay per push, all agents, largest.
    pub fetched_bytes_per_push: u64,
    /// Components the agents never compiled, pushed one after another.
    pub new_components: Timing,
    /// The running component with another configuration.
    pub config_changes: Timing,
    /// Baseline: the new components' bundles loaded on one agent's API, p50, ms.
    pub local_load_p50_ms: f64,
}

/// Push entered to active.
#[derive(Debug, Serialize)]
pub struct Timing {
    /// Pushes timed.
    pub pushes: usize,
    /// On an agent, over every agent and push: p50, ms.
    pub p50_ms: f64,
    /// The slowest agent of any push, ms.
    pub max_ms: f64,
    /// On the last agent of a push, median over pushes, ms.
    pub all_p50_ms: f64,
}

/// The placement built-ins an agent does not start with.
const FRESH: [&str; 4] = ["first-fit", "spread", "nearest", "green"];

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Runs the benchmark.
pub fn run(args: Args) -> Result<()> {
    if args.agents < 2 || args.pushes == 0 {
        bail!("need at least 2 agents and 1 push");
    }
    let dir = tempfile::Builder::new().prefix("locus-rollout-bench-").tempdir()?;
    let key_path = dir.path().join("operator.key");
    let (secret, public) = crate::bundle::keygen()?;
    std::fs::write(&key_path, secret)?;
    let key = crate::bundle::read_key(&key_path)?;
    let sign = |policy: &str, round: String| {
        let component = locus_builtin::builtin(policy).context("a built-in policy")?;
        crate::bundle::sign(
            component,
            crate::bundle::SignRequest {
                name: policy.to_owned(),
                version: round.clone(),
                slot: SlotName::Placement,
                config: [("round".to_owned(), round)].into(),
                valid_for_s: 3600,
            },
            &key,
        )
    };
    let extra = vec!["--set".to_owned(), format!("policies.trusted-keys=[\"{public}\"]")];
    let agents = spawn_agents(args.agents, 1, 150, &extra)?;
    let clients = agents.clients();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let report = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(120);
        wait_up(&agents, &clients, deadline).await?;
        loop {
            let mut heard = usize::MAX;
            for c in &clients {
                let s: RolloutStatus = c.get("/v1/rollouts").await?;
                heard = heard.min(s.agents.len());
            }
            if heard == args.agents {
                break;
            }
            if Instant::now() > deadline {
                bail!("the agents did not hear each other's policy status ({heard} of {})", args.agents);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // Agents that just started are still joining (dials, DHT walks,
        // first samples): time the pushes on a settled cluster.
        tokio::time::sleep(Duration::from_secs(5)).await;
        // The baseline: each new component loaded through the entry agent's
        // API alone (which then holds it compiled, as it would after
        // checking a push).
        let mut local = Histogram::<u64>::new(3)?;
        for policy in FRESH {
            let bundle = sign(policy, "local".into())?;
            let t = Instant::now();
            let _: PolicyVersion =
                clients[0].put_bytes("/v1/policies/placement", "application/octet-stream", bundle).await?;
            local.record(t.elapsed().as_micros() as u64)?;
        }
        let mut size = 0;
        let mut fresh = Rounds::default();
        for (i, policy) in FRESH.iter().enumerate() {
            let bundle = sign(policy, format!("push-{i}"))?;
            size = size.max(bundle.len() as u64);
            fresh.time(&clients, bundle).await?;
        }
        let mut configs = Rounds::default();
        for i in 0..args.pushes {
            let bundle = sign(FRESH[FRESH.len() - 1], format!("config-{i}"))?;
            size = size.max(bundle.len() as u64);
            configs.time(&clients, bundle).await?;
        }
        anyhow::Ok(Report {
            agents: args.agents,
            bundle_bytes: size,
            fetched_bytes_per_push: size * (args.agents as u64 - 1),
            new_components: fresh.timing(),
            config_changes: configs.timing(),
            local_load_p50_ms: local.value_at_quantile(0.5) as f64 / 1000.0,
        })
    })?;
    drop(agents);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "signed pushes to a PoP of {} agents on loopback (test driver, cluster key), bundles up to {} bytes",
            report.agents, report.bundle_bytes
        );
        for (what, t) in [
            ("new component (every agent compiles)", &report.new_components),
            ("configuration change (no compile)", &report.config_changes),
        ] {
            println!(
                "  {what}, {} pushes: entered → active p50 {:.0} ms, max {:.0} ms; on every agent p50 {:.0} ms",
                t.pushes, t.p50_ms, t.max_ms, t.all_p50_ms
            );
        }
        println!("  fetched over the overlay per push: {} bytes", report.fetched_bytes_per_push);
        println!(
            "  baseline, a new component loaded on one agent's API: p50 {:.0} ms",
            report.local_load_p50_ms
        );
    }
    Ok(())
}

/// Pushes timed through the first agent.
#[derive(Default)]
struct Rounds {
    /// Every agent's time of every push, ms.
    each: Vec<u64>,
    /// The last agent's time of each push, ms.
    all: Vec<u64>,
}

impl Rounds {
    /// Pushes `bundle` to the agents' PoP and waits until every agent
    /// reports it active, keeping each agent's own activation time.
    async fn time(&mut self, clients: &[Client], bundle: Vec<u8>) -> Result<()> {
        let entered = now_ms();
        let pushed: crate::rollout::PushView = clients[0]
            .send(
                hyper::Method::POST,
                "/v1/rollouts?scope=pop:pop0",
                Some(("application/octet-stream", bundle)),
            )
            .await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut since = vec![None; clients.len()];
        while since.iter().any(Option::is_none) {
            if Instant::now() > deadline {
                bail!(
                    "push {} is active on {} of {} agents",
                    pushed.id,
                    since.iter().flatten().count(),
                    clients.len()
                );
            }
            for (a, c) in clients.iter().enumerate() {
                if since[a].is_some() {
                    continue;
                }
                let s: RolloutStatus = c.get("/v1/rollouts?scope=pop:pop0").await?;
                let mine = s.agents.first().context("an agent lists itself")?;
                since[a] = mine
                    .slots
                    .iter()
                    .find(|s| s.slot == SlotName::Placement && s.push.as_deref() == Some(pushed.id.as_str()))
                    .and_then(|s| s.since_ms);
            }
            // The agents time their own activation: polling slowly keeps
            // the measurement from loading the machine.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let times: Vec<u64> = since.iter().flatten().map(|&t| t.saturating_sub(entered)).collect();
        tracing::debug!(push = %pushed.id, ?times, "activation after the push entered, ms, per agent");
        self.all.push(times.iter().copied().max().unwrap_or(0));
        self.each.extend(times);
        Ok(())
    }

    fn timing(&self) -> Timing {
        let median = |v: &[u64]| {
            let mut v = v.to_vec();
            v.sort_unstable();
            v.get(v.len() / 2).copied().unwrap_or(0) as f64
        };
        Timing {
            pushes: self.all.len(),
            p50_ms: median(&self.each),
            max_ms: self.each.iter().copied().max().unwrap_or(0) as f64,
            all_p50_ms: median(&self.all),
        }
    }
}
