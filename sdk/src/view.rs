//! What a policy sees: the Rust form of the `locus:policy/types` WIT records.
//!
//! Field names, units and meanings are those of `wit/policy.wit`. Hosts and
//! VMs are stored column by column (one `Vec` per attribute, all of equal
//! length) because that is how they cross the component boundary cheaply;
//! [`Hosts`] and [`Vms`] add row accessors so policies rarely touch the
//! columns directly.

/// Marks a `u32` value that is not known (a latency not measured yet, a VM
/// without a group). Equal to `u32::MAX`.
pub const ABSENT: u32 = u32::MAX;

/// A quantity of the three resources a VM is sized by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Resources {
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Memory, in MiB.
    pub memory_mib: u32,
    /// Disk, in GiB.
    pub disk_gib: u32,
}

impl Resources {
    /// Builds a quantity from its three parts.
    pub const fn new(vcpus: u32, memory_mib: u32, disk_gib: u32) -> Self {
        Self { vcpus, memory_mib, disk_gib }
    }

    /// True when `self` fits inside `room` in every dimension.
    pub fn fits_in(&self, room: Resources) -> bool {
        self.vcpus <= room.vcpus && self.memory_mib <= room.memory_mib && self.disk_gib <= room.disk_gib
    }

    /// Component-wise sum, saturating at `u32::MAX`.
    #[must_use]
    pub fn plus(self, other: Resources) -> Resources {
        Resources {
            vcpus: self.vcpus.saturating_add(other.vcpus),
            memory_mib: self.memory_mib.saturating_add(other.memory_mib),
            disk_gib: self.disk_gib.saturating_add(other.disk_gib),
        }
    }

    /// Component-wise difference, saturating at zero.
    #[must_use]
    pub fn minus(self, other: Resources) -> Resources {
        Resources {
            vcpus: self.vcpus.saturating_sub(other.vcpus),
            memory_mib: self.memory_mib.saturating_sub(other.memory_mib),
            disk_gib: self.disk_gib.saturating_sub(other.disk_gib),
        }
    }
}

/// A point on Earth, in degrees (WGS 84).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Coordinates {
    /// Latitude, -90 (south) to 90 (north).
    pub latitude: f32,
    /// Longitude, -180 (west) to 180 (east).
    pub longitude: f32,
}

impl Coordinates {
    /// A point from its latitude and longitude.
    pub const fn new(latitude: f32, longitude: f32) -> Self {
        Self { latitude, longitude }
    }
}

/// A point of presence (PoP): one small data centre, summarised.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Pop {
    /// Index into [`Cluster::jurisdictions`] of the PoP's jurisdiction.
    pub jurisdiction: u32,
    /// Where the PoP is.
    pub location: Coordinates,
    /// Sum of the allocatable capacity of the PoP's hosts that are up.
    pub capacity: Resources,
    /// Sum of the resources allocated to VMs on those hosts.
    pub allocated: Resources,
    /// Number of VMs running in the PoP.
    pub vm_count: u32,
    /// Renewable power produced at the PoP and not yet consumed, in watts.
    pub renewable_watts: u32,
    /// Carbon intensity of the grid power the PoP draws, in gCO2/kWh.
    pub carbon_g_per_kwh: u32,
}

/// The hosts a policy may choose among, one column per attribute.
///
/// Every column has [`Hosts::len`] entries; entry `i` of each describes host
/// `i`, and decisions name a host by that row `i`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hosts {
    /// Index into [`Cluster::pops`] of the host's PoP.
    pub pop: Vec<u32>,
    /// Allocatable vCPUs (physical CPUs times the overcommit ratio).
    pub vcpus: Vec<u32>,
    /// Allocatable memory, in MiB.
    pub memory_mib: Vec<u32>,
    /// Allocatable disk, in GiB.
    pub disk_gib: Vec<u32>,
    /// vCPUs allocated to the host's VMs.
    pub allocated_vcpus: Vec<u32>,
    /// Memory allocated to the host's VMs, in MiB.
    pub allocated_memory_mib: Vec<u32>,
    /// Disk allocated to the host's VMs, in GiB.
    pub allocated_disk_gib: Vec<u32>,
    /// CPU capacity, in milli-CPUs (8 cores = 8000): load above it is an
    /// overload. In a [`Partition`] it is the host's physical CPUs times
    /// its agent's overload ratio.
    pub cpu_milli: Vec<u32>,
    /// Measured CPU demand of the host's VMs, in milli-CPUs.
    pub load_cpu_milli: Vec<u32>,
    /// Number of VMs on the host.
    pub vm_count: Vec<u32>,
    /// Power drawn when idle, in watts.
    pub idle_watts: Vec<u32>,
    /// Power drawn at full CPU load, in watts.
    pub max_watts: Vec<u32>,
    /// Power drawn now, in watts.
    pub current_watts: Vec<u32>,
}

