//! The `locus` binary end to end: checking components, dry-run placement
//! over the example cluster, and clear errors for bad input.

use assert_cmd::Command;
use predicates::prelude::*;
use std::path::PathBuf;

fn locus() -> Command {
    Command::cargo_bin("locus").expect("the locus binary is built")
}

fn example(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples").join(path)
}

fn temp_file(name: &str, contents: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("locus-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("temp file");
    path
}

#[test]
fn check_reports_world_and_exports() {
    locus().args(["policy", "check", "green"]).assert().success().stdout(
        predicate::str::contains("placement-policy")
            .and(predicate::str::contains("locus:policy/placement@0.1.0")),
    );
    let out = locus().args(["policy", "check", "consolidate", "--json"]).output().expect("runs");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["ok"], true);
    assert_eq!(json["policy"]["world"], "migration-policy");
}

#[test]
fn check_refuses_bad_components_with_the_reason() {
    let garbage = temp_file("garbage.wasm", b"this is not wasm");
    locus()
        .args(["policy", "check"])
        .arg(&garbage)
        .assert()
        .failure()
        .stdout(predicate::str::contains("does not start with the wasm magic bytes"));
    locus()
        .args(["policy", "check", "no-such-policy"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("not a built-in policy (built-ins: first-fit, best-fit"));
}

#[test]
fn place_runs_every_request_and_compares_policies() {
    let out = locus()
        .args(["place", "--policy", "spread", "--policy", "green", "--json", "--cluster"])
        .arg(example("clusters/europe.toml"))
        .arg("--requests")
        .arg(example("requests/europe.toml"))
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let runs: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let runs = runs.as_array().expect("one run per policy");
    assert_eq!(runs.len(), 2);
    for run in runs {
        let rows = run["rows"].as_array().expect("rows");
        assert_eq!(rows.len(), 300);
        let summary = &run["summary"];
        assert_eq!(summary["placed"].as_u64().unwrap_or(0) + summary["rejected"].as_u64().unwrap_or(0), 300);
        let find = |name: &str| rows.iter().find(|r| r["request"] == name).expect("present").clone();
        assert_eq!(find("swiss-only")["decision"]["outcome"]["reason"], "constraints");
        assert_eq!(find("too-big")["decision"]["outcome"]["reason"], "no-capacity");
        assert_eq!(find("bank-1")["pop"], "paris", "a FR-only request lands in France");
        // Every game server is within its 40 ms bound of Lisbon.
        for r in rows.iter().filter(|r| r["request"].as_str().is_some_and(|n| n.starts_with("game-"))) {
            if let Some(rtt) = r["user_latency_ms"].as_f64() {
                assert!(rtt <= 40.0, "{r}");
            }
        }
    }
    let carbon = |i: usize| runs[i]["summary"]["carbon_kg_per_hour"].as_f64().expect("carbon");
    assert!(carbon(1) < carbon(0), "green emits less than spread on this cluster");
}

#[test]
fn place_names_the_file_and_the_mistake() {
    let cluster = temp_file(
        "bad-cluster.toml",
        b"[[pop]]\nname = \"x\"\njurisdiction = \"FR\"\nlocation = { lat = 1, lon = 2 }\ncolour = 3\n",
    );
    locus()
        .args(["place", "--policy", "spread", "--cluster"])
        .arg(&cluster)
        .arg("--requests")
        .arg(example("requests/europe.toml"))
        .assert()
        .failure()
        .stderr(
            predicate::str::contains("bad-cluster.toml")
                .and(predicate::str::contains("unknown field `colour`")),
        );
    let requests =
        temp_file("bad-requests.toml", b"[[request]]\nname = \"a<b>\"\nvcpus = 1\nmemory-mib = 1\n");
    locus()
        .args(["place", "--policy", "spread", "--cluster"])
        .arg(example("clusters/europe.toml"))
        .arg("--requests")
        .arg(&requests)
        .assert()
        .failure()
        .stderr(predicate::str::contains("invalid name \"a<b>\""));
    locus()
        .args(["place", "--policy", "consolidate", "--cluster"])
        .arg(example("clusters/europe.toml"))
        .arg("--requests")
        .arg(example("requests/europe.toml"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("is a migration-policy, not a placement policy"));
}

#[test]
fn bench_measures_wasm_and_the_native_baseline() {
    let out = locus()
        .args(["policy", "bench", "best-fit", "--hosts", "50", "--seconds", "0.2", "--json"])
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let variants: Vec<_> =
        json["results"].as_array().expect("results").iter().map(|r| r["variant"].clone()).collect();
    assert_eq!(variants, ["wasm place", "native place"]);
    assert!(json["results"][0]["decisions"].as_u64().unwrap_or(0) > 0);
}
