//! The rebalancer alone: events grow, plan, move and end; conflicts
//! resolve by age; deadlines and leases end what would otherwise wait.

use super::*;
use crate::{Native, Policy};

fn peer(h: &str) -> PeerId {
    PeerId::from(format!("peer-{h}"))
}

fn view(host: &str, loads: &[u32]) -> MemberView {
    let vms = loads
        .iter()
        .enumerate()
        .map(|(i, &load)| MemberVm {
            spec: VmRequest {
                name: format!("{host}-vm{i}"),
                vcpus: 2,
                memory_mib: 512,
                ..VmRequest::default()
            },
            load_cpu_milli: load,
        })
        .collect();
    MemberView {
        peer: peer(host),
        host: host.into(),
        pop: "lyon".into(),
        capacity: Size { vcpus: 16, memory_mib: 16_384, disk_gib: 100 },
        cpu_milli: 4000,
        watts: (100, 200),
        vms,
        fixed: vec![],
    }
}

fn book() -> PopBook {
    PopBook {
        pops: vec![("lyon".into(), "FR".into(), Location { lat: 45.7, lon: 4.8 }, 0, 50)],
        latency_us: BTreeMap::new(),
    }
}

fn config() -> RebalanceConfig {
    RebalanceConfig { event_timeout_ms: 10_000, retry_after_ms: 5_000, ..RebalanceConfig::default() }
}

fn joins(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Join { to, .. } => Some(to.to_string()),
            _ => None,
        })
        .collect()
}

fn plan_of(actions: &[Action]) -> Option<(u64, Box<PlanQuestion>)> {
    actions.iter().find_map(|a| match a {
        Action::Plan { id, question } => Some((*id, question.clone())),
        _ => None,
    })
}

