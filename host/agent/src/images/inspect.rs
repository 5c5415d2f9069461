//! What an uploaded image is, and whether the store takes it; and making a
//! VM's overlay. qemu-img (Debian: qemu-utils) reads and writes qcow2 here,
//! always told the format so it never guesses.
//!
//! A qcow2 file can name other files: a backing file or an external data
//! file. Handed to QEMU, those are opened as part of the disk, so an image
//! that names one could read or write any host file. Such images are
//! refused, as are encrypted ones (the agent holds no keys) and formats
//! other than qcow2 and raw whose headers are recognised.

use super::{Base, ImageError};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use wait_timeout::ChildExt;

/// An image's on-disk format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// QEMU copy-on-write v2/v3.
    Qcow2,
    /// A plain disk, byte for byte.
    Raw,
}

impl Format {
    /// The name qemu-img and libvirt use.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Qcow2 => "qcow2",
            Format::Raw => "raw",
        }
    }
}

/// What inspection found (kept beside the base, as JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Inspected {
    /// Its format.
    pub format: Format,
    /// Bytes of the file.
    pub size_bytes: u64,
    /// Size of the disk a guest sees.
    pub virtual_size_bytes: u64,
}

/// Longest qemu-img may take on one image.
const QEMU_IMG_TIMEOUT: Duration = Duration::from_secs(120);

/// Headers of formats the store does not take, so that a VMDK or VHDX is
/// refused by name instead of booting as a raw disk of garbage.
const OTHER_FORMATS: &[(&[u8], &str)] = &[
    (b"KDMV", "VMDK"),
    (b"# Disk DescriptorFile", "VMDK descriptor"),
    (b"vhdxfile", "VHDX"),
    (b"conectix", "VHD"),
    (b"QED\0", "QED"),
    (b"LUKS\xba\xbe", "LUKS"),
    (b"QFI\xfb\0\0\0\x01", "qcow (version 1)"),
];

const QCOW2_MAGIC: &[u8] = b"QFI\xfb";

/// Checks the file at `path` (`size_bytes` long) and says what it is.
pub fn inspect(path: &Path, size_bytes: u64) -> Result<Inspected, ImageError> {
    let mut head = Vec::with_capacity(128);
    std::fs::File::open(path)
        .and_then(|f| f.take(128).read_to_end(&mut head))
        .map_err(|e| ImageError::io(e, "reading an upload"))?;
    let head = head.as_slice();
    if let Some((_, name)) = OTHER_FORMATS.iter().find(|(magic, _)| head.starts_with(magic)) {
        return Err(ImageError::Refused(format!(
            "{name} images are not supported; convert it to qcow2 or raw (qemu-img convert -O qcow2)"
        )));
    }
    if !head.starts_with(QCOW2_MAGIC) {
        return Ok(Inspected { format: Format::Raw, size_bytes, virtual_size_bytes: size_bytes });
    }
    check_qcow2_header(head)?;
    let info = qemu_img(&["info", "--output=json", "-f", "qcow2"], path)
        .map_err(|why| ImageError::Refused(format!("not a readable qcow2 image: {why}")))?;
    let info: QemuImgInfo = serde_json::from_slice(&info)
        .map_err(|e| ImageError::internal(e, "reading qemu-img's description of an image"))?;
    if info.backing_filename.is_some() || info.full_backing_filename.is_some() {
        return Err(backing_refusal());
    }
    let data = info.format_specific.as_ref().and_then(|f| f.data.as_ref());
    if data.is_some_and(|d| d.data_file.is_some() || d.data_file_raw == Some(true)) {
        return Err(data_file_refusal());
    }
    if info.encrypted == Some(true) || data.is_some_and(|d| d.encrypt.is_some()) {
        return Err(ImageError::Refused("encrypted qcow2 images are not supported".into()));
    }
    qemu_img(&["check", "-q", "-f", "qcow2"], path)
        .map_err(|why| ImageError::Refused(format!("the qcow2 image is damaged: {why}")))?;
    Ok(Inspected { format: Format::Qcow2, size_bytes, virtual_size_bytes: info.virtual_size })
}

