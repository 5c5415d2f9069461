//! The agent's two policy slots (placement and migration): filled at start
//! from what was stored (the active version and the earlier ones, each with
//! its configuration) or from the configuration, hot-swapped and rolled back
//! while the agent runs, and every change stored before it is reported done.
//!
//! A stored version that no longer loads (a newer runtime refuses it, its
//! bytes are gone) is reported in `policy list` and in the log, and the
//! configured default takes its place: the agent always starts.

use crate::bundle::{self, Trust};
use crate::config::PolicyConfig;
use crate::store::{Store, StoredSlot, Version};
use anyhow::{Context, Result, bail};
use locus_policy::{Loaded, Runtime, RuntimeConfig, Slot, World};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Earlier versions kept per slot, for rollback and as fallback.
const KEEP: usize = 4;
/// Most configuration entries a policy may be loaded with.
pub const MAX_CONFIG_ENTRIES: usize = 64;
/// Longest configuration key, bytes.
pub const MAX_CONFIG_KEY: usize = 128;
/// Longest configuration value, bytes.
pub const MAX_CONFIG_VALUE: usize = 4096;
/// Most bytes of keys and values together.
pub const MAX_CONFIG_TOTAL: usize = 16 << 10;

/// Which slot.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum SlotName {
    /// Chooses hosts for new VMs.
    Placement,
    /// Plans migrations that relieve overloaded hosts.
    Migration,
    /// Plans migrations that empty underloaded hosts (consolidation).
    Consolidation,
}

impl SlotName {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            SlotName::Placement => "placement",
            SlotName::Migration => "migration",
            SlotName::Consolidation => "consolidation",
        }
    }

    /// Every slot.
    pub const ALL: [SlotName; 3] = [SlotName::Placement, SlotName::Migration, SlotName::Consolidation];

    /// Parses a slot name from a URL.
    pub fn parse(name: &str) -> Option<SlotName> {
        match name {
            "placement" => Some(SlotName::Placement),
            "migration" => Some(SlotName::Migration),
            "consolidation" => Some(SlotName::Consolidation),
            _ => None,
        }
    }

    fn accepts(self, world: World) -> bool {
        match self {
            SlotName::Placement => world.places(),
            SlotName::Migration | SlotName::Consolidation => world.plans(),
        }
    }
}

/// Checks a policy's configuration against the size limits.
pub fn check_config(config: &BTreeMap<String, String>) -> Result<(), String> {
    if config.len() > MAX_CONFIG_ENTRIES {
        return Err(format!(
            "{} configuration entries; at most {MAX_CONFIG_ENTRIES} are allowed",
            config.len()
        ));
    }
    let mut total = 0;
    for (k, v) in config {
        if k.is_empty() || k.len() > MAX_CONFIG_KEY || k.chars().any(char::is_control) {
            return Err(format!(
                "configuration key {k:?}: keys are 1 to {MAX_CONFIG_KEY} bytes without control characters"
            ));
        }
        if v.len() > MAX_CONFIG_VALUE {
            return Err(format!(
                "configuration value of {k:?} is {} bytes; at most {MAX_CONFIG_VALUE} are allowed",
                v.len()
            ));
        }
        total += k.len() + v.len();
    }
    if total > MAX_CONFIG_TOTAL {
        return Err(format!("configuration is {total} bytes in all; at most {MAX_CONFIG_TOTAL} are allowed"));
    }
    Ok(())
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
    /// The configuration it was loaded with.
    pub config: BTreeMap<String, String>,
    /// Calls so far (since this agent started).
    pub calls: u64,
    /// Failed calls so far.
    pub errors: u64,
    /// Failed calls by kind: trap, deadline, memory-cap, invalid-decision,
    /// instantiate, unsupported.
    pub errors_by_kind: BTreeMap<String, u64>,
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
            config: info.config.clone(),
            calls: m.calls,
            errors: m.errors.iter().map(|(_, n)| n).sum(),
            errors_by_kind: m.errors.iter().map(|(k, n)| (k.as_str().to_owned(), *n)).collect(),
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
    /// Stored versions that did not load when the agent started, and why.
    pub problems: Vec<String>,
}

/// The configured default of a slot, kept to store it once it is displaced
/// and to go back to.
#[derive(Debug)]
struct Default {
    hash: String,
    bytes: Vec<u8>,
    name: String,
    config: BTreeMap<String, String>,
}

