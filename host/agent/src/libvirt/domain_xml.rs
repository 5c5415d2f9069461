//! Domain XML for a Locus VM, and the mark that says which agent owns a
//! domain. Every value from a request goes through quick-xml's writer, which
//! escapes it; nothing is pasted into markup by hand.

use locus_core::VmRequest;
use quick_xml::Writer;
use quick_xml::events::{BytesText, Event};
use std::io;
use std::path::Path;

/// The XML namespace of Locus's domain metadata.
pub const NAMESPACE: &str = "https://locus.invalid/xmlns/vm/1";

/// A VM's disk: its own qcow2 overlay on a base of the image store.
#[derive(Debug, Clone, Copy)]
pub struct Disk<'a> {
    /// The overlay, the VM's alone.
    pub overlay: &'a Path,
    /// The base behind it, shared and read-only.
    pub base: &'a Path,
    /// The base's format (`qcow2` or `raw`).
    pub base_format: &'a str,
}

/// Who owns a domain, and which copy of its VM it is.
#[derive(Debug, Clone, Copy)]
pub struct Mark<'a> {
    /// The host whose agent owns it.
    pub owner: &'a str,
    /// The VM's generation (moves and re-creations so far).
    pub generation: u64,
}

/// The domain definition for `spec`, marked with `mark`, of libvirt
/// domain type `domain_type` (`kvm`, `qemu` or `test`), booting from
/// `disk` when it has one.
pub fn render(spec: &VmRequest, mark: Mark<'_>, domain_type: &str, disk: Option<Disk<'_>>) -> String {
    // Writing into a Vec cannot fail.
    write(spec, mark, domain_type, disk).unwrap_or_default()
}

fn write(spec: &VmRequest, owner: Mark<'_>, domain_type: &str, disk: Option<Disk<'_>>) -> io::Result<String> {
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    w.create_element("domain").with_attribute(("type", domain_type)).write_inner_content(|w| {
        w.create_element("name").write_text_content(BytesText::new(&spec.name))?;
        w.create_element("metadata").write_inner_content(|w| mark(w, spec, owner, "locus:"))?;
        w.create_element("memory")
            .with_attribute(("unit", "MiB"))
            .write_text_content(BytesText::new(&spec.memory_mib.to_string()))?;
        w.create_element("vcpu").write_text_content(BytesText::new(&spec.vcpus.to_string()))?;
        w.create_element("os").write_inner_content(|w| {
            w.create_element("type").write_text_content(BytesText::new("hvm"))?;
            let boot = if disk.is_some() { "hd" } else { "network" };
            w.create_element("boot").with_attribute(("dev", boot)).write_empty()?;
            Ok(())
        })?;
        for (event, action) in [("on_poweroff", "destroy"), ("on_reboot", "restart"), ("on_crash", "destroy")]
        {
            w.create_element(event).write_text_content(BytesText::new(action))?;
        }
        w.create_element("devices").write_inner_content(|w| devices(w, spec, disk))?;
        Ok(())
    })?;
    Ok(String::from_utf8_lossy(&w.into_inner()).into_owned())
}

/// Locus's metadata element: the owner, the generation and the VM's
/// labels. `prefix` is the namespace prefix with its colon, or empty where
/// libvirt sets the namespace itself (`virDomainSetMetadata`).
fn mark(w: &mut Writer<Vec<u8>>, spec: &VmRequest, m: Mark<'_>, prefix: &str) -> io::Result<()> {
    let mut vm = w.create_element(format!("{prefix}vm"));
    if !prefix.is_empty() {
        vm = vm.with_attribute(("xmlns:locus", NAMESPACE));
    }
    let generation = m.generation.to_string();
    vm.with_attribute(("owner", m.owner))
        .with_attribute(("generation", generation.as_str()))
        .write_inner_content(|w| {
            for (key, value) in &spec.labels {
                w.create_element(format!("{prefix}label"))
                    .with_attribute(("key", key.as_str()))
                    .write_text_content(BytesText::new(value))?;
            }
            Ok(())
        })?;
    Ok(())
}

/// The metadata element that marks a domain with `m`, for
/// `virDomainSetMetadata` with key `locus` and [`NAMESPACE`] (a VM that
/// arrived from another host).
pub fn metadata(spec: &VmRequest, m: Mark<'_>) -> String {
    let mut w = Writer::new(Vec::new());
    match mark(&mut w, spec, m, "") {
        Ok(()) => String::from_utf8_lossy(&w.into_inner()).into_owned(),
        // Writing into a Vec cannot fail.
        Err(_) => String::new(),
    }
}

