//! The out-of-tree example policy (`examples/my-policy`) is built and tested
//! the way docs/policy-guide.md tells an author to, with a nested cargo, and
//! the resulting component passes `locus policy check`. Slow the first time
//! (it compiles the example's dependencies into `target/example`).

use assert_cmd::Command;
use std::path::PathBuf;

fn cargo(example: &PathBuf, target: &PathBuf, args: &[&str]) {
    let mut cmd = std::process::Command::new(env!("CARGO"));
    cmd.current_dir(example).args(args).env("CARGO_TARGET_DIR", target);
    for var in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "RUSTC_WRAPPER", "RUSTC_WORKSPACE_WRAPPER"] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("cargo runs");
    assert!(status.success(), "cargo {args:?} in {} failed", example.display());
}

#[test]
fn the_example_policy_builds_tests_and_passes_check_with_nested_cargo() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let example = root.join("examples/my-policy");
    let target = root.join("target/example");
    cargo(&example, &target, &["test", "--quiet"]);
    cargo(&example, &target, &["build", "--quiet", "--release", "--target", "wasm32-wasip2"]);
    let component = target.join("wasm32-wasip2/release/least_power.wasm");
    Command::cargo_bin("locus")
        .expect("the locus binary is built")
        .args(["policy", "check"])
        .arg(&component)
        .assert()
        .success()
        .stdout(predicates::str::contains("world         placement-policy"));
}
