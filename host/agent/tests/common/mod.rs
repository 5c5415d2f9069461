//! Starting real `locus agent` processes for end-to-end tests, and talking
//! to them through the CLI binary and the API client.

#![allow(dead_code)]

use locus::client::{Client, Endpoint};
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `locus` binary under test.
pub fn locus_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_locus"))
}

/// A running agent process; killed when dropped.
pub struct Agent {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub args: Vec<String>,
    pub host: String,
    /// Environment variables the process gets (nothing else `LOCUS_*`).
    pub envs: Vec<(String, String)>,
    /// A command the agent runs under (e.g. one that enters namespaces),
    /// which must exec it: a kill reaches the agent itself.
    pub wrapper: Vec<String>,
}

impl Agent {
    /// Starts an agent for host `host` on libvirt `uri`, sampling every
    /// 200 ms, with `extra` arguments, and waits until its API answers.
    pub fn start(uri: &str, host: &str, extra: &[&str]) -> Agent {
        Agent::start_with_env(uri, host, extra, &[])
    }

    /// [`Agent::start`] with environment variables.
    pub fn start_with_env(uri: &str, host: &str, extra: &[&str], envs: &[(&str, &str)]) -> Agent {
        let mut args =
            vec!["--set", "sample-interval-ms=200", "--dev", "--p2p-listen", "/ip4/127.0.0.1/tcp/0"];
        args.extend(extra);
        Agent::launch(uri, host, &args, envs, None)
    }

    /// [`Agent::start`] keeping its state in `state_dir` (its socket and
    /// log stay in its own temporary directory).
    pub fn start_with_state(uri: &str, host: &str, state_dir: &Path, extra: &[&str]) -> Agent {
        let mut args =
            vec!["--set", "sample-interval-ms=200", "--dev", "--p2p-listen", "/ip4/127.0.0.1/tcp/0"];
        args.extend(extra);
        Agent::launch(uri, host, &args, &[], Some(state_dir))
    }

    /// An agent on the test driver that joins a cluster (no `--dev`).
    pub fn start_cluster_member(host: &str, extra: &[&str]) -> Agent {
        let mut args = vec!["--set", "sample-interval-ms=1000"];
        args.extend(extra);
        Agent::launch("test:///default", host, &args, &[], None)
    }

    fn launch(uri: &str, host: &str, extra: &[&str], envs: &[(&str, &str)], state: Option<&Path>) -> Agent {
        Agent::launch_with(&[], uri, host, extra, envs, state)
    }

    fn launch_with(
        wrapper: &[&str],
        uri: &str,
        host: &str,
        extra: &[&str],
        envs: &[(&str, &str)],
        state: Option<&Path>,
    ) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut args: Vec<String> = vec![
            "agent".into(),
            "--state-dir".into(),
            state.unwrap_or(dir.path()).display().to_string(),
            "--set".into(),
            format!("socket={:?}", dir.path().join("agent.sock").display().to_string()),
            "--libvirt-uri".into(),
            uri.into(),
            "--host-name".into(),
            host.into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let envs = envs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let wrapper = wrapper.iter().map(|s| s.to_string()).collect();
        let mut agent = Agent { dir, child: None, args, host: host.into(), envs, wrapper };
        agent.spawn();
        agent
    }

    /// An agent on libvirt `uri` started through `wrapper` (which execs it),
    /// with exactly the arguments given after its state, socket, URI and host.
    pub fn start_wrapped(wrapper: &[&str], uri: &str, host: &str, extra: &[&str]) -> Agent {
        Agent::launch_with(wrapper, uri, host, extra, &[], None)
    }

