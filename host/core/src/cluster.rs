//! What agents tell each other, and what each knows of the others: the
//! Discovery Network Tracker's state, sans IO.
//!
//! Every agent publishes a [`HostSummary`] on its PoP's topic at every
//! heartbeat. The PoP's *speaker* (its alive member with the smallest peer
//! id) also publishes a [`PopSummary`] on the global topic. From these,
//! [`Membership`] keeps the agent's PoP's hosts and a summary of every other
//! PoP, and decides liveness: a member not heard from for `suspect-ms` is
//! suspect, after `dead-ms` dead. Other PoPs' members take the liveness their
//! speaker reports. Latency between PoPs is what libp2p's ping measured to
//! their members.

use crate::node::Size;
use crate::request::Location;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A libp2p peer id in its text form; the core only compares and stores it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PeerId(pub String);

impl std::fmt::Display for PeerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a member is believed to be running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Liveness {
    /// Heard from recently.
    Alive,
    /// Not heard from for `suspect-ms`: takes no new VMs.
    Suspect,
    /// Not heard from for `dead-ms`: its VMs are lost.
    Dead,
}

/// One host, as its agent describes it at every heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostSummary {
    /// The agent's peer id.
    pub peer: PeerId,
    /// The host's name.
    pub host: String,
    /// Its PoP.
    pub pop: String,
    /// Allocatable resources.
    pub capacity: Size,
    /// Allocated to VMs.
    pub allocated: Size,
    /// Physical CPU capacity, milli-CPUs.
    pub cpu_milli: u32,
    /// Measured CPU demand of its VMs, milli-CPUs.
    pub load_cpu_milli: u32,
    /// Overloaded, underloaded or normal, as the host judges itself.
    #[serde(default)]
    pub load_state: crate::load::LoadState,
    /// Idle and full-load power, watts.
    pub watts: (u32, u32),
    /// Whether its hypervisor is reachable.
    pub up: bool,
    /// Whether it is draining (takes no new VMs).
    #[serde(default)]
    pub draining: bool,
    /// Whether it is in standby (takes VMs only when no other host can).
    #[serde(default)]
    pub standby: bool,
    /// Power in standby, watts.
    #[serde(default)]
    pub standby_watts: u32,
    /// VMs moving out of it that hold a slot of its PoP's bound on
    /// concurrent migrations (the PoP's speaker counts them).
    #[serde(default)]
    pub moving: Vec<String>,
    /// The VMs it runs.
    pub vms: Vec<String>,
}

/// One PoP, as its speaker describes it on the global topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PopSummary {
    /// The PoP's name.
    pub pop: String,
    /// Its jurisdiction code.
    pub jurisdiction: String,
    /// Where it is.
    pub location: Location,
    /// Unused renewable power, watts.
    pub renewable_watts: u32,
    /// Grid carbon intensity, gCO2/kWh.
    pub carbon_g_per_kwh: u32,
    /// Free resources summed over its live hosts.
    pub free: Size,
    /// The most free memory on any one live host, MiB (a VM must fit one host).
    pub largest_free_memory_mib: u32,
    /// The most free vCPUs on any one live host.
    pub largest_free_vcpus: u32,
    /// Its members and their liveness.
    pub members: Vec<MemberSummary>,
}

/// A member of a PoP in its summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MemberSummary {
    /// Its peer id.
    pub peer: PeerId,
    /// Its host's name.
    pub host: String,
    /// Its liveness as the speaker sees it.
    pub liveness: Liveness,
    /// The VMs it runs (or ran, when dead: these are lost).
    pub vms: Vec<String>,
}

/// Where a VM runs and what it is, as its host records it in the overlay
/// (a Kademlia record under the VM's name, replicated to several agents):
/// found by name from anywhere, and still there when its host is dead, so
/// that a PoP-mate can create the VM again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmLocation {
    /// The agent whose host runs it.
    pub peer: PeerId,
    /// That host.
    pub host: String,
    /// Its PoP.
    pub pop: String,
    /// Its generation (moves and re-creations so far).
    pub generation: u64,
    /// What it should be doing.
    pub desired: crate::intent::Desired,
    /// Its request.
    pub spec: crate::VmRequest,
}

