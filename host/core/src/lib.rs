//! # locus-core: the scheduling model and the placement pipeline
//!
//! Everything here is pure computation on values: no tokio, no libvirt, no
//! libp2p, no clock, no wasmtime. Policies are reached through the
//! [`Policy`] trait, so the agent (with WebAssembly components), the
//! simulator and the tests (with native policies) drive the same code.
//!
//! - [`model`]: PoPs, hosts, VMs and groups, with allocation totals.
//! - [`request`]: a tenant's VM request and its checks.
//! - [`filter`]: the hard constraints, applied before any policy runs.
//! - [`view`]: what a policy sees, built from the model.
//! - [`policy`]: the [`Policy`] trait, its errors, and native policies.
//! - [`validate`]: the checks every decision passes.
//! - [`pipeline`]: filter → policy → validate, with the safe fallback.
//! - [`spec`]: the cluster description files are written in.
//! - [`cluster`] and [`beacon`]: what agents tell each other, and when.
//! - [`load`]: when a host counts as overloaded or underloaded.
//! - [`rebalance`]: cooperative rebalancing by partitions (DVMS lineage).
//! - [`record`]: decision records, what `vm why` shows.
//! - [`node`]: one host's state machine (API requests, hypervisor results
//!   and samples in; intent changes, hypervisor commands and replies out),
//!   with [`hypervisor`] and [`intent`] the values it exchanges.

pub mod beacon;
pub mod cluster;
pub mod filter;
pub mod hypervisor;
pub mod intent;
pub mod load;
pub mod model;
pub mod node;
pub mod pipeline;
pub mod policy;
pub mod rebalance;
pub mod record;
pub mod request;
pub mod spec;
pub mod validate;
pub mod view;

pub use model::{GroupId, HostId, HostState, Model, ModelError, PopId, VmId};
pub use pipeline::{DecidedBy, Decision, Outcome, Placer, Prepared, Question};
pub use policy::{ErrorKind, Native, Policy, PolicyError, Verdict};
pub use request::{Location, RestartPolicy, VmRequest};
