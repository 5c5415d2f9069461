//! `locus agent` as a separate process on libvirt's test driver
//! (`test:///default`, in the agent's own process): the VM lifecycle through
//! the CLI and through the API, bad input, policy hot swap, the TCP token,
//! SIGTERM, and a `kill -9` with VMs running.

mod common;

use common::{Agent, rt, wait_until};
use hyper::{Method, StatusCode};
use locus::api::vms::Deleted;
use locus::client::{AgentError, Client, Endpoint};
use locus::policies::{PolicyVersion, SlotListing};
use locus_core::VmRequest;
use locus_core::hypervisor::DomainState;
use locus_core::intent::Desired;
use locus_core::node::{HostStatus, VmStatus};
use std::time::Duration;

const TEST: &str = "test:///default";

fn request(name: &str) -> VmRequest {
    VmRequest { name: name.into(), vcpus: 1, memory_mib: 64, ..VmRequest::default() }
}

fn state(vms: &[VmStatus], name: &str) -> Option<(DomainState, Desired)> {
    vms.iter().find(|v| v.name == name).map(|v| (v.state, v.desired))
}

#[test]
fn lifecycle_through_the_cli() {
    let agent = Agent::start(TEST, "cli-host", &[]);
    let created: VmStatus =
        agent.json(&["vm", "create", "web", "--vcpus", "2", "--memory-mib", "128", "--label", "team=ops"]);
    assert_eq!((created.state, created.desired), (DomainState::Running, Desired::Running));
    assert_eq!(created.spec.labels.get("team").map(String::as_str), Some("ops"));

    let listed: Vec<VmStatus> = agent.json(&["vm", "list"]);
    assert_eq!(state(&listed, "web"), Some((DomainState::Running, Desired::Running)));

    let stopped: VmStatus = agent.json(&["vm", "stop", "web"]);
    assert_eq!((stopped.state, stopped.desired), (DomainState::Shutoff, Desired::Stopped));
    let started: VmStatus = agent.json(&["vm", "start", "web"]);
    assert_eq!(started.state, DomainState::Running);
    let forced: VmStatus = agent.json(&["vm", "stop", "web", "--force"]);
    assert_eq!(forced.state, DomainState::Shutoff);

    let deleted: Deleted = agent.json(&["vm", "delete", "web"]);
    assert_eq!(deleted.deleted, "web");
    let listed: Vec<VmStatus> = agent.json(&["vm", "list"]);
    assert!(listed.is_empty(), "{listed:?}");

    let table = agent.cli(&["vm", "show", "web"]);
    assert!(!table.status.success());
    assert!(String::from_utf8_lossy(&table.stderr).contains("no vm named \"web\""));
    let host = agent.cli(&["host", "status"]);
    let text = String::from_utf8_lossy(&host.stdout);
    assert!(text.contains("cli-host") && text.contains("not Locus's, left alone"), "{text}");
}

#[test]
fn lifecycle_through_the_api() {
    let agent = Agent::start(TEST, "api-host", &[]);
    let c = agent.client();
    rt().block_on(async {
        let created: VmStatus = c.post("/v1/vms", Some(&request("db"))).await.expect("create");
        assert_eq!(created.state, DomainState::Running);
        let (status, _) = c.raw(Method::GET, "/v1/vms/db", None).await.expect("show");
        assert_eq!(status, StatusCode::OK);
        let s: VmStatus = c.post::<(), _>("/v1/vms/db/stop?timeout_ms=1000", None).await.expect("stop");
        assert_eq!(s.state, DomainState::Shutoff);
        let s: VmStatus = c.post::<(), _>("/v1/vms/db/start", None).await.expect("start");
        assert_eq!(s.state, DomainState::Running);
        let vms: Vec<VmStatus> = c.get("/v1/vms").await.expect("list");
        assert_eq!(vms.len(), 1);
        let d: Deleted = c.delete("/v1/vms/db").await.expect("delete");
        assert_eq!(d.deleted, "db");
        let spec: serde_json::Value = c.get("/openapi.json").await.expect("openapi");
        for path in [
            "/v1/vms",
            "/v1/vms/{name}",
            "/v1/vms/{name}/stop",
            "/v1/host",
            "/v1/policies/{slot}",
            "/v1/rollouts",
            "/v1/rollouts/rollback",
        ] {
            assert!(spec["paths"][path].is_object(), "{path} is described");
        }
        for schema in ["VmRequest", "PushView", "RolloutStatus", "Record", "AgentStatus"] {
            assert!(spec["components"]["schemas"][schema].is_object(), "{schema} is described");
        }
    });
}

