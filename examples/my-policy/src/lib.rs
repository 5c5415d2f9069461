//! `least-power`: place each VM where it adds the least power draw.
//!
//! The extra draw of a VM on a host is its share of the host's dynamic power
//! range (max minus idle watts, in proportion to its vCPUs), plus the host's
//! idle power if the host runs nothing yet. With `latency-weight` set, every
//! millisecond of user latency costs that many watts, trading energy for
//! responsiveness.

use locus_sdk::{Cluster, Level, Placement, PlacementPolicy, RejectReason, Request, Score, config_or, log};

/// The least-power placement policy.
pub struct LeastPower;

impl PlacementPolicy for LeastPower {
    fn place(cluster: &Cluster, request: &Request) -> Placement {
        let watts_per_ms: f32 = config_or("latency-weight", 0.0);
        let mut scores = Vec::new();
        for host in cluster.hosts.iter() {
            if !request.size.fits_in(host.free()) {
                continue;
            }
            let dynamic = host.max_watts.saturating_sub(host.idle_watts) as f32;
            let share = dynamic * request.size.vcpus as f32 / host.capacity.vcpus.max(1) as f32;
            let wake = if host.vm_count == 0 { host.idle_watts as f32 } else { 0.0 };
            let latency_ms = request.user_latency(host.pop).unwrap_or(0) as f32 / 1000.0;
            scores.push(Score { host: host.row, value: -(share + wake + watts_per_ms * latency_ms) });
        }
        let best = scores.iter().max_by(|a, b| a.value.total_cmp(&b.value).then(b.host.cmp(&a.host)));
        match best {
            Some(best) => {
                log(Level::Debug, &format!("host row {} adds {:.0} W", best.host, -best.value));
                Placement::on_with_scores(best.host, scores.clone())
            }
            None => Placement::reject(RejectReason::NoCapacity, "no host has room"),
        }
    }
}

locus_sdk::export!(placement: LeastPower);

#[cfg(test)]
mod tests {
    use super::*;
    use locus_sdk::Resources;
    use locus_sdk::testing::{ClusterBuilder, RequestBuilder, with_config};

    const HOST: Resources = Resources::new(16, 32_768, 500);

    #[test]
    fn a_running_host_beats_waking_an_idle_one() {
        let c = ClusterBuilder::new()
            .pop("FR", 48.86, 2.35)
            .host(0, HOST)
            .host_used(0, HOST, Resources::new(2, 2048, 10))
            .build();
        let r = RequestBuilder::new(&c, Resources::new(2, 2048, 10)).build();
        assert_eq!(LeastPower::place(&c, &r).host(), Some(1));
    }

    #[test]
    fn latency_weight_trades_power_for_latency() {
        let c = ClusterBuilder::new()
            .pop("FR", 48.86, 2.35)
            .pop("JP", 35.68, 139.69)
            .host(0, HOST)
            .host_used(1, HOST, Resources::new(2, 2048, 10))
            .build();
        let r = RequestBuilder::new(&c, Resources::new(2, 2048, 10)).user_at(48.0, 2.0).build();
        assert_eq!(LeastPower::place(&c, &r).host(), Some(1), "Tokyo is already on");
        let near = with_config(&[("latency-weight", "5")], || LeastPower::place(&c, &r).host());
        assert_eq!(near, Some(0), "at 5 W/ms, 200 ms to Tokyo costs more than waking a Paris host");
    }
}
