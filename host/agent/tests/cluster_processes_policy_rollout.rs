//! Policy pushes across 9 `locus agent` processes in 3 PoPs on loopback
//! (test driver, real libp2p overlay with a cluster key), every agent
//! trusting one operator key: a signed push to one PoP reaches all of its
//! agents and no other; unsigned, tampered, stripped, expired and
//! stranger-key bundles are refused by every agent, pushed or loaded; a canary that
//! traps rolls back everywhere with the reason; a shadow reports
//! agreement; an agent down during a push gets it when it comes back; two
//! racing pushes converge on one winner; a scope rolls back.

mod common;

use common::{Agent, Cluster, PopSpec, locus_bin, wait_until};
use locus::bundle::hostile;
use locus::policies::SlotListing;
use locus::rollout::table::{Plan, Stage};
use locus::rollout::{PushView, RolloutStatus};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const POPS: [PopSpec; 3] =
    [("paris", "FR", 48.86, 2.35, 3), ("berlin", "DE", 52.52, 13.40, 3), ("madrid", "ES", 40.42, -3.70, 3)];

/// The operator's key and the bundles signed with it, in a directory.
struct Keys {
    dir: tempfile::TempDir,
    public: String,
}

impl Keys {
    fn new() -> Keys {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new(locus_bin())
            .args(["policy", "keygen", "--out"])
            .arg(dir.path().join("operator.key"))
            .output()
            .expect("keygen");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let public = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Keys { dir, public }
    }

    /// Signs `policy` (a built-in name or a file) for `slot` as `file`.
    fn sign(&self, key: &str, policy: &str, slot: &str, file: &str, extra: &[&str]) -> PathBuf {
        let out_path = self.dir.path().join(file);
        let out = Command::new(locus_bin())
            .args(["policy", "sign", policy, "--slot", slot, "--key"])
            .arg(self.dir.path().join(key))
            .arg("--out")
            .arg(&out_path)
            .args(extra)
            .output()
            .expect("sign");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        out_path
    }

    fn write(&self, file: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dir.path().join(file);
        std::fs::write(&path, bytes).expect("write");
        path
    }
}

fn active(agent: &Agent, slot: &str) -> String {
    let slots: Vec<SlotListing> = agent.json(&["policy", "list"]);
    slots
        .into_iter()
        .find(|s| s.slot.as_str() == slot)
        .and_then(|s| s.active)
        .map(|v| format!("{}:{}", v.name, serde_json::to_string(&v.config).unwrap_or_default()))
        .unwrap_or_default()
}

fn status(agent: &Agent, scope: &str) -> RolloutStatus {
    agent.json(&["policy", "status", "--scope", scope])
}

fn push(agent: &Agent, bundle: &Path, args: &[&str]) -> PushView {
    let mut all = vec!["policy", "push", bundle.to_str().expect("utf-8"), "--no-wait"];
    all.extend(args);
    agent.json(&all)
}

fn stage(agent: &Agent, scope: &str, id: &str) -> Option<Stage> {
    status(agent, scope).pushes.into_iter().find(|p| p.id == id).map(|p| p.stage)
}

