//! The node driven by hand: a small in-memory hypervisor carries out its
//! commands, and each test checks the outputs in order.

use super::*;
use crate::request::RestartPolicy;
use crate::{Native, VmRequest};
use locus_sdk::{Cluster, Placement, PlacementPolicy, Request};

struct FirstCandidate;

impl PlacementPolicy for FirstCandidate {
    fn place(cluster: &Cluster, _: &Request) -> Placement {
        match cluster.hosts.iter().next() {
            Some(h) => Placement::on(h.row),
            None => Placement::reject(locus_sdk::RejectReason::NoCapacity, "no candidate"),
        }
    }
}

/// Domains by name: (state, ours, ignores ACPI shutdown).
#[derive(Default)]
pub(super) struct Hv {
    pub(super) domains: BTreeMap<String, (DomainState, bool)>,
    /// The generation in a domain's mark, where it has one.
    pub(super) generations: BTreeMap<String, u64>,
    deaf_to_acpi: bool,
    refuse_start: bool,
    down: bool,
    /// Reports no CPU use, as libvirt's test driver does.
    pub(super) unmeasured: bool,
}

impl Hv {
    pub(super) fn run(&mut self, cmd: &HvCommand) -> Result<DomainState, HvError> {
        if self.down {
            return Err(HvError { kind: HvErrorKind::Unavailable, message: "connection refused".into() });
        }
        let name = cmd.vm().to_owned();
        let missing = || HvError { kind: HvErrorKind::NotFound, message: format!("no domain {name}") };
        let state = match cmd {
            HvCommand::Define { generation, .. } => {
                if !self.domains.contains_key(&name) {
                    self.domains.insert(name.clone(), (DomainState::Shutoff, true));
                    self.generations.insert(name.clone(), *generation);
                }
                DomainState::Shutoff
            }
            HvCommand::Start(_) if self.refuse_start => {
                return Err(HvError { kind: HvErrorKind::Refused, message: "no room for the guest".into() });
            }
            HvCommand::Start(_) => {
                let d = self.domains.get_mut(&name).ok_or_else(missing)?;
                d.0 = DomainState::Running;
                d.0
            }
            HvCommand::Shutdown(_) => match self.domains.get_mut(&name) {
                Some(d) if !self.deaf_to_acpi => {
                    d.0 = DomainState::Shutoff;
                    d.0
                }
                Some(d) => d.0,
                None => DomainState::Missing,
            },
            HvCommand::Destroy(_) => match self.domains.get_mut(&name) {
                Some(d) => {
                    d.0 = DomainState::Shutoff;
                    d.0
                }
                None => DomainState::Missing,
            },
            HvCommand::Undefine(_) => {
                self.domains.remove(&name);
                self.generations.remove(&name);
                DomainState::Missing
            }
            HvCommand::Receive { live: true, .. } => DomainState::Missing,
            HvCommand::Receive { live: false, generation, .. } => {
                if !self.domains.contains_key(&name) {
                    self.generations.insert(name.clone(), *generation);
                }
                self.domains.entry(name.clone()).or_insert((DomainState::Shutoff, true)).0
            }
            // A lone hypervisor: the domain leaves for nowhere.
            HvCommand::MigrateOut { .. } => {
                self.domains.remove(&name);
                DomainState::Missing
            }
            HvCommand::Settle(_) => self.domains.get(&name).map_or(DomainState::Missing, |d| d.0),
            HvCommand::Discard { .. } => {
                if self.domains.get(&name).is_some_and(|d| !d.0.is_active()) {
                    self.domains.remove(&name);
                }
                DomainState::Missing
            }
            HvCommand::Adopt { generation, .. } => {
                let d = self.domains.get_mut(&name).ok_or_else(missing)?;
                if !d.1 {
                    d.1 = true;
                    self.generations.insert(name.clone(), *generation);
                }
                d.0
            }
        };
        Ok(state)
    }

    pub(super) fn observation(&self) -> Observation {
        let mut o = Observation::default();
        for (name, (state, ours)) in &self.domains {
            if *ours {
                o.ours.push(DomainSeen {
                    name: name.clone(),
                    state: *state,
                    cpu_time_ns: 1,
                    cpu_milli: (!self.unmeasured).then_some(250),
                    memory_kib: 1024,
                    generation: self.generations.get(name).copied(),
                });
            } else {
                o.others.push(name.clone());
            }
        }
        o
    }
}

pub(super) fn inventory() -> Inventory {
    Inventory { cpus: 4, memory_mib: 8192, hypervisor: "test".into(), migration_uri: None }
}

fn node(intents: Vec<VmIntent>) -> Node {
    let mut config = NodeConfig::default();
    config.host.name = "h1".into();
    config.timing.stop_timeout_ms = 5_000;
    // A heartbeat a minute keeps the timers these tests look at in front.
    config.membership.heartbeat_ms = 60_000;
    Node::new(config, intents).expect("node")
}

fn spec(name: &str) -> VmRequest {
    VmRequest { name: name.into(), vcpus: 1, memory_mib: 512, ..VmRequest::default() }
}

/// Drives a node against an in-memory hypervisor, recording what it says;
/// its placement questions are answered on the spot.
struct Rig {
    node: Node,
    hv: Hv,
    policy: Native,
    /// Keep questions instead of answering them (answers come later, by hand).
    hold: bool,
    held: VecDeque<(DecisionId, Box<Question>)>,
    now: Instant,
    next_req: u64,
    log: Vec<Output>,
    /// The store refuses every write.
    disk_full: bool,
    /// The overlay's location records, by VM.
    records: BTreeMap<String, crate::cluster::VmLocation>,
    /// Records looked up so far.
    lookups: usize,
}

