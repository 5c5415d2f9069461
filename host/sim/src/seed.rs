//! One seed for a whole run. Every random stream (each link of the network,
//! each hypervisor, the workload) is derived from it by name, so a stream
//! added later never shifts another's numbers, and a run replays exactly
//! from the seed it prints.

use rand::SeedableRng;

/// The generator behind every stream: PCG, whose output for a given seed
/// is fixed across versions and platforms.
pub type Rng = rand_pcg::Pcg64Mcg;

/// A run's seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seed(pub u64);

impl Seed {
    /// The stream named `name`.
    pub fn stream(self, name: &str) -> Rng {
        // FNV-1a of the name, folded into the seed by SplitMix64's finaliser.
        let mut h = 0xcbf2_9ce4_8422_2325_u64;
        for b in name.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        Rng::seed_from_u64(mix(self.0 ^ h))
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng as _;

    #[test]
    fn streams_are_fixed_by_seed_and_name_and_differ_between_names() {
        let draw = |seed: u64, name: &str| -> Vec<u64> {
            let mut r = Seed(seed).stream(name);
            (0..4).map(|_| r.next_u64()).collect()
        };
        assert_eq!(draw(7, "net"), draw(7, "net"));
        assert_ne!(draw(7, "net"), draw(7, "hv"));
        assert_ne!(draw(7, "net"), draw(8, "net"));
    }
}
