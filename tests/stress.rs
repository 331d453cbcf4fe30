//! Many clients at once while workers crash: every job completes, every poison item fails
//! alone, and the single-writer store never reports `database is locked`.

mod common;

use common::TestApp;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_jobs_from_twenty_clients_complete_while_workers_crash() {
    let app = std::sync::Arc::new(TestApp::spawn().await);
    let clients = (0..20).map(|client| {
        let app = app.clone();
        tokio::spawn(async move {
            let mut jobs = Vec::new();
            for n in 0..5 {
                // Every third job carries an item that kills its worker (exit code 3).
                let poison = (client * 5 + n) % 3 == 0;
                let mut items = vec![0; 20];
                if poison {
                    items[n * 3] = 3;
                }
                let id = app
                    .submit(json!({"function": "crash", "items": items, "chunksize": 5, "max_attempts": 2}))
                    .await;
                jobs.push((id, poison));
            }
            jobs
        })
    });
    let jobs: Vec<(String, bool)> = futures::future::join_all(clients)
        .await
        .into_iter()
        .flat_map(|r| r.expect("client task"))
        .collect();
    assert_eq!(jobs.len(), 100);
    for (id, poison) in &jobs {
        let job = app.wait_job(id).await;
        assert_eq!(
            (
                job["status"].as_str(),
                job["done"].as_u64(),
                job["failed"].as_u64()
            ),
            (Some("completed"), Some(20), Some(u64::from(*poison))),
            "{job}"
        );
    }
    let restarts: u64 = app.pool().await["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["restarts"].as_u64().unwrap())
        .sum();
    assert!(restarts >= 34 * 3, "workers crashed {restarts} times");
    let log = app.log_text();
    assert!(!log.contains("database is locked"), "{log}");
    assert!(!log.contains("database write failed"), "{log}");
}