impl Rig {
    fn new(node: Node, hv: Hv) -> Self {
        let policy = Native::placement::<FirstCandidate>("first");
        let mut rig = Rig {
            node,
            hv,
            policy,
            hold: false,
            held: VecDeque::new(),
            now: Instant::now(),
            next_req: 0,
            log: vec![],
            disk_full: false,
            records: BTreeMap::new(),
            lookups: 0,
        };
        let domains = rig.hv.observation();
        rig.input(Input::HypervisorUp { now: rig.now, inventory: inventory(), domains });
        rig.input(Input::Timeout(rig.now));
        rig
    }

    /// Feeds an input and carries out every hypervisor command until the
    /// node is idle. Each round's writes are recorded, unless `disk_full`:
    /// then the round's commands are withheld and the node is told.
    fn input(&mut self, input: Input) {
        let mut queue = VecDeque::from([input]);
        while let Some(input) = queue.pop_front() {
            self.node.handle_input(input);
            let mut round = Vec::new();
            let mut wrote = false;
            loop {
                match self.node.poll_output() {
                    Output::Timeout(_) => break,
                    Output::Persist(change) => {
                        wrote = true;
                        self.log.push(Output::Persist(change));
                    }
                    Output::Hypervisor { op, cmd } => round.push((op, cmd)),
                    Output::Decide { id, question } if self.hold => self.held.push_back((id, question)),
                    Output::Decide { id, question } => {
                        let answer = crate::Policy::place(&self.policy, &question.cluster, &question.request);
                        queue.push_back(Input::Decided { now: self.now, id, question, answer });
                    }
                    Output::Locate(vm) => {
                        self.lookups += 1;
                        let at = self.records.get(&vm).cloned().map(Box::new);
                        queue.push_back(Input::Located { now: self.now, vm, at });
                    }
                    other => self.log.push(other),
                }
            }
            if wrote && self.disk_full {
                queue.push_front(Input::NotRecorded {
                    now: self.now,
                    reason: "no space".into(),
                    no_space: true,
                });
                continue;
            }
            if wrote {
                // Answers that waited for the write come out of this input.
                queue.push_front(Input::Recorded);
            }
            for (op, cmd) in round {
                let result = self.hv.run(&cmd);
                self.log.push(Output::Hypervisor { op, cmd });
                queue.push_back(Input::Hypervisor { now: self.now, op, result });
            }
        }
    }

    /// Sends a request without waiting for its reply.
    fn send(&mut self, cmd: Command) -> ReqId {
        let req = ReqId(self.next_req);
        self.next_req += 1;
        self.input(Input::Api { now: self.now, req, cmd });
        req
    }

    /// Answers the oldest held question now.
    fn answer_held(&mut self) {
        let (id, question) = self.held.pop_front().expect("a held question");
        let answer = crate::Policy::place(&self.policy, &question.cluster, &question.request);
        self.input(Input::Decided { now: self.now, id, question, answer });
    }

    fn api(&mut self, cmd: Command) -> Result<Reply, ApiError> {
        let req = ReqId(self.next_req);
        self.next_req += 1;
        self.input(Input::Api { now: self.now, req, cmd });
        self.take_reply(req).expect("a reply")
    }

    fn take_reply(&mut self, req: ReqId) -> Option<Result<Reply, ApiError>> {
        let i = self.log.iter().position(|o| matches!(o, Output::Reply { req: r, .. } if *r == req))?;
        match self.log.remove(i) {
            Output::Reply { reply, .. } => Some(reply),
            _ => None,
        }
    }

    fn sample(&mut self) {
        let domains = self.hv.observation();
        self.input(Input::Sampled { now: self.now, domains });
    }

    fn commands(&self) -> Vec<String> {
        self.log
            .iter()
            .filter_map(|o| match o {
                Output::Hypervisor { cmd, .. } => {
                    Some(format!("{cmd:?}").split(['(', ' ']).next().unwrap_or("").to_owned())
                }
                _ => None,
            })
            .collect()
    }

    fn events(&self) -> Vec<&Event> {
        self.log.iter().filter_map(|o| if let Output::Event(e) = o { Some(e) } else { None }).collect()
    }

    fn state(&mut self, name: &str) -> VmStatus {
        match self.api(Command::Show(name.into())) {
            Ok(Reply::Vm(s)) => *s,
            other => panic!("show {name}: {other:?}"),
        }
    }
}

fn error_kind(r: Result<Reply, ApiError>) -> ApiErrorKind {
    r.expect_err("an error").kind
}

#[test]
fn create_persists_intent_before_defining_then_boots() {
    let mut rig = Rig::new(node(vec![]), Hv::default());
    rig.log.clear();
    let reply = rig.api(Command::Create(Box::new(spec("web"))));
    let Ok(Reply::Vm(status)) = reply else { panic!("{reply:?}") };
    assert_eq!((status.state, status.desired), (DomainState::Running, Desired::Running));
    let persist = rig.log.iter().position(|o| matches!(o, Output::Persist(Change::Put(_))));
    let define =
        rig.log.iter().position(|o| matches!(o, Output::Hypervisor { cmd: HvCommand::Define { .. }, .. }));
    assert!(persist < define, "intent is written before the domain is defined: {:?}", rig.log);
    assert_eq!(rig.commands(), ["Define", "Start"]);
    assert_eq!(rig.node.model().hosts[0].allocated.memory_mib, 512);
}

