//! `locus agent` against a real libvirtd with QEMU guests (KVM where the
//! machine has it, TCG otherwise). `scripts/libvirtd.sh start` installs and
//! starts the system libvirtd when it is not running (root needed; `make
//! test` and CI run as root). The tests in this file share that daemon and
//! one of them stops and restarts it, so they take turns.
//!
//! Guests are tiny and diskless (32 MiB, network boot with no NIC): real
//! QEMU processes that spin in their firmware, which is all the monitor and
//! the lifecycle need.

mod common;

use common::{Agent, repo_root, wait_until};
use locus_core::hypervisor::DomainState;
use locus_core::intent::Desired;
use locus_core::node::{HostStatus, VmStatus};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

const URI: &str = "qemu:///system";
static LIBVIRTD: Mutex<()> = Mutex::new(());

/// Takes the daemon for one test and makes sure it runs.
fn libvirtd() -> MutexGuard<'static, ()> {
    let guard = LIBVIRTD.lock().unwrap_or_else(|e| e.into_inner());
    script("start");
    guard
}

fn script(action: &str) {
    let status = Command::new(repo_root().join("scripts/libvirtd.sh"))
        .arg(action)
        .status()
        .expect("run scripts/libvirtd.sh");
    assert!(status.success(), "scripts/libvirtd.sh {action} failed");
}

