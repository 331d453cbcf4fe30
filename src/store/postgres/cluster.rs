//! What several nodes sharing one PostgreSQL need of it besides jobs and results: the nodes
//! table (register, heartbeat, list), claims of chunks with their re-queue when a node is
//! lost, the cluster-wide open/closed flag, and the notifications that wake other nodes.
//!
//! A node's claims, heartbeats and re-queues are single statements on the readers'
//! connections (`readers`; autocommit, short), not writes of the writer: nobody reads them back through
//! the commit hook. Giving back the claims no one holds ([`release`]) is the exception: the
//! writer runs it, after the records sent before it. Timestamps of liveness are the server's
//! (`now()`), so nodes' clocks never matter. Called by `crate::cluster` (the node's heartbeat
//! and listener tasks), by the supervisor through `Store::claim_chunks` and
//! `Store::release_unheld`, and by the API's `/v1/pool` and `/v1/nodes`.
//!
//! Notifications travel on one channel, [`CHANNEL`], as `<node> <kind> <job id>…`, sent in
//! the transaction of the change (so they arrive after its commit) — see [`Notice`].

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::Connection;
use sqlx::Row;
use sqlx::postgres::PgConnection;
use time::OffsetDateTime;

use super::readers::Readers;
use crate::model::{Chunk, JobId};
use crate::store::rows::parse_chunks;
use crate::store::{NodeRow, Result, format_time};

/// The channel of every notification between nodes.
pub const CHANNEL: &str = "poold";

/// Most bytes of one notification's payload (PostgreSQL's limit is 8000).
const MAX_PAYLOAD: usize = 7900;

/// What a notification says about its jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeKind {
    /// Their stored state moved (results, status): wake streams and long-polls.
    Changed,
    /// They ended (cancelled, failed): stop their running chunks.
    Ended,
    /// They have chunks nobody claimed (new, appended, or re-queued from a lost node).
    Work,
    /// The cluster was closed or opened (`POST /v1/pool/close`): no job ids.
    Pool,
}

impl NoticeKind {
    fn as_char(self) -> char {
        match self {
            Self::Changed => 'c',
            Self::Ended => 'e',
            Self::Work => 'w',
            Self::Pool => 'p',
        }
    }
}

/// A notification from another node.
#[derive(Debug)]
pub struct Notice {
    pub from: String,
    pub kind: NoticeKind,
    pub jobs: Vec<JobId>,
}

impl Notice {
    pub fn parse(payload: &str) -> Option<Self> {
        let mut words = payload.split(' ');
        let from = words.next()?.to_string();
        let kind = match words.next()? {
            "c" => NoticeKind::Changed,
            "e" => NoticeKind::Ended,
            "w" => NoticeKind::Work,
            "p" => NoticeKind::Pool,
            _ => return None,
        };
        let jobs = words.filter_map(|w| w.parse().ok()).collect();
        Some(Self { from, kind, jobs })
    }
}

/// The payloads telling other nodes that `jobs` had `kind` (several when they are many).
pub fn payloads(node: &str, kind: NoticeKind, jobs: &[JobId]) -> Vec<String> {
    let head = format!("{node} {}", kind.as_char());
    let mut out = Vec::new();
    let mut current = head.clone();
    for id in jobs {
        if current.len() + 37 > MAX_PAYLOAD {
            out.push(std::mem::replace(&mut current, head.clone()));
        }
        current.push(' ');
        current.push_str(&id.to_string());
    }
    if current.len() > head.len() || kind == NoticeKind::Pool {
        out.push(current);
    }
    out
}

