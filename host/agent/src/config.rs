//! The agent's configuration: documented defaults, then a TOML file, then
//! `LOCUS_*` environment variables, then command-line flags, each layer
//! overriding the one before (figment does the layering).
//!
//! Every field can be set each way. In the environment, `__` separates a
//! section from its key and `_` stands for `-`: `LOCUS_HOST__VCPUS=64` sets
//! `host.vcpus`. On the command line, `--set host.vcpus=64` sets any field;
//! the most used ones also have their own flags.

use crate::overlay::shaping::EmulatedLatency;
use anyhow::{Context, Result, bail};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use locus_core::cluster::{MembershipConfig, PeerId};
use locus_core::node::{HostConfig, MovesConfig, NodeConfig, PopConfig, TimingConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Text,
    /// One JSON object per event.
    Json,
}

/// Which policy each slot starts with (a built-in name or a `.wasm` path)
/// and its configuration, and how many threads run policies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct PolicyConfig {
    /// The placement policy.
    pub placement: String,
    /// Key/values the placement policy reads with `config(key)`.
    pub placement_config: BTreeMap<String, String>,
    /// The migration (rebalancing) policy.
    pub migration: String,
    /// Key/values the migration policy reads with `config(key)`.
    pub migration_config: BTreeMap<String, String>,
    /// The consolidation policy (a migration-world component that empties
    /// underloaded hosts).
    pub consolidation: String,
    /// Key/values the consolidation policy reads with `config(key)`.
    pub consolidation_config: BTreeMap<String, String>,
    /// Threads that run policy calls beside the node; 0 picks half the
    /// CPUs (at least one), leaving the rest to the agent and its guests.
    pub workers: usize,
    /// Operators' ed25519 public keys (hex, from `locus policy keygen`).
    /// Once one is listed, the agent loads only bundles signed by a listed
    /// key, pushed or loaded locally; bare components are refused.
    pub trusted_keys: Vec<String>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            placement: "best-fit".into(),
            placement_config: BTreeMap::new(),
            migration: "relieve-overload".into(),
            migration_config: BTreeMap::new(),
            consolidation: "consolidate".into(),
            consolidation_config: BTreeMap::new(),
            workers: 0,
            trusted_keys: Vec::new(),
        }
    }
}

impl PolicyConfig {
    /// Worker threads to start.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
            n => n,
        }
    }
}

/// The overlay: how this agent joins the others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct OverlayConfig {
    /// Multiaddrs to listen on, e.g. `/ip4/0.0.0.0/tcp/7946` (QUIC
    /// `/udp/PORT/quic-v1` only with `dev`: the cluster key wraps TCP only).
    pub listen: Vec<String>,
    /// Multiaddrs of agents to join through, e.g. `/ip4/10.0.0.5/tcp/7946`.
    pub bootstrap: Vec<String>,
    /// The cluster's pre-shared key file (`locus cluster keygen`); agents
    /// without the same key cannot connect.
    pub cluster_key_file: Option<PathBuf>,
    /// Allow running without a cluster key (development only).
    pub dev: bool,
    /// Find agents on the LAN with mDNS.
    pub mdns: bool,
    /// Round trips added to connections dialled to matching addresses
    /// (emulated WAN latency for tests on one machine).
    pub emulated_latency: Vec<EmulatedLatency>,
}

impl Default for OverlayConfig {
    fn default() -> Self {
        OverlayConfig {
            listen: vec!["/ip4/0.0.0.0/tcp/7946".into()],
            bootstrap: vec![],
            cluster_key_file: None,
            dev: false,
            mdns: false,
            emulated_latency: vec![],
        }
    }
}