#[test]
fn bad_requests_are_refused_before_the_hypervisor_hears_of_them() {
    let mut rig = Rig::new(node(vec![]), Hv::default());
    rig.hv.domains.insert("foreign".into(), (DomainState::Running, false));
    rig.sample();
    rig.api(Command::Create(Box::new(spec("web")))).expect("first create");
    rig.log.clear();
    let mut zero = spec("zero");
    zero.vcpus = 0;
    assert_eq!(error_kind(rig.api(Command::Create(Box::new(zero)))), ApiErrorKind::BadRequest);
    assert_eq!(error_kind(rig.api(Command::Create(Box::new(spec("web"))))), ApiErrorKind::Conflict);
    assert_eq!(error_kind(rig.api(Command::Create(Box::new(spec("foreign"))))), ApiErrorKind::Conflict);
    let mut huge = spec("huge");
    huge.memory_mib = 1 << 20;
    let e = rig.api(Command::Create(Box::new(huge))).expect_err("too big");
    assert_eq!(e.kind, ApiErrorKind::Unplaceable);
    assert!(e.message.contains("huge"), "{}", e.message);
    assert_eq!(error_kind(rig.api(Command::Start("nope".into()))), ApiErrorKind::NotFound);
    assert!(rig.commands().is_empty(), "nothing reached the hypervisor: {:?}", rig.log);
    assert!(!rig.log.iter().any(|o| matches!(o, Output::Persist(_))), "nothing was persisted");
}

#[test]
fn an_unreachable_hypervisor_refuses_changes_but_still_answers_reads() {
    let mut rig = Rig::new(node(vec![]), Hv::default());
    rig.api(Command::Create(Box::new(spec("a")))).expect("create");
    rig.input(Input::HypervisorDown { now: rig.now, reason: "libvirtd is not running".into() });
    let e = rig.api(Command::Create(Box::new(spec("b")))).expect_err("down");
    assert_eq!(e.kind, ApiErrorKind::Unavailable);
    assert!(e.message.contains("libvirtd is not running"), "{}", e.message);
    let Ok(Reply::Host(host)) = rig.api(Command::Host) else { panic!("host status") };
    assert_eq!(host.hypervisor.state, "down");
    assert!(matches!(rig.api(Command::List), Ok(Reply::Vms(v)) if v.len() == 1));
    let domains = rig.hv.observation();
    rig.input(Input::HypervisorUp { now: rig.now, inventory: inventory(), domains });
    rig.api(Command::Create(Box::new(spec("b")))).expect("up again");
}

#[test]
fn a_guest_that_ignores_shutdown_is_powered_off_at_the_deadline() {
    let mut rig = Rig::new(node(vec![]), Hv { deaf_to_acpi: true, ..Hv::default() });
    rig.api(Command::Create(Box::new(spec("a")))).expect("create");
    let req = ReqId(99);
    rig.input(Input::Api {
        now: rig.now,
        req,
        cmd: Command::Stop { name: "a".into(), force: false, timeout: None },
    });
    assert!(rig.take_reply(req).is_none(), "still waiting for the guest");
    let deadline = match rig.node.poll_output() {
        Output::Timeout(Some(at)) => at,
        other => panic!("expected a deadline, got {other:?}"),
    };
    assert_eq!(deadline - rig.now, Duration::from_secs(5));
    assert_eq!(error_kind(rig.api(Command::Start("a".into()))), ApiErrorKind::Conflict, "busy");
    rig.now = deadline;
    rig.input(Input::Timeout(deadline));
    let Some(Ok(Reply::Vm(s))) = rig.take_reply(req) else { panic!("stop answered: {:?}", rig.log) };
    assert_eq!((s.state, s.desired), (DomainState::Shutoff, Desired::Stopped));
    assert_eq!(rig.commands(), ["Define", "Start", "Shutdown", "Destroy"]);
}

#[test]
fn a_guest_that_stops_in_time_takes_its_deadline_with_it() {
    let mut rig = Rig::new(node(vec![]), Hv { deaf_to_acpi: true, ..Hv::default() });
    rig.api(Command::Create(Box::new(spec("a")))).expect("create");
    let heartbeat = match rig.node.poll_output() {
        Output::Timeout(Some(at)) => at,
        other => panic!("expected the heartbeat, got {other:?}"),
    };
    let req = rig.send(Command::Stop { name: "a".into(), force: false, timeout: None });
    assert!(
        matches!(rig.node.poll_output(), Output::Timeout(Some(at)) if at - rig.now == Duration::from_secs(5))
    );
    // The guest shuts down by itself a second later.
    rig.now += Duration::from_secs(1);
    rig.hv.domains.get_mut("a").expect("domain").0 = DomainState::Shutoff;
    rig.sample();
    assert!(matches!(rig.take_reply(req), Some(Ok(Reply::Vm(_)))), "stop answered");
    assert_eq!(rig.node.poll_output(), Output::Timeout(Some(heartbeat)), "only the heartbeat is left");
    rig.now += Duration::from_secs(10);
    rig.input(Input::Timeout(rig.now));
    assert_eq!(rig.commands(), ["Define", "Start", "Shutdown"], "nothing powered off");
}

#[test]
fn a_stop_timeout_is_clamped_so_the_stop_ends() {
    let mut rig = Rig::new(node(vec![]), Hv { deaf_to_acpi: true, ..Hv::default() });
    rig.api(Command::Create(Box::new(spec("a")))).expect("create");
    let forever = Duration::from_millis(u64::MAX);
    let req = rig.send(Command::Stop { name: "a".into(), force: false, timeout: Some(forever) });
    let deadline = rig.now + MAX_STOP_TIMEOUT;
    rig.now = deadline - Duration::from_millis(1);
    rig.input(Input::Timeout(rig.now));
    assert!(rig.take_reply(req).is_none(), "still waiting for the guest");
    rig.now = deadline;
    rig.input(Input::Timeout(deadline));
    assert!(matches!(rig.take_reply(req), Some(Ok(Reply::Vm(_)))), "the stop ended");
    assert_eq!(rig.commands(), ["Define", "Start", "Shutdown", "Destroy"]);
}

