//! Whether a host is overloaded or underloaded, judged sample after
//! sample from the demand of its running VMs — CPU (measured where the
//! hypervisor reports CPU time, declared otherwise) and memory — against
//! what the host has. A condition counts only once it has held for
//! `sustain-samples` samples in a row, so one spike moves nothing.

use serde::{Deserialize, Serialize};

/// Thresholds (`[load]` in the agent's configuration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct LoadConfig {
    /// Demand above this share of the host's physical CPUs, or of its
    /// memory, is overload.
    pub overload_ratio: f32,
    /// Demand below this share of both is underload: the host is a
    /// candidate for consolidation.
    pub underload_ratio: f32,
    /// Samples in a row a condition must hold before it counts.
    pub sustain_samples: u32,
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig { overload_ratio: 1.0, underload_ratio: 0.2, sustain_samples: 3 }
    }
}

impl LoadConfig {
    /// What is wrong with these thresholds, if anything.
    pub fn check(&self) -> Result<(), String> {
        let ratios_ok = self.underload_ratio.is_finite()
            && self.overload_ratio.is_finite()
            && self.underload_ratio >= 0.0
            && self.underload_ratio < self.overload_ratio;
        if !ratios_ok {
            return Err("load needs 0 <= underload-ratio < overload-ratio".into());
        }
        if self.sustain_samples == 0 {
            return Err("load.sustain-samples must be at least 1".into());
        }
        Ok(())
    }
}

/// A host's load, as judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum LoadState {
    /// Between the thresholds.
    #[default]
    Normal,
    /// Demand above the overload threshold, sustained.
    Overloaded,
    /// Demand below the underload threshold, sustained.
    Underloaded,
}

/// What a host's running VMs demand and what it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Demand {
    /// CPU demand, milli-CPUs.
    pub cpu_milli: u32,
    /// Physical CPUs, milli-CPUs.
    pub cpu_capacity_milli: u32,
    /// Memory demand, MiB.
    pub memory_mib: u32,
    /// Memory for VMs, MiB.
    pub memory_capacity_mib: u32,
}

impl Demand {
    /// The larger of the CPU and memory shares, or None when the host's
    /// size is not known yet.
    fn share(&self) -> Option<f32> {
        if self.cpu_capacity_milli == 0 || self.memory_capacity_mib == 0 {
            return None;
        }
        let cpu = self.cpu_milli as f32 / self.cpu_capacity_milli as f32;
        let memory = self.memory_mib as f32 / self.memory_capacity_mib as f32;
        Some(cpu.max(memory))
    }
}

/// The judgement, one host's.
#[derive(Debug, Clone, Default)]
pub(crate) struct LoadTracker {
    config: LoadConfig,
    state: LoadState,
    /// What the recent samples say, and for how many in a row.
    seen: (LoadState, u32),
    /// The latest sample.
    last: Demand,
}

impl LoadTracker {
    pub(crate) fn new(config: LoadConfig) -> Self {
        LoadTracker { config, ..LoadTracker::default() }
    }

    /// The state as judged now.
    pub(crate) fn state(&self) -> LoadState {
        self.state
    }

    /// What the latest sample alone says.
    pub(crate) fn latest(&self) -> LoadState {
        self.seen.0
    }

    /// Samples in a row that agree with what the latest says.
    pub(crate) fn streak(&self) -> u32 {
        self.seen.1
    }

    /// The latest sample.
    pub(crate) fn last(&self) -> Demand {
        self.last
    }

    /// Takes one sample; the new state when it changes.
    pub(crate) fn sample(&mut self, demand: Demand) -> Option<LoadState> {
        self.last = demand;
        let share = demand.share()?;
        let now = if share > self.config.overload_ratio {
            LoadState::Overloaded
        } else if share < self.config.underload_ratio {
            LoadState::Underloaded
        } else {
            LoadState::Normal
        };
        self.seen = if self.seen.0 == now { (now, self.seen.1.saturating_add(1)) } else { (now, 1) };
        let changed = now != self.state && self.seen.1 >= self.config.sustain_samples;
        changed.then(|| {
            self.state = now;
            now
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(cpu_milli: u32) -> Demand {
        Demand { cpu_milli, cpu_capacity_milli: 4000, memory_mib: 100, memory_capacity_mib: 1000 }
    }

    #[test]
    fn a_condition_counts_once_sustained_and_a_spike_moves_nothing() {
        let mut t = LoadTracker::new(LoadConfig::default());
        assert_eq!(t.sample(cpu(2000)), None);
        assert_eq!(t.sample(cpu(6000)), None, "one spike");
        assert_eq!(t.sample(cpu(2000)), None);
        assert_eq!(t.state(), LoadState::Normal);
        assert_eq!(t.sample(cpu(5000)), None);
        assert_eq!(t.sample(cpu(5000)), None);
        assert_eq!(t.sample(cpu(5000)), Some(LoadState::Overloaded), "three in a row");
        assert_eq!(t.sample(cpu(5000)), None, "said once");
        assert_eq!(t.streak(), 4);
        for _ in 0..2 {
            assert_eq!(t.sample(cpu(100)), None);
        }
        assert_eq!(t.sample(cpu(100)), Some(LoadState::Underloaded));
        let memory = Demand { memory_mib: 1200, ..cpu(100) };
        for _ in 0..2 {
            assert_eq!(t.sample(memory), None);
        }
        assert_eq!(t.sample(memory), Some(LoadState::Overloaded), "memory counts as much as CPU");
        assert_eq!(t.sample(Demand::default()), None, "no capacity known: no judgement");
        assert!(LoadConfig { underload_ratio: 1.5, ..LoadConfig::default() }.check().is_err());
        assert!(LoadConfig { sustain_samples: 0, ..LoadConfig::default() }.check().is_err());
    }
}
