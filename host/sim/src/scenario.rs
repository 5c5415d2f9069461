//! A scenario, as a TOML file: the PoPs and their hosts, the network and
//! hypervisor models, and the workload (VM arrivals). Everything random
//! in it is drawn from the run's seed.

use crate::hypervisor::HvConfig;
use crate::net::NetConfig;
use serde::{Deserialize, Serialize};

/// A whole scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Scenario {
    /// What it is called in reports.
    pub name: String,
    /// Virtual time it runs for, seconds.
    pub duration_s: u64,
    /// How often each agent samples its hypervisor, ms.
    #[serde(default = "default_sample_ms")]
    pub sample_interval_ms: u64,
    /// The network model.
    #[serde(default)]
    pub network: NetConfig,
    /// The hypervisor model.
    #[serde(default)]
    pub hypervisor: HvConfig,
    /// The PoPs.
    pub pops: Vec<Pop>,
    /// VMs requested over time.
    #[serde(default)]
    pub arrivals: Vec<Arrivals>,
    /// Guests whose CPU use changes over time.
    #[serde(default)]
    pub load_changes: Vec<LoadChanges>,
    /// Faults, at set times.
    #[serde(default)]
    pub faults: Vec<Fault>,
    /// The policies the agents run.
    #[serde(default)]
    pub policies: Policies,
    /// Who rebalances: the agents, or one central scheduler.
    #[serde(default)]
    pub scheduler: Scheduler,
}

/// The policies every agent runs (`[policies]`), natively built from the
/// same sources as their WebAssembly components.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Policies {
    /// The placement policy: one of [`PLACEMENTS`].
    pub placement: String,
    /// Whether underloaded hosts are emptied (`consolidate`) so they can
    /// go to standby.
    pub consolidation: bool,
    /// How they run: natively built (fast), or as the WebAssembly
    /// components the agents load, metered by fuel.
    pub runtime: PolicyRuntime,
}

impl Default for Policies {
    fn default() -> Self {
        Policies { placement: "spread".into(), consolidation: true, runtime: PolicyRuntime::Native }
    }
}

/// How the simulated agents run their policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyRuntime {
    /// Built into the simulator from the same sources; every decision takes
    /// a fixed 2 ms of virtual time.
    Native,
    /// The built-in WebAssembly components in the agents' runtime, metered
    /// by fuel: a decision's virtual time follows from the fuel it burnt.
    Wasm,
}

/// The placement policies a scenario may name.
pub const PLACEMENTS: [&str; 5] = ["spread", "green", "best-fit", "first-fit", "nearest"];

/// Who rebalances (`[scheduler]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Scheduler {
    /// `distributed` (the agents, by cooperative partitions) or
    /// `centralized` (one scheduler, the baseline).
    pub kind: SchedulerKind,
    /// How often the central scheduler gathers every host and plans, s.
    pub period_s: f64,
}

impl Default for Scheduler {
    fn default() -> Self {
        Scheduler { kind: SchedulerKind::Distributed, period_s: 30.0 }
    }
}

/// Who rebalances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SchedulerKind {
    /// Each overloaded agent gathers a partition of its neighbours and runs
    /// the migration policy over it (DVMS-like).
    Distributed,
    /// One scheduler gathers every host every `period-s`, runs the same
    /// migration policy over each PoP (VMs move within their PoP) and
    /// sends the moves to the agents (Entropy-like). The agents start no
    /// rebalancing of their own.
    Centralized,
}

/// A quantity that changes over time: steps of `every-s` seconds that
/// cycle through `values` (one value: constant).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Series {
    /// Length of a step, seconds.
    #[serde(default = "default_step_s")]
    pub every_s: f64,
    /// The value of each step, in turn, then again from the first.
    pub values: Vec<u32>,
}

fn default_step_s() -> f64 {
    3_600.0
}

impl Series {
    /// A value that never changes.
    pub fn constant(value: u32) -> Self {
        Series { every_s: default_step_s(), values: vec![value] }
    }

