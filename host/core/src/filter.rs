//! Hard constraints, checked natively before any policy runs: a host is a
//! candidate for a request only if it is up, has room, lies in an allowed
//! jurisdiction and within the latency bound, and holds no member of the
//! request's anti-affinity group. What was excluded, and why, is counted for
//! explanations and for deciding whether another PoP should be asked.

use crate::model::{GroupId, HostId, HostState, Model};
use crate::request::VmRequest;
use locus_sdk::{GroupKind, Resources};

/// A request with its names resolved against a model.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// The size asked for.
    pub size: Resources,
    /// Allowed jurisdiction indexes; `None` means anywhere.
    pub jurisdictions: Option<Vec<u32>>,
    /// Codes asked for that the model does not know.
    pub unknown_jurisdictions: Vec<String>,
    /// Estimated user latency to each PoP, µs; empty without a user location.
    pub user_latency_us: Vec<u32>,
    /// Latency bound, µs.
    pub max_latency_us: Option<u32>,
    /// The group, if it exists already, and its kind.
    pub group: Option<(Option<GroupId>, GroupKind)>,
    /// Whether hosts in standby count (only when no other host can take it).
    pub standby: bool,
    /// The key of the VM's image ([`crate::request::image_key`]), if it
    /// has one.
    pub image: Option<u64>,
}

impl Resolved {
    /// Resolves `request` against `model`.
    pub fn new(model: &Model, request: &VmRequest) -> Self {
        let (known, unknown): (Vec<_>, Vec<_>) =
            request.jurisdictions.iter().partition(|code| model.find_jurisdiction(code).is_some());
        let jurisdictions = (!request.jurisdictions.is_empty())
            .then(|| known.iter().filter_map(|code| model.find_jurisdiction(code)).collect());
        let user_latency_us = match request.user {
            Some(user) => {
                model.pops.iter().map(|p| locus_sdk::geo::estimated_rtt_us(user.into(), p.location)).collect()
            }
            None => Vec::new(),
        };
        Self {
            size: request.size(),
            jurisdictions,
            unknown_jurisdictions: unknown.into_iter().cloned().collect(),
            user_latency_us,
            max_latency_us: request.max_latency_us(),
            group: request.group.as_ref().map(|g| (model.group_id(&g.name), g.kind.into())),
            standby: false,
            image: request.image.as_deref().map(crate::request::image_key),
        }
    }

    fn anti_affinity_group(&self) -> Option<GroupId> {
        match self.group {
            Some((Some(id), GroupKind::AntiAffinity)) => Some(id),
            _ => None,
        }
    }
}

/// How many hosts each hard constraint excluded (a host is counted once, for
/// the first constraint it fails in the order of the fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Exclusions {
    /// Down or draining.
    pub not_up: u32,
    /// Outside the allowed jurisdictions.
    pub jurisdiction: u32,
    /// Farther from the users than the bound.
    pub latency: u32,
    /// Already holding a member of the anti-affinity group.
    pub anti_affinity: u32,
    /// Without room for the VM.
    pub capacity: u32,
}

impl Exclusions {
    /// A sentence naming the constraints that excluded hosts.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = [
            (self.not_up, "not up"),
            (self.jurisdiction, "outside the allowed jurisdictions"),
            (self.latency, "beyond the latency bound"),
            (self.anti_affinity, "already running a member of the anti-affinity group"),
            (self.capacity, "without room"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, why)| format!("{n} {why}"))
        .collect();
        if parts.is_empty() { "no hosts".to_owned() } else { parts.join(", ") }
    }

    /// True when hosts were excluded only for lack of room or being down,
    /// i.e. the request's own constraints did not narrow the choice.
    pub fn only_capacity(&self) -> bool {
        self.jurisdiction == 0 && self.latency == 0 && self.anti_affinity == 0
    }
}

/// The hard constraint a host fails first, in the order of [`Exclusions`]'s
/// fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failed {
    NotUp,
    Jurisdiction,
    Latency,
    AntiAffinity,
    Capacity,
}

fn failed(model: &Model, request: &Resolved, id: HostId) -> Option<Failed> {
    let host = model.hosts.get(id.0 as usize)?;
    let anti = request.anti_affinity_group().and_then(|g| model.groups.get(g.0 as usize));
    let up = host.state == HostState::Up || (request.standby && host.state == HostState::Standby);
    if !up {
        Some(Failed::NotUp)
    } else if let Some(f) = fenced(model, request, id) {
        Some(f)
    } else if anti.is_some_and(|g| g.members.get(&id).is_some_and(|&n| n > 0)) {
        Some(Failed::AntiAffinity)
    } else if !request.size.fits_in(host.free()) {
        Some(Failed::Capacity)
    } else {
        None
    }
}

/// The constraints no change of the host's state can lift: the request's
/// jurisdictions and latency bound against the host's PoP.
fn fenced(model: &Model, request: &Resolved, id: HostId) -> Option<Failed> {
    let host = model.hosts.get(id.0 as usize)?;
    let pop = &model.pops[host.pop.0 as usize];
    if request.jurisdictions.as_ref().is_some_and(|allowed| !allowed.contains(&pop.jurisdiction)) {
        Some(Failed::Jurisdiction)
    } else if request
        .max_latency_us
        .is_some_and(|bound| request.user_latency_us.get(host.pop.0 as usize).is_some_and(|&rtt| rtt > bound))
    {
        Some(Failed::Latency)
    } else {
        None
    }
}

