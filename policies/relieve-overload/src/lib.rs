//! `relieve-overload`: the fewest migrations that bring every host back under
//! capacity.
//!
//! A host is overloaded when its VMs' CPU demand exceeds its physical CPU
//! capacity (or, after a resize, their allocation exceeds its allocatable
//! resources). For each overloaded host, worst first, the policy moves VMs
//! away until it is under capacity:
//! - if one VM's demand alone covers the excess, it moves the cheapest such
//!   VM (lowest migration cost, then lowest demand): one migration, the least
//!   data copied;
//! - otherwise it moves the most demanding movable VM and looks again.
//!
//! This greedy choice is the minimum number of moves whenever one move is
//! enough, and close to it otherwise (exact minimisation is a bin-packing
//! problem). Each VM goes to the host with the lowest latency from its current
//! PoP (locality first), then with the most CPU headroom left after the move;
//! every move passes the agent's own rules ([`PlanBuilder`]), so receiving
//! hosts never become overloaded and fences and anti-affinity hold.
//!
//! Configuration: none.

use locus_sdk::{Level, Migration, MigrationPolicy, Partition, PlanBuilder, log};

/// The relieve-overload migration policy.
#[derive(Debug)]
pub struct RelieveOverload;

/// The best destination for `vm`, or none.
fn destination(plan: &PlanBuilder<'_>, vm: u32) -> Option<u32> {
    let p = plan.partition();
    let hosts = &p.cluster.hosts;
    let from_pop = hosts.pop[plan.host_of(vm) as usize];
    (0..hosts.len() as u32).filter(|&h| plan.check(vm, h).is_ok()).min_by_key(|&h| {
        let latency = p.cluster.pop_latency(from_pop, hosts.pop[h as usize]).unwrap_or(u32::MAX);
        let headroom = hosts.cpu_milli[h as usize]
            .saturating_sub(plan.load(h))
            .saturating_sub(p.vms.load_cpu_milli[vm as usize]);
        (latency, std::cmp::Reverse(headroom), h)
    })
}

fn relieve(plan: &mut PlanBuilder<'_>, host: u32) -> bool {
    let p = plan.partition();
    let hosts = &p.cluster.hosts;
    while plan.is_overloaded(host) {
        let cpu_excess = plan.load(host).saturating_sub(hosts.cpu_milli[host as usize]);
        let mem_excess = plan.allocated(host).memory_mib.saturating_sub(hosts.memory_mib[host as usize]);
        let movable: Vec<(u32, u32)> = plan
            .vms_on(host)
            .filter(|&v| !plan.is_moved(v))
            .filter_map(|v| destination(plan, v).map(|to| (v, to)))
            .collect();
        let covers = |v: u32| {
            p.vms.load_cpu_milli[v as usize] >= cpu_excess && p.vms.memory_mib[v as usize] >= mem_excess
        };
        let pick = movable
            .iter()
            .filter(|(v, _)| covers(*v))
            .min_by_key(|(v, _)| (p.vms.migration_cost[*v as usize], p.vms.load_cpu_milli[*v as usize], *v))
            .or_else(|| {
                movable.iter().max_by_key(|(v, _)| (p.vms.load_cpu_milli[*v as usize], std::cmp::Reverse(*v)))
            });
        let Some(&(vm, to)) = pick else { return false };
        if plan.try_move(vm, to).is_err() {
            return false;
        }
    }
    true
}

impl MigrationPolicy for RelieveOverload {
    fn plan(partition: &Partition) -> Vec<Migration> {
        let mut plan = PlanBuilder::new(partition);
        let hosts = &partition.cluster.hosts;
        let mut overloaded: Vec<u32> = (0..hosts.len() as u32).filter(|&h| plan.is_overloaded(h)).collect();
        overloaded
            .sort_by_key(|&h| std::cmp::Reverse(plan.load(h).saturating_sub(hosts.cpu_milli[h as usize])));
        for host in overloaded {
            if !relieve(&mut plan, host) {
                log(Level::Warn, &format!("host row {host} stays overloaded: no VM on it can move anywhere"));
            }
        }
        plan.finish()
    }
}

locus_sdk::export!(migration: RelieveOverload);

#[cfg(test)]
mod tests {
    use super::*;
    use locus_sdk::testing::{ClusterBuilder, PartitionBuilder};
    use locus_sdk::{GroupKind, Resources};

    const CAP: Resources = Resources::new(16, 32_768, 500);
    const VM: Resources = Resources::new(2, 2048, 10);

    fn hosts(n: usize) -> PartitionBuilder {
        let mut c = ClusterBuilder::new().pop("FR", 48.0, 2.0).pop("DE", 52.0, 13.0);
        for i in 0..n {
            c = c.host(u32::from(i >= 2), CAP);
        }
        PartitionBuilder::new(c.build())
    }

    fn apply<'a>(p: &'a Partition, plan: &[Migration]) -> PlanBuilder<'a> {
        let mut b = PlanBuilder::new(p);
        for m in plan {
            b.try_move(m.vm, m.to).expect("the plan passes the agent's rules");
        }
        b
    }

    #[test]
    fn nothing_moves_when_nothing_is_overloaded() {
        let p = hosts(2).vm(0, VM, 8000).vm(1, VM, 8000).build();
        assert!(RelieveOverload::plan(&p).is_empty());
    }

    #[test]
    fn one_vm_that_covers_the_excess_is_enough() {
        // Host 0: 16000 milli capacity, demand 18000 → excess 2000.
        let p = hosts(2).vm(0, VM, 9000).vm(0, VM, 6000).vm(0, VM, 3000).build();
        let plan = RelieveOverload::plan(&p);
        assert_eq!(plan.len(), 1, "{plan:?}");
        assert_eq!(plan[0].vm, 2, "the smallest VM that covers the excess is the cheapest");
        assert!(!apply(&p, &plan).is_overloaded(0));
    }

    #[test]
    fn several_moves_when_no_single_vm_covers_it() {
        let mut b = hosts(3);
        for _ in 0..12 {
            b = b.vm(0, VM, 2000); // 24000 on a 16000 host
        }
        let p = b.build();
        let plan = RelieveOverload::plan(&p);
        assert_eq!(plan.len(), 4);
        let after = apply(&p, &plan);
        assert!((0..3).all(|h| !after.is_overloaded(h)));
    }

    #[test]
    fn prefers_a_host_in_the_same_pop() {
        let p = hosts(3).vm(0, VM, 9000).vm(0, VM, 9000).build();
        let plan = RelieveOverload::plan(&p);
        assert_eq!(plan.iter().map(|m| m.to).collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn respects_fences_and_anti_affinity() {
        let p = hosts(3)
            .group(GroupKind::AntiAffinity)
            .vm_in_group(0, VM, 9000, 0)
            .vm_in_group(1, VM, 1000, 0)
            .vm(0, VM, 9000)
            .fenced_to(&[1])
            .build();
        let plan = RelieveOverload::plan(&p);
        // VM 0 may not join its group mate on host 1, and VM 2 may only go to
        // the DE host: either way the one move lands on host 2.
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].to, 2);
        assert!(!apply(&p, &plan).is_overloaded(0));
    }

    #[test]
    fn an_unfixable_overload_yields_a_valid_partial_plan() {
        let p = hosts(1).vm(0, VM, 20_000).build();
        assert!(RelieveOverload::plan(&p).is_empty());
    }
}
