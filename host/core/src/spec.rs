//! Cluster and request descriptions as people write them (TOML or JSON):
//! the schema, its checks, and how it becomes a [`Model`] or a list of
//! [`VmRequest`]s. Parsing the text is the caller's business; this module
//! only sees deserialized values.

use crate::model::{HostState, Model, ModelError};
use crate::request::{Location, RequestError, VmRequest};
use locus_sdk::Resources;
use serde::Deserialize;

/// A whole cluster description.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// The PoPs.
    #[serde(default, rename = "pop")]
    pub pops: Vec<PopSpec>,
    /// The hosts.
    #[serde(default, rename = "host")]
    pub hosts: Vec<HostSpec>,
    /// Measured latencies between PoPs; others are estimated from coordinates.
    #[serde(default, rename = "latency")]
    pub latencies: Vec<LatencySpec>,
    /// VMs already running.
    #[serde(default, rename = "vm")]
    pub vms: Vec<VmSpec>,
}

/// A PoP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PopSpec {
    /// Unique name.
    pub name: String,
    /// ISO 3166-1 alpha-2 code.
    pub jurisdiction: String,
    /// Coordinates.
    pub location: Location,
    /// Unused renewable power, watts.
    #[serde(default)]
    pub renewable_watts: u32,
    /// Grid carbon intensity, gCO2/kWh.
    #[serde(default = "default_carbon")]
    pub carbon_g_per_kwh: u32,
}

fn default_carbon() -> u32 {
    300
}

/// One host, or `count` identical hosts named `NAME-1` … `NAME-count`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HostSpec {
    /// Unique name (or prefix, with `count`).
    pub name: String,
    /// Its PoP's name.
    pub pop: String,
    /// Allocatable vCPUs.
    pub vcpus: u32,
    /// Allocatable memory, MiB.
    pub memory_mib: u32,
    /// Allocatable disk, GiB.
    #[serde(default)]
    pub disk_gib: u32,
    /// Physical CPUs; defaults to `vcpus` (no overcommit).
    #[serde(default)]
    pub cpus: Option<u32>,
    /// Idle power, watts.
    #[serde(default = "default_idle")]
    pub idle_watts: u32,
    /// Full-load power, watts.
    #[serde(default = "default_max")]
    pub max_watts: u32,
    /// State.
    #[serde(default)]
    pub state: HostState,
    /// How many such hosts.
    #[serde(default)]
    pub count: Option<u32>,
}

fn default_idle() -> u32 {
    100
}

fn default_max() -> u32 {
    250
}

/// A measured latency between two PoPs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LatencySpec {
    /// One PoP.
    pub a: String,
    /// The other.
    pub b: String,
    /// Round-trip time, milliseconds.
    pub rtt_ms: f32,
}

/// A VM already running on a named host.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct VmSpec {
    /// The host it runs on.
    pub host: String,
    /// The VM, as it was requested.
    #[serde(flatten)]
    pub vm: VmRequest,
}

/// A list of requests to place, in order.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RequestsSpec {
    /// Single requests.
    #[serde(default, rename = "request")]
    pub requests: Vec<VmRequest>,
    /// Runs of similar requests.
    #[serde(default, rename = "batch")]
    pub batches: Vec<BatchSpec>,
}

/// `count` requests like `vm`, named `NAME-1` … `NAME-count`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSpec {
    /// How many.
    pub count: u32,
    /// The template.
    pub vm: VmRequest,
}

/// What is wrong with a description.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A model rule was broken.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A request or VM is malformed.
    #[error("{what}: {error}")]
    Request {
        /// Which entry.
        what: String,
        /// The problem.
        error: RequestError,
    },
    /// A value out of range.
    #[error("{0}")]
    Invalid(String),
}

/// Most hosts or requests one `count` may expand to.
pub const MAX_COUNT: u32 = 1_000_000;

fn expand(name: &str, count: Option<u32>) -> Result<Vec<String>, SpecError> {
    match count {
        None => Ok(vec![name.to_owned()]),
        Some(0) => Err(SpecError::Invalid(format!("{name}: count must be at least 1"))),
        Some(n) if n > MAX_COUNT => {
            Err(SpecError::Invalid(format!("{name}: count {n} is above {MAX_COUNT}")))
        }
        Some(n) => Ok((1..=n).map(|i| format!("{name}-{i}")).collect()),
    }
}

