//! The CLI verbs that talk to a running agent: `locus vm …`, `locus image
//! …` ([`images`]), `locus host status`, `locus policy load|list`. Readable tables by default, the API's
//! JSON with `--json`.

use crate::api::vms::DeleteAnswer;
use crate::client::{Client, Endpoint};
use crate::policies::{PolicyVersion, SlotListing, SlotName};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use locus_core::node::VmStatus;
use locus_core::request::{GroupKindSpec, GroupRef};
use locus_core::{Location, RestartPolicy, VmRequest};
use std::path::PathBuf;

pub mod host;
pub mod images;
pub mod rollout;

/// How to reach the agent and how to print.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// The agent's unix socket.
    #[arg(long, global = true, env = "LOCUS_SOCKET")]
    pub socket: Option<PathBuf>,
    /// The agent's TCP address (`host:port`) instead of its socket.
    #[arg(long, global = true, env = "LOCUS_ADDR")]
    pub addr: Option<String>,
    /// File with the bearer token, for `--addr`.
    #[arg(long, global = true, env = "LOCUS_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Speak TLS to `--addr`, trusting the CA certificate(s) in this PEM file.
    #[arg(long, global = true, env = "LOCUS_CA")]
    pub ca: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

impl Connection {
    fn client(&self) -> Result<Client> {
        let endpoint = match &self.addr {
            Some(addr) => {
                let path = self.token_file.as_ref().context("--addr needs --token-file")?;
                let token = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?
                    .trim()
                    .to_owned();
                match &self.ca {
                    Some(ca) => {
                        Endpoint::Tls { addr: addr.clone(), token, tls: crate::api::tls::client_config(ca)? }
                    }
                    None => Endpoint::Tcp { addr: addr.clone(), token },
                }
            }
            None => Endpoint::Unix(self.socket.clone().unwrap_or_else(crate::config::default_socket)),
        };
        Ok(Client::new(endpoint))
    }
}

/// `locus vm …`
#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Place, define and boot a VM.
    Create(CreateArgs),
    /// List the VMs.
    List,
    /// Show one VM.
    Show {
        /// The VM.
        name: String,
    },
    /// Boot a stopped VM.
    Start {
        /// The VM.
        name: String,
    },
    /// Stop a VM: ask the guest, power it off after the timeout.
    Stop {
        /// The VM.
        name: String,
        /// Power off at once.
        #[arg(long)]
        force: bool,
        /// Seconds the guest gets before it is powered off.
        #[arg(long)]
        timeout: Option<f64>,
    },
    /// Power off, remove and forget a VM.
    Delete {
        /// The VM.
        name: String,
    },
    /// Declare a VM's expected CPU demand, in milli-CPUs (counted until
    /// the hypervisor measures it; the test driver never does).
    SetLoad {
        /// The VM.
        name: String,
        /// Milli-CPUs, at most 1000 per vCPU.
        cpu_milli: u32,
    },
    /// Move a VM to another host (live when the hypervisors can, else
    /// cold); waits until it runs there.
    Migrate {
        /// The VM.
        name: String,
        /// The destination host (default: the PoP's placement policy
        /// chooses among the other hosts).
        #[arg(long)]
        to: Option<String>,
    },
    /// How a VM came to be where it is: the records of its placement and
    /// moves (filters, policy, scores, fallback), from every agent reached.
    Why {
        /// The VM.
        name: String,
    },
}

/// What to create.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The VM's name.
    #[arg(required_unless_present = "from")]
    pub name: Option<String>,
    /// A whole request as a JSON file (the API's body); flags are ignored.
    #[arg(long, conflicts_with = "name")]
    pub from: Option<PathBuf>,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// Memory, MiB.
    #[arg(long, default_value_t = 512)]
    pub memory_mib: u32,
    /// Disk, GiB: reserved on the host, and the least size of the VM's disk on its image.
    #[arg(long, default_value_t = 0)]
    pub disk_gib: u32,
    /// The image to boot from: a name in the agent's image store or sha256:<hex>.
    #[arg(long)]
    pub image: Option<String>,
    /// libvirt network for the VM's interface.
    #[arg(long)]
    pub network: Option<String>,
    /// A label, `key=value` (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// A jurisdiction the VM may run in (repeatable).
    #[arg(long = "jurisdiction")]
    pub jurisdictions: Vec<String>,
    /// The users' location, `LAT,LON`.
    #[arg(long, value_name = "LAT,LON")]
    pub user: Option<String>,
    /// Largest round trip to the users, ms.
    #[arg(long)]
    pub max_latency_ms: Option<f32>,
    /// A group to join.
    #[arg(long)]
    pub group: Option<String>,
    /// How the group's members relate.
    #[arg(long, value_enum, default_value = "spread")]
    pub group_kind: GroupKindArg,
    /// Leave the VM stopped when found stopped, instead of restarting it.
    #[arg(long)]
    pub no_restart: bool,
}

