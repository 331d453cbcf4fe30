//! This poold process as a node among the nodes that share a PostgreSQL store.
//!
//! [`Node`] is who this process is (`GET /v1/nodes`; on SQLite the only node). On a shared
//! store, [`start`] runs two tasks beside the supervisor:
//! - the **heartbeat**: every third of `--node-lease` it says the node is alive (with its
//!   pool's snapshot, which other nodes show in `GET /v1/pool`), reads whether the cluster is
//!   open (`POST /v1/pool/close`), re-queues the chunks of any node whose heartbeat is older
//!   than its lease (any node may; each re-queue happens once), and polls for jobs with
//!   unclaimed chunks — the slow fallback behind notifications. A node that finds it was
//!   declared lost (it was paused or cut off past its lease) drops the claims it still held
//!   in memory; whatever it still runs of them is refused when recorded. Each beat also has
//!   the supervisor give back any claim it does not hold (none should exist, but the answer
//!   to a claim can be lost with its connection), so no chunk is stranded on a live node.
//! - the **listener**: `LISTEN`s to the other nodes' notifications and turns them into what
//!   the local parts already understand: a changed job wakes streams and long-polls
//!   (`EventBus`), an ended job stops its local chunks, new work wakes the supervisor. After a
//!   lost connection (notifications sent meanwhile are gone) it wakes everything once.
//!
//! A node may run no workers (`--workers 0`): it serves the API, and what the other nodes'
//! workers offer (from their heartbeats) is what it accepts jobs for.
//!
//! A lost notification therefore costs latency (up to a heartbeat), never correctness: the
//! store is the truth. Started by `app::run`; the SQL lives in `store::postgres::cluster`.

use std::net::SocketAddr;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::events::EventBus;
use crate::pool::{PoolHandle, PoolSnapshot};
use crate::store::{Cluster, NodeRow, Notice, NoticeKind, Store, format_time};

/// How long stopped and lost nodes stay listed in `GET /v1/nodes`.
pub const LISTED_AFTER_END: Duration = Duration::from_secs(3600);

/// This poold process as a node.
#[derive(Debug)]
pub struct Node {
    pub id: uuid::Uuid,
    pub name: String,
    pub address: String,
    pub started_at: OffsetDateTime,
    /// `--node-lease`: how long its heartbeat may be silent before other nodes re-queue its
    /// chunks.
    pub lease: Duration,
}

/// `address`, or on a wildcard (reached on any of the machine's addresses) `host` and its port.
fn listed_address(address: SocketAddr, host: &str) -> String {
    if address.ip().is_unspecified() {
        format!("{host}:{}", address.port())
    } else {
        address.to_string()
    }
}

impl Node {
    /// A node named `name` (default: the host name and the port) serving on `address`. Its
    /// listed address is where the others reach it: on a wildcard (`0.0.0.0`, `::`), the host
    /// name and the port.
    pub fn new(name: Option<String>, address: SocketAddr, lease: Duration) -> Self {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into());
        Self {
            id: uuid::Uuid::now_v7(),
            name: name.unwrap_or_else(|| format!("{host}:{}", address.port())),
            address: listed_address(address, &host),
            started_at: OffsetDateTime::now_utc(),
            lease,
        }
    }

    /// Its row in the nodes table, as registered at start.
    pub fn row(&self, workers: usize) -> NodeRow {
        NodeRow {
            id: self.id.to_string(),
            name: self.name.clone(),
            address: self.address.clone(),
            started_at: format_time(self.started_at),
            heartbeat_at: format_time(self.started_at),
            lease: self.lease,
            workers,
            state: "alive".into(),
            pool: String::new(),
        }
    }
}

/// Start the heartbeat and the listener on a shared store (nothing on SQLite). They run until
/// `stop` is cancelled (after the supervisor has drained: the heartbeat says `draining` from
/// `shutdown` on).
pub fn start(
    store: &Store,
    node: &Node,
    pool: PoolHandle,
    events: EventBus,
    shutdown: CancellationToken,
    stop: CancellationToken,
) -> Vec<JoinHandle<()>> {
    let Some(cluster) = store.cluster().cloned() else {
        return Vec::new();
    };
    vec![
        tokio::spawn(heartbeat(
            cluster.clone(),
            pool.clone(),
            node.lease,
            shutdown,
            stop.clone(),
        )),
        tokio::spawn(listen(store.clone(), cluster, pool, events, stop)),
    ]
}

