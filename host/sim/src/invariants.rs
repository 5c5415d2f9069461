//! What must hold after every step of a checked run (see [`crate::check`]),
//! looked at for the node that just took an input, since only its state
//! moved: its intent store fits the host it runs on, and no rebalancing
//! event it leads or belongs to outlives the event timeout (a partition
//! waiting forever holds its hosts forever). What holds only once the
//! cluster settles (each VM running once, every request answered) is
//! [`crate::World::unsettled`]'s.

use locus_core::intent::VmIntent;
use locus_core::rebalance::{EventId, Rebalancer};
use std::collections::BTreeMap;

/// Problems kept word for word; past these, only counted.
const KEPT: usize = 20;

/// Slack past the event timeout before an event counts as stuck: its last
/// move may still be landing, µs.
const SLACK_US: u64 = 10_000_000;

/// The steps' invariants, per node.
#[derive(Debug)]
pub struct Invariants {
    /// The event each node leads and since when, µs.
    leading: Vec<Option<(EventId, u64)>>,
    /// The event each node is a member of and since when, µs.
    member: Vec<Option<(EventId, u64)>>,
    /// Longest an event may last, µs.
    limit_us: u64,
    problems: Vec<String>,
    broken: u64,
}

/// One node after a step, as the invariants look at it.
#[derive(Debug)]
pub struct Step<'a> {
    /// Its index in the world.
    pub node: usize,
    /// Its host's name.
    pub host: &'a str,
    /// Virtual time, µs.
    pub now_us: u64,
    /// What the host offers: vCPUs and memory, MiB.
    pub capacity: (u32, u32),
    /// Its intent store as its writes left it.
    pub store: &'a BTreeMap<String, VmIntent>,
    /// Its part in rebalancing.
    pub rebalancer: &'a Rebalancer,
}

/// What is wrong when the VMs `store` holds need more than `capacity`
/// (vCPUs, memory in MiB) of host `host`.
pub fn over_capacity(host: &str, store: &BTreeMap<String, VmIntent>, capacity: (u32, u32)) -> Option<String> {
    let (mut vcpus, mut memory) = (0u32, 0u32);
    for i in store.values() {
        vcpus = vcpus.saturating_add(i.spec.vcpus);
        memory = memory.saturating_add(i.spec.memory_mib);
    }
    let (cv, cm) = capacity;
    (vcpus > cv || memory > cm)
        .then(|| format!("{host} holds {vcpus} vCPUs and {memory} MiB, over its {cv} and {cm}"))
}

impl Invariants {
    /// For `nodes` nodes whose events last at most `event_timeout_ms`.
    pub fn new(nodes: usize, event_timeout_ms: u64) -> Self {
        Invariants {
            leading: vec![None; nodes],
            member: vec![None; nodes],
            limit_us: event_timeout_ms * 1000 + SLACK_US,
            problems: Vec::new(),
            broken: 0,
        }
    }

    /// Looks at node `step.node` after it took an input.
    pub fn after(&mut self, step: Step<'_>) {
        if let Some(over) = over_capacity(step.host, step.store, step.capacity) {
            self.broke(step.now_us, over);
        }
        let (r, mut stuck) = (step.rebalancer, Vec::new());
        for (held, now, role) in
            [(&mut self.leading, r.leading(), "leads"), (&mut self.member, r.member_of(), "is in")]
        {
            let held = &mut held[step.node];
            match (held.as_mut(), now) {
                (Some((id, since)), Some(now)) if id == now => {
                    if step.now_us - *since > self.limit_us {
                        stuck.push(format!(
                            "{} {role} event {id} since {:.3} s",
                            step.host,
                            *since as f64 / 1e6
                        ));
                        // Told again only if it lasts another limit.
                        *since = step.now_us;
                    }
                }
                (_, now) => *held = now.map(|id| (id.clone(), step.now_us)),
            }
        }
        for line in stuck {
            self.broke(step.now_us, line);
        }
    }

    fn broke(&mut self, now_us: u64, line: String) {
        self.broken += 1;
        if self.problems.len() < KEPT {
            self.problems.push(format!("at {:.3} s: {line}", now_us as f64 / 1e6));
        }
    }