#[test]
fn a_forced_stop_or_a_delete_overrides_a_graceful_stop() {
    for (cmd, last) in [
        (Command::Stop { name: "a".into(), force: true, timeout: None }, "Destroy"),
        (Command::Delete("a".into()), "Undefine"),
    ] {
        let mut rig = Rig::new(node(vec![]), Hv { deaf_to_acpi: true, ..Hv::default() });
        rig.api(Command::Create(Box::new(spec("a")))).expect("create");
        let graceful = rig.send(Command::Stop { name: "a".into(), force: false, timeout: None });
        assert!(rig.take_reply(graceful).is_none(), "waiting for the guest");
        assert_eq!(
            error_kind(rig.api(Command::Start("a".into()))),
            ApiErrorKind::Conflict,
            "a start does not override"
        );
        rig.api(cmd).expect("the forced operation is done");
        let Some(Err(e)) = rig.take_reply(graceful) else { panic!("the graceful stop is answered") };
        assert!(e.message.contains("overridden"), "{e:?}");
        assert_eq!(rig.commands().last().map(String::as_str), Some(last));
        let at_old_deadline = rig.now + Duration::from_secs(5);
        rig.input(Input::Timeout(at_old_deadline));
        assert_eq!(rig.commands().last().map(String::as_str), Some(last), "the old deadline is gone");
    }
}

#[test]
fn a_stopped_vm_that_should_run_is_restarted_with_backoff() {
    let mut rig = Rig::new(node(vec![]), Hv::default());
    rig.api(Command::Create(Box::new(spec("a")))).expect("create");
    let mut never = spec("b");
    never.restart = RestartPolicy::Never;
    rig.api(Command::Create(Box::new(never))).expect("create");
    for d in rig.hv.domains.values_mut() {
        d.0 = DomainState::Crashed;
    }
    rig.sample();
    assert_eq!(rig.state("a").state, DomainState::Running, "restarted at once");
    assert_eq!(rig.state("a").restarts, 1);
    assert_eq!(rig.state("b").state, DomainState::Crashed, "restart = never");
    rig.hv.domains.get_mut("a").expect("a").0 = DomainState::Shutoff;
    rig.sample();
    assert_eq!(rig.state("a").state, DomainState::Shutoff, "the second restart waits for the backoff");
    rig.now += Duration::from_secs(1);
    rig.sample();
    assert_eq!((rig.state("a").state, rig.state("a").restarts), (DomainState::Running, 2));
    let events = rig.events();
    assert!(events.contains(&&Event::LeftStopped("b".into())), "{events:?}");
}

#[test]
fn restart_reconciles_intent_with_what_runs() {
    let intent = |name: &str, desired| VmIntent::new(spec(name), desired);
    let mut hv = Hv::default();
    hv.domains.insert("running".into(), (DomainState::Running, true));
    hv.domains.insert("stopped".into(), (DomainState::Shutoff, true));
    hv.domains.insert("orphan".into(), (DomainState::Running, true));
    hv.domains.insert("theirs".into(), (DomainState::Running, false));
    hv.domains.insert("half-deleted".into(), (DomainState::Running, true));
    hv.domains.insert("stopped-but-running".into(), (DomainState::Running, true));
    let mut never = intent("missing-never", Desired::Running);
    never.spec.restart = RestartPolicy::Never;
    let intents = vec![
        intent("running", Desired::Running),
        intent("missing", Desired::Running),
        never,
        intent("stopped", Desired::Stopped),
        intent("half-deleted", Desired::Deleted),
        intent("stopped-but-running", Desired::Stopped),
    ];
    let rig = Rig::new(node(intents), hv);
    let mut domains: Vec<_> = rig.hv.domains.iter().map(|(n, d)| (n.as_str(), d.0)).collect();
    domains.sort_by(|a, b| a.0.cmp(b.0));
    assert_eq!(
        domains,
        [
            ("missing", DomainState::Running),
            ("missing-never", DomainState::Shutoff),
            ("orphan", DomainState::Running),
            ("running", DomainState::Running),
            ("stopped", DomainState::Shutoff),
            ("stopped-but-running", DomainState::Shutoff),
            ("theirs", DomainState::Running),
        ]
    );
    let mut commands = rig.commands();
    commands.sort();
    assert_eq!(
        commands,
        ["Define", "Define", "Destroy", "Shutdown", "Start", "Undefine"],
        "nothing created twice; the VM stopped by its operator is stopped again"
    );
    let events = rig.events();
    for e in [
        Event::Adopted("running".into()),
        Event::Recreating("missing".into()),
        Event::Orphan("orphan".into()),
        Event::Stopping("stopped-but-running".into()),
    ] {
        assert!(events.contains(&&e), "{e:?} in {events:?}");
    }
    assert!(rig.log.contains(&Output::Persist(Change::Remove("half-deleted".into()))));
    let names: Vec<_> = rig.node.intents().map(|i| i.spec.name.as_str()).collect();
    assert_eq!(names, ["missing", "missing-never", "running", "stopped", "stopped-but-running"]);
}

/// A record of `name` at `generation` on host `host` (peer `peer`).
fn record(name: &str, peer: &str, host: &str, generation: u64) -> crate::cluster::VmLocation {
    crate::cluster::VmLocation {
        peer: PeerId::from(peer),
        host: host.into(),
        pop: "p".into(),
        generation,
        desired: Desired::Running,
        spec: spec(name),
    }
}

