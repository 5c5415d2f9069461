//! # locus-policy: the WebAssembly policy runtime
//!
//! Loads scheduling policies (WebAssembly components against
//! `locus:policy@0.1.0`), refuses anything else with a clear error, and runs
//! them sandboxed: a fresh instance per decision (no state survives between
//! calls), a wall-clock deadline per call (epoch interruption), a memory cap
//! (store limits), a bound on what the guest hands back, stdout and stderr
//! captured in memory, no clock, files or network, and every decision
//! validated before it is returned. [`Slot`] holds the active version of a
//! policy, swaps it atomically while calls are in flight, keeps earlier
//! versions by content hash for rollback, and falls back to the previous
//! version when the active one fails. It implements
//! [`locus_core::Policy`], so the core calls it like any other policy.

mod bindings;
mod convert;
mod error;
mod loaded;
mod metrics;
mod output;
mod runtime;
mod slot;
mod state;
mod ticker;

pub use error::LoadError;
pub use loaded::{Info, Instance, Loaded, World};
pub use metrics::MetricsSnapshot;
pub use runtime::{CONTRACT_VERSION, Precompiled, Runtime, RuntimeConfig};
pub use slot::{Slot, SlotError, SlotState};