fn devices(w: &mut Writer<Vec<u8>>, spec: &VmRequest, disk: Option<Disk<'_>>) -> io::Result<()> {
    if let Some(disk) = disk {
        let utf8 =
            |p: &Path| p.to_str().map(str::to_owned).ok_or_else(|| io::Error::other("a non-UTF-8 disk path"));
        let (file, base) = (utf8(disk.overlay)?, utf8(disk.base)?);
        w.create_element("disk")
            .with_attribute(("type", "file"))
            .with_attribute(("device", "disk"))
            .write_inner_content(|w| {
                w.create_element("driver")
                    .with_attribute(("name", "qemu"))
                    .with_attribute(("type", "qcow2"))
                    .write_empty()?;
                w.create_element("source").with_attribute(("file", file.as_str())).write_empty()?;
                // The base is given, not probed, and libvirt must not hand
                // it to this guest's QEMU user: QEMU reads it through its
                // mode (0444, root's), so a guest that took its QEMU over
                // still cannot change what other VMs boot from.
                w.create_element("backingStore").with_attribute(("type", "file")).write_inner_content(
                    |w| {
                        w.create_element("format")
                            .with_attribute(("type", disk.base_format))
                            .write_empty()?;
                        w.create_element("source")
                            .with_attribute(("file", base.as_str()))
                            .write_inner_content(|w| {
                                w.create_element("seclabel")
                                    .with_attribute(("model", "dac"))
                                    .with_attribute(("relabel", "no"))
                                    .write_empty()?;
                                Ok(())
                            })?;
                        w.create_element("backingStore").write_empty()?;
                        Ok(())
                    },
                )?;
                w.create_element("target")
                    .with_attribute(("dev", "vda"))
                    .with_attribute(("bus", "virtio"))
                    .write_empty()?;
                Ok(())
            })?;
    }
    if let Some(network) = &spec.network {
        w.create_element("interface").with_attribute(("type", "network")).write_inner_content(|w| {
            w.create_element("source").with_attribute(("network", network.as_str())).write_empty()?;
            w.create_element("model").with_attribute(("type", "virtio")).write_empty()?;
            Ok(())
        })?;
    }
    w.create_element("serial").with_attribute(("type", "pty")).write_empty()?;
    Ok(())
}

/// The owner named in a domain's Locus metadata element (as libvirt returns
/// it from `virDomainGetMetadata`), if it has one.
pub fn owner(metadata: &str) -> Option<String> {
    attribute(metadata, "owner")
}

/// The generation in a domain's Locus metadata element, if it has one
/// (marks written before generations were have none).
pub fn generation(metadata: &str) -> Option<u64> {
    attribute(metadata, "generation")?.parse().ok()
}

fn attribute(metadata: &str, name: &str) -> Option<String> {
    let mut reader = quick_xml::Reader::from_str(metadata);
    loop {
        match reader.read_event() {
            Ok(Event::Start(e) | Event::Empty(e)) if e.local_name().as_ref() == b"vm" => {
                let attr = e.try_get_attribute(name).ok()??;
                return attr.unescape_value().ok().map(|v| v.into_owned());
            }
            Ok(Event::Eof) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_and_the_owner_reads_back() {
        let mut spec = VmRequest { name: "web-1".into(), vcpus: 2, memory_mib: 64, ..VmRequest::default() };
        spec.labels.insert("team".into(), "</locus:label><evil attr='1'>&".into());
        let disk = Disk {
            overlay: Path::new("/images/disks/a&b.qcow2"),
            base: Path::new("/images/blobs/ab"),
            base_format: "raw",
        };
        let xml = render(&spec, Mark { owner: "host-a", generation: 3 }, "kvm", Some(disk));
        assert!(xml.contains("relabel=\"no\""), "{xml}");
        assert!(xml.contains("&lt;/locus:label&gt;&lt;evil attr=&apos;1&apos;&gt;&amp;"), "{xml}");
        assert!(xml.contains("file=\"/images/disks/a&amp;b.qcow2\""), "{xml}");
        assert!(xml.contains("<memory unit=\"MiB\">64</memory>"), "{xml}");
        assert!(xml.contains("type=\"qcow2\""), "{xml}");
        let start = xml.find("<locus:vm").expect("metadata");
        let end = xml.find("</locus:vm>").expect("metadata end") + "</locus:vm>".len();
        assert_eq!(owner(&xml[start..end]).as_deref(), Some("host-a"));
        assert_eq!(generation(&xml[start..end]), Some(3));
        let b = Mark { owner: "host-b", generation: 4 };
        assert_eq!(owner(&metadata(&spec, b)).as_deref(), Some("host-b"));
        assert_eq!(generation(&metadata(&spec, b)), Some(4));
        assert!(metadata(&spec, b).contains("&lt;/locus:label&gt;"));
        assert_eq!(generation("<vm owner='old'/>"), None);
        assert_eq!(owner("<other/>"), None);
        assert_eq!(owner("not xml <"), None);
    }
}
