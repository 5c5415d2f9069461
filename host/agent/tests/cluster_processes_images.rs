//! Images travelling between `locus agent` processes in two PoPs on
//! loopback (test driver, real libp2p overlay with a cluster key, 80 ms
//! between the PoPs, uploads paced): a fetch takes chunks from every
//! holder and checks each; a holder whose copy went bad on its disk sends
//! corrupt chunks that are dropped and counted, and the copy is whole; a
//! holder killed mid-transfer and the fetching agent killed and started
//! again both leave a transfer that finishes; placement prefers a host
//! that holds a VM's image; a VM placed on a host without its image waits
//! for it and then runs; a PoP is warmed ahead of time; any agent lists
//! where every image is.

mod common;

use common::{Agent, Cluster, PopSpec, wait_until};
use locus::images::ImageInfo;
use locus::images::transfer::wire::Inventory;
use locus::images::transfer::{Stage, Transfer, Transfers};
use std::path::PathBuf;
use std::time::Duration;

const POPS: [PopSpec; 2] = [("paris", "FR", 48.86, 2.35, 3), ("berlin", "DE", 52.52, 13.40, 3)];

fn peer(agent: &Agent) -> String {
    let v: serde_json::Value = agent.json(&["cluster", "status"]);
    v["overlay"]["peer"].as_str().expect("peer id").to_owned()
}

/// A raw disk of `mib` MiB of bytes no two calls share.
fn disk(dir: &std::path::Path, name: &str, mib: usize, seed: u8) -> PathBuf {
    let path = dir.join(format!("{name}.raw"));
    let mut bytes = vec![0u8; mib << 20];
    let mut x: u32 = 0x9e37_79b9 ^ u32::from(seed);
    for b in bytes.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    std::fs::write(&path, bytes).expect("write disk");
    path
}

fn import(agent: &Agent, file: &std::path::Path, name: &str) -> ImageInfo {
    agent.json(&["image", "import", file.to_str().expect("utf-8"), "--name", name])
}

fn transfer(agent: &Agent, hash: &str) -> Option<Transfer> {
    let t: Transfers = agent.json(&["image", "transfers"]);
    t.fetches.into_iter().find(|f| f.hash == hash)
}

/// Starts a fetch and returns at once.
fn start_fetch(agent: &Agent, image: &str) {
    let out = agent.cli(&["image", "fetch", image, "--no-wait"]);
    assert!(out.status.success(), "fetch {image}: {}", String::from_utf8_lossy(&out.stderr));
}

fn wait_done(agent: &Agent, hash: &str, within: Duration) -> Transfer {
    wait_until(within, &format!("{} holds {hash}", agent.host), || {
        agent.cli(&["image", "show", hash]).status.success()
            && transfer(agent, hash).is_none_or(|t| t.stage == Stage::Done)
    });
    let info: ImageInfo = agent.json(&["image", "show", hash]);
    assert_eq!(info.hash, hash);
    transfer(agent, hash).expect("the ended fetch is reported")
}

fn blob(agent: &Agent, hash: &str) -> PathBuf {
    agent.dir.path().join("images/blobs").join(hash.trim_start_matches("sha256:"))
}

