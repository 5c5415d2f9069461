//! `locus host status|drain|resume`: the host a running agent manages.

use super::{Connection, clean, clean_table, print_json, runtime};
use anyhow::{Result, bail};
use clap::Subcommand;
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use locus_core::node::{DrainStatus, HostStatus};
use std::time::Duration;

/// `locus host …`
#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Capacity, allocation, load, VMs, moves and the hypervisor connection.
    Status,
    /// Take no new VMs and move every VM to the PoP's other hosts, one at
    /// a time; shows progress until done. Run again to retry the VMs that
    /// could not move.
    Drain {
        /// Return at once instead of following the drain.
        #[arg(long)]
        no_wait: bool,
    },
    /// Take VMs again (ends a drain).
    Resume,
}

/// Runs a `locus host` verb.
pub fn run(conn: &Connection, cmd: HostCommand) -> Result<()> {
    let client = conn.client()?;
    runtime()?.block_on(async {
        let host: HostStatus = match cmd {
            HostCommand::Status => client.get("/v1/host").await?,
            HostCommand::Resume => client.post::<(), _>("/v1/host/resume", None).await?,
            HostCommand::Drain { no_wait } => {
                let mut host: HostStatus = client.post::<(), _>("/v1/host/drain", None).await?;
                if !no_wait {
                    host = follow(&client, host, conn.json).await?;
                }
                host
            }
        };
        if conn.json { print_json(&host) } else { print_host(&host) }
    })
}

/// Prints the drain's progress as it changes, until nothing is left to
/// move or only VMs that could not move are left.
async fn follow(client: &crate::client::Client, mut host: HostStatus, quiet: bool) -> Result<HostStatus> {
    let mut last = String::new();
    loop {
        let Some(drain) = &host.drain else { bail!("the drain was ended (host resume)") };
        let line = drain_text(drain);
        if !quiet && line != last {
            eprintln!("{}", clean(&line));
            last = line;
        }
        let stuck = drain.remaining as usize <= drain.failed.len() && host.moves.is_empty();
        if drain.remaining == 0 || stuck {
            return Ok(host);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        host = client.get("/v1/host").await?;
    }
}

fn rebalance_text(r: &locus_core::rebalance::RebalanceStatus) -> String {
    let mut parts = Vec::new();
    if let Some(l) = &r.leading {
        parts.push(format!("leading {l}"));
    }
    if let Some(e) = &r.member_of {
        parts.push(format!("in the partition of event {e}"));
    }
    if let Some(last) = r.recent.last() {
        let how = if last.solved { "solved" } else { "unsolved" };
        parts.push(format!(
            "last event {} {how} in {} ms over [{}]: {}",
            last.event,
            last.duration_ms,
            last.partition.join(", "),
            last.outcome
        ));
    }
    if parts.is_empty() { "idle".into() } else { parts.join("; ") }
}

fn drain_text(d: &DrainStatus) -> String {
    let mut text = format!("draining: {} of {} moved, {} left", d.moved, d.total, d.remaining);
    for (vm, why) in &d.failed {
        text.push_str(&format!("; {vm} could not move: {why}"));
    }
    text
}

fn print_host(host: &HostStatus) -> Result<()> {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    let hv = &host.hypervisor;
    let hv_line = match (&hv.inventory, &hv.reason) {
        (Some(i), _) => format!("{} — {} ({} CPUs, {} MiB)", hv.state, i.hypervisor, i.cpus, i.memory_mib),
        (None, Some(r)) => format!("{} — {}", hv.state, clean(r)),
        (None, None) => hv.state.clone(),
    };
    let size =
        |s: locus_core::node::Size| format!("{} vCPU, {} MiB, {} GiB", s.vcpus, s.memory_mib, s.disk_gib);
    for (k, v) in [
        ("host", host.name.clone()),
        ("pop", format!("{} ({})", host.pop, host.jurisdiction)),
        ("hypervisor", hv_line),
        ("capacity", size(host.capacity)),
        ("allocated", size(host.allocated)),
        ("free", size(host.free)),
        (
            "load",
            format!(
                "{:.2} of {:.2} CPUs, {} of {} MiB — {} ({} sample(s) in a row)",
                f64::from(host.load_cpu_milli) / 1000.0,
                f64::from(host.cpu_milli) / 1000.0,
                host.load_memory_mib,
                host.capacity.memory_mib,
                serde_json::to_value(host.load_state)?.as_str().unwrap_or_default(),
                host.load_streak
            ),
        ),
        (
            "vms",
            format!(
                "{} ({} running, {} stopped, {} other)",
                host.vms.total, host.vms.running, host.vms.stopped, host.vms.other
            ),
        ),
        ("other domains", format!("{} (not Locus's, left alone)", host.other_domains)),
        ("power", format!("{} — {} W", host.power, host.watts)),
        ("drain", host.drain.as_ref().map(drain_text).unwrap_or_default()),
        ("moves", clean(&host.moves.join("; "))),
        ("rebalancing", clean(&rebalance_text(&host.rebalance))),
    ] {
        t.add_row(vec![k.to_owned(), v]);
    }
    println!("{}", clean_table(&t));
    Ok(())
}
