//! Hostile policy: never returns. The runtime must interrupt it at its deadline.
use locus_sdk::{Cluster, Placement, PlacementPolicy, Request};

pub struct Spin;

impl PlacementPolicy for Spin {
    fn place(_: &Cluster, _: &Request) -> Placement {
        loop {
            std::hint::black_box(());
        }
    }
}

locus_sdk::export!(placement: Spin);