/// Per-slot bookkeeping beside the runtime's [`Slot`].
#[derive(Debug)]
struct Book {
    /// The active version was chosen by an operator (loaded or rolled back
    /// to), not taken from the configuration.
    chosen: bool,
    default: Default,
    problems: Vec<String>,
}

/// Why a policy change was not made.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The component, its configuration or the version asked for was
    /// refused: the operator's to fix.
    #[error("{0:#}")]
    Refused(anyhow::Error),
    /// The change could not be stored (a full or failing disk) and was
    /// undone: the agent's to fix, and worth retrying.
    #[error("{0:#}")]
    NotStored(anyhow::Error),
}

/// The runtime and the slots.
#[derive(Debug)]
pub struct Policies {
    runtime: Runtime,
    store: Arc<Store>,
    /// The operators' keys: once one is trusted, only signed bundles load.
    trust: Trust,
    /// Placement decisions.
    pub placement: Arc<Slot>,
    /// Plans that relieve overloaded hosts.
    pub migration: Arc<Slot>,
    /// Plans that empty underloaded hosts.
    pub consolidation: Arc<Slot>,
    /// One lock for the slots' bookkeeping; it also orders stores, so what
    /// is stored is what the slots hold.
    books: Mutex<[Book; 3]>,
}

impl Policies {
    /// Fills both slots: what was stored (earlier versions, then the active
    /// one), else the configured policy.
    pub fn start(config: &PolicyConfig, store: Arc<Store>) -> Result<Self> {
        let runtime = Runtime::new(RuntimeConfig::default()).context("starting the policy runtime")?;
        let trust = Trust::parse(&config.trusted_keys).context("policies.trusted-keys")?;
        let placement = Arc::new(Slot::new("placement", KEEP));
        let migration = Arc::new(Slot::new("migration", KEEP));
        let consolidation = Arc::new(Slot::new("consolidation", KEEP));
        let mut books = Vec::new();
        for (slot, target, configured, cfg) in [
            (SlotName::Placement, &placement, &config.placement, &config.placement_config),
            (SlotName::Migration, &migration, &config.migration, &config.migration_config),
            (SlotName::Consolidation, &consolidation, &config.consolidation, &config.consolidation_config),
        ] {
            check_config(cfg).map_err(|e| anyhow::anyhow!("policies.{}-config: {e}", slot.as_str()))?;
            let source = crate::source::resolve(configured, runtime.config().max_component_size)
                .with_context(|| format!("the configured {} policy", slot.as_str()))?;
            let default = runtime.load(&source.bytes, &source.name, cfg.clone()).with_context(|| {
                format!("loading the configured {} policy {}", slot.as_str(), source.name)
            })?;
            if !slot.accepts(default.info().world) {
                bail!("{}", wrong_slot(slot, &default));
            }
            let (stored, bytes) = store.slot(slot.as_str())?;
            let mut problems = Vec::new();
            let mut restore = |v: &Version| -> Option<Arc<Loaded>> {
                let loaded = match bytes.get(&v.hash) {
                    None => Err(anyhow::anyhow!("its component is missing from the store")),
                    Some(b) => runtime.load(b, &v.name, v.config.clone()).map_err(anyhow::Error::from),
                };
                let loaded = loaded.and_then(|l| {
                    if slot.accepts(l.info().world) { Ok(l) } else { bail!("{}", wrong_slot(slot, &l)) }
                });
                match loaded {
                    Ok(l) => Some(l),
                    Err(e) => {
                        let problem =
                            format!("stored version {}@{} did not load: {e:#}", v.name, short(&v.hash));
                        tracing::error!(slot = slot.as_str(), problem = ?problem, "stored policy version skipped");
                        problems.push(problem);
                        None
                    }
                }
            };
            for v in stored.history.iter().rev() {
                if let Some(l) = restore(v) {
                    target.activate(l);
                }
            }
            let active = stored.active.as_ref().and_then(&mut restore);
            let chosen = active.is_some();
            if stored.active.is_some() && !chosen {
                tracing::warn!(
                    slot = slot.as_str(),
                    policy = default.id(),
                    "the configured default takes the place of the stored version"
                );
            }
            target.activate(active.unwrap_or(default));
            let default = Default {
                hash: hex_hash(&source.bytes),
                bytes: source.bytes,
                name: source.name,
                config: cfg.clone(),
            };
            books.push(Book { chosen, default, problems });
        }
        let books: [Book; 3] = books.try_into().map_err(|_| anyhow::anyhow!("three slots"))?;
        Ok(Policies { runtime, store, trust, placement, migration, consolidation, books: Mutex::new(books) })
    }

