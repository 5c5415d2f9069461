//! Reading the files the CLI is given: bounded in size, parsed as TOML or
//! JSON by extension, every error naming the file.

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;
use std::io::Read;
use std::path::Path;

/// Largest cluster or request description read.
pub const MAX_DESCRIPTION: usize = 64 << 20;

/// Reads at most `max` bytes of `path`, refusing larger files.
pub fn read_capped(path: &Path, max: usize) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(max as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() > max {
        bail!("{} is larger than the {max}-byte limit", path.display());
    }
    Ok(bytes)
}

/// Parses a TOML (or, with a `.json` extension, JSON) description.
pub fn parse<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = read_capped(path, MAX_DESCRIPTION)?;
    let text = String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8 text", path.display()))?;
    if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    } else {
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

/// Warns when a secret (`what`: the cluster key, the API token) can be read
/// by other users than its owner.
pub fn warn_if_shared(path: &Path, what: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).with_context(|| format!("reading {what} {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(path = %path.display(), "the {what} file is readable by others; chmod 600 it");
    }
    Ok(())
}