/// Everything `locus agent` is configured with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct AgentConfig {
    /// libvirt URI: `test:///default` (in-process test driver, no daemon) or
    /// e.g. `qemu:///system`.
    pub libvirt_uri: String,
    /// Where other hosts' libvirt daemons reach this host's to live-migrate
    /// VMs here, e.g. `qemu+tls://host-a.example/system`. Unset: VMs move
    /// cold (powered off, booted at the destination). Ignored on the test
    /// driver, which cannot migrate.
    pub migration_uri: Option<String>,
    /// Where the agent keeps its state (the intent store).
    pub state_dir: PathBuf,
    /// The API's unix socket (mode 0600); default `<state-dir>/agent.sock`.
    pub socket: Option<PathBuf>,
    /// Also serve the API on this TCP address, with a bearer token.
    pub listen: Option<SocketAddr>,
    /// File holding the bearer token for TCP clients; required with `listen`.
    pub token_file: Option<PathBuf>,
    /// Bounds on each API listener.
    pub api: crate::api::serve::ApiLimits,
    /// TLS for the TCP API (strongly advised with `listen`).
    pub tls: Option<crate::api::tls::TlsConfig>,
    /// The image store.
    pub images: crate::images::ImageConfig,
    /// Space kept in the state directory, MiB: when the filesystem fills,
    /// the agent gives it up to keep recording stops and deletes (creates
    /// and starts are refused with 507 until there is room again).
    pub reserve_mib: u64,
    /// Time between samples of every VM's CPU and memory, ms.
    pub sample_interval_ms: u64,
    /// Log filter (tracing EnvFilter syntax).
    pub log: String,
    /// Log line format.
    pub log_format: LogFormat,
    /// Policies the slots start with.
    pub policies: PolicyConfig,
    /// The PoP this host is in.
    pub pop: PopConfig,
    /// This host.
    pub host: HostConfig,
    /// Timers.
    pub timing: TimingConfig,
    /// The overlay.
    pub overlay: OverlayConfig,
    /// Heartbeats and failure detection.
    pub membership: MembershipConfig,
    /// When the host counts as overloaded or underloaded.
    pub load: locus_core::load::LoadConfig,
    /// Cooperative rebalancing and consolidation.
    pub rebalance: locus_core::rebalance::RebalanceConfig,
    /// Standby of empty hosts.
    pub energy: EnergyConfig,
    /// Bounds on concurrent migrations, per host and per PoP.
    pub moves: MovesConfig,
    /// The `/metrics` endpoint.
    pub metrics: crate::metrics::MetricsConfig,
    /// Decision records (`locus vm why`).
    pub records: crate::records::RecordsConfig,
}

/// `[energy]`: when an empty host goes to standby, and the commands that
/// power it down and wake it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct EnergyConfig {
    /// A host with no VM for this long goes to standby, ms (0: never).
    pub standby_after_ms: u64,
    /// Run when the host goes to standby, as argv (no shell), e.g. a
    /// power-capping or suspend helper; empty: nothing runs. The agent
    /// must stay reachable (it wakes the host when a VM is placed on it).
    pub standby_command: Vec<String>,
    /// Run when the host wakes from standby, as argv; empty: nothing runs.
    pub wake_command: Vec<String>,
    /// Longest either command may run, ms.
    pub command_timeout_ms: u64,
}

impl Default for EnergyConfig {
    fn default() -> Self {
        EnergyConfig {
            standby_after_ms: 600_000,
            standby_command: Vec::new(),
            wake_command: Vec::new(),
            command_timeout_ms: 30_000,
        }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            libvirt_uri: "test:///default".into(),
            migration_uri: None,
            state_dir: default_state_dir(),
            socket: None,
            listen: None,
            token_file: None,
            api: crate::api::serve::ApiLimits::default(),
            tls: None,
            images: crate::images::ImageConfig::default(),
            reserve_mib: 16,
            sample_interval_ms: 2000,
            log: "info,libp2p_kad=error".into(),
            log_format: LogFormat::Text,
            policies: PolicyConfig::default(),
            pop: PopConfig::default(),
            host: HostConfig { name: default_host_name(), ..HostConfig::default() },
            timing: TimingConfig::default(),
            overlay: OverlayConfig::default(),
            membership: MembershipConfig::default(),
            load: locus_core::load::LoadConfig::default(),
            rebalance: locus_core::rebalance::RebalanceConfig::default(),
            energy: EnergyConfig::default(),
            moves: MovesConfig::default(),
            metrics: crate::metrics::MetricsConfig::default(),
            records: crate::records::RecordsConfig::default(),
        }
    }
}