    /// The value at `us` of virtual time.
    pub fn at(&self, us: u64) -> u32 {
        let step = (us as f64 / 1e6 / self.every_s) as usize;
        self.values.get(step % self.values.len().max(1)).copied().unwrap_or(0)
    }

    fn check(&self, what: &str) -> Result<(), String> {
        if self.values.is_empty() || !(self.every_s.is_finite() && self.every_s > 0.0) {
            return Err(format!("{what} needs values and every-s > 0"));
        }
        Ok(())
    }
}

/// A PoP's power: its hosts' (all alike) and what its grid supplies
/// (`[pops.energy]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct PopEnergy {
    /// A host's draw when idle, watts.
    pub idle_watts: u32,
    /// A host's draw at full CPU load, watts (linear in between).
    pub max_watts: u32,
    /// A host's draw in standby, watts.
    pub standby_watts: u32,
    /// Renewable power the PoP has, watts: what its hosts draw beyond it
    /// comes from the grid.
    pub renewable_watts: Series,
    /// The grid's carbon intensity, gCO2/kWh.
    pub carbon_g_per_kwh: Series,
}

impl Default for PopEnergy {
    fn default() -> Self {
        let host = locus_core::node::HostConfig::default();
        let pop = locus_core::node::PopConfig::default();
        PopEnergy {
            idle_watts: host.idle_watts,
            max_watts: host.max_watts,
            standby_watts: host.standby_watts,
            renewable_watts: Series::constant(pop.renewable_watts),
            carbon_g_per_kwh: Series::constant(pop.carbon_g_per_kwh),
        }
    }
}

/// A fault on some hosts at `at-s`, undone `for-s` later (never, when absent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Fault {
    /// When it happens, seconds.
    pub at_s: f64,
    /// What happens.
    pub kind: FaultKind,
    /// The hosts it hits, by name (`POP-N`).
    pub hosts: Vec<String>,
    /// How long until it is undone (the agents restart from what they
    /// stored; the network heals), seconds.
    #[serde(default)]
    pub for_s: Option<f64>,
}

/// What a fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// The hosts' agents die (their guests run on).
    Crash,
    /// The hosts are cut off from every other, both ways.
    Partition,
    /// The hosts can hear but not be heard.
    PartitionOneWay,
}

/// The most hosts a scenario may have.
pub const MAX_HOSTS: u64 = 100_000;
/// The longest a scenario may run: a year of virtual time.
pub const MAX_DURATION_S: u64 = 365 * 86_400;

fn default_sample_ms() -> u64 {
    1_000
}

/// A PoP and its hosts, all alike.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Pop {
    /// Its name.
    pub name: String,
    /// Its jurisdiction (ISO country code).
    pub jurisdiction: String,
    /// Latitude.
    pub lat: f32,
    /// Longitude.
    pub lon: f32,
    /// How many hosts.
    pub hosts: u32,
    /// vCPUs each host offers.
    pub vcpus: u32,
    /// Physical CPUs (threads) of each host, against which load is
    /// measured; as many as its vCPUs when absent (no overcommit).
    #[serde(default)]
    pub cpus: Option<u32>,
    /// Memory per host, MiB.
    pub memory_mib: u32,
    /// Its power model and energy supply.
    #[serde(default)]
    pub energy: PopEnergy,
}

/// A batch of alike VM requests, `count` of them from `at-s` on, one every
/// `every-ms` on average (a Poisson process), each entering the cluster
/// at a host drawn at random (of `pop`, when given).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Arrivals {
    /// When the first may arrive, seconds.
    pub at_s: f64,
    /// How many.
    pub count: u32,
    /// Mean gap between two, ms.
    pub every_ms: f64,
    /// vCPUs of each.
    pub vcpus: u32,
    /// Memory of each, MiB.
    pub memory_mib: u32,
    /// CPU each uses, milli-CPUs (at most its vCPUs × 1000).
    #[serde(default)]
    pub load_cpu_milli: Option<u32>,
    /// The PoP where requests enter (anywhere when absent).
    #[serde(default)]
    pub pop: Option<String>,
    /// Jurisdictions the VMs must stay in (none: anywhere).
    #[serde(default)]
    pub jurisdictions: Vec<String>,
    /// Where the VMs' users are.
    #[serde(default)]
    pub user: Option<locus_core::request::Location>,
    /// Largest round trip to the users the VMs accept, ms (needs `user`).
    #[serde(default)]
    pub max_latency_ms: Option<f32>,
}

