//! An image as fixed-size chunks, each with its SHA-256: what lets a host
//! fetch an image from several holders at once and check every chunk as it
//! arrives, so a corrupt chunk costs one chunk, never the image.
//!
//! The manifest lists the chunks' hashes and the whole file's, and its own
//! hash (of its MessagePack bytes, which are what is stored and to be sent)
//! is the image's id between hosts. Chunking is fixed-size, so every honest
//! holder of the same bytes has the same manifest and the same id.
//!
//! Chunks are 1 MiB: small enough that a 1 GiB image has 1,024 of them to
//! spread over many holders and that a host serves a chunk it got within a
//! second even at a 10 Mbit/s share, large enough that per-request overhead
//! (a stream and a frame per chunk) stays under a percent and the manifest
//! of a 64 GiB image (the store's cap) is 2 MiB. IPFS uses 256 KiB blocks,
//! Kraken 4 MiB pieces; a 1 MiB chunk also fits the overlay's frames with
//! room to spare.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::ops::Range;

/// Bytes per chunk (the last one may be shorter).
pub const CHUNK_BYTES: u64 = 1 << 20;
/// Bytes of one chunk hash.
const HASH: usize = 32;

/// An image's chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// SHA-256 of the whole image, hex (the store's and VMs' `sha256:` id).
    pub file: String,
    /// Bytes of the image.
    pub size: u64,
    /// Bytes per chunk.
    pub chunk_bytes: u64,
    /// The chunks' SHA-256s, 32 bytes each, in order.
    #[serde(with = "serde_bytes")]
    pub chunks: Vec<u8>,
}

/// Why a manifest or a chunk was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The bytes do not hash to the id asked for.
    #[error("the manifest does not hash to {0}")]
    WrongId(String),
    /// Not a manifest, or one that contradicts itself.
    #[error("not a valid image manifest: {0}")]
    Invalid(String),
    /// No such chunk.
    #[error("chunk {0} is past the image's end")]
    NoChunk(u64),
    /// The chunk's bytes are not the ones listed.
    #[error("chunk {0} does not match its hash")]
    Corrupt(u64),
}

impl Manifest {
    /// Chunks an image of `size` bytes has.
    pub fn chunk_count(&self) -> u64 {
        self.size.div_ceil(self.chunk_bytes)
    }

    /// The bytes stored and sent.
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).unwrap_or_default()
    }

    /// The image's id on the overlay: SHA-256 of [`Manifest::encode`], hex.
    pub fn id(&self) -> String {
        hex::encode(Sha256::digest(self.encode()))
    }

    /// Reads a manifest received as the one with id `id`.
    pub fn decode(bytes: &[u8], id: &str) -> Result<Manifest, ManifestError> {
        if hex::encode(Sha256::digest(bytes)) != id {
            return Err(ManifestError::WrongId(id.to_owned()));
        }
        let m: Manifest = rmp_serde::from_slice(bytes).map_err(|e| ManifestError::Invalid(e.to_string()))?;
        if m.chunk_bytes != CHUNK_BYTES {
            return Err(ManifestError::Invalid(format!(
                "chunks of {} bytes, not {CHUNK_BYTES}",
                m.chunk_bytes
            )));
        }
        if m.size == 0 || m.chunks.len() as u64 != m.chunk_count() * HASH as u64 {
            return Err(ManifestError::Invalid("the chunk list does not match the size".into()));
        }
        if !locus_core::request::valid_image_hash(&m.file) {
            return Err(ManifestError::Invalid("the file hash is not a SHA-256".into()));
        }
        Ok(m)
    }

    /// Where chunk `i` lies in the image.
    pub fn range(&self, i: u64) -> Result<Range<u64>, ManifestError> {
        if i >= self.chunk_count() {
            return Err(ManifestError::NoChunk(i));
        }
        let start = i * self.chunk_bytes;
        Ok(start..(start + self.chunk_bytes).min(self.size))
    }

    /// Checks chunk `i` as it arrives.
    pub fn check(&self, i: u64, bytes: &[u8]) -> Result<(), ManifestError> {
        let range = self.range(i)?;
        let at = i as usize * HASH;
        if bytes.len() as u64 != range.end - range.start
            || Sha256::digest(bytes)[..] != self.chunks[at..at + HASH]
        {
            return Err(ManifestError::Corrupt(i));
        }
        Ok(())
    }
}