fn virsh(args: &[&str]) -> String {
    let out = Command::new("virsh").arg("-c").arg(URI).args(args).output().expect("run virsh");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every domain libvirtd has, running or not.
fn domains() -> Vec<String> {
    virsh(&["list", "--all", "--name"])
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", std::process::id())
}

fn show(agent: &Agent, name: &str) -> VmStatus {
    agent.json(&["vm", "show", name])
}

#[test]
fn libvirtd_qemu_guest_boots_is_sampled_stops_and_leaves_nothing_behind() {
    let _daemon = libvirtd();
    let agent = Agent::start(URI, &unique("qemu-boot"), &[]);
    let name = unique("boot");

    let refused = agent.cli(&["vm", "create", &name, "--vcpus", "0", "--memory-mib", "32"]);
    assert!(!refused.status.success());
    assert!(!domains().contains(&name), "a refused request defines nothing");

    let created: VmStatus =
        agent.json(&["vm", "create", &name, "--memory-mib", "32", "--label", "suite=<e2e>"]);
    assert_eq!(created.state, DomainState::Running);
    assert!(virsh(&["domstate", &name]).contains("running"));
    let xml = virsh(&["dumpxml", &name]);
    assert!(xml.contains(&format!("owner=\"{}\"", agent.host)) && xml.contains("&lt;e2e&gt;"), "{xml}");

    // The Local Resources Tracker: CPU time grows between samples and the
    // CPU use is measured from its deltas.
    let mut first = 0;
    wait_until(Duration::from_secs(20), "the monitor reports CPU time", || {
        first = show(&agent, &name).cpu_time_ns;
        first > 0
    });
    wait_until(Duration::from_secs(20), "the CPU time grows and CPU use is measured", || {
        let s = show(&agent, &name);
        s.cpu_time_ns > first && s.cpu_milli.is_some() && s.memory_kib > 0
    });

    // Undefined behind the agent's back while running: defined again.
    let _ = virsh(&["undefine", &name]);
    wait_until(Duration::from_secs(10), "the domain is persistent again", || {
        virsh(&["dominfo", &name]).lines().any(|l| l.starts_with("Persistent:") && l.ends_with("yes"))
    });
    assert!(agent.log().contains("defined again"), "{}", agent.log());

    // The firmware ignores ACPI: the stop powers it off at the deadline.
    let stopped: VmStatus = agent.json(&["vm", "stop", &name, "--timeout", "1"]);
    assert_eq!((stopped.state, stopped.desired), (DomainState::Shutoff, Desired::Stopped));
    assert!(virsh(&["domstate", &name]).contains("shut off"));
    let started: VmStatus = agent.json(&["vm", "start", &name]);
    assert_eq!(started.state, DomainState::Running);

    let _: serde_json::Value = agent.json(&["vm", "delete", &name]);
    assert!(!domains().contains(&name), "nothing left behind: {:?}", domains());
}

#[test]
fn libvirtd_kill_9_with_five_guests_then_restart_adopts_the_same_five() {
    let _daemon = libvirtd();
    let mut agent = Agent::start(URI, &unique("qemu-crash"), &[]);
    let names: Vec<String> = (0..5).map(|i| unique(&format!("crash{i}"))).collect();
    for n in &names {
        let _: VmStatus = agent.json(&["vm", "create", n, "--memory-mib", "32"]);
    }
    let uuids: Vec<String> = names.iter().map(|n| virsh(&["domuuid", n]).trim().to_owned()).collect();

    agent.kill9();
    for n in &names {
        assert!(virsh(&["domstate", n]).contains("running"), "{n} outlives the agent");
    }
    agent.spawn();
    wait_until(Duration::from_secs(20), "the restarted agent sees its five VMs running", || {
        let vms: Vec<VmStatus> = agent.json(&["vm", "list"]);
        vms.len() == 5 && vms.iter().all(|v| v.state == DomainState::Running && v.desired == Desired::Running)
    });
    let all = domains();
    for (n, uuid) in names.iter().zip(&uuids) {
        assert_eq!(all.iter().filter(|d| *d == n).count(), 1, "{n} exists once");
        assert_eq!(virsh(&["domuuid", n]).trim(), uuid, "{n} is the same domain, adopted, not recreated");
        assert!(agent.log().contains(&format!("vm {n}: adopted its running domain")), "{}", agent.log());
    }
    let host: HostStatus = agent.json(&["host", "status"]);
    assert_eq!((host.vms.total, host.vms.running), (5, 5));

    for n in &names {
        let _: serde_json::Value = agent.json(&["vm", "delete", n]);
    }
    let all = domains();
    assert!(names.iter().all(|n| !all.contains(n)), "nothing left behind: {all:?}");
}

fn hypervisor_state(agent: &Agent) -> String {
    let host: HostStatus = agent.json(&["host", "status"]);
    host.hypervisor.state
}

#[test]
fn libvirtd_down_at_start_and_later_the_agent_keeps_serving_and_recovers() {
    let _daemon = libvirtd();
    script("stop");
    let agent = Agent::start(URI, &unique("qemu-outage"), &[]);
    wait_until(Duration::from_secs(10), "the agent reports the hypervisor down", || {
        hypervisor_state(&agent) == "down"
    });
    let name = unique("outage");
    let refused = agent.cli(&["vm", "create", &name, "--memory-mib", "32"]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("hypervisor unavailable"), "{err}");

    script("start");
    wait_until(Duration::from_secs(20), "the agent reconnects", || hypervisor_state(&agent) == "up");
    let created: VmStatus = agent.json(&["vm", "create", &name, "--memory-mib", "32"]);
    assert_eq!(created.state, DomainState::Running);

    script("stop");
    wait_until(Duration::from_secs(10), "the agent notices libvirtd left", || {
        hypervisor_state(&agent) == "down"
    });
    let vms: Vec<VmStatus> = agent.json(&["vm", "list"]);
    assert_eq!(vms.len(), 1, "reads still answer while libvirtd is away");

    script("start");
    wait_until(Duration::from_secs(20), "the agent reconnects again", || hypervisor_state(&agent) == "up");
    wait_until(Duration::from_secs(10), "the guest is still running, adopted", || {
        show(&agent, &name).state == DomainState::Running
    });
    assert_eq!(domains().iter().filter(|d| **d == name).count(), 1);
    let _: serde_json::Value = agent.json(&["vm", "delete", &name]);
    assert!(!domains().contains(&name));
}

/// A raw disk whose boot sector writes itself to the disk's second sector
/// (BIOS int 13h) and halts: a guest that writes to its disk, in 512 bytes.
fn writer_image() -> Vec<u8> {
    let code: &[u8] = &[
        0x31, 0xC0, // xor ax, ax
        0x8E, 0xD8, // mov ds, ax
        0x8E, 0xC0, // mov es, ax
        0xB8, 0x01, 0x03, // mov ax, 0x0301: write one sector
        0xB9, 0x02, 0x00, // mov cx, 0x0002: cylinder 0, sector 2
        0xB6, 0x00, // mov dh, 0: head 0 (dl is the boot drive)
        0xBB, 0x00, 0x7C, // mov bx, 0x7c00: from this sector
        0xCD, 0x13, // int 0x13
        0xFA, // cli
        0xF4, // hlt
        0xEB, 0xFD, // jmp back to hlt
    ];
    let mut disk = vec![0u8; 1 << 20];
    disk[..code.len()].copy_from_slice(code);
    disk[510] = 0x55;
    disk[511] = 0xAA;
    disk
}

fn sha256_file(path: &std::path::Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).expect("read")))
}

