//! # locus: the agent daemon and its clients
//!
//! - [`daemon`]: `locus agent`, the tokio shell around the core's node.
//! - [`config`]: its configuration (defaults, TOML, environment, flags).
//! - [`libvirt`]: the hypervisor thread (commands, sampling, reconnects).
//! - [`overlay`]: the libp2p swarm (membership gossip, agent-to-agent requests).
//! - [`store`]: durable intent (redb); [`reserve`]: space kept back for it.
//! - [`metrics`]: the Prometheus registry behind `/metrics`.
//! - [`records`]: the decision records `locus vm why` gathers.
//! - [`images`]: the image store and each VM's own disk on an image.
//! - [`policies`]: the placement and migration slots on the agent.
//! - [`deciders`]: the worker threads that run placement policies beside the node.
//! - [`api`]: the HTTP/JSON API and its OpenAPI description.
//! - [`client`], [`control`]: the API client and the CLI verbs using it.
//! - [`source`], [`files`]: where policy bytes come from on the command line.
//! - [`vmbench`]: `locus bench vms`, create+start throughput and memory.
//! - [`clusterbench`]: `locus bench cluster`, convergence, gossip traffic, placement latency.
//! - [`migratebench`]: `locus bench migrate`, live migration against `virsh migrate`, rebalancing.

pub mod api;
pub mod bundle;
pub mod client;
pub mod clusterbench;
pub mod config;
pub mod control;
pub mod daemon;
pub mod deciders;
pub mod files;
pub mod imagebench;
pub mod images;
pub mod libvirt;
pub mod metrics;
pub mod migratebench;
pub mod overlay;
pub mod policies;
pub mod records;
pub mod reserve;
pub mod rollout;
pub mod rolloutbench;
pub mod simulate;
pub mod source;
pub mod store;
pub mod vmbench;
