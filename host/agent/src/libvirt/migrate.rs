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
    /// Where the migration is counted.
    pub telemetry: crate::metrics::Telemetry,
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
    let (aborted, sent) = watchdog.join().unwrap_or((false, 0));
    if let Some(t) = m.telemetry.get() {
        t.libvirt("migrate-out", result.is_ok(), started.elapsed());
        t.migrated_bytes(sent);
    }
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
    /// is dropped) or aborts it at its deadline; returns whether it did,
    /// and the bytes the job had sent at its last sample.
    fn run(&self, done: &mpsc::Receiver<()>, events: &UnboundedSender<FromHypervisor>) -> (bool, u64) {
        let mut sent = 0;
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
                    if let Some(p) = dom.as_ref().and_then(job_progress) {
                        tracing::debug!(vm = self.vm, "migration: {p}");
                        sent = sent.max(p.processed_bytes);
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
        (aborted, sent)
    }
}

/// A migration job's statistics as the node reports them; none while no
/// job runs or when libvirt cannot say.
///
/// Not virt 0.4.3's `Domain::get_job_stats`: it hands libvirt's malloc'd
/// parameter array to a Rust `Vec`, which frees it with Rust's global
/// allocator (and leaks the strings inside). That only happens to work
/// while Rust's allocator is the C library's malloc.
#[allow(unsafe_code)]
fn job_progress(dom: &Domain) -> Option<MigrationProgress> {
    use std::ffi::CStr;
    use virt::sys;

    let mut kind: std::ffi::c_int = 0;
    let mut params: sys::virTypedParameterPtr = std::ptr::null_mut();
    let mut n: std::ffi::c_int = 0;
    // SAFETY: `dom` owns a valid virDomainPtr for the duration of the call;
    // on success libvirt stores an array of `n` parameters it allocated.
    let ret = unsafe { sys::virDomainGetJobStats(dom.as_ptr(), &mut kind, &mut params, &mut n, 0) };
    if ret == -1 {
        return None;
    }
    let u64_of = |name: &CStr| {
        let mut v: std::ffi::c_ulonglong = 0;
        // SAFETY: `params` holds `n` parameters until freed below; the
        // name is a NUL-terminated constant; a missing name leaves 0.
        let found = unsafe { sys::virTypedParamsGetULLong(params, n, name.as_ptr(), &mut v) };
        if found == 1 { v } else { 0 }
    };
    let throttle = {
        let mut v: std::ffi::c_int = 0;
        // SAFETY: as above.
        let found = unsafe {
            sys::virTypedParamsGetInt(params, n, sys::VIR_DOMAIN_JOB_AUTO_CONVERGE_THROTTLE.as_ptr(), &mut v)
        };
        if found == 1 { u32::try_from(v).unwrap_or(0) } else { 0 }
    };
    let progress = MigrationProgress {
        elapsed_ms: u64_of(sys::VIR_DOMAIN_JOB_TIME_ELAPSED),
        total_bytes: u64_of(sys::VIR_DOMAIN_JOB_DATA_TOTAL),
        processed_bytes: u64_of(sys::VIR_DOMAIN_JOB_DATA_PROCESSED),
        remaining_bytes: u64_of(sys::VIR_DOMAIN_JOB_DATA_REMAINING),
        memory_passes: u64_of(sys::VIR_DOMAIN_JOB_MEMORY_ITERATION),
        memory_bytes_per_s: u64_of(sys::VIR_DOMAIN_JOB_MEMORY_BPS),
        throttle_percent: throttle,
    };
    // SAFETY: frees with libvirt what libvirt allocated, once; nothing
    // reads `params` after this.
    unsafe { sys::virTypedParamsFree(params, n) };
    (kind != sys::VIR_DOMAIN_JOB_NONE as std::ffi::c_int).then_some(progress)
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
