//! The agent's HTTP/JSON API: one router served on a unix socket (mode
//! 0600, no token: the file's permissions are the access control) and, when
//! configured, on TCP behind a bearer token, with TLS when a certificate
//! is configured. Handlers parse a request into
//! a node [`Command`], hand it to the core task with a oneshot for the
//! answer, and map the answer to HTTP. The OpenAPI description is served at
//! `/openapi.json`.

pub mod cluster;
mod dashboard;
mod error;
pub mod images;
pub mod observe;
mod openapi;
pub mod policies;
pub mod rollouts;
pub mod serve;
pub mod tls;
pub mod vms;

pub use error::{ErrorBody, Failure};
use locus_core::node::{ApiError, Command, Reply};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};

/// Largest JSON body accepted (a VM request is well under 1 KiB).
pub const MAX_JSON_BODY: usize = 64 << 10;

/// A request for the core task and where to send its answer.
#[derive(Debug)]
pub struct Call {
    /// What is asked.
    pub cmd: Command,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Result<Reply, ApiError>>,
}

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The core task's inbox.
    pub core: mpsc::Sender<Call>,
    /// The policy slots.
    pub policies: Arc<crate::policies::Policies>,
    /// The intent store (policies loaded by operators are kept there).
    pub store: Arc<crate::store::Store>,
    /// The image store.
    pub images: Arc<crate::images::Images>,
    /// Images between this agent and its peers.
    pub exchange: crate::images::transfer::Exchange,
    /// Policy loads in progress ([`policies::MAX_UPLOADS`] at most).
    pub uploads: Arc<tokio::sync::Semaphore>,
    /// The overlay task's inbox.
    pub overlay: mpsc::UnboundedSender<crate::overlay::ToOverlay>,
    /// The rollout task.
    pub rollouts: crate::rollout::Handle,
    /// The metrics registry (empty when metrics are off).
    pub telemetry: crate::metrics::Telemetry,
    /// The decision records this agent keeps.
    pub records: Arc<crate::records::Records>,
}

impl AppState {
    /// Asks the core and waits for its answer.
    pub async fn ask(&self, cmd: Command) -> Result<Reply, Failure> {
        let (reply, answer) = oneshot::channel();
        self.core.send(Call { cmd, reply }).await.map_err(|_| Failure::stopping())?;
        answer.await.map_err(|_| Failure::stopping())?.map_err(Failure::from)
    }
}

/// The API's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/vms", get(vms::list).post(vms::create))
        .route("/v1/vms/{name}", get(vms::show).delete(vms::delete))
        .route("/v1/vms/{name}/start", post(vms::start))
        .route("/v1/vms/{name}/stop", post(vms::stop))
        .route("/v1/vms/{name}/load", put(vms::set_load))
        .route("/v1/vms/{name}/migrate", post(vms::migrate))
        .route("/v1/vms/{name}/why", get(observe::why))
        .route("/v1/host", get(vms::host))
        .route("/v1/host/drain", post(vms::drain))
        .route("/v1/host/resume", post(vms::resume))
        .route("/v1/cluster", get(cluster::status))
        .route("/v1/cluster/join", post(cluster::join))
        .route("/v1/policies", get(policies::list))
        .route("/v1/policies/{slot}", put(policies::load).layer(DefaultBodyLimit::disable()))
        .route("/v1/policies/{slot}/rollback", post(policies::rollback))
        .route("/v1/rollouts", get(rollouts::status).post(rollouts::push).layer(DefaultBodyLimit::disable()))
        .route("/v1/rollouts/rollback", post(rollouts::rollback))
        .route("/v1/images", get(images::list))
        .route("/v1/transfers", get(images::transfers).post(images::fetch))
        .route("/v1/cluster/images", get(images::cluster))
        .route(
            "/v1/images/{image}",
            get(images::show).put(images::import).delete(images::remove).layer(DefaultBodyLimit::disable()),
        )
        .route("/openapi.json", get(openapi::document))
        .route("/metrics", get(observe::metrics))
        .route("/v1/decisions", get(observe::decisions))
        .route("/", get(dashboard::page))
        .route("/dashboard.js", get(dashboard::script))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async {
            Failure::new(axum::http::StatusCode::NOT_FOUND, "not-found", "no such endpoint")
        })
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .with_state(state)
}

/// The same routes behind `Authorization: Bearer <token>`, for TCP.
pub fn with_token(router: Router, token: String) -> Router {
    router.layer(middleware::from_fn_with_state(Arc::new(token), require_token))
}

async fn require_token(
    State(token): State<Arc<String>>,
    request: Request,
    next: Next,
) -> Result<Response, Failure> {
    use subtle::ConstantTimeEq;
    if request.method() == axum::http::Method::GET && dashboard::PUBLIC.contains(&request.uri().path()) {
        return Ok(next.run(request).await);
    }
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(presented.as_bytes().ct_eq(token.as_bytes())) {
        Ok(next.run(request).await)
    } else {
        Err(Failure::new(
            axum::http::StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token",
        ))
    }
}
