//! Hostile policy: reads the wall clock, which would make its decisions
//! unreplayable. It imports wasi:clocks, which the host does not provide.
use locus_sdk::{Cluster, Placement, PlacementPolicy, Request};

pub struct Clock;

impl PlacementPolicy for Clock {
    fn place(cluster: &Cluster, _: &Request) -> Placement {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Placement::on((now % cluster.hosts.len().max(1) as u64) as u32)
    }
}

locus_sdk::export!(placement: Clock);
