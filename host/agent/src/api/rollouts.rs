//! `/v1/rollouts`: push a signed bundle to a PoP or the whole cluster
//! through this agent, see every agent's policies and every push's stage,
//! and roll a scope back. The rollout task does the work; these handlers
//! read the body and map its answers to HTTP.

use super::AppState;
use super::error::{ErrorBody, Failure, QueryParams};
use crate::policies::SlotName;
use crate::rollout::table::Scope;
use crate::rollout::{PushOptions, PushView, RolloutError, RolloutStatus};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

/// Which scope to show.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct StatusParams {
    /// `cluster` or `pop:NAME`; every push and agent if absent.
    #[param(value_type = Option<String>)]
    pub scope: Option<Scope>,
}

/// Which scope and slot to roll back.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RollbackParams {
    /// `cluster` or `pop:NAME`.
    #[param(value_type = String)]
    pub scope: Scope,
    /// The slot.
    pub slot: SlotName,
}

fn failure(e: RolloutError) -> Failure {
    match e {
        RolloutError::Refused(m) => Failure::bad_request(m),
        RolloutError::NotFound(m) => Failure::new(StatusCode::NOT_FOUND, "not-found", m),
        RolloutError::NotStored(e) if crate::store::is_no_space(&e) => Failure::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "insufficient-storage",
            format!("the agent's state directory is full; nothing was pushed: {e:#}"),
        ),
        RolloutError::NotStored(e) => {
            Failure::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", format!("{e:#}"))
        }
    }
}

/// Pushes a signed bundle (the body) to every agent of a scope: verified
/// and compiled here, announced on the overlay, fetched by hash, verified
/// and compiled again by every agent before it activates, at once, after
/// canaries, or as a shadow that never acts.
#[utoipa::path(post, path = "/v1/rollouts", tag = "policies",
    params(PushOptions),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, description = "Announced", body = PushView),
        (status = 400, description = "A bundle that does not verify or compile, or bad options", body = ErrorBody),
        (status = 413, description = "Larger than the size cap", body = ErrorBody),
        (status = 503, description = "As many uploads as allowed are running, or it could not be stored; nothing was announced", body = ErrorBody),
        (status = 507, description = "The state directory is full; nothing was announced", body = ErrorBody)))]
pub async fn push(
    State(s): State<AppState>,
    QueryParams(options): QueryParams<PushOptions>,
    body: axum::body::Body,
) -> Result<Json<PushView>, Failure> {
    let (_permit, body) = super::policies::upload(&s, body).await?;
    s.rollouts.push(body.to_vec(), options).await.map(Json).map_err(failure)
}

/// Every push (of a scope) with its stage, and every agent's policies as
/// it last reported them.
#[utoipa::path(get, path = "/v1/rollouts", tag = "policies", params(StatusParams),
    responses((status = 200, body = RolloutStatus)))]
pub async fn status(
    State(s): State<AppState>,
    QueryParams(p): QueryParams<StatusParams>,
) -> Result<Json<RolloutStatus>, Failure> {
    s.rollouts.status(p.scope).await.map(Json).ok_or_else(Failure::stopping)
}

/// Rolls a scope's slot back to the push before the acting one (or, past
/// the first, to what the agents ran before any push), on every agent.
#[utoipa::path(post, path = "/v1/rollouts/rollback", tag = "policies", params(RollbackParams),
    responses((status = 200, description = "Announced", body = PushView),
        (status = 404, description = "Nothing acting was pushed to that scope and slot", body = ErrorBody),
        (status = 503, description = "Could not be stored", body = ErrorBody)))]
pub async fn rollback(
    State(s): State<AppState>,
    QueryParams(p): QueryParams<RollbackParams>,
) -> Result<Json<PushView>, Failure> {
    s.rollouts.rollback(p.scope, p.slot).await.map(Json).map_err(failure)
}
