//! `first-fit`: the first host, in row order, with room for the VM.
//!
//! The simplest correct placement, and the cheapest: it stops at the first
//! fit. Row order is the agent's host order, so VMs pile onto the first hosts,
//! which is a crude form of consolidation.
//!
//! Configuration: none.

use locus_sdk::{Cluster, Placement, PlacementPolicy, RejectReason, Request};

/// The first-fit placement policy.
#[derive(Debug)]
pub struct FirstFit;

impl PlacementPolicy for FirstFit {
    fn place(cluster: &Cluster, request: &Request) -> Placement {
        let hosts = &cluster.hosts;
        (0..hosts.len())
            .find(|&i| request.size.fits_in(hosts.free(i)))
            .map(|i| Placement::on(i as u32))
            .unwrap_or_else(|| Placement::reject(RejectReason::NoCapacity, "no host has room for the VM"))
    }
}

locus_sdk::export!(placement: FirstFit);

#[cfg(test)]
mod tests {
    use super::*;
    use locus_sdk::Resources;
    use locus_sdk::testing::{ClusterBuilder, RequestBuilder};

    #[test]
    fn takes_the_first_host_with_room() {
        let c = ClusterBuilder::new()
            .pop("FR", 48.0, 2.0)
            .host_used(0, Resources::new(4, 4096, 50), Resources::new(4, 1024, 0))
            .host(0, Resources::new(4, 4096, 50))
            .host(0, Resources::new(4, 4096, 50))
            .build();
        let r = RequestBuilder::new(&c, Resources::new(1, 512, 5)).build();
        assert_eq!(FirstFit::place(&c, &r).host(), Some(1));
    }

    #[test]
    fn rejects_an_empty_cluster() {
        let c = ClusterBuilder::new().pop("FR", 48.0, 2.0).build();
        let r = RequestBuilder::new(&c, Resources::new(1, 512, 5)).build();
        assert_eq!(FirstFit::place(&c, &r).host(), None);
    }
}
