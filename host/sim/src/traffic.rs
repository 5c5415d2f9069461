//! What the overlay costs on the wire: every message the nodes send is
//! encoded as the agent encodes it (a MessagePack envelope), and counted
//! with the framing around it, per kind and per receiving node.
//!
//! Gossip is shaped as libp2p's gossipsub carries it: a message reaches
//! each subscriber once (duplicates are dropped by message id before the
//! node sees them) but crosses the wire as many times as the mesh forwards
//! it, each subscriber receiving a copy from each of its mesh peers:
//! `min(MESH_N, subscribers - 1)` copies. Control traffic (IHAVE, IWANT,
//! GRAFT) is not counted; at the default one-second heartbeat it is a few
//! message ids per peer.

use serde::Serialize;
use std::collections::BTreeMap;

/// gossipsub's target mesh degree (`mesh_n`, libp2p's default).
pub const MESH_N: u64 = 6;
/// A signed gossipsub message's framing: the sender's peer id, sequence
/// number, 64-byte signature and the protobuf tags and lengths around them
/// (the key is implied by an ed25519 peer id); the topic comes on top.
const GOSSIP_FRAMING: u64 = 124;
/// A request or response on its stream: the 4-byte length prefix, and the
/// multiplexer's frame header.
const STREAM_FRAMING: u64 = 4 + 12;

/// The agent's envelope (`overlay::codec`), to count the same bytes.
#[derive(Serialize)]
struct Envelope<'a, T> {
    v: u8,
    body: &'a T,
}

/// Bytes of `body` as the agent puts it on the wire, without framing.
pub fn encoded<T: Serialize>(body: &T) -> u64 {
    rmp_serde::to_vec_named(&Envelope { v: 1, body }).map_or(0, |b| b.len() as u64)
}

/// Bytes of one gossip copy of `body` on `topic` (its wire name's length).
pub fn gossip_copy<T: Serialize>(topic_len: usize, body: &T) -> u64 {
    encoded(body) + GOSSIP_FRAMING + topic_len as u64
}

/// Bytes of one request or response.
pub fn stream_message<T: Serialize>(body: &T) -> u64 {
    encoded(body) + STREAM_FRAMING
}

/// Copies of a gossip message each subscriber receives, for a topic with
/// `subscribers` nodes.
pub fn copies(subscribers: usize) -> u64 {
    MESH_N.min(subscribers.saturating_sub(1) as u64)
}

/// Totals of one kind of message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Totals {
    /// Messages received (gossip: every copy).
    pub messages: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// The overlay's traffic over a run.
#[derive(Debug, Clone, Default)]
pub struct Traffic {
    /// By kind of message.
    pub by_kind: BTreeMap<&'static str, Totals>,
    /// Bytes received, by node.
    pub by_node: Vec<u64>,
}

impl Traffic {
    /// Traffic between `nodes` nodes.
    pub fn new(nodes: usize) -> Self {
        Traffic { by_kind: BTreeMap::new(), by_node: vec![0; nodes] }
    }

    /// Node `to` received `copies` copies of a `bytes`-byte message of `kind`.
    pub fn received(&mut self, kind: &'static str, to: usize, bytes: u64, copies: u64) {
        self.reached(to, bytes * copies);
        self.count(kind, copies, bytes * copies);
    }

    /// Node `to` received `bytes`, to be counted by kind with [`Traffic::count`]
    /// (once for a gossip message's every subscriber).
    pub fn reached(&mut self, to: usize, bytes: u64) {
        self.by_node[to] += bytes;
    }

    /// `messages` messages of `kind` were received, `bytes` in all.
    pub fn count(&mut self, kind: &'static str, messages: u64, bytes: u64) {
        let t = self.by_kind.entry(kind).or_default();
        t.messages += messages;
        t.bytes += bytes;
    }

    /// Bytes received so far, by every node.
    pub fn bytes(&self) -> u64 {
        self.by_kind.values().map(|t| t.bytes).sum()
    }
}

/// The traffic of a run, per node and second.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TrafficReport {
    /// Messages received per node per second, mean over nodes.
    pub messages_per_node_s: f64,
    /// Bytes received per node per second, mean over nodes.
    pub bytes_per_node_s: f64,
    /// Bytes received per second by the busiest node (a PoP's speaker
    /// hears the global topic's summaries like every node, and answers more).
    pub max_bytes_per_node_s: f64,
    /// Totals by kind of message over the run.
    pub by_kind: BTreeMap<&'static str, Totals>,
}

impl TrafficReport {
    /// `t` over `seconds` of virtual time.
    pub fn of(t: &Traffic, seconds: f64) -> Self {
        let n = t.by_node.len().max(1) as f64;
        let s = seconds.max(1e-9);
        let messages: u64 = t.by_kind.values().map(|k| k.messages).sum();
        let bytes: u64 = t.by_node.iter().sum();
        TrafficReport {
            messages_per_node_s: round(messages as f64 / n / s),
            bytes_per_node_s: round(bytes as f64 / n / s),
            max_bytes_per_node_s: round(t.by_node.iter().copied().max().unwrap_or(0) as f64 / s),
            by_kind: t.by_kind.clone(),
        }
    }
}

/// Two decimals, so that reports stay readable and byte-identical.
fn round(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gossip_copy_costs_its_encoding_and_framing_and_the_mesh_bounds_the_copies() {
        let body = ("paris-1", 42u32);
        assert_eq!(gossip_copy(12, &body), encoded(&body) + 124 + 12);
        assert!(encoded(&body) > 7, "the name and the envelope are counted");
        assert_eq!((copies(1), copies(3), copies(7), copies(10_000)), (0, 2, 6, 6));

        let mut t = Traffic::new(2);
        t.received("host-summary", 1, 100, 6);
        t.received("request", 0, 50, 1);
        let r = TrafficReport::of(&t, 10.0);
        assert_eq!(r.by_kind["host-summary"], Totals { messages: 6, bytes: 600 });
        assert_eq!((r.messages_per_node_s, r.bytes_per_node_s, r.max_bytes_per_node_s), (0.35, 32.5, 60.0));
    }
}
