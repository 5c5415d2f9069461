//! The agent's image store: the only place a VM's disk can come from.
//!
//! An image is imported as bytes (never as a path the agent would open for
//! someone), checked ([`inspect`]) and kept read-only under its SHA-256.
//! Each VM gets its own qcow2 overlay on that base, created with the VM and
//! removed with it, so guests never write to a base or to each other.
//!
//! ```text
//! <dir>/blobs/<sha256>        a base image, mode 0444
//! <dir>/blobs/<sha256>.json   its format and sizes
//! <dir>/blobs/<sha256>.manifest   its chunks ([`manifest`])
//! <dir>/names/<name>          the hash a name points at
//! <dir>/disks/<vm>@<sha256>.qcow2   a VM's overlay on that base
//! <dir>/incoming/             uploads in progress
//! <dir>/fetching/<sha256>.part      an image being fetched from peers
//! <dir>/fetching/<sha256>.manifest  its manifest ([`transfer`])
//! ```
//!
//! The filesystem is the truth: an overlay's file name says which base it
//! uses, so "in use" needs no second record that could disagree. One lock
//! orders the catalog changes (import, removal, overlay creation) against
//! each other.

pub mod inspect;
pub mod manifest;
pub mod transfer;
pub mod waiting;

use anyhow::{Context, Result};
use futures::{Stream, StreamExt};
use locus_core::request::{IMAGE_HASH_PREFIX, valid_image_hash, valid_name};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

pub use inspect::Format;

/// Bytes of an oversized upload read (and dropped) before it is refused.
const DRAIN_AFTER_REFUSAL: usize = 8 << 20;

/// The image store's settings (`[images]` in the configuration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct ImageConfig {
    /// Where images and VM disks live; default `<state-dir>/images`.
    pub dir: Option<PathBuf>,
    /// Largest image accepted, in bytes.
    pub max_bytes: u64,
    /// Imports that may run at once; more are refused with 503.
    pub max_imports: usize,
    /// Pace of the chunks this agent sends to peers, Mbit/s (0: none).
    pub upload_limit_mbit: u64,
    /// Chunk uploads queued at most (2 per asking peer); past that, peers
    /// are told to ask another holder. They are sent in the order asked.
    pub max_uploads: usize,
}

impl Default for ImageConfig {
    fn default() -> Self {
        ImageConfig { dir: None, max_bytes: 64 << 30, max_imports: 2, upload_limit_mbit: 0, max_uploads: 32 }
    }
}

/// An image of the store, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub struct ImageInfo {
    /// Its names (an image imported twice under different names has both).
    pub names: Vec<String>,
    /// `sha256:<hex>` of its bytes; a VM may name it so.
    pub hash: String,
    /// On-disk format.
    pub format: Format,
    /// Bytes of the file.
    pub size_bytes: u64,
    /// Size of the disk a guest sees.
    pub virtual_size_bytes: u64,
    /// When it was imported, seconds since the Unix epoch.
    pub imported_unix: u64,
    /// VMs whose disks are overlays on it.
    pub used_by: Vec<String>,
    /// Its id on the overlay: the SHA-256 of its manifest of 1 MiB chunks,
    /// hex (none for an image stored by an agent older than manifests).
    pub manifest: Option<String>,
    /// Its chunks.
    pub chunks: u64,
}

/// What is kept beside a base.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Meta {
    #[serde(flatten)]
    image: inspect::Inspected,
    imported_unix: u64,
}

/// Why an image operation failed. Messages name images, never host paths.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A name that breaks the naming rule.
    #[error("invalid image name {0:?}: use 1 to 64 of A-Z a-z 0-9 . _ -, starting with a letter or digit")]
    Name(String),
    /// No such image in this host's store.
    #[error("no image {0} in this host's store (see `locus image list`)")]
    NotFound(String),
    /// No agent of the cluster holds it.
    #[error("no agent of the cluster holds image {0} (see `locus image list --cluster`)")]
    Nowhere(String),
    /// The name is taken by other content.
    #[error(
        "image {name} already exists with different content ({hash}); remove it first or choose another name"
    )]
    Exists {
        /// The name.
        name: String,
        /// What it points at now.
        hash: String,
    },
    /// VMs have disks on it.
    #[error("image {name} is in use by {}; delete those VMs first", .vms.join(", "))]
    InUse {
        /// The name or hash asked for.
        name: String,
        /// The VMs.
        vms: Vec<String>,
    },
    /// Larger than the configured maximum.
    #[error("the image is larger than this agent accepts ({0} bytes, images.max-bytes)")]
    TooLarge(u64),
    /// Not an image the store takes.
    #[error("not accepted: {0}")]
    Refused(String),
    /// The upload broke off.
    #[error("the upload failed: {0}")]
    Upload(String),
    /// As many imports as allowed are running.
    #[error("{0} image imports are already running; try again when one finishes")]
    Busy(usize),
    /// The filesystem is full.
    #[error("no space left for the image store; nothing was stored")]
    NoSpace,
    /// Anything else (logged with detail; the client gets the summary).
    #[error("the image store failed: {0}")]
    Internal(String),
}