#[test]
fn an_event_grows_along_the_ring_skips_a_busy_host_plans_moves_and_ends_solved() {
    let now = Instant::now();
    let mut r = Rebalancer::new(config(), "a".into());
    let candidates = vec![(peer("b"), "b".into()), (peer("c"), "c".into())];
    let actions = r.start(now, EventKind::Overload, view("a", &[3000, 3000]), candidates);
    assert_eq!(joins(&actions), vec!["peer-b"]);
    let event = r.leading().expect("leads").clone();
    let other = EventId { clock: 1, host: "x".into() };
    let actions = r.join_answer(now, &event, "b", Err(Some(other)), &book());
    assert_eq!(joins(&actions), vec!["peer-c"], "a busy host is skipped");
    let actions = r.join_answer(now, &event, "c", Ok((view("c", &[500]), vec![])), &book());
    let (id, question) = plan_of(&actions).expect("a plan is asked for after the join");
    assert_eq!(question.partition.cluster.hosts.len(), 2);
    assert_eq!(question.partition.vms.len(), 3);
    let policy = Native::migration::<policy_relieve_overload::RelieveOverload>("relieve-overload");
    let actions = r.planned(now, id, policy.plan(&question.partition));
    let moves: Vec<(String, String)> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Move { vm, to, .. } => Some((vm.clone(), to.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(moves.len(), 1, "{actions:?}");
    assert_eq!(moves[0].1, "c");
    assert!(!r.idle());
    let actions = r.move_done(now + Duration::from_millis(700), &moves[0].0, Ok(()));
    assert!(actions.contains(&Action::Leave { to: peer("c"), event: event.clone() }), "{actions:?}");
    assert!(r.idle());
    let report = r.status().recent.pop().expect("a report");
    assert!(report.solved, "{report:?}");
    assert_eq!((report.moved, report.duration_ms), (1, 700));
    assert_eq!(report.partition, vec!["a".to_owned(), "c".to_owned()]);
}

#[test]
fn a_plan_that_leaves_an_overload_grows_the_partition_and_no_host_left_is_unsolvable_with_why() {
    let now = Instant::now();
    let mut r = Rebalancer::new(config(), "a".into());
    let candidates = vec![(peer("b"), "b".into()), (peer("c"), "c".into())];
    r.start(now, EventKind::Overload, view("a", &[3000, 3000, 3000]), candidates);
    let event = r.leading().expect("leads").clone();
    // b is nearly full: one VM fits, the overload stays.
    let actions = r.join_answer(now, &event, "b", Ok((view("b", &[2500]), vec![])), &book());
    let (id, _) = plan_of(&actions).expect("plan");
    let empty = Verdict { value: vec![], decided_by: "test".into(), failure: None };
    let actions = r.planned(now, id, Ok(empty));
    assert_eq!(joins(&actions), vec!["peer-c"], "no plan: the partition grows");
    let actions = r.join_answer(now, &event, "c", Err(None), &book());
    let ended = actions.iter().any(|a| matches!(a, Action::Ended(r) if !r.solved));
    assert!(ended, "{actions:?}");
    assert!(actions.contains(&Action::Leave { to: peer("b"), event }));
    let report = r.status().recent.pop().expect("report");
    assert!(report.outcome.contains("unreachable: c"), "{}", report.outcome);
    // It waits before trying again.
    assert_eq!(r.wants(now + Duration::from_secs(1), crate::load::LoadState::Overloaded), None);
    assert_eq!(
        r.wants(now + Duration::from_secs(6), crate::load::LoadState::Overloaded),
        Some(EventKind::Overload)
    );
}

#[test]
fn the_older_event_wins_a_younger_leader_merges_into_it_and_a_younger_one_is_refused() {
    let now = Instant::now();
    let mut b = Rebalancer::new(config(), "b".into());
    b.clock = 4;
    b.start(now, EventKind::Overload, view("b", &[5000]), vec![(peer("d"), "d".into())]);
    let b_event = b.leading().expect("b leads").clone();
    b.join_answer(now, &b_event, "d", Ok((view("d", &[]), vec![])), &book());
    // A younger event asks b: refused.
    let younger = EventId { clock: 9, host: "z".into() };
    let (answer, _) = b.on_join(now, peer("z"), younger, false);
    assert_eq!(answer, JoinAnswer::Busy(b_event.clone()));
    // An older one: b's partition merges into it, and d is handed over.
    let older = EventId { clock: 2, host: "a".into() };
    let (answer, actions) = b.on_join(now, peer("a"), older.clone(), false);
    assert_eq!(answer, JoinAnswer::Joined { also: vec![(peer("d"), "d".into())] });
    assert!(actions.contains(&Action::Leave { to: peer("d"), event: b_event }), "{actions:?}");
    assert_eq!(b.member_of(), Some(&older));
    assert!(b.leading().is_none());
    // Same clock: the host name breaks the tie, the same way everywhere.
    assert!(EventId { clock: 3, host: "a".into() } < EventId { clock: 3, host: "b".into() });
    // A leader moving VMs never gives way.
    let mut c = Rebalancer::new(config(), "c".into());
    c.clock = 10;
    c.start(now, EventKind::Overload, view("c", &[5000]), vec![(peer("e"), "e".into())]);
    let (answer, _) = c.on_join(now, peer("a"), EventId { clock: 1, host: "a".into() }, true);
    assert!(matches!(answer, JoinAnswer::Busy(_)));
}

#[test]
fn deadlines_end_an_event_and_leases_free_a_member_whose_leader_vanished() {
    let now = Instant::now();
    let mut a = Rebalancer::new(config(), "a".into());
    a.start(now, EventKind::Overload, view("a", &[5000]), vec![(peer("b"), "b".into())]);
    let event = a.leading().expect("leads").clone();
    a.join_answer(now, &event, "b", Ok((view("b", &[]), vec![])), &book());
    assert_eq!(a.deadline(), Some(now + Duration::from_secs(10)));
    let actions = a.tick(now + Duration::from_secs(10));
    assert!(actions.contains(&Action::Leave { to: peer("b"), event: event.clone() }));
    assert_eq!(a.status().recent[0].outcome, "timed out");
    // An answer for the ended event lets its host go.
    let late = a.join_answer(now, &event, "c", Ok((view("c", &[]), vec![])), &book());
    assert_eq!(late, vec![Action::Leave { to: peer("c"), event: event.clone() }]);

    let mut b = Rebalancer::new(config(), "b".into());
    b.on_join(now, peer("a"), event.clone(), false);
    assert_eq!(b.member_of(), Some(&event));
    assert!(b.tick(now + Duration::from_secs(9)).is_empty());
    b.tick(now + Duration::from_secs(10));
    assert!(b.idle(), "the lease ended");
    // Or the leader is declared dead.
    b.on_join(now, peer("a"), event, false);
    b.host_dead(now, "a", &peer("a"));
    assert!(b.idle());
}

#[test]
fn consolidation_waits_an_interval_and_needs_a_non_empty_plan() {
    let now = Instant::now();
    let config = RebalanceConfig { consolidate_interval_ms: 1_000, ..config() };
    let mut r = Rebalancer::new(config, "a".into());
    let under = crate::load::LoadState::Underloaded;
    assert_eq!(r.wants(now, under), None, "not on its first sample");
    assert_eq!(r.wants(now + Duration::from_millis(500), under), None);
    assert_eq!(r.wants(now + Duration::from_millis(1000), under), Some(EventKind::Consolidate));
    r.start(now, EventKind::Consolidate, view("a", &[100]), vec![(peer("b"), "b".into())]);
    let event = r.leading().expect("leads").clone();
    let actions = r.join_answer(now, &event, "b", Ok((view("b", &[2000]), vec![])), &book());
    let (id, question) = plan_of(&actions).expect("plan");
    assert_eq!(question.kind, EventKind::Consolidate);
    let policy = Native::migration::<policy_consolidate::Consolidate>("consolidate");
    let actions = r.planned(now, id, policy.plan(&question.partition));
    assert!(actions.iter().any(|a| matches!(a, Action::Move { to, .. } if to == "b")), "{actions:?}");
}
