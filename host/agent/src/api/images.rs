//! `/v1/images`: import an image's bytes into this host's store, list and
//! show images, remove one no VM uses. An upload streams to disk as it
//! arrives (hashed on the way), up to `images.max-bytes`.
//! `/v1/transfers`: fetch an image from the agents that hold it, and
//! follow this agent's fetches and uploads.

use super::AppState;
use super::error::{ErrorBody, Failure};
use crate::images::transfer::wire::Inventory;
use crate::images::transfer::{Fetching, Transfer, Transfers};
use crate::images::{ImageError, ImageInfo};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use locus_core::cluster::PeerId as CorePeer;
use locus_core::request::IMAGE_HASH_PREFIX;

impl From<ImageError> for Failure {
    fn from(e: ImageError) -> Self {
        let (status, kind) = match &e {
            ImageError::Name(_) | ImageError::Refused(_) | ImageError::Upload(_) => {
                (StatusCode::BAD_REQUEST, "bad-request")
            }
            ImageError::NotFound(_) | ImageError::Nowhere(_) => (StatusCode::NOT_FOUND, "not-found"),
            ImageError::Exists { .. } | ImageError::InUse { .. } => (StatusCode::CONFLICT, "conflict"),
            ImageError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too-large"),
            ImageError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ImageError::NoSpace => (StatusCode::INSUFFICIENT_STORAGE, "insufficient-storage"),
            ImageError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        Failure::new(status, kind, e.to_string())
    }
}

/// Every image in this host's store.
#[utoipa::path(get, path = "/v1/images", tag = "images", responses((status = 200, body = [ImageInfo])))]
pub async fn list(State(s): State<AppState>) -> Result<Json<Vec<ImageInfo>>, Failure> {
    let images = s.images.clone();
    Ok(Json(blocking(move || images.list()).await?))
}

/// What this agent and every agent it is connected to hold, whole or in
/// part (agents that do not answer within 5 s are left out).
#[utoipa::path(get, path = "/v1/cluster/images", tag = "images", responses((status = 200, body = [Inventory])))]
pub async fn cluster(State(s): State<AppState>) -> Json<Vec<Inventory>> {
    Json(s.exchange.cluster().await)
}

/// One image, by name or `sha256:<hex>`.
#[utoipa::path(get, path = "/v1/images/{image}", tag = "images",
    params(("image" = String, Path, description = "A name or sha256:<hex>")),
    responses((status = 200, body = ImageInfo), (status = 404, description = "No such image", body = ErrorBody)))]
pub async fn show(State(s): State<AppState>, Path(image): Path<String>) -> Result<Json<ImageInfo>, Failure> {
    let images = s.images.clone();
    Ok(Json(blocking(move || images.show(&image)).await?))
}

/// Imports the body's bytes (qcow2 or raw, detected) as image `image`.
/// The same bytes under the same name again change nothing (200).
#[utoipa::path(put, path = "/v1/images/{image}", tag = "images",
    params(("image" = String, Path, description = "The name to import it under")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, description = "Imported", body = ImageInfo),
        (status = 200, description = "Already there with the same bytes", body = ImageInfo),
        (status = 400, description = "Not an image the store takes (format, backing or data file, encrypted, empty) or a bad name", body = ErrorBody),
        (status = 409, description = "The name holds other bytes", body = ErrorBody),
        (status = 413, description = "Larger than images.max-bytes", body = ErrorBody),
        (status = 503, description = "As many imports as allowed are running", body = ErrorBody),
        (status = 507, description = "No space left; nothing stored", body = ErrorBody)))]
pub async fn import(
    State(s): State<AppState>,
    Path(image): Path<String>,
    body: Body,
) -> Result<(StatusCode, Json<ImageInfo>), Failure> {
    let (info, created) = s.images.import(&image, body.into_data_stream()).await?;
    tracing::info!(image, hash = %info.hash, bytes = info.size_bytes, created, "image imported");
    s.exchange.announce(&info);
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(info)))
}

