//! The hypervisor layer: one thread that owns the libvirt connection,
//! carries out the node's commands, samples every domain at an interval
//! (the Local Resources Tracker) and reconnects when libvirt goes away.
//!
//! libvirt calls block, so they never run on the async runtime. Commands
//! and samples share this one thread, in order: a sample taken after a
//! command's result was sent reflects that command. Only domains marked
//! with this host's name are ever changed; others are listed by name so
//! the node keeps its VM names apart from theirs.

pub mod domain_xml;
mod migrate;

use crate::images::{ImageError, Images};
use locus_core::VmRequest;
use locus_core::hypervisor::{
    DomainSeen, DomainState, HvCommand, HvError, HvErrorKind, Inventory, Observation, OpId,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;
use virt::connect::Connect;
use virt::domain::Domain;
use virt::error::ErrorNumber;

/// What the hypervisor thread is told.
#[derive(Debug)]
pub enum ToHypervisor {
    /// Carry out a command.
    Run(OpId, HvCommand),
    /// Close the connection and end the thread.
    Stop,
}

/// What the hypervisor thread reports.
#[derive(Debug)]
pub enum FromHypervisor {
    /// A command finished.
    Done(OpId, Result<DomainState, HvError>),
    /// Connected (at start or again), with what is there.
    Up(Inventory, Observation),
    /// Not reachable.
    Down(String),
    /// A periodic sample.
    Sampled(Observation),
    /// How far a live migration has got.
    Progress(OpId, locus_core::hypervisor::MigrationProgress),
}

/// How to reach libvirt and how often to sample.
#[derive(Debug, Clone)]
pub struct Settings {
    /// libvirt URI, e.g. `test:///default` or `qemu:///system`.
    pub uri: String,
    /// This host's name, written into the domains it creates.
    pub owner: String,
    /// Time between samples.
    pub sample_interval: Duration,
    /// Where VM disks come from.
    pub images: Arc<Images>,
    /// Where other hosts' libvirt reaches this one to live-migrate VMs
    /// here (`qemu+tls://host/system`, …); none: VMs move cold.
    pub migration_uri: Option<String>,
    /// Where operations are counted and timed.
    pub telemetry: crate::metrics::Telemetry,
}

/// Starts the hypervisor thread.
pub fn spawn(
    settings: Settings,
    events: UnboundedSender<FromHypervisor>,
) -> std::io::Result<(mpsc::Sender<ToHypervisor>, thread::JoinHandle<()>)> {
    // libvirt prints every error to stderr unless told not to; errors are
    // reported through results and the log instead.
    virt::error::clear_error_callback();
    let (tx, rx) = mpsc::channel();
    let handle = thread::Builder::new().name("libvirt".into()).spawn(move || run(settings, rx, events))?;
    Ok((tx, handle))
}

const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);

