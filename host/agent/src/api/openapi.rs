//! The OpenAPI description of the API, generated from the handlers and types.

use axum::Json;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Locus agent API",
        description = "VMs, images, host status and policies of one Locus agent, and policy pushes to its PoP or cluster."
    ),
    paths(
        super::vms::list,
        super::vms::create,
        super::vms::show,
        super::vms::start,
        super::vms::stop,
        super::vms::delete,
        super::vms::set_load,
        super::vms::migrate,
        super::observe::why,
        super::observe::metrics,
        super::observe::decisions,
        super::vms::host,
        super::vms::drain,
        super::vms::resume,
        super::policies::list,
        super::policies::load,
        super::policies::rollback,
        super::rollouts::push,
        super::rollouts::status,
        super::rollouts::rollback,
        super::images::list,
        super::images::show,
        super::images::import,
        super::images::remove,
        super::images::fetch,
        super::images::transfers,
        super::images::cluster,
        super::cluster::status,
        super::cluster::join,
    )
)]
struct ApiDoc;

/// The document.
pub fn spec() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// `GET /openapi.json`.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(spec())
}