#[test]
fn an_orphaned_domain_is_judged_by_its_generation_against_the_overlays_record() {
    let mut hv = Hv::default();
    for (name, generation) in [("here", 2), ("newer", 5), ("stale", 2), ("unrecorded", 1)] {
        hv.domains.insert(name.into(), (DomainState::Running, true));
        hv.generations.insert(name.into(), generation);
    }
    let mut rig = Rig::new(node(vec![]), hv);
    let me = rig.node.config.peer.to_string();
    // The state directory was lost: the record still names this host.
    rig.records.insert("here".into(), record("here", &me, "h1", 2));
    // Its record lags: this host's copy is a later generation than the one recorded elsewhere.
    rig.records.insert("newer".into(), record("newer", "p2", "h2", 4));
    // Created again elsewhere while this host was away.
    rig.records.insert("stale".into(), record("stale", "p2", "h2", 3));
    assert_eq!(rig.lookups, 0, "one observation is not enough to judge");
    assert!(rig.events().contains(&&Event::Orphan("here".into())));
    rig.sample();
    assert_eq!(rig.lookups, 4);
    let events = rig.events();
    for e in [
        Event::Reclaimed { vm: "here".into(), generation: 2 },
        Event::Reclaimed { vm: "newer".into(), generation: 5 },
        Event::Stale { vm: "stale".into(), current: "h2".into(), generations: (2, 3) },
    ] {
        assert!(events.contains(&&e), "{e:?} in {events:?}");
    }
    assert_eq!(rig.commands(), ["Destroy", "Undefine"], "only the stale copy is touched");
    let kept: Vec<_> = rig.hv.domains.keys().map(String::as_str).collect();
    assert_eq!(kept, ["here", "newer", "unrecorded"]);
    let intents: Vec<_> = rig.node.intents().map(|i| (i.spec.name.as_str(), i.generation)).collect();
    assert_eq!(intents, [("here", 2), ("newer", 5)]);
    let announced: Vec<_> = rig
        .log
        .iter()
        .filter_map(|o| match o {
            Output::Announce { vm, at: Some(at) } => Some((vm.as_str(), at.generation)),
            _ => None,
        })
        .collect();
    assert_eq!(announced, [("here", 2), ("newer", 5)]);
    // The taken-back VMs are reconciled like any other; the one with no
    // record is looked up again after a while, not at every sample.
    rig.sample();
    assert_eq!(rig.state("here").state, DomainState::Running);
    assert_eq!(rig.lookups, 4);
    rig.now += Duration::from_secs(6);
    rig.sample();
    assert_eq!(rig.lookups, 5);
    assert!(rig.hv.domains.contains_key("unrecorded"));
    assert_eq!(rig.commands(), ["Destroy", "Undefine"]);
    // Its name is not free: a create would take the domain over.
    let refused = rig.api(Command::Create(Box::new(spec("unrecorded")))).expect_err("refused");
    assert_eq!(refused.kind, ApiErrorKind::Conflict, "{refused:?}");
    assert!(refused.message.contains("no intent"), "{refused:?}");
}

#[test]
fn a_domain_seen_by_one_observation_only_is_never_judged() {
    let mut hv = Hv::default();
    hv.domains.insert("passing".into(), (DomainState::Running, true));
    hv.generations.insert("passing".into(), 1);
    let mut rig = Rig::new(node(vec![]), hv);
    let me = rig.node.config.peer.to_string();
    rig.records.insert("passing".into(), record("passing", &me, "h1", 1));
    // It left (a move this node finished) before the next observation.
    rig.hv.domains.clear();
    rig.sample();
    rig.hv.domains.insert("passing".into(), (DomainState::Running, true));
    rig.sample();
    assert_eq!(rig.lookups, 0);
    assert_eq!(rig.node.intents().count(), 0);
}

#[test]
fn delete_writes_the_tombstone_first_and_forgets_after_undefine() {
    let mut rig = Rig::new(node(vec![]), Hv::default());
    rig.api(Command::Create(Box::new(spec("a")))).expect("create");
    rig.log.clear();
    assert_eq!(rig.api(Command::Delete("a".into())), Ok(Reply::Deleted("a".into())));
    let first = rig.log.first().expect("outputs");
    assert!(matches!(first, Output::Persist(Change::Put(i)) if i.desired == Desired::Deleted), "{first:?}");
    assert!(rig.log.contains(&Output::Persist(Change::Remove("a".into()))));
    assert!(rig.hv.domains.is_empty());
    assert_eq!(rig.node.model().hosts[0].allocated.memory_mib, 0, "resources released");
    assert_eq!(error_kind(rig.api(Command::Show("a".into()))), ApiErrorKind::NotFound);
}

#[test]
fn a_failed_boot_rolls_the_create_back() {
    let mut rig = Rig::new(node(vec![]), Hv { refuse_start: true, ..Hv::default() });
    let e = rig.api(Command::Create(Box::new(spec("a")))).expect_err("boot fails");
    assert_eq!(e.kind, ApiErrorKind::Hypervisor);
    assert!(e.message.contains("start failed: no room for the guest"), "{}", e.message);
    assert_eq!(rig.commands(), ["Define", "Start", "Undefine"]);
    assert!(rig.hv.domains.is_empty(), "nothing left defined");
    assert_eq!(rig.node.intents().count(), 0, "no intent left");
    assert!(rig.log.contains(&Output::Persist(Change::Remove("a".into()))));
}

#[test]
fn shutdown_closes_once_nothing_is_in_flight() {
    let mut rig = Rig::new(node(vec![]), Hv::default());
    rig.input(Input::Shutdown(rig.now));
    assert!(rig.log.contains(&Output::Closed));
    assert_eq!(error_kind(rig.api(Command::Create(Box::new(spec("late"))))), ApiErrorKind::Unavailable);
}

fn big(name: &str) -> VmRequest {
    VmRequest { name: name.into(), vcpus: 1, memory_mib: 6000, ..VmRequest::default() }
}

#[test]
fn reads_are_answered_while_placements_wait_for_the_policy() {
    let mut rig = Rig::new(node(vec![]), Hv::default());
    rig.hold = true;
    let create = rig.send(Command::Create(Box::new(spec("slow"))));
    assert_eq!(rig.held.len(), 1, "the node asked the policy and did not wait");
    assert!(matches!(rig.api(Command::List), Ok(Reply::Vms(v)) if v.is_empty()));
    assert!(matches!(rig.api(Command::Host), Ok(Reply::Host(_))));
    assert!(rig.take_reply(create).is_none());
    rig.answer_held();
    assert!(matches!(rig.take_reply(create), Some(Ok(Reply::Vm(_)))));
}