/// Posts `body` as JSON and returns the status and the error's message.
async fn refused(c: &Client, body: Vec<u8>) -> (StatusCode, String) {
    let (status, bytes) =
        c.raw(Method::POST, "/v1/vms", Some(("application/json", body))).await.expect("answer");
    let message = serde_json::from_slice::<serde_json::Value>(&bytes).expect("a JSON error body")["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (status, message)
}

#[test]
fn bad_input_gets_a_4xx_with_a_reason_and_defines_nothing() {
    let agent = Agent::start(TEST, "bad-input-host", &["--set", "host.memory-mib=4096"]);
    let c = agent.client();
    rt().block_on(async {
        let _: VmStatus = c.post("/v1/vms", Some(&request("taken"))).await.expect("create");
        let json = |v: serde_json::Value| serde_json::to_vec(&v).expect("json");
        let cases: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
            (
                "zero vcpus",
                json(serde_json::json!({"name": "a", "vcpus": 0, "memory-mib": 64})),
                StatusCode::BAD_REQUEST,
                "vcpus must be at least 1",
            ),
            (
                "memory beyond the host",
                json(serde_json::json!({"name": "a", "vcpus": 1, "memory-mib": 1_000_000})),
                StatusCode::UNPROCESSABLE_ENTITY,
                "without room",
            ),
            (
                "XML metacharacters in the name",
                json(serde_json::json!({"name": "a<b>&'\"", "vcpus": 1, "memory-mib": 64})),
                StatusCode::BAD_REQUEST,
                "invalid name",
            ),
            (
                "a 300-character name",
                json(serde_json::json!({"name": "x".repeat(300), "vcpus": 1, "memory-mib": 64})),
                StatusCode::BAD_REQUEST,
                "(300 characters)",
            ),
            (
                "a duplicate name",
                json(serde_json::json!({"name": "taken", "vcpus": 1, "memory-mib": 64})),
                StatusCode::CONFLICT,
                "already exists",
            ),
            (
                "the test driver's own domain's name",
                json(serde_json::json!({"name": "test", "vcpus": 1, "memory-mib": 64})),
                StatusCode::CONFLICT,
                "not Locus's",
            ),
            (
                "an unknown field",
                json(serde_json::json!({"name": "a", "vcpus": 1, "memory-mib": 64, "colour": "red"})),
                StatusCode::BAD_REQUEST,
                "unknown field `colour`",
            ),
            (
                "a number where a name goes",
                json(serde_json::json!({"name": 7, "vcpus": 1, "memory-mib": 64})),
                StatusCode::BAD_REQUEST,
                "invalid type",
            ),
            (
                "a load more than its vCPUs can use",
                json(serde_json::json!({"name": "a", "vcpus": 1, "memory-mib": 64, "load-cpu-milli": 4_294_967_295u32})),
                StatusCode::BAD_REQUEST,
                "more than 1 vCPU(s) can use",
            ),
            ("malformed JSON", b"{\"name\": \"a\",".to_vec(), StatusCode::BAD_REQUEST, "EOF while parsing"),
            // Just over the cap, so the whole body is written before the answer.
            (
                "an oversized body",
                vec![b' '; locus::api::MAX_JSON_BODY + 1024],
                StatusCode::PAYLOAD_TOO_LARGE,
                "length limit exceeded",
            ),
            (
                "an image given as a host path",
                json(serde_json::json!({"name": "a", "vcpus": 1, "memory-mib": 64, "image": "/etc/shadow"})),
                StatusCode::BAD_REQUEST,
                "paths are not accepted",
            ),
            (
                "an image the store does not have",
                json(serde_json::json!({"name": "a", "vcpus": 1, "memory-mib": 64, "image": "disk.qcow2"})),
                StatusCode::BAD_REQUEST,
                "no image disk.qcow2 in this host's store",
            ),
        ];
        for (what, body, status, needle) in cases {
            let (got, message) = refused(&c, body).await;
            assert_eq!(got, status, "{what}: {message}");
            assert!(message.contains(needle), "{what}: {message:?} should mention {needle:?}");
        }
        // Let a sample pass, then count what libvirt holds.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let host: HostStatus = c.get("/v1/host").await.expect("host");
        assert_eq!((host.own_domains, host.vms.total, host.other_domains), (1, 1, 1), "{host:?}");
        let vms: Vec<VmStatus> = c.get("/v1/vms").await.expect("list");
        assert_eq!(vms.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), ["taken"]);
    });
    let bad_cli = agent.cli(&["vm", "create", "x", "--vcpus", "0"]);
    assert!(!bad_cli.status.success());
    assert!(String::from_utf8_lossy(&bad_cli.stderr).contains("vcpus must be at least 1"));
}