impl ClusterSpec {
    /// Builds the model.
    pub fn build(&self) -> Result<Model, SpecError> {
        let mut m = Model::new();
        for p in &self.pops {
            let l = p.location;
            if !(l.lat.is_finite() && l.lon.is_finite() && l.lat.abs() <= 90.0 && l.lon.abs() <= 180.0) {
                return Err(SpecError::Invalid(format!("pop {}: location is not on Earth", p.name)));
            }
            m.add_pop(&p.name, &p.jurisdiction, l.into(), p.renewable_watts, p.carbon_g_per_kwh)?;
        }
        for h in &self.hosts {
            if h.vcpus == 0 || h.memory_mib == 0 {
                return Err(SpecError::Invalid(format!(
                    "host {}: vcpus and memory-mib must be at least 1",
                    h.name
                )));
            }
            if h.max_watts < h.idle_watts {
                return Err(SpecError::Invalid(format!("host {}: max-watts is below idle-watts", h.name)));
            }
            let capacity = Resources::new(h.vcpus, h.memory_mib, h.disk_gib);
            let cpu_milli = h.cpus.unwrap_or(h.vcpus).saturating_mul(1000);
            for name in expand(&h.name, h.count)? {
                let id = m.add_host(&name, &h.pop, capacity, cpu_milli, (h.idle_watts, h.max_watts))?;
                m.set_host_state(id, h.state);
            }
        }
        for l in &self.latencies {
            if !(l.rtt_ms.is_finite() && l.rtt_ms >= 0.0) {
                return Err(SpecError::Invalid(format!("latency {}-{}: rtt-ms must be positive", l.a, l.b)));
            }
            let (a, b) = (m.pop_id(&l.a)?, m.pop_id(&l.b)?);
            m.set_latency(a, b, (f64::from(l.rtt_ms) * 1000.0) as u32);
        }
        for v in &self.vms {
            place_existing(&mut m, v)?;
        }
        Ok(m)
    }
}

fn place_existing(m: &mut Model, v: &VmSpec) -> Result<(), SpecError> {
    let r = &v.vm;
    r.validate().map_err(|error| SpecError::Request { what: format!("vm {}", r.name), error })?;
    let host = m.host_id(&v.host)?;
    m.record_placement(r, host)?;
    Ok(())
}

impl RequestsSpec {
    /// The requests in order: singles first, then each batch expanded.
    pub fn expand(&self) -> Result<Vec<VmRequest>, SpecError> {
        let mut out = self.requests.clone();
        for b in &self.batches {
            for name in expand(&b.vm.name, Some(b.count))? {
                out.push(VmRequest { name, ..b.vm.clone() });
            }
        }
        for r in &out {
            r.validate()
                .map_err(|error| SpecError::Request { what: format!("request {}", r.name), error })?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = r#"
[[pop]]
name = "paris"
jurisdiction = "FR"
location = { lat = 48.86, lon = 2.35 }

[[pop]]
name = "berlin"
jurisdiction = "DE"
location = { lat = 52.52, lon = 13.40 }
carbon-g-per-kwh = 400

[[host]]
name = "paris"
pop = "paris"
vcpus = 32
memory-mib = 65536
count = 3

[[host]]
name = "berlin-1"
pop = "berlin"
vcpus = 64
cpus = 32
memory-mib = 131072
state = "draining"

[[latency]]
a = "paris"
b = "berlin"
rtt-ms = 11.5

[[vm]]
host = "paris-2"
name = "db"
vcpus = 4
memory-mib = 8192
group = { name = "dbs", kind = "anti-affinity" }
"#;

    #[test]
    fn a_cluster_file_becomes_a_model() {
        let spec: ClusterSpec = toml::from_str(CLUSTER).expect("parses");
        let m = spec.build().expect("builds");
        assert_eq!(m.hosts.len(), 4);
        assert_eq!(m.hosts[2].name, "paris-3");
        assert_eq!(m.hosts[3].cpu_milli, 32_000);
        assert_eq!(m.hosts[3].state, HostState::Draining);
        assert_eq!(m.latency(crate::PopId(0), crate::PopId(1)), 11_500);
        assert_eq!(m.hosts[1].vm_count, 1);
        assert_eq!(m.pops[1].carbon_g_per_kwh, 400);
    }

    #[test]
    fn mistakes_are_named() {
        let bad = CLUSTER.replace("pop = \"berlin\"", "pop = \"bonn\"");
        let err = toml::from_str::<ClusterSpec>(&bad).expect("parses").build().unwrap_err();
        assert_eq!(err.to_string(), "unknown pop \"bonn\"");
        let bad = CLUSTER.replace("count = 3", "count = 0");
        let err = toml::from_str::<ClusterSpec>(&bad).expect("parses").build().unwrap_err();
        assert!(err.to_string().contains("count must be at least 1"));
    }

    #[test]
    fn batches_expand_in_order() {
        let spec: RequestsSpec = toml::from_str(
            "[[request]]\nname='a'\nvcpus=1\nmemory-mib=1\n[[batch]]\ncount=2\nvm={name='web',vcpus=2,memory-mib=2}",
        )
        .expect("parses");
        let names: Vec<_> = spec.expand().expect("valid").into_iter().map(|r| r.name).collect();
        assert_eq!(names, ["a", "web-1", "web-2"]);
    }
}