fn refused(agent: &Agent, args: &[&str], expect: &str) {
    let out = agent.cli(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{} accepted `{}`", agent.host, args.join(" "));
    assert!(
        stderr.contains(expect),
        "{}: `{}` said {stderr:?}, expected {expect:?}",
        agent.host,
        args.join(" ")
    );
}

static WINNER: std::sync::OnceLock<String> = std::sync::OnceLock::new();

#[test]
fn processes_9_agents_in_3_pops_take_signed_pushes_canaries_shadows_and_rollbacks() {
    let keys = Keys::new();
    let trusted = format!("policies.trusted-keys=[\"{}\"]", keys.public);
    // 300 ms between PoPs: what one PoP announces reaches another no
    // sooner than 150 ms later, wide enough for two pushes to race.
    let mut cluster = Cluster::start(110, &POPS, |a, b| if a == b { 0 } else { 300 }, &["--set", &trusted]);
    let pop_agents = |p: usize| -> Vec<usize> { (0..9).filter(|&i| cluster.pops[i] == p).collect() };
    let (paris, berlin, madrid) = (pop_agents(0), pop_agents(1), pop_agents(2));
    wait_until(Duration::from_secs(30), "every agent hears every agent's policy status", || {
        cluster.agents.iter().all(|a| status(a, "cluster").agents.len() == 9)
    });

    // A signed push to Paris, entered through a Berlin agent, reaches the
    // three Paris agents and no other.
    let spread = keys.sign("operator.key", "spread", "placement", "spread.bundle", &["--config", "w=2"]);
    let pushed = push(&cluster.agents[berlin[0]], &spread, &["--scope", "pop:paris"]);
    assert_eq!(pushed.id, "pop:paris/placement#1");
    wait_until(Duration::from_secs(20), "the Paris agents run the pushed policy", || {
        paris.iter().all(|&i| active(&cluster.agents[i], "placement") == r#"spread:{"w":"2"}"#)
    });
    for &i in berlin.iter().chain(&madrid) {
        assert_eq!(
            active(&cluster.agents[i], "placement"),
            "best-fit:{}",
            "{} is outside the scope",
            cluster.agents[i].host
        );
    }

    // Bad bundles: refused by every agent, pushed or loaded, with the reason.
    let good = std::fs::read(&spread).expect("bundle");
    let stranger = Command::new(locus_bin())
        .args(["policy", "keygen", "--out"])
        .arg(keys.dir.path().join("stranger.key"))
        .output()
        .expect("keygen");
    assert!(stranger.status.success());
    let expired = keys.sign("operator.key", "spread", "placement", "expired.bundle", &["--valid-days", "0"]);
    std::thread::sleep(Duration::from_millis(1100));
    let bad = [
        (expired, "expired"),
        (keys.write("stripped.bundle", &hostile::strip_signature(&good).expect("strip")), "unsigned"),
        (
            keys.write("tampered.bundle", &hostile::change_config(&good, "w", "9").expect("tamper")),
            "does not verify",
        ),
        (
            keys.write("flipped.bundle", &hostile::flip_component_byte(&good).expect("flip")),
            "changed after signing",
        ),
        (keys.sign("stranger.key", "spread", "placement", "stranger.bundle", &[]), "does not trust"),
        (keys.write("garbage.bundle", b"LOCUSPB1\xc1\xc1\xc1"), "does not decode"),
    ];
    let bare = locus_builtin::builtin("first-fit").expect("first-fit");
    let bare = keys.write("bare.wasm", bare);
    for agent in &cluster.agents {
        for (bundle, why) in &bad {
            let path = bundle.to_str().expect("utf-8");
            refused(agent, &["policy", "push", path, "--scope", "cluster"], why);
            refused(agent, &["policy", "load", path, "--slot", "placement"], why);
        }
        refused(
            agent,
            &["policy", "load", bare.to_str().expect("utf-8"), "--slot", "placement"],
            "signed bundles",
        );
    }
    let spread_path = spread.to_str().expect("utf-8");
    let entry = &cluster.agents[madrid[0]];
    refused(entry, &["policy", "push", spread_path, "--scope", "pop:nowhere"], "no agent of pop:nowhere");
    refused(
        entry,
        &["policy", "push", spread_path, "--scope", "cluster", "--canary", "1", "--shadow", "5"],
        "cannot be used with",
    );
    for agent in &cluster.agents {
        assert_eq!(status(agent, "cluster").pushes.len(), 1, "{}: a refused bundle left a push", agent.host);
        let place = active(agent, "placement");
        assert!(place == "best-fit:{}" || place == r#"spread:{"w":"2"}"#, "{}: {place}", agent.host);
    }

    // A canary that traps: it fails on its agent and every agent goes back.
    let panics = locus_builtin::hostile::PANIC;
    let panics = keys.write("panic.wasm", panics);
    let panics = keys.sign("operator.key", panics.to_str().expect("utf-8"), "placement", "panic.bundle", &[]);
    let canary = push(
        &cluster.agents[paris[0]],
        &panics,
        &["--scope", "pop:berlin", "--canary", "1", "--canary-decisions", "3", "--canary-seconds", "120"],
    );
    let Plan::Canary { agents, .. } = &canary.record.plan else { panic!("not a canary: {canary:?}") };
    assert_eq!(agents.len(), 1);
    let peers = status(&cluster.agents[berlin[0]], "pop:berlin").agents;
    let host = &peers.iter().find(|a| a.peer == agents[0]).expect("canary agent known").host;
    let ci = *berlin.iter().find(|&&i| &cluster.agents[i].host == host).expect("canary in Berlin");
    wait_until(Duration::from_secs(20), "the canary runs the trapping policy", || {
        active(&cluster.agents[ci], "placement") == "panic:{}"
    });
    for &i in &berlin {
        if i != ci {
            assert_eq!(active(&cluster.agents[i], "placement"), "best-fit:{}", "only the canary runs it");
        }
    }
    for n in 0..3 {
        let out = cluster.agents[ci].cli(&["vm", "create", &format!("canary-{n}")]);
        assert!(out.status.success(), "the fallback places while the canary traps: {out:?}");
    }
    wait_until(Duration::from_secs(20), "every agent sees the canary failed", || {
        cluster.agents.iter().all(|a| matches!(stage(a, "pop:berlin", &canary.id), Some(Stage::Failed(_))))
    });
    let Some(Stage::Failed(reason)) = stage(&cluster.agents[madrid[0]], "pop:berlin", &canary.id) else {
        unreachable!()
    };
    assert!(reason.contains("trap") && reason.contains(host.as_str()), "{reason}");
    wait_until(Duration::from_secs(20), "the canary agent went back", || {
        active(&cluster.agents[ci], "placement") == "best-fit:{}"
    });

    // A shadow run on Madrid's live requests reports agreement, never acting.
    let first_fit = keys.sign("operator.key", "first-fit", "placement", "first-fit.bundle", &[]);
    let shadow = push(&cluster.agents[madrid[0]], &first_fit, &["--scope", "pop:madrid", "--shadow", "10"]);
    wait_until(Duration::from_secs(20), "every Madrid agent runs the shadow", || {
        // An agent lists itself first.
        madrid.iter().all(|&i| {
            status(&cluster.agents[i], "pop:madrid").agents[0].shadows.iter().any(|s| s.push == shadow.id)
        })
    });
    for n in 0..4 {
        let out = cluster.agents[madrid[n % 3]].cli(&["vm", "create", &format!("shadowed-{n}")]);
        assert!(out.status.success(), "{out:?}");
    }
    for &i in &madrid {
        assert_eq!(active(&cluster.agents[i], "placement"), "best-fit:{}", "a shadow never acts");
    }
    wait_until(Duration::from_secs(20), "the shadow reports its calls", || {
        let s = status(&cluster.agents[madrid[1]], "pop:madrid");
        let calls: u64 =
            s.agents.iter().flat_map(|a| &a.shadows).filter(|r| r.push == shadow.id).map(|r| r.calls).sum();
        calls >= 4
    });
    let reports = status(&cluster.agents[madrid[1]], "pop:madrid");
    for r in reports.agents.iter().flat_map(|a| &a.shadows).filter(|r| r.push == shadow.id && r.calls > 0) {
        assert!(
            (0.0..=1.0).contains(&r.agreement) && r.agreed <= r.calls && r.candidate_p50_us > 0.0,
            "{r:?}"
        );
    }

    // An agent down during a push gets it when it comes back.
    let down = madrid[2];
    cluster.agents[down].terminate();
    let nearest = keys.sign("operator.key", "nearest", "placement", "nearest.bundle", &[]);
    push(&cluster.agents[madrid[0]], &nearest, &["--scope", "pop:madrid"]);
    wait_until(Duration::from_secs(20), "the running Madrid agents take the push", || {
        madrid[..2].iter().all(|&i| active(&cluster.agents[i], "placement") == "nearest:{}")
    });
    cluster.agents[down].spawn();
    wait_until(Duration::from_secs(30), "the restarted agent catches up", || {
        active(&cluster.agents[down], "placement") == "nearest:{}"
    });

    // Two pushes racing through two agents end with one winner everywhere.
    let a = keys.sign("operator.key", "relieve-overload", "migration", "a.bundle", &["--config", "race=a"]);
    let b = keys.sign("operator.key", "relieve-overload", "migration", "b.bundle", &["--config", "race=b"]);
    let (left, right) = (&cluster.agents[paris[1]], &cluster.agents[berlin[2]]);
    std::thread::scope(|s| {
        let one = s.spawn(|| push(left, &a, &["--scope", "cluster"]));
        let two = s.spawn(|| push(right, &b, &["--scope", "cluster"]));
        let (one, two) = (one.join().expect("push a"), two.join().expect("push b"));
        // Usually both are numbered before either hears the other (then the
        // bundle hash decides); either way one order holds everywhere.
        eprintln!(
            "racing pushes numbered {} and {}, entered {} ms apart",
            one.record.seq,
            two.record.seq,
            one.record.pushed_at_ms.abs_diff(two.record.pushed_at_ms)
        );
        let winner = if one.record.order() > two.record.order() { "race=a" } else { "race=b" };
        let _ = WINNER.set(winner.to_owned());
    });
    let winner = WINNER.get().expect("raced");
    let (k, v) = winner.split_once('=').expect("k=v");
    let expected = format!("relieve-overload:{{\"{k}\":\"{v}\"}}");
    wait_until(Duration::from_secs(30), "every agent runs the push ordered last", || {
        cluster.agents.iter().all(|ag| active(ag, "migration") == expected)
    });

    // Rolling Paris back past its first push returns it to its own policy.
    let out =
        cluster.agents[madrid[1]].cli(&["policy", "rollback", "--slot", "placement", "--scope", "pop:paris"]);
    assert!(out.status.success(), "{out:?}");
    wait_until(Duration::from_secs(20), "Paris runs what it ran before any push", || {
        paris.iter().all(|&i| active(&cluster.agents[i], "placement") == "best-fit:{}")
    });
    for agent in &mut cluster.agents {
        let log = agent.log();
        let crashed = log.lines().find(|l| l.starts_with("thread '") && l.contains("panicked"));
        assert!(crashed.is_none(), "{}: {crashed:?}", agent.host);
        assert!(
            agent.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none()),
            "{} exited",
            agent.host
        );
    }
}

/// A peer holding the cluster key (a compromised agent) announces a push of
/// a bundle whose signature it stripped, serves that bundle when asked, and
/// floods the policy topic with garbage: every agent fetches, refuses the
/// bundle with the reason in its status, refuses a malformed push, keeps
/// its policy and keeps serving.
#[test]
fn processes_a_hostile_insider_cannot_make_agents_run_an_unsigned_push() {
    let keys = Keys::new();
    let trusted = format!("policies.trusted-keys=[\"{}\"]", keys.public);
    let pops: [PopSpec; 1] = [("lyon", "FR", 45.76, 4.84, 3)];
    let cluster = Cluster::start(115, &pops, |_, _| 0, &["--set", &trusted]);
    wait_until(Duration::from_secs(30), "the agents hear each other", || {
        cluster.agents.iter().all(|a| status(a, "cluster").agents.len() == 3)
    });
    let signed = keys.sign("operator.key", "spread", "placement", "spread.bundle", &[]);
    let stripped = hostile::strip_signature(&std::fs::read(&signed).expect("bundle")).expect("strip");
    let key = std::fs::read_to_string(&cluster.key).expect("cluster key");
    let psk: libp2p::pnet::PreSharedKey = key.parse().expect("psk");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("rt");
    let stop = tokio_util::sync::CancellationToken::new();
    let rogue = rt.spawn(rogue(psk, stripped, stop.clone()));
    let refused_all = || {
        cluster.agents.iter().all(|a| {
            status(a, "pop:lyon")
                .agents
                .first()
                .is_some_and(|me| me.problems.iter().any(|p| p.contains("unsigned")))
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !refused_all() {
        if std::time::Instant::now() > deadline {
            let logs: Vec<String> =
                cluster.agents.iter().map(|a| format!("{}:\n{}", a.host, a.log())).collect();
            panic!("not every agent refused the stripped bundle; logs:\n{}", logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for agent in &cluster.agents {
        assert_eq!(active(agent, "placement"), "best-fit:{}", "{} runs its own policy", agent.host);
        let out = agent.cli(&["vm", "create", &format!("after-{}", agent.host)]);
        assert!(out.status.success(), "{} still serves: {out:?}", agent.host);
        assert!(
            agent.log().contains("policy gossip refused"),
            "{}: the garbage was seen and refused",
            agent.host
        );
        assert!(
            agent.log().contains("heard from a peer is refused"),
            "{}: the malformed push too",
            agent.host
        );
    }
    stop.cancel();
    let _ = rt.block_on(rogue);
}

/// The hostile peer: connects to the three agents, announces a push of `bundle`
/// with itself as the origin, answers every bundle question with it, and
/// publishes garbage now and then, until `stop`.
async fn rogue(psk: libp2p::pnet::PreSharedKey, bundle: Vec<u8>, stop: tokio_util::sync::CancellationToken) {
    use libp2p::futures::StreamExt;
    use libp2p::{gossipsub, request_response};
    use locus::overlay::codec::Codec;
    use locus::rollout::table::{BundleRef, Record, Scope};
    use locus::rollout::wire;
    use serde_bytes::ByteBuf;

    #[derive(libp2p::swarm::NetworkBehaviour)]
    struct Rogue {
        gossipsub: gossipsub::Behaviour,
        bundles: request_response::Behaviour<Codec<ByteBuf, ByteBuf>>,
    }
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_other_transport(|key| common::keyed_transport(psk, key))
        .expect("transport")
        .with_behaviour(|key| Rogue {
            gossipsub: gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Signed(key.clone()),
                gossipsub::ConfigBuilder::default()
                    .heartbeat_interval(Duration::from_secs(1))
                    .build()
                    .expect("gossipsub config"),
            )
            .expect("gossipsub"),
            bundles: request_response::Behaviour::with_codec(
                Codec::new(32 << 20, Default::default()),
                [(
                    libp2p::StreamProtocol::new(wire::BUNDLE_PROTOCOL),
                    request_response::ProtocolSupport::Full,
                )],
                request_response::Config::default(),
            ),
        })
        .expect("behaviour")
        .build();
    let topic = gossipsub::IdentTopic::new(wire::POLICY_TOPIC);
    swarm.behaviour_mut().gossipsub.subscribe(&topic).expect("subscribe");
    for h in 1..=3 {
        let addr: libp2p::Multiaddr = format!("/ip4/127.115.0.{h}/tcp/7946").parse().expect("addr");
        swarm.dial(addr).expect("dial");
    }
    let m = locus::bundle::peek(&bundle).expect("manifest");
    let record = Record {
        scope: Scope::Cluster,
        slot: m.slot,
        seq: 1,
        bundle: Some(BundleRef {
            hash: locus::bundle::sha256(&bundle),
            name: m.name,
            version: m.version,
            component: m.component,
            config: m.config,
            size: bundle.len() as u64,
            signer: None,
        }),
        origin: swarm.local_peer_id().to_string(),
        pushed_at_ms: 0,
        rollback: false,
        plan: Plan::Direct,
        verdicts: Default::default(),
    };
    // A record no agent would write: a hash that is not one, cut in the
    // middle of a character where an agent shortens it for its logs.
    let mut malformed = record.clone();
    if let Some(b) = malformed.bundle.as_mut() {
        b.hash = "aé".repeat(20);
    }
    let mut every = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {
                let g = &mut swarm.behaviour_mut().gossipsub;
                let _ = g.publish(topic.clone(), wire::record(&record));
                let _ = g.publish(topic.clone(), b"\xc1\xc1 not a policy message".to_vec());
                let _ = g.publish(topic.clone(), wire::record(&malformed));
            }
            event = swarm.select_next_some() => {
                if let libp2p::swarm::SwarmEvent::Behaviour(RogueEvent::Bundles(request_response::Event::Message {
                    message: request_response::Message::Request { channel, .. }, ..
                })) = event
                {
                    let reply = ByteBuf::from(wire::bundle_reply(bundle.clone()));
                    let _ = swarm.behaviour_mut().bundles.send_response(channel, reply);
                }
            }
        }
    }
}
