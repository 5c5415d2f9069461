//! A native test harness: build clusters, requests and partitions in a few
//! lines and call a policy directly with `cargo test`, no WebAssembly needed.
//!
//! ```
//! use locus_sdk::testing::{ClusterBuilder, PartitionBuilder};
//! use locus_sdk::{Request, Resources};
//!
//! let cluster = ClusterBuilder::new()
//!     .pop("FR", 48.86, 2.35)
//!     .pop("DE", 52.52, 13.40)
//!     .host(0, Resources::new(16, 65_536, 500))
//!     .host(1, Resources::new(16, 65_536, 500))
//!     .build();
//! let request = Request { size: Resources::new(2, 4096, 20), ..Default::default() };
//! assert_eq!(cluster.hosts.len(), 2);
//! assert_eq!(cluster.jurisdiction_of(1), Some("DE"));
//! # let _ = (request, PartitionBuilder::new(cluster));
//! ```

use crate::geo;
use crate::view::{
    ABSENT, Cluster, Coordinates, Group, GroupKind, Host, Partition, Pop, Request, Resources, Vms,
};

/// Idle power of a host built without energy figures, in watts.
pub const DEFAULT_IDLE_WATTS: u32 = 100;
/// Full-load power of a host built without energy figures, in watts.
pub const DEFAULT_MAX_WATTS: u32 = 250;

/// Builds a [`Cluster`]. PoP aggregates (capacity, allocation, VM count) are
/// summed from the hosts, and latencies not set explicitly are estimated from
/// the PoPs' coordinates.
#[derive(Debug, Default, Clone)]
pub struct ClusterBuilder {
    cluster: Cluster,
    latencies: Vec<(u32, u32, u32)>,
}

impl ClusterBuilder {
    /// An empty cluster.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a PoP in `jurisdiction` at the given coordinates; its index is the
    /// number of PoPs added before it.
    pub fn pop(mut self, jurisdiction: &str, latitude: f32, longitude: f32) -> Self {
        let j = intern(&mut self.cluster.jurisdictions, jurisdiction);
        self.cluster.pops.push(Pop {
            jurisdiction: j,
            location: Coordinates { latitude, longitude },
            carbon_g_per_kwh: 300,
            ..Pop::default()
        });
        self
    }

    /// Sets the energy figures of the last PoP added.
    pub fn energy(mut self, renewable_watts: u32, carbon_g_per_kwh: u32) -> Self {
        if let Some(pop) = self.cluster.pops.last_mut() {
            pop.renewable_watts = renewable_watts;
            pop.carbon_g_per_kwh = carbon_g_per_kwh;
        }
        self
    }

    /// Adds an empty host in PoP `pop` with `capacity` (one physical CPU per
    /// vCPU, default power figures).
    pub fn host(self, pop: u32, capacity: Resources) -> Self {
        self.host_used(pop, capacity, Resources::default())
    }

    /// Adds a host with `allocated` already in use.
    pub fn host_used(self, pop: u32, capacity: Resources, allocated: Resources) -> Self {
        let load = allocated.vcpus.saturating_mul(500);
        self.host_full(Host {
            row: 0,
            pop,
            capacity,
            allocated,
            cpu_milli: capacity.vcpus.saturating_mul(1000),
            load_cpu_milli: load,
            vm_count: u32::from(allocated.vcpus > 0),
            idle_watts: DEFAULT_IDLE_WATTS,
            max_watts: DEFAULT_MAX_WATTS,
            current_watts: DEFAULT_IDLE_WATTS,
        })
    }

    /// Adds a host described in full (its `row` is ignored).
    pub fn host_full(mut self, host: Host) -> Self {
        self.cluster.hosts.push(&host);
        self
    }

    /// Sets the round-trip latency between PoPs `a` and `b`, both ways.
    pub fn latency(mut self, a: u32, b: u32, rtt_us: u32) -> Self {
        self.latencies.push((a, b, rtt_us));
        self
    }

