//! The store against real files and a real qemu-img.

use super::*;
use bytes::Bytes;
use std::process::Command;

impl Images {
    /// VM `vm`'s disk, if it has one.
    fn disk(&self, vm: &str) -> Option<PathBuf> {
        let users = self.users().ok()?;
        users.into_iter().find(|(v, _)| v == vm).map(|(vm, hex)| self.disk_path(&vm, &hex))
    }
}

fn store(dir: &Path) -> Images {
    Images::open(&dir.join("images"), ImageConfig { max_bytes: 4 << 20, ..ImageConfig::default() })
        .expect("open")
}

fn body(bytes: Vec<u8>) -> impl Stream<Item = Result<Bytes, io::Error>> + Unpin {
    // Several chunks, as an upload arrives.
    let chunks: Vec<Result<Bytes, io::Error>> =
        bytes.chunks(1000).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    futures::stream::iter(chunks)
}

fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img").args(args).output().expect("qemu-img (scripts/setup.sh installs it)");
    assert!(out.status.success(), "qemu-img {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

fn import(s: &Images, name: &str, bytes: Vec<u8>) -> Result<(ImageInfo, bool), ImageError> {
    rt().block_on(s.import(name, body(bytes)))
}

#[test]
fn a_raw_image_is_stored_read_only_under_its_hash_and_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path());
    let bytes = vec![7u8; 5000];
    let (info, created) = import(&s, "tiny", bytes.clone()).expect("import");
    assert!(created);
    let hex = hex::encode(sha2::Sha256::digest(&bytes));
    assert_eq!(info.hash, format!("sha256:{hex}"));
    assert_eq!((info.format, info.size_bytes, info.virtual_size_bytes), (Format::Raw, 5000, 5000));
    assert_eq!(info.names, vec!["tiny".to_owned()]);
    let mode = fs::metadata(s.blob(&hex)).expect("blob").permissions().mode();
    assert_eq!(mode & 0o777, 0o444, "bases are read-only");
    // Its manifest: one chunk, the whole file's hash, read back under its id.
    let m = s.manifest(&hex).expect("a manifest is stored with the image");
    assert_eq!((m.file.as_str(), m.size, m.chunk_count()), (hex.as_str(), 5000, 1));
    assert_eq!((info.manifest.clone(), info.chunks), (Some(m.id()), 1));
    m.check(0, &bytes).expect("the chunk checks");

    // The same bytes again: nothing new. Other bytes under the name: refused.
    assert!(!import(&s, "tiny", bytes.clone()).expect("again").1);
    let e = import(&s, "tiny", vec![8u8; 10]).expect_err("taken");
    assert!(matches!(e, ImageError::Exists { .. }), "{e}");
    // A second name for the same content shares the base.
    let (alias, _) = import(&s, "tiny-alias", bytes).expect("alias");
    assert_eq!(alias.names, vec!["tiny".to_owned(), "tiny-alias".to_owned()]);
    assert_eq!(s.list().expect("list").len(), 1);
    assert_eq!(s.show(&info.hash).expect("by hash").hash, info.hash);
    assert!(fs::read_dir(s.dir.join("incoming")).expect("incoming").next().is_none(), "no upload left over");
    // Removed with its base.
    s.remove(&info.hash).expect("remove");
    assert!(s.manifest(&hex).is_none() && !s.manifest_path(&hex).exists());
}

#[test]
fn bad_uploads_are_refused_and_leave_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path());
    assert!(matches!(import(&s, "../etc", vec![1]), Err(ImageError::Name(_))));
    assert!(matches!(import(&s, "empty", vec![]), Err(ImageError::Refused(_))));
    assert!(matches!(import(&s, "big", vec![0; (4 << 20) + 1]), Err(ImageError::TooLarge(_))));
    let mut vmdk = b"KDMV".to_vec();
    vmdk.resize(4096, 0);
    let e = import(&s, "vmdk", vmdk).expect_err("vmdk");
    assert!(e.to_string().contains("VMDK"), "{e}");
    let mut cut = b"QFI\xfb".to_vec();
    cut.resize(20, 0);
    let e = import(&s, "cut", cut).expect_err("cut short");
    assert!(matches!(e, ImageError::Refused(_)), "{e}");
    assert!(s.list().expect("list").is_empty());
    assert!(fs::read_dir(s.dir.join("incoming")).expect("incoming").next().is_none(), "no upload left over");
}

