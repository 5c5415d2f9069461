//! Hostile policy: chooses a host row that does not exist.
use locus_sdk::{Cluster, Placement, PlacementPolicy, Request};

pub struct BadIndex;

impl PlacementPolicy for BadIndex {
    fn place(cluster: &Cluster, _: &Request) -> Placement {
        Placement::on(cluster.hosts.len() as u32 + 7)
    }
}

locus_sdk::export!(placement: BadIndex);