    /// (Re)starts the process with the same state directory and arguments.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .expect("log file");
        let mut command = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(locus_bin());
                c
            }
            None => Command::new(locus_bin()),
        };
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("LOCUS_") {
                command.env_remove(key);
            }
        }
        let child = command
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .env("LOCUS_LOG", "info,locus=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn agent");
        self.child = Some(child);
        let socket = self.socket();
        wait_until(Duration::from_secs(30), "the agent's API answers", || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok() && self.cli_ok(&["host", "status"])
        });
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    pub fn client(&self) -> Client {
        Client::new(Endpoint::Unix(self.socket()))
    }

    /// Runs `locus ARGS --socket S`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(locus_bin()).args(args).arg("--socket").arg(self.socket()).output().expect("run locus")
    }

    fn cli_ok(&self, args: &[&str]) -> bool {
        self.cli(args).status.success()
    }

    /// Runs `locus ARGS --json` and decodes its output, failing on an error.
    pub fn json<T: DeserializeOwned>(&self, args: &[&str]) -> T {
        let out = self.cli(&[args, &["--json"]].concat());
        assert!(
            out.status.success(),
            "locus {args:?} failed: {}\n--- agent log ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("locus {args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let pid = c.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "the agent did not stop on SIGTERM:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls `cond` every 50 ms until it holds, failing after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A tokio runtime for API calls from tests.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// The repository's root.
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().and_then(Path::parent).expect("repo root")
}

/// A PoP of a test cluster: (name, jurisdiction, lat, lon, agents).
pub type PopSpec = (&'static str, &'static str, f32, f32, usize);

/// Agents as separate processes forming one cluster on loopback: PoP `p`'s
/// agents listen on 127.`net+p`.0.`h+1`:7946, so a test's addresses are its
/// own and latency between PoPs can be emulated by address prefix.
pub struct Cluster {
    pub agents: Vec<Agent>,
    pub pops: Vec<usize>,
    pub key: PathBuf,
    _keydir: tempfile::TempDir,
}

impl Cluster {
    /// Starts every agent; `rtt_ms(a, b)` is the round trip to emulate
    /// between PoPs `a` and `b` (0 for none); `extra` goes to every agent.
    pub fn start(net: u8, pops: &[PopSpec], rtt_ms: impl Fn(usize, usize) -> u64, extra: &[&str]) -> Cluster {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Cluster::start_with(net, pops, rtt_ms, |_| extra.clone())
    }

    /// [`Cluster::start`] with arguments per agent: `extra(i)` for the
    /// `i`th agent, whose overlay address is `127.{net+pop}.0.{h+1}`.
    pub fn start_with(
        net: u8,
        pops: &[PopSpec],
        rtt_ms: impl Fn(usize, usize) -> u64,
        extra: impl Fn(usize) -> Vec<String>,
    ) -> Cluster {
        let keydir = tempfile::tempdir().expect("tempdir");
        let key = keydir.path().join("cluster.key");
        let out = Command::new(locus_bin()).args(["cluster", "keygen"]).output().expect("keygen");
        std::fs::write(&key, &out.stdout).expect("key");
        let first = format!("/ip4/127.{net}.0.1/tcp/7946");
        let mut agents = vec![];
        let mut pop_of = vec![];
        for (p, (name, jurisdiction, lat, lon, n)) in pops.iter().enumerate() {
            for h in 0..*n {
                let ip = format!("127.{}.0.{}", net as usize + p, h + 1);
                let mut args: Vec<String> = vec![
                    "--pop".into(),
                    (*name).into(),
                    "--set".into(),
                    format!("pop.jurisdiction={jurisdiction}"),
                    "--set".into(),
                    format!("pop.location={{lat={lat},lon={lon}}}"),
                    "--cluster-key".into(),
                    key.display().to_string(),
                    "--p2p-listen".into(),
                    format!("/ip4/{ip}/tcp/7946"),
                    "--bootstrap".into(),
                    first.clone(),
                ];
                let rules: Vec<String> = (0..pops.len())
                    .filter(|&q| rtt_ms(p, q) > 0)
                    .map(|q| format!("{{prefix=\"/ip4/127.{}.\",rtt-ms={}}}", net as usize + q, rtt_ms(p, q)))
                    .collect();
                if !rules.is_empty() {
                    args.push("--set".into());
                    args.push(format!("overlay.emulated-latency=[{}]", rules.join(",")));
                }
                args.extend(extra(agents.len()));
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                agents.push(Agent::start_cluster_member(&format!("{name}-{h}"), &args));
                pop_of.push(p);
            }
        }
        Cluster { agents, pops: pop_of, key, _keydir: keydir }
    }
}

/// The transport of a node that holds the cluster key but is not an agent
/// (a stranger's tool, a compromised insider): TCP under the key, noise,
/// yamux, as the agents speak it.
pub fn keyed_transport(
    psk: libp2p::pnet::PreSharedKey,
    key: &libp2p::identity::Keypair,
) -> Result<
    libp2p::core::transport::Boxed<(libp2p::PeerId, libp2p::core::muxing::StreamMuxerBox)>,
    Box<dyn std::error::Error + Send + Sync>,
> {
    use libp2p::core::Transport as _;
    use libp2p::core::transport::upgrade::Version;
    let tcp = libp2p::tcp::tokio::Transport::new(libp2p::tcp::Config::default())
        .and_then(move |s, _| libp2p::pnet::PnetConfig::new(psk).handshake(s));
    Ok(tcp
        .upgrade(Version::V1)
        .authenticate(libp2p::noise::Config::new(key)?)
        .multiplex(libp2p::yamux::Config::default())
        .boxed())
}
