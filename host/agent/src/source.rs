//! Where a policy comes from on the command line: a `.wasm` file, or the
//! name of a built-in policy; and its `--config key=value` settings.

use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::path::Path;

/// A component's bytes and the name to load it under.
#[derive(Debug)]
pub struct Source {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// Reads `spec`: an existing file, else a built-in policy name.
pub fn resolve(spec: &str, max_size: usize) -> Result<Source> {
    let path = Path::new(spec);
    if path.exists() {
        let bytes = crate::files::read_capped(path, max_size)?;
        let name = path.file_stem().map_or_else(|| spec.to_owned(), |s| s.to_string_lossy().into_owned());
        return Ok(Source { name, bytes });
    }
    match locus_builtin::builtin(spec) {
        Some(bytes) => Ok(Source { name: spec.to_owned(), bytes: bytes.to_vec() }),
        None => bail!(
            "{spec}: no such file, and not a built-in policy (built-ins: {})",
            locus_builtin::names().collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Parses `key=value` pairs.
pub fn config(pairs: &[String]) -> Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|p| {
            let (k, v) = p.split_once('=').with_context(|| format!("--config {p:?}: expected key=value"))?;
            if k.is_empty() {
                bail!("--config {p:?}: the key is empty");
            }
            Ok((k.to_owned(), v.to_owned()))
        })
        .collect()
}