    /// The cluster.
    pub fn build(self) -> Cluster {
        let mut cluster = self.cluster;
        let n = cluster.pops.len();
        cluster.pop_latency_us = vec![ABSENT; n * n];
        for a in 0..n {
            for b in 0..n {
                cluster.pop_latency_us[a * n + b] =
                    geo::estimated_rtt_us(cluster.pops[a].location, cluster.pops[b].location);
            }
        }
        for (a, b, rtt) in self.latencies {
            let (a, b) = (a as usize, b as usize);
            if a < n && b < n {
                cluster.pop_latency_us[a * n + b] = rtt;
                cluster.pop_latency_us[b * n + a] = rtt;
            }
        }
        for host in cluster.hosts.iter() {
            if let Some(pop) = cluster.pops.get_mut(host.pop as usize) {
                pop.capacity = pop.capacity.plus(host.capacity);
                pop.allocated = pop.allocated.plus(host.allocated);
                pop.vm_count += host.vm_count;
            }
        }
        cluster
    }
}

/// Builds [`Request`]s against a cluster.
#[derive(Debug, Clone)]
pub struct RequestBuilder<'a> {
    cluster: &'a Cluster,
    request: Request,
}

impl<'a> RequestBuilder<'a> {
    /// A request for a VM of `size` in `cluster`.
    pub fn new(cluster: &'a Cluster, size: Resources) -> Self {
        Self { cluster, request: Request { size, ..Request::default() } }
    }

    /// Restricts the VM to these jurisdiction codes (unknown codes are kept
    /// out, as the agent does).
    pub fn jurisdictions(mut self, codes: &[&str]) -> Self {
        self.request.allowed_jurisdictions = codes
            .iter()
            .filter_map(|c| self.cluster.jurisdictions.iter().position(|j| j == c))
            .map(|i| i as u32)
            .collect();
        self
    }

    /// Places the VM's users at these coordinates and estimates their latency
    /// to every PoP.
    pub fn user_at(mut self, latitude: f32, longitude: f32) -> Self {
        let user = Coordinates { latitude, longitude };
        self.request.user_location = Some(user);
        self.request.user_latency_us =
            self.cluster.pops.iter().map(|p| geo::estimated_rtt_us(user, p.location)).collect();
        self
    }

    /// Bounds the users' round-trip latency, in microseconds.
    pub fn max_latency_us(mut self, bound: u32) -> Self {
        self.request.max_latency_us = Some(bound);
        self
    }

    /// Gives the VM an image that the hosts of these rows hold.
    pub fn image_held_by(mut self, rows: &[u32]) -> Self {
        let mut rows = rows.to_vec();
        rows.sort_unstable();
        self.request.image_held_by = Some(rows);
        self
    }

    /// Makes the VM a member of a group whose members run on the given rows.
    pub fn group(mut self, kind: GroupKind, member_rows: &[u32]) -> Self {
        let mut on_host = vec![0; self.cluster.hosts.len()];
        let mut in_pop = vec![0; self.cluster.pops.len()];
        for &row in member_rows {
            if let Some(count) = on_host.get_mut(row as usize) {
                *count += 1;
                let pop = self.cluster.hosts.pop[row as usize] as usize;
                if let Some(count) = in_pop.get_mut(pop) {
                    *count += 1;
                }
            }
        }
        self.request.group = Some(Group { kind, members_on_host: on_host, members_in_pop: in_pop });
        self
    }

    /// The request.
    pub fn build(self) -> Request {
        self.request
    }
}

/// Builds a [`Partition`] from a cluster whose host allocations are
/// recomputed from the VMs added.
#[derive(Debug, Clone)]
pub struct PartitionBuilder {
    partition: Partition,
}

