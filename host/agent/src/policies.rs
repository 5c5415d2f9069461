//! The agent's two policy slots (placement and migration): filled at start
//! from the configuration (built-in names need no files) or from what an
//! operator loaded before a restart, and hot-swapped while the agent runs.

use crate::config::PolicyConfig;
use crate::store::Store;
use anyhow::{Context, Result, bail};
use locus_policy::{Loaded, Runtime, RuntimeConfig, Slot, World};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Earlier versions kept per slot, for rollback and as fallback.
const KEEP: usize = 4;

/// Which slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SlotName {
    /// Chooses hosts for new VMs.
    Placement,
    /// Plans rebalancing migrations.
    Migration,
}

impl SlotName {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            SlotName::Placement => "placement",
            SlotName::Migration => "migration",
        }
    }

    fn accepts(self, world: World) -> bool {
        match self {
            SlotName::Placement => world.places(),
            SlotName::Migration => world.plans(),
        }
    }
}

/// One policy version, as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PolicyVersion {
    /// `name@hash-prefix`.
    pub id: String,
    /// The name it was loaded under.
    pub name: String,
    /// SHA-256 of the component, hex.
    pub hash: String,
    /// Its world (placement-policy, migration-policy, scheduler-policy).
    pub world: String,
    /// Component size, bytes.
    pub size: usize,
    /// Calls so far.
    pub calls: u64,
    /// Failed calls so far.
    pub errors: u64,
    /// Median call latency, µs.
    pub p50_us: f64,
    /// 99th-percentile call latency, µs.
    pub p99_us: f64,
}

impl From<&Loaded> for PolicyVersion {
    fn from(p: &Loaded) -> Self {
        let info = p.info();
        let m = p.metrics();
        PolicyVersion {
            id: p.id().to_owned(),
            name: info.name.clone(),
            hash: info.hash.clone(),
            world: info.world.as_str().to_owned(),
            size: info.size,
            calls: m.calls,
            errors: m.errors.iter().map(|(_, n)| n).sum(),
            p50_us: m.p50_us,
            p99_us: m.p99_us,
        }
    }
}

/// A slot's active version and the earlier ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SlotListing {
    /// The slot.
    pub slot: SlotName,
    /// Deciding now.
    pub active: Option<PolicyVersion>,
    /// Earlier versions, newest first.
    pub previous: Vec<PolicyVersion>,
}

/// The runtime and the slots.
#[derive(Debug)]
pub struct Policies {
    runtime: Runtime,
    /// Placement decisions.
    pub placement: Arc<Slot>,
    /// Migration plans.
    pub migration: Arc<Slot>,
}

impl Policies {
    /// Fills both slots: the policy an operator loaded last (from the
    /// store), else the configured one.
    pub fn start(config: &PolicyConfig, store: &Store) -> Result<Self> {
        let runtime = Runtime::new(RuntimeConfig::default()).context("starting the policy runtime")?;
        let policies = Policies {
            runtime,
            placement: Arc::new(Slot::new("placement", KEEP)),
            migration: Arc::new(Slot::new("migration", KEEP)),
        };
        for (slot, configured) in
            [(SlotName::Placement, &config.placement), (SlotName::Migration, &config.migration)]
        {
            let stored = store.policy(slot.as_str())?;
            let (name, bytes, cfg) = match stored {
                Some(p) => (p.name, p.bytes, p.config),
                None => {
                    let source =
                        crate::source::resolve(configured, policies.runtime.config().max_component_size)
                            .with_context(|| format!("the {} policy", slot.as_str()))?;
                    (source.name, source.bytes, BTreeMap::new())
                }
            };
            policies
                .load(slot, &name, &bytes, cfg)
                .with_context(|| format!("loading {name} into {}", slot.as_str()))?;
        }
        Ok(policies)
    }

    /// Verifies, compiles and activates a component in `slot`.
    pub fn load(
        &self,
        slot: SlotName,
        name: &str,
        bytes: &[u8],
        config: BTreeMap<String, String>,
    ) -> Result<Arc<Loaded>> {
        let loaded = self.runtime.load(bytes, name, config)?;
        let world = loaded.info().world;
        if !slot.accepts(world) {
            bail!(
                "{} is a {} component; the {} slot needs one that exports it",
                loaded.id(),
                world.as_str(),
                slot.as_str()
            );
        }
        self.slot(slot).activate(loaded.clone());
        Ok(loaded)
    }

    /// Largest component accepted, bytes.
    pub fn max_size(&self) -> usize {
        self.runtime.config().max_component_size
    }

    fn slot(&self, slot: SlotName) -> &Arc<Slot> {
        match slot {
            SlotName::Placement => &self.placement,
            SlotName::Migration => &self.migration,
        }
    }

    /// Both slots.
    pub fn list(&self) -> Vec<SlotListing> {
        [SlotName::Placement, SlotName::Migration]
            .into_iter()
            .map(|name| {
                let slot = self.slot(name);
                SlotListing {
                    slot: name,
                    active: slot.active().as_deref().map(PolicyVersion::from),
                    previous: slot.history().iter().map(|p| PolicyVersion::from(p.as_ref())).collect(),
                }
            })
            .collect()
    }
}