/// Removes a name (a hash removes every name of it); the bytes go with the
/// last name. Refused while a VM's disk is on the image.
#[utoipa::path(delete, path = "/v1/images/{image}", tag = "images",
    params(("image" = String, Path, description = "A name or sha256:<hex>")),
    responses((status = 200, description = "Removed", body = ImageInfo),
        (status = 404, description = "No such image", body = ErrorBody),
        (status = 409, description = "VMs use it", body = ErrorBody)))]
pub async fn remove(
    State(s): State<AppState>,
    Path(image): Path<String>,
) -> Result<Json<ImageInfo>, Failure> {
    let images = s.images.clone();
    let asked = image.clone();
    let info = blocking(move || images.remove(&asked)).await?;
    let dropped = if image.starts_with(IMAGE_HASH_PREFIX) { info.names.clone() } else { vec![image.clone()] };
    s.exchange.withdraw(&info, &dropped, dropped.len() >= info.names.len());
    tracing::info!(hash = %info.hash, names = ?info.names, "image removed");
    Ok(Json(info))
}

/// What to fetch.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FetchRequest {
    /// A name or `sha256:<hex>`; a name is resolved by the agents that
    /// hold an image of that name (the nearest answers).
    pub image: String,
    /// Fetch only from this agent (peer id), not from every holder.
    #[serde(default)]
    pub from: Option<String>,
    /// Have every agent of this PoP fetch it instead (`image prefetch`);
    /// the answer is each agent's outcome.
    #[serde(default)]
    pub pop: Option<String>,
}

/// What each agent of a PoP said to a prefetch.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub struct Prefetched {
    /// The agent's host.
    pub host: String,
    /// "held already", "fetching", or why not.
    pub outcome: String,
}

/// Fetches an image from the agents that hold it, unless this host's store
/// has it (200 with the image); answers at once with the fetch (202),
/// which `GET /v1/transfers` follows. With `pop`, has every agent of that
/// PoP (that this one is connected to) fetch it: 200 with their outcomes.
#[utoipa::path(post, path = "/v1/transfers", tag = "images",
    request_body = FetchRequest,
    responses((status = 202, description = "Fetching", body = Transfer),
        (status = 200, description = "With pop: each agent's outcome", body = [Prefetched]),
        (status = 200, description = "Already in the store", body = ImageInfo),
        (status = 400, description = "A bad image or peer id", body = ErrorBody),
        (status = 404, description = "No agent of the cluster holds an image of that name", body = ErrorBody)))]
pub async fn fetch(
    State(s): State<AppState>,
    Json(req): Json<FetchRequest>,
) -> Result<axum::response::Response, Failure> {
    use axum::response::IntoResponse;
    let from = match req.from {
        Some(p) if p.parse::<libp2p::PeerId>().is_ok() => Some(CorePeer::from(p)),
        Some(p) => {
            return Err(Failure::new(
                StatusCode::BAD_REQUEST,
                "bad-request",
                format!("{p:?} is not a peer id"),
            ));
        }
        None => None,
    };
    if let Some(pop) = req.pop {
        if from.is_some() {
            return Err(Failure::new(
                StatusCode::BAD_REQUEST,
                "bad-request",
                "pop and from do not go together",
            ));
        }
        if !locus_core::request::valid_image_ref(&req.image) {
            return Err(ImageError::NotFound(req.image).into());
        }
        let rows = s.exchange.prefetch(&req.image, &pop).await;
        let rows: Vec<Prefetched> =
            rows.into_iter().map(|(host, outcome)| Prefetched { host, outcome }).collect();
        return Ok((StatusCode::OK, Json(rows)).into_response());
    }
    match s.exchange.fetch(&req.image, from).await? {
        Fetching::Held(info) => Ok((StatusCode::OK, Json(*info)).into_response()),
        Fetching::Started(progress) => {
            let t = progress.borrow().clone();
            Ok((StatusCode::ACCEPTED, Json(t)).into_response())
        }
    }
}

/// This agent's fetches (running, and the last that ended) and uploads.
#[utoipa::path(get, path = "/v1/transfers", tag = "images", responses((status = 200, body = Transfers)))]
pub async fn transfers(State(s): State<AppState>) -> Json<Transfers> {
    Json(s.exchange.list())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(Failure::from)
}