/// Builds a manifest from an image's bytes as they stream by, hashing the
/// whole and each chunk in one pass.
#[derive(Debug, Default)]
pub struct Chunker {
    file: Sha256,
    chunk: Sha256,
    /// Bytes in the chunk being hashed.
    filled: u64,
    size: u64,
    chunks: Vec<u8>,
}

impl Chunker {
    /// Takes the next bytes of the image.
    pub fn update(&mut self, mut bytes: &[u8]) {
        self.file.update(bytes);
        self.size += bytes.len() as u64;
        while !bytes.is_empty() {
            let take = ((CHUNK_BYTES - self.filled) as usize).min(bytes.len());
            self.chunk.update(&bytes[..take]);
            self.filled += take as u64;
            bytes = &bytes[take..];
            if self.filled == CHUNK_BYTES {
                self.seal();
            }
        }
    }

    fn seal(&mut self) {
        let done = std::mem::take(&mut self.chunk);
        self.chunks.extend_from_slice(&done.finalize());
        self.filled = 0;
    }

    /// Bytes taken so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The manifest of the bytes taken.
    pub fn finish(mut self) -> Manifest {
        if self.filled > 0 {
            self.seal();
        }
        Manifest {
            file: hex::encode(self.file.finalize()),
            size: self.size,
            chunk_bytes: CHUNK_BYTES,
            chunks: self.chunks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn image(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4093) as u8).collect()
    }

    fn manifest_of(bytes: &[u8], pieces: usize) -> Manifest {
        let mut c = Chunker::default();
        for part in bytes.chunks(pieces.max(1)) {
            c.update(part);
        }
        c.finish()
    }

    #[test]
    fn chunks_check_and_a_corrupt_or_short_one_is_named() {
        let bytes = image(2 * CHUNK_BYTES as usize + 12345);
        let m = manifest_of(&bytes, 65536);
        assert_eq!(m.chunk_count(), 3);
        assert_eq!(m.file, hex::encode(Sha256::digest(&bytes)));
        for i in 0..3 {
            let r = m.range(i).expect("range");
            m.check(i, &bytes[r.start as usize..r.end as usize]).expect("a chunk as stored");
        }
        assert_eq!(m.range(2).expect("last").end, bytes.len() as u64);
        let mut bad = bytes[..CHUNK_BYTES as usize].to_vec();
        bad[100] ^= 1;
        assert_eq!(m.check(0, &bad), Err(ManifestError::Corrupt(0)));
        assert_eq!(m.check(0, &bytes[..100]), Err(ManifestError::Corrupt(0)));
        assert_eq!(m.check(3, &[]), Err(ManifestError::NoChunk(3)));
    }

    #[test]
    fn a_manifest_is_read_back_only_under_its_own_id() {
        let m = manifest_of(&image(CHUNK_BYTES as usize * 2), 1 << 20);
        let bytes = m.encode();
        assert_eq!(Manifest::decode(&bytes, &m.id()), Ok(m.clone()));
        assert!(matches!(Manifest::decode(&bytes, &"0".repeat(64)), Err(ManifestError::WrongId(_))));
        let mut short = m.clone();
        short.chunks.truncate(HASH);
        assert!(matches!(Manifest::decode(&short.encode(), &short.id()), Err(ManifestError::Invalid(_))));
        let mut odd = m;
        odd.chunk_bytes = 4096;
        assert!(matches!(Manifest::decode(&odd.encode(), &odd.id()), Err(ManifestError::Invalid(_))));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// However the bytes arrive, the manifest is the same: holders of
        /// the same image agree on its id.
        #[test]
        fn the_manifest_does_not_depend_on_how_the_bytes_arrive(
            len in 1usize..(3 << 20),
            piece in 1usize..(1 << 20),
        ) {
            let bytes = image(len);
            let one = manifest_of(&bytes, bytes.len());
            let many = manifest_of(&bytes, piece);
            prop_assert_eq!(one.id(), many.id());
            prop_assert_eq!(one.chunk_count(), (len as u64).div_ceil(CHUNK_BYTES));
        }
    }
}
