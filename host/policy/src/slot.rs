//! A policy slot: the active version of a policy, swapped atomically, with
//! earlier versions kept by content hash for rollback and as a fallback.
//!
//! A call loads the active version once (an `Arc`), so a swap during the
//! call neither fails it nor lets it see a half-loaded policy: in-flight
//! calls finish on the version they started with, later calls get the new
//! one.

use crate::loaded::Loaded;
use arc_swap::ArcSwapOption;
use locus_core::{ErrorKind, Policy, PolicyError, Verdict};
use locus_sdk::{Cluster, Migration, Partition, Placement, Request};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// Why a slot operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    /// No kept version matches.
    #[error("no earlier version matches {0:?}")]
    NoSuchVersion(String),
    /// Nothing to roll back to.
    #[error("there is no earlier version to roll back to")]
    NoHistory,
}

/// The same component with the same configuration.
fn same_version(a: &Loaded, b: &Loaded) -> bool {
    a.info().hash == b.info().hash && a.info().config == b.info().config
}

/// What a slot holds at one moment (see [`Slot::snapshot`]).
#[derive(Debug, Clone)]
pub struct SlotState {
    active: Option<Arc<Loaded>>,
    history: Vec<Arc<Loaded>>,
}

/// The active policy version and the ones before it.
#[derive(Debug)]
pub struct Slot {
    name: String,
    active: ArcSwapOption<Loaded>,
    /// Earlier versions, newest first, each distinct (component and
    /// configuration).
    history: Mutex<VecDeque<Arc<Loaded>>>,
    keep: usize,
}

impl Slot {
    /// An empty slot called `name` keeping `keep` earlier versions.
    pub fn new(name: impl Into<String>, keep: usize) -> Self {
        Self { name: name.into(), active: ArcSwapOption::empty(), history: Mutex::default(), keep }
    }

    /// The slot's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The active version.
    pub fn active(&self) -> Option<Arc<Loaded>> {
        self.active.load_full()
    }

    /// Earlier versions, newest first.
    pub fn history(&self) -> Vec<Arc<Loaded>> {
        self.history.lock().map(|h| h.iter().cloned().collect()).unwrap_or_default()
    }

    /// Makes `policy` active; the version it replaces becomes the newest
    /// earlier version. Activating the active version again changes
    /// nothing; the same component with another configuration is another
    /// version, so a configuration change can be rolled back.
    pub fn activate(&self, policy: Arc<Loaded>) {
        let Ok(mut history) = self.history.lock() else {
            return;
        };
        let previous = self.active.swap(Some(policy.clone()));
        history.retain(|p| !same_version(p, &policy));
        if let Some(prev) = previous
            && !same_version(&prev, &policy)
        {
            history.push_front(prev);
            history.truncate(self.keep);
        }
        tracing::info!(slot = %self.name, policy = policy.id(), "policy activated");
    }

    /// The active version and the earlier ones, to put back with
    /// [`Slot::restore`] when a change could not be stored.
    pub fn snapshot(&self) -> SlotState {
        SlotState { active: self.active(), history: self.history() }
    }

    /// Puts back what [`Slot::snapshot`] took.
    pub fn restore(&self, state: SlotState) {
        let Ok(mut history) = self.history.lock() else {
            return;
        };
        self.active.store(state.active);
        *history = state.history.into();
    }

    /// Re-activates an earlier version: the one whose hash starts with
    /// `hash_prefix`, or the newest one.
    pub fn rollback(&self, hash_prefix: Option<&str>) -> Result<Arc<Loaded>, SlotError> {
        let target = {
            let history = self.history.lock().map_err(|_| SlotError::NoHistory)?;
            match hash_prefix {
                None => history.front().cloned().ok_or(SlotError::NoHistory)?,
                Some(prefix) => history
                    .iter()
                    .find(|p| p.info().hash.starts_with(prefix))
                    .cloned()
                    .ok_or_else(|| SlotError::NoSuchVersion(prefix.to_owned()))?,
            }
        };
        self.activate(target.clone());
        Ok(target)
    }

    fn previous(&self, capable: impl Fn(&Loaded) -> bool) -> Option<Arc<Loaded>> {
        self.history.lock().ok()?.iter().find(|p| capable(p)).cloned()
    }

    fn empty(&self) -> PolicyError {
        PolicyError::new(format!("slot {}", self.name), ErrorKind::Unsupported, "no policy is active")
    }

    /// Calls the active version, or the newest capable earlier version when
    /// the active one fails.
    fn decide<T>(
        &self,
        capable: impl Fn(&Loaded) -> bool,
        call: impl Fn(&Loaded) -> Result<T, PolicyError>,
    ) -> Result<Verdict<T>, PolicyError> {
        let active = self.active.load_full().ok_or_else(|| self.empty())?;
        match call(&active) {
            Ok(value) => Ok(Verdict { value, decided_by: active.id().to_owned(), failure: None }),
            Err(failure) => {
                let Some(previous) = self.previous(capable) else {
                    return Err(failure);
                };
                let value = call(&previous).map_err(|_| failure.clone())?;
                Ok(Verdict { value, decided_by: previous.id().to_owned(), failure: Some(failure) })
            }
        }
    }
}

impl Policy for Slot {
    fn name(&self) -> String {
        self.active().map_or_else(|| format!("slot {} (empty)", self.name), |p| p.id().to_owned())
    }

    fn place(&self, cluster: &Cluster, request: &Request) -> Result<Verdict<Placement>, PolicyError> {
        self.decide(|p| p.info().world.places(), |p| p.place(cluster, request))
    }

    fn plan(&self, partition: &Partition) -> Result<Verdict<Vec<Migration>>, PolicyError> {
        self.decide(|p| p.info().world.plans(), |p| p.plan(partition))
    }
}