#[test]
fn cluster_processes_images_swarm_resist_corruption_and_survive_kills() {
    // 40 Mbit/s per holder: a 32 MiB image takes about 6.7 s from one.
    let cluster = Cluster::start(
        120,
        &POPS,
        |a, b| if a == b { 0 } else { 80 },
        &["--set", "images.upload-limit-mbit=40"],
    );
    let mut agents = cluster.agents;
    let files = tempfile::tempdir().expect("tempdir");
    wait_until(Duration::from_secs(30), "every agent sees the 6 hosts", || {
        agents.iter().all(|a| {
            let v: serde_json::Value = a.json(&["cluster", "status"]);
            v["overlay"]["connected"].as_u64().unwrap_or(0) >= 5
        })
    });
    let (paris0, paris1, paris2, berlin0, berlin1, berlin2) = (0, 1, 2, 3, 4, 5);

    // 1. Imported in Paris, fetched by name in Berlin: checked whole,
    //    named there, and served from then on.
    let a = import(&agents[paris0], &disk(files.path(), "a", 16, 1), "alpine");
    let out = agents[berlin0].cli(&["image", "fetch", "alpine"]);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), agents[berlin0].log());
    let got: ImageInfo = agents[berlin0].json(&["image", "show", "alpine"]);
    assert_eq!(got.hash, a.hash);
    assert_eq!(got.manifest, a.manifest, "the same bytes have the same manifest on every host");
    let t = transfer(&agents[berlin0], &a.hash).expect("reported");
    assert_eq!(t.sources.iter().map(|s| s.chunks).sum::<u64>(), 16);
    assert!(t.sources.iter().any(|s| s.peer == peer(&agents[paris0])));
    assert!(
        agents[berlin0].cli(&["image", "fetch", "alpine"]).status.success(),
        "fetching what is held answers at once"
    );

    let out = agents[berlin0].cli(&["image", "fetch", "nosuch"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no agent of the cluster holds image nosuch"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for bad in ["../etc/passwd", "sha256:xyz"] {
        assert!(!agents[berlin0].cli(&["image", "fetch", bad]).status.success(), "{bad} refused");
    }

    // 2. Berlin-0's copy rots on its disk; Berlin-1 asks its PoP-mate
    //    first, gets corrupt chunks, drops them, counts them, and ends
    //    with the right bytes from Paris.
    let path = blob(&agents[berlin0], &a.hash);
    let mut bytes = std::fs::read(&path).expect("read blob");
    for chunk in 0..16 {
        bytes[chunk << 20] ^= 0xff;
    }
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).expect("chmod");
    std::fs::write(&path, &bytes).expect("rot");
    let t = {
        let out = agents[berlin1].cli(&["image", "fetch", &a.hash]);
        assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), agents[berlin1].log());
        transfer(&agents[berlin1], &a.hash).expect("reported")
    };
    let rotten = t.sources.iter().find(|s| s.peer == peer(&agents[berlin0]));
    assert!(rotten.is_some_and(|s| s.corrupt >= 1 && s.chunks == 0), "corrupt chunks counted: {t:?}");
    assert_eq!(t.sources.iter().map(|s| s.chunks).sum::<u64>(), 16);
    let copy = std::fs::read(blob(&agents[berlin1], &a.hash)).expect("copy");
    assert_eq!(copy, std::fs::read(files.path().join("a.raw")).expect("original"));
    assert!(agents[berlin1].log().contains("does not match the manifest"));

    // Where every image is, from any agent.
    let all: Vec<Inventory> = agents[paris2].json(&["image", "list", "--cluster"]);
    assert_eq!(all.len(), 6, "every agent answers");
    let holders: Vec<&str> = all
        .iter()
        .filter(|i| i.images.iter().any(|h| h.hash == a.hash && h.have_chunks == h.chunks))
        .map(|i| i.host.as_str())
        .collect();
    assert_eq!(holders, ["berlin-0", "berlin-1", "paris-0"]);
    let table = agents[paris2].cli(&["image", "list", "--cluster"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("alpine"));

    // Paris warmed from Berlin: each Paris agent fetches alpine (Paris-0
    // holds it already).
    let out = agents[berlin2].cli(&["image", "prefetch", "alpine", "--pop", "paris"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("paris-0: held already") && said.contains("paris-1: fetching"), "{said}");
    for p in [paris1, paris2] {
        wait_done(&agents[p], &a.hash, Duration::from_secs(60));
    }
    assert!(!agents[berlin2].cli(&["image", "show", "alpine"]).status.success(), "Berlin-2 was not asked");

    // Placement knows where images are: of Berlin's three identical empty
    // hosts, best-fit puts a VM on alpine on one that holds alpine.
    std::thread::sleep(Duration::from_secs(3));
    let placed: serde_json::Value =
        agents[berlin2].json(&["vm", "create", "near", "--memory-mib", "256", "--image", "alpine"]);
    let at = placed["host"].as_str().expect("host");
    assert!(
        at == agents[berlin0].host || at == agents[berlin1].host,
        "placed on {at}, which lacks the image"
    );
    let holder = agents.iter().find(|a| a.host == at).expect("its agent");
    let _: serde_json::Value = holder.json(&["vm", "delete", "near"]);

    // 3. A 48 MiB image held by Paris-0 and Paris-1. Paris-2 fetches it;
    //    Paris-1 is killed mid-transfer, and so is the fetching agent,
    //    which is started again: the fetch resumes from the chunks it
    //    holds and finishes from Paris-0.
    let b = import(&agents[paris0], &disk(files.path(), "b", 48, 2), "bigger");
    start_fetch(&agents[paris1], &b.hash);
    wait_done(&agents[paris1], &b.hash, Duration::from_secs(60));
    start_fetch(&agents[paris2], "bigger");
    wait_until(Duration::from_secs(30), "paris-2 holds a few chunks", || {
        transfer(&agents[paris2], &b.hash).is_some_and(|t| t.have_chunks >= 8)
    });
    agents[paris1].kill9();
    std::thread::sleep(Duration::from_millis(500));
    agents[paris2].kill9();
    let part = agents[paris2]
        .dir
        .path()
        .join("images/fetching")
        .join(format!("{}.part", b.hash.trim_start_matches("sha256:")));
    assert!(part.exists(), "the partial file is left for the restart");
    agents[paris2].spawn();
    let t = wait_done(&agents[paris2], &b.hash, Duration::from_secs(90));
    let after: u64 = t.sources.iter().map(|s| s.chunks).sum();
    assert!(after < 48, "the restarted fetch took only what was missing ({after} of 48)");
    assert!(agents[paris2].log().contains("resuming an image fetch"));
    let names: ImageInfo = agents[paris2].json(&["image", "show", "bigger"]);
    assert_eq!(names.hash, b.hash, "named as asked before the restart");
    assert!(!part.exists(), "nothing left in fetching/");

    // 4. Berlin-2 is asked for a VM on an image no Berlin host holds: the
    //    VM waits on the host it was placed on for the image, then runs.
    let out = agents[berlin2].cli(&["vm", "create", "web-1", "--memory-mib", "256", "--image", "bigger"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut at = String::new();
    wait_until(Duration::from_secs(60), "web-1 runs", || {
        let v: serde_json::Value = agents[berlin2].json(&["vm", "show", "web-1"]);
        at = v["host"].as_str().unwrap_or_default().to_owned();
        v["state"].as_str() == Some("running")
    });
    let host = agents.iter().find(|a| a.host == at).expect("placed in the cluster");
    let held: ImageInfo = host.json(&["image", "show", &b.hash]);
    assert_eq!(held.used_by, ["web-1"]);
    assert!(host.log().contains("waits for its image"), "{}", host.log());

    // The killed holder comes back and serves what it holds; nobody
    // stopped serving.
    agents[paris1].spawn();
    let t: Transfers = agents[paris1].json(&["image", "transfers"]);
    assert!(t.fetches.is_empty(), "nothing to resume on a holder: {t:?}");
    for a in &agents {
        assert!(a.cli(&["host", "status"]).status.success(), "{} serves", a.host);
    }
}
