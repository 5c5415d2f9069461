//! Whether a host is overloaded or underloaded, judged sample after
//! sample from its VMs' CPU demand (measured where the hypervisor reports
//! CPU time, declared otherwise). A condition counts only once it has held
//! for `sustain-samples` samples in a row, so one spike moves nothing.

use serde::{Deserialize, Serialize};

/// Thresholds (`[load]` in the agent's configuration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct LoadConfig {
    /// CPU demand above this share of the host's physical CPUs is overload.
    pub overload_ratio: f32,
    /// CPU demand below this share of the host's physical CPUs is
    /// underload: the host is a candidate for consolidation.
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

/// The judgement, one host's.
#[derive(Debug, Clone, Default)]
pub(crate) struct LoadTracker {
    config: LoadConfig,
    state: LoadState,
    /// What the recent samples say, and for how many in a row.
    seen: (LoadState, u32),
}

impl LoadTracker {
    pub(crate) fn new(config: LoadConfig) -> Self {
        LoadTracker { config, ..LoadTracker::default() }
    }

    /// The state as judged now.
    pub(crate) fn state(&self) -> LoadState {
        self.state
    }

    /// Samples in a row that agree with what the latest says.
    pub(crate) fn streak(&self) -> u32 {
        self.seen.1
    }

    /// Takes one sample of `demand` against `capacity` (milli-CPUs); the
    /// new state when it changes.
    pub(crate) fn sample(&mut self, demand: u32, capacity: u32) -> Option<LoadState> {
        if capacity == 0 {
            return None;
        }
        let share = demand as f32 / capacity as f32;
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

    #[test]
    fn a_condition_counts_once_sustained_and_a_spike_moves_nothing() {
        let mut t = LoadTracker::new(LoadConfig::default());
        let capacity = 4000;
        assert_eq!(t.sample(2000, capacity), None);
        assert_eq!(t.sample(6000, capacity), None, "one spike");
        assert_eq!(t.sample(2000, capacity), None);
        assert_eq!(t.state(), LoadState::Normal);
        assert_eq!(t.sample(5000, capacity), None);
        assert_eq!(t.sample(5000, capacity), None);
        assert_eq!(t.sample(5000, capacity), Some(LoadState::Overloaded), "three in a row");
        assert_eq!(t.sample(5000, capacity), None, "said once");
        assert_eq!(t.streak(), 4);
        for _ in 0..2 {
            assert_eq!(t.sample(100, capacity), None);
        }
        assert_eq!(t.sample(100, capacity), Some(LoadState::Underloaded));
        assert_eq!(t.sample(0, 0), None, "no capacity known: no judgement");
        assert!(LoadConfig { underload_ratio: 1.5, ..LoadConfig::default() }.check().is_err());
        assert!(LoadConfig { sustain_samples: 0, ..LoadConfig::default() }.check().is_err());
    }
}
