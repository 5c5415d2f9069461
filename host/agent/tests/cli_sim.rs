//! `locus sim` through the real binary: a scenario's report is the same
//! for the same seed, the scale table has a row per size, and a bad
//! scenario is refused with the reason.

mod common;

use common::locus_bin;
use std::process::Command;

fn sim(args: &[&str]) -> std::process::Output {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    Command::new(locus_bin()).current_dir(root).arg("sim").args(args).output().expect("run locus sim")
}

#[test]
fn the_same_seed_gives_the_same_report_and_the_scale_table_has_a_row_per_size() {
    let a = sim(&["examples/scenarios/two-pops.toml", "--seed", "7"]);
    let b = sim(&["examples/scenarios/two-pops.toml", "--seed", "7"]);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert_eq!(a.stdout, b.stdout, "byte for byte");
    let report: serde_json::Value = serde_json::from_slice(&a.stdout).expect("JSON report");
    assert_eq!(report["placed"], 80, "{report}");
    assert!(report["traffic"]["bytes_per_node_s"].as_f64().is_some_and(|b| b > 0.0), "{report}");

    let out = sim(&["--scale", "20,40", "--duration-s", "30", "--seed", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let (table, events) = text.split_once("\n\n").expect("two tables");
    let rows_of = |t: &str| -> Vec<Vec<String>> {
        let cells =
            |l: &str| l.split('|').map(str::trim).filter(|c| !c.is_empty()).map(String::from).collect();
        t.lines().skip(2).map(cells).collect()
    };
    let rows = rows_of(table);
    assert_eq!(rows.len(), 2, "{text}");
    assert_eq!((rows[0][0].as_str(), rows[0][2].as_str()), ("20", "200"), "every VM placed: {text}");
    assert_eq!((rows[1][0].as_str(), rows[1][1].as_str(), rows[1][2].as_str()), ("40", "2", "400"), "{text}");
    // Where the events went, per size: a heartbeat every 500 ms.
    let events = rows_of(events);
    assert_eq!(events.len(), 2, "{text}");
    assert!(events.iter().all(|r| r[2] == "2.00"), "{text}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--seed 1"), "the seed is printed");
}

#[test]
fn overrides_change_the_run_and_show_in_the_replay_command_and_compare_prints_both_schedulers() {
    let out = sim(&["examples/scenarios/overload.toml", "--seed", "3", "--consolidation", "false"]);
    let central = sim(&[
        "examples/scenarios/overload.toml",
        "--seed",
        "3",
        "--consolidation",
        "false",
        "--scheduler",
        "centralized",
        "--period-s",
        "20",
    ]);
    assert!(central.status.success(), "{}", String::from_utf8_lossy(&central.stderr));
    let replay = String::from_utf8_lossy(&central.stderr);
    assert!(
        replay.contains("--consolidation false --scheduler centralized --period-s 20 --seed 3"),
        "{replay}"
    );
    let (a, b): (serde_json::Value, serde_json::Value) = (
        serde_json::from_slice(&out.stdout).expect("JSON"),
        serde_json::from_slice(&central.stdout).expect("JSON"),
    );
    assert_eq!(
        (a["scheduler"].as_str(), b["scheduler"].as_str()),
        (Some("distributed"), Some("centralized"))
    );
    assert_eq!(b["central_rounds"], 15, "every 20 s for 300 s: {b}");
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = dir.path().join("run");
    let out =
        sim(&["examples/scenarios/overload.toml", "--seed", "3", "--out", out_dir.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let read = |name: &str| std::fs::read_to_string(out_dir.join(name)).expect(name);
    assert_eq!(read("report.json").as_bytes(), out.stdout.trim_ascii_end(), "the report, as printed");
    let csv = read("series.csv");
    assert!(csv.starts_with("t_s,vms,overloaded_hosts,"), "{csv}");
    // 300 s, a row a second (the sample interval), the first at 0.
    assert_eq!(csv.lines().count(), 1 + 301, "{csv}");
    let svg = read("run.svg");
    assert!(svg.starts_with("<svg") && svg.contains("overloaded hosts"), "{svg}");

    let bad = sim(&["examples/scenarios/overload.toml", "--scheduler", "centralized"]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("set policies.consolidation = false"), "{err}");

    let out = sim(&["--scale", "20", "--duration-s", "30", "--compare", "--seed", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<&str> = table.lines().skip(2).collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert!(rows[0].contains("agents") && rows[1].contains("central"), "{table}");
}

#[test]
fn a_bad_scenario_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "name = \"x\"\nduration-s = 10\npops = []\n").expect("write");
    let out = sim(&[path.to_str().expect("utf-8 path")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs PoPs"), "{err}");
    std::fs::write(&path, "name = \"x\"\nduration-s = 10\ncolour = 1\npops = []\n").expect("write");
    let out = sim(&[path.to_str().expect("utf-8 path")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("unknown field `colour`").count(), 1, "said once, with where: {err}");
    assert!(err.contains("line 3"), "{err}");
    let out = sim(&["--scale", "0"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("needs hosts"));
}
