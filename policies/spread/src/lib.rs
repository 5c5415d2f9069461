//! `spread`: load balancing across PoPs and hosts.
//!
//! Each candidate host is scored by how loaded it and its PoP would be after
//! taking the VM (the larger of the vCPU and memory allocation fractions),
//! plus a penalty for every member of the VM's group already on the host or
//! in the PoP when the group asks to be spread. The least loaded wins, so
//! load evens out and one PoP's failure takes down as few VMs as possible.
//!
//! Configuration:
//! - `pop-weight` (default 1.0): weight of the PoP's load against the host's.
//! - `group-penalty` (default 0.5): added per group member already on the
//!   host (half of it per member elsewhere in the PoP).

use locus_sdk::{
    Cluster, GroupKind, Placement, PlacementPolicy, RejectReason, Request, Resources, Score, config_or,
};

/// The spread placement policy.
#[derive(Debug)]
pub struct Spread;

/// The larger of the vCPU and memory fractions of `capacity` in use.
fn load(allocated: Resources, capacity: Resources) -> f32 {
    let f = |a: u32, c: u32| if c == 0 { 1.0 } else { a as f32 / c as f32 };
    f(allocated.vcpus, capacity.vcpus).max(f(allocated.memory_mib, capacity.memory_mib))
}

impl PlacementPolicy for Spread {
    fn place(cluster: &Cluster, request: &Request) -> Placement {
        let pop_weight: f32 = config_or("pop-weight", 1.0);
        let group_penalty: f32 = config_or("group-penalty", 0.5);
        let hosts = &cluster.hosts;
        let spread_group = request.group.as_ref().filter(|g| g.kind == GroupKind::Spread);
        let mut scores = Vec::with_capacity(hosts.len());
        let mut best: Option<(f32, u32)> = None;
        for host in hosts.iter() {
            if !request.size.fits_in(host.free()) {
                continue;
            }
            let mut cost = load(host.allocated.plus(request.size), host.capacity);
            if let Some(pop) = cluster.pops.get(host.pop as usize) {
                cost += pop_weight * load(pop.allocated.plus(request.size), pop.capacity);
            }
            if let Some(group) = spread_group {
                let on_host = group.members_on_host.get(host.row as usize).copied().unwrap_or(0);
                let in_pop = group.members_in_pop.get(host.pop as usize).copied().unwrap_or(0);
                cost += group_penalty * (on_host as f32 + 0.5 * in_pop.saturating_sub(on_host) as f32);
            }
            scores.push(Score { host: host.row, value: -cost });
            if best.is_none_or(|(b, _)| cost < b) {
                best = Some((cost, host.row));
            }
        }
        match best {
            Some((_, row)) => Placement::on_with_scores(row, scores),
            None => Placement::reject(RejectReason::NoCapacity, "no host has room for the VM"),
        }
    }
}

locus_sdk::export!(placement: Spread);

#[cfg(test)]
mod tests {
    use super::*;
    use locus_sdk::testing::{ClusterBuilder, RequestBuilder, with_config};

    const CAP: Resources = Resources::new(16, 32_768, 500);

    #[test]
    fn prefers_the_emptier_pop_then_the_emptier_host() {
        let c = ClusterBuilder::new()
            .pop("FR", 48.0, 2.0)
            .pop("DE", 52.0, 13.0)
            .host_used(0, CAP, Resources::new(2, 2048, 10))
            .host_used(0, CAP, Resources::new(2, 2048, 10))
            .host_used(1, CAP, Resources::new(8, 16_384, 10))
            .host_used(1, CAP, Resources::new(4, 8192, 10))
            .build();
        let r = RequestBuilder::new(&c, Resources::new(1, 1024, 1)).build();
        assert_eq!(Spread::place(&c, &r).host(), Some(0));
        let c2 = ClusterBuilder::new()
            .pop("FR", 48.0, 2.0)
            .host_used(0, CAP, Resources::new(8, 16_384, 10))
            .host_used(0, CAP, Resources::new(4, 8192, 10))
            .build();
        let r2 = RequestBuilder::new(&c2, Resources::new(1, 1024, 1)).build();
        assert_eq!(Spread::place(&c2, &r2).host(), Some(1));
    }

    #[test]
    fn spreads_a_group_away_from_its_members() {
        let c = ClusterBuilder::new().pop("FR", 48.0, 2.0).host(0, CAP).host(0, CAP).build();
        let r = RequestBuilder::new(&c, Resources::new(1, 1024, 1)).group(GroupKind::Spread, &[0]).build();
        assert_eq!(Spread::place(&c, &r).host(), Some(1));
    }

    #[test]
    fn group_penalty_is_configurable() {
        let c = ClusterBuilder::new()
            .pop("FR", 48.0, 2.0)
            .host(0, CAP)
            .host_used(0, CAP, Resources::new(2, 4096, 10))
            .build();
        let r = RequestBuilder::new(&c, Resources::new(1, 1024, 1)).group(GroupKind::Spread, &[0]).build();
        assert_eq!(Spread::place(&c, &r).host(), Some(1));
        assert_eq!(with_config(&[("group-penalty", "0")], || Spread::place(&c, &r).host()), Some(0));
    }

    #[test]
    fn scores_explain_every_fitting_host() {
        let c = ClusterBuilder::new().pop("FR", 48.0, 2.0).host(0, CAP).host(0, CAP).build();
        let r = RequestBuilder::new(&c, Resources::new(1, 1024, 1)).build();
        match Spread::place(&c, &r) {
            Placement::Place(choice) => assert_eq!(choice.scores.len(), 2),
            other => panic!("expected a placement, got {other:?}"),
        }
    }
}
