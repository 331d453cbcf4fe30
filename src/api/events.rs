//! `GET /v1/jobs/{id}/events`: progress and results as server-sent events, like
//! `for r in tqdm(pool.imap(f, xs))`.
//!
//! The handler subscribes to the job's notifications, then reads the job (404 if absent); a
//! spawned task per stream then reads the store from where the client is (the store is the
//! truth; notifications only say "look again"), so no result is missed or sent twice, and a slow
//! client never makes the server buffer more than a page. Each page of results goes out as one
//! body frame (the SSE text is written here, not event by event through axum's `Sse`), so a
//! replay costs a few hand-offs per thousand results, not several per result. The stream ends
//! after `end`, when the client leaves, or at shutdown; comments keep idle connections alive.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::dto::{ItemLogDto, JobDto};
use super::error::Query;
use super::jobs::{load_job, parse_id};
use super::{ApiError, AppState, Problem};
use crate::model::{Job, JobId};
use crate::outcomes;
use crate::store::CompletionCursor;

/// At most this often a progress event, plus one when the job ends.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);
const PAGE: usize = 1000;
/// A comment this long after the last write keeps proxies from closing an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Frames queued between the stream's task and the connection.
const FRAMES_QUEUED: usize = 4;
/// A frame is sent once it holds this much (a page of results with long logs).
const FRAME_BYTES: usize = 256 * 1024;

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
    /// Resume after this event id, like the `Last-Event-ID` header (which wins if both are
    /// given); 0 to 9223372036854775806.
    #[param(minimum = 0, maximum = 9223372036854775806_i64)]
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
    ("Last-Event-ID" = Option<u64>, Header, nullable = false, description = "Resume after this event id (0 to 9223372036854775806)", minimum = 0, maximum = 9223372036854775806_i64)),
    responses(
        (status = 200, description = "An event stream", content_type = "text/event-stream", body = String),
        (status = 400, description = "`Last-Event-ID`, `after`, `order` or `results` is not valid", body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
async fn stream_job_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let last_event_id = match headers
        .get("last-event-id")
        .map(|v| v.to_str().map(str::trim))
    {
        None => None,
        Some(Ok(v)) => Some(
            v.parse::<u64>()
                .ok()
                .filter(|k| *k <= MAX_EVENT_ID)
                .ok_or_else(|| {
                    ApiError::InvalidRequest(format!(
                        "Last-Event-ID must be an event id (a number from 0 to {MAX_EVENT_ID}), got {v:?}"
                    ))
                })?,
        ),
        Some(Err(_)) => {
            return Err(ApiError::InvalidRequest(
                "Last-Event-ID is not valid text".into(),
            ));
        }
    };
    if let Some(after) = query.after.filter(|k| *k > MAX_EVENT_ID) {
        return Err(ApiError::InvalidRequest(format!(
            "after must be an event id from 0 to {MAX_EVENT_ID}, got {after}"
        )));
    }
    // Subscribe before the first read so that no change is missed; that read is the stream's
    // first look at the job too.
    let changes = state.events.subscribe(id);
    let job = load_job(&state, id).await?;
    let options = StreamOptions {
        order: query.order.unwrap_or_default(),
        results: query.results.unwrap_or(true),
        next: last_event_id.or(query.after).map_or(0, |k| k + 1),
        cursor: CompletionCursor::at(last_event_id.or(query.after).map_or(0, |k| k + 1)),
    };
    let (tx, rx) = mpsc::channel(FRAMES_QUEUED);
    tokio::spawn(async move {
        let _counted = crate::metrics::SseSubscriber::open();
        let mut out = Frames {
            tx,
            buf: String::new(),
            shutdown: state.shutdown.clone(),
        };
        match pump(&state, id, job, changes, options, &mut out).await {
            Ok(()) | Err(StreamError::Closed | StreamError::ShuttingDown) => {}
            Err(e) => tracing::warn!(job.id = %id, error = %e, "event stream ended early"),
        }
    });
    let body = Body::from_stream(ReceiverStream::new(rx).map(Ok::<_, Infallible>));
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response())
}

/// The largest event id a client may resume after: ids are item indices or positions, which
/// the store keeps as signed 64-bit numbers.
const MAX_EVENT_ID: u64 = i64::MAX as u64 - 1;

struct StreamOptions {
    order: Order,
    results: bool,
    /// Index order: the next item index to send. Completion order: how many were sent.
    next: u64,
    /// Completion order: where the store's record order stands after the last result sent.
    cursor: CompletionCursor,
}

#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error("client went away")]
    Closed,
    #[error("poold is shutting down")]
    ShuttingDown,
}