/// Creates the qcow2 overlay `path` on `base`, `size_bytes` large.
pub fn create_overlay(base: &Base, path: &Path, size_bytes: u64) -> Result<(), ImageError> {
    let backing = base.path.to_str().ok_or_else(|| ImageError::Internal("a non-UTF-8 store path".into()))?;
    let size = size_bytes.to_string();
    let result = qemu_img_args(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "lazy_refcounts=on",
        "-b",
        backing,
        "-F",
        base.format.as_str(),
        path.to_str().unwrap_or_default(),
        &size,
    ]);
    if let Err(why) = result {
        let _ = std::fs::remove_file(path);
        return Err(ImageError::internal(why, "creating a VM disk"));
    }
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| ImageError::io(e, "protecting a VM disk"))
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct QemuImgInfo {
    virtual_size: u64,
    backing_filename: Option<String>,
    full_backing_filename: Option<String>,
    encrypted: Option<bool>,
    format_specific: Option<FormatSpecific>,
}

#[derive(Deserialize)]
struct FormatSpecific {
    data: Option<Qcow2Specific>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Qcow2Specific {
    data_file: Option<String>,
    data_file_raw: Option<bool>,
    encrypt: Option<serde_json::Value>,
}

fn qemu_img(args: &[&str], path: &Path) -> Result<Vec<u8>, String> {
    let path = path.to_str().ok_or("a non-UTF-8 path")?;
    let mut all = args.to_vec();
    all.push(path);
    qemu_img_args(&all)
}

/// Runs qemu-img with a deadline; its stdout, or why it failed (its own
/// message, with the store's paths taken out). Output goes to anonymous
/// files rather than pipes, so a chatty run cannot block on a full pipe.
fn qemu_img_args(args: &[&str]) -> Result<Vec<u8>, String> {
    use std::io::{Seek, SeekFrom};
    let files = tempfile::tempfile().and_then(|out| Ok((out.try_clone()?, out, tempfile::tempfile()?)));
    let (out_w, mut out, mut err) = files.map_err(|e| format!("cannot run qemu-img: {e}"))?;
    let err_w = err.try_clone().map_err(|e| format!("cannot run qemu-img: {e}"))?;
    let mut child = Command::new("qemu-img")
        .args(args)
        .stdin(Stdio::null())
        .stdout(out_w)
        .stderr(err_w)
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                "qemu-img is not installed (Debian: qemu-utils)".to_owned()
            } else {
                format!("cannot run qemu-img: {e}")
            }
        })?;
    let status = match child.wait_timeout(QEMU_IMG_TIMEOUT) {
        Ok(Some(status)) => status,
        Ok(None) | Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("qemu-img took longer than {} s", QEMU_IMG_TIMEOUT.as_secs()));
        }
    };
    let read = |f: &mut std::fs::File| {
        let mut bytes = Vec::new();
        let _ = f.seek(SeekFrom::Start(0)).and_then(|_| f.read_to_end(&mut bytes));
        bytes
    };
    if status.success() {
        return Ok(read(&mut out));
    }
    let mut text = String::from_utf8_lossy(&read(&mut err)).trim().to_owned();
    for p in args.iter().filter(|a| a.starts_with('/')) {
        text = text.replace(p, "<image>");
    }
    Err(text.lines().last().unwrap_or("qemu-img failed").to_owned())
}

/// Refuses, from the qcow2 header alone and before qemu-img opens the
/// file, an image that names a backing file or an external data file.
fn check_qcow2_header(head: &[u8]) -> Result<(), ImageError> {
    let be64 = |at: usize| head.get(at..at + 8).map(|b| u64::from_be_bytes(b.try_into().unwrap_or([0; 8])));
    let be32 = |at: usize| head.get(at..at + 4).map(|b| u32::from_be_bytes(b.try_into().unwrap_or([0; 4])));
    let (Some(version), Some(backing_offset)) = (be32(4), be64(8)) else {
        return Err(ImageError::Refused("not a readable qcow2 image: the header is cut short".into()));
    };
    if backing_offset != 0 {
        return Err(backing_refusal());
    }
    // Incompatible feature bit 2: the data lives in an external file.
    if version >= 3 && be64(72).is_some_and(|f| f & 0b100 != 0) {
        return Err(data_file_refusal());
    }
    Ok(())
}

fn backing_refusal() -> ImageError {
    ImageError::Refused(
        "the qcow2 image has a backing file; import a standalone image (qemu-img convert -O qcow2)".into(),
    )
}

fn data_file_refusal() -> ImageError {
    ImageError::Refused(
        "the qcow2 image keeps its data in an external file; import a standalone image (qemu-img convert -O qcow2)"
            .into(),
    )
}