#[test]
fn an_answer_for_a_host_that_filled_up_meanwhile_is_not_acted_on() {
    let mut rig = Rig::new(node(vec![]), Hv::default());
    rig.hold = true;
    // The host has 8192 MiB: room for one of these, not two.
    let a = rig.send(Command::Create(Box::new(big("a"))));
    let b = rig.send(Command::Create(Box::new(big("b"))));
    assert_eq!(rig.held.len(), 2, "both asked at once, from the same state");
    rig.answer_held();
    assert!(matches!(rig.take_reply(a), Some(Ok(Reply::Vm(_)))));
    rig.answer_held();
    let refused = rig.take_reply(b).expect("answered").expect_err("no room left");
    assert_eq!(refused.kind, ApiErrorKind::Unplaceable, "{refused:?}");
    assert!(refused.message.contains("no host passed the filters"), "{refused:?}");
    assert_eq!(rig.node.vms.len(), 1, "the host was not overcommitted");
}

#[test]
fn a_decision_that_never_comes_is_taken_by_the_fallback() {
    let mut rig = Rig::new(node(vec![]), Hv::default());
    rig.hold = true;
    let create = rig.send(Command::Create(Box::new(spec("waiting"))));
    rig.now += Duration::from_millis(4_999);
    rig.input(Input::Timeout(rig.now));
    assert!(rig.take_reply(create).is_none());
    rig.now += Duration::from_millis(2);
    rig.input(Input::Timeout(rig.now));
    assert!(matches!(rig.take_reply(create), Some(Ok(Reply::Vm(_)))));
    assert!(rig.events().iter().any(|e| matches!(e, Event::FellBack { vm, failure } if vm == "waiting" && failure.contains("no answer within 5000 ms"))));
    // The late answer is ignored.
    rig.answer_held();
    assert_eq!(rig.node.vms.len(), 1);
}

#[test]
fn placements_still_waiting_at_shutdown_are_refused() {
    let mut rig = Rig::new(node(vec![]), Hv::default());
    rig.hold = true;
    let create = rig.send(Command::Create(Box::new(spec("late"))));
    rig.input(Input::Shutdown(rig.now));
    let refused = rig.take_reply(create).expect("answered").expect_err("refused");
    assert_eq!(refused.kind, ApiErrorKind::Unavailable);
    assert!(rig.log.iter().any(|o| matches!(o, Output::Closed)));
}

fn pending(reply: Result<Reply, ApiError>) -> VmStatus {
    match reply {
        Ok(Reply::Vm(s)) if s.pending.is_some() => *s,
        other => panic!("expected a pending answer, got {other:?}"),
    }
}

fn owed(log: &[Output], name: &str) -> Option<bool> {
    log.iter().rev().find_map(|o| match o {
        Output::Persist(Change::Put(i)) if i.spec.name == name => Some(i.start_owed),
        _ => None,
    })
}

#[test]
fn a_hypervisor_lost_after_the_intent_is_recorded_makes_the_reply_pending_and_it_happens_later() {
    let mut rig = Rig::new(node(vec![]), Hv::default());
    let mut never = spec("never");
    never.restart = RestartPolicy::Never;
    rig.api(Command::Create(Box::new(never))).expect("create");
    rig.api(Command::Stop { name: "never".into(), force: true, timeout: None }).expect("stop");
    rig.api(Command::Create(Box::new(spec("doomed")))).expect("create");

    // libvirt goes away; the node hears of it only through failed commands.
    rig.hv.down = true;
    let mut fresh = spec("fresh");
    fresh.restart = RestartPolicy::Never;
    let created = pending(rig.api(Command::Create(Box::new(fresh))));
    assert_eq!(created.desired, Desired::Running);
    assert!(created.pending.as_deref().is_some_and(|p| p.contains("connection refused")), "{created:?}");
    assert_eq!(owed(&rig.log, "fresh"), Some(true), "the owed boot is recorded");
    let started = pending(rig.api(Command::Start("never".into())));
    assert_eq!(started.desired, Desired::Running);
    assert_eq!(owed(&rig.log, "never"), Some(true));
    let deleting = pending(rig.api(Command::Delete("doomed".into())));
    assert_eq!(deleting.desired, Desired::Deleted);
    assert!(rig.state("fresh").pending.is_some(), "show says it is pending");

    // Back: what was accepted is carried out, restart policy never or not.
    rig.hv.down = false;
    let domains = rig.hv.observation();
    rig.input(Input::HypervisorUp { now: rig.now, inventory: inventory(), domains });
    rig.sample();
    for name in ["fresh", "never"] {
        let s = rig.state(name);
        assert_eq!((s.state, s.desired, s.pending), (DomainState::Running, Desired::Running, None), "{name}");
        assert_eq!(owed(&rig.log, name), Some(false), "{name}: nothing owed any more");
        assert_eq!(s.restarts, 0, "{name}: a start, not a restart");
    }
    assert_eq!(error_kind(rig.api(Command::Show("doomed".into()))), ApiErrorKind::NotFound);
    assert!(!rig.hv.domains.contains_key("doomed"));

    // A stop cancels a start still owed.
    rig.hv.down = true;
    pending(rig.api(Command::Start("never".into()))).pending.expect("pending");
    rig.hv.domains.get_mut("never").expect("domain").0 = DomainState::Shutoff;
    rig.hv.down = false;
    rig.api(Command::Stop { name: "never".into(), force: true, timeout: None }).expect("stop");
    assert_eq!(owed(&rig.log, "never"), Some(false));
    rig.sample();
    assert_eq!(rig.state("never").state, DomainState::Shutoff, "left stopped");
}

