//! An image being fetched: a file of the image's size that fills chunk by
//! chunk, beside its manifest. The file is the truth about what is held:
//! at an agent's restart every chunk in it is checked against the manifest
//! again, and the ones that match are kept, so an interrupted fetch goes
//! on where it stopped without a record that could disagree with the bytes.

use crate::images::manifest::Manifest;
use std::fs;
use std::io;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A fetch's file and what it holds.
#[derive(Debug)]
pub struct Partial {
    /// The manifest being filled.
    pub manifest: Manifest,
    /// Its id.
    pub id: String,
    path: PathBuf,
    file: fs::File,
    have: Mutex<Vec<bool>>,
}

/// The file of image `hex` being fetched into `dir`.
pub fn part_path(dir: &Path, hex: &str) -> PathBuf {
    dir.join(format!("{hex}.part"))
}

/// Its manifest.
pub fn manifest_path(dir: &Path, hex: &str) -> PathBuf {
    dir.join(format!("{hex}.manifest"))
}

/// The name it is to get once fetched.
pub fn name_path(dir: &Path, hex: &str) -> PathBuf {
    dir.join(format!("{hex}.name"))
}

impl Partial {
    /// Opens the fetch of `manifest` in `dir`, creating its file or
    /// checking the chunks one left there. Blocking: reads the file.
    pub fn open(dir: &Path, manifest: Manifest, name: Option<&str>) -> io::Result<Partial> {
        let hex = manifest.file.clone();
        let path = part_path(dir, &hex);
        let write = |p: &Path, bytes: &[u8]| {
            let mut f =
                tempfile::Builder::new().permissions(fs::Permissions::from_mode(0o600)).tempfile_in(dir)?;
            io::Write::write_all(&mut f, bytes)?;
            f.persist(p).map(drop).map_err(|e| e.error)
        };
        write(&manifest_path(dir, &hex), &manifest.encode())?;
        if let Some(name) = name {
            write(&name_path(dir, &hex), name.as_bytes())?;
        }
        let file = fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
        let count = manifest.chunk_count() as usize;
        let mut have = vec![false; count];
        if file.metadata()?.len() == manifest.size {
            for (i, held) in have.iter_mut().enumerate() {
                let bytes = crate::images::read_range(&path, &manifest, i as u64)?;
                *held = manifest.check(i as u64, &bytes).is_ok();
            }
        } else {
            file.set_len(0)?;
            file.set_len(manifest.size)?;
        }
        let id = manifest.id();
        Ok(Partial { manifest, id, path, file, have: Mutex::new(have) })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Vec<bool>> {
        self.have.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Which chunks are held.
    pub fn have(&self) -> Vec<bool> {
        self.held().clone()
    }

    /// Whether chunk `i` is held.
    pub fn holds(&self, i: u64) -> bool {
        self.held().get(i as usize).copied().unwrap_or(false)
    }

    /// Chunks held.
    pub fn count(&self) -> usize {
        self.held().iter().filter(|h| **h).count()
    }

    /// Whether every chunk is held.
    pub fn complete(&self) -> bool {
        self.held().iter().all(|h| *h)
    }

    /// Checks chunk `i` and writes it. Blocking.
    pub fn put(&self, i: u64, bytes: &[u8]) -> Result<(), PutError> {
        self.manifest.check(i, bytes).map_err(|_| PutError::Corrupt)?;
        let range = self.manifest.range(i).map_err(|_| PutError::Corrupt)?;
        self.file.write_all_at(bytes, range.start).map_err(PutError::Io)?;
        if let Some(h) = self.held().get_mut(i as usize) {
            *h = true;
        }
        Ok(())
    }

    /// The bytes of a held chunk. Blocking.
    pub fn get(&self, i: u64) -> io::Result<Vec<u8>> {
        crate::images::read_range(&self.path, &self.manifest, i)
    }

    /// The file, once complete.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flushes the file to disk.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_all()
    }
}

/// Why a chunk was not kept.
#[derive(Debug)]
pub enum PutError {
    /// Its bytes are not the manifest's.
    Corrupt,
    /// It could not be written.
    Io(io::Error),
}

/// Removes what a fetch of `hex` left in `dir`.
pub fn remove(dir: &Path, hex: &str) {
    for p in [part_path(dir, hex), manifest_path(dir, hex), name_path(dir, hex)] {
        let _ = fs::remove_file(p);
    }
}

/// The fetches an earlier run left in `dir`: their manifests and names.
pub fn left_over(dir: &Path) -> Vec<(Manifest, Option<String>)> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".manifest")) else { continue };
        let Ok(bytes) = fs::read(entry.path()) else { continue };
        let id = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        match Manifest::decode(&bytes, &id) {
            Ok(m) if m.file == hex => {
                let wanted = fs::read_to_string(name_path(dir, hex)).ok();
                out.push((m, wanted.map(|w| w.trim().to_owned())));
            }
            _ => remove(dir, hex),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::manifest::{CHUNK_BYTES, Chunker};

    fn image(len: usize) -> (Vec<u8>, Manifest) {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        let mut c = Chunker::default();
        c.update(&bytes);
        (bytes, c.finish())
    }

    fn chunk(bytes: &[u8], i: usize) -> &[u8] {
        let c = CHUNK_BYTES as usize;
        &bytes[i * c..((i + 1) * c).min(bytes.len())]
    }

    #[test]
    fn fills_refuses_corrupt_chunks_and_resumes_from_what_the_file_holds() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, m) = image(3 * CHUNK_BYTES as usize + 100);
        let p = Partial::open(dir.path(), m.clone(), Some("cirros")).unwrap();
        p.put(1, chunk(&bytes, 1)).unwrap();
        let mut bad = chunk(&bytes, 3).to_vec();
        bad[0] ^= 1;
        assert!(matches!(p.put(3, &bad), Err(PutError::Corrupt)));
        p.put(3, chunk(&bytes, 3)).unwrap();
        assert_eq!(p.have(), [false, true, false, true]);
        drop(p);

        let left = left_over(dir.path());
        assert_eq!(left, [(m.clone(), Some("cirros".to_owned()))]);
        let p = Partial::open(dir.path(), m, None).unwrap();
        assert_eq!(p.have(), [false, true, false, true], "the chunks written before are found again");
        p.put(0, chunk(&bytes, 0)).unwrap();
        p.put(2, chunk(&bytes, 2)).unwrap();
        assert!(p.complete());
        assert_eq!(std::fs::read(p.path()).unwrap(), bytes);
    }

    #[test]
    fn damaged_leftovers_are_checked_again_and_a_bad_manifest_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, m) = image(2 * CHUNK_BYTES as usize);
        let p = Partial::open(dir.path(), m.clone(), None).unwrap();
        p.put(0, chunk(&bytes, 0)).unwrap();
        p.put(1, chunk(&bytes, 1)).unwrap();
        drop(p);
        // A byte flipped on the disk while the agent was down.
        let file = fs::OpenOptions::new().write(true).open(part_path(dir.path(), &m.file)).unwrap();
        file.write_all_at(&[!bytes[5]], 5).unwrap();
        let p = Partial::open(dir.path(), m.clone(), None).unwrap();
        assert_eq!(p.have(), [false, true]);

        fs::write(manifest_path(dir.path(), &m.file), b"not a manifest").unwrap();
        assert!(left_over(dir.path()).is_empty());
        assert!(!part_path(dir.path(), &m.file).exists(), "a fetch with no manifest is removed");
    }
}
