//! Upgrading a PostgreSQL database written by the previous poold (one node, before the
//! cluster): the schema of `migrations-postgres/0001_init.sql` alone (migrations are
//! append-only, so that file is it) holding a finished job and a running one, as that version
//! wrote them (completion numbers from its sequence). The current binary must migrate it on
//! start, serve the finished job's results in both orders, and resume the running job so that
//! each of its queued items runs once and completion order carries on after the old numbers.

mod common;

use std::path::Path;

use common::{TestApp, postgres};
use serde_json::{Value, json};

const FINISHED: &str = "0190a4b2-0000-7000-8000-0000000000a1";
const RUNNING: &str = "0190a4b2-0000-7000-8000-0000000000a2";

/// The stored jobs finished in 2024: keep them past the default retention.
const KEEP: &[&str] = &["--retention", "3650d"];

/// Write the old schema and its rows into the empty database at `url`.
async fn write_old_database(url: &str) {
    use sqlx::Connection;
    let old = tempfile::tempdir().expect("temp dir");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations-postgres/0001_init.sql"),
        old.path().join("0001_init.sql"),
    )
    .expect("copy the first migration");
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    sqlx::migrate::Migrator::new(old.path())
        .await
        .expect("old migrations")
        .run(&mut conn)
        .await
        .expect("old schema");
    let job = |id: &str, function: &str, status: &str, total: i64, done: i64, finished: &str| {
        format!(
            "insert into jobs (id, function, kwargs, star, chunksize, max_attempts, on_error,
                               priority, metadata, status, total, done, failed, created_at,
                               started_at, finished_at)
             values ('{id}', '{function}', '{{}}', false, 2, 1, 'continue', 0, '{{}}',
                     '{status}', {total}, {done}, 0, '2024-06-01T10:00:00Z',
                     '2024-06-01T10:00:01Z', {finished})"
        )
    };
    let statements = [
        job(FINISHED, "echo", "completed", 4, 4, "'2024-06-01T10:00:02Z'"),
        job(RUNNING, "square", "running", 6, 2, "null"),
        // The finished job: chunk 2 recorded before chunk 0.
        format!(
            "insert into chunks (job, start, size, state, seq, failed, outcomes, items)
             select key, 2, 2, 1, nextval('chunks_seq'), 0, '[{{\"value\":\"c\"}},{{\"value\":\"d\"}}]', ''
             from jobs where id = '{FINISHED}'"
        ),
        format!(
            "insert into chunks (job, start, size, state, seq, failed, outcomes, items)
             select key, 0, 2, 1, nextval('chunks_seq'), 0, '[{{\"value\":\"a\"}},{{\"value\":\"b\"}}]', ''
             from jobs where id = '{FINISHED}'"
        ),
        // The running job: chunk 0 done, chunks 2 and 4 queued.
        format!(
            "insert into chunks (job, start, size, state, seq, failed, outcomes, items)
             select key, 0, 2, 1, nextval('chunks_seq'), 0, '[{{\"value\":100}},{{\"value\":121}}]', ''
             from jobs where id = '{RUNNING}'"
        ),
        format!(
            "insert into chunks (job, start, size, state, items)
             select key, s.start, 2, 0, s.items from jobs,
                    (values (2, '[12,13]'), (4, '[14,15]')) as s(start, items)
             where id = '{RUNNING}'"
        ),
    ];
    for sql in statements {
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    conn.close().await.expect("close");
}

fn values(results: &[Value]) -> Vec<Value> {
    results.iter().map(|r| r["value"].clone()).collect()
}

#[tokio::test]
async fn a_database_of_the_single_node_schema_is_migrated_served_and_resumed() {
    if !postgres::available() {
        return;
    }
    let url = postgres::database_url().await;
    write_old_database(&url).await;
    let app = TestApp::start(Path::new(&url), KEEP).await;

    // The finished job, in index order and in the order its chunks were recorded.
    let finished = app.job(FINISHED).await;
    assert_eq!(finished["status"], "completed", "{finished}");
    assert_eq!(
        values(&app.results(FINISHED).await),
        vec![json!("a"), json!("b"), json!("c"), json!("d")]
    );
    let by_completion: Vec<u64> = app
        .events(FINISHED, "?order=completion", None)
        .await
        .iter()
        .filter(|e| e.event == "result")
        .map(|e| e.data["index"].as_u64().unwrap())
        .collect();
    assert_eq!(by_completion, vec![2, 3, 0, 1]);

    // The running job resumes: its queued items run once, after the stored ones.
    let running = app.wait_job(RUNNING).await;
    assert_eq!(
        (running["status"].as_str(), running["done"].as_u64()),
        (Some("completed"), Some(6)),
        "{running}"
    );
    assert_eq!(
        values(&app.results(RUNNING).await),
        [100, 121, 144, 169, 196, 225].map(|v| json!(v)).to_vec()
    );
    let by_completion: Vec<u64> = app
        .events(RUNNING, "?order=completion", None)
        .await
        .iter()
        .filter(|e| e.event == "result")
        .map(|e| e.data["index"].as_u64().unwrap())
        .collect();
    assert_eq!(&by_completion[..2], &[0, 1], "the stored chunk first");
    let mut rest = by_completion[2..].to_vec();
    rest.sort_unstable();
    assert_eq!(rest, vec![2, 3, 4, 5], "then each resumed item once");
}