/// Group kinds on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum GroupKindArg {
    /// Prefer sharing a host.
    Affinity,
    /// Never share a host.
    AntiAffinity,
    /// Prefer spreading.
    Spread,
}

impl CreateArgs {
    fn request(&self) -> Result<VmRequest> {
        if let Some(path) = &self.from {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            return serde_json::from_str(&text)
                .with_context(|| format!("{} is not a valid VM request", path.display()));
        }
        let mut labels = std::collections::BTreeMap::new();
        for l in &self.labels {
            let (k, v) = l.split_once('=').with_context(|| format!("--label {l:?}: expected key=value"))?;
            labels.insert(k.to_owned(), v.to_owned());
        }
        let user = match &self.user {
            Some(u) => {
                let (lat, lon) =
                    u.split_once(',').with_context(|| format!("--user {u:?}: expected LAT,LON"))?;
                Some(Location {
                    lat: lat.trim().parse().with_context(|| format!("--user latitude {lat:?}"))?,
                    lon: lon.trim().parse().with_context(|| format!("--user longitude {lon:?}"))?,
                })
            }
            None => None,
        };
        let kind = match self.group_kind {
            GroupKindArg::Affinity => GroupKindSpec::Affinity,
            GroupKindArg::AntiAffinity => GroupKindSpec::AntiAffinity,
            GroupKindArg::Spread => GroupKindSpec::Spread,
        };
        Ok(VmRequest {
            name: self.name.clone().unwrap_or_default(),
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            disk_gib: self.disk_gib,
            load_cpu_milli: None,
            group: self.group.clone().map(|name| GroupRef { name, kind }),
            jurisdictions: self.jurisdictions.clone(),
            user,
            max_latency_ms: self.max_latency_ms,
            image: self.image.clone(),
            network: self.network.clone(),
            labels,
            restart: if self.no_restart { RestartPolicy::Never } else { RestartPolicy::Always },
        })
    }
}

/// `locus policy load|list` against a running agent.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// A signed bundle (`locus policy sign`), a `.wasm` component, or the
    /// name of a built-in policy.
    pub policy: String,
    /// The slot to load it into (a bundle names its own).
    #[arg(long, value_enum)]
    pub slot: Option<SlotName>,
    /// The name to load it under (default: the file's stem or the built-in's name).
    #[arg(long)]
    pub name: Option<String>,
    /// A configuration entry for the policy, `key=value` (repeatable);
    /// what its `config(key)` returns.
    #[arg(long = "config", value_name = "KEY=VALUE")]
    pub config: Vec<String>,
}

/// `locus policy rollback`.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The slot to roll back.
    #[arg(long, value_enum)]
    pub slot: SlotName,
    /// Roll back a push on every agent of `cluster` or `pop:NAME` instead
    /// of this agent's slot.
    #[arg(long, conflicts_with = "hash")]
    pub scope: Option<crate::rollout::table::Scope>,
    /// A prefix of the hash of the version to make active (default: the
    /// newest earlier version).
    pub hash: Option<String>,
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")
}

pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Runs a `locus vm` verb.
pub fn vm(conn: &Connection, cmd: VmCommand) -> Result<()> {
    let client = conn.client()?;
    runtime()?.block_on(async {
        let status: VmStatus = match cmd {
            VmCommand::List => {
                let vms: Vec<VmStatus> = client.get("/v1/vms").await?;
                return if conn.json { print_json(&vms) } else { print_vms(&vms) };
            }
            VmCommand::Delete { name } => {
                let answer: DeleteAnswer =
                    client.delete(&format!("/v1/vms/{}", path_segment(&name)?)).await?;
                if conn.json {
                    return print_json(&answer);
                }
                match answer {
                    DeleteAnswer::Done(d) => println!("deleted {}", d.deleted),
                    DeleteAnswer::Pending(v) => print_vm(&v)?,
                }
                return Ok(());
            }
            VmCommand::Why { name } => {
                let why: crate::records::Why =
                    client.get(&format!("/v1/vms/{}/why", path_segment(&name)?)).await?;
                return if conn.json { print_json(&why) } else { print_why(&why) };
            }
            VmCommand::Create(args) => client.post("/v1/vms", Some(&args.request()?)).await?,
            VmCommand::Show { name } => client.get(&format!("/v1/vms/{}", path_segment(&name)?)).await?,
            VmCommand::SetLoad { name, cpu_milli } => {
                let path = format!("/v1/vms/{}/load", path_segment(&name)?);
                let body = serde_json::to_vec(&crate::api::vms::Load { cpu_milli })?;
                client.send(hyper::Method::PUT, &path, Some(("application/json", body))).await?
            }
            VmCommand::Migrate { name, to } => {
                let path = format!("/v1/vms/{}/migrate", path_segment(&name)?);
                client.post(&path, Some(&crate::api::vms::MigrateBody { to })).await?
            }
            VmCommand::Start { name } => {
                client.post::<(), _>(&format!("/v1/vms/{}/start", path_segment(&name)?), None).await?
            }
            VmCommand::Stop { name, force, timeout } => {
                let mut path = format!("/v1/vms/{}/stop?force={force}", path_segment(&name)?);
                if let Some(t) = timeout {
                    if !(t.is_finite() && t >= 0.0) {
                        bail!("--timeout must be a number of seconds");
                    }
                    path.push_str(&format!("&timeout_ms={}", (t * 1000.0) as u64));
                }
                client.post::<(), _>(&path, None).await?
            }
        };
        if conn.json { print_json(&status) } else { print_vm(&status) }
    })
}

/// Prints decision records, oldest first, one paragraph each.
fn print_why(why: &crate::records::Why) -> Result<()> {
    use locus_core::record::Decider;
    use std::fmt::Write as _;
    let mut out = String::new();
    for r in &why.records {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(r.at_ms);
        let who = match (r.decided_by, &r.policy) {
            (Decider::Policy, Some(p)) => format!("policy {p}"),
            (Decider::Fallback, _) => "the built-in fallback".to_owned(),
            (Decider::Operator, _) => "the operator".to_owned(),
            (Decider::Filters, _) | (Decider::Policy, None) => "the filters".to_owned(),
        };
        writeln!(
            out,
            "{}  {} decided on {} ({}) by {who}: {}",
            humantime::format_rfc3339_seconds(at),
            r.kind.as_str(),
            r.host,
            r.pop,
            clean(&r.outcome)
        )?;
        writeln!(out, "    request: {}", clean(&r.request))?;
        if !r.filters.is_empty() {
            let steps: Vec<String> = r.filters.iter().map(|p| format!("{} {}", p.filter, p.hosts)).collect();
            writeln!(out, "    hosts: {} considered → {}", r.considered, steps.join(" → "))?;
        }
        if let Some(f) = &r.failure {
            writeln!(out, "    policy failed ({}): {}", f.kind, clean(&f.message))?;
        }
        if !r.top.is_empty() {
            let top: Vec<String> = r.top.iter().map(|s| format!("{} {:.3}", s.host, s.score)).collect();
            writeln!(out, "    top scores: {}", top.join(", "))?;
        }
        if r.took_us > 0 {
            writeln!(out, "    decided in {:.1} ms", r.took_us as f64 / 1000.0)?;
        }
    }
    write!(
        out,
        "({} record(s); {} of {} other agent(s) answered)",
        why.records.len(),
        why.answered,
        why.asked
    )?;
    println!("{out}");
    Ok(())
}

/// Names travel in URL paths; the naming rule keeps them URL-safe, and
/// anything else is refused here with the rule rather than by the server.
fn path_segment(name: &str) -> Result<&str> {
    if locus_core::request::valid_name(name) {
        Ok(name)
    } else {
        bail!("invalid VM name {name:?}: use 1 to 64 of A-Z a-z 0-9 . _ -, starting with a letter or digit")
    }
}

