//! Several poold nodes on one PostgreSQL (real nodes, real workers, a real server started by
//! the fixture): a node killed or paused mid-job loses nothing and records nothing twice, any
//! node serves any job's events and cancels, a small job sent to a busy node runs on an idle
//! one, and the pool and its close/open are the cluster's. (A PostgreSQL restart under two
//! nodes is in `postgres_outage.rs`: it stops the server this binary's tests share.)

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{TestApp, postgres};
use serde_json::{Value, json};

/// The lease the tests' nodes run with (short, to keep the tests short).
const LEASE_S: f64 = 2.0;

/// Start a node named `name` on the database at `url`.
async fn node(url: &str, name: &str, workers: usize) -> TestApp {
    let workers = workers.to_string();
    let lease = LEASE_S.to_string();
    TestApp::start(
        Path::new(url),
        &[
            "--workers",
            &workers,
            "--node-name",
            name,
            "--node-lease",
            &lease,
        ],
    )
    .await
}

/// Wait until `app` lists the nodes `named` in `state`; returns their ids by name.
async fn wait_nodes(app: &TestApp, named: &[&str], state: &str) -> BTreeMap<String, String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let nodes: Value = app.get("/v1/nodes").await.json().await.expect("nodes JSON");
        let found: BTreeMap<String, String> = nodes["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .filter(|n| n["state"] == state)
            .map(|n| {
                let name = n["name"].as_str().unwrap().to_string();
                (name, n["id"].as_str().unwrap().to_string())
            })
            .filter(|(name, _)| named.contains(&name.as_str()))
            .collect();
        if found.len() == named.len() {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "nodes {named:?} never all {state}: {nodes}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Queued chunks claimed by `node` (what it would lose).
async fn claimed_by(url: &str, node: &str) -> u64 {
    postgres::query_json(
        url,
        &format!(
            "select json_build_object('n', count(*))::text from chunks
             where state = 0 and owner = '{node}'"
        ),
    )
    .await["n"]
        .as_u64()
        .unwrap()
}

/// The nodes holding claims of queued chunks of job `id` now.
async fn owners(url: &str, id: &str) -> Vec<String> {
    let owners = postgres::query_json(
        url,
        &format!(
            "select coalesce(json_agg(distinct c.owner), '[]')::text
             from chunks as c join jobs as j on j.key = c.job
             where j.id = '{id}' and c.state = 0 and c.owner is not null"
        ),
    )
    .await;
    serde_json::from_value(owners).unwrap()
}

/// The job's stored chunks: how many items are recorded, in how many records.
async fn recorded(url: &str, id: &str) -> (u64, u64) {
    let stored = postgres::query_json(
        url,
        &format!(
            "select json_build_object('items', coalesce(sum(size), 0), 'done', max(j.done))::text
             from jobs as j left join chunks as c on c.job = j.key and c.state = 1
             where j.id = '{id}'"
        ),
    )
    .await;
    (
        stored["items"].as_u64().unwrap(),
        stored["done"].as_u64().unwrap(),
    )
}

/// Every index of a job read from `app`, in index order, with its value: each exactly once.
async fn assert_every_index_once(app: &TestApp, id: &str, total: usize, value: &Value) {
    let results = app.results(id).await;
    let indexes: Vec<u64> = results
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, (0..total as u64).collect::<Vec<_>>());
    assert!(
        results.iter().all(|r| &r["value"] == value),
        "every value is {value}"
    );
}

/// The workers of `pool` (a `/v1/pool` answer) on the node `node`.
fn workers_of<'a>(pool: &'a Value, node: &str) -> Vec<&'a Value> {
    pool["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["node"] == node)
        .collect()
}

