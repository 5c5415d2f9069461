//! A tenant's request for one VM, as it arrives (names and units a person
//! writes), and its checks. The pipeline resolves names into indexes.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Longest VM or group name accepted.
pub const MAX_NAME_LEN: usize = 64;
/// Most labels a VM may carry.
pub const MAX_LABELS: usize = 32;
/// Longest label value, in bytes.
pub const MAX_LABEL_VALUE: usize = 256;
/// How an image is named by its content: this prefix, then 64 lowercase hex digits.
pub const IMAGE_HASH_PREFIX: &str = "sha256:";

/// The key under which hosts advertise an image they hold, for an image
/// reference as a VM names it (a name, or `sha256:<hex>`): 8 bytes
/// (SipHash-1-3 with fixed keys) instead of the reference, so a host's
/// summary grows by 8 bytes per image and per name. A host holding an
/// image lists the key of its hash and of each of its names. Two
/// references may share a key (one chance in 2^64 per pair): a policy
/// would then prefer a host that lacks the image, which fetches it.
pub fn image_key(image: &str) -> u64 {
    use std::hash::Hasher;
    let mut h = siphasher::sip::SipHasher13::new_with_keys(0x6c6f_6375_735f_696d, 0x6167_6573_0000_0001);
    h.write(image.as_bytes());
    h.finish()
}

/// A point on Earth, in degrees, as written in requests and cluster files.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Location {
    /// Latitude, -90 to 90.
    pub lat: f32,
    /// Longitude, -180 to 180.
    pub lon: f32,
}

impl From<Location> for locus_sdk::Coordinates {
    fn from(l: Location) -> Self {
        locus_sdk::Coordinates::new(l.lat, l.lon)
    }
}

/// How a group's members relate, as written in requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum GroupKindSpec {
    /// Prefer sharing a host.
    Affinity,
    /// Never share a host.
    AntiAffinity,
    /// Prefer spreading over hosts and PoPs.
    Spread,
}

impl From<GroupKindSpec> for locus_sdk::GroupKind {
    fn from(k: GroupKindSpec) -> Self {
        match k {
            GroupKindSpec::Affinity => locus_sdk::GroupKind::Affinity,
            GroupKindSpec::AntiAffinity => locus_sdk::GroupKind::AntiAffinity,
            GroupKindSpec::Spread => locus_sdk::GroupKind::Spread,
        }
    }
}

/// Membership of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct GroupRef {
    /// The group's name; created on first use.
    pub name: String,
    /// How members relate; must match the group's kind when it exists.
    pub kind: GroupKindSpec,
}

/// What the agent does when a VM that should run is found stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum RestartPolicy {
    /// Start it again (with a growing delay if it keeps stopping).
    #[default]
    Always,
    /// Report it and leave it stopped.
    Never,
}

/// A request for one VM: what to run, and the constraints on where.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VmRequest {
    /// Unique name: 1 to 64 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit.
    pub name: String,
    /// Virtual CPUs, at least 1.
    pub vcpus: u32,
    /// Memory in MiB, at least 1.
    pub memory_mib: u32,
    /// Disk in GiB.
    #[serde(default)]
    pub disk_gib: u32,
    /// Expected CPU demand in milli-CPUs until measured; half the vCPUs if absent.
    #[serde(default)]
    pub load_cpu_milli: Option<u32>,
    /// The group the VM joins.
    #[serde(default)]
    pub group: Option<GroupRef>,
    /// Jurisdiction codes the VM may run in; empty means anywhere.
    #[serde(default)]
    pub jurisdictions: Vec<String>,
    /// Where the VM's users are.
    #[serde(default)]
    pub user: Option<Location>,
    /// Largest acceptable round-trip latency to the users, in milliseconds.
    #[serde(default)]
    pub max_latency_ms: Option<f32>,
    /// The image the VM boots from: the name of an image in the host's
    /// image store (`locus image list`) or its `sha256:<hex>` content hash.
    /// The VM gets its own copy-on-write disk on it. Paths are refused.
    /// None boots a diskless VM.
    #[serde(default)]
    pub image: Option<String>,
    /// The libvirt network the VM's one interface joins; none means no NIC.
    #[serde(default)]
    pub network: Option<String>,
    /// Free-form labels: up to 32, keys follow the naming rule, values up
    /// to 256 bytes of any text.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// What to do when the VM is found stopped while it should run.
    #[serde(default)]
    pub restart: RestartPolicy,
}

