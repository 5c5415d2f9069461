//! `/v1/policies`: list the slots, and load a component into one while the
//! agent runs. Loading compiles on a blocking thread; the node keeps
//! deciding with the previous version until the new one is active.

use super::AppState;
use super::error::{ErrorBody, Failure, QueryParams};
use crate::policies::{PolicyVersion, SlotListing, SlotName};
use crate::store::StoredPolicy;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use std::collections::BTreeMap;

/// How to load a component.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LoadParams {
    /// The name to load it under (shown in listings and decisions).
    pub name: String,
}

/// Both slots: active and earlier versions, with call metrics.
#[utoipa::path(get, path = "/v1/policies", tag = "policies", responses((status = 200, body = [SlotListing])))]
pub async fn list(State(s): State<AppState>) -> Json<Vec<SlotListing>> {
    Json(s.policies.list())
}

/// Verifies, compiles and activates a WebAssembly component in a slot; the
/// body is the component's bytes.
#[utoipa::path(put, path = "/v1/policies/{slot}", tag = "policies",
    params(("slot" = SlotName, Path, description = "placement or migration"), LoadParams),
    request_body(content = Vec<u8>, content_type = "application/wasm"),
    responses((status = 200, description = "Active", body = PolicyVersion),
        (status = 400, description = "Not a usable component for this slot", body = ErrorBody),
        (status = 413, description = "Larger than the size cap", body = ErrorBody)))]
pub async fn load(
    State(s): State<AppState>,
    Path(slot): Path<String>,
    QueryParams(p): QueryParams<LoadParams>,
    body: Bytes,
) -> Result<Json<PolicyVersion>, Failure> {
    let slot = match slot.as_str() {
        "placement" => SlotName::Placement,
        "migration" => SlotName::Migration,
        other => {
            return Err(Failure::new(
                StatusCode::NOT_FOUND,
                "not-found",
                format!("no slot {other:?}: use placement or migration"),
            ));
        }
    };
    if !locus_core::request::valid_name(&p.name) {
        return Err(Failure::bad_request(format!("invalid policy name {:?}", p.name)));
    }
    let state = s.clone();
    let bytes = body.to_vec();
    let loaded = tokio::task::spawn_blocking(move || {
        let loaded = state.policies.load(slot, &p.name, &bytes, BTreeMap::new())?;
        let stored = StoredPolicy { name: p.name.clone(), config: BTreeMap::new(), bytes };
        state.store.set_policy(slot.as_str(), &stored)?;
        anyhow::Ok(loaded)
    })
    .await
    .map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    .map_err(|e| Failure::bad_request(format!("{e:#}")))?;
    Ok(Json(PolicyVersion::from(loaded.as_ref())))
}