/// One host's attributes gathered from the columns, for rules that read many
/// of them at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Host {
    /// Row in [`Hosts`].
    pub row: u32,
    /// Index into [`Cluster::pops`].
    pub pop: u32,
    /// Allocatable resources.
    pub capacity: Resources,
    /// Resources allocated to VMs.
    pub allocated: Resources,
    /// CPU capacity, in milli-CPUs: load above it is an overload (in a
    /// partition, the physical CPUs times the agent's overload ratio).
    pub cpu_milli: u32,
    /// Measured CPU demand, in milli-CPUs.
    pub load_cpu_milli: u32,
    /// Number of VMs.
    pub vm_count: u32,
    /// Idle power, watts.
    pub idle_watts: u32,
    /// Power at full load, watts.
    pub max_watts: u32,
    /// Power now, watts.
    pub current_watts: u32,
}

impl Host {
    /// Resources still free for new VMs.
    pub fn free(&self) -> Resources {
        self.capacity.minus(self.allocated)
    }
}

impl Hosts {
    /// Number of hosts.
    pub fn len(&self) -> usize {
        self.pop.len()
    }

    /// True when there is no host.
    pub fn is_empty(&self) -> bool {
        self.pop.is_empty()
    }

    /// Allocatable resources of host `i`.
    pub fn capacity(&self, i: usize) -> Resources {
        Resources::new(self.vcpus[i], self.memory_mib[i], self.disk_gib[i])
    }

    /// Resources allocated on host `i`.
    pub fn allocated(&self, i: usize) -> Resources {
        Resources::new(self.allocated_vcpus[i], self.allocated_memory_mib[i], self.allocated_disk_gib[i])
    }

    /// Resources still free on host `i`.
    pub fn free(&self, i: usize) -> Resources {
        self.capacity(i).minus(self.allocated(i))
    }

    /// Host `i` gathered into one value.
    pub fn get(&self, i: usize) -> Host {
        Host {
            row: i as u32,
            pop: self.pop[i],
            capacity: self.capacity(i),
            allocated: self.allocated(i),
            cpu_milli: self.cpu_milli[i],
            load_cpu_milli: self.load_cpu_milli[i],
            vm_count: self.vm_count[i],
            idle_watts: self.idle_watts[i],
            max_watts: self.max_watts[i],
            current_watts: self.current_watts[i],
        }
    }

    /// Every host, in row order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Host> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// Appends one host (used by builders and by the agent).
    pub fn push(&mut self, host: &Host) {
        self.pop.push(host.pop);
        self.vcpus.push(host.capacity.vcpus);
        self.memory_mib.push(host.capacity.memory_mib);
        self.disk_gib.push(host.capacity.disk_gib);
        self.allocated_vcpus.push(host.allocated.vcpus);
        self.allocated_memory_mib.push(host.allocated.memory_mib);
        self.allocated_disk_gib.push(host.allocated.disk_gib);
        self.cpu_milli.push(host.cpu_milli);
        self.load_cpu_milli.push(host.load_cpu_milli);
        self.vm_count.push(host.vm_count);
        self.idle_watts.push(host.idle_watts);
        self.max_watts.push(host.max_watts);
        self.current_watts.push(host.current_watts);
    }

    /// Empties every column, keeping their allocations for reuse.
    pub fn clear(&mut self) {
        for column in self.columns_mut() {
            column.clear();
        }
    }

    /// True when every column has the same length.
    pub fn is_rectangular(&self) -> bool {
        let n = self.len();
        [
            &self.vcpus,
            &self.memory_mib,
            &self.disk_gib,
            &self.allocated_vcpus,
            &self.allocated_memory_mib,
            &self.allocated_disk_gib,
            &self.cpu_milli,
            &self.load_cpu_milli,
            &self.vm_count,
            &self.idle_watts,
            &self.max_watts,
            &self.current_watts,
        ]
        .iter()
        .all(|c| c.len() == n)
    }

    fn columns_mut(&mut self) -> [&mut Vec<u32>; 13] {
        [
            &mut self.pop,
            &mut self.vcpus,
            &mut self.memory_mib,
            &mut self.disk_gib,
            &mut self.allocated_vcpus,
            &mut self.allocated_memory_mib,
            &mut self.allocated_disk_gib,
            &mut self.cpu_milli,
            &mut self.load_cpu_milli,
            &mut self.vm_count,
            &mut self.idle_watts,
            &mut self.max_watts,
            &mut self.current_watts,
        ]
    }
}

/// What a policy sees of the infrastructure.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Cluster {
    /// The PoPs, indexed by [`Hosts::pop`].
    pub pops: Vec<Pop>,
    /// Jurisdiction codes (ISO 3166-1 alpha-2, such as "FR"), indexed by
    /// [`Pop::jurisdiction`].
    pub jurisdictions: Vec<String>,
    /// Round-trip latency between PoPs in microseconds, row-major: from PoP
    /// `a` to PoP `b` is entry `a * pops.len() + b`; [`ABSENT`] when unknown.
    /// Read it with [`Cluster::pop_latency`].
    pub pop_latency_us: Vec<u32>,
    /// The hosts.
    pub hosts: Hosts,
}

impl Cluster {
    /// Round-trip latency from PoP `a` to PoP `b` in microseconds, if known.
    pub fn pop_latency(&self, a: u32, b: u32) -> Option<u32> {
        let n = self.pops.len();
        let (a, b) = (a as usize, b as usize);
        if a >= n || b >= n {
            return None;
        }
        self.pop_latency_us.get(a * n + b).copied().filter(|&l| l != ABSENT)
    }

