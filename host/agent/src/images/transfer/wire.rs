//! What agents ask each other about images on `/locus/chunks/1`, in
//! MessagePack. Hashes are hex, checked before use; every answer a peer
//! gives is checked again by the asker (manifests by hash, chunks against
//! the manifest, the whole image against its SHA-256).

use serde::{Deserialize, Serialize};

/// A question.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ask {
    /// Which image does this agent's name `name` point at?
    Find(String),
    /// Which chunks of image `file` (SHA-256 hex) do you hold?
    Have(String),
    /// Your manifest of image `file`.
    Manifest(String),
    /// Chunk `index` of image `file`.
    Chunk(String, u64),
    /// Every image you hold, whole or in part.
    Inventory,
    /// Fetch this image (a name or `sha256:<hex>`) from its holders
    /// (`image prefetch`).
    Fetch(String),
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// The image a name points at: its SHA-256, hex.
    Found(String),
    /// The chunks held of an image.
    Have {
        /// The id (SHA-256 of the manifest) the holder's chunks belong to.
        manifest: String,
        /// One bit per chunk, chunk 0 in the lowest bit of the first byte;
        /// None when every chunk is held.
        #[serde(with = "serde_bytes")]
        bitmap: Option<Vec<u8>>,
    },
    /// A manifest's bytes.
    Manifest(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A chunk's bytes.
    Chunk(#[serde(with = "serde_bytes")] Vec<u8>),
    /// What an agent holds.
    Inventory(Inventory),
    /// The outcome of a `Fetch`: held already, started, or why not.
    Fetching(String),
    /// Not held here.
    Missing,
    /// Held, but this agent's uploads are queued to their limit: ask
    /// another holder, or again later.
    Busy,
    /// The question was not understood.
    Refused(String),
}

impl Reply {
    /// The answer's kind, for messages (never its bytes).
    pub fn kind(&self) -> &'static str {
        match self {
            Reply::Found(_) => "found",
            Reply::Have { .. } => "a chunk map",
            Reply::Manifest(_) => "a manifest",
            Reply::Chunk(_) => "a chunk",
            Reply::Inventory(_) => "an inventory",
            Reply::Fetching(_) => "a fetch outcome",
            Reply::Missing => "missing",
            Reply::Busy => "busy",
            Reply::Refused(_) => "refused",
        }
    }
}

/// The images one agent holds, whole or in part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub struct Inventory {
    /// The agent's host.
    pub host: String,
    /// Its PoP.
    pub pop: String,
    /// Its images.
    pub images: Vec<Held>,
}

/// One image an agent holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub struct Held {
    /// `sha256:<hex>`.
    pub hash: String,
    /// Its names on that agent (the name it is being fetched under).
    pub names: Vec<String>,
    /// Bytes.
    pub size_bytes: u64,
    /// Chunks held.
    pub have_chunks: u64,
    /// Chunks in all.
    pub chunks: u64,
}

/// Packs one bit per chunk.
pub fn pack(bits: &[bool]) -> Vec<u8> {
    let mut out = vec![0u8; bits.len().div_ceil(8)];
    for (i, _) in bits.iter().enumerate().filter(|(_, b)| **b) {
        out[i / 8] |= 1 << (i % 8);
    }
    out
}

/// Unpacks `count` bits; missing bytes read as chunks not held.
pub fn unpack(bytes: &[u8], count: usize) -> Vec<bool> {
    (0..count).map(|i| bytes.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmaps_round_trip_and_short_ones_read_as_missing() {
        let bits: Vec<bool> = (0..21).map(|i| i % 3 == 0).collect();
        assert_eq!(unpack(&pack(&bits), 21), bits);
        assert_eq!(unpack(&[0xff], 10), [true, true, true, true, true, true, true, true, false, false]);
    }

    #[test]
    fn questions_and_answers_round_trip() {
        let ask = Ask::Chunk("ab".repeat(32), 7);
        let bytes = rmp_serde::to_vec(&ask).unwrap();
        assert_eq!(rmp_serde::from_slice::<Ask>(&bytes).unwrap(), ask);
        let reply = Reply::Have { manifest: "cd".repeat(32), bitmap: Some(vec![1, 2]) };
        let bytes = rmp_serde::to_vec(&reply).unwrap();
        assert_eq!(rmp_serde::from_slice::<Reply>(&bytes).unwrap(), reply);
    }
}