/// What is wrong with a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The name breaks the naming rule.
    #[error("invalid name {0}: use 1 to 64 of A-Z a-z 0-9 . _ -, starting with a letter or digit")]
    Name(Shown),
    /// A size of zero.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    /// Coordinates off the globe.
    #[error(
        "user location ({lat}, {lon}) is not on Earth: latitude must be within ±90 and longitude within ±180"
    )]
    Location {
        /// Latitude given.
        lat: String,
        /// Longitude given.
        lon: String,
    },
    /// A latency bound that is not a positive number.
    #[error("max-latency-ms must be a positive number of milliseconds, not {0}")]
    Latency(String),
    /// A latency bound without a user location to measure from.
    #[error("max-latency-ms needs a user location")]
    LatencyWithoutUser,
    /// An image reference that is neither an image name nor a content hash.
    #[error(
        "image {0} is not an image name or sha256:<64 hex digits>: name an image of the host's store (`locus image list`); paths are not accepted"
    )]
    Image(Shown),
    /// A declared CPU load above what the VM's vCPUs can use.
    #[error("load-cpu-milli {load} is more than {vcpus} vCPU(s) can use (at most {max})")]
    Load {
        /// Load given.
        load: u32,
        /// The VM's vCPUs.
        vcpus: u32,
        /// The most allowed: 1000 per vCPU.
        max: u32,
    },
    /// A network name that breaks the naming rule.
    #[error("invalid network name {0:?}: use 1 to 64 of A-Z a-z 0-9 . _ -, starting with a letter or digit")]
    Network(String),
    /// Too many labels, or a label that breaks its rule.
    #[error("invalid labels: {0}")]
    Labels(String),
}

/// A name as quoted in an error: in full when short, else its start and length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown(pub String);

impl Shown {
    fn of(name: &str) -> Self {
        if name.chars().count() <= MAX_NAME_LEN {
            Shown(format!("{name:?}"))
        } else {
            let start: String = name.chars().take(16).collect();
            Shown(format!("{start:?}… ({} characters)", name.chars().count()))
        }
    }
}

impl std::fmt::Display for Shown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// True when `name` follows the naming rule for VMs and groups.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// True when `image` names an image: by name (the naming rule) or by
/// content hash (`sha256:` and 64 lowercase hex digits). Neither form can
/// hold a `/`, so no reference reaches outside an image store.
pub fn valid_image_ref(image: &str) -> bool {
    match image.strip_prefix(IMAGE_HASH_PREFIX) {
        Some(hex) => valid_image_hash(hex),
        None => valid_name(image),
    }
}

