//! `locus`: the Locus command line. `locus agent` runs the daemon; the
//! `vm`, `host` and `policy load|list|push|status|rollback` verbs talk to a
//! running agent; the other `policy` verbs and `place` work offline, for
//! policy authors and operators before anything runs.

mod bench;
mod check;
mod native;
mod place;

use clap::{Parser, Subcommand};
use locus::config::{AgentConfig, LogFormat};
use locus::control::{self, Connection, LoadArgs, RollbackArgs, VmCommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "locus", version, about = "Locus: decentralised VM scheduling across points of presence")]
struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `locus=debug`;
    /// for the agent it overrides the configured `log`.
    #[arg(long, global = true, env = "LOCUS_LOG")]
    log: Option<String>,
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent daemon on this host.
    Agent(AgentArgs),
    /// Manage VMs on a running agent.
    Vm {
        #[command(subcommand)]
        command: VmCommand,
    },
    /// Disk images in a running agent's store.
    Image {
        #[command(subcommand)]
        command: locus::control::images::ImageCommand,
    },
    /// The cluster a running agent belongs to.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// The host a running agent manages.
    Host {
        #[command(subcommand)]
        command: locus::control::host::HostCommand,
    },
    /// Work with policy components.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Dry-run placements of requests over a cluster description, offline.
    Place(place::Args),
    /// Run a scenario in the simulator: the real node code of every host
    /// in virtual time, with the network and hypervisors modelled.
    Sim(locus::simulate::Args),
    /// Measure the agent.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Create+start throughput of a real agent process on the test driver,
    /// against libvirt called directly, and the agent's resident memory.
    Vms(locus::vmbench::Args),
    /// A cluster of agent processes on loopback: convergence, gossip bytes
    /// per agent, and placement latency in-PoP against forwarded.
    Cluster(locus::clusterbench::Args),
    /// Live migration through the agents against `virsh migrate` (total
    /// time, downtime), and an overload relieved in a PoP of agents.
    Migrate(locus::migratebench::Args),
    /// A signed policy push to a PoP of agent processes: entered to active
    /// on every agent, against loading it on one agent.
    Rollout(locus::rolloutbench::Args),
    /// One image to many agents with capped uploads: swarming against
    /// every agent fetching from the importing one.
    Images(locus::imagebench::Args),
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// PoPs (hosts alive, free capacity, measured latency) and hosts (liveness, VMs).
    Status,
    /// Dial an agent of a cluster, e.g. `/ip4/10.0.0.5/tcp/7946`.
    Join {
        /// Its multiaddr.
        addr: String,
    },
    /// Print a new cluster key (give the same file to every agent).
    Keygen,
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Verify a component: format, world, imports, exports, size, compile time.
    Check(check::Args),
    /// Measure a component's decisions per second and latency percentiles on
    /// a synthetic cluster.
    Bench(bench::Args),
    /// Load a component into a slot of the running agent (hot swap).
    Load(LoadArgs),
    /// The running agent's policies: active and earlier versions, with
    /// their configuration and failures by kind.
    List,
    /// Make an earlier version of a slot active again on the running agent,
    /// or (with `--scope`) undo the last push on every agent of a scope.
    Rollback(RollbackArgs),
    /// Make an operator's signing key (trusted by agents that list its
    /// public half in `policies.trusted-keys`).
    Keygen(control::rollout::KeygenArgs),
    /// Sign a component with its name, version, slot and configuration
    /// into a bundle, offline.
    Sign(control::rollout::SignArgs),
    /// Push a signed bundle through the running agent to every agent of a
    /// PoP or the cluster: at once, after canaries, or as a shadow.
    Push(control::rollout::PushArgs),
    /// Every push of a scope with its stage, and every agent's policies.
    Status(control::rollout::StatusArgs),
}

/// `locus agent`: every configuration field can be set by `--set`; the
/// common ones have flags of their own.
#[derive(Debug, clap::Args)]
struct AgentArgs {
    /// TOML configuration file.
    #[arg(long, env = "LOCUS_CONFIG")]
    config: Option<PathBuf>,
    /// Set any configuration field, e.g. `--set host.vcpus=64` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// libvirt URI (`test:///default`, `qemu:///system`, …).
    #[arg(long)]
    libvirt_uri: Option<String>,
    /// State directory.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// This host's name.
    #[arg(long)]
    host_name: Option<String>,
    /// The PoP's name.
    #[arg(long)]
    pop: Option<String>,
    /// Also serve the API on TCP at this address (needs a token file).
    #[arg(long)]
    listen: Option<String>,
    /// Bearer token file for TCP clients.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Log line format.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Overlay listen multiaddr (repeatable), e.g. `/ip4/0.0.0.0/tcp/7946`.
    #[arg(long = "p2p-listen", value_name = "MULTIADDR")]
    p2p_listen: Vec<String>,
    /// An agent to join through (repeatable).
    #[arg(long = "bootstrap", value_name = "MULTIADDR")]
    bootstrap: Vec<String>,
    /// The cluster key file.
    #[arg(long)]
    cluster_key: Option<PathBuf>,
    /// Run without a cluster key (development only).
    #[arg(long)]
    dev: bool,
}

