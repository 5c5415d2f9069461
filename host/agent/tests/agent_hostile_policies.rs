//! Hostile policies against a real `locus agent` process on the test driver:
//! components that print, panic, flood, answer too much, or write terminal
//! escapes, loaded with the CLI (`--config do=…` picks the misbehaviour).
//! For each: the agent stays up, the VM is placed (by the policy, an
//! earlier version or the fallback) or refused with a reason, `policy list`
//! counts the failure by kind, and neither the agent's log nor the CLI's
//! output carries a raw control character. Then the slot's history and
//! configuration survive a restart, and roll back.

mod common;

use common::Agent;
use locus::policies::{PolicyVersion, SlotListing};
use locus_core::node::VmStatus;
use std::collections::BTreeMap;

const TEST: &str = "test:///default";

/// (misbehaviour, failures expected per create by kind, create succeeds).
const CASES: &[(&str, Option<&str>, bool)] = &[
    ("stdout", None, true),
    ("stderr", None, true),
    // Fresh instance per decision: it never sees a third call.
    ("panic-every-third", None, true),
    ("ten-million-scores", Some("memory-cap"), true),
    ("log-escapes", None, true),
    ("reject-escapes", None, false),
];

fn no_control(what: &str, text: &str) {
    let bad: Vec<char> = text.chars().filter(|c| c.is_control() && *c != '\n').collect();
    assert!(bad.is_empty(), "{what} carries raw control characters {bad:?}:\n{text}");
}

fn active(agent: &Agent) -> PolicyVersion {
    let slots: Vec<SlotListing> = agent.json(&["policy", "list"]);
    slots.into_iter().find_map(|s| s.active.filter(|_| s.slot.as_str() == "placement")).expect("active")
}

#[test]
fn hostile_policies_are_contained_by_the_running_agent() {
    let mut agent = Agent::start(TEST, "hostile-host", &[]);
    let wasm = agent.dir.path().join("misbehave.wasm");
    std::fs::write(&wasm, locus_builtin::hostile::MISBEHAVE).expect("write component");
    let wasm = wasm.display().to_string();
    for (what, failure, placed) in CASES {
        let name = format!("mis-{what}");
        let load = agent.cli(&[
            "policy",
            "load",
            &wasm,
            "--slot",
            "placement",
            "--name",
            &name,
            "--config",
            &format!("do={what}"),
        ]);
        assert!(load.status.success(), "{what}: load failed: {}", String::from_utf8_lossy(&load.stderr));
        for i in 0..4 {
            let out =
                agent.cli(&["vm", "create", &format!("{what}-{i}"), "--vcpus", "1", "--memory-mib", "16"]);
            let (stdout, stderr) =
                (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            no_control(&format!("{what}: CLI stdout"), &stdout);
            no_control(&format!("{what}: CLI stderr"), &stderr);
            assert_eq!(
                out.status.success(),
                *placed,
                "{what}: create {i}: {stdout}{stderr}\n{}",
                agent.log()
            );
            if !placed {
                assert!(
                    stderr.contains("fake: all VMs deleted"),
                    "{what}: the reason is shown, escaped: {stderr}"
                );
                assert!(stderr.contains("\\u{1b}"), "{what}: {stderr}");
            }
        }
        assert!(
            agent.child.as_mut().expect("running").try_wait().expect("wait").is_none(),
            "{what}: the agent died"
        );
        let v = active(&agent);
        assert_eq!(v.name, name);
        assert_eq!(v.config, BTreeMap::from([("do".to_owned(), (*what).to_owned())]));
        assert_eq!(v.calls, 4, "{what}: {v:?}");
        match failure {
            Some(kind) => assert_eq!(v.errors_by_kind.get(*kind), Some(&4), "{what}: {v:?}"),
            None => assert_eq!(v.errors, 0, "{what}: {v:?}"),
        }
        let table = agent.cli(&["policy", "list"]);
        no_control("policy list", &String::from_utf8_lossy(&table.stdout));
    }
    let vms: Vec<VmStatus> = agent.json(&["vm", "list"]);
    assert_eq!(vms.len(), 4 * CASES.iter().filter(|c| c.2).count(), "every accepted create runs");

    // What policies printed and logged is in the log, escaped on its line.
    let log = agent.log();
    no_control("the agent's log", &log);
    for forged in ["INFO locus: forged", "ERROR locus: forged"] {
        assert!(!log.lines().any(|l| l.starts_with(forged)), "a policy forged a log line:\n{log}");
    }
    assert!(log.contains("screen cleared"), "policy log lines are kept, escaped");

    // History and configuration survive a restart; rollback walks it back.
    let before: Vec<SlotListing> = agent.json(&["policy", "list"]);
    assert!(agent.terminate().success());
    agent.spawn();
    let after: Vec<SlotListing> = agent.json(&["policy", "list"]);
    // Each slot as (active id, earlier ids, active configuration), in order.
    let ids = |slots: &[SlotListing]| -> Vec<String> {
        slots
            .iter()
            .map(|s| {
                let previous: Vec<&str> = s.previous.iter().map(|v| v.id.as_str()).collect();
                let active =
                    s.active.as_ref().map(|v| format!("{} {:?}", v.id, v.config)).unwrap_or_default();
                format!("{active} after {previous:?}")
            })
            .collect()
    };
    assert_eq!(ids(&after), ids(&before), "the same versions, in order, with their configuration");
    let previous = &after[0].previous[0];
    let rolled: PolicyVersion = agent.json(&["policy", "rollback", "--slot", "placement"]);
    assert_eq!(rolled.id, previous.id);
    assert_eq!(rolled.config, previous.config, "a version comes back with its configuration");
    let out = agent.cli(&["policy", "rollback", "--slot", "placement", "abcdef"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("abcdef"), "names what it could not find");
}

#[test]
fn a_stored_policy_that_no_longer_loads_gives_way_to_the_default() {
    let mut agent = Agent::start(TEST, "stale-host", &[]);
    let _: PolicyVersion = agent.json(&["policy", "load", "spread", "--slot", "placement"]);
    assert!(agent.terminate().success());
    // The stored version's component goes missing; the configured default
    // is now first-fit.
    agent.args.extend(["--set".into(), "policies.placement=first-fit".into()]);
    let store = locus::store::Store::open(&agent.dir.path().join("state.redb")).expect("open the store");
    let (mut slot, _) = store.slot("placement").expect("read");
    slot.active.as_mut().expect("stored").hash = "0".repeat(64);
    store.set_slot("placement", &slot, &BTreeMap::new()).expect("corrupt");
    drop(store);
    agent.spawn();
    let slots: Vec<SlotListing> = agent.json(&["policy", "list"]);
    let placement = &slots[0];
    assert_eq!(placement.active.as_ref().map(|v| v.name.as_str()), Some("first-fit"), "{placement:?}");
    assert!(
        placement.problems.iter().any(|p| p.contains("spread") && p.contains("missing")),
        "{placement:?}"
    );
    let created: VmStatus = agent.json(&["vm", "create", "after", "--memory-mib", "16"]);
    assert_eq!(created.name, "after");
}
