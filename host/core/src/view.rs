//! Building what a policy sees from the model: the candidate hosts as
//! columns, the PoPs, and the request with its indexes. The buffers of the
//! previous view are reused, so a decision allocates little.

use crate::filter::Resolved;
use crate::model::{HostId, Model, VmId};
use locus_sdk::{ABSENT, Cluster, Group, Partition, Pop, Request, Vms};

/// Fills `view` with the model's PoPs and the hosts in `rows` (in that order).
pub fn fill_cluster(model: &Model, rows: &[HostId], view: &mut Cluster) {
    view.pops.clear();
    view.pops.extend(model.pops.iter().map(|p| Pop {
        jurisdiction: p.jurisdiction,
        location: p.location,
        capacity: p.capacity,
        allocated: p.allocated,
        vm_count: p.vm_count,
        renewable_watts: p.renewable_watts,
        carbon_g_per_kwh: p.carbon_g_per_kwh,
    }));
    if view.jurisdictions != model.jurisdictions {
        view.jurisdictions.clone_from(&model.jurisdictions);
    }
    view.pop_latency_us.clone_from(&model.pop_latency_us);
    view.hosts.clear();
    for &HostId(i) in rows {
        let host = &model.hosts[i as usize];
        view.hosts.push(&locus_sdk::Host {
            row: 0,
            pop: host.pop.0,
            capacity: host.capacity,
            allocated: host.allocated,
            cpu_milli: host.cpu_milli,
            load_cpu_milli: host.load_cpu_milli,
            vm_count: host.vm_count,
            idle_watts: host.idle_watts,
            max_watts: host.max_watts,
            current_watts: host.current_watts(),
        });
    }
}

/// The request as the policy sees it, for a view whose hosts are `rows`.
pub fn request(
    model: &Model,
    resolved: Resolved,
    user: Option<locus_sdk::Coordinates>,
    rows: &[HostId],
) -> Request {
    let group = resolved.group.map(|(id, kind)| {
        let members = id.and_then(|g| model.groups.get(g.0 as usize));
        let on = |h: HostId| members.and_then(|g| g.members.get(&h)).copied().unwrap_or(0);
        let mut in_pop = vec![0; model.pops.len()];
        if let Some(g) = members {
            for (&host, &n) in &g.members {
                in_pop[model.hosts[host.0 as usize].pop.0 as usize] += n;
            }
        }
        Group { kind, members_on_host: rows.iter().map(|&h| on(h)).collect(), members_in_pop: in_pop }
    });
    Request {
        size: resolved.size,
        group,
        allowed_jurisdictions: resolved.jurisdictions.unwrap_or_default(),
        user_location: user,
        max_latency_us: resolved.max_latency_us,
        user_latency_us: resolved.user_latency_us,
        image_held_by: resolved.image.map(|key| {
            (0..rows.len() as u32)
                .filter(|&r| model.hosts[rows[r as usize].0 as usize].holds_image(key))
                .collect()
        }),
    }
}

/// The partition over `rows`: those hosts and every VM on them. Returns the
/// view and, for each VM row, the model's VM id.
pub fn partition(model: &Model, rows: &[HostId]) -> (Partition, Vec<VmId>) {
    let mut cluster = Cluster::default();
    fill_cluster(model, rows, &mut cluster);
    let mut row_of = vec![ABSENT; model.hosts.len()];
    for (r, &HostId(h)) in rows.iter().enumerate() {
        row_of[h as usize] = r as u32;
    }
    let mut vms = Vms::default();
    let mut ids = Vec::new();
    for (id, vm) in model.live_vms() {
        let row = row_of[vm.host.0 as usize];
        if row == ABSENT {
            continue;
        }
        ids.push(id);
        vms.host.push(row);
        vms.vcpus.push(vm.size.vcpus);
        vms.memory_mib.push(vm.size.memory_mib);
        vms.disk_gib.push(vm.size.disk_gib);
        vms.load_cpu_milli.push(vm.load_cpu_milli);
        vms.group.push(vm.group.map_or(ABSENT, |g| g.0));
        vms.allowed_jurisdictions.push(if vm.jurisdictions.is_empty() {
            u64::MAX
        } else {
            vm.jurisdictions.iter().filter(|&&j| j < 64).fold(0, |m, &j| m | (1u64 << j))
        });
        vms.migration_cost.push(vm.size.memory_mib);
    }
    let groups = model.groups.iter().map(|g| g.kind).collect();
    (Partition { cluster, vms, groups }, ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use locus_sdk::{Coordinates, GroupKind, Resources};

    #[test]
    fn views_carry_rows_in_order_and_group_counts() {
        let mut m = Model::new();
        m.add_pop("paris", "FR", Coordinates::new(48.86, 2.35), 0, 50).expect("pop");
        m.add_pop("rome", "IT", Coordinates::new(41.9, 12.5), 0, 300).expect("pop");
        m.add_host("a", "paris", Resources::new(4, 4096, 10), 4000, (100, 200)).expect("host");
        m.add_host("b", "rome", Resources::new(8, 8192, 10), 8000, (100, 200)).expect("host");
        let g = m.group("g", GroupKind::Spread).expect("group");
        m.add_vm("v", HostId(1), Resources::new(1, 512, 1), 800, Some(g), vec![1]).expect("vm");
        let rows = [HostId(1), HostId(0)];
        let mut c = Cluster::default();
        fill_cluster(&m, &rows, &mut c);
        assert_eq!(c.hosts.vcpus, vec![8, 4]);
        assert_eq!(c.hosts.pop, vec![1, 0]);
        assert_eq!(c.hosts.current_watts, vec![110, 100]);
        let r: crate::VmRequest =
            toml::from_str("name='x'\nvcpus=1\nmemory-mib=1\ngroup={name='g',kind='spread'}")
                .expect("request");
        let req = request(&m, Resolved::new(&m, &r), None, &rows);
        let group = req.group.expect("group");
        assert_eq!(group.members_on_host, vec![1, 0]);
        assert_eq!(group.members_in_pop, vec![0, 1]);
        assert_eq!(req.image_held_by, None, "no image");
        m.set_images(HostId(0), vec![crate::request::image_key("debian"), 7]);
        let r: crate::VmRequest =
            toml::from_str("name='x'\nvcpus=1\nmemory-mib=1\nimage='debian'").expect("request");
        let req = request(&m, Resolved::new(&m, &r), None, &rows);
        assert_eq!(req.image_held_by, Some(vec![1]), "host a, row 1, holds it");
        assert!(req.holds_image(1) && !req.holds_image(0));
        let (p, ids) = partition(&m, &rows);
        assert_eq!(p.vms.host, vec![0]);
        assert_eq!(p.vms.allowed_jurisdictions, vec![0b10]);
        assert_eq!(ids.len(), 1);
    }
}
