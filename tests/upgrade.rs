//! Upgrading a database written by an earlier poold: the schema of migrations 0001..0006 (as
//! they shipped: migrations are append-only, so the first six files of `migrations/` are
//! they) holding jobs in every state, as
//! that version's store wrote them (one `results` row per item, in the order chunks were
//! recorded). The current binary must migrate the file on start and then serve those jobs as
//! they were: results, errors, logs, both orders, NDJSON; resume the unfinished ones, running
//! each item exactly once; and honour the stored idempotency keys.

mod common;

use std::path::Path;

use common::{SseEvent, TestApp};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// A finished job (`echo`, chunks of 3) whose chunks were recorded in the order 1, 2, 0, with
/// an item error and two logs.
const FINISHED: &str = "0190a4b2-0000-7000-8000-0000000000f1";
/// A running job (`square`, chunks of 4): chunks 2 and 0 done (in that order), 1, 3, 4 queued.
const RUNNING: &str = "0190a4b2-0000-7000-8000-0000000000f2";
/// A queued job that never started (`echo`, chunks of 2).
const QUEUED: &str = "0190a4b2-0000-7000-8000-0000000000f3";
/// A job cancelled after its first chunk of 3 (`square`, chunks of 2).
const CANCELLED: &str = "0190a4b2-0000-7000-8000-0000000000f4";

const KEY: &str = "upgrade-42";

/// The stored jobs finished in 2024: keep them past the default retention of 7 days.
const KEEP: &[&str] = &["--retention", "3650d"];

fn finished_items() -> Value {
    json!([1, {"a": [1, 2]}, "héllo ✓", null, "x", 2.5, true, -7])
}

fn item_error() -> Value {
    json!({
        "type": "ValueError",
        "message": "bad item x",
        "traceback": "Traceback (most recent call last):\n  File \"f.py\", line 1\nValueError: bad item x\n"
    })
}

/// The finished job's results, in index order.
fn finished_results() -> Vec<Value> {
    vec![
        json!({"index": 0, "value": 1, "log": "one\n"}),
        json!({"index": 1, "value": {"a": [1, 2]}}),
        json!({"index": 2, "value": "héllo ✓"}),
        json!({"index": 3, "value": null}),
        json!({"index": 4, "error": item_error(), "log": "checking \"x\"\n"}),
        json!({"index": 5, "value": 2.5}),
        json!({"index": 6, "value": true}),
        json!({"index": 7, "value": -7}),
    ]
}

/// The error the running job's item 9 got before the upgrade (a rerun would say otherwise).
fn stored_error() -> Value {
    json!({"type": "TypeError", "message": "stored before the upgrade", "traceback": null})
}

/// The request that created the finished job, sent again with its Idempotency-Key.
fn repeat_body() -> Value {
    json!({"function": "echo", "items": finished_items(), "chunksize": 3, "metadata": {"origin": "0.6"}})
}

/// The request hash the earlier version stored with an Idempotency-Key: SHA-256 of the request
/// normalized as its `CreateJob` serialized (fields in declaration order, items as sent).
fn request_hash() -> String {
    let items = serde_json::to_string(&finished_items()).unwrap();
    let normalized = format!(
        r#"{{"function":"echo","items":{items},"kwargs":null,"star":false,"chunksize":3,"timeout_s":null,"max_attempts":null,"on_error":null,"priority":null,"metadata":{{"origin":"0.6"}}}}"#
    );
    format!("{:x}", Sha256::digest(normalized.as_bytes()))
}