/// The guest-visible bytes of a qcow2 disk (read while QEMU may hold it).
fn disk_bytes(disk: &std::path::Path, dir: &std::path::Path) -> Vec<u8> {
    let out = dir.join("disk.raw");
    let status = Command::new("qemu-img")
        .args(["convert", "-U", "-f", "qcow2", "-O", "raw"])
        .arg(disk)
        .arg(&out)
        .status()
        .expect("qemu-img");
    assert!(status.success());
    std::fs::read(out).expect("read")
}

fn disks(agent: &Agent) -> Vec<std::path::PathBuf> {
    let mut d: Vec<_> = std::fs::read_dir(agent.dir.path().join("images/disks"))
        .expect("disks dir")
        .map(|e| e.expect("entry").path())
        .collect();
    d.sort();
    d
}

#[test]
fn libvirtd_two_guests_from_one_image_write_only_their_own_disks_and_paths_are_refused() {
    let _daemon = libvirtd();
    let agent = Agent::start(URI, &unique("qemu-images"), &[]);
    wait_until(Duration::from_secs(20), "the agent connects", || hypervisor_state(&agent) == "up");
    let work = tempfile::tempdir().expect("tempdir");
    let file = work.path().join("writer.raw");
    let image = writer_image();
    std::fs::write(&file, &image).expect("write image");
    let imported: serde_json::Value =
        agent.json(&["image", "import", file.to_str().expect("utf-8"), "--name", "writer"]);
    let hash = imported["hash"].as_str().expect("hash").to_owned();
    let base = agent.dir.path().join("images/blobs").join(hash.trim_start_matches("sha256:"));
    let base_hash = sha256_file(&base);
    assert_eq!(format!("sha256:{base_hash}"), hash);

    // Anything but an image of the store is refused before libvirt sees
    // it, with the same answer whether or not the path exists.
    let a = unique("img-a");
    let _: VmStatus = agent.json(&["vm", "create", &a, "--memory-mib", "32", "--image", "writer"]);
    let overlay_a = disks(&agent).pop().expect("a's disk");
    // Confinement: the guest's QEMU is not root (scripts/libvirtd.sh).
    let pid = std::fs::read_to_string(format!("/run/libvirt/qemu/{a}.pid")).expect("QEMU's pid file");
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).expect("QEMU's status");
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).expect("Uid line");
    assert!(uid.split_whitespace().all(|id| id != "0"), "QEMU runs as root: {uid}");
    let planted = "cd".repeat(32);
    std::os::unix::fs::symlink("/etc/shadow", agent.dir.path().join("images/blobs").join(&planted))
        .expect("plant a symlink");
    let state_dir = agent.dir.path().display().to_string();
    let refusal = |bad: &str| {
        let name = unique("img-bad");
        let out = agent.cli(&["vm", "create", &name, "--memory-mib", "32", "--image", bad]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{bad} refused");
        assert!(!domains().contains(&name), "{bad}: nothing defined");
        assert!(bad.contains(&state_dir) || !err.contains(&state_dir), "{bad}: no store path in {err}");
        // The answer is the same whether or not the thing exists.
        err.replace(bad, "<image>")
    };
    let path_answer = refusal("/etc/shadow");
    assert!(path_answer.contains("paths are not accepted"), "{path_answer}");
    for bad in ["/etc/no-such-file", "/dev/vda", "../disks/a.qcow2"] {
        assert_eq!(refusal(bad), path_answer, "{bad}");
    }
    // Another VM's disk, by its path: refused as any path is.
    assert!(refusal(&overlay_a.display().to_string()).contains("paths are not accepted"));
    let missing_answer = refusal(&format!("sha256:{}", "00".repeat(32)));
    assert!(missing_answer.contains("no image"), "{missing_answer}");
    assert_eq!(
        refusal(&format!("sha256:{planted}")),
        missing_answer,
        "a symlink out of the store is no image"
    );

    let b = unique("img-b");
    let _: VmStatus = agent.json(&["vm", "create", &b, "--memory-mib", "32", "--image", &hash]);
    let both = disks(&agent);
    assert_eq!(both.len(), 2, "one disk per VM: {both:?}");
    let xml = virsh(&["dumpxml", &b]);
    let disk = xml.find("<disk").map(|i| &xml[i..]).expect("a disk");
    let source = disk.find("<source file=").expect("a source");
    let backing = disk.find("<backingStore").expect("the base behind it");
    assert!(source < backing && disk[source..backing].contains("images/disks/"), "the VM's own disk: {xml}");

    // Both guests run their boot sector, which writes to the disk and halts.
    for vm in [&a, &b] {
        let mut last = 0;
        wait_until(Duration::from_secs(60), "the guest halts after writing", || {
            let now = show(&agent, vm).cpu_time_ns;
            let halted = now > 0 && now == last;
            last = now;
            std::thread::sleep(Duration::from_millis(500));
            halted
        });
        // Powering off makes QEMU flush its disk.
        let _: VmStatus = agent.json(&["vm", "stop", vm, "--force"]);
    }
    for disk in &both {
        let bytes = disk_bytes(disk, work.path());
        assert_eq!(&bytes[512..1024], &image[..512], "{} holds its guest's write", disk.display());
    }
    assert_eq!(sha256_file(&base), base_hash, "the base is unchanged");
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&base).expect("base");
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o444), "the base stays root's and read-only");
    assert_eq!(&std::fs::read(&base).expect("base")[512..1024], &[0u8; 512][..]);

    let out = agent.cli(&["image", "rm", "writer"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("in use") && err.contains(&a), "{err}");
    for vm in [&a, &b] {
        let _: serde_json::Value = agent.json(&["vm", "delete", vm]);
    }
    assert!(disks(&agent).is_empty(), "deleting a VM removes its disk: {:?}", disks(&agent));
    let _: serde_json::Value = agent.json(&["image", "rm", "writer"]);
    assert!(!base.exists());
}

