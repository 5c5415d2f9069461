//! The scheduling model: PoPs, hosts, VMs and groups, with the allocation
//! totals every decision needs kept up to date as VMs come and go.
//!
//! Identifiers are dense indexes ([`PopId`], [`HostId`], [`VmId`],
//! [`GroupId`]) so that building a policy view is a walk over vectors. The
//! model does no IO and reads no clock; it is changed only through its
//! methods, which keep the totals consistent.

use locus_sdk::{Coordinates, GroupKind, Resources};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Index of a PoP in [`Model::pops`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PopId(pub u32);
/// Index of a host in [`Model::hosts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HostId(pub u32);
/// Index of a VM in [`Model::vms`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VmId(pub u32);
/// Index of a group in [`Model::groups`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupId(pub u32);

/// A point of presence.
#[derive(Debug, Clone, PartialEq)]
pub struct Pop {
    /// Operator-chosen name, unique.
    pub name: String,
    /// Index into [`Model::jurisdictions`].
    pub jurisdiction: u32,
    /// Where it is.
    pub location: Coordinates,
    /// Unused renewable power, watts.
    pub renewable_watts: u32,
    /// Grid carbon intensity, gCO2/kWh.
    pub carbon_g_per_kwh: u32,
    /// Sum of the capacity of its hosts that are up.
    pub capacity: Resources,
    /// Sum of the allocation on those hosts.
    pub allocated: Resources,
    /// VMs on those hosts.
    pub vm_count: u32,
}

/// Whether a host takes new VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum HostState {
    /// Running and accepting VMs.
    #[default]
    Up,
    /// Running its VMs but accepting no new ones (maintenance).
    Draining,
    /// Unreachable or powered off.
    Down,
    /// Emptied and in standby (powered down): takes a VM only when no
    /// other host can, and wakes for it.
    Standby,
}

/// A physical host.
#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    /// Operator-chosen name, unique.
    pub name: String,
    /// Its PoP.
    pub pop: PopId,
    /// Allocatable resources.
    pub capacity: Resources,
    /// Physical CPU capacity, milli-CPUs.
    pub cpu_milli: u32,
    /// Idle power, watts.
    pub idle_watts: u32,
    /// Full-load power, watts.
    pub max_watts: u32,
    /// Power in standby, watts.
    pub standby_watts: u32,
    /// Whether it takes new VMs.
    pub state: HostState,
    /// Sum of its VMs' sizes.
    pub allocated: Resources,
    /// Sum of its VMs' measured CPU demand, milli-CPUs.
    pub load_cpu_milli: u32,
    /// Number of VMs.
    pub vm_count: u32,
    /// The images its store holds, as sorted keys
    /// ([`crate::request::image_key`]).
    pub images: Vec<u64>,
}

impl Host {
    /// Whether its store holds the image with key `key`.
    pub fn holds_image(&self, key: u64) -> bool {
        self.images.binary_search(&key).is_ok()
    }

    /// Resources still free.
    pub fn free(&self) -> Resources {
        self.capacity.minus(self.allocated)
    }

    /// Power drawn now under a linear model between idle and full load.
    pub fn current_watts(&self) -> u32 {
        if self.state == HostState::Standby {
            return self.standby_watts;
        }
        if self.cpu_milli == 0 {
            return self.idle_watts;
        }
        let busy = u64::from(self.load_cpu_milli.min(self.cpu_milli));
        let dynamic = u64::from(self.max_watts.saturating_sub(self.idle_watts));
        self.idle_watts + (dynamic * busy / u64::from(self.cpu_milli)) as u32
    }
}

/// A VM the model knows to be placed.
#[derive(Debug, Clone, PartialEq)]
pub struct Vm {
    /// Tenant-chosen name, unique.
    pub name: String,
    /// Where it runs.
    pub host: HostId,
    /// Its size.
    pub size: Resources,
    /// Measured CPU demand, milli-CPUs.
    pub load_cpu_milli: u32,
    /// Its group.
    pub group: Option<GroupId>,
    /// Jurisdictions it may run in; empty means anywhere.
    pub jurisdictions: Vec<u32>,
}

/// A named group of VMs.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// Tenant-chosen name, unique.
    pub name: String,
    /// How its members relate.
    pub kind: GroupKind,
    /// Members per host, for the anti-affinity filter and the policy view.
    pub members: HashMap<HostId, u32>,
}

