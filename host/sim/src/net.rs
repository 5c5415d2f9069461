//! The network between simulated agents: a one-way delay per pair of PoPs
//! (the great-circle distance at the speed of light in fibre, plus a base
//! for the hops), jitter (which also reorders), loss, duplication, and
//! partitions between groups of nodes, one way or both.
//!
//! It decides only when, and how many times, a message arrives; what the
//! message is stays with the world.

use crate::seed::Rng;
use locus_core::request::Location;
use rand::RngExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The delays after which one message arrives: none, one, or two when it
/// is duplicated. Inline: a gossip message makes one per subscriber.
pub type Deliveries = smallvec::SmallVec<[u64; 2]>;

/// How the network behaves (`[network]` in a scenario).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct NetConfig {
    /// One-way delay between two nodes of one PoP, µs; added to every path.
    pub base_us: u64,
    /// Routes are longer than great circles by this factor.
    pub route_factor: f64,
    /// Each delivery's delay varies uniformly by up to this share of it.
    pub jitter: f64,
    /// Probability that a gossip message is lost (requests and responses
    /// travel on streams: only partitions cut them).
    pub loss: f64,
    /// Probability that a delivered gossip message arrives twice.
    pub duplicate: f64,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig { base_us: 200, route_factor: 1.5, jitter: 0.1, loss: 0.0, duplicate: 0.0 }
    }
}

impl NetConfig {
    /// Refuses probabilities and factors outside their ranges.
    pub fn check(&self) -> Result<(), String> {
        let p = |v: f64| (0.0..=1.0).contains(&v);
        if !(p(self.jitter) && p(self.loss) && p(self.duplicate)) {
            return Err("network: jitter, loss and duplicate must be within 0..=1".into());
        }
        if !(self.route_factor.is_finite() && self.route_factor >= 1.0) {
            return Err("network: route-factor must be at least 1".into());
        }
        Ok(())
    }
}

/// Light in fibre: about 5 µs per km.
const US_PER_KM: f64 = 5.0;
const EARTH_RADIUS_KM: f64 = 6371.0;

/// The simulated network.
#[derive(Debug)]
pub struct Network {
    config: NetConfig,
    /// One-way delay between PoPs, µs, without jitter.
    delay_us: Vec<Vec<u64>>,
    /// Each node's group, for partitions (0 unless partitioned).
    group: Vec<u32>,
    /// Directed pairs of groups that cannot reach each other.
    cut: BTreeSet<(u32, u32)>,
    rng: Rng,
    /// Messages lost so far (by loss or by a partition).
    pub lost: u64,
}

impl Network {
    /// A network between PoPs at `pops`, with `nodes` nodes.
    pub fn new(config: NetConfig, pops: &[Location], nodes: usize, rng: Rng) -> Self {
        let delay_us = pops
            .iter()
            .map(|a| {
                pops.iter()
                    .map(|b| config.base_us + (km(*a, *b) * config.route_factor * US_PER_KM) as u64)
                    .collect()
            })
            .collect();
        Network { config, delay_us, group: vec![0; nodes], cut: BTreeSet::new(), rng, lost: 0 }
    }

    /// One-way delay between PoPs `a` and `b` without jitter, µs.
    pub fn base_delay_us(&self, a: usize, b: usize) -> u64 {
        self.delay_us[a][b]
    }

    /// The delays after which a gossip message from node `from` (in PoP
    /// `from_pop`) to node `to` (in `to_pop`) arrives: none when it is
    /// lost, two when it is duplicated.
    pub fn deliveries(&mut self, from: usize, from_pop: usize, to: usize, to_pop: usize) -> Deliveries {
        self.send(from, from_pop, to, to_pop, false)
    }

    /// The delay after which a request or response arrives, if it does. It
    /// travels on a stream (libp2p's request-response over TCP or QUIC):
    /// never lost alone nor duplicated, only cut off by a partition (its
    /// asker's timeout then tells it).
    pub fn stream(&mut self, from: usize, from_pop: usize, to: usize, to_pop: usize) -> Option<u64> {
        self.send(from, from_pop, to, to_pop, true).first().copied()
    }

