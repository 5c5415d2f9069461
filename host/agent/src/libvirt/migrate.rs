//! Live migration out of this host, on a thread of its own: a migration
//! takes seconds to minutes, and the libvirt thread keeps sampling and
//! carrying out other commands meanwhile.
//!
//! The migration is peer-to-peer (this host's libvirtd talks to the
//! destination's), live, persistent at the destination and undefined
//! here; the VM's own disk (the top of its qcow2 chain) is copied, its
//! base is already there. Auto-converge slows a guest that dirties memory
//! faster than it can be copied. A watchdog samples the job's statistics
//! four times a second (the progress `vm show` and `host status` report) and
//! aborts the job when it runs past its deadline; the guest keeps running
//! here.

use locus_core::hypervisor::{DomainState, HvError, HvErrorKind, MigrationProgress, OpId};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;
use virt::connect::Connect;
use virt::domain::{Domain, MigrateParameters};

use super::FromHypervisor;

/// How long a migration job gets to end after it was asked to abort.
const ABORT_WAIT: Duration = Duration::from_secs(30);
/// How often a migration's progress is sampled.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// One outgoing migration.
#[derive(Debug)]
pub struct Outgoing {
    /// This host's libvirt URI.
    pub local_uri: String,
    /// The VM.
    pub vm: String,
    /// The destination's migration URI.
    pub dest_uri: String,
    /// When to abort it.
    pub timeout: Duration,
    /// The command's id, echoed in the result.
    pub op: OpId,
}

/// Starts the migration; its result comes back as [`FromHypervisor::Done`].
pub fn spawn(m: Outgoing, events: UnboundedSender<FromHypervisor>) {
    let name = format!("migrate {}", m.vm);
    let op = m.op;
    let spawned = thread::Builder::new().name(name).spawn({
        let events = events.clone();
        move || {
            let result = run(&m, &events);
            let _ = events.send(FromHypervisor::Done(m.op, result));
        }
    });
    if let Err(e) = spawned {
        let error =
            HvError { kind: HvErrorKind::Refused, message: format!("cannot start the migration: {e}") };
        let _ = events.send(FromHypervisor::Done(op, Err(error)));
    }
}

fn run(m: &Outgoing, events: &UnboundedSender<FromHypervisor>) -> Result<DomainState, HvError> {
    let refused = |message: String| HvError { kind: HvErrorKind::Refused, message };
    let mut conn = Connect::open(Some(&m.local_uri))
        .map_err(|e| HvError { kind: HvErrorKind::Unavailable, message: e.message().to_owned() })?;
    let result = migrate(&conn, m, events).map_err(refused);
    let _ = conn.close();
    result
}

fn migrate(
    conn: &Connect,
    m: &Outgoing,
    events: &UnboundedSender<FromHypervisor>,
) -> Result<DomainState, String> {
    let dom = Domain::lookup_by_name(conn, &m.vm).map_err(|e| e.message().to_owned())?;
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = {
        let watch = Watch { uri: m.local_uri.clone(), vm: m.vm.clone(), timeout: m.timeout, op: m.op };
        let events = events.clone();
        thread::spawn(move || watch.run(&done_rx, &events))
    };
    let params = MigrateParameters {
        auto_converge_initial: Some(20),
        auto_converge_increment: Some(10),
        ..Default::default()
    };
    let flags = virt::sys::VIR_MIGRATE_LIVE
        | virt::sys::VIR_MIGRATE_PEER2PEER
        | virt::sys::VIR_MIGRATE_PERSIST_DEST
        | virt::sys::VIR_MIGRATE_UNDEFINE_SOURCE
        | virt::sys::VIR_MIGRATE_NON_SHARED_INC
        | virt::sys::VIR_MIGRATE_AUTO_CONVERGE;
    let started = Instant::now();
    let result = dom.migrate_to_uri3(Some(&m.dest_uri), params, flags);
    drop(done_tx);
    let aborted = watchdog.join().unwrap_or(false);
    match result {
        Ok(()) => {
            tracing::info!(
                vm = m.vm,
                dest = m.dest_uri,
                ms = started.elapsed().as_millis() as u64,
                "live migration done"
            );
            Ok(DomainState::Missing)
        }
        Err(e) if aborted => {
            Err(format!("aborted after {} s, its deadline: {}", m.timeout.as_secs(), e.message()))
        }
        Err(e) => Err(e.message().to_owned()),
    }
}