#[test]
fn a_round_the_store_cannot_take_is_undone_and_answered_507_and_stops_go_on_from_the_reserve() {
    let mut rig = Rig::new(node(vec![]), Hv::default());
    rig.api(Command::Create(Box::new(spec("a")))).expect("create");
    rig.disk_full = true;
    rig.log.clear();

    // A new VM the store never took is forgotten; the hypervisor never hears of it.
    let e = rig.api(Command::Create(Box::new(spec("b")))).expect_err("not recorded");
    assert_eq!(e.kind, ApiErrorKind::InsufficientStorage, "{}", e.message);
    assert!(rig.commands().is_empty(), "{:?}", rig.log);
    assert_eq!(error_kind(rig.api(Command::Show("b".into()))), ApiErrorKind::NotFound);
    assert_eq!(rig.node.model().hosts[0].allocated.memory_mib, 512, "b's room is given back");
    // A stop that cannot be recorded does not happen.
    let e =
        rig.api(Command::Stop { name: "a".into(), force: true, timeout: None }).expect_err("not recorded");
    assert_eq!(e.kind, ApiErrorKind::InsufficientStorage);
    let a = rig.state("a");
    assert_eq!((a.state, a.desired, a.busy), (DomainState::Running, Desired::Running, None));
    assert!(rig.commands().is_empty(), "{:?}", rig.log);
    rig.sample();
    assert!(rig.commands().is_empty(), "the restored intent is what runs: {:?}", rig.log);

    // The shell freed its reserve: stops and deletes are recorded again,
    // creates and starts wait until there is room.
    rig.disk_full = false;
    rig.input(Input::Storage { now: rig.now, low: true });
    assert_eq!(error_kind(rig.api(Command::Create(Box::new(spec("c"))))), ApiErrorKind::InsufficientStorage);
    rig.api(Command::Stop { name: "a".into(), force: true, timeout: None }).expect("stop");
    assert_eq!(error_kind(rig.api(Command::Start("a".into()))), ApiErrorKind::InsufficientStorage);
    rig.input(Input::Storage { now: rig.now, low: false });
    rig.api(Command::Create(Box::new(spec("c")))).expect("room again");
    rig.api(Command::Delete("a".into())).expect("delete");
    assert_eq!(rig.commands(), ["Destroy", "Define", "Start", "Destroy", "Undefine"]);
}

#[test]
fn declared_load_makes_a_host_overloaded_once_sustained_and_normal_again() {
    let mut rig = Rig::new(node(vec![]), Hv { unmeasured: true, ..Hv::default() });
    for name in ["a", "b"] {
        let mut s = spec(name);
        s.vcpus = 3;
        s.load_cpu_milli = Some(500);
        rig.api(Command::Create(Box::new(s))).expect("create");
    }
    let host = |rig: &mut Rig| match rig.api(Command::Host) {
        Ok(Reply::Host(h)) => *h,
        other => panic!("{other:?}"),
    };
    rig.sample();
    assert_eq!((host(&mut rig).load_cpu_milli, host(&mut rig).cpu_milli), (1000, 4000));

    // More than its vCPUs can use is refused; within them, it is counted.
    let e = rig.api(Command::SetLoad { name: "a".into(), cpu_milli: 3001 }).expect_err("too much");
    assert_eq!(e.kind, ApiErrorKind::BadRequest);
    let Ok(Reply::Vm(a)) = rig.api(Command::SetLoad { name: "a".into(), cpu_milli: 3000 }) else {
        panic!("set-load")
    };
    assert_eq!(a.spec.load_cpu_milli, Some(3000));
    rig.api(Command::SetLoad { name: "b".into(), cpu_milli: 3000 }).expect("set-load");
    rig.sample();
    rig.sample();
    let overloaded = |rig: &Rig| {
        rig.events().iter().filter(|e| matches!(e, Event::Load { state: LoadState::Overloaded, .. })).count()
    };
    assert_eq!(overloaded(&rig), 0, "two samples are not yet sustained");
    rig.sample();
    assert_eq!(overloaded(&rig), 1, "{:?}", rig.events());
    assert_eq!(host(&mut rig).load_state, LoadState::Overloaded);
    rig.sample();
    assert_eq!(overloaded(&rig), 1, "said once");

    // Back down; a declared load that cannot be stored is undone.
    rig.api(Command::SetLoad { name: "a".into(), cpu_milli: 1000 }).expect("set-load");
    rig.disk_full = true;
    let e = rig.api(Command::SetLoad { name: "b".into(), cpu_milli: 0 }).expect_err("not stored");
    assert_eq!(e.kind, ApiErrorKind::InsufficientStorage);
    rig.disk_full = false;
    rig.sample();
    assert_eq!(host(&mut rig).load_cpu_milli, 4000, "b keeps its stored load");
    rig.api(Command::Stop { name: "b".into(), force: true, timeout: None }).expect("stop");
    rig.sample();
    assert_eq!(host(&mut rig).load_cpu_milli, 1000, "a stopped VM demands nothing");
    for _ in 0..3 {
        rig.sample();
    }
    assert_eq!(host(&mut rig).load_state, LoadState::Normal);
}

#[test]
fn the_pops_energy_feed_reaches_the_placement_view_at_once() {
    let mut rig = Rig::new(node(vec![]), Hv::default());
    rig.hold = true;
    rig.input(Input::Energy { now: rig.now, renewable_watts: 2_500, carbon_g_per_kwh: 40 });
    rig.send(Command::Create(Box::new(spec("sunny"))));
    let (_, question) = rig.held.front().expect("the policy was asked");
    let pop = &question.cluster.pops[0];
    assert_eq!((pop.renewable_watts, pop.carbon_g_per_kwh), (2_500, 40));
}

