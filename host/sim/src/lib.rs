//! `locus-sim`: the real `locus-core` nodes of a whole cluster in one
//! process, in virtual time, around a modelled network and modelled
//! hypervisors. One seed derives every random choice, so a run replays
//! exactly; the node code is the agent's, so what the simulator shows is
//! what the agents do.
//!
//! It never reads the clock or does IO of its own: time is virtual and the
//! report is a value the caller prints.

pub mod central;
pub mod check;
pub mod deciders;
pub mod energy;
pub mod hypervisor;
pub mod invariants;
pub mod net;
mod queue;
pub mod report;
pub mod scale;
pub mod scenario;
pub mod seed;
pub mod series;
pub mod traffic;
pub mod world;

pub use report::Report;
pub use scenario::Scenario;
pub use world::World;