/// Send `payloads` on [`CHANNEL`] (delivered when the caller's transaction commits).
pub async fn notify(conn: &mut PgConnection, payloads: &[String]) -> Result<()> {
    if !payloads.is_empty() {
        sqlx::query("select pg_notify($1, p) from unnest($2::text[]) as p")
            .bind(CHANNEL)
            .bind(payloads)
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// Give back every claim of `node` made under a lease up to `up_to` but those of `held` (job,
/// chunk start) and those made under the leases `kept`, and tell the other nodes there is work
/// in their jobs (in the caller's transaction). Returns those jobs. Run by the writer, after
/// every record sent before: for the audit of a node's claims (`Op::ReleaseUnheld`), and as a
/// stopping node's last write (`Op::Leave`, holding and keeping nothing).
pub async fn release(
    conn: &mut PgConnection,
    node: &str,
    held: &[(JobId, u64)],
    kept: &[u64],
    up_to: u64,
) -> Result<Vec<JobId>> {
    let ids: Vec<String> = held.iter().map(|(id, _)| id.to_string()).collect();
    let starts: Vec<i64> = held.iter().map(|(_, start)| *start as i64).collect();
    let kept: Vec<i64> = kept.iter().map(|&lease| lease as i64).collect();
    let up_to = i64::try_from(up_to).unwrap_or(i64::MAX);
    let released: Vec<String> = sqlx::query_scalar(
        "with h as (select j.key as job, h.start
                    from unnest($2::text[], $3::bigint[]) as h(id, start)
                    join jobs as j on j.id = h.id),
         r as (update chunks set owner = null, lease = null
               where state = 0 and owner = $1
                 and (job, start) not in (select job, start from h)
                 and lease <> all($4::bigint[]) and lease <= $5
               returning job)
         select distinct jobs.id from r join jobs on jobs.key = r.job",
    )
    .bind(node)
    .bind(ids)
    .bind(starts)
    .bind(kept)
    .bind(up_to)
    .fetch_all(&mut *conn)
    .await?;
    let released: Vec<JobId> = released.iter().filter_map(|id| id.parse().ok()).collect();
    notify(conn, &payloads(node, NoticeKind::Work, &released)).await?;
    Ok(released)
}

/// This node's side of the cluster tables.
#[derive(Clone)]
pub struct Cluster {
    /// The connections its statements run on (the store's readers).
    pool: Readers,
    node: Arc<str>,
    /// The last lease number given (claims are numbered by their node, from 1).
    leases: Arc<AtomicU64>,
    /// The leases of new jobs' claims whose chunks are not in the supervisor's hands yet (see
    /// [`Cluster::reserve_lease`]).
    handing: Arc<Mutex<HashSet<u64>>>,
}

/// A node's claim of up to $3 unclaimed queued chunks of job $1, in order, skipping rows
/// another node is claiming right now; $2 node, $4 lease number. A job with
/// `max_concurrency` gets no more claims than its cap minus the chunks claimed already.
const CLAIM: &str = "with j as (
         select key, max_concurrency from jobs where id = $1 and status in ('queued', 'running')),
     room as (
         select least($3::bigint,
                      coalesce(j.max_concurrency - (select count(*) from chunks
                                                     where job = j.key and state = 0
                                                       and owner is not null), $3::bigint)) as n
         from j),
     picked as (
         select job, start from chunks
         where job = (select key from j) and state = 0 and owner is null
         order by start
         limit greatest((select n from room), 0)
         for update skip locked),
     claimed as (
         update chunks set owner = $2, lease = $4
         from picked where chunks.job = picked.job and chunks.start = picked.start
         returning chunks.start, chunks.size, chunks.attempts, chunks.items)
     select string_agg(start || ' ' || size || ' ' || attempts || ' ' || items, chr(31)
                       order by start)
     from claimed";

impl Cluster {
    pub fn new(pool: Readers, node: &str) -> Self {
        Self {
            pool,
            node: node.into(),
            leases: Arc::default(),
            handing: Arc::default(),
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Register this node (at start, before it claims anything). An earlier node of the same
    /// name and address is this one restarted (two processes cannot listen on one address):
    /// it is declared lost at once, so that [`Cluster::requeue_lost`] frees its chunks now
    /// rather than after its lease.
    pub async fn register(&self, node: &NodeRow) -> Result<()> {
        self.pool
            .run(async |c| {
                let mut tx = c.begin().await?;
                sqlx::query(
                    "update nodes set state = 'lost'
                     where name = $1 and address = $2 and state in ('alive', 'draining')",
                )
                .bind(&node.name)
                .bind(&node.address)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "insert into nodes (id, name, address, started_at, heartbeat_at, lease_s, workers,
                                state)
                     values ($1, $2, $3, $4, now(), $5, $6, 'alive')",
                )
                .bind(&node.id)
                .bind(&node.name)
                .bind(&node.address)
                .bind(&node.started_at)
                .bind(node.lease.as_secs_f64())
                .bind(node.workers as i64)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            })
            .await
    }