/// Write `db` as the earlier version left it: its migrations, then its rows.
async fn write_old_database(db: &Path) {
    use sqlx::{ConnectOptions, Connection};
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .create_if_missing(true)
        .connect()
        .await
        .expect("create the database");
    // The earlier version's migrations: the first six of the repository's.
    let old = db.with_extension("migrations");
    std::fs::create_dir_all(&old).unwrap();
    let all = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    for entry in std::fs::read_dir(&all).unwrap() {
        let name = entry.unwrap().file_name();
        let number: u32 = name.to_str().unwrap()[..4].parse().unwrap();
        if number <= 6 {
            std::fs::copy(all.join(&name), old.join(&name)).unwrap();
        }
    }
    let migrator = sqlx::migrate::Migrator::new(old.as_path())
        .await
        .expect("read the old migrations");
    assert_eq!(migrator.iter().count(), 6);
    migrator.run(&mut conn).await.expect("old migrations");
    conn.close().await.unwrap();

    let error = item_error().to_string().replace('\'', "''");
    let stored_error = stored_error().to_string();
    let hash = request_hash();
    let columns = "id, function, kwargs, star, chunksize, timeout_s, max_attempts, on_error, \
                   priority, metadata, status, total, done, failed, error, created_at, started_at, \
                   finished_at, idempotency_key, request_hash, ingesting, codec, max_concurrency";
    let sql = format!(
        r#"
        insert into jobs ({columns}) values
          ('{FINISHED}', 'echo', '{{}}', 0, 3, null, 1, 'continue', 0, '{{"origin":"0.6"}}',
           'completed', 8, 8, 1, null, '2024-06-01T12:00:00Z', '2024-06-01T12:00:01Z',
           '2024-06-01T12:00:05Z', '{KEY}', '{hash}', 0, 'json', null),
          ('{RUNNING}', 'square', '{{}}', 0, 4, null, 1, 'continue', 0, '{{}}',
           'running', 20, 8, 1, null, '2024-06-01T12:01:00Z', '2024-06-01T12:01:01Z',
           null, null, null, 0, 'json', null),
          ('{QUEUED}', 'echo', '{{}}', 0, 2, null, 1, 'continue', 5, '{{}}',
           'queued', 3, 0, 0, null, '2024-06-01T12:02:00Z', null, null, null, null, 0, 'json', 1),
          ('{CANCELLED}', 'square', '{{}}', 0, 2, null, 1, 'continue', 0, '{{}}',
           'cancelled', 6, 2, 0, null, '2024-06-01T12:03:00Z', '2024-06-01T12:03:01Z',
           '2024-06-01T12:03:02Z', null, null, 0, 'json', null);

        insert into chunks (job_id, chunk_index, start_index, size, items, status) values
          ('{FINISHED}', 0, 0, 3, '[1,{{"a":[1,2]}},"héllo ✓"]', 'done'),
          ('{FINISHED}', 1, 3, 3, '[null,"x",2.5]', 'done'),
          ('{FINISHED}', 2, 6, 2, '[true,-7]', 'done'),
          ('{RUNNING}', 0, 0, 4, '[0,1,2,3]', 'done'),
          ('{RUNNING}', 1, 4, 4, '[4,5,6,7]', 'queued'),
          ('{RUNNING}', 2, 8, 4, '[8,"nine",10,11]', 'done'),
          ('{RUNNING}', 3, 12, 4, '[12,13,14,15]', 'queued'),
          ('{RUNNING}', 4, 16, 4, '[16,17,18,19]', 'queued'),
          ('{QUEUED}', 0, 0, 2, '["a","b"]', 'queued'),
          ('{QUEUED}', 1, 2, 1, '["c"]', 'queued'),
          ('{CANCELLED}', 0, 0, 2, '[1,2]', 'done'),
          ('{CANCELLED}', 1, 2, 2, '[3,4]', 'cancelled'),
          ('{CANCELLED}', 2, 4, 2, '[5,6]', 'cancelled');

        -- In the order the chunks were recorded (the rowid is the completion order).
        insert into results (job_id, item_index, value, error, log) values
          ('{FINISHED}', 3, 'null', null, null),
          ('{FINISHED}', 4, null, '{error}', 'checking "x"' || char(10)),
          ('{FINISHED}', 5, '2.5', null, null),
          ('{RUNNING}', 8, '64', null, null),
          ('{RUNNING}', 9, null, '{stored_error}', null),
          ('{RUNNING}', 10, '100', null, null),
          ('{RUNNING}', 11, '121', null, null),
          ('{FINISHED}', 6, 'true', null, null),
          ('{FINISHED}', 7, '-7', null, null),
          ('{CANCELLED}', 0, '1', null, null),
          ('{CANCELLED}', 1, '4', null, null),
          ('{RUNNING}', 0, '0', null, 'ran before the upgrade'),
          ('{RUNNING}', 1, '1', null, null),
          ('{RUNNING}', 2, '4', null, null),
          ('{RUNNING}', 3, '9', null, null),
          ('{FINISHED}', 0, '1', null, 'one' || char(10)),
          ('{FINISHED}', 1, '{{"a":[1,2]}}', null, null),
          ('{FINISHED}', 2, '"héllo ✓"', null, null);
        "#
    );
    common::sqlite_exec(db, &sql).await;
}