/// Why the model refused a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// A name is already taken.
    #[error("{kind} {name:?} already exists")]
    Duplicate {
        /// What kind of object.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// A name or id refers to nothing.
    #[error("unknown {kind} {name:?}")]
    Unknown {
        /// What kind of object.
        kind: &'static str,
        /// The name or id.
        name: String,
    },
    /// A group was redeclared with another kind.
    #[error("group {name:?} is {existing:?}, not {requested:?}")]
    GroupKindMismatch {
        /// The group.
        name: String,
        /// Its kind.
        existing: GroupKind,
        /// The kind asked for.
        requested: GroupKind,
    },
    /// More distinct jurisdictions than a VM fence can express.
    #[error("at most 64 jurisdictions are supported, {name:?} would be the 65th")]
    TooManyJurisdictions {
        /// The jurisdiction refused.
        name: String,
    },
}

/// The whole model.
#[derive(Debug, Clone, Default)]
pub struct Model {
    /// Jurisdiction codes, interned.
    pub jurisdictions: Vec<String>,
    /// PoPs.
    pub pops: Vec<Pop>,
    /// Hosts.
    pub hosts: Vec<Host>,
    /// VMs; a removed VM leaves `None`.
    pub vms: Vec<Option<Vm>>,
    /// Groups.
    pub groups: Vec<Group>,
    /// Round-trip latency between PoPs, µs, row-major (see the WIT docs).
    pub pop_latency_us: Vec<u32>,
    /// Name → index, one table per kind of object.
    names: [HashMap<String, u32>; 4],
}

/// The kinds of named objects, indexing `Model::names`.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Pop,
    Host,
    Vm,
    Group,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Pop => "pop",
            Kind::Host => "host",
            Kind::Vm => "vm",
            Kind::Group => "group",
        }
    }
}

impl Model {
    /// An empty model.
    pub fn new() -> Self {
        Self::default()
    }

    fn lookup(&self, kind: Kind, name: &str) -> Option<u32> {
        self.names[kind as usize].get(name).copied()
    }

    fn claim(&mut self, kind: Kind, name: &str, id: u32) -> Result<(), ModelError> {
        let table = &mut self.names[kind as usize];
        if table.contains_key(name) {
            return Err(ModelError::Duplicate { kind: kind.as_str(), name: name.to_owned() });
        }
        table.insert(name.to_owned(), id);
        Ok(())
    }

    /// The index of jurisdiction `code`, interning it if new.
    pub fn jurisdiction(&mut self, code: &str) -> Result<u32, ModelError> {
        if let Some(i) = self.jurisdictions.iter().position(|j| j == code) {
            return Ok(i as u32);
        }
        if self.jurisdictions.len() == 64 {
            return Err(ModelError::TooManyJurisdictions { name: code.to_owned() });
        }
        self.jurisdictions.push(code.to_owned());
        Ok((self.jurisdictions.len() - 1) as u32)
    }

    /// The index of jurisdiction `code`, if known.
    pub fn find_jurisdiction(&self, code: &str) -> Option<u32> {
        self.jurisdictions.iter().position(|j| j == code).map(|i| i as u32)
    }

    /// Adds a PoP. Latencies to it are estimated from coordinates until
    /// [`Model::set_latency`] says otherwise.
    pub fn add_pop(
        &mut self,
        name: &str,
        jurisdiction: &str,
        location: Coordinates,
        renewable_watts: u32,
        carbon_g_per_kwh: u32,
    ) -> Result<PopId, ModelError> {
        let jurisdiction = self.jurisdiction(jurisdiction)?;
        let id = self.pops.len() as u32;
        self.claim(Kind::Pop, name, id)?;
        self.pops.push(Pop {
            name: name.to_owned(),
            jurisdiction,
            location,
            renewable_watts,
            carbon_g_per_kwh,
            capacity: Resources::default(),
            allocated: Resources::default(),
            vm_count: 0,
        });
        let n = self.pops.len();
        let old = std::mem::take(&mut self.pop_latency_us);
        self.pop_latency_us = vec![0; n * n];
        for a in 0..n {
            for b in 0..n {
                self.pop_latency_us[a * n + b] = if a < n - 1 && b < n - 1 {
                    old[a * (n - 1) + b]
                } else {
                    locus_sdk::geo::estimated_rtt_us(self.pops[a].location, self.pops[b].location)
                };
            }
        }
        Ok(PopId(id))
    }

