//! The rollout task's face to the API: how to push, what can go wrong, and
//! the handle that sends the task its commands.

use super::status::{PushView, RolloutStatus};
use super::table::Scope;
use crate::policies::SlotName;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

/// How to push.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PushOptions {
    /// `cluster` or `pop:NAME`.
    #[param(value_type = String)]
    pub scope: Scope,
    /// Agents that activate it first (0: all at once).
    #[serde(default)]
    pub canary: u32,
    /// Decisions a canary must make with it to pass (default 20).
    pub canary_decisions: Option<u64>,
    /// …or seconds it must run, whichever comes first (default 60).
    pub canary_seconds: Option<u64>,
    /// Fraction of failed calls above which a canary fails (default 0.05).
    pub max_failure_rate: Option<f64>,
    /// Run as a shadow for this many seconds instead: never acts.
    pub shadow_seconds: Option<u64>,
}

/// Why a push or rollback was refused.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// The bundle or the request is wrong: the operator's to fix.
    #[error("{0}")]
    Refused(String),
    /// Nothing to roll back.
    #[error("{0}")]
    NotFound(String),
    /// Could not be stored; nothing was announced.
    #[error("{0:#}")]
    NotStored(anyhow::Error),
}

pub(super) enum Command {
    Push(Vec<u8>, PushOptions, oneshot::Sender<Result<PushView, RolloutError>>),
    Status(Option<Scope>, oneshot::Sender<RolloutStatus>),
    Rollback(Scope, SlotName, oneshot::Sender<Result<PushView, RolloutError>>),
}

/// The API's way to the rollout task.
#[derive(Debug, Clone)]
pub struct Handle {
    pub(super) tx: mpsc::Sender<Command>,
}

impl Handle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Pushes a bundle to a scope.
    pub async fn push(&self, bytes: Vec<u8>, options: PushOptions) -> Result<PushView, RolloutError> {
        self.ask(|tx| Command::Push(bytes, options, tx)).await.unwrap_or_else(stopping)
    }

    /// Every push of `scope` (all with none) and every agent's status.
    pub async fn status(&self, scope: Option<Scope>) -> Option<RolloutStatus> {
        self.ask(|tx| Command::Status(scope, tx)).await
    }

    /// Rolls `scope`'s `slot` back to the push before the acting one.
    pub async fn rollback(&self, scope: Scope, slot: SlotName) -> Result<PushView, RolloutError> {
        self.ask(|tx| Command::Rollback(scope, slot, tx)).await.unwrap_or_else(stopping)
    }
}

fn stopping<T>() -> Result<T, RolloutError> {
    Err(RolloutError::NotStored(anyhow::anyhow!("the agent is stopping")))
}