impl PartitionBuilder {
    /// A partition over `cluster`'s hosts, with no VM yet. The hosts'
    /// allocation, load and VM count are reset and summed from the VMs added.
    pub fn new(mut cluster: Cluster) -> Self {
        let hosts = &mut cluster.hosts;
        for column in [
            &mut hosts.allocated_vcpus,
            &mut hosts.allocated_memory_mib,
            &mut hosts.allocated_disk_gib,
            &mut hosts.load_cpu_milli,
            &mut hosts.vm_count,
        ] {
            column.iter_mut().for_each(|v| *v = 0);
        }
        Self { partition: Partition { cluster, vms: Vms::default(), groups: Vec::new() } }
    }

    /// Declares a group and returns the builder; its index is the number of
    /// groups declared before it.
    pub fn group(mut self, kind: GroupKind) -> Self {
        self.partition.groups.push(kind);
        self
    }

    /// Adds a VM of `size` on host row `host` with CPU demand `load_cpu_milli`.
    pub fn vm(self, host: u32, size: Resources, load_cpu_milli: u32) -> Self {
        self.vm_in_group(host, size, load_cpu_milli, ABSENT)
    }

    /// Adds a VM that belongs to group `group`.
    pub fn vm_in_group(mut self, host: u32, size: Resources, load_cpu_milli: u32, group: u32) -> Self {
        let p = &mut self.partition;
        let h = host as usize;
        let hosts = &mut p.cluster.hosts;
        if h < hosts.len() {
            hosts.allocated_vcpus[h] += size.vcpus;
            hosts.allocated_memory_mib[h] += size.memory_mib;
            hosts.allocated_disk_gib[h] += size.disk_gib;
            hosts.load_cpu_milli[h] += load_cpu_milli;
            hosts.vm_count[h] += 1;
        }
        let vms = &mut p.vms;
        vms.host.push(host);
        vms.vcpus.push(size.vcpus);
        vms.memory_mib.push(size.memory_mib);
        vms.disk_gib.push(size.disk_gib);
        vms.load_cpu_milli.push(load_cpu_milli);
        vms.group.push(group);
        vms.allowed_jurisdictions.push(u64::MAX);
        vms.migration_cost.push(size.memory_mib);
        self
    }

    /// Fences the last VM added to these jurisdiction indexes.
    pub fn fenced_to(mut self, jurisdictions: &[u32]) -> Self {
        if let Some(mask) = self.partition.vms.allowed_jurisdictions.last_mut() {
            *mask = jurisdictions.iter().filter(|&&j| j < 64).fold(0, |m, &j| m | (1u64 << j));
        }
        self
    }

    /// The partition.
    pub fn build(self) -> Partition {
        self.partition
    }
}

/// A deterministic synthetic cluster of `hosts` hosts over three PoPs (FR,
/// DE, ES), each host 32 vCPUs / 64 GiB / 1 TB with a varied allocation, for
/// benchmarks: the same `hosts` always gives the same cluster.
pub fn synthetic_cluster(hosts: usize) -> Cluster {
    let mut b = ClusterBuilder::new()
        .pop("FR", 48.86, 2.35)
        .energy(0, 60)
        .pop("DE", 52.52, 13.40)
        .energy(2_000, 380)
        .pop("ES", 40.42, -3.70)
        .energy(20_000, 190);
    for i in 0..hosts {
        let used = Resources::new((i * 7 % 29) as u32, (i * 4099 % 60_000) as u32, (i * 13 % 900) as u32);
        b = b.host_used((i % 3) as u32, Resources::new(32, 65_536, 1000), used);
    }
    b.build()
}

/// A deterministic synthetic partition over `hosts` hosts with four VMs
/// each, where every fifth host is overloaded, for benchmarks.
pub fn synthetic_partition(hosts: usize) -> Partition {
    let base = ClusterBuilder::new().pop("FR", 48.86, 2.35).pop("DE", 52.52, 13.40);
    let cluster =
        (0..hosts).fold(base, |b, i| b.host((i % 2) as u32, Resources::new(32, 65_536, 1000))).build();
    let mut p = PartitionBuilder::new(cluster);
    for h in 0..hosts as u32 {
        let demand = if h % 5 == 0 { 9_000 } else { 3_000 };
        for _ in 0..4 {
            p = p.vm(h, Resources::new(4, 8192, 50), demand);
        }
    }
    p.build()
}

