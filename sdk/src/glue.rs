//! The WebAssembly side of the contract: generated bindings for the WIT
//! worlds, and conversions between the generated types and the SDK's own.
//! Used only by [`export!`](crate::export), which picks the world matching the
//! capabilities a policy exports (a component must export exactly its world).

/// Bindings of the placement-policy world; they also define the shared
/// `types` and `host` interfaces.
pub mod placement {
    wit_bindgen::generate!({
        path: "../wit",
        world: "placement-policy",
        pub_export_macro: true,
        export_macro_name: "export_world",
        default_bindings_module: "locus_sdk::__glue::placement",
    });
}

/// Bindings of the migration-policy world, reusing the shared interfaces.
/// A policy exporting both capabilities exports both worlds, whose union is
/// the `scheduler-policy` world.
pub mod migration {
    wit_bindgen::generate!({
        path: "../wit",
        world: "migration-policy",
        pub_export_macro: true,
        export_macro_name: "export_world",
        default_bindings_module: "locus_sdk::__glue::migration",
        with: {
            "locus:policy/types@0.1.0": crate::__glue::placement::locus::policy::types,
            "locus:policy/host@0.1.0": crate::__glue::placement::locus::policy::host,
        },
    });
}

pub use placement::locus::policy::host;
pub use placement::locus::policy::types as wit;

use crate::view;

impl From<wit::Resources> for view::Resources {
    fn from(r: wit::Resources) -> Self {
        view::Resources { vcpus: r.vcpus, memory_mib: r.memory_mib, disk_gib: r.disk_gib }
    }
}

impl From<wit::Coordinates> for view::Coordinates {
    fn from(c: wit::Coordinates) -> Self {
        view::Coordinates::new(c.latitude, c.longitude)
    }
}

impl From<wit::GroupKind> for view::GroupKind {
    fn from(k: wit::GroupKind) -> Self {
        match k {
            wit::GroupKind::Affinity => view::GroupKind::Affinity,
            wit::GroupKind::AntiAffinity => view::GroupKind::AntiAffinity,
            wit::GroupKind::Spread => view::GroupKind::Spread,
        }
    }
}

impl From<wit::Pop> for view::Pop {
    fn from(p: wit::Pop) -> Self {
        view::Pop {
            jurisdiction: p.jurisdiction,
            location: p.location.into(),
            capacity: p.capacity.into(),
            allocated: p.allocated.into(),
            vm_count: p.vm_count,
            renewable_watts: p.renewable_watts,
            carbon_g_per_kwh: p.carbon_g_per_kwh,
        }
    }
}

impl From<wit::Hosts> for view::Hosts {
    fn from(h: wit::Hosts) -> Self {
        view::Hosts {
            pop: h.pop,
            vcpus: h.vcpus,
            memory_mib: h.memory_mib,
            disk_gib: h.disk_gib,
            allocated_vcpus: h.allocated_vcpus,
            allocated_memory_mib: h.allocated_memory_mib,
            allocated_disk_gib: h.allocated_disk_gib,
            cpu_milli: h.cpu_milli,
            load_cpu_milli: h.load_cpu_milli,
            vm_count: h.vm_count,
            idle_watts: h.idle_watts,
            max_watts: h.max_watts,
            current_watts: h.current_watts,
        }
    }
}

impl From<wit::Cluster> for view::Cluster {
    fn from(c: wit::Cluster) -> Self {
        view::Cluster {
            pops: c.pops.into_iter().map(Into::into).collect(),
            jurisdictions: c.jurisdictions,
            pop_latency_us: c.pop_latency_us,
            hosts: c.hosts.into(),
        }
    }
}

impl From<wit::Request> for view::Request {
    fn from(r: wit::Request) -> Self {
        view::Request {
            size: r.size.into(),
            group: r.group.map(|g| view::Group {
                kind: g.kind.into(),
                members_on_host: g.members_on_host,
                members_in_pop: g.members_in_pop,
            }),
            allowed_jurisdictions: r.allowed_jurisdictions,
            user_location: r.user_location.map(Into::into),
            max_latency_us: r.max_latency_us,
            user_latency_us: r.user_latency_us,
            image_held_by: r.image_held_by,
        }
    }
}

impl From<wit::Partition> for view::Partition {
    fn from(p: wit::Partition) -> Self {
        let v = p.vms;
        view::Partition {
            cluster: p.cluster.into(),
            vms: view::Vms {
                host: v.host,
                vcpus: v.vcpus,
                memory_mib: v.memory_mib,
                disk_gib: v.disk_gib,
                load_cpu_milli: v.load_cpu_milli,
                group: v.group,
                allowed_jurisdictions: v.allowed_jurisdictions,
                migration_cost: v.migration_cost,
            },
            groups: p.groups.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<crate::Placement> for wit::Placement {
    fn from(p: crate::Placement) -> Self {
        match p {
            crate::Placement::Place(c) => wit::Placement::Place(wit::Choice {
                host: c.host,
                scores: c.scores.into_iter().map(|s| wit::Score { host: s.host, value: s.value }).collect(),
            }),
            crate::Placement::Reject(r) => wit::Placement::Reject(wit::Rejection {
                reason: match r.reason {
                    crate::RejectReason::NoCapacity => wit::RejectReason::NoCapacity,
                    crate::RejectReason::Constraints => wit::RejectReason::Constraints,
                    crate::RejectReason::Other => wit::RejectReason::Other,
                },
                message: r.message,
            }),
        }
    }
}

/// Calls `P::place` on the generated types.
pub fn place<P: crate::PlacementPolicy>(cluster: wit::Cluster, request: wit::Request) -> wit::Placement {
    P::place(&cluster.into(), &request.into()).into()
}

/// Calls `M::plan` on the generated types.
pub fn plan<M: crate::MigrationPolicy>(partition: wit::Partition) -> Vec<wit::Migration> {
    M::plan(&partition.into()).into_iter().map(|m| wit::Migration { vm: m.vm, to: m.to }).collect()
}
