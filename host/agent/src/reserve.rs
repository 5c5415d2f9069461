//! Space held back in the state directory: a file of a fixed size the
//! agent gives up when the filesystem fills, so that stops and deletes can
//! still be recorded, and takes back once there is room again.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The reserve.
#[derive(Debug)]
pub struct Reserve {
    path: PathBuf,
    bytes: u64,
    held: bool,
}

impl Reserve {
    /// A reserve of `bytes` at `path`, taken now if there is room.
    pub fn new(path: &Path, bytes: u64) -> Self {
        let mut reserve = Reserve { path: path.to_owned(), bytes, held: false };
        if let Err(e) = reserve.take() {
            tracing::warn!(error = %e, path = %path.display(), "cannot hold the state directory's reserve");
        }
        reserve
    }

    /// Whether the space is held.
    pub fn held(&self) -> bool {
        self.held
    }

    /// Gives the space up.
    pub fn release(&mut self) {
        if let Err(e) = fs::remove_file(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, "cannot release the state directory's reserve");
        }
        self.held = false;
    }

    /// Takes the space: allocates the whole file, or leaves none of it.
    pub fn take(&mut self) -> io::Result<()> {
        if self.held || self.bytes == 0 {
            self.held = true;
            return Ok(());
        }
        let result = allocate(&self.path, self.bytes);
        if result.is_err() {
            let _ = fs::remove_file(&self.path);
        }
        self.held = result.is_ok();
        result
    }
}

fn allocate(path: &Path, bytes: u64) -> io::Result<()> {
    let mut file = fs::OpenOptions::new().create(true).write(true).truncate(false).open(path)?;
    match rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, bytes) {
        Ok(()) => {}
        // A filesystem without fallocate: write the bytes (a sparse file
        // would reserve nothing).
        Err(rustix::io::Errno::OPNOTSUPP) => {
            let chunk = vec![0u8; 1 << 20];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                file.write_all(&chunk[..n])?;
                left -= n as u64;
            }
        }
        Err(e) => return Err(e.into()),
    }
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_held_released_and_taken_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("reserve");
        let mut r = Reserve::new(&path, 1 << 20);
        assert!(r.held());
        assert_eq!(fs::metadata(&path).expect("file").len(), 1 << 20);
        r.release();
        assert!(!r.held() && !path.exists());
        r.take().expect("room again");
        assert!(r.held() && path.exists());
    }
}