async fn wait_for(what: &str, limit: Duration, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok().await {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn a_node_killed_mid_job_loses_nothing_and_its_chunks_run_elsewhere_within_the_lease() {
    if !postgres::available() {
        return;
    }
    let url = postgres::database_url().await;
    let a = node(&url, "a", 2).await;
    let mut b = node(&url, "b", 2).await;
    let c = node(&url, "c", 2).await;
    let ids = wait_nodes(&a, &["a", "b", "c"], "alive").await;
    wait_for(
        "a sees every node's workers",
        Duration::from_secs(10),
        async || a.pool().await["size"] == 6,
    )
    .await;

    let total = 2000;
    let id = a
        .submit(json!({"function": "sleep", "items": vec![0.01; total], "chunksize": 5}))
        .await;
    // The chunks spread over every node: each claims some (seen in the table: a node's
    // `/v1/pool` entry is its last heartbeat's snapshot, which can catch its workers between
    // two chunks). Then b is killed while it holds claims.
    let mut claimed = std::collections::BTreeSet::new();
    wait_for(
        "every node claims chunks of the job",
        Duration::from_secs(10),
        async || {
            claimed.extend(owners(&url, &id).await);
            ["a", "b", "c"]
                .iter()
                .all(|name| claimed.contains(&ids[*name]))
        },
    )
    .await;
    wait_for("b holds claims", Duration::from_secs(10), async || {
        claimed_by(&url, &ids["b"]).await > 0
    })
    .await;
    let done = a.job(&id).await["done"].as_u64().unwrap();
    assert!(done < total as u64, "the job is still running: {done}");

    b.kill9();
    let killed = Instant::now();
    // b's chunks go back to the queue once its heartbeat is older than its lease, and the
    // other nodes run them.
    let limit = Duration::from_secs_f64(LEASE_S + 3.0);
    wait_for("b's chunks re-queued", limit, async || {
        claimed_by(&url, &ids["b"]).await == 0
    })
    .await;
    eprintln!(
        "b's chunks were re-queued {:?} after kill -9",
        killed.elapsed()
    );
    wait_nodes(&c, &["b"], "lost").await;

    let job = c.wait_job(&id).await;
    assert_eq!(
        (
            job["status"].as_str(),
            job["done"].as_u64(),
            job["failed"].as_u64()
        ),
        (Some("completed"), Some(total as u64), Some(0)),
        "{job}"
    );
    assert_eq!(recorded(&url, &id).await, (total as u64, total as u64));
    assert_every_index_once(&a, &id, total, &json!(0.01)).await;
    assert_every_index_once(&c, &id, total, &json!(0.01)).await;
}

#[tokio::test]
async fn a_node_paused_past_its_lease_has_its_late_results_refused_and_goes_back_to_work() {
    if !postgres::available() {
        return;
    }
    let url = postgres::database_url().await;
    let a = node(&url, "a", 2).await;
    let b = node(&url, "b", 2).await;
    let ids = wait_nodes(&a, &["a", "b"], "alive").await;

    let total = 40;
    let id = a
        .submit(json!({"function": "sleep", "items": vec![0.3; total], "chunksize": 1}))
        .await;
    wait_for("b runs the job", Duration::from_secs(10), async || {
        workers_of(&b.pool().await, &ids["b"])
            .iter()
            .any(|w| w["job_id"] == id.as_str())
    })
    .await;
    common::signal(b.pid(), "STOP");
    // b's workers finish their chunks meanwhile; b cannot record them. a re-queues them.
    wait_nodes(&a, &["b"], "lost").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    common::signal(b.pid(), "CONT");

    let job = a.wait_job(&id).await;
    assert_eq!(
        (job["status"].as_str(), job["done"].as_u64()),
        (Some("completed"), Some(total as u64)),
        "{job}"
    );
    assert_eq!(recorded(&url, &id).await, (total as u64, total as u64));
    assert_every_index_once(&a, &id, total, &json!(0.3)).await;
    // b found out, and its late results were refused (the other node had them).
    wait_for("b knows it was lost", Duration::from_secs(10), async || {
        b.log_text().contains("declared lost")
    })
    .await;
    assert!(
        b.log_text().contains("chunk records refused"),
        "b's late records were refused; log:\n{}",
        b.log_text()
    );

    // b is alive again and takes its share of new work.
    wait_nodes(&a, &["a", "b"], "alive").await;
    let before: u64 = workers_of(&b.pool().await, &ids["b"])
        .iter()
        .map(|w| w["tasks_completed"].as_u64().unwrap())
        .sum();
    let next = a
        .submit(json!({"function": "sleep", "items": vec![0.2; 20], "chunksize": 1}))
        .await;
    assert_eq!(a.wait_job(&next).await["status"], "completed");
    let after: u64 = workers_of(&b.pool().await, &ids["b"])
        .iter()
        .map(|w| w["tasks_completed"].as_u64().unwrap())
        .sum();
    assert!(
        after > before,
        "b ran chunks of the next job: {before} -> {after}"
    );
}

#[tokio::test]
async fn events_resume_on_another_node_and_a_cancel_anywhere_stops_chunks_on_the_node_that_runs_them()
 {
    if !postgres::available() {
        return;
    }
    let url = postgres::database_url().await;
    // Only b has workers: a and c serve the API.
    let a = node(&url, "a", 0).await;
    let b = node(&url, "b", 2).await;
    let c = node(&url, "c", 0).await;
    let ids = wait_nodes(&a, &["a", "b", "c"], "alive").await;

    let total = 60;
    let id = a
        .submit(json!({"function": "sleep", "items": vec![0.03; total], "chunksize": 1}))
        .await;
    let first = a
        .events_until(&id, "", |events| {
            events.iter().filter(|e| e.event == "result").count() >= 20
        })
        .await;
    let last_id: u64 = first
        .iter()
        .rev()
        .find_map(|e| e.id.as_ref())
        .expect("events have ids")
        .parse()
        .unwrap();
    let rest = c.events(&id, "", Some(last_id)).await;
    let indexes: Vec<u64> = first
        .iter()
        .chain(&rest)
        .filter(|e| e.event == "result")
        .map(|e| e.data["index"].as_u64().unwrap())
        .collect();
    assert_eq!(
        indexes,
        (0..total as u64).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    assert_eq!(rest.last().unwrap().event, "end");

    // A cancel on c stops the chunks b runs.
    let long = a
        .submit(json!({"function": "sleep", "items": vec![30; 4], "chunksize": 1}))
        .await;
    wait_for("b runs the long job", Duration::from_secs(10), async || {
        workers_of(&b.pool().await, &ids["b"])
            .iter()
            .all(|w| w["job_id"] == long.as_str())
    })
    .await;
    let cancelled = c.post(&format!("/v1/jobs/{long}/cancel")).await;
    assert_eq!(cancelled.status(), 200);
    let asked = Instant::now();
    wait_for(
        "b's workers leave the cancelled job",
        Duration::from_secs(2),
        async || {
            workers_of(&b.pool().await, &ids["b"])
                .iter()
                .all(|w| w["job_id"] != long.as_str() || w["state"] != "busy")
        },
    )
    .await;
    eprintln!(
        "b stopped the cancelled chunks {:?} after the cancel",
        asked.elapsed()
    );
    assert_eq!(a.job(&long).await["status"], "cancelled");
}

#[tokio::test]
async fn the_pool_is_the_clusters_and_close_applies_to_every_node() {
    if !postgres::available() {
        return;
    }
    let url = postgres::database_url().await;
    let a = node(&url, "a", 1).await;
    let b = node(&url, "b", 2).await;
    let ids = wait_nodes(&b, &["a", "b"], "alive").await;
    wait_for(
        "both nodes' workers in /v1/pool",
        Duration::from_secs(10),
        async || {
            let pool = a.pool().await;
            pool["size"] == 3
                && workers_of(&pool, &ids["a"]).len() == 1
                && workers_of(&pool, &ids["b"]).len() == 2
        },
    )
    .await;

    // Pool.map's automatic chunksize divides a job among every node's workers: 600 items over
    // 3 workers is 50 per chunk (a's 1 worker alone would make it 150).
    wait_for(
        "the automatic chunksize counts every node",
        Duration::from_secs(5),
        async || {
            let id = a
                .submit(json!({"function": "square", "items": vec![1; 600]}))
                .await;
            a.job(&id).await["chunksize"] == 50
        },
    )
    .await;

    // Each node's metrics say which node they are.
    let metrics = b.get("/metrics").await.text().await.unwrap();
    let samples: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("poold_"))
        .collect();
    assert!(!samples.is_empty(), "{metrics}");
    assert!(
        samples.iter().all(|l| l.contains(r#"node="b""#)),
        "every sample carries the node: {metrics}"
    );

    let closed = a.post("/v1/pool/close").await;
    assert_eq!(closed.status(), 200);
    wait_for("b refuses new jobs", Duration::from_secs(5), async || {
        b.post_job(&json!({"function": "square", "items": [1]}))
            .await
            .status()
            == 503
    })
    .await;
    assert_eq!(b.pool().await["accepting"], false);
    assert_eq!(b.post("/v1/pool/open").await.status(), 200);
    wait_for("a takes jobs again", Duration::from_secs(5), async || {
        a.post_job(&json!({"function": "square", "items": [1]}))
            .await
            .status()
            == 201
    })
    .await;

    // A node that stops hands its place back: listed as stopped, its workers gone from the pool.
    let mut a = a;
    a.terminate_cleanly();
    wait_nodes(&b, &["a"], "stopped").await;
    wait_for(
        "a's workers leave the pool",
        Duration::from_secs(10),
        async || b.pool().await["size"] == 2,
    )
    .await;
}

#[tokio::test]
async fn an_upload_on_a_node_that_dies_fails_on_the_others_within_the_lease() {
    if !postgres::available() {
        return;
    }
    let url = postgres::database_url().await;
    let a = node(&url, "a", 1).await;
    let mut b = node(&url, "b", 1).await;
    wait_nodes(&a, &["a", "b"], "alive").await;

    // An NDJSON upload on b that stays open: its two items run, then b dies.
    let (lines, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(4);
    let request = b
        .client
        .post(format!("{}/v1/jobs", b.url))
        .header("content-type", "application/x-ndjson")
        .body(reqwest::Body::wrap_stream(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ));
    let upload = tokio::spawn(async move { request.send().await });
    for line in [
        json!({"function": "square", "chunksize": 1}),
        json!(3),
        json!(4),
    ] {
        lines.send(Ok(format!("{line}\n"))).await.unwrap();
    }
    let mut id = String::new();
    wait_for(
        "the upload's items done",
        Duration::from_secs(20),
        async || {
            let list: Value = a.get("/v1/jobs").await.json().await.unwrap();
            match list["jobs"][0]["id"].as_str() {
                Some(found) => {
                    id = found.to_string();
                    a.job(&id).await["done"] == 2
                }
                None => false,
            }
        },
    )
    .await;
    b.kill9();
    drop(lines);
    let _ = upload.await; // the connection died with b

    let limit = Duration::from_secs_f64(LEASE_S + 3.0);
    wait_for("the cut-off upload fails", limit, async || {
        a.job(&id).await["status"] == "failed"
    })
    .await;
    let job = a.job(&id).await;
    assert!(job["error"].as_str().unwrap().contains("uploaded"), "{job}");
    let values: Vec<Value> = a
        .results(&id)
        .await
        .iter()
        .map(|r| r["value"].clone())
        .collect();
    assert_eq!(
        values,
        vec![json!(9), json!(16)],
        "the stored items' results stay"
    );
}

/// The audit of a node's claims (at every heartbeat) gives back only claims no one holds. A
/// new job small enough for the node's free workers is stored with its chunks claimed and
/// then handed to the supervisor, and a chunk that ran keeps its claim until its record
/// commits: the audit once gave back such claims in both windows, the supervisor claimed the
/// chunk again, and it ran twice (its first record refused).
#[tokio::test]
async fn the_audit_of_a_nodes_claims_keeps_the_claims_of_chunks_on_their_way() {
    if !postgres::available() {
        return;
    }
    let url = postgres::database_url().await;
    let a = node(&url, "a", 2).await;
    wait_nodes(&a, &["a"], "alive").await;
    // One-item jobs from 8 clients at once for about five audits (one every third of a lease).
    let until = Instant::now() + Duration::from_secs_f64(LEASE_S * 5.0 / 3.0);
    let client = async || {
        let mut ids = Vec::new();
        while Instant::now() < until {
            ids.push(a.submit(json!({"function": "square", "items": [3]})).await);
        }
        ids
    };
    let ids: Vec<String> = futures::future::join_all((0..8).map(|_| client()))
        .await
        .into_iter()
        .flatten()
        .collect();
    let unfinished = async || {
        postgres::query_json(
            &url,
            "select json_build_object('n', count(*))::text from jobs
             where status <> 'completed' or done <> 1",
        )
        .await["n"]
            .as_u64()
            .unwrap()
    };
    wait_for("every job completed", Duration::from_secs(60), async || {
        unfinished().await == 0
    })
    .await;
    for id in [&ids[0], &ids[ids.len() - 1]] {
        assert_eq!(a.results(id).await[0]["value"], 9);
    }
    let log = a.log_text();
    assert!(
        !log.contains("gave back claims") && !log.contains("chunk records refused"),
        "{} jobs; a claim was given back while its chunk was on its way:\n{log}",
        ids.len()
    );
}

#[tokio::test]
async fn a_small_job_on_a_node_whose_workers_are_busy_runs_on_an_idle_node() {
    if !postgres::available() {
        return;
    }
    let url = postgres::database_url().await;
    let a = node(&url, "a", 1).await;
    let b = node(&url, "b", 1).await;
    let ids = wait_nodes(&a, &["a", "b"], "alive").await;
    // Until each node's heartbeat has counted the other's worker (Pool.map's chunksize for 80
    // items over 2 workers is 10; over one, 20).
    for app in [&a, &b] {
        wait_for(
            "each node counts both workers",
            Duration::from_secs(10),
            async || {
                let id = app
                    .submit(json!({"function": "square", "items": vec![1; 80]}))
                    .await;
                app.job(&id).await["chunksize"] == 10
            },
        )
        .await;
    }

    // A long item keeps one node's only worker busy.
    let long = a.submit(json!({"function": "sleep", "items": [60]})).await;
    let mut busy = None;
    wait_for(
        "a node runs the long item",
        Duration::from_secs(10),
        async || {
            for (name, app) in [("a", &a), ("b", &b)] {
                let pool = app.pool().await;
                if workers_of(&pool, &ids[name])
                    .iter()
                    .any(|w| w["job_id"] == long.as_str() && w["state"] == "busy")
                {
                    busy = Some((name, app));
                    return true;
                }
            }
            false
        },
    )
    .await;
    let (busy_name, busy) = busy.unwrap();
    let idle_name = if busy_name == "a" { "b" } else { "a" };

    // A one-item job sent to the busy node is not kept waiting for its worker: the idle node
    // runs it.
    let quick = busy
        .submit(json!({"function": "square", "items": [7]}))
        .await;
    let job: Value = busy
        .get(&format!("/v1/jobs/{quick}?wait=10"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        job["status"], "completed",
        "the job sent to busy {busy_name} while {idle_name} was idle: {job}"
    );
    assert_eq!(busy.results(&quick).await[0]["value"], 49);
    assert_eq!(busy.job(&long).await["status"], "running");
}