fn run(settings: Settings, rx: mpsc::Receiver<ToHypervisor>, events: UnboundedSender<FromHypervisor>) {
    let mut session: Option<Session> = None;
    let mut down_reason: Option<String> = None;
    let mut retry = RETRY_MIN;
    let mut retry_at = Instant::now();
    let mut next_sample = Instant::now() + settings.sample_interval;
    loop {
        let now = Instant::now();
        if session.is_none() && now >= retry_at {
            let opened = Session::open(&settings).and_then(|mut s| {
                let inventory = s.inventory()?;
                let observation = s.observe()?;
                Ok((inventory, observation, s))
            });
            match opened {
                Ok((inventory, observation, s)) => {
                    tracing::info!(uri = %settings.uri, "connected to libvirt");
                    session = Some(s);
                    down_reason = None;
                    retry = RETRY_MIN;
                    next_sample = now + settings.sample_interval;
                    let _ = events.send(FromHypervisor::Up(inventory, observation));
                }
                Err(e) => {
                    let reason = format!("cannot connect to {}: {}", settings.uri, e.message());
                    if down_reason.as_ref() != Some(&reason) {
                        tracing::warn!("{reason}");
                        let _ = events.send(FromHypervisor::Down(reason.clone()));
                    }
                    down_reason = Some(reason);
                    retry_at = now + retry;
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
        let wake = if session.is_some() { next_sample } else { retry_at.min(next_sample) };
        match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
            Ok(ToHypervisor::Run(op, HvCommand::MigrateOut { vm, uri, timeout })) if session.is_some() => {
                let m = migrate::Outgoing {
                    local_uri: settings.uri.clone(),
                    vm,
                    dest_uri: uri,
                    timeout,
                    op,
                    telemetry: settings.telemetry.clone(),
                };
                migrate::spawn(m, events.clone());
            }
            Ok(ToHypervisor::Run(op, cmd)) => {
                let started = Instant::now();
                let result = match session.as_mut() {
                    Some(s) => {
                        let result = s.run(&cmd);
                        if let Some(m) = settings.telemetry.get() {
                            m.libvirt(cmd.kind(), result.is_ok(), started.elapsed());
                        }
                        result
                    }
                    None => Err(HvError {
                        kind: HvErrorKind::Unavailable,
                        message: down_reason.clone().unwrap_or_else(|| "not connected".into()),
                    }),
                };
                let lost =
                    matches!(&result, Err(e) if e.kind == HvErrorKind::Unavailable) && session.is_some();
                let _ = events.send(FromHypervisor::Done(op, result));
                if lost {
                    lose(
                        &mut session,
                        &mut down_reason,
                        &events,
                        "the connection to libvirt was lost".into(),
                    );
                    retry_at = Instant::now();
                }
            }
            Ok(ToHypervisor::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() >= next_sample {
            next_sample = Instant::now() + settings.sample_interval;
            if let Some(s) = session.as_mut() {
                match s.observe() {
                    Ok(o) => {
                        let _ = events.send(FromHypervisor::Sampled(o));
                    }
                    Err(e) => {
                        let reason = format!("the connection to libvirt was lost: {}", e.message());
                        lose(&mut session, &mut down_reason, &events, reason);
                        retry_at = Instant::now();
                    }
                }
            }
        }
    }
    drop(session);
}

fn lose(
    session: &mut Option<Session>,
    down_reason: &mut Option<String>,
    events: &UnboundedSender<FromHypervisor>,
    reason: String,
) {
    if let Some(s) = session.as_ref()
        && s.alive()
    {
        return;
    }
    *session = None;
    tracing::warn!("{reason}");
    let _ = events.send(FromHypervisor::Down(reason.clone()));
    *down_reason = Some(reason);
}

/// An open connection and what is remembered between samples.
struct Session {
    conn: Connect,
    owner: String,
    images: Arc<Images>,
    domain_type: &'static str,
    migration_uri: Option<String>,
    /// Each domain's mark (by UUID), while it stays on this host: the
    /// agent changes a mark only when the domain arrives from another host.
    marks: HashMap<String, Marked>,
    /// Last CPU time and when it was read, by UUID.
    cpu: HashMap<String, (u64, Instant)>,
}

impl Drop for Session {
    fn drop(&mut self) {
        // virt 0.4.3's Connect has no Drop.
        let _ = self.conn.close();
    }
}

impl Session {
    fn open(settings: &Settings) -> Result<Self, virt::error::Error> {
        let conn = Connect::open(Some(&settings.uri))?;
        let mut session = Session {
            conn,
            owner: settings.owner.clone(),
            images: settings.images.clone(),
            domain_type: "qemu",
            migration_uri: None,
            marks: HashMap::new(),
            cpu: HashMap::new(),
        };
        let caps = session.conn.get_capabilities()?;
        session.domain_type = if caps.contains("<domain type='test'") {
            "test"
        } else if caps.contains("<domain type='kvm'") {
            "kvm"
        } else {
            "qemu"
        };
        // The test driver cannot migrate.
        session.migration_uri = settings.migration_uri.clone().filter(|_| session.domain_type != "test");
        Ok(session)
    }

    fn inventory(&self) -> Result<Inventory, virt::error::Error> {
        let info = self.conn.get_node_info()?;
        let kind = self.conn.get_type()?;
        let version = self.conn.get_hyp_version().unwrap_or(0);
        Ok(Inventory {
            cpus: info.cpus,
            memory_mib: (info.memory / 1024) as u32,
            hypervisor: format!(
                "{kind} {}.{}.{} ({} guests)",
                version / 1_000_000,
                version / 1000 % 1000,
                version % 1000,
                self.domain_type
            ),
            migration_uri: self.migration_uri.clone(),
        })
    }

    fn observe(&mut self) -> Result<Observation, virt::error::Error> {
        let mut o = Observation::default();
        let now = Instant::now();
        let mut cpu = HashMap::new();
        let mut listed = std::collections::HashSet::new();
        for dom in self.conn.list_all_domains(0)? {
            let name = dom.get_name()?;
            let uuid = dom.get_uuid_string()?;
            listed.insert(uuid.clone());
            let marked = match self.marks.get(&uuid) {
                Some(&m) => m,
                None => match marked(&dom, &self.owner) {
                    Some(m) => *self.marks.entry(uuid.clone()).or_insert(m),
                    // Seen again at the next sample.
                    None => continue,
                },
            };
            if !marked.ours {
                o.others.push(name);
                continue;
            }
            let info = match dom.get_info() {
                Ok(i) => i,
                // Undefined between the listing and now.
                Err(e) if e.code() == ErrorNumber::NoDomain => continue,
                Err(e) => return Err(e),
            };
            // libvirt's test driver reports the wall clock as CPU time:
            // nothing is measured there, and the VM's declared load stands in.
            let reported = self.domain_type != "test" && info.cpu_time > 0;
            let milli = self.cpu.get(&uuid).filter(|_| reported).and_then(|&(prev, at)| {
                let wall = now.duration_since(at).as_nanos();
                (wall > 0 && info.cpu_time >= prev).then(|| {
                    ((u128::from(info.cpu_time - prev) * 1000) / wall).min(u128::from(u32::MAX)) as u32
                })
            });
            cpu.insert(uuid, (info.cpu_time, now));
            o.ours.push(seen(name, &info, milli, marked.generation));
        }
        self.cpu = cpu;
        // A domain that left (migrated away) may come back marked as
        // another host's: ownership is cached only while it stays.
        self.marks.retain(|uuid, _| self.cpu.contains_key(uuid) || listed.contains(uuid));
        self.keep_persistent();
        Ok(o)
    }

    /// A running domain undefined behind the agent's back is transient:
    /// it would vanish at its next stop, with the agent's intent still
    /// saying it exists. Each of ours is defined again from its own
    /// description, and that is logged.
    fn keep_persistent(&mut self) {
        let flags = virt::sys::VIR_CONNECT_LIST_DOMAINS_TRANSIENT;
        let Ok(transient) = self.conn.list_all_domains(flags) else {
            return;
        };
        for dom in transient {
            let Ok(uuid) = dom.get_uuid_string() else { continue };
            if !self.marks.get(&uuid).map_or_else(|| is_ours(&dom, &self.owner), |m| m.ours) {
                continue;
            }
            let name = dom.get_name().unwrap_or_default();
            let redefined = dom
                .get_xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE)
                .and_then(|xml| Domain::define_xml(&self.conn, &xml));
            match redefined {
                Ok(_) => tracing::warn!(
                    vm = name,
                    "was undefined behind the agent's back while running; defined again"
                ),
                Err(e) => tracing::warn!(
                    vm = name,
                    error = e.message(),
                    "is transient and could not be defined again"
                ),
            }
        }
    }

    fn alive(&self) -> bool {
        self.conn.is_alive().unwrap_or(false)
    }

    fn run(&mut self, cmd: &HvCommand) -> Result<DomainState, HvError> {
        let name = cmd.vm();
        let existing = match Domain::lookup_by_name(&self.conn, name) {
            Ok(d) => Some(d),
            Err(e) if e.code() == ErrorNumber::NoDomain => None,
            Err(e) => return Err(self.error(e)),
        };
        match cmd {
            HvCommand::Adopt { spec, from, generation } => {
                return self.adopt(existing, spec, from, *generation);
            }
            HvCommand::Discard { from, .. } => return self.discard(existing, name, from),
            _ => {}
        }
        if let Some(d) = &existing
            && !is_ours(d, &self.owner)
        {
            return Err(HvError {
                kind: HvErrorKind::Refused,
                message: format!("domain {name} exists and was not created by this agent; it is left alone"),
            });
        }
        let result = match (cmd, existing) {
            // Idempotent: an existing domain of ours is the one defined before a crash.
            (HvCommand::Define { .. }, Some(d)) => state(&d),
            (HvCommand::Define { spec, generation }, None) => return self.define(spec, *generation),
            (HvCommand::Start(_), None) => {
                return Err(HvError {
                    kind: HvErrorKind::NotFound,
                    message: format!("no domain named {name}"),
                });
            }
            (HvCommand::Start(_), Some(d)) => match d.is_active() {
                Ok(true) => state(&d),
                _ => d.create().and_then(|_| state(&d)),
            },
            (HvCommand::Shutdown(_) | HvCommand::Destroy(_), None) => Ok(DomainState::Missing),
            (HvCommand::Undefine(_), None) => {
                self.remove_disk(name);
                Ok(DomainState::Missing)
            }
            (HvCommand::Shutdown(_), Some(d)) => match d.is_active() {
                Ok(true) => d.shutdown().and_then(|_| state(&d)),
                _ => state(&d),
            },
            (HvCommand::Destroy(_), Some(d)) => match d.is_active() {
                Ok(true) => d.destroy().and_then(|_| state(&d)),
                _ => state(&d),
            },
            (HvCommand::Undefine(_), Some(d)) => d.undefine().map(|_| {
                self.remove_disk(name);
                DomainState::Missing
            }),
            (HvCommand::Receive { live: false, spec, generation }, None) => {
                return self.define(spec, *generation);
            }
            (HvCommand::Receive { live: false, .. }, Some(d)) => state(&d),
            (HvCommand::Receive { live: true, spec, .. }, _) => {
                return self.prepare_disk(spec).map(|_| DomainState::Missing);
            }
            (HvCommand::Settle(_), None) => Ok(DomainState::Missing),
            (HvCommand::Settle(_), Some(d)) => migrate::settle(&d).and_then(|()| state(&d)),
            // Carried out on a thread of their own (see `run`); reaching
            // here means libvirt is away.
            (HvCommand::MigrateOut { .. }, _) => {
                return Err(HvError { kind: HvErrorKind::Unavailable, message: "not connected".into() });
            }
            (HvCommand::Adopt { .. } | HvCommand::Discard { .. }, _) => unreachable!("handled above"),
        };
        result.map_err(|e| self.error(e))
    }

    /// The VM's own disk on its base image (the disk it had, when there
    /// is one), if it has an image.
    fn prepare_disk(
        &self,
        spec: &VmRequest,
    ) -> Result<Option<(std::path::PathBuf, crate::images::Base)>, HvError> {
        let Some(image) = &spec.image else { return Ok(None) };
        let min = u64::from(spec.disk_gib) << 30;
        self.images.create_disk(&spec.name, image, min).map(Some).map_err(disk_error)
    }

    /// Marks a domain that arrived from host `from` as this host's; one
    /// that is already ours is left as it is.
    fn adopt(
        &mut self,
        existing: Option<Domain>,
        spec: &VmRequest,
        from: &str,
        generation: u64,
    ) -> Result<DomainState, HvError> {
        let name = &spec.name;
        let Some(d) = existing else {
            return Err(HvError {
                kind: HvErrorKind::NotFound,
                message: format!("vm {name} has not arrived: no domain"),
            });
        };
        let owner = d
            .get_metadata(virt::sys::VIR_DOMAIN_METADATA_ELEMENT as i32, Some(domain_xml::NAMESPACE), 0)
            .ok()
            .and_then(|m| domain_xml::owner(&m));
        if owner.as_deref() != Some(self.owner.as_str()) {
            if owner.as_deref() != Some(from) {
                return Err(HvError {
                    kind: HvErrorKind::Refused,
                    message: format!(
                        "domain {name} is marked as {owner:?}'s, not host {from}'s; it is left alone"
                    ),
                });
            }
            let active = d.is_active().unwrap_or(false);
            let persistent = d.is_persistent().unwrap_or(false);
            let mut flags = 0;
            if active {
                flags |= virt::sys::VIR_DOMAIN_AFFECT_LIVE;
            }
            if persistent {
                flags |= virt::sys::VIR_DOMAIN_AFFECT_CONFIG;
            }
            let mark = domain_xml::metadata(spec, domain_xml::Mark { owner: &self.owner, generation });
            d.set_metadata(
                virt::sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
                Some(&mark),
                Some("locus"),
                Some(domain_xml::NAMESPACE),
                flags,
            )
            .map_err(|e| self.error(e))?;
            if let Ok(uuid) = d.get_uuid_string() {
                self.marks.insert(uuid, Marked { ours: true, generation: Some(generation) });
            }
        }
        state(&d).map_err(|e| self.error(e))
    }

    /// Removes what a called-off arrival left: an inactive domain still
    /// marked as the source's, and the disk prepared for it.
    fn discard(&mut self, existing: Option<Domain>, name: &str, from: &str) -> Result<DomainState, HvError> {
        if let Some(d) = existing {
            let refuse = |message: String| Err(HvError { kind: HvErrorKind::Refused, message });
            if is_ours(&d, &self.owner) {
                return refuse(format!(
                    "domain {name} is this host's; an arrival that was called off leaves it"
                ));
            }
            if !is_ours(&d, from) {
                return refuse(format!("domain {name} is not host {from}'s; it is left alone"));
            }
            if d.is_active().map_err(|e| self.error(e))? {
                return refuse(format!("domain {name} still runs here (the migration has not ended yet)"));
            }
            d.undefine().map_err(|e| self.error(e))?;
        }
        self.remove_disk(name);
        Ok(DomainState::Missing)
    }

    /// Defines a domain, on a disk of its own when it has an image (the
    /// disk it had, when it is defined again).
    fn define(&mut self, spec: &VmRequest, generation: u64) -> Result<DomainState, HvError> {
        let disk = self.prepare_disk(spec)?;
        let xml = domain_xml::render(
            spec,
            domain_xml::Mark { owner: &self.owner, generation },
            self.domain_type,
            disk.as_ref().map(|(overlay, base)| domain_xml::Disk {
                overlay,
                base: &base.path,
                base_format: base.format.as_str(),
            }),
        );
        let defined = Domain::define_xml(&self.conn, &xml).and_then(|d| state(&d));
        if defined.is_err() {
            self.remove_disk(&spec.name);
        }
        defined.map_err(|e| self.error(e))
    }

    fn remove_disk(&self, vm: &str) {
        if let Err(e) = self.images.remove_disks(vm) {
            tracing::warn!(vm, error = %e, "could not remove the VM's disk");
        }
    }

    fn error(&self, e: virt::error::Error) -> HvError {
        let kind = if e.code() == ErrorNumber::NoDomain {
            HvErrorKind::NotFound
        } else if !self.alive() {
            HvErrorKind::Unavailable
        } else {
            HvErrorKind::Refused
        };
        HvError { kind, message: e.message().to_owned() }
    }
}

fn disk_error(e: ImageError) -> HvError {
    let kind = match e {
        ImageError::NotFound(_) => HvErrorKind::Invalid,
        _ => HvErrorKind::Refused,
    };
    HvError { kind, message: e.to_string() }
}

/// What a domain's mark says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Marked {
    /// Marked as this agent's.
    ours: bool,
    /// The VM's generation in the mark, where it has one.
    generation: Option<u64>,
}

fn is_ours(dom: &Domain, owner: &str) -> bool {
    marked(dom, owner).is_some_and(|m| m.ours)
}

/// The domain's mark; none when it cannot be read now (the domain is going
/// away, or busy): neither ours nor another's yet.
fn marked(dom: &Domain, owner: &str) -> Option<Marked> {
    match dom.get_metadata(virt::sys::VIR_DOMAIN_METADATA_ELEMENT as i32, Some(domain_xml::NAMESPACE), 0) {
        Ok(m) => Some(Marked {
            ours: domain_xml::owner(&m).is_some_and(|o| o == owner),
            generation: domain_xml::generation(&m),
        }),
        Err(e) if e.code() == ErrorNumber::NoDomainMetadata => Some(Marked { ours: false, generation: None }),
        Err(_) => None,
    }
}

fn state(d: &Domain) -> Result<DomainState, virt::error::Error> {
    d.get_info().map(|i| map_state(i.state))
}

fn seen(
    name: String,
    info: &virt::domain::DomainInfo,
    cpu_milli: Option<u32>,
    generation: Option<u64>,
) -> DomainSeen {
    DomainSeen {
        name,
        state: map_state(info.state),
        cpu_time_ns: info.cpu_time,
        cpu_milli,
        memory_kib: info.memory,
        generation,
    }
}

fn map_state(s: virt::sys::virDomainState) -> DomainState {
    match s {
        virt::sys::VIR_DOMAIN_RUNNING | virt::sys::VIR_DOMAIN_BLOCKED => DomainState::Running,
        virt::sys::VIR_DOMAIN_PAUSED | virt::sys::VIR_DOMAIN_PMSUSPENDED => DomainState::Paused,
        virt::sys::VIR_DOMAIN_SHUTDOWN => DomainState::ShuttingDown,
        virt::sys::VIR_DOMAIN_SHUTOFF => DomainState::Shutoff,
        virt::sys::VIR_DOMAIN_CRASHED => DomainState::Crashed,
        _ => DomainState::Unknown,
    }
}