/// Runs `locus policy load`.
pub fn policy_load(conn: &Connection, args: LoadArgs) -> Result<()> {
    let client = conn.client()?;
    let source = crate::source::resolve(&args.policy, 17 << 20)?;
    if crate::bundle::is_bundle(&source.bytes) {
        if args.name.is_some() || !args.config.is_empty() {
            bail!(
                "a bundle carries its own name and configuration, signed: load it without --name or --config"
            );
        }
        let manifest = crate::bundle::peek(&source.bytes)?;
        let slot = args.slot.unwrap_or(manifest.slot);
        let path = format!("/v1/policies/{}", slot.as_str());
        let v: PolicyVersion =
            runtime()?.block_on(client.put_bytes(&path, "application/octet-stream", source.bytes))?;
        return if conn.json {
            print_json(&v)
        } else {
            println!("{} is active in the {} slot (signed bundle)", clean(&v.id), slot.as_str());
            Ok(())
        };
    }
    let slot = args.slot.context("--slot is needed for a bare component")?;
    let name = args.name.unwrap_or(source.name);
    let config = crate::source::config(&args.config)?;
    crate::policies::check_config(&config).map_err(anyhow::Error::msg)?;
    let mut path = format!("/v1/policies/{}?name={}", slot.as_str(), path_segment(&name)?);
    if !config.is_empty() {
        path.push_str(&format!("&config={}", percent_encode(&serde_json::to_string(&config)?)));
    }
    let v: PolicyVersion = runtime()?.block_on(client.put_bytes(&path, "application/wasm", source.bytes))?;
    if conn.json {
        print_json(&v)
    } else {
        println!("{} is active in the {} slot ({})", clean(&v.id), slot.as_str(), clean(&v.world));
        Ok(())
    }
}

/// Runs `locus policy rollback`.
pub fn policy_rollback(conn: &Connection, args: RollbackArgs) -> Result<()> {
    if let Some(scope) = &args.scope {
        return rollout::rollback(conn, scope, args.slot);
    }
    let client = conn.client()?;
    let mut path = format!("/v1/policies/{}/rollback", args.slot.as_str());
    if let Some(hash) = &args.hash {
        if hash.is_empty() || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
            bail!("{hash:?} is not a hash prefix (hex digits, as `locus policy list` shows them)");
        }
        path.push_str(&format!("?hash={hash}"));
    }
    let v: PolicyVersion = runtime()?.block_on(client.post::<(), _>(&path, None))?;
    if conn.json {
        print_json(&v)
    } else {
        println!("{} is active again in the {} slot", clean(&v.id), args.slot.as_str());
        Ok(())
    }
}

/// A rendered table with any control character other than its own line
/// breaks escaped (a second guard; remote free text is cleaned per cell).
pub(crate) fn clean_table(t: &Table) -> String {
    t.to_string().split('\n').map(clean).collect::<Vec<_>>().join("\n")
}

/// Escapes what a URL query may not hold as it is.
pub(crate) fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Text from the agent, made safe for a terminal: control characters
/// (newlines, terminal escapes) are shown escaped, never sent raw. The agent
/// repeats what policies, peers and clients wrote, and none of them may
/// clear the operator's screen or forge lines on it.
pub fn clean(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() })
        .collect()
}

/// Runs `locus policy list`.
pub fn policy_list(conn: &Connection) -> Result<()> {
    let client = conn.client()?;
    let slots: Vec<SlotListing> = runtime()?.block_on(client.get("/v1/policies"))?;
    if conn.json {
        return print_json(&slots);
    }
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header(vec!["slot", "", "policy", "world", "config", "calls", "failures", "p50 µs", "p99 µs"]);
    for s in &slots {
        let rows = s.active.iter().map(|v| ("active", v)).chain(s.previous.iter().map(|v| ("previous", v)));
        for (role, v) in rows {
            let config: Vec<String> = v.config.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let failures: Vec<String> = v.errors_by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
            t.add_row(vec![
                s.slot.as_str().to_owned(),
                role.to_owned(),
                clean(&v.id),
                clean(&v.world),
                clean(&config.join(", ")),
                v.calls.to_string(),
                if failures.is_empty() { "0".into() } else { failures.join(", ") },
                format!("{:.1}", v.p50_us),
                format!("{:.1}", v.p99_us),
            ]);
        }
    }
    println!("{}", clean_table(&t));
    for s in &slots {
        for problem in &s.problems {
            println!("{} slot: {}", s.slot.as_str(), clean(problem));
        }
    }
    Ok(())
}

