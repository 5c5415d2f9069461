//! `locus bench images`: one image to many agents, each agent's uploads
//! capped (a WAN link's share), fetched two ways in the same run: every
//! agent swarming (chunks from every holder, the fetching agents serving
//! each other), against every agent fetching from the importing agent
//! alone (the baseline). Time to the last agent and bytes each agent
//! uploaded.

use crate::client::Client;
use crate::clusterbench::{spawn_agents, wait_up};
use crate::images::ImageInfo;
use crate::images::transfer::{Stage, Transfers};
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::time::{Duration, Instant};

/// `locus bench images` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Agents that fetch the image (one more imports it).
    #[arg(long, default_value_t = 16)]
    pub agents: usize,
    /// Size of the image, MiB.
    #[arg(long, default_value_t = 1024)]
    pub size_mib: u64,
    /// Every agent's upload limit, Mbit/s.
    #[arg(long, default_value_t = 100)]
    pub upload_mbit: u64,
    /// Skip the baseline (every agent from the importing one).
    #[arg(long)]
    pub no_baseline: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// What was measured.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Agents fetching.
    pub agents: usize,
    /// Image bytes.
    pub size_bytes: u64,
    /// Upload limit per agent, Mbit/s.
    pub upload_mbit: u64,
    /// Every agent fetching from every holder.
    pub swarm: Round,
    /// Every agent fetching from the importing agent alone.
    pub single_source: Option<Round>,
}

/// One way of fetching.
#[derive(Debug, Serialize)]
pub struct Round {
    /// From the fetches' start to the last agent holding the image, s.
    pub last_s: f64,
    /// The median agent, s.
    pub p50_s: f64,
    /// The first agent, s.
    pub first_s: f64,
    /// Bytes the importing agent uploaded.
    pub source_uploaded: u64,
    /// Bytes uploaded by each fetching agent, largest.
    pub fetcher_uploaded_max: u64,
    /// Bytes uploaded by each fetching agent, mean.
    pub fetcher_uploaded_mean: u64,
}

/// Runs the benchmark.
pub fn run(args: Args) -> Result<()> {
    if args.agents == 0 || args.size_mib == 0 {
        bail!("need at least 1 agent and 1 MiB");
    }
    let extra = vec![
        "--set".to_owned(),
        format!("images.upload-limit-mbit={}", args.upload_mbit),
        "--set".to_owned(),
        "log=warn,locus::images=info".to_owned(),
    ];
    let agents = spawn_agents(args.agents + 1, 1, 160, &extra)?;
    let clients = agents.clients();
    let image = agents.dir().join("bench.raw");
    write_image(&image, args.size_mib << 20)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let report = rt.block_on(async {
        wait_up(&agents, &clients, Instant::now() + Duration::from_secs(60)).await?;
        let file = tokio::fs::File::open(&image).await?;
        let info: ImageInfo = clients[0].put_file("/v1/images/bench", file).await.context("importing")?;
        std::fs::remove_file(&image)?;
        let source: serde_json::Value = clients[0].get("/v1/cluster").await?;
        let source = source["overlay"]["peer"].as_str().context("the source's peer id")?.to_owned();
        // The agents are joining and the DHT spreads the provider record.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let swarm = round(&clients, &info.hash, None).await?;
        let single = if args.no_baseline {
            None
        } else {
            for c in &clients[1..] {
                let _: ImageInfo = c.delete(&format!("/v1/images/{}", info.hash)).await?;
            }
            Some(round(&clients, &info.hash, Some(&source)).await?)
        };
        anyhow::Ok(Report {
            agents: args.agents,
            size_bytes: info.size_bytes,
            upload_mbit: args.upload_mbit,
            swarm,
            single_source: single,
        })
    })?;
    drop(agents);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "one {} MiB image to {} agents on loopback, each agent's uploads capped at {} Mbit/s",
        report.size_bytes >> 20,
        report.agents,
        report.upload_mbit
    );
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    let show = |what: &str, r: &Round| {
        println!(
            "  {what}: last agent {:.1} s, median {:.1} s, first {:.1} s; uploaded by the source {:.0} MiB, by each other agent {:.0} MiB mean, {:.0} MiB max",
            r.last_s,
            r.p50_s,
            r.first_s,
            mib(r.source_uploaded),
            mib(r.fetcher_uploaded_mean),
            mib(r.fetcher_uploaded_max)
        );
    };
    show("swarming", &report.swarm);
    if let Some(single) = &report.single_source {
        show("baseline, all from the importing agent", single);
        println!("  swarming is {:.1}× faster to the last agent", single.last_s / report.swarm.last_s);
    }
    Ok(())
}

/// Bytes no compression or deduplication shortens.
fn write_image(path: &std::path::Path, bytes: u64) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut rng = fastrand::Rng::with_seed(0x10c05);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        rng.fill(&mut buf);
        let n = left.min(buf.len() as u64) as usize;
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    out.flush()?;
    Ok(())
}

/// Every agent but the first fetches `hash` (from `from` alone, when
/// given) at once; times each to its end.
async fn round(clients: &[Client], hash: &str, from: Option<&str>) -> Result<Round> {
    let before = uploaded(clients).await?;
    let started = Instant::now();
    for c in &clients[1..] {
        let body = serde_json::json!({ "image": hash, "from": from });
        let _: serde_json::Value = c.post("/v1/transfers", Some(&body)).await?;
    }
    let mut done: Vec<Option<f64>> = vec![None; clients.len() - 1];
    let deadline = started + Duration::from_secs(4 * 3600);
    while done.iter().any(Option::is_none) {
        if Instant::now() > deadline {
            bail!("the fetches did not end within 4 hours");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        for (i, c) in clients[1..].iter().enumerate() {
            if done[i].is_some() {
                continue;
            }
            let t: Transfers = c.get("/v1/transfers").await?;
            match t.fetches.iter().find(|f| f.hash == hash).map(|f| (f.stage, f.error.clone())) {
                Some((Stage::Done, _)) => done[i] = Some(started.elapsed().as_secs_f64()),
                Some((Stage::Failed, e)) => bail!("agent {} failed: {}", i + 1, e.unwrap_or_default()),
                _ => {}
            }
        }
    }
    let after = uploaded(clients).await?;
    let up: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let mut times: Vec<f64> = done.into_iter().flatten().collect();
    times.sort_by(f64::total_cmp);
    let others = &up[1..];
    Ok(Round {
        last_s: times.last().copied().unwrap_or_default(),
        p50_s: times[times.len() / 2],
        first_s: times[0],
        source_uploaded: up[0],
        fetcher_uploaded_max: others.iter().copied().max().unwrap_or(0),
        fetcher_uploaded_mean: others.iter().sum::<u64>() / others.len() as u64,
    })
}

async fn uploaded(clients: &[Client]) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    for c in clients {
        let t: Transfers = c.get("/v1/transfers").await?;
        out.push(t.uploaded_bytes);
    }
    Ok(out)
}
