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