    /// The keys this agent trusts.
    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    /// Verifies, compiles and activates a bare component in `slot`, and
    /// stores it (with the slot's history) before returning. Refused once
    /// the agent trusts signing keys: then only bundles load.
    pub fn load(
        &self,
        slot: SlotName,
        name: &str,
        bytes: &[u8],
        config: BTreeMap<String, String>,
    ) -> Result<Arc<Loaded>, ChangeError> {
        if self.trust.enforcing() {
            return Err(ChangeError::Refused(anyhow::anyhow!(
                "this agent trusts policy signing keys and loads only signed bundles: sign the component with `locus policy sign` and load the bundle"
            )));
        }
        let loaded = self.check(slot, name, bytes, config)?;
        self.activate(slot, loaded.clone(), bytes)?;
        Ok(loaded)
    }

    /// Opens a bundle (signature, trusted key, expiry), then loads its
    /// component into the slot its manifest names, as [`Policies::load`].
    pub fn load_bundle(&self, slot: SlotName, bytes: &[u8]) -> Result<Arc<Loaded>, ChangeError> {
        let b = bundle::open(bytes, &self.trust).map_err(|e| ChangeError::Refused(e.into()))?;
        if b.manifest.slot != slot {
            return Err(ChangeError::Refused(anyhow::anyhow!(
                "the bundle is signed for the {} slot, not {}",
                b.manifest.slot.as_str(),
                slot.as_str()
            )));
        }
        let loaded = self.check(slot, &b.manifest.name, &b.component, b.manifest.config.clone())?;
        self.activate(slot, loaded.clone(), &b.component)?;
        Ok(loaded)
    }

    /// Verifies and compiles a component for `slot` without activating it.
    pub fn check(
        &self,
        slot: SlotName,
        name: &str,
        bytes: &[u8],
        config: BTreeMap<String, String>,
    ) -> Result<Arc<Loaded>, ChangeError> {
        check_config(&config).map_err(|e| ChangeError::Refused(anyhow::Error::msg(e)))?;
        let loaded = self.runtime.load(bytes, name, config).map_err(|e| ChangeError::Refused(e.into()))?;
        if !slot.accepts(loaded.info().world) {
            return Err(ChangeError::Refused(anyhow::anyhow!("{}", wrong_slot(slot, &loaded))));
        }
        Ok(loaded)
    }

    /// Activates a version [`Policies::check`] made from `bytes`, and stores it.
    pub fn activate(&self, slot: SlotName, loaded: Arc<Loaded>, bytes: &[u8]) -> Result<(), ChangeError> {
        let hash = loaded.info().hash.clone();
        self.change(slot, Some((&hash, bytes)), |s| {
            s.activate(loaded);
            Ok(())
        })
    }

    /// Makes the configured default of `slot` active again, and stores that.
    pub fn reset(&self, slot: SlotName) -> Result<Arc<Loaded>, ChangeError> {
        let (bytes, name, config) = {
            let books = self.books.lock().map_err(|_| ChangeError::NotStored(anyhow::anyhow!("poisoned")))?;
            let d = &books[slot as usize].default;
            (d.bytes.clone(), d.name.clone(), d.config.clone())
        };
        let loaded = self.check(slot, &name, &bytes, config)?;
        self.activate(slot, loaded.clone(), &bytes)?;
        Ok(loaded)
    }

    /// The version deciding in `slot` now.
    pub fn active(&self, slot: SlotName) -> Option<Arc<Loaded>> {
        self.slot(slot).active()
    }

    /// Makes an earlier version active again: the one whose hash starts
    /// with `hash`, or the newest earlier one; stored before returning.
    pub fn rollback(&self, slot: SlotName, hash: Option<&str>) -> Result<Arc<Loaded>, ChangeError> {
        let mut loaded = None;
        self.change(slot, None, |s| {
            loaded = Some(s.rollback(hash).map_err(|e| ChangeError::Refused(e.into()))?);
            Ok(())
        })?;
        loaded.ok_or_else(|| ChangeError::Refused(anyhow::anyhow!("rollback chose no version")))
    }