    fn send(&mut self, from: usize, from_pop: usize, to: usize, to_pop: usize, reliable: bool) -> Deliveries {
        let dropped = !reliable && self.rng.random_bool(self.config.loss);
        if self.cut.contains(&(self.group[from], self.group[to])) || dropped {
            self.lost += 1;
            return Deliveries::new();
        }
        let copies = if !reliable && self.rng.random_bool(self.config.duplicate) { 2 } else { 1 };
        let base = self.delay_us[from_pop][to_pop] as f64;
        (0..copies)
            .map(|_| {
                let spread = self.rng.random_range(-self.config.jitter..=self.config.jitter);
                (base * (1.0 + spread)).max(1.0) as u64
            })
            .collect()
    }

    /// Whether nodes `a` and `b` reach each other both ways (a connection
    /// between them can be made).
    pub fn connected(&self, a: usize, b: usize) -> bool {
        let (ga, gb) = (self.group[a], self.group[b]);
        !self.cut.contains(&(ga, gb)) && !self.cut.contains(&(gb, ga))
    }

    /// Puts `nodes` in a group of their own, cut off from every other
    /// group: both ways, or (`one_way`) only from them to the others.
    pub fn partition(&mut self, nodes: &[usize], one_way: bool) {
        let id = self.group.iter().max().copied().unwrap_or(0) + 1;
        for &n in nodes {
            self.group[n] = id;
        }
        let groups: BTreeSet<u32> = self.group.iter().copied().collect();
        for g in groups.into_iter().filter(|&g| g != id) {
            self.cut.insert((id, g));
            if !one_way {
                self.cut.insert((g, id));
            }
        }
    }

    /// Every node reaches every other again.
    pub fn heal(&mut self) {
        self.group.iter_mut().for_each(|g| *g = 0);
        self.cut.clear();
    }
}

/// Great-circle distance, km.
fn km(a: Location, b: Location) -> f64 {
    let (la, lb) = (f64::from(a.lat).to_radians(), f64::from(b.lat).to_radians());
    let dlat = lb - la;
    let dlon = (f64::from(b.lon) - f64::from(a.lon)).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + la.cos() * lb.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().asin()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed::Seed;

    fn paris_berlin(config: NetConfig) -> Network {
        let pops = [Location { lat: 48.86, lon: 2.35 }, Location { lat: 52.52, lon: 13.40 }];
        Network::new(config, &pops, 4, Seed(1).stream("net"))
    }

    #[test]
    fn delay_follows_distance_and_jitter_stays_within_its_share() {
        let mut net = paris_berlin(NetConfig::default());
        // About 880 km: 200 + 880 × 1.5 × 5 ≈ 6,800 µs.
        let base = net.base_delay_us(0, 1);
        assert!((6_500..7_100).contains(&base), "{base}");
        assert_eq!(net.base_delay_us(0, 0), 200);
        for _ in 0..1000 {
            let d = net.deliveries(0, 0, 2, 1);
            assert_eq!(d.len(), 1);
            assert!(d[0] as f64 >= base as f64 * 0.9 - 1.0 && d[0] as f64 <= base as f64 * 1.1 + 1.0);
        }
    }

    #[test]
    fn loss_duplication_and_partitions() {
        let mut net = paris_berlin(NetConfig { loss: 0.5, duplicate: 0.5, ..NetConfig::default() });
        let counts: Vec<usize> = (0..2000).map(|_| net.deliveries(0, 0, 1, 0).len()).collect();
        let lost = counts.iter().filter(|&&c| c == 0).count();
        let twice = counts.iter().filter(|&&c| c == 2).count();
        assert!((850..1150).contains(&lost) && (350..650).contains(&twice), "{lost} lost, {twice} twice");

        let mut net = paris_berlin(NetConfig::default());
        net.partition(&[0], true);
        assert!(net.deliveries(0, 0, 1, 0).is_empty(), "cut off one way: it cannot send");
        assert_eq!(net.deliveries(1, 0, 0, 0).len(), 1, "but it still hears");
        net.partition(&[2, 3], false);
        assert!(net.deliveries(2, 1, 1, 0).is_empty() && net.deliveries(1, 0, 3, 1).is_empty());
        assert_eq!(net.deliveries(2, 1, 3, 1).len(), 1, "inside a group, messages pass");
        net.heal();
        assert_eq!(net.deliveries(0, 0, 3, 1).len(), 1);
    }
}