#[test]
fn policies_hot_swap_on_the_running_agent_and_bad_components_are_refused() {
    let agent = Agent::start(TEST, "policy-host", &[]);
    let slots: Vec<SlotListing> = agent.json(&["policy", "list"]);
    assert!(slots[0].active.as_ref().is_some_and(|p| p.name == "best-fit"), "{slots:?}");
    let _: VmStatus = agent.json(&["vm", "create", "before"]);

    let loaded: PolicyVersion = agent.json(&["policy", "load", "spread", "--slot", "placement"]);
    assert_eq!(loaded.name, "spread");
    let _: VmStatus = agent.json(&["vm", "create", "after"]);
    let slots: Vec<SlotListing> = agent.json(&["policy", "list"]);
    let placement = &slots[0];
    assert_eq!(placement.active.as_ref().map(|p| (p.name.as_str(), p.calls)), Some(("spread", 1)));
    assert_eq!(
        placement.previous.iter().map(|p| (p.name.as_str(), p.calls)).collect::<Vec<_>>(),
        [("best-fit", 1)]
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm\x0d\0\x01\0 not really").expect("write");
    for (what, policy, slot, needle) in [
        ("garbage", garbage.to_str().unwrap_or_default(), "placement", "component"),
        ("a migration policy in the placement slot", "consolidate", "placement", "placement slot needs"),
        ("a component that imports a clock", "clock", "placement", "clock"),
    ] {
        let policy = if policy == "clock" { hostile("clock", &dir) } else { policy.to_owned() };
        let out = agent.cli(&["policy", "load", &policy, "--slot", slot]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(needle), "{what}: {err}");
    }
    let slots: Vec<SlotListing> = agent.json(&["policy", "list"]);
    assert_eq!(slots[0].active.as_ref().map(|p| p.name.as_str()), Some("spread"), "still the last good one");
    let _: VmStatus = agent.json(&["vm", "create", "still-serving"]);

    // A component that loads but loops forever: its calls hit the deadline
    // and the previous version (spread) decides instead.
    let spin = hostile("spin", &dir);
    let _: PolicyVersion = agent.json(&["policy", "load", &spin, "--slot", "placement"]);
    let placed: VmStatus = agent.json(&["vm", "create", "despite-spin"]);
    assert_eq!(placed.state, DomainState::Running);
    let slots: Vec<SlotListing> = agent.json(&["policy", "list"]);
    let spin = slots[0].active.as_ref().expect("spin is active");
    assert_eq!((spin.calls, spin.errors), (1, 1), "{spin:?}");
}

/// Writes one of the hostile test components to `dir` and returns its path.
fn hostile(name: &str, dir: &tempfile::TempDir) -> String {
    let bytes = match name {
        "clock" => locus_builtin::hostile::CLOCK,
        "spin" => locus_builtin::hostile::SPIN,
        _ => panic!("no hostile component {name}"),
    };
    let path = dir.path().join(format!("{name}.wasm"));
    std::fs::write(&path, bytes).expect("write");
    path.display().to_string()
}

#[test]
fn the_tcp_api_needs_the_bearer_token_and_speaks_tls_with_a_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token-of-enough-length\n").expect("token");
    let free_port =
        || std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    let addr = format!("127.0.0.1:{}", free_port());
    let token = token_file.display().to_string();
    let agent = Agent::start(TEST, "tcp-host", &["--listen", &addr, "--token-file", &token]);
    rt().block_on(async {
        let good =
            Client::new(Endpoint::Tcp { addr: addr.clone(), token: "s3cret-token-of-enough-length".into() });
        let _: HostStatus = good.get("/v1/host").await.expect("with the token");
        let bad = Client::new(Endpoint::Tcp { addr: addr.clone(), token: "wrong".into() });
        let e = bad.get::<HostStatus>("/v1/host").await.expect_err("without it");
        let e = e.downcast::<AgentError>().expect("an API error");
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
    });
    drop(agent);

    // With a certificate: TLS, verified against the CA the client trusts.
    let pem = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write pem");
        path.display().to_string()
    };
    let (ca, ca_key) = authority();
    let key = rcgen::KeyPair::generate().expect("key");
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).expect("params");
    let cert = params.signed_by(&key, &ca, &ca_key).expect("sign");
    let (cert_file, key_file, ca_file) =
        (pem("agent.pem", cert.pem()), pem("agent.key", key.serialize_pem()), pem("ca.pem", ca.pem()));
    let (other_ca, _) = authority();
    let other_ca_file = pem("other-ca.pem", other_ca.pem());
    let addr = format!("127.0.0.1:{}", free_port());
    let cert_set = format!("tls.cert-file={cert_file:?}");
    let key_set = format!("tls.key-file={key_file:?}");
    let agent = Agent::start(
        TEST,
        "tls-host",
        &["--listen", &addr, "--token-file", &token, "--set", &cert_set, "--set", &key_set],
    );
    let remote = |extra: &[&str]| {
        std::process::Command::new(common::locus_bin())
            .args(["host", "status", "--addr", &addr, "--token-file", &token])
            .args(extra)
            .output()
            .expect("run locus")
    };
    let ok = remote(&["--ca", &ca_file]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let plain = remote(&[]);
    assert!(!plain.status.success(), "plain HTTP to the TLS port fails");
    let untrusted = remote(&["--ca", &other_ca_file]);
    let err = String::from_utf8_lossy(&untrusted.stderr);
    assert!(!untrusted.status.success() && err.contains("TLS"), "an unknown CA is refused: {err}");
    assert!(agent.log().contains("API on TCP with TLS"), "{}", agent.log());
}

