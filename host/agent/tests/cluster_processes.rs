//! Clusters of `locus agent` processes on loopback, each on libvirt's test
//! driver, joined by the real libp2p overlay with a cluster key: membership
//! convergence and failure detection, placement across PoPs by jurisdiction
//! and latency (with emulated WAN latency), concurrent requests, and
//! strangers and garbage kept out.

mod common;

use common::{Agent, Cluster, PopSpec, rt, wait_until};
use libp2p::futures::StreamExt;
use locus::api::cluster::ClusterView;
use locus::client::{AgentError, Client};
use locus_core::cluster::Liveness;
use locus_core::node::{HostStatus, VmStatus};
use locus_core::{Location, VmRequest};
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn view(c: &Client) -> Option<ClusterView> {
    rt().block_on(c.get::<ClusterView>("/v1/cluster")).ok()
}

fn converged(c: &Client, pops: usize, hosts: usize) -> bool {
    view(c).is_some_and(|v| {
        // Other PoPs' hosts are counted in their rows, not listed.
        v.cluster.pops.len() == pops
            && v.cluster.pops.iter().map(|p| p.hosts_alive as usize).sum::<usize>() == hosts
    })
}

/// Waits until every agent sees `pops` PoPs and `hosts` live hosts; on
/// timeout, fails with what each agent saw instead.
fn wait_converged(clients: &[Client], pops: usize, hosts: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !clients.iter().all(|c| converged(c, pops, hosts)) {
        if Instant::now() >= deadline {
            let seen: Vec<String> = clients
                .iter()
                .map(|c| match view(c) {
                    Some(v) => {
                        let rows: Vec<String> = v
                            .cluster
                            .pops
                            .iter()
                            .map(|p| format!("{} {}/{}", p.pop, p.hosts_alive, p.hosts))
                            .collect();
                        format!("{}: {}", v.cluster.host, rows.join(", "))
                    }
                    None => "(no answer)".into(),
                })
                .collect();
            panic!(
                "timed out after {timeout:?} waiting until every agent sees {pops} PoPs and {hosts} live hosts; they see:\n{}",
                seen.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn vm(name: &str) -> VmRequest {
    VmRequest { name: name.into(), vcpus: 1, memory_mib: 1024, ..VmRequest::default() }
}

fn create(agent: &Agent, spec: &VmRequest) -> Result<VmStatus, anyhow::Error> {
    rt().block_on(agent.client().post("/v1/vms", Some(spec)))
}

#[test]
fn processes_20_agents_in_4_pops_converge_and_a_killed_agent_is_declared_dead_by_all() {
    let pops: [PopSpec; 4] = [
        ("paris", "FR", 48.86, 2.35, 5),
        ("berlin", "DE", 52.52, 13.40, 5),
        ("madrid", "ES", 40.42, -3.70, 5),
        ("warsaw", "PL", 52.23, 21.01, 5),
    ];
    let mut cluster = Cluster::start(10, &pops, |_, _| 0, &[]);
    let clients: Vec<Client> = cluster.agents.iter().map(Agent::client).collect();
    let started = Instant::now();
    wait_converged(&clients, 4, 20, Duration::from_secs(10));
    eprintln!("20 agents converged {:?} after the last one started", started.elapsed());

    // Restart policy never: reported lost (one with always is created again; see below).
    let mut spec = vm("victim-vm");
    spec.restart = locus_core::RestartPolicy::Never;
    let placed = create(&cluster.agents[7], &spec).expect("create");
    let victim = cluster.agents.iter().position(|a| a.host == placed.host).expect("its host");
    // The VM's name travels with the next summaries.
    std::thread::sleep(Duration::from_secs(2));
    cluster.agents[victim].kill9();
    let killed = Instant::now();
    let others: Vec<&Client> =
        clients.iter().enumerate().filter(|(i, _)| *i != victim).map(|(_, c)| c).collect();
    let victim_host = cluster.agents[victim].host.clone();
    wait_until(Duration::from_secs(5), "all 19 others see the killed agent dead", || {
        others.iter().all(|c| {
            view(c).is_some_and(|v| {
                v.cluster.hosts.iter().any(|h| h.host == victim_host && h.liveness == Liveness::Dead)
            })
        })
    });
    eprintln!("declared dead by all after {:?}", killed.elapsed());
    let lost: VmStatus = rt().block_on(others[3].get("/v1/vms/victim-vm")).expect("show");
    assert_eq!(serde_json::to_value(lost.state).expect("state"), "lost");
    // Its PoP-mates name the VMs lost (other PoPs count hosts, not VMs).
    let log = cluster.agents[victim / 5 * 5 + (victim + 1) % 5].log();
    assert!(log.contains("VM(s) are lost") && log.contains("victim-vm"), "{log}");
}

#[test]
fn processes_requests_land_where_jurisdiction_and_latency_say_with_emulated_wan_latency() {
    let pops: [PopSpec; 3] = [
        ("paris", "FR", 48.86, 2.35, 2),
        ("berlin", "DE", 52.52, 13.40, 2),
        ("madrid", "ES", 40.42, -3.70, 2),
    ];
    // Round trips between PoPs: paris–berlin 20 ms, paris–madrid 30 ms, berlin–madrid 40 ms.
    let rtt = |a: usize, b: usize| match (a.min(b), a.max(b)) {
        (0, 1) => 20,
        (0, 2) => 30,
        (1, 2) => 40,
        _ => 0,
    };
    let cluster = Cluster::start(20, &pops, rtt, &[]);
    let clients: Vec<Client> = cluster.agents.iter().map(Agent::client).collect();
    wait_converged(&clients, 3, 6, Duration::from_secs(15));
    let berlin = &cluster.agents[2];
    wait_until(Duration::from_secs(10), "latency to every PoP is measured", || {
        view(&clients[2]).is_some_and(|v| v.cluster.pops.iter().skip(1).all(|p| p.rtt_ms.is_some()))
    });
    let v = view(&clients[2]).expect("view");
    let rtt_to =
        |pop: &str| v.cluster.pops.iter().find(|p| p.pop == pop).and_then(|p| p.rtt_ms).unwrap_or(0.0);
    assert!(
        rtt_to("paris") >= 19.0 && rtt_to("madrid") >= 39.0,
        "measured, not configured: {:?}",
        v.cluster.pops
    );

    let mut fr = vm("fr-only");
    fr.jurisdictions = vec!["FR".into()];
    let placed = create(berlin, &fr).expect("FR request entering Berlin");
    assert_eq!(placed.pop, "paris", "{placed:?}");
    assert!(placed.host.starts_with("paris-"));

    let mut near = vm("near-madrid");
    near.user = Some(Location { lat: 40.0, lon: -3.5 });
    near.max_latency_ms = Some(5.0);
    let placed = create(&cluster.agents[0], &near).expect("latency-bound request entering Paris");
    assert_eq!(placed.pop, "madrid", "{placed:?}");

    let mut nowhere = vm("tokyo-only");
    nowhere.jurisdictions = vec!["JP".into()];
    let e = create(berlin, &nowhere).expect_err("no PoP suits");
    let e = e.downcast::<AgentError>().expect("API error");
    assert_eq!(e.status.as_u16(), 422, "{e}");
    assert!(e.message.contains("JP"), "{}", e.message);
}

#[test]
fn processes_200_concurrent_requests_across_9_agents_never_overcommit_and_all_get_answers() {
    let pops: [PopSpec; 3] = [
        ("paris", "FR", 48.86, 2.35, 3),
        ("berlin", "DE", 52.52, 13.40, 3),
        ("madrid", "ES", 40.42, -3.70, 3),
    ];
    let cap = ["--set", "host.vcpus=8", "--set", "host.memory-mib=8192"];
    let cluster = Cluster::start(30, &pops, |_, _| 0, &cap);
    let clients: Vec<Client> = cluster.agents.iter().map(Agent::client).collect();
    wait_converged(&clients, 3, 9, Duration::from_secs(15));

    let results: Vec<(usize, Result<VmStatus, String>)> = rt().block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200usize {
            let client = clients[i % clients.len()].clone();
            tasks.spawn(async move {
                let r = client.post::<_, VmStatus>("/v1/vms", Some(&vm(&format!("burst-{i}")))).await;
                (i, r.map_err(|e| format!("{e:#}")))
            });
        }
        let mut out = vec![];
        while let Some(r) = tasks.join_next().await {
            out.push(r.expect("task"));
        }
        out
    });
    assert_eq!(results.len(), 200, "every request answered");
    let placed: Vec<&VmStatus> = results.iter().filter_map(|(_, r)| r.as_ref().ok()).collect();
    for (i, r) in &results {
        if let Err(e) = r {
            assert!(e.contains("cannot place") || e.contains("cannot take"), "request {i}: {e}");
        }
    }
    // 9 hosts × 8 VMs of 1 vCPU / 1 GiB.
    assert!(placed.len() <= 72, "{} placed on 72 slots", placed.len());
    assert!(placed.len() >= 60, "only {} of 72 slots used", placed.len());
    let mut where_: HashMap<String, String> = HashMap::new();
    for a in &cluster.agents {
        let host: HostStatus = a.json(&["host", "status"]);
        assert!(
            host.allocated.vcpus <= 8 && host.allocated.memory_mib <= 8192,
            "{} overcommitted: {host:?}",
            a.host
        );
        let vms: Vec<VmStatus> = a.json(&["vm", "list"]);
        for v in vms {
            assert!(where_.insert(v.name.clone(), a.host.clone()).is_none(), "{} runs twice", v.name);
        }
    }
    assert_eq!(where_.len(), placed.len(), "what was reported placed is what runs");
    for p in placed {
        assert_eq!(where_.get(&p.name), Some(&p.host), "{} is where its answer said", p.name);
    }
}

/// A request-response codec that sends bytes as they are, to attack an agent.
#[derive(Debug, Clone, Default)]
struct Raw;

impl libp2p::request_response::Codec for Raw {
    type Protocol = libp2p::StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: libp2p::futures::AsyncRead + Unpin + Send>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
    ) -> std::io::Result<Vec<u8>> {
        use libp2p::futures::AsyncReadExt;
        let mut v = vec![];
        io.take(1 << 20).read_to_end(&mut v).await?;
        Ok(v)
    }

    async fn read_response<T: libp2p::futures::AsyncRead + Unpin + Send>(
        &mut self,
        p: &Self::Protocol,
        io: &mut T,
    ) -> std::io::Result<Vec<u8>> {
        self.read_request(p, io).await
    }

    async fn write_request<T: libp2p::futures::AsyncWrite + Unpin + Send>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> std::io::Result<()> {
        use libp2p::futures::AsyncWriteExt;
        io.write_all(&req).await?;
        io.close().await
    }

    async fn write_response<T: libp2p::futures::AsyncWrite + Unpin + Send>(
        &mut self,
        p: &Self::Protocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> std::io::Result<()> {
        self.write_request(p, io, res).await
    }
}

#[test]
fn processes_strangers_without_the_key_cannot_join_and_garbage_is_refused() {
    let pops: [PopSpec; 1] = [("paris", "FR", 48.86, 2.35, 2)];
    let cluster = Cluster::start(40, &pops, |_, _| 0, &[]);
    let clients: Vec<Client> = cluster.agents.iter().map(Agent::client).collect();
    wait_converged(&clients, 1, 2, Duration::from_secs(15));

    // Another key, same bootstrap address.
    let dir = tempfile::tempdir().expect("tempdir");
    let other_key = dir.path().join("other.key");
    let out =
        std::process::Command::new(common::locus_bin()).args(["cluster", "keygen"]).output().expect("keygen");
    std::fs::write(&other_key, &out.stdout).expect("key");
    let key = other_key.display().to_string();
    let stranger = Agent::start_cluster_member(
        "stranger",
        &[
            "--pop",
            "paris",
            "--cluster-key",
            &key,
            "--p2p-listen",
            "/ip4/127.40.0.9/tcp/7946",
            "--bootstrap",
            "/ip4/127.40.0.1/tcp/7946",
        ],
    );
    // A config without a key refuses to start unless --dev.
    let no_key = std::process::Command::new(common::locus_bin())
        .args(["agent", "--state-dir", &dir.path().join("s").display().to_string()])
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&no_key.stderr).contains("no cluster key"));

    // Garbage straight onto the overlay port: the key's handshake fails.
    use std::io::Write;
    let mut raw = std::net::TcpStream::connect("127.40.0.1:7946").expect("connect");
    let _ = raw.write_all(&[0xde; 4096]);
    drop(raw);

    // Garbage and an oversized frame on the protocol stream, from a peer that has the key.
    let target: ClusterView = rt().block_on(clients[0].get("/v1/cluster")).expect("view");
    let psk: libp2p::pnet::PreSharedKey =
        std::fs::read_to_string(&cluster.key).expect("key").parse().expect("psk");
    let outcomes = rt().block_on(attack(psk, target.cluster.peer.parse().expect("peer id")));
    // The agent drops each stream without an answer (an empty read or a reset here).
    assert!(outcomes.iter().all(|o| o.as_ref().is_ok_and(Vec::is_empty) || o.is_err()), "{outcomes:?}");

    std::thread::sleep(Duration::from_secs(3));
    let s: ClusterView = rt().block_on(stranger.client().get("/v1/cluster")).expect("stranger view");
    assert_eq!(s.cluster.hosts.len(), 1, "the stranger sees nobody: {:?}", s.cluster.hosts);
    for c in &clients {
        let v = view(c).expect("view");
        assert!(v.cluster.hosts.iter().all(|h| h.host != "stranger"), "{:?}", v.cluster.hosts);
        assert_eq!(
            v.cluster.hosts.iter().filter(|h| h.liveness == Liveness::Alive).count(),
            2,
            "still healthy"
        );
    }
    let v = view(&clients[0]).expect("view");
    assert!(v.overlay.rejected_messages >= 2, "refusals are counted: {:?}", v.overlay);
    create(&cluster.agents[0], &vm("after-attack")).expect("still serving");
}