#[test]
fn qcow2_images_that_name_other_host_files_are_refused_without_saying_what_exists() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path());
    let p = |n: &str| dir.path().join(n).to_str().expect("utf-8").to_owned();

    qemu_img(&["create", "-q", "-f", "qcow2", &p("plain.qcow2"), "1M"]);
    let (info, _) = import(&s, "plain", fs::read(p("plain.qcow2")).expect("read")).expect("plain qcow2");
    assert_eq!((info.format, info.virtual_size_bytes), (Format::Qcow2, 1 << 20));

    qemu_img(&["create", "-q", "-f", "qcow2", "-b", "/etc/shadow", "-F", "raw", &p("backed.qcow2"), "1M"]);
    let e = import(&s, "backed", fs::read(p("backed.qcow2")).expect("read")).expect_err("backing file");
    assert!(e.to_string().contains("backing file") && !e.to_string().contains("/etc"), "{e}");

    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &format!("data_file={}", p("data.raw")),
        &p("ext.qcow2"),
        "1M",
    ]);
    let e = import(&s, "ext", fs::read(p("ext.qcow2")).expect("read")).expect_err("data file");
    assert!(e.to_string().contains("external file") && !e.to_string().contains(&p("")), "{e}");
    assert_eq!(s.list().expect("list").len(), 1, "only the plain image was taken");
}

#[test]
fn a_vm_disk_is_its_own_overlay_and_holds_its_base_until_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path());
    let (info, _) = import(&s, "base", vec![0u8; 1 << 20]).expect("import");

    let (disk, _) = s.create_disk("web-1", "base", 2 << 20).expect("disk");
    assert!(disk.starts_with(s.dir.join("disks")) && disk.is_file());
    assert_eq!(s.disk("web-1"), Some(disk.clone()));
    let (other, base) = s.create_disk("web-2", &info.hash, 0).expect("disk by hash");
    assert_eq!(format!("sha256:{}", base.hex), info.hash);
    assert_ne!(disk, other);
    assert_eq!(s.show("base").expect("show").used_by, vec!["web-1".to_owned(), "web-2".to_owned()]);
    let e = s.remove("base").expect_err("in use");
    assert!(matches!(e, ImageError::InUse { .. }) && e.to_string().contains("web-1"), "{e}");

    // Defined again (its domain went missing), a VM keeps its disk.
    let fresh = fs::metadata(&disk).expect("disk").len();
    let mut written = fs::OpenOptions::new().append(true).open(&disk).expect("open");
    written.write_all(&[1u8; 4096]).expect("the VM's writes");
    let (again, _) = s.create_disk("web-1", "base", 0).expect("same disk");
    assert_eq!(again, disk);
    assert_eq!(fs::metadata(&again).expect("disk").len(), fresh + 4096, "the VM's data stays");
    // A VM that no longer exists loses its disk at the sweep; a new VM of
    // that name then gets a fresh one.
    let keep = std::collections::BTreeSet::from(["web-2".to_owned()]);
    assert_eq!(s.sweep(&keep).expect("sweep"), vec!["web-1".to_owned()]);
    let (new, _) = s.create_disk("web-1", "base", 0).expect("fresh disk");
    assert_eq!(fs::metadata(&new).expect("disk").len(), fresh, "a new file, not the old disk");

    s.remove_disks("web-1").expect("remove");
    s.remove_disks("web-2").expect("remove");
    assert_eq!(s.disk("web-1"), None);
    s.remove("base").expect("unused now");
    assert!(s.list().expect("list").is_empty());
    assert!(matches!(s.create_disk("web-3", "base", 0), Err(ImageError::NotFound(_))));
}

#[test]
fn only_regular_files_inside_the_store_resolve() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path());
    // A hash-named symlink planted out of the store, and a name that is a symlink.
    let hex = "ab".repeat(32);
    std::os::unix::fs::symlink("/etc/passwd", s.blob(&hex)).expect("symlink");
    fs::write(
        s.meta_path(&hex),
        br#"{"format":"raw","size-bytes":1,"virtual-size-bytes":1,"imported-unix":0}"#,
    )
    .expect("meta");
    std::os::unix::fs::symlink(s.blob(&hex), s.name_path("sneaky")).expect("symlink");
    for image in [format!("sha256:{hex}"), "sneaky".into(), "/etc/passwd".into(), "../blobs/x".into()] {
        let e = s.resolve(&image).expect_err("refused");
        assert!(matches!(e, ImageError::NotFound(_)), "{image}: {e}");
    }
    assert!(s.create_disk("vm", &format!("sha256:{hex}"), 0).is_err());
    assert_eq!(s.disk("vm"), None);
}