impl ImageError {
    fn internal(e: impl std::fmt::Display, what: &str) -> Self {
        tracing::error!(error = %e, "image store: {what}");
        ImageError::Internal(what.to_owned())
    }

    fn io(e: io::Error, what: &str) -> Self {
        if is_no_space(&e) { ImageError::NoSpace } else { ImageError::internal(e, what) }
    }
}

/// True for "the disk is full" in its several spellings.
pub fn is_no_space(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
}

/// A base a VM disk can be made on, resolved inside the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    /// Its hash, hex.
    pub hex: String,
    /// Its file.
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
    /// Size the guest sees.
    pub virtual_size_bytes: u64,
}

/// Who names and who uses each base, read from the store's directories.
#[derive(Debug, Default)]
struct Catalog {
    names: std::collections::BTreeMap<String, Vec<String>>,
    users: Vec<(String, String)>,
}

/// The store.
#[derive(Debug)]
pub struct Images {
    dir: PathBuf,
    config: ImageConfig,
    imports: Semaphore,
    catalog: Mutex<()>,
    /// Bumped whenever the images held or their names change.
    changed: tokio::sync::watch::Sender<u64>,
}

impl Images {
    /// Opens (creating) the store at `dir` and clears uploads a crash left.
    pub fn open(dir: &Path, config: ImageConfig) -> Result<Self> {
        // QEMU runs as its own user and opens a VM's disk and the base
        // behind it by path: it may pass through the store and those two
        // directories (libvirt hands it each file), but list nothing.
        for (sub, mode) in [
            ("", 0o711),
            ("blobs", 0o711),
            ("disks", 0o711),
            ("names", 0o700),
            ("incoming", 0o700),
            ("fetching", 0o700),
        ] {
            let d = dir.join(sub);
            fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
            fs::set_permissions(&d, fs::Permissions::from_mode(mode))
                .with_context(|| format!("restricting {}", d.display()))?;
        }
        for entry in fs::read_dir(dir.join("incoming"))?.flatten() {
            let _ = fs::remove_file(entry.path());
        }
        warn_if_closed_to_qemu(dir);
        let imports = Semaphore::new(config.max_imports.max(1));
        let (changed, _) = tokio::sync::watch::channel(0);
        Ok(Images { dir: dir.to_owned(), config, imports, catalog: Mutex::new(()), changed })
    }

    /// Wakes whenever the images held or their names change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The keys of the images held ([`locus_core::request::image_key`] of
    /// each image's `sha256:<hex>` and of each of its names), as this
    /// host advertises them to placement.
    pub fn keys(&self) -> Vec<u64> {
        let mut keys = Vec::new();
        for info in self.list().unwrap_or_default() {
            keys.push(locus_core::request::image_key(&info.hash));
            keys.extend(info.names.iter().map(|n| locus_core::request::image_key(n)));
        }
        keys
    }

    /// Where images being fetched from peers grow.
    pub fn fetching_dir(&self) -> PathBuf {
        self.dir.join("fetching")
    }

