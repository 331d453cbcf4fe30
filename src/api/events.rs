//! `GET /v1/jobs/{id}/events`: progress and results as server-sent events, like
//! `for r in tqdm(pool.imap(f, xs))`.
//!
//! A spawned task per stream subscribes to the job's notifications first, then reads the store
//! from where the client is (the store is the truth; notifications only say "look again"), so
//! no result is missed or sent twice, and a slow client never makes the server buffer. The
//! stream ends after `end`, when the client leaves, or at shutdown.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::dto::{ItemLogDto, JobDto, ResultDto};
use super::error::Query;
use super::jobs::{load_job, parse_id};
use super::{ApiError, AppState, Problem};
use crate::model::{Job, JobId};

/// At most this often a progress event, plus one when the job ends.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);
const PAGE: u32 = 1000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(stream_job_events))
}

#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// In index order, like `imap`.
    #[default]
    Index,
    /// As results are recorded, like `imap_unordered`.
    Completion,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// `index` (default, `imap`) or `completion` (`imap_unordered`).
    order: Option<Order>,
    /// `false`: progress and end only.
    results: Option<bool>,
    /// Resume after this event id, like the `Last-Event-ID` header (which wins if both are given).
    after: Option<u64>,
}

/// Data of a `progress` event.
#[derive(Debug, Serialize, ToSchema)]
pub struct Progress {
    done: u64,
    failed: u64,
    /// `null` while the job's items are still being uploaded (NDJSON ingest).
    #[schema(required = true)]
    total: Option<u64>,
    /// Items per second since the job started.
    rate: Option<f64>,
    /// Seconds left at that rate (`null` while the total is unknown).
    eta_s: Option<f64>,
}

/// Stream a job's progress and results as server-sent events.
///
/// Events: `progress` (data: Progress; at most ~10 per second, plus one when the job ends);
/// `result` (data: ResultDto) whose `id` is the item index in `order=index` and the 0-based
/// position in completion order in `order=completion`; `log` (data: ItemLogDto, no `id`),
/// just before the `result` of an item whose function printed something; `end` (data: the
/// final Job), after which the stream closes. Resume with `Last-Event-ID: k` (or
/// `?after=k`): the stream goes on after event k with no gap and no duplicate (a `log` is sent
/// again only with its `result`). In index order a finished job's missing items (cancelled,
/// failed fast) are skipped. Comments keep idle connections alive.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs", params(("id" = String, Path), EventsQuery,
    ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event id")),
    responses(
        (status = 200, description = "An event stream", content_type = "text/event-stream", body = String),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
async fn stream_job_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl futures::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id = parse_id(&id)?;
    let last_event_id = match headers
        .get("last-event-id")
        .map(|v| v.to_str().map(str::trim))
    {
        None => None,
        Some(Ok(v)) => Some(v.parse::<u64>().map_err(|_| {
            ApiError::InvalidRequest(format!(
                "Last-Event-ID must be an event id (a number), got {v:?}"
            ))
        })?),
        Some(Err(_)) => {
            return Err(ApiError::InvalidRequest(
                "Last-Event-ID is not valid text".into(),
            ));
        }
    };
    load_job(&state, id).await?;
    let options = StreamOptions {
        order: query.order.unwrap_or_default(),
        results: query.results.unwrap_or(true),
        next: last_event_id.or(query.after).map_or(0, |k| k + 1),
    };
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let _counted = crate::metrics::SseSubscriber::open();
        if let Err(e) = pump(&state, id, options, &tx).await {
            tracing::warn!(job.id = %id, error = %e, "event stream ended early");
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx).map(Ok)).keep_alive(KeepAlive::default()))
}

struct StreamOptions {
    order: Order,
    results: bool,
    /// Index order: the next item index to send. Completion order: how many were sent.
    next: u64,
}

#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error("client went away")]
    Closed,
}

