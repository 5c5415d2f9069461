//! Live migration out of this host, on a thread of its own: a migration
//! takes seconds to minutes, and the libvirt thread keeps sampling and
//! carrying out other commands meanwhile.
//!
//! The migration is peer-to-peer (this host's libvirtd talks to the
//! destination's), live, persistent at the destination and undefined
//! here; the VM's own disk (the top of its qcow2 chain) is copied, its
//! base is already there. Auto-converge slows a guest that dirties memory
//! faster than it can be copied. A watchdog aborts the job when it runs
//! past its deadline, and the guest keeps running here.

use locus_core::hypervisor::{DomainState, HvError, HvErrorKind, OpId};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;
use virt::connect::Connect;
use virt::domain::{Domain, MigrateParameters};

use super::FromHypervisor;

/// How long a migration job gets to end after it was asked to abort.
const ABORT_WAIT: Duration = Duration::from_secs(30);

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
            let result = run(&m);
            let _ = events.send(FromHypervisor::Done(m.op, result));
        }
    });
    if let Err(e) = spawned {
        let error =
            HvError { kind: HvErrorKind::Refused, message: format!("cannot start the migration: {e}") };
        let _ = events.send(FromHypervisor::Done(op, Err(error)));
    }
}

fn run(m: &Outgoing) -> Result<DomainState, HvError> {
    let refused = |message: String| HvError { kind: HvErrorKind::Refused, message };
    let mut conn = Connect::open(Some(&m.local_uri))
        .map_err(|e| HvError { kind: HvErrorKind::Unavailable, message: e.message().to_owned() })?;
    let result = migrate(&conn, m).map_err(refused);
    let _ = conn.close();
    result
}

fn migrate(conn: &Connect, m: &Outgoing) -> Result<DomainState, String> {
    let dom = Domain::lookup_by_name(conn, &m.vm).map_err(|e| e.message().to_owned())?;
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = {
        let (uri, vm, timeout) = (m.local_uri.clone(), m.vm.clone(), m.timeout);
        thread::spawn(move || {
            // Ends when the migration ends (the sender is dropped) or aborts it at the deadline.
            if let Err(mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(timeout) {
                tracing::warn!(
                    vm,
                    timeout_s = timeout.as_secs(),
                    "migration overran its deadline; aborting it"
                );
                if let Err(e) = abort_by_uri(&uri, &vm) {
                    tracing::warn!(vm, error = e, "could not abort the migration");
                }
                true
            } else {
                false
            }
        })
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

fn abort_by_uri(uri: &str, vm: &str) -> Result<(), String> {
    let mut conn = Connect::open(Some(uri)).map_err(|e| e.message().to_owned())?;
    let result =
        Domain::lookup_by_name(&conn, vm).map_err(|e| e.message().to_owned()).and_then(|d| abort(&d));
    let _ = conn.close();
    result
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