/// The SSE text being written, sent to the connection a frame at a time.
struct Frames {
    tx: mpsc::Sender<Bytes>,
    buf: String,
    /// A client that stops reading must not keep a stream (and so poold) alive at shutdown.
    shutdown: CancellationToken,
}

impl Frames {
    /// Append one event (`data` is JSON, so it has no line breaks); send the frame if it is big.
    async fn event(&mut self, name: &str, id: Option<u64>, data: &str) -> Result<(), StreamError> {
        self.push_event(name, id, data);
        if self.buf.len() >= FRAME_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    /// Append one event without sending anything (the caller flushes).
    fn push_event(&mut self, name: &str, id: Option<u64>, data: &str) {
        use std::fmt::Write;
        self.buf.push_str("event: ");
        self.buf.push_str(name);
        if let Some(id) = id {
            let _ = write!(self.buf, "\nid: {id}");
        }
        self.buf.push_str("\ndata: ");
        self.buf.push_str(data);
        self.buf.push_str("\n\n");
    }

    /// Send what was written as one frame.
    async fn flush(&mut self) -> Result<(), StreamError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let frame = Bytes::from(std::mem::take(&mut self.buf));
        tokio::select! {
            sent = self.tx.send(frame) => sent.map_err(|_| StreamError::Closed),
            _ = self.shutdown.cancelled() => Err(StreamError::ShuttingDown),
        }
    }
}

/// Write the stream: `job` is the job as read after subscribing to `changes`.
async fn pump(
    state: &AppState,
    id: JobId,
    mut job: Job,
    mut changes: watch::Receiver<u64>,
    mut options: StreamOptions,
    out: &mut Frames,
) -> Result<(), StreamError> {
    let mut sent_progress: Option<(u64, u64)> = None;
    let mut last_progress_at: Option<Instant> = None;
    loop {
        let finished = job.status.is_finished();
        if options.results {
            send_results(state, &job, &mut options, out).await?;
        }
        let counts = (job.done, job.failed);
        let progress_due = last_progress_at.is_none_or(|at| at.elapsed() >= PROGRESS_EVERY);
        if sent_progress != Some(counts) && (progress_due || finished) {
            out.event("progress", None, &progress_data(&job)).await?;
            sent_progress = Some(counts);
            last_progress_at = Some(Instant::now());
        }
        if finished {
            let data = serde_json::to_string(&JobDto::from(job)).expect("job serializes");
            out.event("end", None, &data).await?;
            return out.flush().await;
        }
        out.flush().await?;
        let progress_pending = sent_progress != Some(counts);
        let wake = last_progress_at.map_or_else(Instant::now, |at| at + PROGRESS_EVERY);
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return Ok(()) },
            _ = tokio::time::sleep_until(wake), if progress_pending => {}
            _ = tokio::time::sleep(KEEP_ALIVE) => {
                out.buf.push_str(":\n\n");
                out.flush().await?;
                continue; // nothing changed
            }
            _ = state.shutdown.cancelled() => return Ok(()),
            _ = out.tx.closed() => return Err(StreamError::Closed),
        }
        changes.borrow_and_update();
        let Some(next) = state.store.get_job(id).await? else {
            return Ok(()); // deleted meanwhile
        };
        job = next;
    }
}

/// Write every result the client may have now. In index order, stop at the first missing
/// index unless the job is finished (then the gaps are permanent).
async fn send_results(
    state: &AppState,
    job: &Job,
    options: &mut StreamOptions,
    out: &mut Frames,
) -> Result<(), StreamError> {
    let finished = job.status.is_finished();
    loop {
        let page = match options.order {
            Order::Index => {
                state
                    .store
                    .results_by_index(job, options.next, PAGE, false)
                    .await?
            }
            Order::Completion => {
                state
                    .store
                    .results_by_completion(job, &mut options.cursor, PAGE)
                    .await?
            }
        };
        let mut gap = false;
        let mut line = String::new();
        let read = page.for_each(|event_id, index, outcome| {
            if gap || (options.order == Order::Index && index != options.next && !finished) {
                gap = true;
                return;
            }
            options.next = event_id + 1;
            // The log goes first and has no id: resuming after a result never repeats its
            // log, and resuming before it repeats both.
            if let Some(log) = outcome.log() {
                let data = ItemLogDto {
                    index,
                    log: log.to_string(),
                };
                let data = serde_json::to_string(&data).expect("log serializes");
                out.push_event("log", None, &data);
            }
            line.clear();
            outcomes::write_result(&mut line, index, outcome);
            out.push_event("result", Some(event_id), &line);
        })?;
        out.flush().await?;
        if gap || read < PAGE {
            return Ok(());
        }
    }
}

fn progress_data(job: &Job) -> String {
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
    serde_json::to_string(&progress).expect("progress serializes")
}