impl AgentArgs {
    fn overrides(&self, log: Option<&String>) -> anyhow::Result<Vec<(String, String)>> {
        let mut out = vec![];
        for s in &self.set {
            let (k, v) =
                s.split_once('=').ok_or_else(|| anyhow::anyhow!("--set {s:?}: expected key=value"))?;
            out.push((k.trim().to_owned(), v.to_owned()));
        }
        let quoted = |v: &str| toml::Value::String(v.to_owned()).to_string();
        let path = |p: &PathBuf| quoted(&p.to_string_lossy());
        let list = |l: &[String]| {
            (!l.is_empty())
                .then(|| format!("[{}]", l.iter().map(|a| quoted(a)).collect::<Vec<_>>().join(", ")))
        };
        let flags = [
            ("libvirt-uri", self.libvirt_uri.as_deref().map(quoted)),
            ("state-dir", self.state_dir.as_ref().map(path)),
            ("host.name", self.host_name.as_deref().map(quoted)),
            ("pop.name", self.pop.as_deref().map(quoted)),
            ("listen", self.listen.as_deref().map(quoted)),
            ("token-file", self.token_file.as_ref().map(path)),
            (
                "log-format",
                self.log_format.map(|f| quoted(if f == LogFormat::Json { "json" } else { "text" })),
            ),
            ("log", log.map(|l| quoted(l))),
            ("overlay.cluster-key-file", self.cluster_key.as_ref().map(path)),
            ("overlay.dev", self.dev.then(|| "true".to_owned())),
            ("overlay.listen", list(&self.p2p_listen)),
            ("overlay.bootstrap", list(&self.bootstrap)),
        ];
        out.extend(flags.into_iter().filter_map(|(k, v)| v.map(|v| (k.to_owned(), v))));
        Ok(out)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Agent(_)) {
        let filter = tracing_subscriber::EnvFilter::try_new(cli.log.as_deref().unwrap_or("warn"))
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    }
    let conn = &cli.connection;
    let result = match cli.command {
        Command::Agent(args) => agent(&args, cli.log.as_ref()).map(|()| ExitCode::SUCCESS),
        Command::Vm { command } => control::vm(conn, command).map(|()| ExitCode::SUCCESS),
        Command::Image { command } => control::images::run(conn, command).map(|()| ExitCode::SUCCESS),
        Command::Host { command } => control::host::run(conn, command).map(|()| ExitCode::SUCCESS),
        Command::Cluster { command: ClusterCommand::Status } => {
            control::cluster_status(conn).map(|()| ExitCode::SUCCESS)
        }
        Command::Cluster { command: ClusterCommand::Join { addr } } => {
            control::cluster_join(conn, &addr).map(|()| ExitCode::SUCCESS)
        }
        Command::Cluster { command: ClusterCommand::Keygen } => locus::overlay::identity::new_cluster_key()
            .map(|k| {
                print!("{k}");
                ExitCode::SUCCESS
            }),
        Command::Policy { command: PolicyCommand::Check(args) } => check::run(args),
        Command::Policy { command: PolicyCommand::Bench(args) } => bench::run(args),
        Command::Policy { command: PolicyCommand::Load(args) } => {
            control::policy_load(conn, args).map(|()| ExitCode::SUCCESS)
        }
        Command::Policy { command: PolicyCommand::List } => {
            control::policy_list(conn).map(|()| ExitCode::SUCCESS)
        }
        Command::Policy { command: PolicyCommand::Rollback(args) } => {
            control::policy_rollback(conn, args).map(|()| ExitCode::SUCCESS)
        }
        Command::Policy { command: PolicyCommand::Keygen(args) } => {
            control::rollout::keygen(&args).map(|()| ExitCode::SUCCESS)
        }
        Command::Policy { command: PolicyCommand::Sign(args) } => {
            control::rollout::sign(&args).map(|()| ExitCode::SUCCESS)
        }
        Command::Policy { command: PolicyCommand::Push(args) } => {
            control::rollout::push(conn, &args).map(|()| ExitCode::SUCCESS)
        }
        Command::Policy { command: PolicyCommand::Status(args) } => {
            control::rollout::status(conn, &args).map(|()| ExitCode::SUCCESS)
        }
        Command::Place(args) => place::run(args),
        Command::Sim(args) => locus::simulate::run(args).map(|()| ExitCode::SUCCESS),
        Command::Bench { command: BenchCommand::Vms(args) } => {
            locus::vmbench::run(args).map(|()| ExitCode::SUCCESS)
        }
        Command::Bench { command: BenchCommand::Cluster(args) } => {
            locus::clusterbench::run(args).map(|()| ExitCode::SUCCESS)
        }
        Command::Bench { command: BenchCommand::Rollout(args) } => {
            locus::rolloutbench::run(args).map(|()| ExitCode::SUCCESS)
        }
        Command::Bench { command: BenchCommand::Images(args) } => {
            locus::imagebench::run(args).map(|()| ExitCode::SUCCESS)
        }
        Command::Bench { command: BenchCommand::Migrate(args) } => {
            locus::migratebench::run(args).map(|()| ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", control::clean(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

fn agent(args: &AgentArgs, log: Option<&String>) -> anyhow::Result<()> {
    let config = AgentConfig::load(args.config.as_deref(), &args.overrides(log)?)?;
    locus::daemon::init_logging(&config);
    locus::daemon::run(config)
}
