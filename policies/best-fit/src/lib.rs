//! `best-fit`: bin packing for consolidation.
//!
//! Puts each VM on the host it fills most tightly: the host whose free
//! resources, after placing the VM, are smallest relative to its capacity
//! (memory and vCPUs weigh equally; disk counts a quarter, being the
//! cheapest to add). Packing hosts full leaves others empty, so they can be
//! powered down. Of hosts filled alike (identical empty hosts, say), one
//! that holds the VM's image wins, since the VM starts there without
//! fetching it; then the lowest row, which makes the choice deterministic.
//!
//! Configuration: none.

use locus_sdk::{Cluster, Placement, PlacementPolicy, RejectReason, Request};

/// The best-fit placement policy.
#[derive(Debug)]
pub struct BestFit;

impl PlacementPolicy for BestFit {
    fn place(cluster: &Cluster, request: &Request) -> Placement {
        let h = &cluster.hosts;
        let want = request.size;
        let mut best: Option<(f32, bool, usize)> = None;
        for i in 0..h.len() {
            let free_cpu = h.vcpus[i].saturating_sub(h.allocated_vcpus[i]);
            let free_mem = h.memory_mib[i].saturating_sub(h.allocated_memory_mib[i]);
            let free_disk = h.disk_gib[i].saturating_sub(h.allocated_disk_gib[i]);
            if want.vcpus > free_cpu || want.memory_mib > free_mem || want.disk_gib > free_disk {
                continue;
            }
            let left = fraction(free_cpu - want.vcpus, h.vcpus[i])
                + fraction(free_mem - want.memory_mib, h.memory_mib[i])
                + 0.25 * fraction(free_disk - want.disk_gib, h.disk_gib[i]);
            let lacks_image = !request.holds_image(i as u32);
            if best.is_none_or(|(b, lacks, _)| left < b || (left == b && lacks && !lacks_image)) {
                best = Some((left, lacks_image, i));
            }
        }
        match best {
            Some((_, _, i)) => Placement::on(i as u32),
            None => Placement::reject(RejectReason::NoCapacity, "no host has room for the VM"),
        }
    }
}

fn fraction(part: u32, whole: u32) -> f32 {
    if whole == 0 { 0.0 } else { part as f32 / whole as f32 }
}

locus_sdk::export!(placement: BestFit);

#[cfg(test)]
mod tests {
    use super::*;
    use locus_sdk::Resources;
    use locus_sdk::testing::{ClusterBuilder, RequestBuilder};

    const BIG: Resources = Resources::new(32, 65_536, 1000);

    #[test]
    fn picks_the_fullest_host_that_still_fits() {
        let c = ClusterBuilder::new()
            .pop("FR", 48.0, 2.0)
            .host_used(0, BIG, Resources::new(8, 16_384, 100))
            .host_used(0, BIG, Resources::new(28, 60_000, 900))
            .host_used(0, BIG, Resources::new(24, 48_000, 500))
            .build();
        let r = RequestBuilder::new(&c, Resources::new(2, 4096, 20)).build();
        assert_eq!(BestFit::place(&c, &r).host(), Some(1));
    }

    #[test]
    fn of_hosts_filled_alike_prefers_one_holding_the_image() {
        let c = ClusterBuilder::new().pop("FR", 48.0, 2.0).host(0, BIG).host(0, BIG).host(0, BIG).build();
        let r = RequestBuilder::new(&c, Resources::new(2, 4096, 20)).image_held_by(&[2]).build();
        assert_eq!(BestFit::place(&c, &r).host(), Some(2));
        let r = RequestBuilder::new(&c, Resources::new(2, 4096, 20)).image_held_by(&[]).build();
        assert_eq!(BestFit::place(&c, &r).host(), Some(0), "nobody holds it: the lowest row");
        // A tighter fit still wins over the image.
        let c = ClusterBuilder::new()
            .pop("FR", 48.0, 2.0)
            .host(0, BIG)
            .host_used(0, BIG, Resources::new(8, 16_384, 100))
            .build();
        let r = RequestBuilder::new(&c, Resources::new(2, 4096, 20)).image_held_by(&[0]).build();
        assert_eq!(BestFit::place(&c, &r).host(), Some(1));
    }

    #[test]
    fn skips_hosts_where_the_vm_does_not_fit() {
        let c = ClusterBuilder::new()
            .pop("FR", 48.0, 2.0)
            .host_used(0, BIG, Resources::new(31, 65_000, 900))
            .host(0, BIG)
            .build();
        let r = RequestBuilder::new(&c, Resources::new(2, 4096, 20)).build();
        assert_eq!(BestFit::place(&c, &r).host(), Some(1));
    }

    #[test]
    fn rejects_when_nothing_fits() {
        let c = ClusterBuilder::new().pop("FR", 48.0, 2.0).host(0, Resources::new(1, 512, 10)).build();
        let r = RequestBuilder::new(&c, Resources::new(2, 4096, 20)).build();
        assert!(
            matches!(BestFit::place(&c, &r), Placement::Reject(r) if r.reason == RejectReason::NoCapacity)
        );
    }

    #[test]
    fn ties_go_to_the_lowest_row() {
        let c = ClusterBuilder::new().pop("FR", 48.0, 2.0).host(0, BIG).host(0, BIG).build();
        let r = RequestBuilder::new(&c, Resources::new(2, 4096, 20)).build();
        assert_eq!(BestFit::place(&c, &r).host(), Some(0));
    }
}
