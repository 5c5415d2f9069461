//! `consolidate`: empty lightly used hosts so they can be powered off.
//!
//! Hosts whose CPU demand is below `underload-percent` of their capacity are
//! candidates, least loaded first. A candidate is emptied only if every one of
//! its VMs finds a place on a host that already runs VMs (waking an idle host
//! would defeat the purpose) and whose demand stays at or below
//! `target-percent` of its capacity; otherwise none of its VMs move. Each VM
//! goes to the busiest host that still takes it (best fit), biggest VMs first.
//! A host being emptied never receives VMs. Every move passes the agent's own
//! rules ([`PlanBuilder`]): no overload is created, fences and anti-affinity
//! hold.
//!
//! Configuration:
//! - `underload-percent` (default 25): CPU use below which a host is emptied.
//! - `target-percent` (default 80): CPU use a receiving host may reach.

use locus_sdk::{Migration, MigrationPolicy, Partition, PlanBuilder, config_or};

/// The consolidate migration policy.
#[derive(Debug)]
pub struct Consolidate;

fn percent_of(part: u32, whole: u32) -> u64 {
    if whole == 0 { u64::MAX } else { u64::from(part) * 100 / u64::from(whole) }
}

/// Moves every VM off `host` in `plan`, or returns false (leaving `plan` in
/// an unspecified state for the caller to discard).
fn empty(plan: &mut PlanBuilder<'_>, host: u32, emptied: &[bool], target: u64) -> bool {
    let p = plan.partition();
    let hosts = &p.cluster.hosts;
    let mut vms: Vec<u32> = plan.vms_on(host).collect();
    vms.sort_by_key(|&v| (std::cmp::Reverse(p.vms.load_cpu_milli[v as usize]), v));
    for vm in vms {
        let demand = p.vms.load_cpu_milli[vm as usize];
        let to = (0..hosts.len() as u32)
            .filter(|&h| h != host && !emptied[h as usize] && plan.vm_count(h) > 0)
            .filter(|&h| percent_of(plan.load(h) + demand, hosts.cpu_milli[h as usize]) <= target)
            .filter(|&h| plan.check(vm, h).is_ok())
            .max_by_key(|&h| (plan.load(h), std::cmp::Reverse(h)));
        match to {
            Some(to) if plan.try_move(vm, to).is_ok() => {}
            _ => return false,
        }
    }
    true
}

impl MigrationPolicy for Consolidate {
    fn plan(partition: &Partition) -> Vec<Migration> {
        let underload: u64 = config_or("underload-percent", 25);
        let target: u64 = config_or("target-percent", 80);
        let hosts = &partition.cluster.hosts;
        let mut plan = PlanBuilder::new(partition);
        let mut candidates: Vec<u32> = (0..hosts.len() as u32)
            .filter(|&h| hosts.vm_count[h as usize] > 0)
            .filter(|&h| {
                percent_of(hosts.load_cpu_milli[h as usize], hosts.cpu_milli[h as usize]) < underload
            })
            .collect();
        candidates.sort_by_key(|&h| (hosts.load_cpu_milli[h as usize], h));
        let mut emptied = vec![false; hosts.len()];
        for host in candidates {
            if plan.vm_count(host) == 0 {
                continue;
            }
            emptied[host as usize] = true;
            let mut trial = plan.clone();
            if empty(&mut trial, host, &emptied, target) {
                plan = trial;
            } else {
                emptied[host as usize] = false;
            }
        }
        plan.finish()
    }
}

locus_sdk::export!(migration: Consolidate);

#[cfg(test)]
mod tests {
    use super::*;
    use locus_sdk::Resources;
    use locus_sdk::testing::{ClusterBuilder, PartitionBuilder, with_config};

    const CAP: Resources = Resources::new(16, 32_768, 500);
    const VM: Resources = Resources::new(2, 2048, 10);

    fn hosts(n: usize) -> PartitionBuilder {
        let mut c = ClusterBuilder::new().pop("FR", 48.0, 2.0);
        for _ in 0..n {
            c = c.host(0, CAP);
        }
        PartitionBuilder::new(c.build())
    }

    #[test]
    fn empties_the_lightest_host_onto_the_busier_ones() {
        let p = hosts(3).vm(0, VM, 8000).vm(1, VM, 6000).vm(2, VM, 1000).vm(2, VM, 1000).build();
        let plan = Consolidate::plan(&p);
        assert_eq!(plan.len(), 2);
        assert!(plan.iter().all(|m| m.to == 0), "busiest host first: {plan:?}");
        let mut after = PlanBuilder::new(&p);
        for m in &plan {
            after.try_move(m.vm, m.to).expect("valid");
        }
        assert_eq!(after.vm_count(2), 0);
    }

    #[test]
    fn never_pushes_a_receiver_past_the_target() {
        let p = hosts(2).vm(0, VM, 12_000).vm(1, VM, 2000).build();
        // 14000 / 16000 = 87 % > 80 %: host 1 stays.
        assert!(Consolidate::plan(&p).is_empty());
        let plan = with_config(&[("target-percent", "90")], || Consolidate::plan(&p));
        assert_eq!(plan, vec![Migration { vm: 1, to: 0 }]);
    }

    #[test]
    fn a_host_is_emptied_completely_or_not_at_all() {
        // Host 1's two VMs: only one fits on host 0 under the target.
        let p = hosts(2).vm(0, VM, 10_000).vm(1, VM, 2000).vm(1, VM, 2000).build();
        assert!(Consolidate::plan(&p).is_empty());
    }

    #[test]
    fn idle_hosts_are_not_woken_to_receive() {
        let p = hosts(3).vm(0, VM, 1000).build();
        assert!(Consolidate::plan(&p).is_empty());
    }
}
