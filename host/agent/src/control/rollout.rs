//! `locus policy keygen|sign|push|status` and `rollback --scope`: an
//! operator's signing key, signed bundles made offline, and pushes to a
//! PoP or the cluster through any running agent, followed to the end.

use super::{Connection, clean, clean_table, print_json, runtime};
use crate::bundle::{self, SignRequest};
use crate::policies::SlotName;
use crate::rollout::table::{Plan, Scope, Stage};
use crate::rollout::{PushView, RolloutStatus};
use anyhow::{Context, Result, bail};
use clap::Args;
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `locus policy keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the secret key (mode 0600); the public key goes to
    /// the same path with `.pub` added.
    #[arg(long)]
    pub out: PathBuf,
}

/// `locus policy sign`.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// A `.wasm` component, or the name of a built-in policy.
    pub policy: String,
    /// The secret key file (`locus policy keygen`).
    #[arg(long)]
    pub key: PathBuf,
    /// The slot it is meant for.
    #[arg(long, value_enum)]
    pub slot: SlotName,
    /// Its name (default: the file's stem or the built-in's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Its version.
    #[arg(long, default_value = "0.1.0")]
    pub version: String,
    /// A configuration entry, `key=value` (repeatable); signed with it.
    #[arg(long = "config", value_name = "KEY=VALUE")]
    pub config: Vec<String>,
    /// Days the bundle may be loaded for.
    #[arg(long, default_value_t = 90)]
    pub valid_days: u64,
    /// Where to write the bundle (default: `NAME.bundle`).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `locus policy push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The bundle file (`locus policy sign`).
    pub bundle: PathBuf,
    /// `cluster` or `pop:NAME`.
    #[arg(long)]
    pub scope: Scope,
    /// Agents that activate it first (0: all at once).
    #[arg(long, default_value_t = 0)]
    pub canary: u32,
    /// Decisions a canary must make with it to pass.
    #[arg(long, default_value_t = 20)]
    pub canary_decisions: u64,
    /// …or seconds it must run, whichever comes first.
    #[arg(long, default_value_t = 60)]
    pub canary_seconds: u64,
    /// Fraction of failed calls above which a canary fails the push.
    #[arg(long, default_value_t = 0.05)]
    pub max_failure_rate: f64,
    /// Run it as a shadow for this many seconds: beside the active
    /// version, on live requests, never acting.
    #[arg(long, value_name = "SECONDS", conflicts_with = "canary")]
    pub shadow: Option<u64>,
    /// Return once announced instead of following it to the end.
    #[arg(long)]
    pub no_wait: bool,
    /// Longest to follow it, seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

/// `locus policy status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// `cluster` or `pop:NAME`; everything if absent.
    #[arg(long)]
    pub scope: Option<Scope>,
}

/// Runs `locus policy keygen`.
pub fn keygen(args: &KeygenArgs) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let (secret, public) = bundle::keygen()?;
    let mut f =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&args.out).with_context(
            || format!("creating {} (an existing key is never overwritten)", args.out.display()),
        )?;
    writeln!(f, "{secret}").context("writing the secret key")?;
    let mut public_path = args.out.clone().into_os_string();
    public_path.push(".pub");
    std::fs::write(&public_path, format!("{public}\n")).context("writing the public key")?;
    println!("{public}");
    eprintln!(
        "secret key in {}; trust it on agents with policies.trusted-keys = [\"{public}\"]",
        args.out.display()
    );
    Ok(())
}

/// Runs `locus policy sign`.
pub fn sign(args: &SignArgs) -> Result<()> {
    let key = bundle::read_key(&args.key)?;
    let source = crate::source::resolve(&args.policy, 16 << 20)?;
    let name = args.name.clone().unwrap_or(source.name);
    if !locus_core::request::valid_name(&name) {
        bail!("invalid policy name {name:?}");
    }
    let what = SignRequest {
        name: name.clone(),
        version: args.version.clone(),
        slot: args.slot,
        config: crate::source::config(&args.config)?,
        valid_for_s: args.valid_days.saturating_mul(86_400),
    };
    let bytes = bundle::sign(&source.bytes, what, &key)?;
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from(format!("{name}.bundle")));
    std::fs::write(&out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    println!("{} ({} bytes, bundle {})", out.display(), bytes.len(), &bundle::sha256(&bytes)[..12]);
    Ok(())
}