/// What is gossiped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Gossip {
    /// On the PoP's topic.
    Host(HostSummary),
    /// On the global topic.
    Pop(PopSummary),
}

/// Where gossip goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// The topic of one PoP.
    Pop(String),
    /// The topic every agent follows.
    Global,
}

/// Heartbeat and failure-detection timing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct MembershipConfig {
    /// Time between host (and PoP) summaries, ms.
    pub heartbeat_ms: u64,
    /// Silence after which a member is suspect, ms.
    pub suspect_ms: u64,
    /// Silence after which a member is dead, ms.
    pub dead_ms: u64,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig { heartbeat_ms: 500, suspect_ms: 1500, dead_ms: 3000 }
    }
}

/// A member of this agent's PoP.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// Its last summary.
    pub summary: HostSummary,
    /// When it was heard from.
    pub heard: Instant,
    /// Liveness.
    pub liveness: Liveness,
    /// Round trip measured by ping, if any.
    pub rtt: Option<Duration>,
}

/// Another PoP as this agent knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct RemotePop {
    /// Its speaker's last summary.
    pub summary: PopSummary,
    /// Who spoke for it.
    pub speaker: PeerId,
    /// When it was heard from.
    pub heard: Instant,
    /// Smallest round trip measured to any of its members.
    pub rtt: Option<Duration>,
}

/// A liveness change worth reporting.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The member's peer id.
    pub peer: PeerId,
    /// Its host.
    pub host: String,
    /// Its PoP.
    pub pop: String,
    /// New liveness.
    pub liveness: Liveness,
    /// Its VMs (lost when dead).
    pub vms: Vec<String>,
}

/// What an agent knows of the cluster.
#[derive(Debug, Clone)]
pub struct Membership {
    config: MembershipConfig,
    me: PeerId,
    pop: String,
    /// Members of this PoP, self excluded.
    pub members: BTreeMap<PeerId, Member>,
    /// Other PoPs, by name.
    pub pops: BTreeMap<String, RemotePop>,
    /// Last liveness reported per remote member, to report changes once.
    remote: BTreeMap<PeerId, Liveness>,
    /// Round trips to peers outside this PoP, by peer.
    rtts: BTreeMap<PeerId, Duration>,
}

impl Membership {
    /// Membership for peer `me` in PoP `pop`.
    pub fn new(config: MembershipConfig, me: PeerId, pop: String) -> Self {
        Membership {
            config,
            me,
            pop,
            members: BTreeMap::new(),
            pops: BTreeMap::new(),
            remote: BTreeMap::new(),
            rtts: BTreeMap::new(),
        }
    }

    /// Its timing.
    pub fn config(&self) -> &MembershipConfig {
        &self.config
    }

    /// Records a host summary heard on this PoP's topic. Summaries from
    /// other PoPs (a misconfigured or confused peer) are ignored.
    pub fn heard_host(&mut self, now: Instant, from: &PeerId, summary: HostSummary) -> Option<Transition> {
        if summary.pop != self.pop || *from != summary.peer || summary.peer == self.me {
            return None;
        }
        let rtt = self.members.get(from).and_then(|m| m.rtt);
        let before = self.members.get(from).map(|m| m.liveness);
        let member = Member { summary, heard: now, liveness: Liveness::Alive, rtt };
        let t = (before != Some(Liveness::Alive)).then(|| transition(&member, &self.pop));
        self.members.insert(from.clone(), member);
        t
    }

