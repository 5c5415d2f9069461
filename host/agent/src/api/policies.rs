//! `/v1/policies`: list the slots, load a component into one while the
//! agent runs, and roll a slot back to an earlier version. Loading compiles
//! on a blocking thread; the node keeps deciding with the previous version
//! until the new one is active (and stored).

use super::AppState;
use super::error::{ErrorBody, Failure, QueryParams};
use crate::policies::{ChangeError, PolicyVersion, SlotListing, SlotName};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use locus_policy::Loaded;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Policy loads read and compiled at once; more are refused with 503.
pub const MAX_UPLOADS: usize = 2;

/// How to load a component.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LoadParams {
    /// The name to load a bare component under (shown in listings and
    /// decisions); a bundle carries its own.
    pub name: Option<String>,
    /// The policy's configuration, a JSON object of strings, e.g.
    /// `{"weight":"3"}` (URL-encoded); what its `config(key)` returns.
    pub config: Option<String>,
}

/// Which version to roll back to.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RollbackParams {
    /// A prefix of the version's hash; the newest earlier version if absent.
    pub hash: Option<String>,
}

/// Both slots: active and earlier versions, with call metrics.
#[utoipa::path(get, path = "/v1/policies", tag = "policies", responses((status = 200, body = [SlotListing])))]
pub async fn list(State(s): State<AppState>) -> Json<Vec<SlotListing>> {
    Json(s.policies.list())
}

fn slot(name: &str) -> Result<SlotName, Failure> {
    SlotName::parse(name).ok_or_else(|| {
        Failure::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no slot {name:?}: use placement, migration or consolidation"),
        )
    })
}

/// Verifies, compiles, activates and stores a WebAssembly component in a
/// slot; the body is a signed bundle (`locus policy sign`) or, on an agent
/// that trusts no signing key, a bare component.
#[utoipa::path(put, path = "/v1/policies/{slot}", tag = "policies",
    params(("slot" = SlotName, Path, description = "placement, migration or consolidation"), LoadParams),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, description = "Active", body = PolicyVersion),
        (status = 400, description = "Not a usable component for this slot, a bad configuration, or a bundle that does not verify (unsigned, tampered, expired, unknown key)", body = ErrorBody),
        (status = 413, description = "Larger than the size cap", body = ErrorBody),
        (status = 503, description = "Could not be stored, or as many loads as allowed are running; nothing changed", body = ErrorBody),
        (status = 507, description = "The state directory is full; nothing changed", body = ErrorBody)))]
pub async fn load(
    State(s): State<AppState>,
    Path(name): Path<String>,
    QueryParams(p): QueryParams<LoadParams>,
    body: axum::body::Body,
) -> Result<Json<PolicyVersion>, Failure> {
    let slot = slot(&name)?;
    let (_permit, body) = upload(&s, body).await?;
    if crate::bundle::is_bundle(&body) {
        if p.name.is_some() || p.config.is_some() {
            return Err(Failure::bad_request(
                "a bundle carries its own name and configuration, signed: load it without name or config",
            ));
        }
        return change(
            s,
            move |s| s.policies.load_bundle(slot, &body),
            StatusCode::BAD_REQUEST,
            "bad-request",
        )
        .await;
    }
    if body.len() > s.policies.max_size() {
        return Err(Failure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            format!("the component is larger than {} bytes", s.policies.max_size()),
        ));
    }
    let name = p.name.ok_or_else(|| Failure::bad_request("a bare component needs a name (?name=…)"))?;
    if !locus_core::request::valid_name(&name) {
        return Err(Failure::bad_request(format!("invalid policy name {name:?}")));
    }
    let config: BTreeMap<String, String> = match &p.config {
        None => BTreeMap::new(),
        Some(text) => serde_json::from_str(text).map_err(|e| {
            Failure::bad_request(format!(
                "config must be a JSON object of strings, e.g. {{\"k\":\"v\"}}: {e}"
            ))
        })?,
    };
    change(s, move |s| s.policies.load(slot, &name, &body, config), StatusCode::BAD_REQUEST, "bad-request")
        .await
}

/// Reads a policy upload (a component or a bundle): only a few are read
/// and compiled at once, since each may be as large as the runtime's cap
/// (plus a bundle's manifest), and the rest are told to come back rather
/// than held. The permit is held until the upload is dealt with.
pub(super) async fn upload(
    s: &AppState,
    body: axum::body::Body,
) -> Result<(tokio::sync::OwnedSemaphorePermit, axum::body::Bytes), Failure> {
    let permit = s.uploads.clone().try_acquire_owned().map_err(|_| {
        Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("{MAX_UPLOADS} policy uploads are already running; try again when one finishes"),
        )
    })?;
    let limit = s.policies.max_size() + MANIFEST_ROOM;
    let body = axum::body::to_bytes(body, limit).await.map_err(|e| {
        use std::error::Error as _;
        if e.source().is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) {
            Failure::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-large",
                format!("the upload is larger than {limit} bytes"),
            )
        } else {
            Failure::bad_request(format!("reading the upload: {e}"))
        }
    })?;
    Ok((permit, body))
}

/// Room for a bundle's manifest and signature beside a component at the cap.
const MANIFEST_ROOM: usize = 1 << 20;

/// Makes an earlier version of a slot active again, and stores that.
#[utoipa::path(post, path = "/v1/policies/{slot}/rollback", tag = "policies",
    params(("slot" = SlotName, Path, description = "placement, migration or consolidation"), RollbackParams),
    responses((status = 200, description = "Active", body = PolicyVersion),
        (status = 404, description = "No such earlier version", body = ErrorBody),
        (status = 503, description = "Could not be stored; nothing changed", body = ErrorBody),
        (status = 507, description = "The state directory is full; nothing changed", body = ErrorBody)))]
pub async fn rollback(
    State(s): State<AppState>,
    Path(name): Path<String>,
    QueryParams(p): QueryParams<RollbackParams>,
) -> Result<Json<PolicyVersion>, Failure> {
    let slot = slot(&name)?;
    change(s, move |s| s.policies.rollback(slot, p.hash.as_deref()), StatusCode::NOT_FOUND, "not-found").await
}

/// Makes a policy change off the runtime (it compiles and stores) and
/// answers with the version now active. A refused change is the client's
/// (`status`, `kind`); one that could not be stored is the agent's, and
/// was undone.
async fn change(
    s: AppState,
    apply: impl FnOnce(&AppState) -> Result<Arc<Loaded>, ChangeError> + Send + 'static,
    status: StatusCode,
    kind: &'static str,
) -> Result<Json<PolicyVersion>, Failure> {
    let result = tokio::task::spawn_blocking(move || apply(&s))
        .await
        .map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    match result {
        Ok(loaded) => Ok(Json(PolicyVersion::from(loaded.as_ref()))),
        Err(e @ ChangeError::Refused(_)) => Err(Failure::new(status, kind, e.to_string())),
        Err(ChangeError::NotStored(e)) if crate::store::is_no_space(&e) => Err(Failure::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "insufficient-storage",
            format!("the agent's state directory is full; the previous version stays active: {e}"),
        )),
        Err(e @ ChangeError::NotStored(_)) => {
            Err(Failure::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()))
        }
    }
}