async fn attack(psk: libp2p::pnet::PreSharedKey, target: libp2p::PeerId) -> Vec<Result<Vec<u8>, String>> {
    use libp2p::request_response::{self, ProtocolSupport};
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_other_transport(|key| common::keyed_transport(psk, key))
        .expect("transport")
        .with_behaviour(|_| {
            request_response::Behaviour::with_codec(
                Raw,
                [(libp2p::StreamProtocol::new("/locus/rpc/1"), ProtocolSupport::Outbound)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(5)),
            )
        })
        .expect("behaviour")
        .build();
    swarm.add_peer_address(target, "/ip4/127.40.0.1/tcp/7946".parse().expect("addr"));
    let mut garbage = 5u32.to_be_bytes().to_vec();
    garbage.extend([0xc1; 5]);
    let oversized = [0x7f, 0xff, 0xff, 0xff, 1, 2, 3].to_vec();
    let ids = [
        swarm.behaviour_mut().send_request(&target, garbage),
        swarm.behaviour_mut().send_request(&target, oversized),
    ];
    let mut out = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while out.len() < ids.len() {
        let event = tokio::select! {
            e = swarm.select_next_some() => e,
            _ = tokio::time::sleep_until(deadline) => break,
        };
        if let libp2p::swarm::SwarmEvent::Behaviour(e) = event {
            match e {
                request_response::Event::Message {
                    message: request_response::Message::Response { request_id, response },
                    ..
                } => {
                    out.insert(request_id, Ok(response));
                }
                request_response::Event::OutboundFailure { request_id, error, .. } => {
                    out.insert(request_id, Err(error.to_string()));
                }
                _ => {}
            }
        }
    }
    ids.iter().map(|id| out.remove(id).unwrap_or_else(|| Err("no answer".into()))).collect()
}