fn intern(table: &mut Vec<String>, value: &str) -> u32 {
    match table.iter().position(|v| v == value) {
        Some(i) => i as u32,
        None => {
            table.push(value.to_owned());
            (table.len() - 1) as u32
        }
    }
}

/// Runs `f` with `config` as the policy configuration seen by
/// [`config`](crate::config) on this thread (native builds only).
pub fn with_config<R>(config: &[(&str, &str)], f: impl FnOnce() -> R) -> R {
    let previous = context::CONFIG
        .with(|c| c.replace(config.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()));
    let out = f();
    context::CONFIG.with(|c| c.replace(previous));
    out
}

/// Takes the lines logged on this thread so far (native builds only).
pub fn take_logs() -> Vec<(crate::Level, String)> {
    context::LOGS.with(|l| l.take())
}

/// The per-thread stand-in for the agent's host services in native builds.
pub(crate) mod context {
    use crate::host::Level;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    /// Lines kept per thread; older ones are dropped so a chatty policy
    /// cannot grow a benchmark's memory without bound.
    const MAX_LINES: usize = 1024;

    thread_local! {
        pub(crate) static CONFIG: RefCell<BTreeMap<String, String>> = RefCell::default();
        pub(crate) static LOGS: RefCell<Vec<(Level, String)>> = RefCell::default();
    }

    #[allow(dead_code, reason = "unused in wasm builds, which call the real host")]
    pub fn log(level: Level, message: &str) {
        LOGS.with(|l| {
            let mut l = l.borrow_mut();
            if l.len() == MAX_LINES {
                l.remove(0);
            }
            l.push((level, message.to_owned()));
        })
    }

    #[allow(dead_code, reason = "unused in wasm builds, which call the real host")]
    pub fn config(key: &str) -> Option<String> {
        CONFIG.with(|c| c.borrow().get(key).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pop_aggregates_are_summed_from_hosts() {
        let c = ClusterBuilder::new()
            .pop("FR", 48.0, 2.0)
            .host_used(0, Resources::new(8, 1000, 10), Resources::new(2, 100, 1))
            .host(0, Resources::new(8, 1000, 10))
            .build();
        assert_eq!(c.pops[0].capacity, Resources::new(16, 2000, 20));
        assert_eq!(c.pops[0].allocated, Resources::new(2, 100, 1));
        assert!(c.hosts.is_rectangular());
    }

    #[test]
    fn explicit_latency_overrides_the_estimate_both_ways() {
        let c = ClusterBuilder::new().pop("FR", 48.0, 2.0).pop("DE", 52.0, 13.0).latency(0, 1, 7).build();
        assert_eq!(c.pop_latency(0, 1), Some(7));
        assert_eq!(c.pop_latency(1, 0), Some(7));
        assert_eq!(c.pop_latency(0, 5), None);
    }

    #[test]
    fn partition_allocations_come_from_vms() {
        let c = ClusterBuilder::new()
            .pop("FR", 48.0, 2.0)
            .host_used(0, Resources::new(8, 1000, 10), Resources::new(8, 1000, 10))
            .build();
        let p = PartitionBuilder::new(c).vm(0, Resources::new(2, 100, 1), 1500).fenced_to(&[0]).build();
        assert_eq!(p.cluster.hosts.allocated(0), Resources::new(2, 100, 1));
        assert_eq!(p.cluster.hosts.load_cpu_milli[0], 1500);
        assert!(p.vms.may_run_in(0, 0));
        assert!(!p.vms.may_run_in(0, 1));
    }

    #[test]
    fn config_and_logs_are_per_thread_and_scoped() {
        with_config(&[("k", "v")], || {
            assert_eq!(crate::config("k").as_deref(), Some("v"));
            crate::log(crate::Level::Info, "hello");
        });
        assert_eq!(crate::config("k"), None);
        assert_eq!(take_logs(), vec![(crate::Level::Info, "hello".to_owned())]);
    }
}