/// A CA certificate and its key, for tests.
fn authority() -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    (params.self_signed(&key).expect("self-signed"), key)
}

#[test]
fn sigterm_stops_the_agent_cleanly_and_a_restart_keeps_intent_and_the_loaded_policy() {
    let mut agent = Agent::start(TEST, "term-host", &[]);
    let _: VmStatus = agent.json(&["vm", "create", "keep"]);
    let _: PolicyVersion = agent.json(&["policy", "load", "green", "--slot", "placement"]);
    let status = agent.terminate();
    assert!(status.success(), "exit status {status:?}\n{}", agent.log());
    assert!(!agent.socket().exists(), "the socket is removed");
    assert!(agent.log().contains("agent stopped"));

    agent.spawn();
    let slots: Vec<SlotListing> = agent.json(&["policy", "list"]);
    assert_eq!(slots[0].active.as_ref().map(|p| p.name.as_str()), Some("green"), "{slots:?}");
    wait_until(Duration::from_secs(10), "the VM is back", || {
        let vms: Vec<VmStatus> = agent.json(&["vm", "list"]);
        state(&vms, "keep") == Some((DomainState::Running, Desired::Running))
    });
}

#[test]
fn configuration_layers_file_environment_and_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("agent.toml");
    std::fs::write(
        &file,
        "[pop]\nname = 'paris'\njurisdiction = 'FR'\nlocation = { lat = 48.86, lon = 2.35 }\n[host]\nvcpus = 3\n",
    )
    .expect("config");
    let config = file.display().to_string();
    let agent = Agent::start_with_env(
        TEST,
        "config-host",
        &["--config", &config, "--set", "host.disk-gib=9"],
        &[("LOCUS_HOST__VCPUS", "7"), ("LOCUS_HOST__MEMORY_MIB", "2048")],
    );
    let host: HostStatus = agent.json(&["host", "status"]);
    assert_eq!((host.pop.as_str(), host.jurisdiction.as_str()), ("paris", "FR"));
    let c = host.capacity;
    assert_eq!(
        (c.vcpus, c.memory_mib, c.disk_gib),
        (7, 2048, 9),
        "environment over file, flags over defaults"
    );

    let out = std::process::Command::new(common::locus_bin())
        .args([
            "agent",
            "--state-dir",
            &dir.path().join("s").display().to_string(),
            "--set",
            "host.colour=red",
        ])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("colour"), "{err}");
}