#[test]
fn processes_a_host_overloaded_by_declared_load_is_seen_so_by_its_pop_mates() {
    let pops: [PopSpec; 1] = [("lyon", "FR", 45.76, 4.84, 2)];
    let extra = ["--set", "load.sustain-samples=1", "--set", "load.overload-ratio=0.5"];
    let cluster = Cluster::start(60, &pops, |_, _| 0, &extra);
    let clients: Vec<Client> = cluster.agents.iter().map(Agent::client).collect();
    wait_converged(&clients, 1, 2, Duration::from_secs(10));
    let busy = &cluster.agents[0];
    let host: HostStatus = busy.json(&["host", "status"]);
    let mut spec = vm("hot");
    spec.vcpus = host.cpu_milli / 1000;
    let placed = rt().block_on(busy.client().post::<_, VmStatus>("/v1/vms", Some(&spec))).expect("create");
    let owner = cluster.agents.iter().position(|a| a.host == placed.host).expect("its host");
    let (mate, owner) = (&clients[1 - owner], &cluster.agents[owner]);
    // All its vCPUs busy: more than half the host's CPUs.
    let _: VmStatus = owner.json(&["vm", "set-load", "hot", &(spec.vcpus * 1000).to_string()]);
    wait_until(Duration::from_secs(15), "its PoP-mate sees the host overloaded", || {
        view(mate).is_some_and(|v| {
            v.cluster
                .hosts
                .iter()
                .any(|h| h.host == placed.host && h.load == Some(locus_core::load::LoadState::Overloaded))
        })
    });
}

