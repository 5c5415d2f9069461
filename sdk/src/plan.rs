//! Building a migration plan move by move, with the agent's own rules.
//!
//! [`PlanBuilder`] tracks where every VM of a [`Partition`] would be, and
//! each host's allocation and CPU demand, as moves are added. A move the
//! agent would refuse is refused here with the same [`MoveError`], so a
//! policy built on it never returns a plan the agent throws away. The agent
//! validates every plan it receives with this very type.

use crate::decision::Migration;
use crate::view::{GroupKind, Partition, Resources};
use std::collections::HashMap;
use std::fmt;

/// Why a move is not allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MoveError {
    /// The VM row does not exist.
    UnknownVm {
        /// The VM row given.
        vm: u32,
        /// Number of VMs in the partition.
        vms: usize,
    },
    /// The host row does not exist.
    UnknownHost {
        /// The host row given.
        host: u32,
        /// Number of hosts in the partition.
        hosts: usize,
    },
    /// The VM was already moved by this plan.
    MovedTwice {
        /// The VM row.
        vm: u32,
    },
    /// The VM is already on that host.
    SameHost {
        /// The VM row.
        vm: u32,
    },
    /// The host's PoP is outside the VM's jurisdictions.
    Fence {
        /// The VM row.
        vm: u32,
        /// The host row.
        host: u32,
    },
    /// Another member of the VM's anti-affinity group is on that host.
    AntiAffinity {
        /// The VM row.
        vm: u32,
        /// The host row.
        host: u32,
    },
    /// The VM's allocation does not fit in the host's free resources.
    Capacity {
        /// The VM row.
        vm: u32,
        /// The host row.
        host: u32,
    },
    /// The host's CPU demand would exceed its physical capacity.
    Overload {
        /// The VM row.
        vm: u32,
        /// The host row.
        host: u32,
    },
}

impl fmt::Display for MoveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MoveError::UnknownVm { vm, vms } => {
                write!(f, "VM row {vm} does not exist (the partition has {vms} VMs)")
            }
            MoveError::UnknownHost { host, hosts } => {
                write!(f, "host row {host} does not exist (the partition has {hosts} hosts)")
            }
            MoveError::MovedTwice { vm } => write!(f, "VM row {vm} is moved more than once"),
            MoveError::SameHost { vm } => write!(f, "VM row {vm} is moved to the host it is on"),
            MoveError::Fence { vm, host } => {
                write!(f, "moving VM row {vm} to host row {host} crosses its jurisdiction fence")
            }
            MoveError::AntiAffinity { vm, host } => write!(
                f,
                "moving VM row {vm} to host row {host} puts two members of an anti-affinity group together"
            ),
            MoveError::Capacity { vm, host } => {
                write!(f, "VM row {vm} does not fit in the free resources of host row {host}")
            }
            MoveError::Overload { vm, host } => {
                write!(f, "moving VM row {vm} to host row {host} pushes its CPU demand over capacity")
            }
        }
    }
}

impl std::error::Error for MoveError {}

/// A migration plan under construction over one [`Partition`].
#[derive(Debug, Clone)]
pub struct PlanBuilder<'a> {
    partition: &'a Partition,
    host_of: Vec<u32>,
    moved: Vec<bool>,
    allocated: Vec<Resources>,
    load: Vec<u32>,
    vm_count: Vec<u32>,
    /// Members of anti-affinity groups per (group, host).
    anti: HashMap<(u32, u32), u32>,
    plan: Vec<Migration>,
}

impl<'a> PlanBuilder<'a> {
    /// An empty plan over `partition`.
    pub fn new(partition: &'a Partition) -> Self {
        let hosts = &partition.cluster.hosts;
        let vms = &partition.vms;
        let mut anti = HashMap::new();
        for i in 0..vms.len() {
            if let Some(g) = vms.group_of(i)
                && partition.groups.get(g as usize) == Some(&GroupKind::AntiAffinity)
            {
                *anti.entry((g, vms.host[i])).or_insert(0) += 1;
            }
        }
        Self {
            partition,
            host_of: vms.host.clone(),
            moved: vec![false; vms.len()],
            allocated: (0..hosts.len()).map(|h| hosts.allocated(h)).collect(),
            load: hosts.load_cpu_milli.clone(),
            vm_count: hosts.vm_count.clone(),
            anti,
            plan: Vec::new(),
        }
    }