#[test]
fn kill_9_with_five_vms_then_restart_keeps_the_same_five() {
    let mut agent = Agent::start(TEST, "crash-host", &[]);
    for i in 0..5 {
        let _: VmStatus = agent.json(&["vm", "create", &format!("vm{i}")]);
    }
    let _: VmStatus = agent.json(&["vm", "stop", "vm4", "--force"]);
    agent.kill9();
    // The test driver lived in the killed process: every domain is gone, so
    // the restarted agent must define each VM again from its intent, once.
    agent.spawn();
    wait_until(Duration::from_secs(20), "the five VMs are back as intended", || {
        let vms: Vec<VmStatus> = agent.json(&["vm", "list"]);
        vms.len() == 5
            && vms.iter().all(|v| v.busy.is_none())
            && (0..4)
                .all(|i| state(&vms, &format!("vm{i}")) == Some((DomainState::Running, Desired::Running)))
            && state(&vms, "vm4") == Some((DomainState::Shutoff, Desired::Stopped))
    });
    std::thread::sleep(Duration::from_millis(500));
    let host: HostStatus = agent.json(&["host", "status"]);
    assert_eq!((host.own_domains, host.vms.total), (5, 5), "none duplicated: {host:?}");
    assert!(agent.log().contains("vm vm0: intended but missing from the hypervisor"), "{}", agent.log());
}