/// Changes of guests' CPU use: `count` of them from `at-s` on, one every
/// `every-ms` on average (a Poisson process), each setting a running VM
/// drawn at random to a load drawn from `min-milli..=max-milli` in steps of
/// `step-milli` (at most its vCPUs' worth): uniformly, or from `normal`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LoadChanges {
    /// When the first may happen, seconds.
    pub at_s: f64,
    /// How many.
    pub count: u32,
    /// Mean gap between two, ms.
    pub every_ms: f64,
    /// The lowest load drawn, milli-CPUs.
    pub min_milli: u32,
    /// The highest load drawn, milli-CPUs.
    pub max_milli: u32,
    /// Loads are multiples of this, milli-CPUs.
    #[serde(default = "default_step")]
    pub step_milli: u32,
    /// Draw loads from this normal distribution (clamped to the range)
    /// instead of uniformly.
    #[serde(default)]
    pub normal: Option<NormalLoad>,
}

/// A normal distribution of loads.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NormalLoad {
    /// Its mean, milli-CPUs.
    pub mean_milli: f64,
    /// Its standard deviation, milli-CPUs.
    pub std_milli: f64,
}

impl LoadChanges {
    /// A load drawn from `rng`, milli-CPUs.
    pub fn draw(&self, rng: &mut crate::seed::Rng) -> u32 {
        use rand::RngExt;
        let (min, max, step) = (self.min_milli, self.max_milli, self.step_milli);
        match self.normal {
            Some(n) => {
                // Checked when parsed: a finite mean and a non-negative deviation.
                let at = rand_distr::Normal::new(n.mean_milli, n.std_milli)
                    .map_or(n.mean_milli, |d| rng.sample(d));
                let steps = ((at - f64::from(min)) / f64::from(step)).round().max(0.0);
                min.saturating_add((steps as u32).saturating_mul(step)).min(max)
            }
            None => min + rng.random_range(0..=(max - min) / step) * step,
        }
    }
}

fn default_step() -> u32 {
    100
}

/// A scenario that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Not TOML, or not this schema (the parser's message says where; it
    /// is not also the error's source, so a chain prints it once).
    #[error("scenario: {0}")]
    Parse(toml::de::Error),
    /// Parsed, but inconsistent.
    #[error("scenario: {0}")]
    Invalid(String),
}

impl From<toml::de::Error> for ScenarioError {
    fn from(e: toml::de::Error) -> Self {
        ScenarioError::Parse(e)
    }
}

