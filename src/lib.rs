//! poold: Python's `multiprocessing.Pool` as a network service.
//!
//! Dependencies point one way: `main -> app -> {api, pool, store, events}`. `api` is the only
//! module that knows axum/utoipa, `store` the only one that knows sqlx, `pool` the only one
//! that spawns processes. `model` holds the domain types they share; `protocol` the worker
//! protocol shared by `pool` and the built-in `worker`. `cli` is the command-line client: it
//! depends on none of the others and speaks only HTTP; `healthcheck` is the container probe.
//! `metrics` names every Prometheus metric (recorded by `pool` and `api`); `retention` deletes
//! expired jobs through the store; `limits` holds every bound on what poold accepts (checked by
//! `api` at the door, by `pool` on workers' results and on resume).

pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod events;
pub mod healthcheck;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod pool;
pub mod protocol;
pub mod retention;
pub mod store;
pub mod worker;
