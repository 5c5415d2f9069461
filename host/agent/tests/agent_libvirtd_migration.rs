//! Live migration between two real libvirt daemons, each with its own
//! agent: the system libvirtd (`scripts/libvirtd.sh`) and a peer standing
//! for another host (`scripts/libvirtd-peer.sh`: its own mount namespace,
//! host UUID and migration ports; its agent runs in that namespace, so the
//! two agents' image stores are at the same path with different files, as
//! on two hosts configured alike). The guest boots from its own qcow2 disk
//! on a base image imported on one host only: the other fetches the base
//! from it over the overlay before the guest lands there (at its create or
//! its first move), and the migration copies the guest's disk, never the
//! base.
//!
//! Then the hand-off is attacked: the source agent, the destination agent
//! and a libvirtd are each killed or restarted in the middle of a
//! migration, and afterwards exactly one copy runs, marked as one host's
//! and recorded by that host's agent alone, and both agents agree. Last,
//! the VM's host loses its intent store and takes its guest back.

mod common;

use common::{Agent, locus_bin, repo_root, wait_until};
use locus_core::hypervisor::DomainState;
use locus_core::node::VmStatus;
use std::collections::HashMap;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const SHARED: &str = "/srv/locus";

fn script(name: &str, args: &[&str]) -> String {
    let out = Command::new(repo_root().join("scripts").join(name)).args(args).output().expect("run script");
    assert!(out.status.success(), "scripts/{name} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The two hosts: each agent, its libvirt URI as seen from the test, and
/// the URI its peer's libvirtd migrates to.
struct Hosts {
    agents: [Agent; 2],
    uris: [String; 2],
    _key: tempfile::TempDir,
}

fn env() -> HashMap<String, String> {
    script("libvirtd-peer.sh", &["env"])
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn start_hosts() -> Hosts {
    script("libvirtd.sh", &["start"]);
    script("libvirtd-peer.sh", &["start"]);
    let env = env();
    // What an earlier failed run left.
    for uri in ["qemu:///system", env["LOCUS_PEER_URI"].as_str()] {
        for d in virsh(uri, &["list", "--all", "--name"]).1.lines().filter(|d| d.starts_with("mig-")) {
            virsh(uri, &["destroy", d]);
            virsh(uri, &["undefine", d]);
        }
    }
    let peer_root = std::path::Path::new(&env["LOCUS_PEER_ROOT"]);
    // Each host's store starts empty (the stores are these directories
    // themselves: `images.dir` below).
    for store in [std::path::PathBuf::from(SHARED), peer_root.join("shared")] {
        for entry in std::fs::read_dir(&store).into_iter().flatten().flatten() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let key = tempfile::tempdir().expect("tempdir");
    let key_file = key.path().join("cluster.key");
    let out = Command::new(locus_bin()).args(["cluster", "keygen"]).output().expect("keygen");
    std::fs::write(&key_file, &out.stdout).expect("key");
    let key_arg = key_file.display().to_string();
    let pid = std::process::id();
    let common = |ip: &str, migration_uri: &str| -> Vec<String> {
        [
            "--pop",
            "lab",
            "--cluster-key",
            &key_arg,
            "--p2p-listen",
            &format!("/ip4/{ip}/tcp/7946"),
            "--bootstrap",
            "/ip4/127.61.0.1/tcp/7946",
            "--set",
            "sample-interval-ms=250",
            "--set",
            &format!("images.dir={SHARED:?}"),
            "--set",
            &format!("migration-uri={migration_uri:?}"),
            "--set",
            "pop.jurisdiction=FR",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let a_args = common("127.61.0.1", &env["LOCUS_HOST_URI_FROM_PEER"]);
    let b_args = common("127.61.0.2", &env["LOCUS_PEER_URI"]);
    let a_args: Vec<&str> = a_args.iter().map(String::as_str).collect();
    let b_args: Vec<&str> = b_args.iter().map(String::as_str).collect();
    let a = Agent::start_wrapped(&[], "qemu:///system", &format!("mig-a-{pid}"), &a_args);
    let peer_exec = repo_root().join("scripts/libvirtd-peer.sh").display().to_string();
    let b = Agent::start_wrapped(&[&peer_exec, "exec"], "qemu:///system", &format!("mig-b-{pid}"), &b_args);
    let uris = ["qemu:///system".to_owned(), env["LOCUS_PEER_URI"].clone()];
    Hosts { agents: [a, b], uris, _key: key }
}

fn virsh(uri: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("virsh").arg("-c").arg(uri).args(args).output().expect("run virsh");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn show(agent: &Agent, vm: &str) -> Option<VmStatus> {
    let out = agent.cli(&["vm", "show", vm, "--json"]);
    out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
}

fn listed(agent: &Agent) -> Vec<String> {
    let out = agent.cli(&["vm", "list", "--json"]);
    let vms: Vec<VmStatus> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    vms.into_iter().map(|v| v.name).collect()
}

impl Hosts {
    /// Waits until each agent sees the other alive.
    fn wait_acquainted(&self) {
        wait_until(Duration::from_secs(20), "the two agents see each other alive", || {
            self.agents.iter().all(|x| {
                let out = x.cli(&["cluster", "status", "--json"]);
                String::from_utf8_lossy(&out.stdout).matches("\"liveness\": \"alive\"").count() >= 2
            })
        });
    }

    /// Which daemons have the domain, and whether it runs there.
    fn copies(&self, vm: &str) -> Vec<(usize, String)> {
        (0..2)
            .filter_map(|i| {
                let (ok, state) = virsh(&self.uris[i], &["domstate", vm]);
                ok.then_some((i, state))
            })
            .collect()
    }

    /// Exactly one copy, running, marked as its host's, recorded by that
    /// host's agent alone with no hand-off left, and both agents' `vm show`
    /// agree; returns the host's index.
    fn settled(&self, vm: &str) -> Option<usize> {
        let copies = self.copies(vm);
        let [(i, state)] = copies.as_slice() else { return None };
        let (_, xml) = virsh(&self.uris[*i], &["dumpxml", vm]);
        let owner = format!("owner=\"{}\"", self.agents[*i].host);
        let records: Vec<usize> =
            (0..2).filter(|&k| listed(&self.agents[k]).iter().any(|n| n == vm)).collect();
        let shows: Vec<Option<VmStatus>> = self.agents.iter().map(|a| show(a, vm)).collect();
        let agree = shows
            .iter()
            .all(|s| s.as_ref().is_some_and(|s| s.host == self.agents[*i].host && s.handoff.is_none()));
        (state == "running" && xml.contains(&owner) && records == vec![*i] && agree).then_some(*i)
    }

    fn wait_settled(&self, vm: &str, what: &str) -> usize {
        let mut at = None;
        wait_until(Duration::from_secs(120), what, || {
            at = self.settled(vm);
            at.is_some()
        });
        at.unwrap_or(0)
    }

    /// Starts `vm migrate` from host `from` to the other, without waiting.
    fn migrate_async(&self, from: usize, vm: &str) -> Child {
        Command::new(locus_bin())
            .args(["vm", "migrate", vm, "--to", &self.agents[1 - from].host, "--socket"])
            .arg(self.agents[from].socket())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn locus vm migrate")
    }

    /// Waits until libvirt runs a migration job for `vm` on host `from`.
    fn wait_migrating(&self, from: usize, vm: &str, asked: &mut Child) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, info) = virsh(&self.uris[from], &["domjobinfo", vm]);
            if info.lines().any(|l| l.starts_with("Job type:") && !l.contains("None")) {
                return;
            }
            if let Ok(Some(status)) = asked.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = asked.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                panic!(
                    "vm migrate ended before its job was seen ({status}): {err}\n{}",
                    self.agents[from].log()
                );
            }
            assert!(Instant::now() < deadline, "the migration job did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn cpu_time(agent: &Agent, vm: &str) -> u64 {
    show(agent, vm).map_or(0, |s| s.cpu_time_ns)
}

#[test]
fn libvirtd_live_migration_moves_a_running_qcow2_guest_and_survives_kills_a_restarted_libvirtd_and_a_lost_intent_store()
 {
    let mut hosts = start_hosts();
    hosts.wait_acquainted();
    // A guest that boots from a disk: a boot sector that loops (the disk is
    // the qcow2 overlay, copied; the base is imported on the first host and
    // fetched by the second when a guest first lands there).
    let work = tempfile::tempdir().expect("tempdir");
    let file = work.path().join("spin.raw");
    let mut image = vec![0u8; 1 << 20];
    image[..2].copy_from_slice(&[0xEB, 0xFE]); // jmp $
    image[510] = 0x55;
    image[511] = 0xAA;
    std::fs::write(&file, &image).expect("image");
    let imported: serde_json::Value =
        hosts.agents[0].json(&["image", "import", file.to_str().expect("utf-8"), "--name", "spin"]);
    let vm = format!("mig-{}", std::process::id());
    let created: VmStatus =
        hosts.agents[0].json(&["vm", "create", &vm, "--memory-mib", "64", "--image", "spin"]);
    let mut at = hosts.agents.iter().position(|x| x.host == created.host).expect("its host");
    let (_, uuid) = virsh(&hosts.uris[at], &["domuuid", &vm]);

    // 1. A plain live migration, entered at the source's PoP-mate; the
    // source shows its progress meanwhile.
    let to = 1 - at;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (socket, vm, stop) = (hosts.agents[at].socket(), vm.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut seen = vec![];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let out = Command::new(locus_bin())
                    .args(["vm", "show", &vm, "--json", "--socket"])
                    .arg(&socket)
                    .output()
                    .expect("run locus vm show");
                let status: Option<VmStatus> = serde_json::from_slice(&out.stdout).ok();
                seen.extend(status.and_then(|s| s.migration));
                std::thread::sleep(Duration::from_millis(50));
            }
            seen
        })
    };
    let started = Instant::now();
    let moved: VmStatus = hosts.agents[to].json(&["vm", "migrate", &vm, "--to", &hosts.agents[to].host]);
    let took = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let progress = watcher.join().expect("the watcher");
    // A 64 MiB guest of zero pages copies in well under a second: the
    // samples may all fall in the job's setup, before libvirt counts bytes.
    assert!(
        progress.iter().any(|p| p.elapsed_ms > 0),
        "the source reports the job's progress while it runs: {progress:?}"
    );
    eprintln!(
        "progress last seen during the migration: {}",
        progress.last().map(|p| p.to_string()).unwrap_or_default()
    );
    assert_eq!(moved.host, hosts.agents[to].host);
    assert_eq!((moved.generation, moved.state), (1, DomainState::Running));
    assert_eq!(hosts.wait_settled(&vm, "the first migration settles"), to);
    assert_eq!(virsh(&hosts.uris[to], &["domuuid", &vm]).1, uuid, "the same guest");
    assert!(hosts.agents[at].log().contains("live-migrating"), "{}", hosts.agents[at].log());
    let before = cpu_time(&hosts.agents[to], &vm);
    std::thread::sleep(Duration::from_secs(1));
    assert!(cpu_time(&hosts.agents[to], &vm) > before, "the guest keeps running at the destination");
    let (_, xml) = virsh(&hosts.uris[to], &["dumpxml", &vm, "--inactive"]);
    assert!(xml.contains(&format!("owner=\"{}\"", hosts.agents[to].host)), "persistent and re-marked: {xml}");
    eprintln!("live migration through the agents: {took:?}");
    // Both hosts hold the base now, the same bytes: the second fetched it
    // from the first (at the guest's create, or before this move).
    for agent in &hosts.agents {
        let held: serde_json::Value = agent.json(&["image", "show", "spin"]);
        assert_eq!(held["hash"], imported["hash"], "{} holds the base", agent.host);
    }
    assert!(
        hosts.agents[1].log().contains("waits for its image"),
        "the second host fetched the base: {}",
        hosts.agents[1].log()
    );
    at = to;

    // 2-4. Attacks in the middle of a migration; whatever happens, one copy.
    for attack in ["kill the source agent", "kill the destination agent", "restart the source's libvirtd"] {
        let from = at;
        let mut asked = hosts.migrate_async(from, &vm);
        hosts.wait_migrating(from, &vm, &mut asked);
        match attack {
            "kill the source agent" => hosts.agents[from].kill9(),
            "kill the destination agent" => hosts.agents[1 - from].kill9(),
            _ => {
                let script_name = if from == 0 { "libvirtd.sh" } else { "libvirtd-peer.sh" };
                script(script_name, &["stop"]);
                script(script_name, &["start"]);
            }
        }
        let _ = asked.wait();
        for agent in hosts.agents.iter_mut() {
            if agent.child.is_none() {
                agent.spawn();
            }
        }
        at = hosts.wait_settled(&vm, &format!("one copy after: {attack}"));
        hosts.wait_acquainted();
        assert_eq!(virsh(&hosts.uris[at], &["domuuid", &vm]).1, uuid, "{attack}: the same guest");
        eprintln!("{attack}: the VM ended on host {}", hosts.agents[at].host);
    }

    // 5. The VM's host loses its intent store (a disk replaced, a state
    // directory wiped) while the guest runs on: its domain has no intent
    // there, and the generation in its mark, matched against the overlay's
    // record, makes it that host's again, the same guest.
    let generation = show(&hosts.agents[at], &vm).map(|s| s.generation).expect("shown");
    hosts.agents[at].kill9();
    std::fs::remove_file(hosts.agents[at].dir.path().join("state.redb")).expect("remove the intent store");
    hosts.agents[at].spawn();
    assert_eq!(hosts.wait_settled(&vm, "the orphaned guest is taken back"), at);
    assert_eq!(virsh(&hosts.uris[at], &["domuuid", &vm]).1, uuid, "the same guest, not a new one");
    assert_eq!(show(&hosts.agents[at], &vm).map(|s| s.generation), Some(generation));
    let log = hosts.agents[at].log();
    assert!(log.contains(&format!("vm {vm}: its domain had no intent here")), "{log}");

    let _: serde_json::Value = hosts.agents[at].json(&["vm", "delete", &vm]);
    assert!(hosts.copies(&vm).is_empty());
}
