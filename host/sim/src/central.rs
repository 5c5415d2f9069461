//! The centralized baseline (`[scheduler] kind = "centralized"`): one
//! scheduler that every period gathers every host of a PoP, as each
//! agent describes itself to a partition leader, runs the same migration
//! policy over the whole PoP (VMs move within their PoP), and sends each
//! move to the agent that holds the VM, which carries it out as it would
//! a rebalancing move. Entropy's scheme, against which DVMS was measured.

use crate::deciders::Deciders;
use locus_core::rebalance::{EventKind, MemberView, PopBook, build_partition};

/// A move the plan asks for: VM `vm`, held by member `from`, to host `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    /// Index of the member (in the slice planned over) that holds the VM.
    pub from: usize,
    /// The VM.
    pub vm: String,
    /// The destination host, by name.
    pub to: String,
}

/// The moves the migration policy plans over `members` (one PoP's hosts,
/// described by `book`) and how long planning took, µs; or why it could
/// not plan.
pub fn plan(members: &[MemberView], book: &PopBook, policies: &Deciders) -> Result<(Vec<Move>, u64), String> {
    if members.len() < 2 {
        return Ok((Vec::new(), 0));
    }
    let (partition, rows) = build_partition(members, book)?;
    let (verdict, us) = policies.plan(EventKind::Overload, &partition);
    let verdict = verdict.map_err(|e| e.to_string())?;
    let moves = verdict
        .value
        .iter()
        .filter_map(|m| {
            let (vm, from) = rows.get(m.vm as usize)?;
            let to = members.get(m.to as usize)?;
            (to.host != members[*from].host).then(|| Move {
                from: *from,
                vm: vm.clone(),
                to: to.host.clone(),
            })
        })
        .collect();
    Ok((moves, us))
}

#[cfg(test)]
mod tests {
    use super::*;
    use locus_core::VmRequest;
    use locus_core::node::Size;
    use locus_core::rebalance::MemberVm;
    use locus_core::request::Location;

    fn member(host: &str, loads: &[u32]) -> MemberView {
        let vms = loads
            .iter()
            .enumerate()
            .map(|(k, &load)| MemberVm {
                spec: VmRequest {
                    name: format!("{host}-vm{k}"),
                    vcpus: 2,
                    memory_mib: 1024,
                    ..Default::default()
                },
                load_cpu_milli: load,
            })
            .collect();
        MemberView {
            peer: locus_core::cluster::PeerId::from(host),
            host: host.into(),
            pop: "lyon".into(),
            capacity: Size { vcpus: 16, memory_mib: 16_384, disk_gib: 100 },
            cpu_milli: 7_200,
            watts: (100, 300),
            vms,
            fixed: vec![],
        }
    }

    #[test]
    fn the_plan_over_a_whole_pop_moves_load_off_the_overloaded_host_only() {
        let book = PopBook {
            pops: vec![("lyon".into(), "FR".into(), Location { lat: 45.76, lon: 4.84 }, 0, 300)],
            ..Default::default()
        };
        let policy = Deciders::new(&Default::default()).expect("native");
        let members = [member("a", &[2000, 2000, 2000, 2000]), member("b", &[500]), member("c", &[500, 500])];
        let (moves, _) = plan(&members, &book, &policy).expect("plans");
        assert!(!moves.is_empty(), "a holds 8 CPUs of demand against 7.2");
        assert!(moves.iter().all(|m| m.from == 0 && m.to != "a" && m.vm.starts_with("a-")), "{moves:?}");
        let calm = [member("a", &[1000]), member("b", &[500])];
        assert_eq!(plan(&calm, &book, &policy).map(|p| p.0), Ok(vec![]));
        assert_eq!(plan(&members[..1], &book, &policy), Ok((vec![], 0)), "alone: nowhere to go");
    }
}