async fn heartbeat(
    cluster: Cluster,
    pool: PoolHandle,
    lease: Duration,
    shutdown: CancellationToken,
    stop: CancellationToken,
) {
    let every = lease / 3;
    let mut json = String::from("{}");
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // After the database was out of reach, every node's heartbeat is late: this node
    // re-queues nothing until the others have had a lease to come back.
    let mut beating = true;
    let mut grace_until = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.cancelled() => return,
        }
        // The supervisor may be slow to answer while the database is (it waits for claims):
        // a heartbeat never waits for it long.
        let snapshot = match tokio::time::timeout(every / 2, pool.snapshot()).await {
            Ok(Ok(snapshot)) => Some(snapshot),
            Ok(Err(_)) => return, // the pool has stopped
            Err(_) => None,
        };
        if let Some(snapshot) = &snapshot {
            json = serde_json::to_string(snapshot).expect("a snapshot serializes");
        }
        look_around(
            &cluster,
            &pool,
            snapshot.as_ref().is_some_and(|s| s.size == 0),
        )
        .await;
        let mark = pool.accepting_mark();
        match cluster.heartbeat(shutdown.is_cancelled(), &json).await {
            Ok((lost, accepting)) => {
                pool.adopt_accepting(accepting, mark);
                if lost {
                    tracing::warn!(
                        "this node was declared lost (its heartbeat was late past its lease): \
                         its claims went to other nodes; back to work"
                    );
                }
                pool.audit_claims(lost).await.ok();
            }
            Err(e) => {
                tracing::warn!(error = %e, "heartbeat failed; will retry");
                beating = false;
                continue;
            }
        }
        if !std::mem::replace(&mut beating, true) {
            grace_until = tokio::time::Instant::now() + lease;
        }
        if tokio::time::Instant::now() < grace_until {
            continue;
        }
        match cluster.requeue_lost().await {
            Ok(lost) if !lost.is_empty() => {
                tracing::warn!(nodes = ?lost, "nodes stopped heartbeating; their chunks were re-queued");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not re-queue lost nodes' chunks"),
        }
        match cluster.jobs_with_work().await {
            Ok(jobs) if !jobs.is_empty() => {
                pool.work_available(jobs).await.ok();
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not poll for work"),
        }
    }
}

async fn listen(
    store: Store,
    cluster: Cluster,
    pool: PoolHandle,
    events: EventBus,
    stop: CancellationToken,
) {
    let Store::Postgres(pg) = &store else { return };
    while !stop.is_cancelled() {
        let mut listener = match pg.listener().await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for other nodes' notifications; will retry");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = stop.cancelled() => return,
                }
            }
        };
        // Whatever was sent before we listened (or while we did not) is not coming.
        resync(&cluster, &pool, &events).await;
        loop {
            let received = tokio::select! {
                received = listener.try_recv() => received,
                _ = stop.cancelled() => return,
            };
            match received {
                Ok(Some(notification)) => {
                    let Some(notice) = Notice::parse(notification.payload()) else {
                        tracing::warn!(payload = notification.payload(), "unreadable notification");
                        continue;
                    };
                    if notice.from != cluster.node() {
                        deliver(notice, &cluster, &pool, &events).await;
                    }
                }
                // The connection was lost and is re-established on the next call.
                Ok(None) => resync(&cluster, &pool, &events).await,
                Err(e) => {
                    tracing::warn!(error = %e, "listening for notifications failed; reconnecting");
                    break;
                }
            }
        }
    }
}

/// What this node learns from the others' last heartbeats: the workers of every live node
/// (the automatic chunksize divides a job among them), and for a node without workers what
/// the others' workers offer (their functions and codecs), so that it can check and accept
/// jobs for them.
async fn look_around(cluster: &Cluster, pool: &PoolHandle, without_workers: bool) {
    let Ok(nodes) = cluster.nodes(Duration::ZERO).await else {
        return;
    };
    let alive = || nodes.iter().filter(|n| n.state == "alive");
    pool.set_cluster_workers(alive().map(|n| n.workers).sum());
    if without_workers {
        let offer = alive()
            .filter_map(|n| serde_json::from_str::<PoolSnapshot>(&n.pool).ok()?.offer)
            .next();
        if let Some(offer) = offer {
            pool.adopt_offer(offer);
        }
    }
}

/// Tell the local parts what another node did.
async fn deliver(notice: Notice, cluster: &Cluster, pool: &PoolHandle, events: &EventBus) {
    match notice.kind {
        NoticeKind::Changed => events.notify(&notice.jobs),
        NoticeKind::Ended => {
            for id in notice.jobs {
                pool.job_ended(id).await.ok();
            }
        }
        NoticeKind::Work => {
            pool.work_available(notice.jobs).await.ok();
        }
        NoticeKind::Pool => {
            let mark = pool.accepting_mark();
            if let Ok(accepting) = cluster.accepting().await {
                pool.adopt_accepting(accepting, mark);
            }
        }
    }
}

/// After notifications may have been lost: look for work, wake every stream and long-poll
/// (they re-read the store), and read whether the cluster is open.
async fn resync(cluster: &Cluster, pool: &PoolHandle, events: &EventBus) {
    events.notify_all();
    if let Ok(jobs) = cluster.jobs_with_work().await {
        pool.work_available(jobs).await.ok();
    }
    let mark = pool.accepting_mark();
    if let Ok(accepting) = cluster.accepting().await {
        pool.adopt_accepting(accepting, mark);
    }
}

#[cfg(test)]
mod tests {
    use super::listed_address;

    #[test]
    fn a_node_on_a_wildcard_is_listed_by_its_host_name() {
        let listed = |a: &str| listed_address(a.parse().unwrap(), "node-a");
        assert_eq!(listed("0.0.0.0:8080"), "node-a:8080");
        assert_eq!(listed("[::]:9000"), "node-a:9000");
        assert_eq!(listed("127.0.0.1:8080"), "127.0.0.1:8080");
        assert_eq!(listed("10.1.2.3:8080"), "10.1.2.3:8080");
    }
}
