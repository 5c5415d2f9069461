//! # locus-sdk: write Locus scheduling policies in Rust
//!
//! A Locus policy decides where new VMs run (placement) or which running VMs
//! should move (migration). It is a WebAssembly component built against the
//! `locus:policy@0.1.0` WIT package, loaded into running agents and called
//! with a view of the infrastructure. With this crate a policy is a plain
//! Rust type implementing [`PlacementPolicy`] and/or [`MigrationPolicy`],
//! exported with [`export!`], and unit-tested natively with [`testing`].
//!
//! ## A complete placement policy
//!
//! `Cargo.toml`:
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib", "rlib"]
//!
//! [dependencies]
//! locus-sdk = "0.1"
//! ```
//!
//! `src/lib.rs`:
//!
//! ```
//! use locus_sdk::{Cluster, Placement, PlacementPolicy, RejectReason, Request};
//!
//! /// Places each VM on the host with the most free memory.
//! pub struct MostMemory;
//!
//! impl PlacementPolicy for MostMemory {
//!     fn place(cluster: &Cluster, request: &Request) -> Placement {
//!         let hosts = &cluster.hosts;
//!         // The agent only passes hosts where the VM fits, but a careful
//!         // policy does not rely on it.
//!         (0..hosts.len())
//!             .filter(|&i| request.size.fits_in(hosts.free(i)))
//!             .max_by_key(|&i| hosts.free(i).memory_mib)
//!             .map(|i| Placement::on(i as u32))
//!             .unwrap_or_else(|| Placement::reject(RejectReason::NoCapacity, "no host has room"))
//!     }
//! }
//!
//! locus_sdk::export!(placement: MostMemory);
//!
//! // In tests, the same code runs natively:
//! use locus_sdk::testing::{ClusterBuilder, RequestBuilder};
//! use locus_sdk::Resources;
//!
//! let cluster = ClusterBuilder::new()
//!     .pop("FR", 48.86, 2.35)
//!     .host_used(0, Resources::new(16, 32_768, 500), Resources::new(4, 30_000, 40))
//!     .host(0, Resources::new(16, 32_768, 500))
//!     .build();
//! let request = RequestBuilder::new(&cluster, Resources::new(2, 2048, 20)).build();
//! assert_eq!(MostMemory::place(&cluster, &request).host(), Some(1));
//! ```
//!
//! Build the component with `cargo build --release --target wasm32-wasip2`;
//! `target/wasm32-wasip2/release/<crate>.wasm` is the policy. Check it with
//! `locus policy check FILE`. `docs/policy-guide.md` walks through it all.
//!
//! ## The rules a policy lives by
//! - It sees only what it is given and may only log and read its
//!   configuration ([`log`], [`config`]): no clock, no files, no network. Its
//!   decision must depend on its inputs alone.
//! - Hosts and VMs are rows of column tables ([`Hosts`], [`Vms`]) and are
//!   named by row index in decisions.
//! - The agent filters hard constraints before the call and checks every
//!   decision after it; a policy that traps, overruns its deadline (50 ms by
//!   default) or its memory cap (64 MiB) is replaced for that decision by the
//!   previous version or a safe built-in.

mod decision;
pub mod geo;
mod host;
mod plan;
pub mod testing;
mod view;

#[cfg(target_family = "wasm")]
#[doc(hidden)]
#[path = "glue.rs"]
pub mod __glue;

pub use decision::{Choice, Migration, Placement, RejectReason, Rejection, Score};
pub use host::{Level, config, config_or, log};
pub use plan::{MoveError, PlanBuilder};
pub use view::{
    ABSENT, Cluster, Coordinates, Group, GroupKind, Host, Hosts, Partition, Pop, Request, Resources, Vms,
};

/// A placement policy: chooses the host for one new VM.
pub trait PlacementPolicy {
    /// Chooses a row of `cluster.hosts` for `request`, or declines.
    ///
    /// `cluster.hosts` holds only hosts that passed the agent's hard filters:
    /// each is up, has room for `request.size`, lies inside the allowed
    /// jurisdictions and latency bound, and holds no member of the request's
    /// anti-affinity group. The answer is checked again by the agent.
    fn place(cluster: &Cluster, request: &Request) -> Placement;
}

/// A migration (rebalancing) policy: chooses which running VMs move where.
pub trait MigrationPolicy {
    /// Returns the live migrations to carry out on `partition`, in order; an
    /// empty plan means nothing moves. The agent refuses a whole plan that
    /// names an unknown VM or host, moves a VM twice or to where it is,
    /// crosses a jurisdiction fence, co-locates two members of an
    /// anti-affinity group, exceeds a host's allocatable resources or pushes
    /// a receiving host's CPU demand over its physical capacity.
    fn plan(partition: &Partition) -> Vec<Migration>;
}

/// Exports a policy type as the component's implementation.
///
/// Use it once, at the crate root, naming what the policy implements:
/// `export!(placement: P)`, `export!(migration: M)`, or
/// `export!(placement: P, migration: M)`. The component is then built
/// against the matching WIT world (`placement-policy`, `migration-policy`,
/// or `scheduler-policy` for both).
///
/// ```
/// use locus_sdk::{Migration, MigrationPolicy, Partition};
///
/// /// Never moves anything.
/// pub struct StayPut;
///
/// impl MigrationPolicy for StayPut {
///     fn plan(_: &Partition) -> Vec<Migration> {
///         Vec::new()
///     }
/// }
///
/// locus_sdk::export!(migration: StayPut);
/// ```
///
/// It expands to nothing when the crate is compiled natively, so the same
/// crate is unit-tested and benchmarked with plain `cargo test`.
#[macro_export]
macro_rules! export {
    (placement: $p:ty $(,)?) => {
        #[cfg(target_family = "wasm")]
        const _: () = {
            struct __LocusExports;
            $crate::__export_placement!(placement, $p);
    $crate::__glue::placement::export_world!(__LocusExports with_types_in $crate::__glue::placement);
        };
    };
    (migration: $m:ty $(,)?) => {
        #[cfg(target_family = "wasm")]
        const _: () = {
            struct __LocusExports;
            $crate::__export_migration!(migration, $m);
    $crate::__glue::migration::export_world!(__LocusExports with_types_in $crate::__glue::migration);
        };
    };
    (placement: $p:ty, migration: $m:ty $(,)?) => {
        #[cfg(target_family = "wasm")]
        const _: () = {
            struct __LocusExports;
            $crate::__export_placement!(placement, $p);
            $crate::__export_migration!(migration, $m);
    $crate::__glue::placement::export_world!(__LocusExports with_types_in $crate::__glue::placement);
    $crate::__glue::migration::export_world!(__LocusExports with_types_in $crate::__glue::migration);
        };
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __export_placement {
    ($world:ident, $p:ty) => {
        impl $crate::__glue::$world::exports::locus::policy::placement::Guest for __LocusExports {
            fn place(
                cluster: $crate::__glue::wit::Cluster,
                request: $crate::__glue::wit::Request,
            ) -> $crate::__glue::wit::Placement {
                $crate::__glue::place::<$p>(cluster, request)
            }
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __export_migration {
    ($world:ident, $m:ty) => {
        impl $crate::__glue::$world::exports::locus::policy::migration::Guest for __LocusExports {
            fn plan(
                partition: $crate::__glue::wit::Partition,
            ) -> ::std::vec::Vec<$crate::__glue::wit::Migration> {
                $crate::__glue::plan::<$m>(partition)
            }
        }
    };
}