fn show(c: &Client, vm: &str) -> Option<VmStatus> {
    rt().block_on(c.get::<VmStatus>(&format!("/v1/vms/{vm}"))).ok()
}

#[test]
fn processes_vm_migrate_moves_a_vm_cold_between_agents_and_a_drain_empties_a_host() {
    let pops: [PopSpec; 1] = [("nantes", "FR", 47.2, -1.55, 3)];
    // One migration at a time in the PoP (checked at the end); room for
    // every VM of the test on one host.
    let bounds = ["--set", "moves.max-per-pop=1", "--set", "host.memory-mib=16384"];
    let cluster = Cluster::start(50, &pops, |_, _| 0, &bounds);
    let clients: Vec<Client> = cluster.agents.iter().map(Agent::client).collect();
    wait_converged(&clients, 1, 3, Duration::from_secs(10));
    let placed = create(&cluster.agents[0], &vm("walker")).expect("create");
    let from = cluster.agents.iter().position(|a| a.host == placed.host).expect("its host");
    let to = (from + 1) % 3;
    let to_host = cluster.agents[to].host.clone();
    // Entered at the third agent: passed to the VM's host, which drives the move.
    let asked = (from + 2) % 3;
    let moved: VmStatus = cluster.agents[asked].json(&["vm", "migrate", "walker", "--to", &to_host]);
    assert_eq!(moved.host, to_host);
    assert_eq!(moved.generation, 1);
    assert_eq!(moved.state, locus_core::hypervisor::DomainState::Running);
    assert!(
        cluster.agents[from].log().contains("moving cold"),
        "the test driver cannot migrate live, and says so"
    );
    let here: Vec<VmStatus> = cluster.agents[from].json(&["vm", "list"]);
    assert!(here.is_empty(), "the source forgot it: {here:?}");
    wait_until(Duration::from_secs(5), "every agent shows it at its new host", || {
        clients.iter().all(|c| show(c, "walker").is_some_and(|s| s.host == to_host && s.handoff.is_none()))
    });
    // Refusals say why.
    let out = cluster.agents[to].cli(&["vm", "migrate", "walker", "--to", &to_host]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("already on host"));
    let out = cluster.agents[to].cli(&["vm", "migrate", "walker", "--to", "atlantis"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no alive host named"), "{out:?}");

    // Drain the host that has it, plus two more VMs put there.
    for name in ["w2", "w3"] {
        if create(&cluster.agents[0], &vm(name)).expect("create").host != to_host {
            let _: VmStatus = cluster.agents[0].json(&["vm", "migrate", name, "--to", &to_host]);
        }
    }
    let drained: HostStatus = cluster.agents[to].json(&["host", "drain"]);
    let drain = drained.drain.expect("drain status");
    assert_eq!((drain.remaining, drain.moved), (0, 3), "{drain:?}");
    let left: Vec<VmStatus> = cluster.agents[to].json(&["vm", "list"]);
    assert!(left.is_empty(), "{left:?}");
    for name in ["walker", "w2", "w3"] {
        let s = show(&clients[to], name).expect("shown");
        assert_ne!(s.host, to_host, "{name}");
    }
    // A draining host takes nothing new, wherever the request enters.
    for (k, a) in cluster.agents.iter().enumerate() {
        let placed = create(a, &vm(&format!("late{k}"))).expect("create");
        assert_ne!(placed.host, to_host);
    }
    let resumed: HostStatus = cluster.agents[to].json(&["host", "resume"]);
    assert!(resumed.drain.is_none());

    // Moves out of two hosts to two others, all asked at once: the PoP lets
    // one run at a time, so they take turns (each host alone would let
    // a → c and b → a overlap).
    let (a, b, c) = (from, asked, to);
    let plan = [("t0", a, c), ("t1", a, c), ("t2", b, a), ("t3", b, a)];
    for (name, at, _) in plan {
        if create(&cluster.agents[0], &vm(name)).expect("create").host != cluster.agents[at].host {
            let _: VmStatus =
                cluster.agents[0].json(&["vm", "migrate", name, "--to", &cluster.agents[at].host]);
        }
    }
    let asked: Vec<std::process::Child> = plan
        .iter()
        .map(|(name, at, dest)| {
            std::process::Command::new(common::locus_bin())
                .args(["vm", "migrate", name, "--to", &cluster.agents[*dest].host, "--socket"])
                .arg(cluster.agents[*at].socket())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn locus vm migrate")
        })
        .collect();
    for (child, (name, ..)) in asked.into_iter().zip(plan) {
        let out = child.wait_with_output().expect("vm migrate ends");
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut spans: Vec<(String, String, String)> = vec![];
    for (name, at, dest) in plan {
        let log = cluster.agents[at].log();
        let stamp = |what: &str| {
            log.lines()
                .rfind(|l| l.contains(&format!("vm {name}: {what}")))
                .and_then(|l| l.split_whitespace().next())
                .map(str::to_owned)
                .unwrap_or_else(|| panic!("{name}: no '{what}' in the log of host {at}:\n{log}"))
        };
        spans.push((stamp("moving cold to host"), stamp("moved to host"), name.to_owned()));
        let s = show(&clients[0], name).expect("shown");
        assert_eq!(s.host, cluster.agents[dest].host, "{name}");
    }
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "two moves of the PoP overlapped: {w:?}");
    }
}

/// One rebalancing event as the agents' logs tell it: when it started and
/// ended (RFC 3339 stamps compare as text) and every host its partition had.
#[derive(Debug, Default)]
struct LoggedEvent {
    start: String,
    end: String,
    /// Its partition's hosts, each with when it was first logged in it:
    /// a host leaves one partition before it joins the next.
    hosts: std::collections::BTreeMap<String, String>,
}

impl LoggedEvent {
    fn took(&mut self, host: &str, stamp: &str) {
        let since = self.hosts.entry(host.to_owned()).or_insert_with(|| stamp.to_owned());
        if stamp < since.as_str() {
            *since = stamp.to_owned();
        }
    }
}

fn logged_events(agents: &[Agent]) -> HashMap<String, LoggedEvent> {
    let mut events: HashMap<String, LoggedEvent> = HashMap::new();
    for a in agents {
        for line in a.log().lines() {
            let Some(at) = line.find("rebalancing: event ") else { continue };
            let stamp = line.split_whitespace().next().unwrap_or_default().to_owned();
            let rest = &line[at + "rebalancing: event ".len()..];
            let Some((id, what)) = rest.split_once(": ") else { continue };
            let e = events.entry(id.to_owned()).or_default();
            if what.contains("leading a partition") {
                e.took(id.split('#').next().unwrap_or_default(), &stamp);
                e.start = stamp;
            } else if what.starts_with("solved")
                || what.starts_with("ended unsolved")
                || what.starts_with("merged")
            {
                e.end = stamp;
            } else if let Some(list) = what.split("partition [").nth(1) {
                for host in list.trim_end_matches(']').split(", ") {
                    e.took(host, &stamp);
                }
            }
        }
    }
    events
}

/// How many agents other than the `skip`th record `name`.
fn holders(agents: &[Agent], skip: Option<usize>, name: &str) -> usize {
    agents
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != skip)
        .filter(|(_, a)| a.json::<Vec<VmStatus>>(&["vm", "list"]).iter().any(|v| v.name == name))
        .count()
}

