//! Hostile policy: allocates without bound. The runtime must stop it at its memory cap.
use locus_sdk::{Cluster, Placement, PlacementPolicy, Request};

pub struct Hog;

impl PlacementPolicy for Hog {
    fn place(_: &Cluster, _: &Request) -> Placement {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(Vec::<u8>::with_capacity(1 << 20));
            std::hint::black_box(&hoard);
        }
    }
}

locus_sdk::export!(placement: Hog);