/// Writes into `out` the hosts that satisfy every hard constraint, in host
/// order, and returns what was excluded.
pub fn candidates(model: &Model, request: &Resolved, out: &mut Vec<HostId>) -> Exclusions {
    out.clear();
    let mut ex = Exclusions::default();
    for i in 0..model.hosts.len() {
        let id = HostId(i as u32);
        match failed(model, request, id) {
            Some(Failed::NotUp) => ex.not_up += 1,
            Some(Failed::Jurisdiction) => ex.jurisdiction += 1,
            Some(Failed::Latency) => ex.latency += 1,
            Some(Failed::AntiAffinity) => ex.anti_affinity += 1,
            Some(Failed::Capacity) => ex.capacity += 1,
            None => out.push(id),
        }
    }
    ex
}

/// Whether one host satisfies every hard constraint: the check of an answer
/// that arrives after the model may have changed.
pub fn admits(model: &Model, request: &Resolved, host: HostId) -> bool {
    refusal(model, request, host).is_none()
}

/// Why one host does not satisfy the hard constraints, if it does not.
pub fn refusal(model: &Model, request: &Resolved, host: HostId) -> Option<&'static str> {
    if model.hosts.get(host.0 as usize).is_none() {
        return Some("unknown host");
    }
    failed(model, request, host).map(why)
}

/// Why `host` can never take `request`, whatever its state (jurisdiction,
/// latency): what a stale view of the host can still tell for sure.
pub fn fence_refusal(model: &Model, request: &Resolved, host: HostId) -> Option<&'static str> {
    fenced(model, request, host).map(why)
}

fn why(f: Failed) -> &'static str {
    match f {
        Failed::NotUp => "not up (down, draining or in standby)",
        Failed::Jurisdiction => "outside the allowed jurisdictions",
        Failed::Latency => "beyond the latency bound",
        Failed::AntiAffinity => "already running a member of the anti-affinity group",
        Failed::Capacity => "without room",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{GroupKindSpec, GroupRef, Location};
    use locus_sdk::Coordinates;

    fn model() -> Model {
        let mut m = Model::new();
        m.add_pop("paris", "FR", Coordinates::new(48.86, 2.35), 0, 50).expect("pop");
        m.add_pop("tokyo", "JP", Coordinates::new(35.68, 139.69), 0, 450).expect("pop");
        for (name, pop) in [("p1", "paris"), ("p2", "paris"), ("p3", "paris"), ("t1", "tokyo")] {
            m.add_host(name, pop, Resources::new(4, 4096, 100), 4000, (100, 200)).expect("host");
        }
        m
    }

    fn request() -> VmRequest {
        toml::from_str("name = 'a'\nvcpus = 2\nmemory-mib = 1024").expect("request")
    }

    #[test]
    fn every_constraint_excludes_and_is_counted() {
        let mut m = model();
        m.set_host_state(HostId(0), HostState::Draining);
        let g = m.group("db", GroupKind::AntiAffinity).expect("group");
        m.add_vm("x", HostId(1), Resources::new(1, 512, 1), 0, Some(g), vec![]).expect("vm");
        let mut r = request();
        r.group = Some(GroupRef { name: "db".into(), kind: GroupKindSpec::AntiAffinity });
        r.user = Some(Location { lat: 48.0, lon: 2.0 });
        r.max_latency_ms = Some(20.0);
        let mut out = Vec::new();
        let ex = candidates(&m, &Resolved::new(&m, &r), &mut out);
        assert_eq!(out, vec![HostId(2)]);
        assert_eq!(ex, Exclusions { not_up: 1, latency: 1, anti_affinity: 1, ..Default::default() });

        r.jurisdictions = vec!["JP".into()];
        r.max_latency_ms = None;
        let ex = candidates(&m, &Resolved::new(&m, &r), &mut out);
        assert_eq!(out, vec![HostId(3)]);
        assert_eq!(ex.jurisdiction, 2);
        assert!(ex.describe().contains("2 outside the allowed jurisdictions"));

        // One host checked alone agrees with the whole sweep.
        let resolved = Resolved::new(&m, &r);
        for i in 0..4 {
            assert_eq!(admits(&m, &resolved, HostId(i)), out.contains(&HostId(i)), "host {i}");
        }
        assert!(!admits(&m, &resolved, HostId(99)), "a host the model does not have");
    }

    #[test]
    fn unknown_jurisdictions_allow_nothing() {
        let m = model();
        let mut r = request();
        r.jurisdictions = vec!["XX".into()];
        let resolved = Resolved::new(&m, &r);
        assert_eq!(resolved.unknown_jurisdictions, vec!["XX".to_owned()]);
        let mut out = Vec::new();
        candidates(&m, &resolved, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn full_hosts_are_excluded_for_capacity() {
        let mut m = model();
        m.add_vm("big", HostId(0), Resources::new(4, 4096, 1), 0, None, vec![]).expect("vm");
        let mut out = Vec::new();
        let ex = candidates(&m, &Resolved::new(&m, &request()), &mut out);
        assert_eq!(ex.capacity, 1);
        assert!(ex.only_capacity());
        assert_eq!(out.len(), 3);
    }
}