impl Scenario {
    /// Parses and checks a scenario.
    pub fn parse(text: &str) -> Result<Self, ScenarioError> {
        let s: Scenario = toml::from_str(text)?;
        s.check().map_err(ScenarioError::Invalid)?;
        Ok(s)
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        self.network.check()?;
        if self.duration_s > MAX_DURATION_S {
            return Err(format!(
                "duration-s {}: a scenario runs for at most {MAX_DURATION_S} s",
                self.duration_s
            ));
        }
        if self.pops.is_empty() || self.pops.iter().any(|p| p.hosts == 0) {
            return Err("every scenario needs PoPs, each with at least one host".into());
        }
        let hosts: u64 = self.pops.iter().map(|p| u64::from(p.hosts)).sum();
        if hosts > MAX_HOSTS {
            return Err(format!("{hosts} hosts: a scenario has at most {MAX_HOSTS}"));
        }
        for p in &self.pops {
            // Its hosts are named `POP-N`, by the same rule.
            let last = format!("{}-{}", p.name, p.hosts - 1);
            if !locus_core::request::valid_name(&p.name) || !locus_core::request::valid_name(&last) {
                return Err(format!(
                    "PoP name {:?} breaks the naming rule (or its hosts' names would)",
                    p.name
                ));
            }
            if !((-90.0..=90.0).contains(&p.lat) && (-180.0..=180.0).contains(&p.lon)) {
                return Err(format!("PoP {}: lat must be within -90..=90 and lon within -180..=180", p.name));
            }
            let e = &p.energy;
            e.renewable_watts.check(&format!("PoP {}: renewable-watts", p.name))?;
            e.carbon_g_per_kwh.check(&format!("PoP {}: carbon-g-per-kwh", p.name))?;
            if !(e.standby_watts <= e.idle_watts && e.idle_watts <= e.max_watts) {
                return Err(format!("PoP {}: needs standby-watts <= idle-watts <= max-watts", p.name));
            }
        }
        if !PLACEMENTS.contains(&self.policies.placement.as_str()) {
            return Err(format!(
                "placement policy {:?} is not one of {}",
                self.policies.placement,
                PLACEMENTS.join(", ")
            ));
        }
        let period = self.scheduler.period_s;
        if !(period.is_finite() && (1.0..=86_400.0).contains(&period)) {
            return Err("scheduler.period-s must be within 1..=86400".into());
        }
        if self.scheduler.kind == SchedulerKind::Centralized && self.policies.consolidation {
            return Err("the centralized scheduler runs the migration policy only: \
                        set policies.consolidation = false"
                .into());
        }
        if self.sample_interval_ms == 0 {
            return Err("sample-interval-ms must be at least 1".into());
        }
        for a in &self.arrivals {
            if let Some(p) = &a.pop
                && !self.pops.iter().any(|q| q.name == *p)
            {
                return Err(format!("arrivals enter at PoP {p:?}, which the scenario does not have"));
            }
            if !(a.every_ms.is_finite() && a.every_ms > 0.0 && a.at_s.is_finite() && a.at_s >= 0.0) {
                return Err("arrivals need at-s >= 0 and every-ms > 0".into());
            }
            if a.max_latency_ms.is_some() && a.user.is_none() {
                return Err("arrivals with max-latency-ms need user = { lat, lon }".into());
            }
        }
        let names: Vec<String> = self.hosts().map(|(p, h)| format!("{}-{h}", self.pops[p].name)).collect();
        for f in &self.faults {
            if let Some(h) = f.hosts.iter().find(|h| !names.contains(h)) {
                return Err(format!("a fault hits host {h:?}, which the scenario does not have"));
            }
            let ok = |v: f64| v.is_finite() && v >= 0.0;
            if !ok(f.at_s) || f.for_s.is_some_and(|d| !ok(d)) {
                return Err("faults need at-s >= 0 and for-s >= 0".into());
            }
        }
        for l in &self.load_changes {
            if !(l.every_ms.is_finite() && l.every_ms > 0.0 && l.at_s.is_finite() && l.at_s >= 0.0) {
                return Err("load-changes need at-s >= 0 and every-ms > 0".into());
            }
            if l.min_milli > l.max_milli || l.step_milli == 0 {
                return Err("load-changes need min-milli <= max-milli and step-milli >= 1".into());
            }
            if let Some(n) = l.normal
                && !(n.mean_milli.is_finite() && n.std_milli.is_finite() && n.std_milli >= 0.0)
            {
                return Err("load-changes.normal needs a finite mean-milli and std-milli >= 0".into());
            }
        }
        Ok(())
    }