fn results_of(events: &[SseEvent]) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e.event == "result")
        .map(|e| e.data.clone())
        .collect()
}

fn ids_of(events: &[SseEvent]) -> Vec<u64> {
    events
        .iter()
        .filter(|e| e.event == "result")
        .map(|e| e.id.as_deref().unwrap().parse().unwrap())
        .collect()
}

/// The finished and the cancelled job read back exactly as the earlier version stored them.
async fn check_stored_jobs(app: &TestApp) {
    let job = app.job(FINISHED).await;
    let expected = json!({
        "id": FINISHED, "status": "completed", "function": "echo", "kwargs": {}, "star": false,
        "chunksize": 3, "timeout_s": null, "max_attempts": 1, "on_error": "continue",
        "priority": 0, "codec": "json", "max_concurrency": null, "total": 8, "done": 8,
        "failed": 1, "metadata": {"origin": "0.6"}, "created_at": "2024-06-01T12:00:00Z",
        "started_at": "2024-06-01T12:00:01Z", "finished_at": "2024-06-01T12:00:05Z",
        "error": null,
    });
    for (field, value) in expected.as_object().unwrap() {
        assert_eq!(&job[field], value, "{field} of {job}");
    }
    let expected = finished_results();
    assert_eq!(app.results(FINISHED).await, expected);
    // Pages of 3 start inside the stored chunks.
    let mut paged = Vec::new();
    for offset in [0, 3, 6] {
        let page: Value = app
            .get(&format!(
                "/v1/jobs/{FINISHED}/results?offset={offset}&limit=3"
            ))
            .await
            .json()
            .await
            .unwrap();
        paged.extend(page["results"].as_array().unwrap().iter().cloned());
    }
    assert_eq!(paged, expected);
    let page: Value = app
        .get(&format!("/v1/jobs/{FINISHED}/results?offset=2&limit=2"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page, json!({"results": expected[2..4], "next_offset": 4}));
    let page: Value = app
        .get(&format!("/v1/jobs/{FINISHED}/results?failed=true"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["results"], json!([expected[4]]));
    let response = app.results_ndjson(FINISHED).await;
    assert_eq!(response.status(), 200);
    let lines: Vec<Value> = response
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines, expected);

    // Index order, with each log just before its result.
    let events = app.events(FINISHED, "", None).await;
    assert_eq!(results_of(&events), expected);
    assert_eq!(ids_of(&events), (0..8).collect::<Vec<_>>());
    let logs: Vec<(usize, &Value)> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| e.event == "log")
        .map(|(at, e)| (at, &e.data))
        .collect();
    assert_eq!(
        logs.iter().map(|(_, d)| (*d).clone()).collect::<Vec<_>>(),
        [
            json!({"index": 0, "log": "one\n"}),
            json!({"index": 4, "log": "checking \"x\"\n"})
        ]
    );
    for (at, log) in logs {
        assert_eq!(events[at + 1].event, "result");
        assert_eq!(events[at + 1].data["index"], log["index"]);
    }
    let end = events.last().unwrap();
    assert_eq!(
        (end.event.as_str(), &end.data["status"]),
        ("end", &json!("completed"))
    );

    // Completion order: the chunks as they were recorded (1, 2, 0), each in item order.
    let events = app.events(FINISHED, "?order=completion", None).await;
    let order: Vec<u64> = results_of(&events)
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(order, [3, 4, 5, 6, 7, 0, 1, 2]);
    assert_eq!(ids_of(&events), (0..8).collect::<Vec<_>>());
    let tail = app.events(FINISHED, "?order=completion", Some(3)).await;
    assert_eq!(ids_of(&tail), [4, 5, 6, 7]);
    let tail: Vec<u64> = results_of(&tail)
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(tail, [7, 0, 1, 2]);

    // The cancelled job: its one recorded chunk, and it stays cancelled.
    let job = app.job(CANCELLED).await;
    assert_eq!(
        (
            job["status"].as_str(),
            job["done"].as_u64(),
            job["total"].as_u64(),
            job["finished_at"].as_str()
        ),
        (
            Some("cancelled"),
            Some(2),
            Some(6),
            Some("2024-06-01T12:03:02Z")
        ),
        "{job}"
    );
    assert_eq!(
        app.results(CANCELLED).await,
        [
            json!({"index": 0, "value": 1}),
            json!({"index": 1, "value": 4})
        ]
    );
    let events = app.events(CANCELLED, "", None).await;
    assert_eq!(ids_of(&events), [0, 1]);
    assert_eq!(events.last().unwrap().data["status"], "cancelled");
}

