//! `/v1/cluster`: the cluster as this agent sees it, and joining one.

use super::AppState;
use super::error::{ErrorBody, Failure, JsonBody};
use crate::overlay::{OverlayStats, ToOverlay};
use axum::Json;
use axum::extract::State;
use locus_core::node::{ClusterStatus, Command, Reply};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// The cluster view and the overlay's counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClusterView {
    /// PoPs and hosts as this agent knows them.
    pub cluster: ClusterStatus,
    /// Connections and traffic.
    pub overlay: OverlayStats,
}

/// Where to join.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Join {
    /// A multiaddr of an agent of the cluster, e.g. `/ip4/10.0.0.5/tcp/7946`.
    pub addr: String,
}

/// PoPs (free capacity, latency, speaker) and hosts (liveness, VMs).
#[utoipa::path(get, path = "/v1/cluster", tag = "cluster", responses((status = 200, body = ClusterView)))]
pub async fn status(State(s): State<AppState>) -> Result<Json<ClusterView>, Failure> {
    let cluster = match s.ask(Command::Cluster).await? {
        Reply::Cluster(c) => *c,
        _ => return Err(Failure::unexpected()),
    };
    let (tx, rx) = oneshot::channel();
    s.overlay.send(ToOverlay::Stats(tx)).map_err(|_| Failure::stopping())?;
    let overlay = rx.await.map_err(|_| Failure::stopping())?;
    Ok(Json(ClusterView { cluster, overlay }))
}

/// Dials an agent of a cluster; membership follows from gossip.
#[utoipa::path(post, path = "/v1/cluster/join", tag = "cluster", request_body = Join,
    responses((status = 200, body = Join), (status = 400, body = ErrorBody)))]
pub async fn join(State(s): State<AppState>, JsonBody(j): JsonBody<Join>) -> Result<Json<Join>, Failure> {
    let addr: libp2p::Multiaddr =
        j.addr.parse().map_err(|e| Failure::bad_request(format!("{:?} is not a multiaddr: {e}", j.addr)))?;
    let (tx, rx) = oneshot::channel();
    s.overlay.send(ToOverlay::Join(addr, tx)).map_err(|_| Failure::stopping())?;
    rx.await.map_err(|_| Failure::stopping())?.map_err(Failure::bad_request)?;
    Ok(Json(j))
}