    /// The configuration.
    pub fn config(&self) -> &ImageConfig {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.catalog.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn blob(&self, hex: &str) -> PathBuf {
        self.dir.join("blobs").join(hex)
    }

    fn manifest_path(&self, hex: &str) -> PathBuf {
        self.dir.join("blobs").join(format!("{hex}.manifest"))
    }

    fn meta_path(&self, hex: &str) -> PathBuf {
        self.dir.join("blobs").join(format!("{hex}.json"))
    }

    fn name_path(&self, name: &str) -> PathBuf {
        self.dir.join("names").join(name)
    }

    /// Imports the bytes of `body` as image `name`. Answers the image and
    /// whether it is new (an identical re-import changes nothing).
    pub async fn import<S, E>(&self, name: &str, body: S) -> Result<(ImageInfo, bool), ImageError>
    where
        S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        if !valid_name(name) {
            return Err(ImageError::Name(name.to_owned()));
        }
        let _permit = self.imports.try_acquire().map_err(|_| ImageError::Busy(self.config.max_imports))?;
        let (upload, manifest) = self.receive(body).await?;
        let hex = manifest.file.clone();
        let path = upload.path().to_owned();
        let size = upload.as_file().metadata().map_err(|e| ImageError::io(e, "reading an upload"))?.len();
        let image = tokio::task::spawn_blocking(move || inspect::inspect(&path, size))
            .await
            .map_err(|e| ImageError::internal(e, "inspecting an upload"))??;
        let meta = Meta { image, imported_unix: now_unix() };
        let created = self.commit(Some(name), &hex, Place::Upload(upload), &meta, &manifest)?;
        Ok((self.show(name)?, created))
    }

    /// Takes an image fetched from peers into the store: `path` holds the
    /// bytes of `manifest`, every chunk checked. The whole file's hash is
    /// checked too (the manifest came from a peer and may lie about it),
    /// then its format, as for an import. Named `name` when given and free.
    pub async fn adopt(
        &self,
        name: Option<&str>,
        path: &Path,
        manifest: &manifest::Manifest,
    ) -> Result<ImageInfo, ImageError> {
        let owned = path.to_owned();
        let size = manifest.size;
        let (hex, image) = tokio::task::spawn_blocking(move || {
            let mut hasher = sha2::Sha256::new();
            let mut file =
                fs::File::open(&owned).map_err(|e| ImageError::io(e, "reading a fetched image"))?;
            io::copy(&mut file, &mut hasher).map_err(|e| ImageError::io(e, "reading a fetched image"))?;
            let hex = hex::encode(hasher.finalize());
            inspect::inspect(&owned, size).map(|image| (hex, image))
        })
        .await
        .map_err(|e| ImageError::internal(e, "checking a fetched image"))??;
        if hex != manifest.file {
            return Err(ImageError::Refused(format!(
                "the fetched bytes hash to sha256:{hex}, not the manifest's sha256:{}",
                manifest.file
            )));
        }
        let meta = Meta { image, imported_unix: now_unix() };
        let name = name.filter(|n| valid_name(n) && self.name_target(n).ok().flatten().is_none());
        match self.commit(name, &hex, Place::File(path.to_owned()), &meta, manifest) {
            Ok(_) | Err(ImageError::Exists { .. }) => {}
            Err(e) => return Err(e),
        }
        self.show(&format!("{IMAGE_HASH_PREFIX}{hex}"))
    }

    /// The bytes of chunk `i` of stored image `manifest.file`.
    pub fn read_chunk(&self, manifest: &manifest::Manifest, i: u64) -> io::Result<Vec<u8>> {
        read_range(&self.blob(&manifest.file), manifest, i)
    }

    /// Whether the store holds image `hex`.
    pub fn holds(&self, hex: &str) -> bool {
        fs::symlink_metadata(self.blob(hex)).is_ok_and(|m| m.is_file())
    }

