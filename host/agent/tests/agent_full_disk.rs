//! `locus agent` with its state directory on a small tmpfs that fills up
//! (mounting needs root; `make test` and CI run as root): writes are
//! refused with 507, reads, stops and deletes go on, the agent stays up,
//! also across a restart on the full disk, and recovers when space returns.

mod common;

use common::{Agent, wait_until};
use locus_core::hypervisor::DomainState;
use locus_core::node::{HostStatus, VmStatus};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mount point");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("run mount")
            .success();
        assert!(ok, "mounting a tmpfs needs root (make test runs as root)");
        Tmpfs(at.to_owned())
    }

    /// Writes a file until the filesystem has no room left.
    fn fill(&self, name: &str) {
        let mut f = std::fs::File::create(self.0.join(name)).expect("filler");
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Bundle `n` of the spread policy (its configuration says `n`), signed
/// with a key made in `dir` the first time.
fn signed_bundle(dir: &Path, n: u32) -> String {
    let key = dir.join("operator.key");
    let bundle = dir.join(format!("spread-{n}.bundle"));
    let locus = common::locus_bin();
    if !key.exists() {
        let ok = Command::new(&locus).args(["policy", "keygen", "--out"]).arg(&key).output().expect("keygen");
        assert!(ok.status.success(), "{ok:?}");
    }
    let ok = Command::new(&locus)
        .args(["policy", "sign", "spread", "--slot", "placement", "--config", &format!("n={n}"), "--key"])
        .arg(&key)
        .arg("--out")
        .arg(&bundle)
        .output()
        .expect("sign");
    assert!(ok.status.success(), "{ok:?}");
    bundle.display().to_string()
}

fn create(agent: &Agent, name: &str) -> std::process::Output {
    agent.cli(&["vm", "create", name, "--memory-mib", "64"])
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn full_disk_on_a_tmpfs_writes_get_507_the_agent_stays_up_and_recovers_when_space_returns() {
    let outer = tempfile::tempdir().expect("tempdir");
    let fs = Tmpfs::mount(&outer.path().join("mnt"), "8m");
    let state = fs.0.join("state");
    let mut agent = Agent::start_with_state("test:///default", "full", &state, &["--set", "reserve-mib=1"]);
    for name in ["a", "b"] {
        assert!(create(&agent, name).status.success());
    }
    fs.fill("filler");

    // Until the reserve is spent a write may still succeed; then creates
    // are refused with a reason, and the agent keeps answering.
    let mut refused = None;
    for i in 0..20 {
        let out = create(&agent, &format!("c{i}"));
        if !out.status.success() {
            refused = Some(stderr(&out));
            break;
        }
    }
    let refused = refused.expect("a create is refused once the disk is full");
    assert!(refused.contains("507") && refused.contains("state directory is full"), "{refused}");
    let vms: Vec<VmStatus> = agent.json(&["vm", "list"]);
    assert!(vms.iter().any(|v| v.name == "a"), "reads answer: {vms:?}");
    let stopped: VmStatus = agent.json(&["vm", "stop", "a", "--force"]);
    assert_eq!(stopped.state, DomainState::Shutoff, "a stop is recorded from the reserve");
    let _: serde_json::Value = agent.json(&["vm", "delete", "b"]);
    let out = agent.cli(&["vm", "start", "a"]);
    assert!(stderr(&out).contains("507"), "a start needs room: {}", stderr(&out));
    let image = outer.path().join("disk.raw");
    std::fs::write(&image, vec![0u8; 2 << 20]).expect("image");
    let out = agent.cli(&["image", "import", image.to_str().expect("utf-8"), "--name", "disk"]);
    assert!(stderr(&out).contains("507") && stderr(&out).contains("no space"), "{}", stderr(&out));
    assert!(agent.log().matches("the state directory is full").count() == 1, "said once:\n{}", agent.log());
    // The store may have free pages left for a few bundles; then a push is
    // refused before anything is announced.
    let mut refused = None;
    for i in 0..40 {
        let bundle = signed_bundle(outer.path(), i);
        let out = agent.cli(&["policy", "push", &bundle, "--scope", "cluster", "--no-wait"]);
        if !out.status.success() {
            refused = Some(stderr(&out));
            break;
        }
    }
    let refused = refused.expect("a push is refused once the store is full");
    assert!(refused.contains("507") && refused.contains("nothing was pushed"), "{refused}");

    // Killed and started again on the still-full disk: it comes up and refuses the same way.
    agent.kill9();
    agent.spawn();
    let host: HostStatus = agent.json(&["host", "status"]);
    assert_eq!(host.vms.total, agent.json::<Vec<VmStatus>>(&["vm", "list"]).len() as u32);
    let out = create(&agent, "after-restart");
    assert!(stderr(&out).contains("507"), "{}", stderr(&out));

    // Space returns: the agent takes its reserve back and accepts creates.
    std::fs::remove_file(fs.0.join("filler")).expect("free space");
    wait_until(Duration::from_secs(15), "creates are accepted again", || {
        create(&agent, "recovered").status.success()
    });
    let _: VmStatus = agent.json(&["vm", "start", "a"]);
    assert!(agent.log().contains("has room again"), "{}", agent.log());
    let out = agent.cli(&["policy", "push", &signed_bundle(outer.path(), 99), "--scope", "cluster"]);
    assert!(out.status.success(), "a push goes through once there is room: {}", stderr(&out));
    agent.terminate();
}

#[test]
fn full_disk_on_a_tmpfs_the_store_refuses_a_write_then_reopens_and_takes_the_next() {
    use locus_core::VmRequest;
    use locus_core::intent::{Change, Desired, VmIntent};
    let outer = tempfile::tempdir().expect("tempdir");
    let fs = Tmpfs::mount(&outer.path().join("mnt"), "2m");
    let store = locus::store::Store::open(&fs.0.join("state.redb")).expect("open");
    let intent = |i: usize| {
        let mut spec = VmRequest { name: format!("vm{i}"), vcpus: 1, memory_mib: 64, ..VmRequest::default() };
        // Big records, so that the file must grow.
        spec.labels.insert("pad".into(), "x".repeat(250));
        for k in 0..30 {
            spec.labels.insert(format!("k{k}"), "y".repeat(250));
        }
        Change::Put(Box::new(VmIntent::new(spec, Desired::Running)))
    };
    let mut written = 0;
    let error = loop {
        match store.apply(&[intent(written)]) {
            Ok(()) => written += 1,
            Err(e) => break e,
        }
        assert!(written < 10_000, "the tmpfs never filled");
    };
    assert!(locus::store::is_no_space(&error), "{error:#}");
    assert!(store.apply(&[intent(written)]).is_err(), "still full");

    // Room again: the filesystem grows.
    let _ = Command::new("mount").args(["-o", "remount,size=8m"]).arg(&fs.0).status();
    store.apply(&[intent(written)]).expect("the store reopens and writes");
    let intents = store.intents().expect("read");
    assert_eq!(intents.len(), written + 1, "every acknowledged write, and none of the refused ones twice");
}