    /// Changes a slot as an operator asked and stores the result; if it
    /// cannot be stored (a full disk), the slot is put back as it was, so
    /// what runs is always what a restart would bring back.
    fn change(
        &self,
        slot: SlotName,
        loaded: Option<(&str, &[u8])>,
        apply: impl FnOnce(&Slot) -> Result<(), ChangeError>,
    ) -> Result<(), ChangeError> {
        let mut books = self
            .books
            .lock()
            .map_err(|_| ChangeError::NotStored(anyhow::anyhow!("policy bookkeeping poisoned")))?;
        let book = &mut books[slot as usize];
        let target = self.slot(slot);
        let before = (target.snapshot(), book.chosen);
        apply(target)?;
        book.chosen = true;
        if let Err(e) = self.persist(slot, book, loaded) {
            target.restore(before.0);
            book.chosen = before.1;
            tracing::warn!(
                slot = slot.as_str(),
                error = format!("{e:#}"),
                "policy change not stored; undone"
            );
            return Err(ChangeError::NotStored(e.context("the previous version stays active")));
        }
        Ok(())
    }

    /// Stores what `slot` holds now, with the bytes of a version just loaded.
    fn persist(&self, slot: SlotName, book: &Book, loaded: Option<(&str, &[u8])>) -> Result<()> {
        let version = |l: &Loaded| Version {
            name: l.info().name.clone(),
            hash: l.info().hash.clone(),
            config: l.info().config.clone(),
        };
        let s = self.slot(slot);
        let stored = StoredSlot {
            active: s.active().filter(|_| book.chosen).map(|l| version(&l)),
            history: s.history().iter().map(|l| version(l)).collect(),
        };
        let default = (book.default.hash.as_str(), book.default.bytes.as_slice());
        let new: Vec<_> = loaded.into_iter().chain([default]).collect();
        self.store.set_slot(slot.as_str(), &stored, &new).context("storing the policy slot")
    }

    /// Largest component accepted, bytes.
    pub fn max_size(&self) -> usize {
        self.runtime.config().max_component_size
    }

    fn slot(&self, slot: SlotName) -> &Arc<Slot> {
        match slot {
            SlotName::Placement => &self.placement,
            SlotName::Migration => &self.migration,
            SlotName::Consolidation => &self.consolidation,
        }
    }

    /// Every slot.
    pub fn list(&self) -> Vec<SlotListing> {
        let problems =
            |slot: SlotName| self.books.lock().map(|b| b[slot as usize].problems.clone()).unwrap_or_default();
        SlotName::ALL
            .into_iter()
            .map(|name| {
                let slot = self.slot(name);
                SlotListing {
                    slot: name,
                    active: slot.active().as_deref().map(PolicyVersion::from),
                    previous: slot.history().iter().map(|p| PolicyVersion::from(p.as_ref())).collect(),
                    problems: problems(name),
                }
            })
            .collect()
    }
}

fn wrong_slot(slot: SlotName, loaded: &Loaded) -> String {
    let needs = match slot {
        SlotName::Placement => "locus:policy/placement",
        SlotName::Migration | SlotName::Consolidation => "locus:policy/migration",
    };
    format!(
        "{} is a {} component; the {} slot needs one that exports {needs}@{}",
        loaded.id(),
        loaded.info().world.as_str(),
        slot.as_str(),
        locus_policy::CONTRACT_VERSION
    )
}

fn hex_hash(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn short(hash: &str) -> &str {
    &hash[..12.min(hash.len())]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_limits_are_named() {
        let cfg = |pairs: &[(&str, String)]| pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        assert!(check_config(&cfg(&[("weight", "3".into())])).is_ok());
        let e = check_config(&cfg(&[("big", "x".repeat(5000))])).expect_err("value too long");
        assert!(e.contains("4096"), "{e}");
        let e = check_config(&cfg(&[("bad\\u{1b}key", "1".into())])).err();
        assert!(e.is_none(), "an escaped backslash is not a control character");
        let e = check_config(&cfg(&[("bad\u{1b}key", "1".into())])).expect_err("control");
        assert!(e.contains("control"), "{e}");
        let many: BTreeMap<String, String> = (0..65).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(check_config(&many).expect_err("too many").contains("64"));
    }
}