    /// Streams an upload into a private temporary file, hashing it whole
    /// and by chunks.
    async fn receive<S, E>(
        &self,
        mut body: S,
    ) -> Result<(tempfile::NamedTempFile, manifest::Manifest), ImageError>
    where
        S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let upload = tempfile::Builder::new()
            .permissions(fs::Permissions::from_mode(0o600))
            .tempfile_in(self.dir.join("incoming"))
            .map_err(|e| ImageError::io(e, "creating an upload file"))?;
        let file = upload.as_file().try_clone().map_err(|e| ImageError::io(e, "opening an upload"))?;
        let mut out = tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::from_std(file));
        let mut chunker = manifest::Chunker::default();
        let mut total: u64 = 0;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| ImageError::Upload(e.to_string()))?;
            total += chunk.len() as u64;
            if total > self.config.max_bytes {
                // Read on a little, discarding, so that a client still
                // sending hears the answer instead of a reset connection.
                let mut extra = 0;
                while extra < DRAIN_AFTER_REFUSAL {
                    match body.next().await {
                        Some(Ok(c)) => extra += c.len(),
                        _ => break,
                    }
                }
                return Err(ImageError::TooLarge(self.config.max_bytes));
            }
            chunker.update(&chunk);
            out.write_all(&chunk).await.map_err(|e| ImageError::io(e, "writing an upload"))?;
        }
        out.flush().await.map_err(|e| ImageError::io(e, "writing an upload"))?;
        let file = out.into_inner().into_std().await;
        file.sync_all().map_err(|e| ImageError::io(e, "writing an upload"))?;
        if total == 0 {
            return Err(ImageError::Refused("the image is empty".into()));
        }
        Ok((upload, chunker.finish()))
    }

    /// Moves checked bytes into the store and points `name` at them.
    fn commit(
        &self,
        name: Option<&str>,
        hex: &str,
        bytes: Place,
        meta: &Meta,
        manifest: &manifest::Manifest,
    ) -> Result<bool, ImageError> {
        let _catalog = self.lock();
        if let Some(name) = name
            && let Some(existing) = self.name_target(name)?
        {
            if existing == hex {
                return Ok(false);
            }
            return Err(ImageError::Exists {
                name: name.into(),
                hash: format!("{IMAGE_HASH_PREFIX}{existing}"),
            });
        }
        let stored = self.blob(hex).is_file();
        if !stored {
            let text = serde_json::to_vec_pretty(meta).map_err(|e| ImageError::internal(e, "encoding"))?;
            write_atomically(&self.meta_path(hex), &text, 0o444)
                .map_err(|e| ImageError::io(e, "recording an image"))?;
            write_atomically(&self.manifest_path(hex), &manifest.encode(), 0o444)
                .map_err(|e| ImageError::io(e, "recording an image"))?;
            fs::set_permissions(bytes.path(), fs::Permissions::from_mode(0o444))
                .map_err(|e| ImageError::io(e, "protecting an image"))?;
            match bytes {
                Place::Upload(upload) => upload.persist(self.blob(hex)).map(drop).map_err(|e| e.error),
                Place::File(path) => fs::rename(&path, self.blob(hex)),
            }
            .map_err(|e| ImageError::io(e, "storing an image"))?;
        }
        if let Some(name) = name {
            write_atomically(&self.name_path(name), hex.as_bytes(), 0o644)
                .map_err(|e| ImageError::io(e, "naming an image"))?;
        }
        sync_dir(&self.dir.join("blobs")).map_err(|e| ImageError::io(e, "storing an image"))?;
        self.changed.send_modify(|n| *n += 1);
        Ok(name.is_some() || !stored)
    }

    /// The hash `name` points at, if it exists. A name file that is not a
    /// plain file holding a hash is treated as absent.
    fn name_target(&self, name: &str) -> Result<Option<String>, ImageError> {
        let path = self.name_path(name);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ImageError::io(e, "reading an image name")),
        }
        let text = fs::read_to_string(&path).map_err(|e| ImageError::io(e, "reading an image name"))?;
        let hex = text.trim();
        Ok(valid_image_hash(hex).then(|| hex.to_owned()))
    }

    /// Resolves a VM's `image` (a name or `sha256:<hex>`) to a base in the
    /// store: a regular file (not a symlink, not a device) under `blobs/`.
    /// Anything else is "no such image", whatever is on the disk.
    pub fn resolve(&self, image: &str) -> Result<Base, ImageError> {
        let missing = || ImageError::NotFound(image.to_owned());
        let hex = match image.strip_prefix(IMAGE_HASH_PREFIX) {
            Some(hex) if valid_image_hash(hex) => hex.to_owned(),
            Some(_) => return Err(missing()),
            None if valid_name(image) => self.name_target(image)?.ok_or_else(missing)?,
            None => return Err(missing()),
        };
        let path = self.blob(&hex);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_file() => {}
            _ => return Err(missing()),
        }
        let meta = self.meta(&hex).ok_or_else(missing)?;
        Ok(Base { hex, path, format: meta.image.format, virtual_size_bytes: meta.image.virtual_size_bytes })
    }

    /// The manifest of image `hex`, as stored (read back under its own id).
    pub fn manifest(&self, hex: &str) -> Option<manifest::Manifest> {
        let path = self.manifest_path(hex);
        fs::symlink_metadata(&path).ok().filter(|m| m.is_file())?;
        let bytes = fs::read(path).ok()?;
        let id = hex::encode(sha2::Sha256::digest(&bytes));
        manifest::Manifest::decode(&bytes, &id).ok().filter(|m| m.file == hex)
    }

    fn meta(&self, hex: &str) -> Option<Meta> {
        let path = self.meta_path(hex);
        fs::symlink_metadata(&path).ok().filter(|m| m.is_file())?;
        serde_json::from_slice(&fs::read(path).ok()?).ok()
    }

    /// Every image, by hash, with its names and users.
    pub fn list(&self) -> Result<Vec<ImageInfo>, ImageError> {
        let catalog = self.catalog()?;
        let mut out = Vec::new();
        for file in list_dir(&self.dir.join("blobs")).map_err(|e| ImageError::io(e, "listing images"))? {
            if valid_image_hash(&file)
                && let Some(info) = self.info(&file, &catalog)
            {
                out.push(info);
            }
        }
        out.sort_by(|a, b| a.names.cmp(&b.names).then(a.hash.cmp(&b.hash)));
        Ok(out)
    }

    /// One image, by name or hash.
    pub fn show(&self, image: &str) -> Result<ImageInfo, ImageError> {
        let base = self.resolve(image)?;
        self.info(&base.hex, &self.catalog()?).ok_or_else(|| ImageError::NotFound(image.to_owned()))
    }

    /// Names by hash, and (VM, hash) of every overlay, both sorted.
    fn catalog(&self) -> Result<Catalog, ImageError> {
        let mut names = Catalog::default().names;
        for name in list_dir(&self.dir.join("names")).map_err(|e| ImageError::io(e, "listing images"))? {
            if let Some(hex) = self.name_target(&name)? {
                names.entry(hex).or_default().push(name);
            }
        }
        names.values_mut().for_each(|n| n.sort());
        let mut users = self.users().map_err(|e| ImageError::io(e, "listing disks"))?;
        users.sort();
        Ok(Catalog { names, users })
    }

    fn info(&self, hex: &str, catalog: &Catalog) -> Option<ImageInfo> {
        let Meta { image, imported_unix } = self.meta(hex)?;
        let manifest = self.manifest(hex);
        Some(ImageInfo {
            manifest: manifest.as_ref().map(manifest::Manifest::id),
            chunks: manifest.as_ref().map_or(0, manifest::Manifest::chunk_count),
            names: catalog.names.get(hex).cloned().unwrap_or_default(),
            hash: format!("{IMAGE_HASH_PREFIX}{hex}"),
            format: image.format,
            size_bytes: image.size_bytes,
            virtual_size_bytes: image.virtual_size_bytes,
            imported_unix,
            used_by: catalog.users.iter().filter(|(_, h)| h == hex).map(|(vm, _)| vm.clone()).collect(),
        })
    }

    /// Removes a name (or, given a hash, every name of it) and the base
    /// once nothing names it. Refused while a VM's disk is on it.
    pub fn remove(&self, image: &str) -> Result<ImageInfo, ImageError> {
        let _catalog = self.lock();
        let info = self.show(image)?;
        if !info.used_by.is_empty() {
            return Err(ImageError::InUse { name: image.to_owned(), vms: info.used_by });
        }
        let hex = info.hash.trim_start_matches(IMAGE_HASH_PREFIX);
        let dropping: Vec<&String> = if image.starts_with(IMAGE_HASH_PREFIX) {
            info.names.iter().collect()
        } else {
            info.names.iter().filter(|n| *n == image).collect()
        };
        for name in &dropping {
            remove_if_present(&self.name_path(name)).map_err(|e| ImageError::io(e, "removing a name"))?;
        }
        if dropping.len() == info.names.len() {
            remove_if_present(&self.blob(hex)).map_err(|e| ImageError::io(e, "removing an image"))?;
            remove_if_present(&self.meta_path(hex)).map_err(|e| ImageError::io(e, "removing an image"))?;
            remove_if_present(&self.manifest_path(hex))
                .map_err(|e| ImageError::io(e, "removing an image"))?;
        }
        self.changed.send_modify(|n| *n += 1);
        Ok(info)
    }

    /// (VM, base hex) of every overlay.
    fn users(&self) -> io::Result<Vec<(String, String)>> {
        Ok(list_dir(&self.dir.join("disks"))?
            .into_iter()
            .filter_map(|f| {
                let stem = f.strip_suffix(".qcow2")?;
                let (vm, hex) = stem.rsplit_once('@')?;
                Some((vm.to_owned(), hex.to_owned()))
            })
            .collect())
    }

    /// VM `vm`'s disk: a qcow2 overlay on the base `image` resolves to, at
    /// least `min_bytes` large. A VM defined again (its domain went
    /// missing) keeps the disk it has; a disk on another base is replaced.
    /// Disks of VMs that no longer exist are removed with their domains and
    /// swept at start ([`Images::sweep`]), so a new VM never gets an old
    /// one's disk.
    pub fn create_disk(&self, vm: &str, image: &str, min_bytes: u64) -> Result<(PathBuf, Base), ImageError> {
        let _catalog = self.lock();
        let base = self.resolve(image)?;
        let path = self.disk_path(vm, &base.hex);
        if fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
            return Ok((path, base));
        }
        self.remove_disks_of(|v| v == vm).map_err(|e| ImageError::io(e, "removing an old disk"))?;
        inspect::create_overlay(&base, &path, min_bytes.max(base.virtual_size_bytes))?;
        Ok((path, base))
    }

    /// Removes the disks of VMs not in `keep` (left by a crash between a
    /// domain's removal and its disk's), so no later VM of the same name
    /// gets them. Returns the VMs whose disks went.
    pub fn sweep(&self, keep: &std::collections::BTreeSet<String>) -> io::Result<Vec<String>> {
        let _catalog = self.lock();
        self.remove_disks_of(|vm| !keep.contains(vm))
    }

    fn disk_path(&self, vm: &str, hex: &str) -> PathBuf {
        self.dir.join("disks").join(format!("{vm}@{hex}.qcow2"))
    }

    /// Removes VM `vm`'s disk, if it has one.
    pub fn remove_disks(&self, vm: &str) -> io::Result<()> {
        let _catalog = self.lock();
        self.remove_disks_of(|v| v == vm).map(drop)
    }

    /// Removes the disks of the VMs `which` picks; the catalog lock is held.
    fn remove_disks_of(&self, which: impl Fn(&str) -> bool) -> io::Result<Vec<String>> {
        let mut removed = Vec::new();
        for (vm, hex) in self.users()? {
            if which(&vm) {
                remove_if_present(&self.disk_path(&vm, &hex))?;
                removed.push(vm);
            }
        }
        Ok(removed)
    }
}

