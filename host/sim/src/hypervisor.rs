//! A simulated host's hypervisor: the domains it holds (state, mark,
//! generation, size, CPU use), how long each command takes, and how long a
//! live migration takes from the guest's memory, its dirty rate and the
//! link's bandwidth (pre-copy: rounds that resend what the guest dirtied
//! meanwhile, until what is left fits the downtime allowed, or the rounds
//! run out and the guest is paused for the rest).
//!
//! It never decides anything a real hypervisor would not: the node's
//! commands are carried out as libvirt would, and refused where it would.

use locus_core::hypervisor::{DomainSeen, DomainState, HvCommand, HvError, HvErrorKind, Observation};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::rc::Rc;

/// How a hypervisor behaves (`[hypervisor]` in a scenario).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct HvConfig {
    /// Defining, undefining, destroying or marking a domain, µs.
    pub define_us: u64,
    /// Booting a domain, µs.
    pub start_us: u64,
    /// Migration bandwidth between two hosts, bytes per second.
    pub bandwidth_bytes_per_s: u64,
    /// Pages a busy guest dirties, bytes per second per vCPU at full load.
    pub dirty_bytes_per_s_per_vcpu: u64,
    /// What may be left to copy with the guest paused, µs of bandwidth.
    pub max_downtime_us: u64,
    /// Pre-copy rounds before the guest is paused regardless.
    pub max_rounds: u32,
    /// Whether hosts live-migrate: when not, a move stops the guest,
    /// defines it at the destination and boots it there (a cold move).
    pub live_migration: bool,
}

impl Default for HvConfig {
    fn default() -> Self {
        HvConfig {
            define_us: 20_000,
            start_us: 300_000,
            // 10 Gbit/s.
            bandwidth_bytes_per_s: 1_250_000_000,
            dirty_bytes_per_s_per_vcpu: 50_000_000,
            max_downtime_us: 300_000,
            max_rounds: 30,
            live_migration: true,
        }
    }
}

/// How long a live migration takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrationTime {
    /// From start to the guest running at the destination, µs.
    pub total_us: u64,
    /// With the guest paused, µs.
    pub downtime_us: u64,
    /// Bytes sent.
    pub bytes: u64,
}

impl HvConfig {
    /// A live migration of `memory` bytes dirtied at `dirty` bytes/s.
    pub fn migration(&self, memory: u64, dirty: u64) -> MigrationTime {
        let bw = self.bandwidth_bytes_per_s.max(1) as f64;
        let stop_at = bw * self.max_downtime_us as f64 / 1e6;
        let (mut left, mut total_s, mut bytes) = (memory as f64, 0.0, 0.0);
        for _ in 0..self.max_rounds {
            if left <= stop_at {
                break;
            }
            let round_s = left / bw;
            total_s += round_s;
            bytes += left;
            left = (dirty as f64 * round_s).min(memory as f64);
        }
        let down_s = left / bw;
        MigrationTime {
            total_us: ((total_s + down_s) * 1e6) as u64,
            downtime_us: (down_s * 1e6) as u64,
            bytes: (bytes + left) as u64,
        }
    }
}

/// One domain.
#[derive(Debug, Clone, PartialEq)]
pub struct Domain {
    /// Run state.
    pub state: DomainState,
    /// The host whose agent its mark names: its hypervisor's own name
    /// while it is this host's, so that telling whose it is at every
    /// sample compares pointers, not text in another allocation.
    pub owner: Rc<str>,
    /// The generation in its mark.
    pub generation: u64,
    /// Its memory, MiB.
    pub memory_mib: u32,
    /// Its vCPUs.
    pub vcpus: u32,
    /// CPU it uses now, milli-CPUs (the workload sets it).
    pub cpu_milli: u32,
}

/// A host's hypervisor.
#[derive(Debug, Default)]
pub struct Hypervisor {
    /// This host's name, which its agent's marks carry.
    pub host: Rc<str>,
    /// Its domains, by name.
    pub domains: BTreeMap<String, Domain>,
}

impl Hypervisor {
    /// The hypervisor of host `host`, empty.
    pub fn new(host: &str) -> Self {
        Hypervisor { host: host.into(), domains: BTreeMap::new() }
    }

    /// What a sample sees.
    pub fn observation(&self) -> Observation {
        let mut o = Observation { ours: Vec::with_capacity(self.domains.len()), others: vec![] };
        for (name, d) in &self.domains {
            if d.owner == self.host {
                o.ours.push(DomainSeen {
                    name: name.clone(),
                    state: d.state,
                    cpu_time_ns: 0,
                    cpu_milli: d.state.is_active().then_some(d.cpu_milli),
                    memory_kib: u64::from(d.memory_mib) * 1024,
                    generation: Some(d.generation),
                });
            } else {
                o.others.push(name.clone());
            }
        }
        o
    }