    /// Records a PoP summary heard on the global topic, and reports the
    /// liveness changes it carries for that PoP's members.
    pub fn heard_pop(&mut self, now: Instant, from: &PeerId, summary: PopSummary) -> Vec<Transition> {
        if summary.pop == self.pop {
            return vec![];
        }
        let mut changes = vec![];
        for m in &summary.members {
            if self.remote.insert(m.peer.clone(), m.liveness) != Some(m.liveness) {
                changes.push(Transition {
                    peer: m.peer.clone(),
                    host: m.host.clone(),
                    pop: summary.pop.clone(),
                    liveness: m.liveness,
                    vms: m.vms.clone(),
                });
            }
        }
        let rtt = summary.members.iter().filter_map(|m| self.rtts.get(&m.peer)).min().copied();
        let name = summary.pop.clone();
        self.pops.insert(name, RemotePop { summary, speaker: from.clone(), heard: now, rtt });
        changes
    }

    /// Records a measured round trip to `peer`.
    pub fn measured(&mut self, peer: &PeerId, rtt: Duration) {
        if let Some(m) = self.members.get_mut(peer) {
            m.rtt = Some(rtt);
            return;
        }
        self.rtts.insert(peer.clone(), rtt);
        for p in self.pops.values_mut() {
            if p.summary.members.iter().any(|m| m.peer == *peer) {
                p.rtt = Some(p.rtt.map_or(rtt, |r| r.min(rtt)));
            }
        }
    }

    /// Ages every member; returns the liveness changes.
    pub fn tick(&mut self, now: Instant) -> Vec<Transition> {
        let (suspect, dead) =
            (Duration::from_millis(self.config.suspect_ms), Duration::from_millis(self.config.dead_ms));
        let mut changes = vec![];
        for m in self.members.values_mut() {
            let silent = now.saturating_duration_since(m.heard);
            let liveness = if silent >= dead {
                Liveness::Dead
            } else if silent >= suspect {
                Liveness::Suspect
            } else {
                Liveness::Alive
            };
            if liveness != m.liveness {
                m.liveness = liveness;
                changes.push(transition(m, &self.pop));
            }
        }
        // A PoP whose speaker went silent for long is forgotten until it speaks again.
        let forget = dead * 4;
        self.pops.retain(|_, p| now.saturating_duration_since(p.heard) < forget);
        changes
    }

    /// Whether this agent sees more than half of the hosts it knows of
    /// alive (itself included): its PoP-mates as it hears them, and the
    /// members of PoPs whose speakers it heard lately as they report them.
    /// An agent cut off from the rest sees its peers go silent and must
    /// not act on their deaths: it may be the one that is away.
    pub fn in_majority(&self, now: Instant) -> bool {
        let recent = Duration::from_millis(self.config.dead_ms);
        let mut known = 1 + self.members.len();
        let mut alive = 1 + self.members.values().filter(|m| m.liveness == Liveness::Alive).count();
        for p in self.pops.values() {
            known += p.summary.members.len();
            if now.saturating_duration_since(p.heard) < recent {
                alive += p.summary.members.iter().filter(|m| m.liveness == Liveness::Alive).count();
            }
        }
        2 * alive > known
    }

    /// True when this agent speaks for its PoP: no alive member has a smaller peer id.
    pub fn is_speaker(&self) -> bool {
        self.speaker().is_none()
    }

    /// The PoP-mate that speaks for the PoP: the alive member with the
    /// smallest peer id, or none when that is this agent.
    pub fn speaker(&self) -> Option<&PeerId> {
        self.members
            .iter()
            .find(|(peer, m)| m.liveness == Liveness::Alive && **peer < self.me)
            .map(|(p, _)| p)
    }