/// Where the bytes of a new base come from.
enum Place {
    /// An upload's temporary file.
    Upload(tempfile::NamedTempFile),
    /// A file fetched from peers.
    File(PathBuf),
}

impl Place {
    fn path(&self) -> &Path {
        match self {
            Place::Upload(u) => u.path(),
            Place::File(p) => p,
        }
    }
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs()
}

/// The bytes of chunk `i` of `manifest` in the file at `path`.
pub fn read_range(path: &Path, manifest: &manifest::Manifest, i: u64) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let range = manifest.range(i).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut buf = vec![0; (range.end - range.start) as usize];
    fs::File::open(path)?.read_exact_at(&mut buf, range.start)?;
    Ok(buf)
}

/// QEMU runs as its own user and opens VM disks by path: every directory
/// above the store must let others pass (o+x), or guests cannot start.
fn warn_if_closed_to_qemu(dir: &Path) {
    let Ok(dir) = dir.canonicalize() else { return };
    for ancestor in dir.ancestors().skip(1) {
        if let Ok(meta) = fs::metadata(ancestor)
            && meta.permissions().mode() & 0o001 == 0
        {
            tracing::warn!(
                store = %dir.display(),
                closed = %ancestor.display(),
                "QEMU, running as its own user, cannot reach the image store: a directory above it is not o+x"
            );
            return;
        }
    }
}

fn list_dir(dir: &Path) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file()
            && let Some(name) = entry.file_name().to_str()
        {
            out.push(name.to_owned());
        }
    }
    Ok(out)
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Writes `bytes` to `path` through a synced temporary file and a rename,
/// so a crash leaves the old content or the new, never a torn file.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut file = tempfile::Builder::new().permissions(fs::Permissions::from_mode(mode)).tempfile_in(dir)?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests;