/// The watchdog of one migration, on a connection of its own (the
/// migration's blocks until it ends).
struct Watch {
    uri: String,
    vm: String,
    timeout: Duration,
    op: OpId,
}

impl Watch {
    /// Samples the job's progress until the migration ends (`done`'s sender
    /// is dropped) or aborts it at its deadline; returns whether it did.
    fn run(&self, done: &mpsc::Receiver<()>, events: &UnboundedSender<FromHypervisor>) -> bool {
        let deadline = Instant::now() + self.timeout;
        let mut conn = match Connect::open(Some(&self.uri)) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(vm = self.vm, error = e.message(), "cannot watch the migration");
                None
            }
        };
        let dom = conn.as_ref().and_then(|c| Domain::lookup_by_name(c, &self.vm).ok());
        let aborted = loop {
            let wait = PROGRESS_EVERY.min(deadline.saturating_duration_since(Instant::now()));
            match done.recv_timeout(wait) {
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() >= deadline => {
                    tracing::warn!(
                        vm = self.vm,
                        timeout_s = self.timeout.as_secs(),
                        "migration overran its deadline; aborting it"
                    );
                    match dom.as_ref().map(abort) {
                        Some(Ok(())) => {}
                        Some(Err(e)) => {
                            tracing::warn!(vm = self.vm, error = e, "could not abort the migration")
                        }
                        None => tracing::warn!(vm = self.vm, "could not abort the migration: no connection"),
                    }
                    break true;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let stats = dom.as_ref().and_then(|d| d.get_job_stats(0).ok());
                    if let Some(p) = stats.as_ref().and_then(progress) {
                        tracing::debug!(vm = self.vm, "migration: {p}");
                        let _ = events.send(FromHypervisor::Progress(self.op, p));
                    }
                }
                _ => break false,
            }
        };
        drop(dom);
        if let Some(c) = conn.as_mut() {
            let _ = c.close();
        }
        aborted
    }
}

/// A migration job's statistics as the node reports them; none while no
/// job runs.
fn progress(s: &virt::domain::JobStats) -> Option<MigrationProgress> {
    if s.r#type == virt::sys::VIR_DOMAIN_JOB_NONE as i32 {
        return None;
    }
    Some(MigrationProgress {
        elapsed_ms: s.time_elapsed.unwrap_or(0),
        total_bytes: s.data_total.unwrap_or(0),
        processed_bytes: s.data_processed.unwrap_or(0),
        remaining_bytes: s.data_remaining.unwrap_or(0),
        memory_passes: s.mem_iteration.unwrap_or(0),
        memory_bytes_per_s: s.mem_bps.unwrap_or(0),
        throttle_percent: s.auto_converge_throttle.and_then(|t| u32::try_from(t).ok()).unwrap_or(0),
    })
}

/// Asks libvirt to abort the domain's job. virt 0.4.3 has no safe wrapper.
#[allow(unsafe_code)]
fn abort(dom: &Domain) -> Result<(), String> {
    // SAFETY: `dom` owns a valid virDomainPtr for the duration of the call;
    // virDomainAbortJob only reads it.
    let ret = unsafe { virt::sys::virDomainAbortJob(dom.as_ptr()) };
    if ret == -1 { Err(virt::error::Error::last_error().message().to_owned()) } else { Ok(()) }
}

/// Ends whatever job the domain has (a migration a crashed agent left
/// running) and waits until it is over, so that what is seen next is
/// where the domain really is.
pub fn settle(dom: &Domain) -> Result<(), virt::error::Error> {
    let busy = |d: &Domain| d.get_job_info().map(|j| j.r#type != virt::sys::VIR_DOMAIN_JOB_NONE as i32);
    if !busy(dom).unwrap_or(false) {
        return Ok(());
    }
    if let Err(e) = abort(dom) {
        tracing::warn!(error = e, "could not abort the domain's job");
    }
    let deadline = Instant::now() + ABORT_WAIT;
    while busy(dom).unwrap_or(false) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
