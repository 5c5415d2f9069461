//! API failures as JSON bodies with the right status, and extractors whose
//! rejections say what was wrong with the request in the same shape.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use locus_core::node::{ApiError, ApiErrorKind};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What kind of failure: bad-request, not-found, conflict, unplaceable,
    /// hypervisor, unavailable, insufficient-storage, unauthorized,
    /// too-large, unsupported-media-type, internal.
    pub kind: String,
    /// What is wrong, for a person.
    pub error: String,
}

/// A failed request.
#[derive(Debug)]
pub struct Failure {
    status: StatusCode,
    body: ErrorBody,
}

impl Failure {
    /// A failure with this status, kind and message.
    pub fn new(status: StatusCode, kind: &str, message: impl Into<String>) -> Self {
        Failure { status, body: ErrorBody { kind: kind.into(), error: message.into() } }
    }

    /// The core task is gone: the agent is stopping.
    pub fn stopping() -> Self {
        Failure::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the agent is shutting down")
    }

    /// The node answered with a reply of the wrong kind (a bug).
    pub fn unexpected() -> Self {
        Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "unexpected answer from the node")
    }

    /// A request the client got wrong.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Failure::new(StatusCode::BAD_REQUEST, "bad-request", message)
    }
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        let (status, kind) = match e.kind {
            ApiErrorKind::BadRequest => (StatusCode::BAD_REQUEST, "bad-request"),
            ApiErrorKind::NotFound => (StatusCode::NOT_FOUND, "not-found"),
            ApiErrorKind::Conflict => (StatusCode::CONFLICT, "conflict"),
            ApiErrorKind::Unplaceable => (StatusCode::UNPROCESSABLE_ENTITY, "unplaceable"),
            ApiErrorKind::Hypervisor => (StatusCode::BAD_GATEWAY, "hypervisor"),
            ApiErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiErrorKind::InsufficientStorage => (StatusCode::INSUFFICIENT_STORAGE, "insufficient-storage"),
        };
        Failure::new(status, kind, e.message)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

/// A JSON body whose rejection is a [`Failure`] naming the problem
/// (syntax, unknown field, wrong type, missing content type, too large).
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Failure;

    async fn from_request(req: Request, state: &S) -> Result<Self, Failure> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(JsonBody(v)),
            // A body that is JSON of the wrong shape (a type error, an
            // unknown field) is a bad request like any other: 400, not
            // axum's 422, which the API keeps for "no host can take it".
            Err(r) => Err(match r.status() {
                StatusCode::PAYLOAD_TOO_LARGE => Failure::new(r.status(), "too-large", r.body_text()),
                StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                    Failure::new(r.status(), "unsupported-media-type", r.body_text())
                }
                _ => Failure::bad_request(r.body_text()),
            }),
        }
    }
}

/// Query parameters whose rejection is a [`Failure`].
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Failure> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(QueryParams(v)),
            Err(r) => Err(Failure::bad_request(r.body_text())),
        }
    }
}
