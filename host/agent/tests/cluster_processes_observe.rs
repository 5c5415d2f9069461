//! Seeing the cluster, through three real agent processes of one PoP:
//! `vm why` from any agent for a VM placed by the WebAssembly policy, one
//! placed by the built-in fallback (the third agent's policy panics), and
//! one moved by a rebalancing event; `/metrics` behind the token on TCP,
//! parsed as Prometheus text while VMs are created and other clients
//! scrape at once, with the counts those decisions left; metrics turned
//! off; decision records kept across a restart.

mod common;

use common::{Agent, Cluster, PopSpec, wait_until};
use locus::client::{Client, Endpoint};
use locus::records::Why;
use locus_core::VmRequest;
use locus_core::node::VmStatus;
use locus_core::record::{Decider, Kind};
use std::collections::HashSet;
use std::time::Duration;

const TOKEN: &str = "observe-test-token-0123456789";
const API: &str = "127.132.0.1:7951";

fn vm(name: &str, vcpus: u32) -> VmRequest {
    toml::from_str(&format!("name = '{name}'\nvcpus = {vcpus}\nmemory-mib = 256\nload-cpu-milli = 0"))
        .expect("request")
}

fn create(agent: &Agent, spec: &VmRequest) -> VmStatus {
    common::rt().block_on(agent.client().post("/v1/vms", Some(spec))).expect("create")
}

fn why(agent: &Agent, name: &str) -> Why {
    agent.json(&["vm", "why", name])
}

/// `GET /metrics` through `client`: the status and the body.
fn scrape(client: &Client) -> (u16, String) {
    let (status, body) =
        common::rt().block_on(client.raw(hyper::Method::GET, "/metrics", None)).expect("GET /metrics");
    (status.as_u16(), String::from_utf8_lossy(&body).into_owned())
}

/// The value of the sample `name` whose labels include every pair of `labels`, summed.
fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(ref h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
            prometheus_parse::Value::Summary(_) => 0.0,
        })
        .sum()
}

/// Parses a scrape, and checks the naming rules: OpenMetrics ends with
/// `# EOF`, every family is the agent's or libp2p's, counters end in
/// `_total`, and no label value is a VM's name.
fn parse(text: &str, vms: &HashSet<String>) -> prometheus_parse::Scrape {
    assert!(text.trim_end().ends_with("# EOF"), "OpenMetrics text ends with # EOF");
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text");
    assert!(!scrape.samples.is_empty());
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut words = line.split_whitespace().skip(2);
        let (name, kind) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        assert!(name.starts_with("locus_") || name.starts_with("libp2p_"), "family {name}");
        if kind == "counter" {
            let bare = text.lines().filter(|l| !l.starts_with('#')).find(|l| {
                let sample = l.split(['{', ' ']).next().unwrap_or("");
                sample == name
            });
            assert!(bare.is_none(), "counter {name} has a sample without _total: {bare:?}");
        }
    }
    for s in &scrape.samples {
        for (k, v) in s.labels.iter() {
            assert!(!vms.contains(v), "{}: label {k} carries a VM name ({v})", s.metric);
        }
    }
    scrape
}

