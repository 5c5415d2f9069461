//! `green`: renewable power first, then the cleanest grid.
//!
//! For each host with room, the policy estimates the extra power the VM would
//! draw there: its share of the host's dynamic range (max minus idle watts,
//! in proportion to its vCPUs), plus the host's idle power when the host runs
//! nothing yet (it would have to stay on, or be woken, for this VM). Hosts are
//! then ranked by:
//! 1. whether the PoP's unused renewable power covers that extra draw;
//! 2. the PoP's grid carbon intensity, lowest first;
//! 3. the extra draw, lowest first (so busy hosts are preferred to idle ones);
//! 4. the users' latency to the PoP, lowest first.
//!
//! The latency bound and jurisdictions are already enforced by the agent.
//!
//! Configuration:
//! - `renewable-margin-percent` (default 10): renewable power must exceed the
//!   extra draw by this margin to count as covering it.

use locus_sdk::{Cluster, Placement, PlacementPolicy, RejectReason, Request, Score, config_or};

/// The green placement policy.
#[derive(Debug)]
pub struct Green;

/// Extra watts the VM would add on host `i`.
fn extra_watts(cluster: &Cluster, i: usize, vcpus: u32) -> u32 {
    let h = &cluster.hosts;
    let dynamic = h.max_watts[i].saturating_sub(h.idle_watts[i]);
    let share = if h.vcpus[i] == 0 {
        dynamic
    } else {
        (u64::from(dynamic) * u64::from(vcpus) / u64::from(h.vcpus[i])) as u32
    };
    let wake = if h.vm_count[i] == 0 { h.idle_watts[i] } else { 0 };
    share + wake
}

impl PlacementPolicy for Green {
    fn place(cluster: &Cluster, request: &Request) -> Placement {
        let margin: u32 = config_or("renewable-margin-percent", 10);
        let hosts = &cluster.hosts;
        let mut best: Option<((u32, u32, u32, u32), u32)> = None;
        let mut scores = Vec::new();
        for i in 0..hosts.len() {
            if !request.size.fits_in(hosts.free(i)) {
                continue;
            }
            let Some(pop) = cluster.pops.get(hosts.pop[i] as usize) else {
                continue;
            };
            let extra = extra_watts(cluster, i, request.size.vcpus);
            let needed = (u64::from(extra) * u64::from(100 + margin)).div_ceil(100);
            let renewable = u32::from(u64::from(pop.renewable_watts) < needed);
            let latency = request.user_latency(hosts.pop[i]).unwrap_or(0);
            let key = (renewable, pop.carbon_g_per_kwh, extra, latency);
            let grams_per_hour =
                if renewable == 0 { 0.0 } else { extra as f32 * pop.carbon_g_per_kwh as f32 / 1000.0 };
            scores.push(Score { host: i as u32, value: -grams_per_hour });
            if best.is_none_or(|(b, _)| key < b) {
                best = Some((key, i as u32));
            }
        }
        match best {
            Some((_, row)) => Placement::on_with_scores(row, scores),
            None => Placement::reject(RejectReason::NoCapacity, "no host has room for the VM"),
        }
    }
}

locus_sdk::export!(placement: Green);

#[cfg(test)]
mod tests {
    use super::*;
    use locus_sdk::Resources;
    use locus_sdk::testing::{ClusterBuilder, RequestBuilder, with_config};

    const CAP: Resources = Resources::new(16, 32_768, 500);
    const SOME: Resources = Resources::new(4, 8192, 10);

    #[test]
    fn renewable_surplus_beats_a_clean_grid() {
        let c = ClusterBuilder::new()
            .pop("FR", 48.0, 2.0)
            .energy(0, 50) // nuclear: clean grid, no surplus
            .pop("ES", 40.0, -3.0)
            .energy(5_000, 300) // solar noon
            .host_used(0, CAP, SOME)
            .host_used(1, CAP, SOME)
            .build();
        let r = RequestBuilder::new(&c, Resources::new(2, 2048, 10)).build();
        assert_eq!(Green::place(&c, &r).host(), Some(1));
    }

    #[test]
    fn without_surplus_the_cleanest_grid_wins() {
        let c = ClusterBuilder::new()
            .pop("DE", 52.0, 13.0)
            .energy(0, 400)
            .pop("FR", 48.0, 2.0)
            .energy(0, 50)
            .host_used(0, CAP, SOME)
            .host_used(1, CAP, SOME)
            .build();
        let r = RequestBuilder::new(&c, Resources::new(2, 2048, 10)).build();
        assert_eq!(Green::place(&c, &r).host(), Some(1));
    }

    #[test]
    fn a_busy_host_is_preferred_to_waking_an_idle_one() {
        let c = ClusterBuilder::new().pop("FR", 48.0, 2.0).host(0, CAP).host_used(0, CAP, SOME).build();
        let r = RequestBuilder::new(&c, Resources::new(2, 2048, 10)).build();
        assert_eq!(Green::place(&c, &r).host(), Some(1));
    }

    #[test]
    fn the_margin_is_configurable() {
        // Extra draw on a busy host: 150 W * 2/16 = 18 W; 19 W covers it only with a small margin.
        let c = ClusterBuilder::new()
            .pop("DE", 52.0, 13.0)
            .energy(19, 400)
            .pop("FR", 48.0, 2.0)
            .energy(0, 50)
            .host_used(0, CAP, SOME)
            .host_used(1, CAP, SOME)
            .build();
        let r = RequestBuilder::new(&c, Resources::new(2, 2048, 10)).build();
        assert_eq!(Green::place(&c, &r).host(), Some(1));
        assert_eq!(
            with_config(&[("renewable-margin-percent", "0")], || Green::place(&c, &r).host()),
            Some(0)
        );
    }
}
