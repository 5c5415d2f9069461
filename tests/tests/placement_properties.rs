//! Property: for random clusters and request sequences, no decision the
//! placement pipeline accepts ever overcommits a host, crosses a
//! jurisdiction fence, breaks a latency bound or puts two members of an
//! anti-affinity group on one host — whatever the policy: each built-in
//! WebAssembly policy, and an adversary that answers at random.

use locus_core::filter::Resolved;
use locus_core::{HostId, HostState, Model, Outcome, Placer, Policy, PolicyError, Verdict, VmRequest};
use locus_policy::{Runtime, RuntimeConfig, Slot};
use locus_sdk::{
    Cluster, Coordinates, GroupKind, Migration, Partition, Placement, Request, Resources, Score,
};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

const JURISDICTIONS: [&str; 4] = ["FR", "DE", "ES", "JP"];
const SITES: [(f32, f32); 4] = [(48.86, 2.35), (52.52, 13.40), (40.42, -3.70), (35.68, 139.69)];

/// Answers with whatever it is told to: any row, any number of scores.
struct Adversary {
    answers: Mutex<Vec<(u32, usize)>>,
}

impl Policy for Adversary {
    fn name(&self) -> String {
        "adversary@test".into()
    }
    fn place(&self, cluster: &Cluster, _: &Request) -> Result<Verdict<Placement>, PolicyError> {
        let (row, scores) = self.answers.lock().expect("lock").pop().unwrap_or((0, 0));
        let scores = (0..scores)
            .map(|i| Score { host: i as u32 % (cluster.hosts.len() as u32 + 2), value: 0.0 })
            .collect();
        Ok(Verdict { value: Placement::on_with_scores(row, scores), decided_by: self.name(), failure: None })
    }
    fn plan(&self, _: &Partition) -> Result<Verdict<Vec<Migration>>, PolicyError> {
        Ok(Verdict { value: vec![], decided_by: self.name(), failure: None })
    }
}

fn slots() -> &'static Vec<Arc<Slot>> {
    static SLOTS: OnceLock<(Runtime, Vec<Arc<Slot>>)> = OnceLock::new();
    &SLOTS
        .get_or_init(|| {
            let rt = Runtime::new(RuntimeConfig::default()).expect("runtime");
            let slots = ["first-fit", "best-fit", "spread", "nearest", "green"]
                .iter()
                .map(|name| {
                    let slot = Slot::new(*name, 1);
                    let bytes = locus_builtin::builtin(name).expect("built-in");
                    slot.activate(rt.load(bytes, name, BTreeMap::new()).expect("loads"));
                    Arc::new(slot)
                })
                .collect();
            (rt, slots)
        })
        .1
}

#[derive(Debug, Clone)]
struct HostGen {
    pop: usize,
    vcpus: u32,
    memory_mib: u32,
    disk_gib: u32,
    down: bool,
}

#[derive(Debug, Clone)]
struct ReqGen {
    vcpus: u32,
    memory_mib: u32,
    disk_gib: u32,
    jurisdictions: Vec<usize>,
    user: Option<usize>,
    max_latency_ms: Option<f32>,
    group: Option<(u8, GroupKind)>,
    adversary: (u32, usize),
}

fn host_gen(pops: usize) -> impl Strategy<Value = HostGen> {
    (0..pops, 1u32..32, 512u32..65_536, 0u32..500, proptest::bool::weighted(0.1)).prop_map(
        |(pop, vcpus, memory_mib, disk_gib, down)| HostGen { pop, vcpus, memory_mib, disk_gib, down },
    )
}

fn req_gen() -> impl Strategy<Value = ReqGen> {
    let group = prop_oneof![
        Just(None),
        (0u8..2).prop_map(|g| Some((g, GroupKind::AntiAffinity))),
        (2u8..3).prop_map(|g| Some((g, GroupKind::Spread))),
        (3u8..4).prop_map(|g| Some((g, GroupKind::Affinity))),
    ];
    (
        (1u32..12, 256u32..24_000, 0u32..200),
        proptest::collection::vec(0usize..5, 0..3),
        proptest::option::of(0usize..4),
        proptest::option::of(2.0f32..200.0),
        group,
        (0u32..40, 0usize..45),
    )
        .prop_map(
            |((vcpus, memory_mib, disk_gib), jurisdictions, user, max_latency_ms, group, adversary)| ReqGen {
                vcpus,
                memory_mib,
                disk_gib,
                jurisdictions,
                user,
                max_latency_ms: user.and(max_latency_ms),
                group,
                adversary,
            },
        )
}