    /// The partition the plan is for.
    pub fn partition(&self) -> &'a Partition {
        self.partition
    }

    /// Checks whether moving VM `vm` to host `to` is allowed now.
    pub fn check(&self, vm: u32, to: u32) -> Result<(), MoveError> {
        let p = self.partition;
        let (v, h) = (vm as usize, to as usize);
        if v >= p.vms.len() {
            return Err(MoveError::UnknownVm { vm, vms: p.vms.len() });
        }
        if h >= p.cluster.hosts.len() {
            return Err(MoveError::UnknownHost { host: to, hosts: p.cluster.hosts.len() });
        }
        if self.moved[v] {
            return Err(MoveError::MovedTwice { vm });
        }
        if self.host_of[v] == to {
            return Err(MoveError::SameHost { vm });
        }
        let jurisdiction = p.cluster.pops.get(p.cluster.hosts.pop[h] as usize).map(|pop| pop.jurisdiction);
        if !jurisdiction.is_some_and(|j| p.vms.may_run_in(v, j)) {
            return Err(MoveError::Fence { vm, host: to });
        }
        if let Some(g) = self.anti_group(v)
            && self.anti.get(&(g, to)).copied().unwrap_or(0) > 0
        {
            return Err(MoveError::AntiAffinity { vm, host: to });
        }
        let free = p.cluster.hosts.capacity(h).minus(self.allocated[h]);
        if !p.vms.size(v).fits_in(free) {
            return Err(MoveError::Capacity { vm, host: to });
        }
        let demand = self.load[h].saturating_add(p.vms.load_cpu_milli[v]);
        if demand > p.cluster.hosts.cpu_milli[h] {
            return Err(MoveError::Overload { vm, host: to });
        }
        Ok(())
    }

    /// Adds the move if it is allowed; otherwise leaves the plan unchanged.
    pub fn try_move(&mut self, vm: u32, to: u32) -> Result<(), MoveError> {
        self.check(vm, to)?;
        let v = vm as usize;
        let from = self.host_of[v] as usize;
        let size = self.partition.vms.size(v);
        let demand = self.partition.vms.load_cpu_milli[v];
        if let Some(g) = self.anti_group(v) {
            if let Some(n) = self.anti.get_mut(&(g, from as u32)) {
                *n = n.saturating_sub(1);
            }
            *self.anti.entry((g, to)).or_insert(0) += 1;
        }
        if let Some(a) = self.allocated.get_mut(from) {
            *a = a.minus(size);
        }
        if let Some(l) = self.load.get_mut(from) {
            *l = l.saturating_sub(demand);
        }
        if let Some(n) = self.vm_count.get_mut(from) {
            *n = n.saturating_sub(1);
        }
        let t = to as usize;
        self.allocated[t] = self.allocated[t].plus(size);
        self.load[t] = self.load[t].saturating_add(demand);
        self.vm_count[t] += 1;
        self.host_of[v] = to;
        self.moved[v] = true;
        self.plan.push(Migration { vm, to });
        Ok(())
    }

    /// The host VM `vm` is on once the plan so far is carried out.
    pub fn host_of(&self, vm: u32) -> u32 {
        self.host_of[vm as usize]
    }

    /// True when the plan already moves VM `vm`.
    pub fn is_moved(&self, vm: u32) -> bool {
        self.moved[vm as usize]
    }

    /// CPU demand of host `host` once the plan so far is carried out.
    pub fn load(&self, host: u32) -> u32 {
        self.load[host as usize]
    }

    /// Allocation of host `host` once the plan so far is carried out.
    pub fn allocated(&self, host: u32) -> Resources {
        self.allocated[host as usize]
    }

    /// Number of VMs on host `host` once the plan so far is carried out.
    pub fn vm_count(&self, host: u32) -> u32 {
        self.vm_count[host as usize]
    }

    /// True when host `host` would still be overloaded: CPU demand above its
    /// physical capacity, or allocation above its allocatable resources.
    pub fn is_overloaded(&self, host: u32) -> bool {
        let h = host as usize;
        let hosts = &self.partition.cluster.hosts;
        self.load[h] > hosts.cpu_milli[h] || !self.allocated[h].fits_in(hosts.capacity(h))
    }

    /// The VMs on host `host` once the plan so far is carried out.
    pub fn vms_on(&self, host: u32) -> impl Iterator<Item = u32> + '_ {
        self.host_of.iter().enumerate().filter(move |(_, h)| **h == host).map(|(v, _)| v as u32)
    }

    /// The moves so far, in order.
    pub fn moves(&self) -> &[Migration] {
        &self.plan
    }

    /// The finished plan.
    pub fn finish(self) -> Vec<Migration> {
        self.plan
    }

    fn anti_group(&self, v: usize) -> Option<u32> {
        let g = self.partition.vms.group_of(v)?;
        (self.partition.groups.get(g as usize) == Some(&GroupKind::AntiAffinity)).then_some(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ClusterBuilder, PartitionBuilder};

    fn two_pops() -> PartitionBuilder {
        let c = ClusterBuilder::new()
            .pop("FR", 48.0, 2.0)
            .pop("DE", 52.0, 13.0)
            .host(0, Resources::new(8, 8192, 100))
            .host(0, Resources::new(8, 8192, 100))
            .host(1, Resources::new(8, 8192, 100))
            .build();
        PartitionBuilder::new(c)
    }

    #[test]
    fn a_valid_move_updates_both_hosts() {
        let p = two_pops().vm(0, Resources::new(2, 1024, 10), 1500).build();
        let mut b = PlanBuilder::new(&p);
        b.try_move(0, 1).expect("allowed");
        assert_eq!(b.load(0), 0);
        assert_eq!(b.load(1), 1500);
        assert_eq!(b.allocated(1), Resources::new(2, 1024, 10));
        assert_eq!(b.finish(), vec![Migration { vm: 0, to: 1 }]);
    }

    #[test]
    fn each_rule_is_enforced() {
        let p = two_pops()
            .group(GroupKind::AntiAffinity)
            .vm(0, Resources::new(2, 1024, 10), 500)
            .fenced_to(&[0])
            .vm_in_group(0, Resources::new(1, 512, 1), 100, 0)
            .vm_in_group(1, Resources::new(1, 512, 1), 100, 0)
            .vm(2, Resources::new(8, 8192, 10), 7900)
            .build();
        let mut b = PlanBuilder::new(&p);
        assert_eq!(b.check(9, 1), Err(MoveError::UnknownVm { vm: 9, vms: 4 }));
        assert_eq!(b.check(0, 7), Err(MoveError::UnknownHost { host: 7, hosts: 3 }));
        assert_eq!(b.check(0, 0), Err(MoveError::SameHost { vm: 0 }));
        assert_eq!(b.check(0, 2), Err(MoveError::Fence { vm: 0, host: 2 }));
        assert_eq!(b.check(1, 1), Err(MoveError::AntiAffinity { vm: 1, host: 1 }));
        assert_eq!(b.check(0, 2).err(), Some(MoveError::Fence { vm: 0, host: 2 }));
        assert_eq!(b.check(2, 2), Err(MoveError::Capacity { vm: 2, host: 2 }));
        b.try_move(0, 1).expect("allowed");
        assert_eq!(b.check(0, 0), Err(MoveError::MovedTwice { vm: 0 }));
    }

    #[test]
    fn cpu_demand_over_capacity_is_an_overload() {
        let p =
            two_pops().vm(0, Resources::new(1, 512, 1), 3000).vm(1, Resources::new(1, 512, 1), 6000).build();
        let b = PlanBuilder::new(&p);
        assert_eq!(b.check(0, 1), Err(MoveError::Overload { vm: 0, host: 1 }));
    }
}
