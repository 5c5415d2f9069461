//! Canaries: the pushes this agent runs ahead of the rest of its scope,
//! judged on the new version's own metrics, and the canaries that went
//! silent, which the agent a push entered through fails in their place.

use super::peers::{Peers, STATUS_STALE};
use super::table::{CanaryVerdict, Plan, Record, Stage, Table, Target};
use crate::policies::SlotName;
use locus_policy::Loaded;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Run {
    push: String,
    loaded: Arc<Loaded>,
    started: Instant,
}

/// The canaries this agent runs, by slot.
#[derive(Default)]
pub struct Canaries {
    runs: HashMap<SlotName, Run>,
}

/// Where this agent stands, for judging.
pub struct Me<'a> {
    /// Its peer id.
    pub peer: &'a str,
    /// Its host, named in verdicts.
    pub host: &'a str,
    /// Its PoP.
    pub pop: &'a str,
}

impl Canaries {
    /// Starts judging `push` on `slot`, run by `loaded` from now.
    pub fn start(&mut self, slot: SlotName, push: String, loaded: Arc<Loaded>) {
        self.runs.insert(slot, Run { push, loaded, started: Instant::now() });
    }

    /// Whether `slot` runs a canary.
    pub fn running(&self, slot: SlotName) -> bool {
        self.runs.contains_key(&slot)
    }

    /// Ends each canary that has seen enough: failed as soon as its
    /// failures pass the rate of the decisions asked for, judged on its
    /// rate after enough decisions or time. Returns the pushes with this
    /// agent's verdicts.
    pub fn judge(&mut self, table: &Table, me: &Me) -> Vec<(Record, CanaryVerdict)> {
        let mut verdicts = Vec::new();
        self.runs.retain(|slot, run| {
            let Target::Push(r) = table.target(me.pop, me.peer, *slot) else { return false };
            if r.id() != run.push || r.stage() != Stage::Canary || r.verdicts.contains_key(me.peer) {
                return false;
            }
            let Plan::Canary { decisions, window_ms, max_failure_rate, .. } = r.plan else { return false };
            let m = run.loaded.metrics();
            let failures: u64 = m.errors.iter().map(|(_, n)| n).sum();
            let rate = |calls: u64| if calls == 0 { 0.0 } else { failures as f64 / calls as f64 };
            let passed = if failures as f64 > max_failure_rate * decisions as f64 {
                Some(false)
            } else if m.calls >= decisions || run.started.elapsed() >= Duration::from_millis(window_ms) {
                Some(rate(m.calls) <= max_failure_rate)
            } else {
                None
            };
            let Some(passed) = passed else { return true };
            let reason = if passed {
                format!("{} calls on {}, {failures} failed", m.calls, me.host)
            } else {
                let kinds: Vec<String> = m
                    .errors
                    .iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(k, n)| format!("{} {n}", k.as_str()))
                    .collect();
                format!("{failures} of {} calls failed on {} ({})", m.calls, me.host, kinds.join(", "))
            };
            verdicts.push((r.clone(), CanaryVerdict::new(passed, m.calls, failures, reason)));
            false
        });
        verdicts
    }
}

/// For the pushes that entered through this agent and are still in canary
/// well past their window: failed verdicts for the canaries not heard from
/// for [`STATUS_STALE`] (dead or cut off), so that the push fails and
/// everyone goes back instead of waiting for them forever.
pub fn silent(table: &Table, me: &str, peers: &Peers, now_ms: u64) -> Vec<(Record, String, CanaryVerdict)> {
    let mut out = Vec::new();
    for r in table.records().filter(|r| r.origin == me && r.stage() == Stage::Canary) {
        let Plan::Canary { agents, window_ms, .. } = &r.plan else { continue };
        let waited =
            r.pushed_at_ms.saturating_add(*window_ms).saturating_add(STATUS_STALE.as_millis() as u64);
        if now_ms < waited {
            continue;
        }
        for a in agents.iter().filter(|a| *a != me && !r.verdicts.contains_key(*a) && !peers.is_fresh(a)) {
            let reason =
                format!("canary {a} was not heard from for {} s past its window", STATUS_STALE.as_secs());
            out.push((r.clone(), a.clone(), CanaryVerdict::new(false, 0, 0, reason)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::table::Scope;
    use std::collections::BTreeMap;

    fn canary(origin: &str, agents: &[&str]) -> Record {
        Record {
            scope: Scope::Cluster,
            slot: SlotName::Placement,
            seq: 1,
            bundle: None,
            origin: origin.into(),
            pushed_at_ms: 1_000,
            rollback: false,
            plan: Plan::Canary {
                agents: agents.iter().map(|a| a.to_string()).collect(),
                decisions: 20,
                window_ms: 60_000,
                max_failure_rate: 0.05,
            },
            verdicts: BTreeMap::new(),
        }
    }

    #[test]
    fn the_origin_fails_a_canary_gone_silent_past_its_window_and_only_then() {
        let mut table = Table::default();
        table.merge(canary("me", &["me", "gone"]));
        table.merge(Record { scope: Scope::Pop("p".into()), ..canary("other", &["gone"]) });
        let peers = Peers::default();
        let window_end = 1_000 + 60_000 + STATUS_STALE.as_millis() as u64;
        assert!(
            silent(&table, "me", &peers, window_end - 1).is_empty(),
            "not before the window and the grace"
        );
        let failed = silent(&table, "me", &peers, window_end);
        assert_eq!(failed.len(), 1, "only the push that entered here, only the silent canary: {failed:?}");
        let (r, peer, v) = &failed[0];
        assert_eq!((r.origin.as_str(), peer.as_str(), v.passed), ("me", "gone", false));
        assert!(v.reason.contains("not heard"), "{}", v.reason);
    }
}
