//! `/v1/vms` and `/v1/host`: VM lifecycle and host status, each a node command.

use super::AppState;
use super::error::{ErrorBody, Failure, JsonBody, QueryParams};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use locus_core::VmRequest;
use locus_core::node::{Command, HostStatus, Reply, VmStatus};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The answer to a delete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Deleted {
    /// The VM that was deleted.
    pub deleted: String,
}

/// How to stop a VM.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct StopParams {
    /// Power off at once instead of asking the guest.
    #[serde(default)]
    pub force: bool,
    /// How long the guest gets to shut down before it is powered off, ms
    /// (the agent's `timing.stop-timeout-ms` when absent; at most 600000,
    /// larger values are clamped). A forced stop or a delete overrides a
    /// graceful stop still waiting for its guest; the graceful stop's
    /// request is then answered 409.
    pub timeout_ms: Option<u64>,
}

/// A VM answer: `done` when carried out, 202 Accepted when the hypervisor
/// was unavailable and the operation is pending (the body says why).
fn vm(reply: Reply, done: StatusCode) -> Result<(StatusCode, Json<VmStatus>), Failure> {
    match reply {
        Reply::Vm(s) if s.pending.is_some() => Ok((StatusCode::ACCEPTED, Json(*s))),
        Reply::Vm(s) => Ok((done, Json(*s))),
        _ => Err(Failure::unexpected()),
    }
}

/// The answer to a delete: the name when done, the VM's status when pending.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DeleteAnswer {
    /// Deleted.
    Done(Deleted),
    /// Accepted; carried out when the hypervisor is back.
    Pending(Box<VmStatus>),
}

/// Every VM on this host.
#[utoipa::path(get, path = "/v1/vms", tag = "vms",
    responses((status = 200, description = "Every VM", body = [VmStatus])))]
pub async fn list(State(s): State<AppState>) -> Result<Json<Vec<VmStatus>>, Failure> {
    match s.ask(Command::List).await? {
        Reply::Vms(v) => Ok(Json(v)),
        _ => Err(Failure::unexpected()),
    }
}

/// Places, defines and boots a VM with the active placement policy.
#[utoipa::path(post, path = "/v1/vms", tag = "vms", request_body = VmRequest,
    responses(
        (status = 201, description = "Created and running", body = VmStatus),
        (status = 202, description = "Recorded, but the hypervisor became unavailable: it is created when it is back (`pending` says so)", body = VmStatus),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 409, description = "Name taken", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not `Content-Type: application/json`", body = ErrorBody),
        (status = 422, description = "No host can take it", body = ErrorBody),
        (status = 502, description = "The hypervisor refused", body = ErrorBody),
        (status = 503, description = "Hypervisor unavailable; nothing was recorded", body = ErrorBody),
        (status = 507, description = "The state directory is full; nothing was recorded", body = ErrorBody)))]
pub async fn create(
    State(s): State<AppState>,
    JsonBody(spec): JsonBody<VmRequest>,
) -> Result<(StatusCode, Json<VmStatus>), Failure> {
    vm(s.ask(Command::Create(Box::new(spec))).await?, StatusCode::CREATED)
}

/// One VM.
#[utoipa::path(get, path = "/v1/vms/{name}", tag = "vms", params(("name" = String, Path, description = "VM name")),
    responses((status = 200, body = VmStatus), (status = 404, body = ErrorBody)))]
pub async fn show(State(s): State<AppState>, Path(name): Path<String>) -> Result<Json<VmStatus>, Failure> {
    match s.ask(Command::Show(name)).await? {
        Reply::Vm(s) => Ok(Json(*s)),
        _ => Err(Failure::unexpected()),
    }
}

/// Boots a stopped VM (and resets its restart count).
#[utoipa::path(post, path = "/v1/vms/{name}/start", tag = "vms", params(("name" = String, Path, description = "VM name")),
    responses((status = 200, body = VmStatus), (status = 202, description = "Pending: the hypervisor became unavailable", body = VmStatus),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 502, body = ErrorBody),
        (status = 503, body = ErrorBody), (status = 507, description = "The state directory is full", body = ErrorBody)))]
pub async fn start(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<VmStatus>), Failure> {
    vm(s.ask(Command::Start(name)).await?, StatusCode::OK)
}

/// Stops a VM: asks the guest, then powers it off at the deadline.
#[utoipa::path(post, path = "/v1/vms/{name}/stop", tag = "vms",
    params(("name" = String, Path, description = "VM name"), StopParams),
    responses((status = 200, body = VmStatus), (status = 202, description = "Pending: the hypervisor became unavailable", body = VmStatus),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 502, body = ErrorBody), (status = 503, body = ErrorBody),
        (status = 507, description = "The state directory is full and the reserve is spent", body = ErrorBody)))]
pub async fn stop(
    State(s): State<AppState>,
    Path(name): Path<String>,
    QueryParams(p): QueryParams<StopParams>,
) -> Result<(StatusCode, Json<VmStatus>), Failure> {
    let timeout = p.timeout_ms.map(Duration::from_millis);
    vm(s.ask(Command::Stop { name, force: p.force, timeout }).await?, StatusCode::OK)
}