    /// The jurisdiction code of PoP `pop`, if both indexes are valid.
    pub fn jurisdiction_of(&self, pop: u32) -> Option<&str> {
        let pop = self.pops.get(pop as usize)?;
        self.jurisdictions.get(pop.jurisdiction as usize).map(String::as_str)
    }
}

/// How the members of a VM group relate to each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupKind {
    /// Members prefer to share a host. A preference the policy weighs.
    Affinity,
    /// Members never share a host; the agent enforces it.
    AntiAffinity,
    /// Members prefer to be spread over hosts and PoPs. A preference.
    Spread,
}

/// The group a requested VM belongs to, with where its members are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// How members relate.
    pub kind: GroupKind,
    /// For each row of [`Cluster::hosts`], how many members run there.
    pub members_on_host: Vec<u32>,
    /// For each entry of [`Cluster::pops`], how many members run there.
    pub members_in_pop: Vec<u32>,
}

/// A request for one VM.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Request {
    /// The VM's size.
    pub size: Resources,
    /// The group the VM joins, if any.
    pub group: Option<Group>,
    /// Jurisdictions (indexes into [`Cluster::jurisdictions`]) the VM may run
    /// in; empty means anywhere. The agent has already removed hosts outside.
    pub allowed_jurisdictions: Vec<u32>,
    /// Where the VM's users are, if known.
    pub user_location: Option<Coordinates>,
    /// Largest acceptable user round-trip latency in microseconds, if any.
    pub max_latency_us: Option<u32>,
    /// For each entry of [`Cluster::pops`], the estimated round-trip latency
    /// between the users and that PoP in microseconds; empty without
    /// `user_location`. Read it with [`Request::user_latency`].
    pub user_latency_us: Vec<u32>,
    /// Rows of [`Cluster::hosts`] whose image store holds the VM's image,
    /// ascending; `None` when the VM boots without an image. Any host can
    /// run the VM: one without the image fetches it from its peers first,
    /// so the VM starts later and the network carries the image. Read it
    /// with [`Request::holds_image`].
    pub image_held_by: Option<Vec<u32>>,
}

impl Request {
    /// Whether host row `host` holds the VM's image (true for a VM with
    /// no image): the VM can start there without fetching it.
    pub fn holds_image(&self, host: u32) -> bool {
        self.image_held_by.as_ref().is_none_or(|rows| rows.binary_search(&host).is_ok())
    }

    /// Estimated user round-trip latency to PoP `pop` in microseconds, if known.
    pub fn user_latency(&self, pop: u32) -> Option<u32> {
        self.user_latency_us.get(pop as usize).copied().filter(|&l| l != ABSENT)
    }
}

/// The VMs of a partition, one column per attribute: entry `i` of each
/// describes VM `i`, and migrations name a VM by that row `i`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Vms {
    /// Row in [`Cluster::hosts`] of the VM's current host.
    pub host: Vec<u32>,
    /// Allocated vCPUs.
    pub vcpus: Vec<u32>,
    /// Allocated memory, in MiB.
    pub memory_mib: Vec<u32>,
    /// Allocated disk, in GiB.
    pub disk_gib: Vec<u32>,
    /// Measured CPU demand, in milli-CPUs.
    pub load_cpu_milli: Vec<u32>,
    /// Index into [`Partition::groups`], or [`ABSENT`].
    pub group: Vec<u32>,
    /// Bit `j` set when the VM may run in jurisdiction `j`; all bits set when
    /// it may run anywhere. Test it with [`Vms::may_run_in`].
    pub allowed_jurisdictions: Vec<u64>,
    /// Estimated cost of live-migrating the VM, in MiB to copy.
    pub migration_cost: Vec<u32>,
}

impl Vms {
    /// Number of VMs.
    pub fn len(&self) -> usize {
        self.host.len()
    }

    /// True when there is no VM.
    pub fn is_empty(&self) -> bool {
        self.host.is_empty()
    }

    /// Allocated size of VM `i`.
    pub fn size(&self, i: usize) -> Resources {
        Resources::new(self.vcpus[i], self.memory_mib[i], self.disk_gib[i])
    }

    /// True when VM `i` may run in jurisdiction `jurisdiction`.
    pub fn may_run_in(&self, i: usize, jurisdiction: u32) -> bool {
        jurisdiction < 64 && self.allowed_jurisdictions[i] & (1u64 << jurisdiction) != 0
    }

    /// The group of VM `i`, if any.
    pub fn group_of(&self, i: usize) -> Option<u32> {
        Some(self.group[i]).filter(|&g| g != ABSENT)
    }
}

/// What a migration policy sees: the hosts of a partition and their VMs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Partition {
    /// The partition's hosts, their PoPs and latencies.
    pub cluster: Cluster,
    /// Every VM on those hosts.
    pub vms: Vms,
    /// The kind of each group referenced by [`Vms::group`].
    pub groups: Vec<GroupKind>,
}