#[test]
fn a_node_asks_the_first_peer_connected_then_a_speaker_for_every_pop_and_answers_the_same() {
    use crate::cluster::{BookEntry, Gossip, Membership, MembershipConfig, tests::summary};
    let mut rig = Rig::new(node(vec![]), Hv::default());
    let now = rig.now;
    let asked = |rig: &Rig| -> Vec<(String, OutboundId)> {
        let asks = rig.log.iter().filter_map(|o| match o {
            Output::Request { id, to, req: PeerRequest::Pops } => Some((to.to_string(), *id)),
            _ => None,
        });
        asks.collect()
    };
    let connected = |rig: &mut Rig, peer: &str| rig.input(Input::Connected { now, peer: PeerId::new(peer) });
    connected(&mut rig, "p1");
    connected(&mut rig, "p2");
    let a = asked(&rig);
    assert_eq!(a.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(), ["p1"], "one peer at a time");

    // p1 knows no PoP but its own, this one: the next peer connected is asked.
    let here = rig.node.config.pop.clone();
    let mine = Membership::new(MembershipConfig::default(), PeerId::new("p1"), here.name.clone());
    let mine = BookEntry {
        speaker: PeerId::new("p1"),
        age_ms: 0,
        summary: mine.pop_summary(&summary("p1", &here.name), &here).into(),
    };
    rig.input(Input::PeerResponse { now, id: a[0].1, result: Ok(PeerResponse::Pops(vec![mine.clone()])) });
    connected(&mut rig, "p3");
    let a = asked(&rig);
    assert_eq!(a.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(), ["p1", "p3"]);

    // p3 knows Berlin, heard 4 s ago: it is known here now, and no one else is asked.
    let berlin = crate::node::PopConfig { name: "berlin".into(), ..Default::default() };
    let b = Membership::new(MembershipConfig::default(), PeerId::new("b"), "berlin".into());
    let berlin = BookEntry {
        speaker: PeerId::new("b"),
        age_ms: 4000,
        summary: b.pop_summary(&summary("b", "berlin"), &berlin).into(),
    };
    rig.input(Input::PeerResponse {
        now,
        id: a[1].1,
        result: Ok(PeerResponse::Pops(vec![mine, berlin.clone()])),
    });
    connected(&mut rig, "p4");
    assert_eq!(asked(&rig).len(), 2, "no peer connected is asked again");
    let Ok(Reply::Cluster(c)) = rig.api(Command::Cluster) else { panic!("cluster status") };
    let pops: Vec<&str> = c.pops.iter().map(|p| p.pop.as_str()).collect();
    assert_eq!(pops, [here.name.as_str(), "berlin"]);

    // p3 may have answered before this agent heard the global topic: the
    // speaker of the next PoP summary heard is asked once more, and then no one.
    let heard = |rig: &mut Rig, speaker: &str| {
        let msg = Gossip::Pop(berlin.summary.clone());
        rig.input(Input::Gossip { now, from: PeerId::new(speaker), msg });
    };
    heard(&mut rig, "b");
    heard(&mut rig, "c");
    let a = asked(&rig);
    assert_eq!(a.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(), ["p1", "p3", "b"]);
    rig.input(Input::PeerResponse { now, id: a[2].1, result: Ok(PeerResponse::Pops(vec![berlin.clone()])) });
    heard(&mut rig, "c");
    assert_eq!(asked(&rig).len(), 3, "learnt");

    // Asked in turn, it passes this PoP first, then Berlin as last heard (from c).
    let later = now + Duration::from_secs(1);
    rig.input(Input::PeerRequest {
        now: later,
        from: PeerId::new("q"),
        id: InboundId(7),
        req: PeerRequest::Pops,
    });
    let book = rig.log.iter().find_map(|o| match o {
        Output::Respond { id: InboundId(7), resp: PeerResponse::Pops(book) } => Some(book.clone()),
        _ => None,
    });
    let book = book.expect("answered");
    let rows: Vec<(&str, &str, u64)> =
        book.iter().map(|e| (e.summary.pop.as_str(), e.speaker.as_str(), e.age_ms)).collect();
    let me = rig.node.config.peer.to_string();
    assert_eq!(rows, [(here.name.as_str(), me.as_str(), 0), ("berlin", "c", 1000)]);
}

#[test]
fn a_restarted_speaker_that_spoke_before_its_book_came_speaks_again_past_its_pops_number() {
    use crate::cluster::{BookEntry, Gossip, Membership, MembershipConfig, PopSummary, tests::summary};
    let mut rig = Rig::new(node(vec![]), Hv::default());
    let published = |rig: &Rig| -> Vec<u64> {
        let pops = rig.log.iter().filter_map(|o| match o {
            Output::Gossip { msg: Gossip::Pop(s), .. } => Some(s.version),
            _ => None,
        });
        pops.collect()
    };
    let beat = Duration::from_millis(rig.node.membership.config().heartbeat_ms);
    let beats = |rig: &mut Rig, n: usize| {
        for _ in 0..n {
            rig.now += beat;
            rig.input(Input::Timeout(rig.now));
        }
    };
    // Alone in its PoP, it speaks from its 4th heartbeat, knowing no number yet.
    beats(&mut rig, 8);
    assert_eq!(published(&rig), [1]);

    // The first peer connected passes the book: this PoP had reached 41
    // before the restart, so every agent drops summary 1 as old.
    rig.input(Input::Connected { now: rig.now, peer: PeerId::new("p1") });
    let asked = rig.log.iter().find_map(|o| match o {
        Output::Request { id, req: PeerRequest::Pops, .. } => Some(*id),
        _ => None,
    });
    let here = rig.node.config.pop.clone();
    let before =
        Membership::new(MembershipConfig::default(), rig.node.config.peer.clone(), here.name.clone());
    let summary = before.pop_summary(&summary(rig.node.config.peer.as_str(), &here.name), &here);
    let mine = BookEntry {
        speaker: rig.node.config.peer.clone(),
        age_ms: 3_000,
        summary: PopSummary { version: 41, ..summary }.into(),
    };
    let id = asked.expect("asked for the PoPs");
    rig.input(Input::PeerResponse { now: rig.now, id, result: Ok(PeerResponse::Pops(vec![mine])) });
    beats(&mut rig, 4);
    assert_eq!(published(&rig), [1, 42], "again at the pace, unchanged, past 41");
    beats(&mut rig, 20);
    assert_eq!(published(&rig), [1, 42], "then quiet");
}