    /// Sets the measured round-trip latency between two PoPs, both ways.
    pub fn set_latency(&mut self, a: PopId, b: PopId, rtt_us: u32) {
        let n = self.pops.len();
        let (a, b) = (a.0 as usize, b.0 as usize);
        if a < n && b < n {
            self.pop_latency_us[a * n + b] = rtt_us;
            self.pop_latency_us[b * n + a] = rtt_us;
        }
    }

    /// Latency between two PoPs, µs.
    pub fn latency(&self, a: PopId, b: PopId) -> u32 {
        let n = self.pops.len();
        self.pop_latency_us[a.0 as usize * n + b.0 as usize]
    }

    /// Adds an empty host.
    pub fn add_host(
        &mut self,
        name: &str,
        pop: &str,
        capacity: Resources,
        cpu_milli: u32,
        (idle_watts, max_watts): (u32, u32),
    ) -> Result<HostId, ModelError> {
        let pop = self.pop_id(pop)?;
        let id = self.hosts.len() as u32;
        self.claim(Kind::Host, name, id)?;
        self.hosts.push(Host {
            name: name.to_owned(),
            pop,
            capacity,
            cpu_milli,
            idle_watts,
            max_watts,
            standby_watts: 0,
            state: HostState::Up,
            allocated: Resources::default(),
            load_cpu_milli: 0,
            vm_count: 0,
            images: Vec::new(),
        });
        let p = &mut self.pops[pop.0 as usize];
        p.capacity = p.capacity.plus(capacity);
        Ok(HostId(id))
    }

    /// Sets the images a host's store holds (keys, any order).
    pub fn set_images(&mut self, host: HostId, mut keys: Vec<u64>) {
        keys.sort_unstable();
        keys.dedup();
        if let Some(h) = self.hosts.get_mut(host.0 as usize) {
            h.images = keys;
        }
    }

    /// Sets the power a host draws in standby.
    pub fn set_standby_watts(&mut self, host: HostId, watts: u32) {
        if let Some(h) = self.hosts.get_mut(host.0 as usize) {
            h.standby_watts = watts;
        }
    }

    /// Changes a host's allocatable resources and CPU capacity, as its
    /// hypervisor reports them.
    pub fn set_host_capacity(&mut self, host: HostId, capacity: Resources, cpu_milli: u32) {
        let Some(h) = self.hosts.get_mut(host.0 as usize) else {
            return;
        };
        let old = std::mem::replace(&mut h.capacity, capacity);
        h.cpu_milli = cpu_milli;
        // Every PoP-mate's summary sets it, nearly always as it was: the
        // PoP's line stays out of the cache then.
        if h.state != HostState::Down && old != capacity {
            let p = &mut self.pops[h.pop.0 as usize];
            p.capacity = p.capacity.minus(old).plus(capacity);
        }
    }

    /// Sets what a host has allocated and its load, as its own agent reports
    /// them (for hosts whose VMs this model does not hold one by one).
    pub fn set_host_usage(&mut self, host: HostId, allocated: Resources, load_cpu_milli: u32, vm_count: u32) {
        let Some(h) = self.hosts.get_mut(host.0 as usize) else {
            return;
        };
        let (old, old_count) = (h.allocated, h.vm_count);
        h.allocated = allocated;
        h.load_cpu_milli = load_cpu_milli;
        h.vm_count = vm_count;
        if (old, old_count) == (allocated, vm_count) {
            return;
        }
        let p = &mut self.pops[h.pop.0 as usize];
        p.allocated = p.allocated.minus(old).plus(allocated);
        p.vm_count = p.vm_count.saturating_sub(old_count).saturating_add(vm_count);
    }

    /// Records a VM's measured CPU demand.
    pub fn set_vm_load(&mut self, vm: VmId, load_cpu_milli: u32) {
        let Some(Some(v)) = self.vms.get_mut(vm.0 as usize) else {
            return;
        };
        let old = std::mem::replace(&mut v.load_cpu_milli, load_cpu_milli);
        let h = &mut self.hosts[v.host.0 as usize];
        h.load_cpu_milli = h.load_cpu_milli.saturating_sub(old).saturating_add(load_cpu_milli);
    }

    /// Changes a host's state, keeping PoP capacity to hosts that are up.
    pub fn set_host_state(&mut self, host: HostId, state: HostState) {
        let Some(h) = self.hosts.get_mut(host.0 as usize) else {
            return;
        };
        let counted = |s: HostState| s != HostState::Down;
        let pop = &mut self.pops[h.pop.0 as usize];
        match (counted(h.state), counted(state)) {
            (true, false) => pop.capacity = pop.capacity.minus(h.capacity),
            (false, true) => pop.capacity = pop.capacity.plus(h.capacity),
            _ => {}
        }
        h.state = state;
    }