#[test]
fn processes_9_agents_in_3_pops_two_overloads_at_once_are_solved_by_disjoint_partitions_a_drain_empties_a_host_and_a_killed_hosts_vms_come_back_once()
 {
    let pops: [PopSpec; 3] = [
        ("lyon", "FR", 45.76, 4.84, 3),
        ("berlin", "DE", 52.52, 13.40, 3),
        ("madrid", "ES", 40.42, -3.70, 3),
    ];
    let extra = [
        "--set",
        "load.sustain-samples=1",
        "--set",
        "rebalance.consolidate-interval-ms=0",
        "--set",
        "rebalance.retry-after-ms=2000",
    ];
    let mut cluster = Cluster::start(70, &pops, |_, _| 0, &extra);
    let clients: Vec<Client> = cluster.agents.iter().map(Agent::client).collect();
    wait_converged(&clients, 3, 9, Duration::from_secs(20));
    let host = |i: usize| cluster.agents[i].host.clone();
    // Five busy VMs on each of two Lyon hosts: 5 × 3.4 CPUs on 16.
    let mut on: HashMap<String, usize> = HashMap::new();
    for k in 0..10 {
        let target = k / 5;
        let mut spec = vm(&format!("hot{k}"));
        spec.vcpus = 4;
        spec.memory_mib = 256;
        spec.jurisdictions = vec!["FR".into()];
        spec.load_cpu_milli = Some(0);
        let placed = create(&cluster.agents[0], &spec).expect("create");
        if placed.host != host(target) {
            let _: VmStatus = cluster.agents[0].json(&["vm", "migrate", &spec.name, "--to", &host(target)]);
        }
        on.insert(spec.name, target);
    }
    for (name, owner) in &on {
        let _: VmStatus = cluster.agents[*owner].json(&["vm", "set-load", name, "3400"]);
    }
    let load_of = |i: usize| -> u32 {
        let vms: Vec<VmStatus> = cluster.agents[i].json(&["vm", "list"]);
        vms.iter().map(|v| v.spec.expected_load()).sum()
    };
    wait_until(Duration::from_secs(60), "both overloads are relieved", || {
        (0..3).all(|i| load_of(i) <= 16_000)
            && (0..2).all(|i| {
                let h: HostStatus = cluster.agents[i].json(&["host", "status"]);
                h.rebalance.leading.is_none()
            })
    });
    // Every event ended; the ones that overlapped in time never shared a host.
    let events = logged_events(&cluster.agents);
    assert!(!events.is_empty(), "events were logged");
    // Each overloaded host led a solved event or was in the partition of
    // one (an older event that took it in solved both at once).
    let reports: Vec<_> = cluster.agents[..3]
        .iter()
        .flat_map(|a| a.json::<HostStatus>(&["host", "status"]).rebalance.recent)
        .collect();
    for i in 0..2 {
        let relieved = reports.iter().any(|r| r.solved && r.partition.contains(&host(i)));
        assert!(relieved, "{} was relieved by a solved event: {reports:?}", host(i));
    }
    let list: Vec<(&String, &LoggedEvent)> = events.iter().collect();
    for (id, e) in &list {
        eprintln!("event {id}: {} .. {} over {:?}", e.start, e.end, e.hosts);
    }
    for (id, e) in &list {
        assert!(!e.start.is_empty() && !e.end.is_empty(), "event {id} started and ended: {e:?}");
    }
    for (i, (a, ea)) in list.iter().enumerate() {
        for (b, eb) in &list[i + 1..] {
            // A host in both, at once: taken by each before the other ended.
            let shared: Vec<&String> = ea
                .hosts
                .iter()
                .filter_map(|(h, in_a)| eb.hosts.get(h).map(|in_b| (h, in_a, in_b)))
                .filter(|(_, in_a, in_b)| *in_a < &eb.end && *in_b < &ea.end)
                .map(|(h, ..)| h)
                .collect();
            assert!(shared.is_empty(), "events {a} and {b} held {shared:?} at once");
        }
    }
    // The FR fence held: every VM is still in Lyon.
    for name in on.keys() {
        let s = show(&clients[4], name).expect("shown from Berlin");
        assert_eq!(s.pop, "lyon", "{name}");
    }

    // Host summaries name VMs to their PoP only; a create of a name that
    // runs in another PoP is refused all the same (the overlay's records
    // tell), and a deleted VM's name is free again everywhere.
    let dup = create(&cluster.agents[7], &vm("hot0")).expect_err("hot0 runs in Lyon");
    assert!(format!("{dup:#}").contains("already exists") && format!("{dup:#}").contains("lyon"), "{dup:#}");
    let mut reused = vm("reused");
    reused.jurisdictions = vec!["FR".into()];
    create(&cluster.agents[0], &reused).expect("create in Lyon");
    let _: serde_json::Value = cluster.agents[0].json(&["vm", "delete", "reused"]);
    reused.jurisdictions = vec!["ES".into()];
    let again = create(&cluster.agents[7], &reused).expect("the name is free again");
    assert_eq!(again.pop, "madrid");
    let _: serde_json::Value = cluster.agents[7].json(&["vm", "delete", "reused"]);

    // A drain in Berlin empties a host onto its PoP-mates.
    let berlin0 = host(3);
    for k in 0..3 {
        let mut spec = vm(&format!("de{k}"));
        spec.jurisdictions = vec!["DE".into()];
        let placed = create(&cluster.agents[3], &spec).expect("create");
        if placed.host != berlin0 {
            let _: VmStatus = cluster.agents[3].json(&["vm", "migrate", &spec.name, "--to", &berlin0]);
        }
    }
    let drained: HostStatus = cluster.agents[3].json(&["host", "drain"]);
    let drain = drained.drain.expect("drain status");
    assert_eq!((drain.total, drain.moved, drain.remaining), (3, 3, 0), "{drain:?}");
    for k in 0..3 {
        let s = show(&clients[0], &format!("de{k}")).expect("shown");
        assert!(s.pop == "berlin" && s.host != berlin0, "de{k} on {}", s.host);
    }

    // A Madrid host is killed: its VMs with restart `always` come back on
    // its PoP-mates, once; the one with `never` is reported lost; when the
    // host returns, its copies of the first two are stale and go.
    let victim = host(6);
    for name in ["keep1", "keep2", "once"] {
        let mut spec = vm(name);
        spec.jurisdictions = vec!["ES".into()];
        if name == "once" {
            spec.restart = locus_core::RestartPolicy::Never;
        }
        if create(&cluster.agents[6], &spec).expect("create").host != victim {
            let _: VmStatus = cluster.agents[6].json(&["vm", "migrate", name, "--to", &victim]);
        }
    }
    // Its PoP-mates know what it runs from its summaries.
    wait_until(Duration::from_secs(5), "its summary lists the three VMs", || {
        view(&clients[7]).is_some_and(|v| v.cluster.hosts.iter().any(|h| h.host == victim && h.vms == 3))
    });
    // And the overlay's records have them (summaries may come sooner).
    wait_until(Duration::from_secs(10), "another PoP finds the three VMs", || {
        ["keep1", "keep2", "once"].iter().all(|n| show(&clients[0], n).is_some_and(|s| s.host == victim))
    });
    cluster.agents[6].kill9();
    wait_until(Duration::from_secs(40), "the VMs with restart always run elsewhere", || {
        ["keep1", "keep2"].iter().all(|n| {
            show(&clients[7], n).is_some_and(|s| s.host != victim && s.pop == "madrid" && s.generation == 1)
        })
    });
    let lost = show(&clients[0], "once").expect("shown from Lyon");
    assert_eq!(lost.state, locus_core::hypervisor::DomainState::Lost, "restart never: reported lost");
    // Each was created again once, by one agent.
    assert_eq!(
        (holders(&cluster.agents, Some(6), "keep1"), holders(&cluster.agents, Some(6), "keep2")),
        (1, 1)
    );
    cluster.agents[6].spawn();
    let back = &cluster.agents[6];
    wait_until(Duration::from_secs(30), "the returning host drops its stale copies", || {
        let mine: Vec<String> =
            back.json::<Vec<VmStatus>>(&["vm", "list"]).into_iter().map(|v| v.name).collect();
        mine == vec!["once".to_owned()]
    });
    assert!(back.log().contains("is stale"), "{}", back.log());
    assert_eq!((holders(&cluster.agents, None, "keep1"), holders(&cluster.agents, None, "keep2")), (1, 1));
}