    /// This PoP's summary, from this agent's own summary and its members'.
    pub fn pop_summary(&self, own: &HostSummary, pop: &crate::node::PopConfig) -> PopSummary {
        let mut free = Size::default();
        let (mut largest_mem, mut largest_cpu) = (0, 0);
        let mut members = vec![MemberSummary {
            peer: own.peer.clone(),
            host: own.host.clone(),
            liveness: Liveness::Alive,
            vms: own.vms.clone(),
        }];
        let live = std::iter::once(own)
            .chain(self.members.values().filter(|m| m.liveness == Liveness::Alive).map(|m| &m.summary));
        for h in live.filter(|h| h.up) {
            let f = minus(h.capacity, h.allocated);
            free = plus(free, f);
            largest_mem = largest_mem.max(f.memory_mib);
            largest_cpu = largest_cpu.max(f.vcpus);
        }
        for (peer, m) in &self.members {
            members.push(MemberSummary {
                peer: peer.clone(),
                host: m.summary.host.clone(),
                liveness: m.liveness,
                vms: m.summary.vms.clone(),
            });
        }
        PopSummary {
            pop: pop.name.clone(),
            jurisdiction: pop.jurisdiction.clone(),
            location: pop.location,
            renewable_watts: pop.renewable_watts,
            carbon_g_per_kwh: pop.carbon_g_per_kwh,
            free,
            largest_free_memory_mib: largest_mem,
            largest_free_vcpus: largest_cpu,
            members,
        }
    }