fn state_text(s: &VmStatus) -> String {
    serde_json::to_value(s.state).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

fn print_vms(vms: &[VmStatus]) -> Result<()> {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header(vec!["name", "state", "desired", "vcpus", "memory", "cpu", "restarts", "busy", "pending"]);
    for v in vms {
        t.add_row(vec![
            v.name.clone(),
            state_text(v),
            serde_json::to_value(v.desired)?.as_str().unwrap_or_default().to_owned(),
            v.spec.vcpus.to_string(),
            format!("{} MiB", v.spec.memory_mib),
            v.cpu_milli.map_or("-".into(), |m| format!("{:.1}%", f64::from(m) / 10.0)),
            v.restarts.to_string(),
            v.busy.clone().unwrap_or_default(),
            if v.pending.is_some() { "yes".into() } else { String::new() },
        ]);
    }
    println!("{}", clean_table(&t));
    println!("{} vm(s)", vms.len());
    Ok(())
}

fn print_vm(v: &VmStatus) -> Result<()> {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    let labels: Vec<String> = v.spec.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    for (k, val) in [
        ("name", v.name.clone()),
        ("state", state_text(v)),
        ("desired", serde_json::to_value(v.desired)?.as_str().unwrap_or_default().to_owned()),
        ("host", format!("{} (pop {})", v.host, v.pop)),
        ("size", format!("{} vCPU, {} MiB", v.spec.vcpus, v.spec.memory_mib)),
        (
            "cpu measured",
            v.cpu_milli.map_or("-".into(), |m| format!("{:.1}% of one CPU", f64::from(m) / 10.0)),
        ),
        ("cpu declared", format!("{:.1}% of one CPU", f64::from(v.spec.expected_load()) / 10.0)),
        ("cpu time", format!("{:.2} s", v.cpu_time_ns as f64 / 1e9)),
        ("memory", format!("{} KiB", v.memory_kib)),
        ("restarts", v.restarts.to_string()),
        ("labels", clean(&labels.join(", "))),
        ("busy", v.busy.clone().unwrap_or_default()),
        ("last error", clean(v.last_error.as_deref().unwrap_or_default())),
        ("pending", clean(v.pending.as_deref().unwrap_or_default())),
        ("moving", clean(v.handoff.as_deref().unwrap_or_default())),
        ("migration", v.migration.map(|p| p.to_string()).unwrap_or_default()),
        ("moves so far", v.generation.to_string()),
    ] {
        t.add_row(vec![k.to_owned(), val]);
    }
    println!("{}", clean_table(&t));
    Ok(())
}

/// Runs `locus cluster status`.
pub fn cluster_status(conn: &Connection) -> Result<()> {
    let client = conn.client()?;
    let view: crate::api::cluster::ClusterView = runtime()?.block_on(client.get("/v1/cluster"))?;
    if conn.json {
        return print_json(&view);
    }
    let c = &view.cluster;
    println!("this agent: host {} in PoP {} (peer {})", clean(&c.host), clean(&c.pop), clean(&c.peer));
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header(vec!["pop", "jurisdiction", "hosts alive", "free vCPU", "free memory", "rtt"]);
    for p in &c.pops {
        t.add_row(vec![
            p.pop.clone(),
            p.jurisdiction.clone(),
            format!("{}/{}", p.hosts_alive, p.hosts),
            p.free.vcpus.to_string(),
            format!("{} MiB", p.free.memory_mib),
            p.rtt_ms.map_or("-".into(), |r| format!("{r:.1} ms")),
        ]);
    }
    println!("{}", clean_table(&t));
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header(vec!["host", "pop", "state", "load", "vms", "free", "rtt"]);
    for h in &c.hosts {
        t.add_row(vec![
            h.host.clone(),
            h.pop.clone(),
            serde_json::to_value(h.liveness)?.as_str().unwrap_or_default().to_owned(),
            match h.load {
                Some(l) => serde_json::to_value(l)?.as_str().unwrap_or_default().to_owned(),
                None => "-".into(),
            },
            h.vms.to_string(),
            h.free.map_or("-".into(), |f| format!("{} vCPU, {} MiB", f.vcpus, f.memory_mib)),
            h.rtt_ms.map_or("-".into(), |r| format!("{r:.1} ms")),
        ]);
    }
    println!("{}", clean_table(&t));
    let o = &view.overlay;
    println!(
        "overlay: {} peers connected, listening on {}; gossip {:.1} KiB out, {:.1} KiB in over {:.0} s",
        o.connected,
        o.listening.join(" "),
        o.gossip_out_bytes as f64 / 1024.0,
        o.gossip_in_bytes as f64 / 1024.0,
        o.uptime_s
    );
    Ok(())
}

/// Runs `locus cluster join ADDR`.
pub fn cluster_join(conn: &Connection, addr: &str) -> Result<()> {
    let client = conn.client()?;
    let body = crate::api::cluster::Join { addr: addr.to_owned() };
    let _: crate::api::cluster::Join = runtime()?.block_on(client.post("/v1/cluster/join", Some(&body)))?;
    if !conn.json {
        println!("dialling {addr}; `locus cluster status` shows the members as they are heard");
    }
    Ok(())
}