    /// Say this node is alive (or draining), with its pool's snapshot (JSON, shown by other
    /// nodes' `GET /v1/pool`). Returns whether the node had been declared lost meanwhile (it
    /// was paused or cut off past its lease: its claims went to other nodes), and whether the
    /// cluster accepts new jobs.
    pub async fn heartbeat(&self, draining: bool, pool: &str) -> Result<(bool, bool)> {
        let row = self
            .pool
            .run(async |c| {
                Ok(sqlx::query(
                    "with old as (select state from nodes where id = $1 for update)
                     update nodes set heartbeat_at = now(), pool = $3,
                            state = case when $2 then 'draining' else 'alive' end
                     from old where nodes.id = $1
                     returning old.state = 'lost' as lost,
                               (select accepting from cluster) as accepting",
                )
                .bind(&*self.node)
                .bind(draining)
                .bind(pool)
                .fetch_optional(c)
                .await?)
            })
            .await?;
        Ok(match row {
            Some(row) => (row.try_get("lost")?, row.try_get("accepting")?),
            None => (true, true), // our row was deleted: behave as lost
        })
    }

    /// Declare lost every node whose heartbeat is older than its lease, re-queue the chunks
    /// it had claimed (counting an attempt) and fail the uploads it held (that connection is
    /// gone); tell the nodes. Returns the nodes declared lost, by name. Any node may run this
    /// at any time: the row locks make each re-queue happen once.
    pub async fn requeue_lost(&self) -> Result<Vec<String>> {
        let (lost, cut) = self
            .pool
            .run(async |c| {
                let mut tx = c.begin().await?;
                let lost: Vec<(String, String)> = sqlx::query_as(
                    "update nodes set state = 'lost'
                     where state in ('alive', 'draining')
                       and heartbeat_at < now() - lease_s * interval '1 second'
                     returning id, name",
                )
                .fetch_all(&mut *tx)
                .await?;
                let requeued: Vec<String> = sqlx::query_scalar(
                    "with live as (select id from nodes where state in ('alive', 'draining')),
                     r as (
                         update chunks set owner = null, lease = null, attempts = attempts + 1
                         where state = 0 and owner is not null and owner not in (select id from live)
                         returning job)
                     select distinct jobs.id from r join jobs on jobs.key = r.job",
                )
                .fetch_all(&mut *tx)
                .await?;
                let at = format_time(OffsetDateTime::now_utc());
                let cut: Vec<String> = sqlx::query_scalar(
                    "with live as (select id from nodes where state in ('alive', 'draining')),
                     f as (
                         update jobs set status = 'failed', ingesting = false, finished_at = $1,
                                error = 'poold stopped while the job''s items were being uploaded (its node was lost or restarted)'
                         where ingesting and status in ('queued', 'running')
                           and (upload_node is null or upload_node not in (select id from live))
                         returning key, id),
                     d as (update chunks set state = 2 from f where chunks.job = f.key and state = 0)
                     select id from f",
                )
                .bind(&at)
                .fetch_all(&mut *tx)
                .await?;
                // Rows of nodes gone long ago (their claims and uploads were dealt with then).
                sqlx::query(
                    "delete from nodes where state in ('lost', 'stopped')
                       and heartbeat_at < now() - interval '1 day'",
                )
                .execute(&mut *tx)
                .await?;
                let parse = |ids: Vec<String>| -> Vec<JobId> {
                    ids.iter().filter_map(|id| id.parse().ok()).collect()
                };
                let mut payloads = payloads(&self.node, NoticeKind::Work, &parse(requeued));
                let cut = parse(cut);
                payloads.extend(self::payloads(&self.node, NoticeKind::Ended, &cut));
                payloads.extend(self::payloads(&self.node, NoticeKind::Changed, &cut));
                notify(&mut tx, &payloads).await?;
                tx.commit().await?;
                Ok((lost, cut))
            })
            .await?;
        if !cut.is_empty() {
            tracing::warn!(
                jobs = cut.len(),
                "failed jobs whose upload was cut off with its node"
            );
        }
        Ok(lost.into_iter().map(|(_, name)| name).collect())
    }

    /// Claim up to `limit` unclaimed queued chunks of a job for this node, in order.
    pub async fn claim(&self, id: JobId, limit: u32) -> Result<Vec<Chunk>> {
        let lease = self.next_lease();
        let text: Option<String> = self
            .pool
            .run(async |c| {
                Ok(sqlx::query_scalar(CLAIM)
                    .bind(id.to_string())
                    .bind(&*self.node)
                    .bind(i64::from(limit))
                    .bind(lease as i64)
                    .fetch_one(c)
                    .await?)
            })
            .await?;
        match text {
            Some(text) => parse_chunks(&text, lease),
            None => Ok(Vec::new()),
        }
    }