    /// Every host, in order: (PoP index, host index within it).
    pub fn hosts(&self) -> impl Iterator<Item = (usize, u32)> + '_ {
        self.pops.iter().enumerate().flat_map(|(p, pop)| (0..pop.hosts).map(move |h| (p, h)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scenario_parses_and_bad_ones_say_what_is_wrong() {
        let ok = r#"
            name = "two pops"
            duration-s = 10
            [[pops]]
            name = "paris"
            jurisdiction = "FR"
            lat = 48.86
            lon = 2.35
            hosts = 2
            vcpus = 16
            memory-mib = 65536
            [[arrivals]]
            at-s = 1
            count = 10
            every-ms = 100
            vcpus = 1
            memory-mib = 1024
            pop = "paris"
        "#;
        let s = Scenario::parse(ok).expect("parses");
        assert_eq!((s.hosts().count(), s.arrivals[0].count), (2, 10));
        let bad = ok.replace("pop = \"paris\"", "pop = \"lyon\"");
        assert!(Scenario::parse(&bad).expect_err("lyon").to_string().contains("lyon"));
        let bad = ok.replace("hosts = 2", "hosts = 2\ncolour = 1");
        assert!(Scenario::parse(&bad).expect_err("unknown").to_string().contains("colour"));
        for (from, to, says) in [
            ("name = \"paris\"", "name = \"par is!\"", "naming rule"),
            ("lat = 48.86", "lat = 1000", "lat must be"),
            ("hosts = 2", "hosts = 4000000000", "at most"),
            ("duration-s = 10", "duration-s = 99999999999", "at most 31536000 s"),
        ] {
            let bad = ok.replace(from, to).replace("pop = \"paris\"", "");
            assert!(Scenario::parse(&bad).expect_err(says).to_string().contains(says), "{to}");
        }
        for (extra, says) in [
            ("[policies]\nplacement = \"cheapest\"\n", "is not one of spread, green"),
            ("[scheduler]\nkind = \"centralized\"\n", "set policies.consolidation = false"),
            ("[scheduler]\nperiod-s = 0\n", "period-s must be within 1..=86400"),
            ("[scheduler]\nperiod-s = 1e30\n", "period-s must be within 1..=86400"),
        ] {
            let bad = format!("{ok}\n{extra}");
            assert!(Scenario::parse(&bad).expect_err(says).to_string().contains(says), "{extra}");
        }
        let energy =
            "memory-mib = 65536\n[pops.energy]\nrenewable-watts = { every-s = 600, values = [0, 500] }\n";
        let s = Scenario::parse(&ok.replace("memory-mib = 65536\n", energy)).expect("energy");
        let r = &s.pops[0].energy.renewable_watts;
        assert_eq!((r.at(0), r.at(600_000_000), r.at(1_200_000_000)), (0, 500, 0), "steps cycle");
        for (energy, says) in [
            ("renewable-watts = { values = [] }", "renewable-watts needs values"),
            ("idle-watts = 500", "standby-watts <= idle-watts <= max-watts"),
        ] {
            let bad =
                ok.replace("memory-mib = 65536\n", &format!("memory-mib = 65536\n[pops.energy]\n{energy}\n"));
            assert!(Scenario::parse(&bad).expect_err(says).to_string().contains(says), "{energy}");
        }
        let bad = ok.replace("pop = \"paris\"", "max-latency-ms = 20");
        assert!(Scenario::parse(&bad).expect_err("user").to_string().contains("need user"));
    }
}

#[cfg(test)]
mod draws {
    use super::*;

    #[test]
    fn normal_loads_center_on_their_mean_in_steps_within_the_range() {
        let changes = LoadChanges {
            at_s: 0.0,
            count: 1,
            every_ms: 1.0,
            min_milli: 0,
            max_milli: 1000,
            step_milli: 100,
            normal: Some(NormalLoad { mean_milli: 600.0, std_milli: 200.0 }),
        };
        let mut rng = crate::seed::Seed(1).stream("test");
        let draws: Vec<u32> = (0..10_000).map(|_| changes.draw(&mut rng)).collect();
        assert!(draws.iter().all(|&d| d <= 1000 && d % 100 == 0));
        let mean = draws.iter().map(|&d| f64::from(d)).sum::<f64>() / draws.len() as f64;
        assert!((570.0..630.0).contains(&mean), "{mean}");
        assert!(draws.contains(&1000) && draws.contains(&100), "both tails reached");
        let far = LoadChanges {
            min_milli: 900,
            normal: Some(NormalLoad { mean_milli: 1e15, std_milli: 1.0 }),
            ..changes
        };
        assert_eq!(far.draw(&mut rng), 1000, "clamped, never overflowing");
    }
}