async fn send(tx: &mpsc::Sender<Event>, event: Event) -> Result<(), StreamError> {
    tx.send(event).await.map_err(|_| StreamError::Closed)
}

async fn pump(
    state: &AppState,
    id: JobId,
    mut options: StreamOptions,
    tx: &mpsc::Sender<Event>,
) -> Result<(), StreamError> {
    let mut changes = state.events.subscribe(id);
    let mut sent_progress: Option<(u64, u64)> = None;
    let mut last_progress_at: Option<Instant> = None;
    loop {
        changes.borrow_and_update();
        let Some(job) = state.store.get_job(id).await? else {
            return Ok(()); // deleted meanwhile
        };
        let finished = job.status.is_finished();
        if options.results {
            send_results(state, id, finished, &mut options, tx).await?;
        }
        let counts = (job.done, job.failed);
        let progress_due = last_progress_at.is_none_or(|at| at.elapsed() >= PROGRESS_EVERY);
        if sent_progress != Some(counts) && (progress_due || finished) {
            send(tx, progress_event(&job)).await?;
            sent_progress = Some(counts);
            last_progress_at = Some(Instant::now());
        }
        if finished {
            let data = serde_json::to_string(&JobDto::from(job)).expect("job serializes");
            send(tx, Event::default().event("end").data(data)).await?;
            return Ok(());
        }
        let progress_pending = sent_progress != Some(counts);
        let wake = last_progress_at.map_or_else(Instant::now, |at| at + PROGRESS_EVERY);
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return Ok(()) },
            _ = tokio::time::sleep_until(wake), if progress_pending => {}
            _ = state.shutdown.cancelled() => return Ok(()),
            _ = tx.closed() => return Err(StreamError::Closed),
        }
    }
}

/// Send every result the client may have now. In index order, stop at the first missing
/// index unless the job is finished (then the gaps are permanent).
async fn send_results(
    state: &AppState,
    id: JobId,
    finished: bool,
    options: &mut StreamOptions,
    tx: &mpsc::Sender<Event>,
) -> Result<(), StreamError> {
    loop {
        let page = match options.order {
            Order::Index => state.store.results_by_index(id, options.next, PAGE).await?,
            Order::Completion => {
                state
                    .store
                    .results_by_completion(id, options.next, PAGE)
                    .await?
            }
        };
        let full = page.len() == PAGE as usize;
        for result in page {
            let event_id = match options.order {
                Order::Index if result.index != options.next && !finished => return Ok(()),
                Order::Index => result.index,
                Order::Completion => options.next,
            };
            options.next = event_id + 1;
            // The log goes first and has no id: resuming after a result never repeats its
            // log, and resuming before it repeats both.
            if let Some(log) = &result.log {
                let data = ItemLogDto {
                    index: result.index,
                    log: log.clone(),
                };
                let data = serde_json::to_string(&data).expect("log serializes");
                send(tx, Event::default().event("log").data(data)).await?;
            }
            let data = serde_json::to_string(&ResultDto::from(result)).expect("result serializes");
            send(
                tx,
                Event::default()
                    .event("result")
                    .id(event_id.to_string())
                    .data(data),
            )
            .await?;
        }
        if !full {
            return Ok(());
        }
    }
}

fn progress_event(job: &Job) -> Event {
    let elapsed = job.started_at.map(|start| {
        (job.finished_at.unwrap_or_else(OffsetDateTime::now_utc) - start).as_seconds_f64()
    });
    let rate = elapsed.filter(|s| *s > 0.0).map(|s| job.done as f64 / s);
    let total = (!job.ingesting).then_some(job.total);
    let eta_s = rate
        .filter(|r| *r > 0.0)
        .zip(total)
        .map(|(r, total)| total.saturating_sub(job.done) as f64 / r);
    let progress = Progress {
        done: job.done,
        failed: job.failed,
        total,
        rate,
        eta_s,
    };
    Event::default()
        .event("progress")
        .data(serde_json::to_string(&progress).expect("progress serializes"))
}
