//! Hostile policy: panics. The runtime must contain the trap and report the message.
use locus_sdk::{Cluster, Placement, PlacementPolicy, Request};

pub struct Panics;

impl PlacementPolicy for Panics {
    fn place(cluster: &Cluster, _: &Request) -> Placement {
        panic!("policy bug: cannot handle {} hosts", cluster.hosts.len())
    }
}

locus_sdk::export!(placement: Panics);