/// True when `hex` is a SHA-256 in 64 lowercase hex digits.
pub fn valid_image_hash(hex: &str) -> bool {
    hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl VmRequest {
    /// Checks everything that can be checked without the cluster.
    pub fn validate(&self) -> Result<(), RequestError> {
        if !valid_name(&self.name) {
            return Err(RequestError::Name(Shown::of(&self.name)));
        }
        if let Some(g) = &self.group
            && !valid_name(&g.name)
        {
            return Err(RequestError::Name(Shown::of(&g.name)));
        }
        if self.vcpus == 0 {
            return Err(RequestError::Zero("vcpus"));
        }
        if self.memory_mib == 0 {
            return Err(RequestError::Zero("memory-mib"));
        }
        let max_load = self.vcpus.saturating_mul(1000);
        if let Some(load) = self.load_cpu_milli
            && load > max_load
        {
            return Err(RequestError::Load { load, vcpus: self.vcpus, max: max_load });
        }
        if let Some(l) = self.user
            && !(l.lat.is_finite() && l.lon.is_finite() && l.lat.abs() <= 90.0 && l.lon.abs() <= 180.0)
        {
            return Err(RequestError::Location { lat: l.lat.to_string(), lon: l.lon.to_string() });
        }
        match self.max_latency_ms {
            Some(ms) if !(ms.is_finite() && ms > 0.0) => return Err(RequestError::Latency(ms.to_string())),
            Some(_) if self.user.is_none() => return Err(RequestError::LatencyWithoutUser),
            _ => {}
        }
        if let Some(image) = &self.image
            && !valid_image_ref(image)
        {
            return Err(RequestError::Image(Shown::of(image)));
        }
        if let Some(network) = &self.network
            && !valid_name(network)
        {
            return Err(RequestError::Network(network.clone()));
        }
        self.validate_labels()
    }

    fn validate_labels(&self) -> Result<(), RequestError> {
        if self.labels.len() > MAX_LABELS {
            return Err(RequestError::Labels(format!("{} labels, at most {MAX_LABELS}", self.labels.len())));
        }
        for (key, value) in &self.labels {
            if !valid_name(key) {
                return Err(RequestError::Labels(format!("key {key:?} breaks the naming rule")));
            }
            if value.len() > MAX_LABEL_VALUE || value.chars().any(|c| c.is_control() && c != '\t') {
                return Err(RequestError::Labels(format!(
                    "value of {key:?} must be at most {MAX_LABEL_VALUE} bytes without control characters"
                )));
            }
        }
        Ok(())
    }

    /// The size asked for.
    pub fn size(&self) -> locus_sdk::Resources {
        locus_sdk::Resources::new(self.vcpus, self.memory_mib, self.disk_gib)
    }

    /// Expected CPU demand, milli-CPUs.
    pub fn expected_load(&self) -> u32 {
        self.load_cpu_milli.unwrap_or_else(|| self.vcpus.saturating_mul(500))
    }

    /// The latency bound in microseconds.
    pub fn max_latency_us(&self) -> Option<u32> {
        self.max_latency_ms.map(|ms| (f64::from(ms) * 1000.0).min(f64::from(u32::MAX - 1)) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(name: &str) -> VmRequest {
        VmRequest { name: name.to_owned(), vcpus: 1, memory_mib: 512, ..VmRequest::default() }
    }

    #[test]
    fn names_follow_the_rule() {
        assert!(vm("web-1.prod_a").validate().is_ok());
        for bad in ["", "-x", "a<b>", "a b", "é", &"x".repeat(65)] {
            assert!(matches!(vm(bad).validate(), Err(RequestError::Name(_))), "{bad:?}");
        }
        let long = vm(&"x".repeat(300)).validate().expect_err("too long").to_string();
        assert!(long.contains("(300 characters)") && long.len() < 150, "{long}");
    }

    #[test]
    fn sizes_locations_and_bounds_are_checked() {
        let mut r = vm("a");
        r.vcpus = 0;
        assert_eq!(r.validate().unwrap_err().to_string(), "vcpus must be at least 1");
        let mut r = vm("a");
        r.user = Some(Location { lat: 95.0, lon: 0.0 });
        assert!(matches!(r.validate(), Err(RequestError::Location { .. })));
        let mut r = vm("a");
        r.max_latency_ms = Some(10.0);
        assert_eq!(r.validate(), Err(RequestError::LatencyWithoutUser));
        r.user = Some(Location { lat: 1.0, lon: 1.0 });
        assert_eq!(r.max_latency_us(), Some(10_000));
        r.max_latency_ms = Some(f32::NAN);
        assert!(matches!(r.validate(), Err(RequestError::Latency(_))));
    }

    #[test]
    fn images_networks_and_labels_are_checked() {
        let mut r = vm("a");
        for bad in ["/etc/shadow", "/dev/vda", "../disks/b.qcow2", "a/b", "sha256:ABC", ".hidden", ""] {
            r.image = Some(bad.into());
            assert!(matches!(r.validate(), Err(RequestError::Image(_))), "{bad}");
        }
        r.image = Some(format!("sha256:{}", "0f".repeat(32)));
        assert!(r.validate().is_ok());
        r.image = Some("debian-12.qcow2".into());
        r.network = Some("default net".into());
        assert!(matches!(r.validate(), Err(RequestError::Network(_))));
        r.network = Some("default".into());
        r.labels.insert("owner".into(), "<team & \"ops\">".into());
        assert!(r.validate().is_ok(), "label values may hold any printable text");
        r.labels.insert("bad key".into(), "x".into());
        assert!(matches!(r.validate(), Err(RequestError::Labels(_))));
    }

    #[test]
    fn a_declared_load_is_bounded_by_the_vcpus() {
        let mut r = vm("a");
        r.vcpus = 2;
        r.load_cpu_milli = Some(2000);
        assert!(r.validate().is_ok(), "two busy vCPUs");
        r.load_cpu_milli = Some(u32::MAX);
        let e = r.validate().expect_err("more than two vCPUs can use");
        assert_eq!(e.to_string(), "load-cpu-milli 4294967295 is more than 2 vCPU(s) can use (at most 2000)");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json_like(
            r#"name = "a"
vcpus = 1
memory-mib = 1
colour = "red""#,
        );
        assert!(err.contains("unknown field `colour`"), "{err}");
    }

    fn serde_json_like(toml_text: &str) -> String {
        toml::from_str::<VmRequest>(toml_text).unwrap_err().to_string()
    }
}