#[test]
fn libvirtd_stopped_during_creates_every_reply_agrees_with_what_runs_afterwards() {
    use hyper::{Method, StatusCode};
    let _daemon = libvirtd();
    let agent = Agent::start(URI, &unique("qemu-honest"), &[]);
    wait_until(Duration::from_secs(20), "the agent connects", || hypervisor_state(&agent) == "up");
    let names: Vec<String> = (0..12).map(|i| unique(&format!("honest{i}"))).collect();

    // Twelve creates in flight while libvirtd is stopped under them.
    let client = agent.client();
    let replies: Vec<(String, StatusCode, String)> = common::rt().block_on(async {
        let mut tasks = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let (client, name) = (client.clone(), name.clone());
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(15 * i as u64)).await;
                let body =
                    serde_json::to_vec(&serde_json::json!({"name": name, "vcpus": 1, "memory-mib": 32}))
                        .expect("json");
                let (status, bytes) = client
                    .raw(Method::POST, "/v1/vms", Some(("application/json", body)))
                    .await
                    .expect("answer");
                (name, status, String::from_utf8_lossy(&bytes).into_owned())
            }));
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
        tokio::task::spawn_blocking(|| script("stop")).await.expect("stop libvirtd");
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("task"));
        }
        out
    });
    let mut promised = Vec::new();
    for (name, status, body) in &replies {
        match *status {
            StatusCode::CREATED => promised.push(name.clone()),
            StatusCode::ACCEPTED => {
                assert!(body.contains("\"pending\":\""), "a 202 says what is pending: {body}");
                promised.push(name.clone());
            }
            StatusCode::SERVICE_UNAVAILABLE => assert!(body.contains("unavailable"), "{body}"),
            other => panic!("{name}: unexpected {other}: {body}"),
        }
    }
    let pending: Vec<VmStatus> = agent.json(&["vm", "list"]);
    assert_eq!(pending.len(), promised.len(), "the agent keeps exactly what it accepted: {replies:?}");

    // libvirtd back: every accepted VM runs, every refused one never exists.
    script("start");
    wait_until(Duration::from_secs(60), "every accepted VM runs", || {
        let vms: Vec<VmStatus> = agent.json(&["vm", "list"]);
        vms.len() == promised.len()
            && vms.iter().all(|v| v.state == DomainState::Running && v.pending.is_none())
    });
    let all = domains();
    for name in &names {
        let expected = promised.contains(name);
        assert_eq!(
            all.contains(name),
            expected,
            "{name}: domain exists iff its create was accepted: {replies:?}"
        );
    }
    for name in &promised {
        let _: serde_json::Value = agent.json(&["vm", "delete", name]);
    }
    let all = domains();
    assert!(names.iter().all(|n| !all.contains(n)), "nothing left behind: {all:?}");
    eprintln!(
        "replies: {} created, {} pending, {} refused",
        replies.iter().filter(|r| r.1 == StatusCode::CREATED).count(),
        replies.iter().filter(|r| r.1 == StatusCode::ACCEPTED).count(),
        replies.iter().filter(|r| r.1 == StatusCode::SERVICE_UNAVAILABLE).count()
    );
}

