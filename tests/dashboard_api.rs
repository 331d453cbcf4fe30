//! The two API additions the dashboard reads: each worker's `items_completed` in
//! `GET /v1/pool` (the overview's items per second) and `GET /v1/jobs/{id}/results?failed=true`
//! (its latest failed items; the job page's "failed only").

mod common;

use common::TestApp;
use serde_json::{Value, json};

fn items_completed(pool: &Value) -> u64 {
    pool["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .map(|w| w["items_completed"].as_u64().expect("items_completed"))
        .sum()
}

#[tokio::test]
async fn workers_count_the_items_they_returned_but_not_those_a_crash_failed() {
    let app = TestApp::spawn().await;
    assert_eq!(items_completed(&app.pool().await), 0);

    let id = app
        .submit(
            json!({"function": "square", "items": (0..100).collect::<Vec<_>>(), "chunksize": 10}),
        )
        .await;
    app.wait_job(&id).await;
    let pool = app.pool().await;
    assert_eq!(items_completed(&pool), 100, "{pool}");
    for worker in pool["workers"].as_array().unwrap() {
        // Chunks of 10: a worker's items are ten times its chunks.
        assert_eq!(
            worker["items_completed"].as_u64().unwrap(),
            10 * worker["tasks_completed"].as_u64().unwrap(),
            "{worker}"
        );
    }

    // Item errors are outcomes the worker returned: they count.
    let id = app
        .submit(json!({"function": "fail", "items": ["a", "b"]}))
        .await;
    app.wait_job(&id).await;
    assert_eq!(items_completed(&app.pool().await), 102);

    // An item whose worker died has an outcome poold made up (worker_exited): it does not.
    let id = app.submit(json!({"function": "crash", "items": [3]})).await;
    let job = app.wait_job(&id).await;
    assert_eq!(job["failed"], 1, "{job}");
    let pool = app
        .wait_pool("the crashed worker replaced", |p| {
            p["workers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w["restarts"] == 1)
        })
        .await;
    assert_eq!(items_completed(&pool), 102, "{pool}");
}

#[tokio::test]
async fn failed_true_returns_only_the_item_errors_in_index_order() {
    let app = TestApp::spawn().await;
    // `square` of a string is a TypeError: items 3, 10, 11 and 25 fail.
    let items: Vec<Value> = (0..30)
        .map(|i| {
            if [3, 10, 11, 25].contains(&i) {
                json!(format!("x{i}"))
            } else {
                json!(i)
            }
        })
        .collect();
    let id = app
        .submit(json!({"function": "square", "items": items, "chunksize": 7}))
        .await;
    let job = app.wait_job(&id).await;
    assert_eq!(job["failed"], 4, "{job}");

    // Pages of two: next_offset is the item index after the last one returned.
    let page: Value = app
        .get(&format!("/v1/jobs/{id}/results?failed=true&limit=2"))
        .await
        .json()
        .await
        .unwrap();
    let indexes = |page: &Value| -> Vec<u64> {
        page["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["index"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(indexes(&page), [3, 10], "{page}");
    assert_eq!(page["next_offset"], 11);
    for result in page["results"].as_array().unwrap() {
        assert_eq!(result["error"]["type"], "TypeError", "{result}");
        assert!(result.get("value").is_none(), "{result}");
    }
    let page: Value = app
        .get(&format!(
            "/v1/jobs/{id}/results?failed=true&limit=2&offset=11"
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(indexes(&page), [11, 25], "{page}");
    let page: Value = app
        .get(&format!("/v1/jobs/{id}/results?failed=true&offset=26"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(indexes(&page), Vec::<u64>::new());
    assert_eq!(
        page["next_offset"],
        Value::Null,
        "finished: nothing follows"
    );

    // Without the filter (or with failed=false), every result.
    let page: Value = app
        .get(&format!("/v1/jobs/{id}/results?failed=false"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(indexes(&page), (0..30).collect::<Vec<_>>());

    // NDJSON too.
    let response = app
        .client
        .get(format!("{}/v1/jobs/{id}/results?failed=true", app.url))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    let text = response.text().await.unwrap();
    let lines: Vec<u64> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["index"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(lines, [3, 10, 11, 25]);

    // A value that is not a boolean is a 400 problem, not a 500.
    let response = app
        .get(&format!("/v1/jobs/{id}/results?failed=maybe"))
        .await;
    assert_eq!(response.status(), 400);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "invalid_request", "{problem}");
}
