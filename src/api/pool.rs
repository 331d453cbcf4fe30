//! `/v1/pool` (workers, close/open like `Pool.close`), `/v1/nodes` and `/v1/functions`.

use std::time::Duration;

use time::OffsetDateTime;

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, AppState, Problem};
use crate::pool::{PoolSnapshot, WorkerState};
use crate::store::format_time;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_pool))
        .routes(routes!(close_pool))
        .routes(routes!(open_pool))
        .routes(routes!(list_nodes))
        .routes(routes!(list_functions))
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkerStateDto {
    Starting,
    Idle,
    Busy,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerDto {
    /// The slot number, stable across restarts.
    id: usize,
    /// The OS process id; null while no process runs in the slot.
    pid: Option<u32>,
    state: WorkerStateDto,
    /// The job whose chunk it is running.
    #[schema(value_type = Option<String>)]
    job_id: Option<uuid::Uuid>,
    /// Chunks finished by this slot.
    tasks_completed: u64,
    /// Items whose outcome this slot's processes returned (values and item errors; not items
    /// failed by poold for a crash or timeout). Summed over the workers and sampled twice, it
    /// gives the pool's items per second; it restarts from 0 when poold does.
    items_completed: u64,
    /// Processes of this slot that exited (crashed, stopped or replaced).
    restarts: u64,
    /// The id of the node (`GET /v1/nodes`) the worker runs on.
    #[schema(value_type = String)]
    node: uuid::Uuid,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PoolDto {
    size: usize,
    /// False after `POST /v1/pool/close`: new jobs get 503 `pool_closed`.
    accepting: bool,
    /// Chunks waiting for a worker.
    queued_chunks: u64,
    workers: Vec<WorkerDto>,
    /// Why workers cannot start, if they cannot.
    last_error: Option<String>,
}

/// The workers of one node's snapshot, as DTOs.
fn worker_dtos(snapshot: PoolSnapshot, node: uuid::Uuid) -> impl Iterator<Item = WorkerDto> {
    snapshot.workers.into_iter().map(move |w| WorkerDto {
        id: w.id,
        pid: w.pid,
        state: match w.state {
            WorkerState::Starting => WorkerStateDto::Starting,
            WorkerState::Idle => WorkerStateDto::Idle,
            WorkerState::Busy => WorkerStateDto::Busy,
        },
        job_id: w.job_id,
        tasks_completed: w.tasks_completed,
        items_completed: w.items_completed,
        restarts: w.restarts,
        node,
    })
}

/// The pool as `GET /v1/pool` shows it: this node's, or on a shared store every live node's
/// (each other node as its last heartbeat said, at most a third of its lease ago).
async fn current(state: &AppState) -> Result<Json<PoolDto>, ApiError> {
    let own = state.pool.snapshot().await?;
    let accepting = state.pool.accepting();
    let Some(cluster) = state.store.cluster() else {
        return Ok(Json(PoolDto {
            size: own.size,
            accepting,
            queued_chunks: own.queued_chunks,
            last_error: own.last_error.clone(),
            workers: worker_dtos(own, state.node.id).collect(),
        }));
    };
    let nodes = cluster.nodes(Duration::ZERO).await?;
    let queued_chunks = cluster.queued_chunks().await?;
    let last_error = own.last_error.clone();
    let mut size = own.size;
    let mut workers: Vec<WorkerDto> = worker_dtos(own, state.node.id).collect();
    for node in nodes {
        let Ok(id) = node.id.parse::<uuid::Uuid>() else {
            continue;
        };
        if id == state.node.id || !matches!(node.state.as_str(), "alive" | "draining") {
            continue;
        }
        // A node that has not heartbeaten yet shows no workers.
        let Ok(snapshot) = serde_json::from_str::<PoolSnapshot>(&node.pool) else {
            continue;
        };
        size += snapshot.size;
        workers.extend(worker_dtos(snapshot, id));
    }
    Ok(Json(PoolDto {
        size,
        accepting,
        queued_chunks,
        workers,
        last_error,
    }))
}

/// The pool's workers and queue: on PostgreSQL, every live node's.
#[utoipa::path(get, path = "/v1/pool", tag = "pool", responses((status = 200, body = PoolDto)))]
async fn get_pool(State(state): State<AppState>) -> Result<Json<PoolDto>, ApiError> {
    current(&state).await
}

/// Open or close the pool to new jobs: on PostgreSQL, every node.
async fn set_accepting(state: &AppState, accepting: bool) -> Result<(), ApiError> {
    if let Some(cluster) = state.store.cluster() {
        cluster.set_accepting(accepting).await?;
    }
    state.pool.set_accepting(accepting);
    Ok(())
}

/// `Pool.close()`: stop accepting jobs (on PostgreSQL, on every node); queued work still runs.
#[utoipa::path(post, path = "/v1/pool/close", tag = "pool", responses((status = 200, body = PoolDto)))]
async fn close_pool(State(state): State<AppState>) -> Result<Json<PoolDto>, ApiError> {
    set_accepting(&state, false).await?;
    tracing::info!("pool closed to new jobs");
    current(&state).await
}

/// Accept jobs again after a close (on PostgreSQL, on every node).
#[utoipa::path(post, path = "/v1/pool/open", tag = "pool", responses((status = 200, body = PoolDto)))]
async fn open_pool(State(state): State<AppState>) -> Result<Json<PoolDto>, ApiError> {
    set_accepting(&state, true).await?;
    tracing::info!("pool open to new jobs");
    current(&state).await
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeStateDto {
    /// Serving and running its workers.
    Alive,
    /// Shutting down: new jobs get 503, running chunks finish.
    Draining,
    /// Shut down; listed for an hour after.
    Stopped,
    /// Its heartbeat went silent past its lease: other nodes re-queued its chunks. Listed for
    /// an hour after its last heartbeat (or until it heartbeats again: then it is alive).
    Lost,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NodeDto {
    #[schema(value_type = String)]
    id: uuid::Uuid,
    /// `--node-name` (default: the host name and the port).
    name: String,
    /// Where it listens: its bind address, or on a wildcard bind (`0.0.0.0`, `::`) its host
    /// name and port.
    address: String,
    /// RFC 3339.
    started_at: String,
    /// When it last said it was alive (RFC 3339, the database server's clock); on SQLite, the
    /// time of the answer.
    heartbeat_at: String,
    /// Its worker processes (slots).
    workers: usize,
    state: NodeStateDto,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NodesDto {
    nodes: Vec<NodeDto>,
}

/// The nodes of the pool: one poold on SQLite is one node; on PostgreSQL, every node sharing
/// the database (alive or draining, and those stopped or lost within the last hour), oldest
/// first.
#[utoipa::path(get, path = "/v1/nodes", tag = "pool", responses((status = 200, body = NodesDto)))]
async fn list_nodes(State(state): State<AppState>) -> Result<Json<NodesDto>, ApiError> {
    let node = &state.node;
    let Some(cluster) = state.store.cluster() else {
        let snapshot = state.pool.snapshot().await?;
        return Ok(Json(NodesDto {
            nodes: vec![NodeDto {
                id: node.id,
                name: node.name.clone(),
                address: node.address.clone(),
                started_at: format_time(node.started_at),
                heartbeat_at: format_time(OffsetDateTime::now_utc()),
                workers: snapshot.size,
                state: if state.shutdown.is_cancelled() {
                    NodeStateDto::Draining
                } else {
                    NodeStateDto::Alive
                },
            }],
        }));
    };
    let rows = cluster.nodes(crate::cluster::LISTED_AFTER_END).await?;
    let nodes = rows
        .into_iter()
        .filter_map(|row| {
            Some(NodeDto {
                id: row.id.parse().ok()?,
                name: row.name,
                address: row.address,
                started_at: row.started_at,
                heartbeat_at: row.heartbeat_at,
                workers: row.workers,
                state: match row.state.as_str() {
                    "alive" => NodeStateDto::Alive,
                    "draining" => NodeStateDto::Draining,
                    "stopped" => NodeStateDto::Stopped,
                    _ => NodeStateDto::Lost,
                },
            })
        })
        .collect();
    Ok(Json(NodesDto { nodes }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FunctionDto {
    /// What a job names in `function`; may be qualified as `module:qualname` (e.g.
    /// `time:sleep`).
    name: String,
    doc: String,
    /// Other names the workers accept for it: the bare name of a function of a Python
    /// worker's first module, or where the function really lives when that differs from how
    /// it was listed (`posixpath:join` for `os.path:join`). Absent when there are none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    aliases: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FunctionList {
    functions: Vec<FunctionDto>,
    /// Codecs the workers accept for items and values: `json`, and `pickle` when they were
    /// started with `--allow-pickle`.
    codecs: Vec<String>,
}

/// The functions the workers advertise, and the codecs they accept.
#[utoipa::path(get, path = "/v1/functions", tag = "pool", responses(
    (status = 200, body = FunctionList),
    (status = 503, description = "No worker has started yet", body = Problem, content_type = "application/problem+json"),
))]
async fn list_functions(State(state): State<AppState>) -> Result<Json<FunctionList>, ApiError> {
    let offer = state
        .pool
        .offer(Duration::from_secs(10))
        .await
        .ok_or_else(|| ApiError::NotReady("no worker has started yet; see GET /readyz".into()))?;
    let functions = offer
        .functions
        .iter()
        .map(|f| FunctionDto {
            name: f.name.clone(),
            doc: f.doc.clone(),
            aliases: f.aliases.clone(),
        })
        .collect();
    Ok(Json(FunctionList {
        functions,
        codecs: offer.codecs.clone(),
    }))
}