#[test]
fn the_agent_refuses_paths_it_would_damage_and_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The agent must exit with an error; one that starts serving instead
    // is stopped and the test fails.
    let run = |args: &[&str]| {
        let mut child = std::process::Command::new(common::locus_bin())
            .args(["agent", "--dev", "--libvirt-uri", TEST, "--host-name", "careful"])
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("runs");
        let start = std::time::Instant::now();
        while child.try_wait().expect("wait").is_none() {
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!("the agent started with {args:?} instead of refusing");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().expect("output");
        assert!(!out.status.success(), "the agent must refuse {args:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // A socket path naming someone's file: the file is left alone.
    let precious = dir.path().join("precious.txt");
    std::fs::write(&precious, "keep me").expect("write");
    let state = dir.path().join("state");
    let socket = format!("socket={}", precious.display());
    let err = run(&["--state-dir", state.to_str().expect("utf-8"), "--set", &socket]);
    assert!(err.contains("exists and is not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&precious).expect("still there"), "keep me");
    // A shared directory (like /tmp) as the state directory is not taken over.
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).expect("mkdir");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    let err = run(&["--state-dir", shared.to_str().expect("utf-8")]);
    assert!(err.contains("is shared (mode 1777)"), "{err}");
    let mode = std::fs::metadata(&shared).expect("stat").permissions().mode() & 0o7777;
    assert_eq!(mode, 0o1777, "its mode is untouched");
}

#[test]
fn images_through_the_agent_hostile_uploads_are_refused_and_the_store_serves_vms() {
    let agent = Agent::start("test:///default", "img-host", &["--set", "images.max-bytes=2000000"]);
    let work = tempfile::tempdir().expect("tempdir");
    let path = |n: &str| work.path().join(n).to_str().expect("utf-8").to_owned();
    let qemu_img = |args: &[&str]| {
        let ok = std::process::Command::new("qemu-img").args(args).status().expect("qemu-img").success();
        assert!(ok, "qemu-img {args:?}");
    };
    let refused = |args: &[&str]| {
        let out = agent.cli(args);
        assert!(!out.status.success(), "{args:?} refused");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    // A qcow2 whose backing file is a host file, and one that is too big.
    qemu_img(&["create", "-q", "-f", "qcow2", "-b", "/etc/shadow", "-F", "raw", &path("evil.qcow2"), "1M"]);
    let err = refused(&["image", "import", &path("evil.qcow2")]);
    assert!(err.contains("backing file") && !err.contains("/etc/shadow"), "{err}");
    std::fs::write(path("big.raw"), vec![0u8; 2_000_001]).expect("write");
    let err = refused(&["image", "import", &path("big.raw")]);
    assert!(err.contains("larger than this agent accepts") && err.contains("413"), "{err}");
    let listed: Vec<serde_json::Value> = agent.json(&["image", "list"]);
    assert!(listed.is_empty(), "nothing stored: {listed:?}");

    // A real image: VMs boot from it on disks of their own, and it stays
    // while they exist.
    qemu_img(&["create", "-q", "-f", "qcow2", &path("base.qcow2"), "1M"]);
    let info: serde_json::Value = agent.json(&["image", "import", &path("base.qcow2"), "--name", "base"]);
    assert_eq!(info["format"], "qcow2");
    let _: VmStatus = agent.json(&["vm", "create", "on-base", "--memory-mib", "64", "--image", "base"]);
    let shown: serde_json::Value = agent.json(&["image", "show", "base"]);
    assert_eq!(shown["used-by"], serde_json::json!(["on-base"]));
    let err = refused(&["image", "rm", "base"]);
    assert!(err.contains("in use by on-base"), "{err}");
    let _: Deleted = agent.json(&["vm", "delete", "on-base"]);
    let _: serde_json::Value = agent.json(&["image", "rm", "base"]);
    let _: HostStatus = agent.json(&["host", "status"]);
}

#[test]
fn policy_uploads_are_bounded_in_number_and_size() {
    use std::io::Write;
    let agent = Agent::start(TEST, "upload-host", &[]);
    // Two uploads that never finish sending hold both upload slots.
    let stalled: Vec<std::os::unix::net::UnixStream> = (0..2)
        .map(|_| {
            let mut s = std::os::unix::net::UnixStream::connect(agent.socket()).expect("connect");
            s.write_all(
                b"PUT /v1/policies/placement?name=slow HTTP/1.1\r\nHost: l\r\nContent-Type: application/wasm\r\nContent-Length: 50000\r\n\r\n\0asm",
            )
            .expect("write");
            s
        })
        .collect();
    wait_until(Duration::from_secs(10), "a third upload is turned away", || {
        let out = agent.cli(&["policy", "load", "spread", "--slot", "placement"]);
        String::from_utf8_lossy(&out.stderr).contains("policy uploads are already running")
    });
    let _: HostStatus = agent.json(&["host", "status"]);
    drop(stalled);
    wait_until(Duration::from_secs(10), "the slots are free again", || {
        agent.cli(&["policy", "load", "spread", "--slot", "placement"]).status.success()
    });
    let big = vec![0u8; (16 << 20) + 1];
    let e = rt()
        .block_on(agent.client().put_bytes::<PolicyVersion>(
            "/v1/policies/placement?name=big",
            "application/wasm",
            big,
        ))
        .expect_err("too large");
    let e = e.downcast::<AgentError>().expect("an API error");
    assert_eq!((e.status, e.kind.as_str()), (StatusCode::PAYLOAD_TOO_LARGE, "too-large"), "{}", e.message);
}

#[test]
fn declared_load_drives_the_hosts_load_state_through_the_agent() {
    use locus_core::load::LoadState;
    let agent = Agent::start(TEST, "load-host", &["--set", "load.sustain-samples=2"]);
    let host: HostStatus = agent.json(&["host", "status"]);
    let cpus = host.cpu_milli / 1000;
    assert!(cpus > 0, "{host:?}");
    let (vcpus, full) = (cpus.to_string(), host.cpu_milli.to_string());
    for name in ["busy-1", "busy-2"] {
        let _: VmStatus = agent.json(&["vm", "create", name, "--vcpus", &vcpus, "--memory-mib", "64"]);
        let set: VmStatus = agent.json(&["vm", "set-load", name, &full]);
        assert_eq!(
            (set.spec.load_cpu_milli, set.cpu_milli),
            (Some(host.cpu_milli), None),
            "declared, not measured"
        );
    }
    let too_much = agent.cli(&["vm", "set-load", "busy-1", &(host.cpu_milli + 1).to_string()]);
    assert!(String::from_utf8_lossy(&too_much.stderr).contains("400"), "more than its vCPUs can use");
    wait_until(Duration::from_secs(10), "the host is judged overloaded", || {
        agent.json::<HostStatus>(&["host", "status"]).load_state == LoadState::Overloaded
    });
    assert!(agent.log().contains("host overloaded: CPU demand"), "{}", agent.log());
    for name in ["busy-1", "busy-2"] {
        let _: VmStatus = agent.json(&["vm", "set-load", name, "0"]);
    }
    wait_until(Duration::from_secs(10), "the host is judged underloaded", || {
        agent.json::<HostStatus>(&["host", "status"]).load_state == LoadState::Underloaded
    });
}

#[test]
fn an_empty_host_goes_to_standby_running_its_command_and_a_vm_wakes_it() {
    let marks = tempfile::tempdir().expect("tempdir");
    let (down, up) = (marks.path().join("standby"), marks.path().join("woken"));
    let standby = format!("energy.standby-command=[\"touch\", {:?}]", down.display().to_string());
    let wake = format!("energy.wake-command=[\"touch\", {:?}]", up.display().to_string());
    let agent = Agent::start(
        "test:///default",
        "sleepy",
        &["--set", "energy.standby-after-ms=600", "--set", &standby, "--set", &wake],
    );
    wait_until(Duration::from_secs(10), "the empty host goes to standby", || {
        let h: HostStatus = agent.json(&["host", "status"]);
        h.power == "standby" && h.watts == 10
    });
    wait_until(Duration::from_secs(5), "its standby command ran", || down.exists());
    assert!(!up.exists());
    // Alone, it is the only host: a VM wakes it.
    let _: VmStatus = agent.json(&["vm", "create", "alarm", "--memory-mib", "64"]);
    let h: HostStatus = agent.json(&["host", "status"]);
    assert_eq!(h.power, "on");
    wait_until(Duration::from_secs(5), "its wake command ran", || up.exists());
    assert!(agent.log().contains("host woken from standby"), "{}", agent.log());
}