fn query(pairs: &[(&str, String)]) -> String {
    pairs.iter().map(|(k, v)| format!("{k}={}", super::percent_encode(v))).collect::<Vec<_>>().join("&")
}

/// Runs `locus policy push`.
pub fn push(conn: &Connection, args: &PushArgs) -> Result<()> {
    let client = conn.client()?;
    let bytes = std::fs::read(&args.bundle).with_context(|| format!("reading {}", args.bundle.display()))?;
    let manifest = bundle::peek(&bytes)?;
    let mut pairs = vec![("scope", args.scope.to_string())];
    match args.shadow {
        Some(s) => pairs.push(("shadow_seconds", s.to_string())),
        None if args.canary > 0 => pairs.extend([
            ("canary", args.canary.to_string()),
            ("canary_decisions", args.canary_decisions.to_string()),
            ("canary_seconds", args.canary_seconds.to_string()),
            ("max_failure_rate", args.max_failure_rate.to_string()),
        ]),
        None => {}
    }
    let rt = runtime()?;
    let pushed: PushView = rt.block_on(client.send(
        hyper::Method::POST,
        &format!("/v1/rollouts?{}", query(&pairs)),
        Some(("application/octet-stream", bytes)),
    ))?;
    if !conn.json {
        println!(
            "pushed {}@{} as {} ({})",
            clean(&manifest.name),
            clean(&manifest.version),
            pushed.id,
            describe(&pushed.record.plan)
        );
    }
    if args.no_wait {
        return if conn.json { print_json(&pushed) } else { Ok(()) };
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let path = format!("/v1/rollouts?{}", query(&[("scope", args.scope.to_string())]));
    let mut last = String::new();
    loop {
        let status: RolloutStatus = rt.block_on(client.get(&path))?;
        let Some(now) =
            status.pushes.iter().find(|p| p.id == pushed.id && p.record.origin == pushed.record.origin)
        else {
            bail!("the push {} is no longer known to the agent", pushed.id);
        };
        let (running, total) = running(&status, &pushed);
        let line = format!("{}: {} on {running} of {total} agents", pushed.id, stage_text(&now.stage));
        if line != last && !conn.json {
            println!("{}", clean(&line));
            last = line;
        }
        let done = match &now.stage {
            Stage::Failed(_) => true,
            Stage::Active => running == total,
            Stage::Shadow => shadow_over(now),
            Stage::Canary => false,
        };
        if done {
            if conn.json {
                return print_json(&status);
            }
            if let Stage::Failed(reason) = &now.stage {
                bail!("the push failed and every agent went back: {}", clean(reason));
            }
            if now.stage == Stage::Shadow {
                print_shadows(&status, &pushed.id);
            }
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{} after {} s; `locus policy status --scope {}` follows it",
                clean(&last),
                args.timeout,
                args.scope
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn describe(plan: &Plan) -> String {
    match plan {
        Plan::Direct => "every agent at once".into(),
        Plan::Canary { agents, decisions, window_ms, max_failure_rate } => format!(
            "canary on {} agent(s) for {decisions} decisions or {} s, failing above {:.0} %",
            agents.len(),
            window_ms / 1000,
            max_failure_rate * 100.0
        ),
        Plan::Shadow { window_ms } => format!("shadow for {} s, never acting", window_ms / 1000),
    }
}

fn stage_text(s: &Stage) -> String {
    match s {
        Stage::Canary => "canary".into(),
        Stage::Active => "active".into(),
        Stage::Failed(why) => format!("failed ({why})"),
        Stage::Shadow => "shadow".into(),
    }
}

/// Agents of the push's scope running it (or its shadow), and all of them.
fn running(status: &RolloutStatus, push: &PushView) -> (usize, usize) {
    let agents: Vec<_> = status.agents.iter().filter(|a| push.record.scope.contains(&a.pop)).collect();
    let on = agents
        .iter()
        .filter(|a| {
            a.slots.iter().any(|s| s.slot == push.record.slot && s.push.as_deref() == Some(push.id.as_str()))
                || a.shadows.iter().any(|s| s.push == push.id)
        })
        .count();
    (on, agents.len())
}

fn shadow_over(p: &PushView) -> bool {
    let Plan::Shadow { window_ms } = p.record.plan else { return true };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    // A second past the window, so the agents have reported the end.
    now > p.record.pushed_at_ms + window_ms + 2500
}

fn print_shadows(status: &RolloutStatus, push: &str) {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header([
        "host",
        "calls",
        "agreed",
        "agreement",
        "candidate failures",
        "candidate p50 µs",
        "active p50 µs",
    ]);
    for a in &status.agents {
        for s in a.shadows.iter().filter(|s| s.push == push) {
            t.add_row([
                clean(&a.host),
                s.calls.to_string(),
                s.agreed.to_string(),
                format!("{:.1} %", s.agreement * 100.0),
                s.candidate_failures.to_string(),
                format!("{:.0}", s.candidate_p50_us),
                format!("{:.0}", s.active_p50_us),
            ]);
        }
    }
    println!("{}", clean_table(&t));
}

/// Runs `locus policy status`.
pub fn status(conn: &Connection, args: &StatusArgs) -> Result<()> {
    let client = conn.client()?;
    let path = match &args.scope {
        Some(s) => format!("/v1/rollouts?{}", query(&[("scope", s.to_string())])),
        None => "/v1/rollouts".into(),
    };
    let status: RolloutStatus = runtime()?.block_on(client.get(&path))?;
    if conn.json {
        return print_json(&status);
    }
    let mut pushes = Table::new();
    pushes.load_preset(UTF8_BORDERS_ONLY).set_header(["push", "policy", "bundle", "plan", "stage"]);
    for p in &status.pushes {
        let policy = match &p.record.bundle {
            Some(b) => format!("{}@{}", b.name, b.version),
            None => "(what ran before)".into(),
        };
        let bundle =
            p.record.bundle.as_ref().map_or(String::new(), |b| clean(b.hash.get(..12).unwrap_or(&b.hash)));
        let plan = if p.record.rollback { "rollback".to_owned() } else { describe(&p.record.plan) };
        pushes.add_row([clean(&p.id), clean(&policy), bundle, plan, clean(&stage_text(&p.stage))]);
    }
    println!("{}", clean_table(&pushes));
    let mut agents = Table::new();
    agents
        .load_preset(UTF8_BORDERS_ONLY)
        .set_header(["host", "pop", "slot", "policy", "push", "stage", "calls", "failed"]);
    let mut problems = Vec::new();
    for a in &status.agents {
        for s in &a.slots {
            agents.add_row([
                clean(&a.host),
                clean(&a.pop),
                s.slot.as_str().to_owned(),
                clean(&s.policy),
                clean(s.push.as_deref().unwrap_or("-")),
                s.stage.clone(),
                s.calls.to_string(),
                s.failures.to_string(),
            ]);
        }
        problems.extend(a.problems.iter().map(|p| format!("{}: {p}", a.host)));
    }
    println!("{}", clean_table(&agents));
    for p in problems {
        println!("refused on {}", clean(&p));
    }
    for p in status.pushes.iter().filter(|p| p.stage == Stage::Shadow) {
        print_shadows(&status, &p.id);
    }
    Ok(())
}

/// Runs `locus policy rollback --scope`.
pub fn rollback(conn: &Connection, scope: &Scope, slot: SlotName) -> Result<()> {
    let client = conn.client()?;
    let path = format!(
        "/v1/rollouts/rollback?{}",
        query(&[("scope", scope.to_string()), ("slot", slot.as_str().into())])
    );
    let v: PushView = runtime()?.block_on(client.post::<(), _>(&path, None))?;
    if conn.json {
        return print_json(&v);
    }
    match &v.record.bundle {
        Some(b) => println!("{} rolls {scope} back to {}@{}", v.id, clean(&b.name), clean(&b.version)),
        None => println!("{} rolls {scope} back to what its agents ran before any push", v.id),
    }
    Ok(())
}