/// A boot sector that loops: a guest that boots from its disk and spins.
fn spin_image(dir: &std::path::Path) -> std::path::PathBuf {
    let file = dir.join("spin.raw");
    let mut image = vec![0u8; 4 << 20];
    image[..2].copy_from_slice(&[0xEB, 0xFE]); // jmp $
    image[510] = 0x55;
    image[511] = 0xAA;
    std::fs::write(&file, &image).expect("image");
    file
}

#[test]
fn libvirtd_image_imported_in_one_pop_boots_a_qemu_guest_in_another() {
    let _daemon = libvirtd();
    let keys = tempfile::tempdir().expect("tempdir");
    let key = keys.path().join("cluster.key");
    let out = Command::new(common::locus_bin()).args(["cluster", "keygen"]).output().expect("keygen");
    std::fs::write(&key, &out.stdout).expect("key");
    let key = key.display().to_string();
    let member = |pop: &str, ip: &str, lat: &str| -> Vec<String> {
        [
            "--pop",
            pop,
            "--set",
            &format!("pop.location={{lat={lat},lon=2.0}}"),
            "--cluster-key",
            &key,
            "--p2p-listen",
            &format!("/ip4/{ip}/tcp/7946"),
            "--bootstrap",
            "/ip4/127.63.0.1/tcp/7946",
            "--set",
            "sample-interval-ms=250",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    // Paris holds the image (its agent on the test driver: no guest runs
    // there); Berlin's agent runs real QEMU guests and has no image.
    let paris_args = member("paris", "127.63.0.1", "48.8");
    let paris_args: Vec<&str> = paris_args.iter().map(String::as_str).collect();
    let paris = Agent::start_wrapped(&[], "test:///default", &unique("img-paris"), &paris_args);
    // QEMU, as its own user, must reach the VM's disk and its base.
    let store = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(store.path(), std::os::unix::fs::PermissionsExt::from_mode(0o711))
        .expect("chmod");
    let mut berlin_args = member("berlin", "127.64.0.1", "52.5");
    berlin_args.extend([
        "--set".to_owned(),
        format!("images.dir={:?}", store.path().join("images").display().to_string()),
    ]);
    let berlin_args: Vec<&str> = berlin_args.iter().map(String::as_str).collect();
    let berlin = Agent::start_wrapped(&[], URI, &unique("img-berlin"), &berlin_args);

    let work = tempfile::tempdir().expect("tempdir");
    let imported: serde_json::Value =
        paris.json(&["image", "import", spin_image(work.path()).to_str().expect("utf-8"), "--name", "spin"]);
    wait_until(Duration::from_secs(30), "the agents know each other", || {
        let v: serde_json::Value = berlin.json(&["cluster", "status"]);
        v["overlay"]["connected"].as_u64().unwrap_or(0) >= 1
    });
    assert!(!berlin.cli(&["image", "show", "spin"]).status.success(), "Berlin starts without the image");

    let name = unique("from-paris");
    let out = berlin.cli(&["vm", "create", &name, "--memory-mib", "32", "--image", "spin"]);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), berlin.log());
    wait_until(Duration::from_secs(60), "the guest runs in Berlin", || {
        show(&berlin, &name).state == DomainState::Running
    });
    assert!(virsh(&["domstate", &name]).contains("running"));
    let held: serde_json::Value = berlin.json(&["image", "show", "spin"]);
    assert_eq!(held["hash"], imported["hash"], "the same bytes, checked whole");
    assert_eq!(held["used-by"], serde_json::json!([name]));
    let xml = virsh(&["dumpxml", &name]);
    assert!(
        xml.contains(&format!("{name}@")) && xml.contains("qcow2"),
        "the guest's disk is its own overlay: {xml}"
    );
    assert!(berlin.log().contains("waits for its image"), "{}", berlin.log());

    let _: serde_json::Value = berlin.json(&["vm", "delete", &name]);
    assert!(!domains().contains(&name), "nothing left behind: {:?}", domains());
}
