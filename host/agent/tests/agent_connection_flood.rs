//! Two `locus agent` processes; thousands of idle and half-open
//! connections on the first one's TCP API. Its unix socket, its API for a
//! client with the token, and the overlay between the two keep answering,
//! and the flood's connections are closed by the agent.

mod common;

use common::Cluster;
use locus::client::{Client, Endpoint};
use locus_core::cluster::Liveness;
use locus_core::node::VmStatus;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const TOKEN: &str = "flood-test-token-of-enough-length";

fn p99(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[((samples.len() as f64 * 0.99).ceil() as usize).saturating_sub(1)]
}

/// Times `GET /v1/vms` `n` times, ms; every one must succeed.
async fn latencies(client: &Client, n: usize) -> Vec<f64> {
    let mut out = Vec::new();
    for _ in 0..n {
        let start = Instant::now();
        let _: Vec<VmStatus> = client.get("/v1/vms").await.expect("list answered");
        out.push(start.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    out
}

/// As many connections as this process may open, up to `want`.
fn flood_size(want: usize) -> usize {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let _ = setrlimit(Resource::Nofile, Rlimit { current: limit.maximum, maximum: limit.maximum });
    let open = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    want.min(open.saturating_sub(256) as usize)
}

#[test]
fn a_connection_flood_on_the_tcp_api_leaves_every_other_door_open_two_agent_processes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).expect("token");
    let api = "127.94.0.1:7950";
    let token = token_file.display().to_string();
    let cluster = Cluster::start_with(
        94,
        &[("paris", "FR", 48.86, 2.35, 2)],
        |_, _| 0,
        |i| {
            if i > 0 {
                return vec![];
            }
            [
                "--listen",
                api,
                "--token-file",
                &token,
                "--set",
                "api.max-connections=64",
                "--set",
                "api.header-timeout-ms=2000",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect()
        },
    );
    let (a, b) = (&cluster.agents[0], &cluster.agents[1]);
    let both_alive = || {
        let view: locus::api::cluster::ClusterView = b.json(&["cluster", "status"]);
        view.cluster.hosts.iter().filter(|h| h.liveness == Liveness::Alive).count() == 2
    };
    common::wait_until(Duration::from_secs(20), "the two agents see each other", both_alive);
    let unix = a.client();
    let tcp = Client::new(Endpoint::Tcp { addr: api.into(), token: TOKEN.into() });
    let rt = common::rt();
    let (unix_idle, tcp_idle) =
        rt.block_on(async { (latencies(&unix, 20).await, latencies(&tcp, 20).await) });

    // The flood: half the connections send nothing, half stop mid-header.
    let n = flood_size(3000);
    let mut flood = Vec::new();
    for i in 0..n {
        let Ok(mut s) = TcpStream::connect_timeout(&api.parse().expect("addr"), Duration::from_secs(2))
        else {
            continue;
        };
        if i % 2 == 1 {
            let _ = s.write_all(b"GET /v1/vms HTTP/1.1\r\nHost: flood\r\n");
        }
        flood.push(s);
    }
    assert!(flood.len() > n / 2, "the flood opened {} of {n} connections", flood.len());
    let (unix_flood, tcp_flood) =
        rt.block_on(async { (latencies(&unix, 20).await, latencies(&tcp, 20).await) });
    assert!(both_alive(), "the overlay kept both agents alive to each other");
    eprintln!(
        "{} flood connections; GET /v1/vms p99 unix {:.1} -> {:.1} ms, TCP with token {:.1} -> {:.1} ms",
        flood.len(),
        p99(unix_idle.clone()),
        p99(unix_flood.clone()),
        p99(tcp_idle.clone()),
        p99(tcp_flood.clone())
    );
    // Generous bounds: before, the flood took every file descriptor and
    // nothing answered at all.
    assert!(p99(unix_flood) < p99(unix_idle) + 200.0);
    assert!(p99(tcp_flood) < p99(tcp_idle) + 200.0);

    // Every flood connection is closed by the agent: made room for, or
    // timed out waiting for headers.
    for s in &flood {
        s.set_read_timeout(Some(Duration::from_millis(20))).expect("timeout");
    }
    let closed = |s: &mut TcpStream| match s.read(&mut [0u8; 512]) {
        Ok(0) => true,
        Ok(_) => false, // an answer (a timeout's 408); the close follows
        Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut open: Vec<TcpStream> = flood;
    while !open.is_empty() && Instant::now() < deadline {
        open.retain_mut(|s| !closed(s));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(open.is_empty(), "{} flood connections still open after 60 s", open.len());
}