    /// The id of PoP `name`.
    pub fn pop_id(&self, name: &str) -> Result<PopId, ModelError> {
        self.lookup(Kind::Pop, name)
            .map(PopId)
            .ok_or_else(|| ModelError::Unknown { kind: "pop", name: name.to_owned() })
    }

    /// The id of host `name`.
    pub fn host_id(&self, name: &str) -> Result<HostId, ModelError> {
        self.lookup(Kind::Host, name)
            .map(HostId)
            .ok_or_else(|| ModelError::Unknown { kind: "host", name: name.to_owned() })
    }

    /// The id of VM `name`, if it exists.
    pub fn vm_id(&self, name: &str) -> Option<VmId> {
        self.lookup(Kind::Vm, name).map(VmId)
    }

    /// The id of group `name`, if it exists.
    pub fn group_id(&self, name: &str) -> Option<GroupId> {
        self.lookup(Kind::Group, name).map(GroupId)
    }

    /// The group `name`, created with `kind` if new.
    pub fn group(&mut self, name: &str, kind: GroupKind) -> Result<GroupId, ModelError> {
        if let Some(id) = self.group_id(name) {
            let existing = self.groups[id.0 as usize].kind;
            if existing != kind {
                return Err(ModelError::GroupKindMismatch {
                    name: name.to_owned(),
                    existing,
                    requested: kind,
                });
            }
            return Ok(id);
        }
        let id = self.groups.len() as u32;
        self.claim(Kind::Group, name, id)?;
        self.groups.push(Group { name: name.to_owned(), kind, members: HashMap::new() });
        Ok(GroupId(id))
    }

    /// Records a VM on `host`, updating host, PoP and group totals. Capacity
    /// is not checked here: decisions are checked before they reach the model.
    pub fn add_vm(
        &mut self,
        name: &str,
        host: HostId,
        size: Resources,
        load_cpu_milli: u32,
        group: Option<GroupId>,
        jurisdictions: Vec<u32>,
    ) -> Result<VmId, ModelError> {
        if host.0 as usize >= self.hosts.len() {
            return Err(ModelError::Unknown { kind: "host", name: host.0.to_string() });
        }
        let id = self.vms.len() as u32;
        self.claim(Kind::Vm, name, id)?;
        self.vms.push(Some(Vm { name: name.to_owned(), host, size, load_cpu_milli, group, jurisdictions }));
        self.account(host, size, load_cpu_milli, group, true);
        Ok(VmId(id))
    }

    /// Records a VM placed on `host` for `request`: its group (created on
    /// first use) and its jurisdiction fence come from the request.
    pub fn record_placement(&mut self, request: &crate::VmRequest, host: HostId) -> Result<VmId, ModelError> {
        let group = match &request.group {
            Some(g) => Some(self.group(&g.name, g.kind.into())?),
            None => None,
        };
        // Interned, not looked up: the fence keeps every code the tenant
        // named, even one no PoP has yet.
        let jurisdictions =
            request.jurisdictions.iter().map(|j| self.jurisdiction(j)).collect::<Result<_, _>>()?;
        self.add_vm(&request.name, host, request.size(), request.expected_load(), group, jurisdictions)
    }

    /// Removes a VM, releasing its resources.
    pub fn remove_vm(&mut self, vm: VmId) -> Option<Vm> {
        let removed = self.vms.get_mut(vm.0 as usize)?.take()?;
        self.names[Kind::Vm as usize].remove(&removed.name);
        self.account(removed.host, removed.size, removed.load_cpu_milli, removed.group, false);
        Some(removed)
    }

    /// Moves a VM to another host.
    pub fn move_vm(&mut self, vm: VmId, to: HostId) -> Result<(), ModelError> {
        if to.0 as usize >= self.hosts.len() {
            return Err(ModelError::Unknown { kind: "host", name: to.0.to_string() });
        }
        let Some(Some(v)) = self.vms.get(vm.0 as usize) else {
            return Err(ModelError::Unknown { kind: "vm", name: vm.0.to_string() });
        };
        let (from, size, load, group) = (v.host, v.size, v.load_cpu_milli, v.group);
        self.account(from, size, load, group, false);
        self.account(to, size, load, group, true);
        if let Some(Some(v)) = self.vms.get_mut(vm.0 as usize) {
            v.host = to;
        }
        Ok(())
    }