#[test]
fn processes_vm_why_from_any_agent_and_metrics_behind_the_token_parse_while_busy() {
    let pops: [PopSpec; 1] = [("paris", "FR", 48.86, 2.35, 3)];
    let keydir = tempfile::tempdir().expect("tempdir");
    let token_file = keydir.path().join("token");
    std::fs::write(&token_file, TOKEN).expect("token");
    let panics = keydir.path().join("panics.wasm");
    std::fs::write(&panics, locus_builtin::hostile::PANIC).expect("component");
    let common_args = ["--set", "load.sustain-samples=1", "--set", "rebalance.consolidate-interval-ms=0"];
    let mut cluster = Cluster::start_with(
        132,
        &pops,
        |_, _| 0,
        |i| {
            let mut args: Vec<String> = common_args.iter().map(|s| s.to_string()).collect();
            match i {
                0 => args.extend(
                    ["--listen", API, "--token-file"]
                        .map(String::from)
                        .into_iter()
                        .chain([token_file.display().to_string()]),
                ),
                1 => args.extend(["--set", "metrics.enabled=false"].map(String::from)),
                _ => args.extend([
                    "--set".into(),
                    format!("policies.placement={:?}", panics.display().to_string()),
                ]),
            }
            args
        },
    );
    let hosts: Vec<String> = cluster.agents.iter().map(|a| a.host.clone()).collect();
    let host = |i: usize| hosts[i].clone();
    wait_until(Duration::from_secs(30), "each agent sees the three alive", || {
        cluster.agents.iter().all(|a| {
            let v: locus::api::cluster::ClusterView = a.json(&["cluster", "status"]);
            v.cluster.hosts.iter().filter(|h| h.liveness == locus_core::cluster::Liveness::Alive).count() == 3
        })
    });
    let tcp = Client::new(Endpoint::Tcp { addr: API.into(), token: TOKEN.into() });
    let stranger = Client::new(Endpoint::Tcp { addr: API.into(), token: "wrong".into() });
    assert_eq!(scrape(&stranger).0, 401, "/metrics is behind the token on TCP");

    // Busy VMs that overload host 0, placed by agent 0's WebAssembly
    // policy, while four clients scrape it at once.
    let mut names = HashSet::new();
    let scrapers: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let tcp = Client::new(Endpoint::Tcp { addr: API.into(), token: TOKEN.into() });
                (0..40)
                    .map(|_| scrape(&tcp))
                    .filter(|(status, text)| *status == 200 && text.contains("# EOF"))
                    .count()
            })
        })
        .collect();
    for k in 0..5 {
        let spec = vm(&format!("hot{k}"), 4);
        let placed = create(&cluster.agents[0], &spec);
        if placed.host != host(0) {
            let _: VmStatus = cluster.agents[0].json(&["vm", "migrate", &spec.name, "--to", &host(0)]);
        }
        names.insert(spec.name);
    }
    for s in scrapers {
        assert_eq!(s.join().expect("scraper"), 40, "every scrape under load answered whole");
    }
    let placed = why(&cluster.agents[1], "hot0");
    let first = placed.records.first().expect("a record");
    assert_eq!(
        (first.kind, first.decided_by, first.host.as_str()),
        (Kind::Placement, Decider::Policy, host(0).as_str())
    );
    assert!(first.policy.as_deref().is_some_and(|p| p.starts_with("best-fit@")), "{first:?}");
    assert_eq!(first.considered, 3, "{first:?}");
    assert_eq!(first.filters.len(), 5, "{first:?}");
    assert!(first.chosen.is_some() && first.failure.is_none(), "{first:?}");
    assert!(placed.answered >= 1, "other agents were asked: {placed:?}");

    // Agent 2's placement policy panics: the fallback places.
    let spec = vm("fallen", 1);
    create(&cluster.agents[2], &spec);
    names.insert(spec.name.clone());
    let fallen = why(&cluster.agents[0], "fallen");
    let r = fallen.records.iter().find(|r| r.kind == Kind::Placement).expect("its placement");
    assert_eq!((r.decided_by, r.host.as_str()), (Decider::Fallback, host(2).as_str()), "{r:?}");
    assert_eq!(r.failure.as_ref().map(|f| f.kind.as_str()), Some("trap"), "{r:?}");
    let shown = agent_text(&cluster.agents[1], &["vm", "why", "fallen"]);
    assert!(shown.contains("by the built-in fallback") && shown.contains("policy failed (trap)"), "{shown}");
    // An operator's move, entered at agent 1, is a decision too.
    let at: VmStatus = cluster.agents[1].json(&["vm", "show", "fallen"]);
    let to = (0..3).map(host).find(|h| *h != at.host).expect("another host");
    let _: VmStatus = cluster.agents[1].json(&["vm", "migrate", "fallen", "--to", &to]);
    let moved = why(&cluster.agents[2], "fallen");
    let r = moved.records.iter().find(|r| r.kind == Kind::Move).expect("the operator's move");
    assert_eq!(
        (r.decided_by, r.host.as_str(), r.chosen.as_deref()),
        (Decider::Operator, host(1).as_str(), Some(to.as_str()))
    );

    // Host 0 is overloaded: 5 × 3.4 CPUs on 16; its event moves VMs away.
    for k in 0..5 {
        let _: VmStatus = cluster.agents[0].json(&["vm", "set-load", &format!("hot{k}"), "3400"]);
    }
    let mut moved = None;
    wait_until(Duration::from_secs(60), "a VM is moved by rebalancing", || {
        moved = (0..5)
            .map(|k| format!("hot{k}"))
            .find(|n| why(&cluster.agents[2], n).records.iter().any(|r| r.kind == Kind::Rebalancing));
        moved.is_some()
    });
    let moved = moved.expect("moved");
    let record = why(&cluster.agents[2], &moved);
    let r = record.records.iter().find(|r| r.kind == Kind::Rebalancing).expect("rebalancing record");
    assert_eq!(r.decided_by, Decider::Policy);
    assert!(r.policy.as_deref().is_some_and(|p| p.starts_with("relieve-overload@")), "{r:?}");
    let to = r.chosen.clone().expect("a destination");
    wait_until(Duration::from_secs(30), "the VM runs at its destination", || {
        let s: VmStatus = cluster.agents[1].json(&["vm", "show", &moved]);
        s.host == to
    });
    let shown = agent_text(&cluster.agents[1], &["vm", "why", &moved]);
    eprintln!("locus vm why {moved}:\n{shown}");
    assert!(shown.contains("rebalancing decided on") && shown.contains(&format!("to host {to}")), "{shown}");

    // Unknown and invalid names are refused with a reason.
    let out = cluster.agents[1].cli(&["vm", "why", "nobody"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no record of vm"));
    let out = cluster.agents[1].cli(&["vm", "why", "../etc"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("invalid VM name"));

    // The metrics those decisions left.
    wait_until(Duration::from_secs(20), "the move is counted", || {
        let m = parse(&scrape(&tcp).1, &names);
        value(&m, "locus_rebalancing_events_total", &[("solved", "true")]) >= 1.0
            && value(&m, "locus_migrations_total", &[("result", "moved")]) >= 1.0
    });
    let m = parse(&scrape(&tcp).1, &names);
    let placements = [("kind", "placement"), ("decided_by", "policy"), ("result", "chosen")];
    assert!(value(&m, "locus_decisions_total", &placements) >= 5.0);
    assert!(value(&m, "locus_decisions_total", &[("kind", "rebalancing")]) >= 1.0);
    assert!(value(&m, "locus_policy_call_duration_seconds_count", &[("slot", "placement")]) >= 5.0);
    assert!(value(&m, "locus_libvirt_operations_total", &[("op", "define"), ("result", "ok")]) >= 5.0);
    assert!(value(&m, "locus_intent_commits_total", &[("result", "ok")]) >= 5.0);
    assert!(value(&m, "locus_intent_commit_duration_seconds_count", &[]) >= 5.0);
    assert_eq!(value(&m, "locus_overlay_peers", &[]), 2.0);
    assert!(value(&m, "locus_gossip_bytes_total", &[("direction", "in")]) > 0.0);
    assert!(value(&m, "locus_vms", &[("state", "running")]) >= 1.0);
    assert!(value(&m, "locus_host_power_watts", &[]) > 0.0);
    assert!(value(&m, "locus_pop_carbon_intensity_grams_per_kwh", &[("pop", "paris")]) > 0.0);
    assert!(m.samples.iter().any(|s| s.metric.starts_with("libp2p_")), "libp2p's metrics share the registry");

    // Agent 2 counted its policy's traps and the fallback.
    let unix2 = cluster.agents[2].client();
    let m2 = parse(&scrape(&unix2).1, &names);
    assert!(value(&m2, "locus_fallbacks_total", &[("kind", "trap")]) >= 1.0);
    assert!(value(&m2, "locus_policy_failures_total", &[("slot", "placement"), ("kind", "trap")]) >= 1.0);
    assert!(value(&m2, "locus_decisions_total", &[("decided_by", "fallback")]) >= 1.0);

    // Metrics off: a clear 404, and the agent serves on.
    let (status, body) = scrape(&cluster.agents[1].client());
    assert_eq!(status, 404);
    assert!(body.contains("metrics are off"), "{body}");
    let _: Vec<VmStatus> = cluster.agents[1].json(&["vm", "list"]);

    // The records survive a restart of the agent that kept them.
    cluster.agents[0].terminate();
    cluster.agents[0].spawn();
    let again = why(&cluster.agents[0], "hot0");
    assert!(again.records.iter().any(|r| r.kind == Kind::Placement && r.host == host(0)), "{again:?}");
}

fn agent_text(agent: &Agent, args: &[&str]) -> String {
    let out = agent.cli(args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
