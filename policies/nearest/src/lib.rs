//! `nearest`: the lowest latency to the VM's users.
//!
//! Chooses the PoP with the lowest estimated round-trip time to the users
//! (`request.user-latency-us`), among hosts the agent already restricted to
//! the allowed jurisdictions and latency bound, and inside that PoP the host
//! with the most free memory, so the nearest PoP fills evenly. Without a user
//! location, every PoP is equally near and the choice is the least loaded
//! host. A request whose best latency still exceeds its bound is rejected
//! with `constraints`, so the agent can forward it.
//!
//! Configuration: none.

use locus_sdk::{Cluster, Placement, PlacementPolicy, RejectReason, Request, Score};

/// The nearest placement policy.
#[derive(Debug)]
pub struct Nearest;

impl PlacementPolicy for Nearest {
    fn place(cluster: &Cluster, request: &Request) -> Placement {
        let hosts = &cluster.hosts;
        let mut best: Option<(u32, u32, u32)> = None; // (latency, used memory, row)
        let mut scores = Vec::new();
        for i in 0..hosts.len() {
            let free = hosts.free(i);
            if !request.size.fits_in(free) {
                continue;
            }
            let latency = request.user_latency(hosts.pop[i]).unwrap_or(0);
            let used = hosts.memory_mib[i] - free.memory_mib;
            scores.push(Score { host: i as u32, value: -(latency as f32) });
            let key = (latency, used, i as u32);
            if best.is_none_or(|b| key < b) {
                best = Some(key);
            }
        }
        match (best, request.max_latency_us) {
            (None, _) => Placement::reject(RejectReason::NoCapacity, "no host has room for the VM"),
            (Some((latency, _, _)), Some(bound)) if latency > bound => Placement::reject(
                RejectReason::Constraints,
                format!(
                    "the nearest host with room is {latency} µs from the users, above the {bound} µs bound"
                ),
            ),
            (Some((_, _, row)), _) => Placement::on_with_scores(row, scores),
        }
    }
}

locus_sdk::export!(placement: Nearest);

#[cfg(test)]
mod tests {
    use super::*;
    use locus_sdk::Resources;
    use locus_sdk::testing::{ClusterBuilder, RequestBuilder};

    const CAP: Resources = Resources::new(16, 32_768, 500);

    fn europe() -> Cluster {
        ClusterBuilder::new()
            .pop("FR", 48.86, 2.35) // Paris
            .pop("DE", 52.52, 13.40) // Berlin
            .pop("ES", 40.42, -3.70) // Madrid
            .host(0, CAP)
            .host(1, CAP)
            .host_used(2, CAP, Resources::new(4, 8192, 10))
            .host(2, CAP)
            .build()
    }

    #[test]
    fn a_user_in_lisbon_gets_madrid_on_its_emptier_host() {
        let c = europe();
        let r = RequestBuilder::new(&c, Resources::new(1, 1024, 1)).user_at(38.72, -9.14).build();
        assert_eq!(Nearest::place(&c, &r).host(), Some(3));
    }

    #[test]
    fn a_user_in_hamburg_gets_berlin() {
        let c = europe();
        let r = RequestBuilder::new(&c, Resources::new(1, 1024, 1)).user_at(53.55, 9.99).build();
        assert_eq!(Nearest::place(&c, &r).host(), Some(1));
    }

    #[test]
    fn an_unreachable_bound_is_a_constraint_rejection() {
        let c = europe();
        let r = RequestBuilder::new(&c, Resources::new(1, 1024, 1))
            .user_at(35.68, 139.69)
            .max_latency_us(5000)
            .build();
        assert!(
            matches!(Nearest::place(&c, &r), Placement::Reject(r) if r.reason == RejectReason::Constraints)
        );
    }

    #[test]
    fn without_a_user_location_it_takes_the_least_loaded_host() {
        let c = ClusterBuilder::new()
            .pop("FR", 48.86, 2.35)
            .host_used(0, CAP, Resources::new(4, 8192, 10))
            .host(0, CAP)
            .build();
        let r = RequestBuilder::new(&c, Resources::new(1, 1024, 1)).build();
        assert_eq!(Nearest::place(&c, &r).host(), Some(1));
    }
}