    fn account(&mut self, host: HostId, size: Resources, load: u32, group: Option<GroupId>, add: bool) {
        let h = &mut self.hosts[host.0 as usize];
        let p = &mut self.pops[h.pop.0 as usize];
        if add {
            h.allocated = h.allocated.plus(size);
            h.load_cpu_milli = h.load_cpu_milli.saturating_add(load);
            h.vm_count += 1;
            p.allocated = p.allocated.plus(size);
            p.vm_count += 1;
        } else {
            h.allocated = h.allocated.minus(size);
            h.load_cpu_milli = h.load_cpu_milli.saturating_sub(load);
            h.vm_count = h.vm_count.saturating_sub(1);
            p.allocated = p.allocated.minus(size);
            p.vm_count = p.vm_count.saturating_sub(1);
        }
        if let Some(g) = group.and_then(|g| self.groups.get_mut(g.0 as usize)) {
            let n = g.members.entry(host).or_insert(0);
            if add {
                *n += 1;
            } else {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    g.members.remove(&host);
                }
            }
        }
    }

    /// The VMs that exist, with their ids.
    pub fn live_vms(&self) -> impl Iterator<Item = (VmId, &Vm)> {
        self.vms.iter().enumerate().filter_map(|(i, v)| v.as_ref().map(|v| (VmId(i as u32), v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Model {
        let mut m = Model::new();
        m.add_pop("paris", "FR", Coordinates::new(48.86, 2.35), 0, 50).expect("pop");
        m.add_pop("berlin", "DE", Coordinates::new(52.52, 13.4), 0, 400).expect("pop");
        m.add_host("p1", "paris", Resources::new(8, 8192, 100), 8000, (100, 250)).expect("host");
        m.add_host("b1", "berlin", Resources::new(8, 8192, 100), 8000, (100, 250)).expect("host");
        m
    }

    #[test]
    fn totals_follow_vms_in_and_out() {
        let mut m = model();
        let g = m.group("web", GroupKind::AntiAffinity).expect("group");
        let vm = m.add_vm("a", HostId(0), Resources::new(2, 1024, 10), 1500, Some(g), vec![]).expect("vm");
        assert_eq!(m.hosts[0].allocated, Resources::new(2, 1024, 10));
        assert_eq!(m.pops[0].vm_count, 1);
        assert_eq!(m.groups[0].members.get(&HostId(0)), Some(&1));
        m.move_vm(vm, HostId(1)).expect("move");
        assert_eq!(m.hosts[0].allocated, Resources::default());
        assert_eq!(m.pops[1].allocated, Resources::new(2, 1024, 10));
        assert_eq!(m.groups[0].members.get(&HostId(0)), None);
        m.remove_vm(vm).expect("removed");
        assert_eq!(m.hosts[1].vm_count, 0);
        assert!(m.vm_id("a").is_none());
    }

    #[test]
    fn names_are_unique_and_lookups_fail_clearly() {
        let mut m = model();
        assert_eq!(
            m.add_pop("paris", "FR", Coordinates::default(), 0, 0).unwrap_err().to_string(),
            "pop \"paris\" already exists"
        );
        assert_eq!(m.host_id("nope").unwrap_err().to_string(), "unknown host \"nope\"");
    }

    #[test]
    fn latencies_are_estimated_then_measured() {
        let mut m = model();
        let estimated = m.latency(PopId(0), PopId(1));
        assert!((10_000..20_000).contains(&estimated), "{estimated}");
        m.set_latency(PopId(0), PopId(1), 9_000);
        assert_eq!(m.latency(PopId(1), PopId(0)), 9_000);
        m.add_pop("madrid", "ES", Coordinates::new(40.4, -3.7), 0, 200).expect("pop");
        assert_eq!(m.latency(PopId(0), PopId(1)), 9_000, "adding a PoP keeps measurements");
    }

    #[test]
    fn a_down_host_leaves_pop_capacity() {
        let mut m = model();
        m.set_host_state(HostId(0), HostState::Down);
        assert_eq!(m.pops[0].capacity, Resources::default());
        m.set_host_state(HostId(0), HostState::Up);
        assert_eq!(m.pops[0].capacity, Resources::new(8, 8192, 100));
    }
}