    /// The alive members of another PoP, to forward a request to.
    pub fn contacts(&self, pop: &str) -> Vec<PeerId> {
        self.pops
            .get(pop)
            .map(|p| {
                p.summary
                    .members
                    .iter()
                    .filter(|m| m.liveness == Liveness::Alive)
                    .map(|m| m.peer.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Where a VM runs, as far as summaries tell: (peer, host, pop, liveness).
    pub fn find_vm(&self, name: &str) -> Option<(PeerId, String, String, Liveness)> {
        // A dead host's last summary still lists the VMs it ran, one of
        // which may run elsewhere now: a live holder wins, then this PoP's.
        let rank = |l: Liveness| match l {
            Liveness::Alive => 0,
            Liveness::Suspect => 1,
            Liveness::Dead => 2,
        };
        let here = self
            .members
            .iter()
            .filter(|(_, m)| m.summary.vms.iter().any(|v| v == name))
            .map(|(peer, m)| (peer.clone(), m.summary.host.clone(), self.pop.clone(), m.liveness));
        let there = self.pops.values().flat_map(|p| {
            p.summary
                .members
                .iter()
                .filter(|m| m.vms.iter().any(|v| v == name))
                .map(|m| (m.peer.clone(), m.host.clone(), p.summary.pop.clone(), m.liveness))
        });
        here.chain(there).min_by_key(|found| rank(found.3))
    }
}

fn transition(m: &Member, pop: &str) -> Transition {
    Transition {
        peer: m.summary.peer.clone(),
        host: m.summary.host.clone(),
        pop: pop.to_owned(),
        liveness: m.liveness,
        vms: m.summary.vms.clone(),
    }
}

/// `a - b`, never below zero.
pub(crate) fn minus(a: Size, b: Size) -> Size {
    Size {
        vcpus: a.vcpus.saturating_sub(b.vcpus),
        memory_mib: a.memory_mib.saturating_sub(b.memory_mib),
        disk_gib: a.disk_gib.saturating_sub(b.disk_gib),
    }
}

fn plus(a: Size, b: Size) -> Size {
    Size {
        vcpus: a.vcpus.saturating_add(b.vcpus),
        memory_mib: a.memory_mib.saturating_add(b.memory_mib),
        disk_gib: a.disk_gib.saturating_add(b.disk_gib),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(peer: &str, pop: &str) -> HostSummary {
        HostSummary {
            load_state: crate::load::LoadState::Normal,
            peer: PeerId(peer.into()),
            host: format!("h-{peer}"),
            pop: pop.into(),
            capacity: Size { vcpus: 8, memory_mib: 8192, disk_gib: 100 },
            allocated: Size { vcpus: 2, memory_mib: 1024, disk_gib: 0 },
            cpu_milli: 8000,
            load_cpu_milli: 0,
            watts: (100, 200),
            up: true,
            draining: false,
            standby: false,
            standby_watts: 10,
            moving: vec![],
            vms: vec![format!("vm-{peer}")],
        }
    }

    #[test]
    fn a_vm_a_dead_host_still_lists_is_found_where_it_runs_now() {
        let now = Instant::now();
        let mut m = Membership::new(MembershipConfig::default(), PeerId("me".into()), "p".into());
        let (mut a, mut b) = (summary("a", "p"), summary("b", "p"));
        a.vms = vec!["x".into()];
        b.vms = vec!["x".into()];
        m.heard_host(now, &PeerId("a".into()), a);
        m.heard_host(now + Duration::from_secs(3), &PeerId("b".into()), b);
        m.tick(now + Duration::from_millis(3500));
        let (peer, _, _, liveness) = m.find_vm("x").expect("found");
        assert_eq!((peer.0.as_str(), liveness), ("b", Liveness::Alive));
    }

    #[test]
    fn silence_makes_a_member_suspect_then_dead_and_a_word_revives_it() {
        let t0 = Instant::now();
        let mut m = Membership::new(MembershipConfig::default(), PeerId("b".into()), "paris".into());
        let a = PeerId("a".into());
        assert!(m.heard_host(t0, &a, summary("a", "paris")).is_some());
        assert!(!m.is_speaker(), "a < b speaks while alive");
        assert!(m.heard_host(t0, &PeerId("x".into()), summary("a", "paris")).is_none(), "spoofed sender");
        assert!(m.heard_host(t0, &PeerId("c".into()), summary("c", "berlin")).is_none(), "other PoP");
        assert!(m.tick(t0 + Duration::from_millis(1000)).is_empty());
        let s = m.tick(t0 + Duration::from_millis(1600));
        assert_eq!(s[0].liveness, Liveness::Suspect);
        assert!(m.is_speaker(), "b takes over once a is suspect");
        let d = m.tick(t0 + Duration::from_millis(3100));
        assert_eq!((d[0].liveness, d[0].vms.clone()), (Liveness::Dead, vec!["vm-a".to_owned()]));
        let back = m.heard_host(t0 + Duration::from_secs(4), &a, summary("a", "paris")).expect("revived");
        assert_eq!(back.liveness, Liveness::Alive);
    }

    #[test]
    fn pop_summaries_aggregate_live_hosts_and_carry_liveness_across_pops() {
        let t0 = Instant::now();
        let pop = crate::node::PopConfig { name: "paris".into(), ..Default::default() };
        let mut paris = Membership::new(MembershipConfig::default(), PeerId("a".into()), "paris".into());
        paris.heard_host(t0, &PeerId("b".into()), summary("b", "paris"));
        let own = summary("a", "paris");
        let s = paris.pop_summary(&own, &pop);
        assert_eq!((s.free.vcpus, s.free.memory_mib, s.largest_free_memory_mib), (12, 14336, 7168));
        assert_eq!(s.members.len(), 2);

        let mut berlin = Membership::new(MembershipConfig::default(), PeerId("z".into()), "berlin".into());
        let news = berlin.heard_pop(t0, &PeerId("a".into()), s.clone());
        assert_eq!(news.len(), 2, "both members are news");
        berlin.measured(&PeerId("b".into()), Duration::from_millis(12));
        assert_eq!(berlin.pops["paris"].rtt, Some(Duration::from_millis(12)));
        assert_eq!(berlin.find_vm("vm-b").map(|v| v.2), Some("paris".to_owned()));
        assert_eq!(berlin.contacts("paris").len(), 2);

        paris.tick(t0 + Duration::from_secs(4));
        let s = paris.pop_summary(&own, &pop);
        assert_eq!(s.free.vcpus, 6, "a dead host's room is not offered");
        let news = berlin.heard_pop(t0 + Duration::from_secs(4), &PeerId("a".into()), s);
        assert_eq!(news.iter().map(|t| t.liveness).collect::<Vec<_>>(), [Liveness::Dead]);
        assert_eq!(berlin.contacts("paris"), [PeerId("a".into())]);
    }
}