    /// What an audit of this node's claims must keep besides the chunks its supervisor holds
    /// (`Store::release_unheld`), taken with them: the leases of new jobs' claims on their way
    /// to the supervisor ([`Cluster::reserve_lease`]), and the last lease given so far (a claim
    /// made after this is not the audit's business).
    pub fn audit_marks(&self) -> (Vec<u64>, u64) {
        // Under the lock `reserve_lease` takes, so that its lease is in both or in neither.
        let handing = self.handing();
        let kept = handing.iter().copied().collect();
        (kept, self.leases.load(Ordering::Relaxed))
    }

    /// The next lease number of this node.
    fn next_lease(&self) -> u64 {
        self.leases.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A lease for the claim of a new job's chunks, which the job's creation stores and the
    /// job service then hands to the supervisor: from now until the supervisor has them
    /// ([`Cluster::lease_handed_over`]), the claim is in no one's hands that
    /// `Store::release_unheld` could see, and it keeps it (else it gave back the chunk of
    /// a job created while it ran, and the chunk ran twice).
    pub fn reserve_lease(&self) -> u64 {
        let mut handing = self.handing();
        let lease = self.next_lease();
        handing.insert(lease);
        lease
    }

    /// The chunks claimed under `lease` by [`Cluster::reserve_lease`] are in the supervisor's
    /// hands, or were never stored.
    pub fn lease_handed_over(&self, lease: u64) {
        self.handing().remove(&lease);
    }

    fn handing(&self) -> std::sync::MutexGuard<'_, HashSet<u64>> {
        self.handing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Unfinished jobs with chunks nobody has claimed (the slow poll behind notifications).
    pub async fn jobs_with_work(&self) -> Result<Vec<JobId>> {
        let ids: Vec<String> = self
            .pool
            .run(async |c| {
                Ok(sqlx::query_scalar(
                    "select id from jobs
                     where status in ('queued', 'running')
                       and exists (select 1 from chunks
                                   where chunks.job = jobs.key and state = 0 and owner is null)",
                )
                .fetch_all(c)
                .await?)
            })
            .await?;
        Ok(ids.iter().filter_map(|id| id.parse().ok()).collect())
    }

    /// Every node that is alive or draining, and those stopped or lost within `recent`.
    pub async fn nodes(&self, recent: Duration) -> Result<Vec<NodeRow>> {
        let rows = self
            .pool
            .run(async |c| {
                Ok(sqlx::query(
                    "select id, name, address, started_at, lease_s, workers, state, pool,
                            to_char(heartbeat_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')
                                as heartbeat
                     from nodes
                     where state in ('alive', 'draining')
                        or heartbeat_at > now() - $1 * interval '1 second'
                     order by started_at, id",
                )
                .bind(recent.as_secs_f64())
                .fetch_all(c)
                .await?)
            })
            .await?;
        rows.iter()
            .map(|row| {
                Ok(NodeRow {
                    id: row.try_get("id")?,
                    name: row.try_get("name")?,
                    address: row.try_get("address")?,
                    started_at: row.try_get("started_at")?,
                    heartbeat_at: row.try_get("heartbeat")?,
                    lease: Duration::from_secs_f64(row.try_get::<f64, _>("lease_s")?.max(0.0)),
                    workers: row.try_get::<i64, _>("workers")?.max(0) as usize,
                    state: row.try_get("state")?,
                    pool: row.try_get("pool")?,
                })
            })
            .collect()
    }

    /// `POST /v1/pool/close` and `/open`, for every node.
    pub async fn set_accepting(&self, accepting: bool) -> Result<()> {
        self.pool
            .run(async |c| {
                let mut tx = c.begin().await?;
                sqlx::query("update cluster set accepting = $1")
                    .bind(accepting)
                    .execute(&mut *tx)
                    .await?;
                notify(&mut tx, &payloads(&self.node, NoticeKind::Pool, &[])).await?;
                tx.commit().await?;
                Ok(())
            })
            .await
    }

    /// Chunks queued cluster-wide: those no node has claimed, and those claimed and not yet
    /// recorded (waiting in a node's window, or running: at most a few per worker). Counted
    /// through the two partial indexes on queued chunks.
    pub async fn queued_chunks(&self) -> Result<u64> {
        let n: i64 = self
            .pool
            .run(async |c| {
                Ok(sqlx::query_scalar(
                    "select (select count(*) from chunks where state = 0 and owner is null)
                     + (select count(*) from chunks where state = 0 and owner is not null)",
                )
                .fetch_one(c)
                .await?)
            })
            .await?;
        Ok(n.max(0) as u64)
    }

    pub async fn accepting(&self) -> Result<bool> {
        self.pool
            .run(async |c| {
                Ok(sqlx::query_scalar("select accepting from cluster")
                    .fetch_one(c)
                    .await?)
            })
            .await
    }
}