#[tokio::test]
async fn a_database_of_the_earlier_schema_is_migrated_and_served_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("poold.db");
    write_old_database(&db).await;

    let mut app = TestApp::start(&db, KEEP).await;
    check_stored_jobs(&app).await;

    // The unfinished jobs resume: only their queued chunks run, each item once.
    let job = app.wait_job(RUNNING).await;
    assert_eq!(
        (
            job["status"].as_str(),
            job["total"].as_u64(),
            job["done"].as_u64(),
            job["failed"].as_u64(),
            job["started_at"].as_str()
        ),
        (
            Some("completed"),
            Some(20),
            Some(20),
            Some(1),
            Some("2024-06-01T12:01:01Z")
        ),
        "{job}"
    );
    let results = app.results(RUNNING).await;
    let mut expected: Vec<Value> = (0..20u64)
        .map(|i| json!({"index": i, "value": i * i}))
        .collect();
    expected[0]["log"] = json!("ran before the upgrade");
    expected[9] = json!({"index": 9, "error": stored_error()});
    assert_eq!(
        results, expected,
        "recorded chunks kept, queued ones run once"
    );
    let events = app.events(RUNNING, "", None).await;
    assert_eq!(results_of(&events), expected);
    let job = app.wait_job(QUEUED).await;
    assert_eq!(
        (job["status"].as_str(), job["done"].as_u64()),
        (Some("completed"), Some(3))
    );
    assert_eq!(job["max_concurrency"], 1);
    assert_eq!(job["priority"], 5);
    assert_eq!(
        app.results(QUEUED).await,
        [
            json!({"index": 0, "value": "a"}),
            json!({"index": 1, "value": "b"}),
            json!({"index": 2, "value": "c"})
        ]
    );

    // The stored Idempotency-Key still names its job.
    let post = |body: Value| {
        app.client
            .post(format!("{}/v1/jobs", app.url))
            .header("Idempotency-Key", KEY)
            .json(&body)
            .send()
    };
    let again = post(repeat_body()).await.unwrap();
    assert_eq!(again.status(), 200, "a repeat of the stored request");
    assert_eq!(again.headers()["location"], format!("/v1/jobs/{FINISHED}"));
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], FINISHED);
    assert_eq!(again["status"], "completed");
    let other = post(json!({"function": "echo", "items": [1]}))
        .await
        .unwrap();
    assert_eq!(other.status(), 422);
    assert_eq!(
        other.json::<Value>().await.unwrap()["code"],
        "idempotency_key_reused"
    );

    // New jobs run on the migrated database, and the whole list is there.
    let new = app
        .submit(json!({"function": "square", "items": [2, 3], "chunksize": 1}))
        .await;
    assert_eq!(app.wait_job(&new).await["status"], "completed");
    let list: Value = app.get("/v1/jobs?limit=100").await.json().await.unwrap();
    let listed: Vec<&str> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [new.as_str(), CANCELLED, QUEUED, RUNNING, FINISHED]);

    // A second start on the migrated file changes nothing.
    app.terminate_cleanly();
    let app = TestApp::start(&db, KEEP).await;
    check_stored_jobs(&app).await;
    assert_eq!(app.results(RUNNING).await, expected);
    assert_eq!(
        app.results(&new).await,
        [
            json!({"index": 0, "value": 4}),
            json!({"index": 1, "value": 9})
        ]
    );
}