fn build(pops: usize, hosts: &[HostGen]) -> Model {
    let mut m = Model::new();
    for p in 0..pops {
        let (lat, lon) = SITES[p];
        m.add_pop(&format!("pop{p}"), JURISDICTIONS[p], Coordinates::new(lat, lon), 0, 100 * p as u32)
            .expect("pop");
    }
    for (i, h) in hosts.iter().enumerate() {
        let cap = Resources::new(h.vcpus, h.memory_mib, h.disk_gib);
        let id = m
            .add_host(&format!("h{i}"), &format!("pop{}", h.pop), cap, h.vcpus * 1000, (100, 250))
            .expect("host");
        if h.down {
            m.set_host_state(id, HostState::Down);
        }
    }
    m
}

fn request(i: usize, r: &ReqGen) -> VmRequest {
    let codes = ["FR", "DE", "ES", "JP", "XX"];
    VmRequest {
        name: format!("vm{i}"),
        vcpus: r.vcpus,
        memory_mib: r.memory_mib,
        disk_gib: r.disk_gib,
        load_cpu_milli: None,
        group: r.group.map(|(g, kind)| locus_core::request::GroupRef {
            name: format!("g{g}"),
            kind: match kind {
                GroupKind::Affinity => locus_core::request::GroupKindSpec::Affinity,
                GroupKind::AntiAffinity => locus_core::request::GroupKindSpec::AntiAffinity,
                GroupKind::Spread => locus_core::request::GroupKindSpec::Spread,
            },
        }),
        jurisdictions: r.jurisdictions.iter().map(|&j| codes[j].to_owned()).collect(),
        user: r.user.map(|s| locus_core::Location { lat: SITES[s].0 + 1.0, lon: SITES[s].1 - 1.0 }),
        max_latency_ms: r.max_latency_ms,
        ..VmRequest::default()
    }
}

/// Checks an accepted decision against the hard constraints, then records it.
fn check_and_apply(m: &mut Model, req: &VmRequest, host: HostId) {
    let h = &m.hosts[host.0 as usize];
    assert_eq!(h.state, HostState::Up, "placed on a host that is not up");
    assert!(req.size().fits_in(h.free()), "overcommitted {}: {:?} into {:?}", h.name, req.size(), h.free());
    let pop = &m.pops[h.pop.0 as usize];
    if !req.jurisdictions.is_empty() {
        assert!(req.jurisdictions.contains(&m.jurisdictions[pop.jurisdiction as usize]), "fence crossed");
    }
    let resolved = Resolved::new(m, req);
    if let (Some(bound), Some(&rtt)) =
        (resolved.max_latency_us, resolved.user_latency_us.get(h.pop.0 as usize))
    {
        assert!(rtt <= bound, "latency bound broken: {rtt} > {bound}");
    }
    let group =
        req.group.as_ref().map(|g| m.group(&g.name, g.kind.into()).expect("group kinds are consistent"));
    if let (Some(g), Some(spec)) = (group, &req.group)
        && spec.kind == locus_core::request::GroupKindSpec::AntiAffinity
    {
        assert_eq!(m.groups[g.0 as usize].members.get(&host), None, "anti-affinity broken");
    }
    let jurisdictions = req.jurisdictions.iter().filter_map(|j| m.find_jurisdiction(j)).collect();
    m.add_vm(&req.name, host, req.size(), req.expected_load(), group, jurisdictions).expect("recorded");
    let h = &m.hosts[host.0 as usize];
    assert!(h.allocated.fits_in(h.capacity), "capacity exceeded after placement");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn accepted_decisions_never_break_hard_constraints(
        (pops, hosts) in (1usize..5).prop_flat_map(|p| (Just(p), proptest::collection::vec(host_gen(p), 1..20))),
        requests in proptest::collection::vec(req_gen(), 1..30),
    ) {
        let adversary = Adversary { answers: Mutex::new(requests.iter().rev().map(|r| r.adversary).collect()) };
        let mut policies: Vec<&dyn Policy> = slots().iter().map(|s| s.as_ref() as &dyn Policy).collect();
        policies.push(&adversary);
        for policy in policies {
            let mut model = build(pops, &hosts);
            let mut placer = Placer::new();
            for (i, r) in requests.iter().enumerate() {
                let req = request(i, r);
                let decision = placer.place(&model, &req, policy);
                if let Outcome::Placed { host } = decision.outcome {
                    check_and_apply(&mut model, &req, host);
                }
            }
        }
    }
}
