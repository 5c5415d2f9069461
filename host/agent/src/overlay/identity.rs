//! The node's persistent identity (an ed25519 key in the state directory,
//! mode 0600, created on first start) and the cluster's pre-shared key.

use anyhow::{Context, Result, bail};
use libp2p::identity::Keypair;
use libp2p::pnet::PreSharedKey;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Loads the key at `path`, or creates one there.
pub fn load_or_create(path: &Path) -> Result<Keypair> {
    match std::fs::read(path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).with_context(|| {
            format!("{} is not a node key (delete it to make a new identity)", path.display())
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key.to_protobuf_encoding().context("encoding the node key")?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("creating {}", path.display()))?;
            f.write_all(&bytes)?;
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Reads a cluster key file (`/key/swarm/psk/1.0.0/`, `/base16/`, 64 hex digits).
pub fn cluster_key(path: &Path) -> Result<PreSharedKey> {
    crate::files::warn_if_shared(path, "cluster key")?;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading cluster key {}", path.display()))?;
    match text.parse::<PreSharedKey>() {
        Ok(k) => Ok(k),
        Err(e) => {
            bail!("{} is not a cluster key ({e}); make one with `locus cluster keygen`", path.display())
        }
    }
}

/// A new random cluster key, in the key file format.
pub fn new_cluster_key() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    Ok(PreSharedKey::new(bytes).to_key_file())
}
