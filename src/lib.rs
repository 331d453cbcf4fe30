//! poold: Python's `multiprocessing.Pool` as a network service.
//!
//! Dependencies point one way: `main -> app -> api -> jobs -> {store, pool, events}`. `api` is
//! the only module that knows axum/utoipa: its handlers translate HTTP into calls on the job
//! service (`jobs`), which owns the job lifecycle (submit, upload, cancel, delete, wait,
//! admission) and is the one place that writes a job to the store and then tells the pool;
//! readers of results (pages, SSE, NDJSON) go to the store directly. `store` is the storage
//! interface (its backends, `store::sqlite` and `store::postgres`, the only code that knows
//! SQLite or PostgreSQL); `pool` the only module that spawns processes, recording each finished
//! chunk through the store. `model` holds the domain types they share; `outcomes` a chunk's
//! recorded outcomes (one value or error per item, validated once and stored as one row);
//! `protocol` the worker protocol shared by `pool` and the built-in `worker`. `cli` is the
//! command-line client: it depends on none of the others and speaks only HTTP; `healthcheck` is
//! the container probe. `metrics` names every Prometheus metric (recorded by `pool` and `api`);
//! `retention` deletes expired jobs through the store; `limits` holds every bound on what poold
//! accepts (checked by `jobs` at the door, by `pool` on workers' results and on resume).
//! `cluster` is this process as a node: who it is, and on PostgreSQL (several nodes sharing one
//! database) its heartbeat and its listener, which turn other nodes' notifications into calls
//! on `events` and `pool` (`app -> cluster -> {store, pool, events}`).

pub mod api;
pub mod app;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod events;
pub mod healthcheck;
pub mod jobs;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod outcomes;
pub mod pool;
pub mod protocol;
pub mod retention;
pub mod store;
pub mod worker;