/// Powers a VM off, removes its domain and forgets it.
#[utoipa::path(delete, path = "/v1/vms/{name}", tag = "vms", params(("name" = String, Path, description = "VM name")),
    responses((status = 200, body = Deleted), (status = 202, description = "Pending: the hypervisor became unavailable", body = VmStatus),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 502, body = ErrorBody),
        (status = 503, body = ErrorBody),
        (status = 507, description = "The state directory is full and the reserve is spent", body = ErrorBody)))]
pub async fn delete(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<DeleteAnswer>), Failure> {
    match s.ask(Command::Delete(name)).await? {
        Reply::Deleted(deleted) => Ok((StatusCode::OK, Json(DeleteAnswer::Done(Deleted { deleted })))),
        Reply::Vm(status) => Ok((StatusCode::ACCEPTED, Json(DeleteAnswer::Pending(status)))),
        _ => Err(Failure::unexpected()),
    }
}

/// The host: capacity, allocation, VMs by state, hypervisor connection.
#[utoipa::path(get, path = "/v1/host", tag = "host", responses((status = 200, body = HostStatus)))]
pub async fn host(State(s): State<AppState>) -> Result<Json<HostStatus>, Failure> {
    match s.ask(Command::Host).await? {
        Reply::Host(h) => Ok(Json(*h)),
        _ => Err(Failure::unexpected()),
    }
}

/// A VM's declared CPU demand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Load {
    /// Milli-CPUs, at most 1000 per vCPU.
    pub cpu_milli: u32,
}

/// Declares a VM's expected CPU demand: counted by placement and the load
/// judgement until the hypervisor reports measured CPU use (the test
/// driver never does). Answered once stored.
#[utoipa::path(put, path = "/v1/vms/{name}/load", tag = "vms", params(("name" = String, Path, description = "VM name")),
    request_body = Load,
    responses((status = 200, body = VmStatus), (status = 400, description = "More than its vCPUs can use", body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 507, description = "The state directory is full", body = ErrorBody)))]
pub async fn set_load(
    State(s): State<AppState>,
    Path(name): Path<String>,
    JsonBody(load): JsonBody<Load>,
) -> Result<Json<VmStatus>, Failure> {
    match s.ask(Command::SetLoad { name, cpu_milli: load.cpu_milli }).await? {
        Reply::Vm(s) => Ok(Json(*s)),
        _ => Err(Failure::unexpected()),
    }
}

/// Where to move a VM.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MigrateBody {
    /// The destination host; the PoP's placement policy chooses among its
    /// other hosts when absent.
    #[serde(default)]
    pub to: Option<String>,
}

/// Moves a VM to another host: live when both hypervisors can migrate,
/// else cold (powered off here, booted there). Checked against capacity,
/// CPU demand, fences and anti-affinity; answered once it runs at the
/// destination, with its status there. Entered at any agent.
#[utoipa::path(post, path = "/v1/vms/{name}/migrate", tag = "vms", params(("name" = String, Path, description = "VM name")),
    request_body = MigrateBody,
    responses((status = 200, description = "Moved", body = VmStatus),
        (status = 400, description = "Already on that host", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Busy, already moving, or being deleted", body = ErrorBody),
        (status = 422, description = "No host can take it, or the named one cannot", body = ErrorBody),
        (status = 502, description = "The hypervisor failed the migration; the VM stays", body = ErrorBody),
        (status = 503, description = "The hypervisor or the VM's host is unavailable", body = ErrorBody),
        (status = 507, description = "The state directory is full", body = ErrorBody)))]
pub async fn migrate(
    State(s): State<AppState>,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<MigrateBody>,
) -> Result<Json<VmStatus>, Failure> {
    match s.ask(Command::Migrate { name, to: body.to }).await? {
        Reply::Vm(s) => Ok(Json(*s)),
        _ => Err(Failure::unexpected()),
    }
}

/// Drains the host: it takes no new VMs and moves every VM away, one at a
/// time, where the placement policy chooses. Answered at once; `drain` in
/// the host status shows the progress. Asked again, it retries the VMs
/// that could not move.
#[utoipa::path(post, path = "/v1/host/drain", tag = "host", responses((status = 200, body = HostStatus)))]
pub async fn drain(State(s): State<AppState>) -> Result<Json<HostStatus>, Failure> {
    match s.ask(Command::Drain).await? {
        Reply::Host(h) => Ok(Json(*h)),
        _ => Err(Failure::unexpected()),
    }
}

/// Ends a drain: the host takes VMs again; moves not started are dropped.
#[utoipa::path(post, path = "/v1/host/resume", tag = "host", responses((status = 200, body = HostStatus)))]
pub async fn resume(State(s): State<AppState>) -> Result<Json<HostStatus>, Failure> {
    match s.ask(Command::Resume).await? {
        Reply::Host(h) => Ok(Json(*h)),
        _ => Err(Failure::unexpected()),
    }
}
