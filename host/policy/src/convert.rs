//! Between the SDK's view types and the generated bindings. Parameters
//! borrow the view's columns; only the small per-PoP records are rebuilt.

use crate::bindings::locus::policy::types as wit;
use locus_sdk as sdk;

pub fn resources(r: sdk::Resources) -> wit::Resources {
    wit::Resources { vcpus: r.vcpus, memory_mib: r.memory_mib, disk_gib: r.disk_gib }
}

pub fn hosts(h: &sdk::Hosts) -> wit::Hosts<'_> {
    wit::Hosts {
        pop: &h.pop,
        vcpus: &h.vcpus,
        memory_mib: &h.memory_mib,
        disk_gib: &h.disk_gib,
        allocated_vcpus: &h.allocated_vcpus,
        allocated_memory_mib: &h.allocated_memory_mib,
        allocated_disk_gib: &h.allocated_disk_gib,
        cpu_milli: &h.cpu_milli,
        load_cpu_milli: &h.load_cpu_milli,
        vm_count: &h.vm_count,
        idle_watts: &h.idle_watts,
        max_watts: &h.max_watts,
        current_watts: &h.current_watts,
    }
}

pub fn pops(pops: &[sdk::Pop]) -> Vec<wit::Pop> {
    pops.iter()
        .map(|p| wit::Pop {
            jurisdiction: p.jurisdiction,
            location: wit::Coordinates { latitude: p.location.latitude, longitude: p.location.longitude },
            capacity: resources(p.capacity),
            allocated: resources(p.allocated),
            vm_count: p.vm_count,
            renewable_watts: p.renewable_watts,
            carbon_g_per_kwh: p.carbon_g_per_kwh,
        })
        .collect()
}

pub fn cluster<'a>(
    c: &'a sdk::Cluster,
    pops: &'a [wit::Pop],
    jurisdictions: &'a [&'a str],
) -> wit::Cluster<'a> {
    wit::Cluster { pops, jurisdictions, pop_latency_us: &c.pop_latency_us, hosts: hosts(&c.hosts) }
}

pub fn group_kind(k: sdk::GroupKind) -> wit::GroupKind {
    match k {
        sdk::GroupKind::Affinity => wit::GroupKind::Affinity,
        sdk::GroupKind::AntiAffinity => wit::GroupKind::AntiAffinity,
        sdk::GroupKind::Spread => wit::GroupKind::Spread,
    }
}

pub fn group_kinds(kinds: &[sdk::GroupKind]) -> Vec<wit::GroupKind> {
    kinds.iter().map(|&k| group_kind(k)).collect()
}

pub fn request(r: &sdk::Request) -> wit::Request<'_> {
    wit::Request {
        size: resources(r.size),
        group: r.group.as_ref().map(|g| wit::Group {
            kind: group_kind(g.kind),
            members_on_host: &g.members_on_host,
            members_in_pop: &g.members_in_pop,
        }),
        allowed_jurisdictions: &r.allowed_jurisdictions,
        user_location: r
            .user_location
            .map(|c| wit::Coordinates { latitude: c.latitude, longitude: c.longitude }),
        max_latency_us: r.max_latency_us,
        user_latency_us: &r.user_latency_us,
        image_held_by: r.image_held_by.as_deref(),
    }
}

pub fn partition<'a>(
    p: &'a sdk::Partition,
    pops: &'a [wit::Pop],
    jurisdictions: &'a [&'a str],
    groups: &'a [wit::GroupKind],
) -> wit::Partition<'a> {
    let v = &p.vms;
    wit::Partition {
        cluster: cluster(&p.cluster, pops, jurisdictions),
        vms: wit::Vms {
            host: &v.host,
            vcpus: &v.vcpus,
            memory_mib: &v.memory_mib,
            disk_gib: &v.disk_gib,
            load_cpu_milli: &v.load_cpu_milli,
            group: &v.group,
            allowed_jurisdictions: &v.allowed_jurisdictions,
            migration_cost: &v.migration_cost,
        },
        groups,
    }
}

/// The policy's answer in SDK types; a score list longer than the host list
/// is refused before it is copied.
pub fn placement(p: wit::Placement, hosts: usize) -> Result<sdk::Placement, String> {
    Ok(match p {
        wit::Placement::Place(c) => {
            if c.scores.len() > hosts {
                return Err(format!("returned {} scores for {hosts} hosts", c.scores.len()));
            }
            sdk::Placement::Place(sdk::Choice {
                host: c.host,
                scores: c.scores.into_iter().map(|s| sdk::Score { host: s.host, value: s.value }).collect(),
            })
        }
        wit::Placement::Reject(r) => sdk::Placement::Reject(sdk::Rejection {
            reason: match r.reason {
                wit::RejectReason::NoCapacity => sdk::RejectReason::NoCapacity,
                wit::RejectReason::Constraints => sdk::RejectReason::Constraints,
                wit::RejectReason::Other => sdk::RejectReason::Other,
            },
            message: locus_core::validate::truncate_message(r.message),
        }),
    })
}
