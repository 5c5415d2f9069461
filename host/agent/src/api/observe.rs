//! `/metrics` (Prometheus, OpenMetrics text) and `/v1/vms/{name}/why`
//! (decision records): what an operator's tools watch and ask.

use super::AppState;
use super::error::{ErrorBody, Failure, QueryParams};
use crate::records::Why;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use locus_core::node::{Command, Reply};

/// The agent's metrics, OpenMetrics text (see the operator's guide for the
/// list). What the node alone knows (VMs, load, power) is read now.
#[utoipa::path(get, path = "/metrics", tag = "observe",
    responses(
        (status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text", body = String),
        (status = 404, description = "Metrics are off (`[metrics] enabled = false`)", body = ErrorBody)))]
pub async fn metrics(State(s): State<AppState>) -> Result<Response, Failure> {
    let Some(m) = s.telemetry.get() else {
        return Err(Failure::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "metrics are off in this agent's configuration ([metrics] enabled = false)",
        ));
    };
    if let Ok(Reply::Host(h)) = s.ask(Command::Host).await {
        m.host(&h);
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    if s.overlay.send(crate::overlay::ToOverlay::Stats(tx)).is_ok()
        && let Ok(stats) = rx.await
    {
        m.peers(stats.connected);
    }
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], m.encode()).into_response())
}

/// How many decisions to list.
#[derive(Debug, Clone, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct Latest {
    /// At most this many, newest first (default 50, at most 1000).
    pub limit: Option<usize>,
}

/// The newest decision records this agent took, newest first.
#[utoipa::path(get, path = "/v1/decisions", tag = "observe", params(Latest),
    responses(
        (status = 200, description = "Decision records, newest first", body = [locus_core::record::Record]),
        (status = 400, description = "Bad query", body = ErrorBody)))]
pub async fn decisions(
    State(s): State<AppState>,
    QueryParams(q): QueryParams<Latest>,
) -> Json<Vec<locus_core::record::Record>> {
    Json(s.records.latest(q.limit.unwrap_or(50).min(1000)))
}

/// How a VM came to be where it is: the records of its placement and
/// moves, from this agent and every agent connected to it.
#[utoipa::path(get, path = "/v1/vms/{name}/why", tag = "vms",
    params(("name" = String, Path, description = "The VM")),
    responses(
        (status = 200, description = "Its decision records, oldest first", body = Why),
        (status = 400, description = "Not a VM name", body = ErrorBody),
        (status = 404, description = "No agent reached keeps a record of it", body = ErrorBody)))]
pub async fn why(State(s): State<AppState>, Path(name): Path<String>) -> Result<Json<Why>, Failure> {
    if !locus_core::request::valid_name(&name) {
        return Err(Failure::bad_request(format!("{name:?} is not a VM name")));
    }
    let why = crate::records::why(&s.records, &s.overlay, &name).await;
    if why.records.is_empty() {
        return Err(Failure::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!(
                "no record of vm {name:?} here or at the {} of {} agent(s) asked that answered",
                why.answered, why.asked
            ),
        ));
    }
    Ok(Json(why))
}