    /// What broke, each with when; and how many more were not kept.
    pub fn problems(&self) -> Vec<String> {
        let mut out = self.problems.clone();
        let more = self.broken.saturating_sub(self.problems.len() as u64);
        if more > 0 {
            out.push(format!("and {more} more broken invariant(s)"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use locus_core::VmRequest;
    use locus_core::cluster::PeerId;
    use locus_core::intent::Desired;
    use locus_core::rebalance::{EventKind, MemberView, RebalanceConfig};
    use std::time::{Duration, Instant};

    fn step<'a>(now_us: u64, store: &'a BTreeMap<String, VmIntent>, r: &'a Rebalancer) -> Step<'a> {
        on(0, now_us, store, r)
    }

    fn on<'a>(
        node: usize,
        now_us: u64,
        store: &'a BTreeMap<String, VmIntent>,
        r: &'a Rebalancer,
    ) -> Step<'a> {
        let host = ["h0", "h1"][node];
        Step { node, host, now_us, capacity: (4, 4096), store, rebalancer: r }
    }

    fn vm(name: &str, vcpus: u32) -> (String, VmIntent) {
        let spec = VmRequest { name: name.into(), vcpus, memory_mib: 1024, ..VmRequest::default() };
        (name.into(), VmIntent::new(spec, Desired::Running))
    }

    #[test]
    fn a_host_holding_more_than_it_offers_breaks_at_the_step_it_happens() {
        let r = Rebalancer::new(RebalanceConfig::default(), "h0".into());
        let mut inv = Invariants::new(1, 120_000);
        let mut store: BTreeMap<_, _> = [vm("a", 2), vm("b", 2)].into();
        inv.after(step(1_000_000, &store, &r));
        assert!(inv.problems().is_empty(), "4 of 4 vCPUs: {:?}", inv.problems());
        store.extend([vm("c", 1)]);
        inv.after(step(2_000_000, &store, &r));
        assert_eq!(inv.problems(), ["at 2.000 s: h0 holds 5 vCPUs and 3072 MiB, over its 4 and 4096"]);
    }

    #[test]
    fn an_event_led_or_joined_past_its_timeout_breaks_once_per_timeout() {
        let config = RebalanceConfig { event_timeout_ms: 1_000, ..RebalanceConfig::default() };
        let limit_us = 1_000_000 + SLACK_US;
        let t0 = Instant::now();
        let mut r = Rebalancer::new(config.clone(), "h0".into());
        let me = MemberView {
            peer: PeerId::from("p0"),
            host: "h0".into(),
            pop: "pop".into(),
            capacity: Default::default(),
            cpu_milli: 1000,
            watts: (0, 0),
            vms: vec![],
            fixed: vec![],
        };
        // It asks h1 to join and hears nothing more: it leads until it ticks.
        r.start(t0, EventKind::Overload, me, vec![(PeerId::from("p1"), "h1".into())]);
        // h1 joins h0's event and hears nothing more: it is in it until its lease ends.
        let mut m = Rebalancer::new(config.clone(), "h1".into());
        let event = r.leading().cloned().expect("leading");
        m.on_join(t0, PeerId::from("p0"), event, false);
        let store = BTreeMap::new();
        let mut inv = Invariants::new(2, config.event_timeout_ms);
        for t in [0, limit_us, limit_us + 1, limit_us + 2, 2 * limit_us + 2] {
            inv.after(step(t, &store, &r));
            inv.after(on(1, t, &store, &m));
        }
        assert_eq!(
            inv.problems(),
            [
                "at 11.000 s: h0 leads event h0#1 since 0.000 s",
                "at 11.000 s: h1 is in event h0#1 since 0.000 s",
                "at 22.000 s: h0 leads event h0#1 since 11.000 s",
                "at 22.000 s: h1 is in event h0#1 since 11.000 s",
            ],
            "over the limit at 11.000001 s, and again a limit later"
        );
        // An event that ends is no longer timed.
        let _ = r.tick(t0 + Duration::from_secs(60));
        assert_eq!(r.leading(), None, "timed out");
        inv.after(step(2 * limit_us + 3, &store, &r));
        inv.after(step(4 * limit_us, &store, &r));
        assert_eq!(inv.problems().len(), 4, "an event over is no longer timed: {:?}", inv.problems());
    }
}