impl AgentConfig {
    /// Loads defaults ← `file` ← environment ← `overrides` (`key=value`,
    /// the value in TOML syntax or a bare string).
    pub fn load(file: Option<&Path>, overrides: &[(String, String)]) -> Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(AgentConfig::default()));
        if let Some(file) = file {
            if !file.is_file() {
                bail!("config file {} does not exist", file.display());
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        figment = figment
            .merge(Env::prefixed("LOCUS_").map(|k| k.as_str().replace("__", ".").replace('_', "-").into()));
        for (key, value) in overrides {
            figment = figment.merge(Toml::string(&toml_line(key, value)));
        }
        let config: AgentConfig =
            figment.extract().map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<()> {
        if self.listen.is_some() && self.token_file.is_none() {
            bail!(
                "invalid configuration: `listen` needs `token-file` (TCP clients must present a bearer token)"
            );
        }
        if self.overlay.cluster_key_file.is_none() && !self.overlay.dev {
            bail!(
                "no cluster key: set overlay.cluster-key-file (make one with `locus cluster keygen`), or run with --dev"
            );
        }
        let m = &self.membership;
        if m.heartbeat_ms == 0 || m.suspect_ms <= m.heartbeat_ms || m.dead_ms <= m.suspect_ms {
            bail!("invalid configuration: membership needs 0 < heartbeat-ms < suspect-ms < dead-ms");
        }
        if self.sample_interval_ms == 0 {
            bail!("invalid configuration: sample-interval-ms must be at least 1");
        }
        let a = &self.api;
        if a.max_connections == 0 || a.header_timeout_ms == 0 || a.body_timeout_ms == 0 {
            bail!(
                "invalid configuration: api.max-connections, header-timeout-ms and body-timeout-ms must be at least 1"
            );
        }
        self.load.check().map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        self.rebalance.check().map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        self.moves.check().map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        if self.images.max_bytes == 0 || self.images.max_imports == 0 {
            bail!("invalid configuration: images.max-bytes and images.max-imports must be at least 1");
        }
        let max_stop = locus_core::node::MAX_STOP_TIMEOUT.as_millis();
        if u128::from(self.timing.stop_timeout_ms) > max_stop {
            bail!("invalid configuration: timing.stop-timeout-ms must be at most {max_stop} (10 minutes)");
        }
        Ok(())
    }

    /// Where images and VM disks live.
    pub fn images_dir(&self) -> PathBuf {
        self.images.dir.clone().unwrap_or_else(|| self.state_dir.join("images"))
    }

    /// The unix socket path.
    pub fn socket_path(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(|| self.state_dir.join("agent.sock"))
    }

    /// What the node is configured with, as peer `peer`.
    pub fn node(&self, peer: PeerId) -> NodeConfig {
        NodeConfig {
            peer,
            membership: self.membership.clone(),
            pop: self.pop.clone(),
            host: self.host.clone(),
            timing: self.timing.clone(),
            load: self.load.clone(),
            rebalance: self.rebalance.clone(),
            energy: locus_core::node::EnergyConfig { standby_after_ms: self.energy.standby_after_ms },
            moves: self.moves.clone(),
        }
    }

    /// The bearer token, read from `token-file`.
    pub fn token(&self) -> Result<Option<String>> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        crate::files::warn_if_shared(path, "API token")?;
        let token = std::fs::read_to_string(path)
            .with_context(|| format!("reading token file {}", path.display()))?;
        let token = token.trim().to_owned();
        if token.len() < 16 {
            bail!("the token in {} is shorter than 16 characters", path.display());
        }
        Ok(Some(token))
    }
}

/// `key = value` as a TOML line: the value as written when it parses as
/// TOML (numbers, booleans, quoted strings, arrays), else as a string.
fn toml_line(key: &str, value: &str) -> String {
    let line = format!("{key} = {value}");
    if toml::from_str::<toml::Table>(&line).is_ok() {
        line
    } else {
        format!("{key} = {}", toml::Value::String(value.to_owned()))
    }
}

/// `/var/lib/locus` for root, else `~/.local/state/locus`.
pub fn default_state_dir() -> PathBuf {
    let root = std::env::var_os("USER").is_some_and(|u| u == "root")
        || std::env::var_os("HOME").is_some_and(|h| h == "/root");
    match std::env::var_os("HOME") {
        Some(home) if !root => PathBuf::from(home).join(".local/state/locus"),
        _ => PathBuf::from("/var/lib/locus"),
    }
}

/// The default API socket, where a client looks when not told.
pub fn default_socket() -> PathBuf {
    default_state_dir().join("agent.sock")
}

fn default_host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| locus_core::request::valid_name(h))
        .unwrap_or_else(|| "host".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_override_in_order_and_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("agent.toml");
        std::fs::write(&file, "libvirt-uri = 'qemu:///system'\n[host]\nvcpus = 8\nname = 'from-file'\n")
            .expect("write");
        let dev = || ("overlay.dev".to_owned(), "true".to_owned());
        let c = AgentConfig::load(
            Some(&file),
            &[("host.vcpus".into(), "64".into()), ("pop.name".into(), "paris".into()), dev()],
        )
        .expect("load");
        assert_eq!(c.libvirt_uri, "qemu:///system");
        assert_eq!(
            (c.host.vcpus, c.host.name.as_str(), c.pop.name.as_str()),
            (Some(64), "from-file", "paris")
        );
        assert_eq!(c.sample_interval_ms, 2000, "defaults fill the rest");
        let e = AgentConfig::load(None, &[("host.colour".into(), "red".into()), dev()]).expect_err("unknown");
        assert!(format!("{e:#}").contains("colour"), "{e:#}");
        let e = AgentConfig::load(None, &[("listen".into(), "\"127.0.0.1:1\"".into()), dev()])
            .expect_err("token");
        assert!(e.to_string().contains("token-file"), "{e}");
        let e = AgentConfig::load(None, &[("moves.max-per-pop".into(), "0".into()), dev()]).expect_err("0");
        assert!(e.to_string().contains("max-per-pop must be at least 1"), "{e}");
        let e = AgentConfig::load(None, &[]).expect_err("no key");
        assert!(e.to_string().contains("no cluster key"), "{e}");
    }
}