    /// Carries out `cmd` (not `MigrateOut`, which the world times): the
    /// result, and how long it took, µs.
    pub fn run(&mut self, cmd: &HvCommand, config: &HvConfig) -> (Result<DomainState, HvError>, u64) {
        let name = cmd.vm().to_owned();
        let refused = |message: String| Err(HvError { kind: HvErrorKind::Refused, message });
        let ours = self.domains.get(&name).map(|d| d.owner == self.host);
        let result = match cmd {
            HvCommand::Define { spec, generation } | HvCommand::Receive { spec, live: false, generation } => {
                match ours {
                    Some(true) => Ok(self.domains[&name].state),
                    Some(false) => refused(format!("domain {name} exists and is not this agent's")),
                    None => {
                        let domain = Domain {
                            state: DomainState::Shutoff,
                            owner: self.host.clone(),
                            generation: *generation,
                            memory_mib: spec.memory_mib,
                            vcpus: spec.vcpus,
                            cpu_milli: spec.expected_load(),
                        };
                        self.domains.insert(name, domain);
                        Ok(DomainState::Shutoff)
                    }
                }
            }
            HvCommand::Receive { live: true, .. } => Ok(DomainState::Missing),
            HvCommand::Start(_) => match self.domains.get_mut(&name) {
                Some(d) if d.owner == self.host => {
                    d.state = DomainState::Running;
                    return (Ok(d.state), config.start_us);
                }
                Some(_) => refused(format!("domain {name} is not this agent's")),
                None => Err(HvError { kind: HvErrorKind::NotFound, message: format!("no domain {name}") }),
            },
            // Simulated guests heed ACPI at once.
            HvCommand::Shutdown(_) | HvCommand::Destroy(_) => match self.domains.get_mut(&name) {
                Some(d) if d.owner == self.host => {
                    d.state = DomainState::Shutoff;
                    Ok(d.state)
                }
                Some(_) => refused(format!("domain {name} is not this agent's")),
                None => Ok(DomainState::Missing),
            },
            HvCommand::Undefine(_) => match ours {
                Some(false) => refused(format!("domain {name} is not this agent's")),
                _ => {
                    self.domains.remove(&name);
                    Ok(DomainState::Missing)
                }
            },
            HvCommand::Settle(_) => Ok(self.domains.get(&name).map_or(DomainState::Missing, |d| d.state)),
            HvCommand::Discard { from, .. } => {
                if self.domains.get(&name).is_some_and(|d| *d.owner == **from && !d.state.is_active()) {
                    self.domains.remove(&name);
                }
                Ok(DomainState::Missing)
            }
            HvCommand::Adopt { from, generation, .. } => match self.domains.get_mut(&name) {
                Some(d) if d.owner == self.host => Ok(d.state),
                Some(d) if *d.owner == **from => {
                    d.owner = self.host.clone();
                    d.generation = *generation;
                    Ok(d.state)
                }
                Some(d) => refused(format!("domain {name} is marked as {}'s, not {from}'s", d.owner)),
                None => Err(HvError {
                    kind: HvErrorKind::NotFound,
                    message: format!("vm {name} has not arrived"),
                }),
            },
            HvCommand::MigrateOut { .. } => {
                Err(HvError { kind: HvErrorKind::Unavailable, message: "timed by the world".into() })
            }
        };
        (result, config.define_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_guest_migrates_in_one_round_and_a_busy_one_takes_longer_and_pauses_longer() {
        let c = HvConfig::default();
        let gib = 1u64 << 30;
        let idle = c.migration(gib, 0);
        // 1 GiB at 1.25 GB/s: about 0.86 s, no downtime to speak of.
        assert!((850_000..880_000).contains(&idle.total_us), "{idle:?}");
        assert_eq!(idle.downtime_us, 0);
        let busy = c.migration(gib, 4 * c.dirty_bytes_per_s_per_vcpu);
        assert!(busy.total_us > idle.total_us && busy.bytes > idle.bytes, "{busy:?}");
        assert!(busy.downtime_us <= c.max_downtime_us, "{busy:?}");
        // Dirtying faster than the link: the rounds run out and the guest pauses for a whole copy.
        let hopeless = c.migration(gib, 2 * c.bandwidth_bytes_per_s);
        assert!(hopeless.downtime_us > 800_000, "{hopeless:?}");
    }

    #[test]
    fn commands_act_as_libvirt_would_and_anothers_domain_is_never_touched() {
        let c = HvConfig::default();
        let mut hv = Hypervisor::new("h1");
        let spec =
            locus_core::VmRequest { name: "a".into(), vcpus: 1, memory_mib: 512, ..Default::default() };
        let define = HvCommand::Define { spec: Box::new(spec.clone()), generation: 3 };
        assert_eq!(hv.run(&define, &c).0, Ok(DomainState::Shutoff));
        assert_eq!(hv.run(&HvCommand::Start("a".into()), &c), (Ok(DomainState::Running), c.start_us));
        let seen = hv.observation();
        assert_eq!((seen.ours.len(), seen.ours[0].generation), (1, Some(3)));
        hv.domains.insert("b".into(), Domain { owner: "h2".into(), ..hv.domains["a"].clone() });
        assert!(hv.run(&HvCommand::Destroy("b".into()), &c).0.is_err());
        assert!(hv.run(&HvCommand::Undefine("b".into()), &c).0.is_err());
        assert_eq!(hv.observation().others, ["b"]);
        let b = locus_core::VmRequest { name: "b".into(), ..spec };
        let adopt =
            |from: &str| HvCommand::Adopt { spec: Box::new(b.clone()), from: from.into(), generation: 4 };
        assert!(hv.run(&adopt("h3"), &c).0.is_err(), "marked as h2's, not h3's");
        assert!(hv.run(&adopt("h2"), &c).0.is_ok());
        assert_eq!((&*hv.domains["b"].owner, hv.domains["b"].generation), ("h1", 4));
    }
}
