//! Reading a job's results back, against the real binary: `/results` pages whose boundaries
//! fall inside chunks, completion order that truly differs from index order, resuming event
//! streams mid-chunk, streams of more than a page of results of a running job, and jobs whose
//! results have gaps (cancelled mid-run).

mod common;

use std::time::{Duration, Instant};

use common::{SseEvent, TestApp};
use serde_json::{Value, json};

/// Items of a `square` job of 40: 12 and 33 are not numbers, so those two are item errors.
const BAD: [u64; 2] = [12, 33];

fn square_items() -> Vec<Value> {
    (0..40u64)
        .map(|i| {
            if BAD.contains(&i) {
                json!("x")
            } else {
                json!(i)
            }
        })
        .collect()
}

/// The result of item `i` of [`square_items`].
fn check_square_result(result: &Value) {
    let i = result["index"].as_u64().expect("index");
    if BAD.contains(&i) {
        assert_eq!(result["error"]["type"], "TypeError", "{result}");
        assert!(result.get("value").is_none(), "{result}");
    } else {
        assert_eq!(result, &json!({"index": i, "value": i * i}));
    }
}

fn indices(results: &[Value]) -> Vec<u64> {
    results
        .iter()
        .map(|r| r["index"].as_u64().expect("index"))
        .collect()
}

fn result_events(events: &[SseEvent]) -> Vec<&SseEvent> {
    events.iter().filter(|e| e.event == "result").collect()
}

fn event_ids(events: &[&SseEvent]) -> Vec<u64> {
    events
        .iter()
        .map(|e| {
            e.id.as_deref()
                .expect("a result has an id")
                .parse()
                .unwrap()
        })
        .collect()
}

fn event_indices(events: &[&SseEvent]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e.data["index"].as_u64().expect("index"))
        .collect()
}

async fn get_page(app: &TestApp, id: &str, query: &str) -> Value {
    let response = app.get(&format!("/v1/jobs/{id}/results?{query}")).await;
    assert_eq!(response.status(), 200, "results?{query}");
    response.json().await.expect("page JSON")
}

/// Follow `next_offset` from `start`, `limit` at a time, checking every page: it holds the
/// next `limit` of `expected` (the item indexes that should come, in order); while more follow,
/// `next_offset` is the index after its last result; at the end it is null, or (after a full
/// last page) the index after it, where an empty page with a null `next_offset` follows.
/// Returns every result read.
async fn walk(
    app: &TestApp,
    id: &str,
    extra: &str,
    start: u64,
    limit: usize,
    expected: &[u64],
) -> Vec<Value> {
    let mut all = Vec::new();
    let mut offset = start;
    for _ in 0..100 {
        let page = get_page(app, id, &format!("offset={offset}&limit={limit}{extra}")).await;
        let results = page["results"].as_array().expect("results").clone();
        let want: Vec<u64> = expected
            .iter()
            .copied()
            .filter(|&i| i >= offset)
            .take(limit)
            .collect();
        assert_eq!(indices(&results), want, "page at offset {offset}{extra}");
        let next = &page["next_offset"];
        let last = want.last().copied();
        let more = expected.iter().any(|&i| i >= offset && Some(i) > last);
        all.extend(results);
        match last {
            Some(last) if more => {
                assert_eq!(next, &json!(last + 1), "page at offset {offset}{extra}");
                offset = last + 1;
            }
            Some(last) if want.len() == limit && next == &json!(last + 1) => {
                // Nothing follows, which a full page may not know: one empty page ends it.
                offset = last + 1;
            }
            _ => {
                assert_eq!(
                    next,
                    &Value::Null,
                    "the last page ({offset}{extra}) has no next_offset"
                );
                return all;
            }
        }
    }
    panic!("more than 100 pages");
}

on_both_stores! {
async fn result_pages_with_boundaries_inside_chunks_give_every_item_once(backend: Backend) {
    let app = TestApp::spawn_on(backend, &[]).await;
    let id = app
        .submit(json!({"function": "square", "items": square_items(), "chunksize": 7}))
        .await;
    let job = app.wait_job(&id).await;
    assert_eq!(
        (
            job["status"].as_str(),
            job["done"].as_u64(),
            job["failed"].as_u64()
        ),
        (Some("completed"), Some(40), Some(2)),
        "{job}"
    );
    let all: Vec<u64> = (0..40).collect();
    // Chunks are 0..7, 7..14, …: these pages start and end inside them.
    for (start, limit) in [(0, 5), (0, 3), (0, 6), (9, 5), (13, 1), (0, 40), (0, 39)] {
        let results = walk(&app, &id, "", start, limit, &all).await;
        assert_eq!(
            indices(&results),
            (start..40).collect::<Vec<_>>(),
            "offset {start} limit {limit}"
        );
        results.iter().for_each(check_square_result);
    }
    // Only the item errors, paged one at a time: next_offset is still an item index.
    let failed = walk(&app, &id, "&failed=true", 0, 1, &BAD).await;
    assert_eq!(indices(&failed), BAD);
    failed.iter().for_each(check_square_result);
    let failed = walk(&app, &id, "&failed=true", 13, 5, &BAD).await;
    assert_eq!(indices(&failed), [33]);
    // Past the end: nothing, and nothing follows.
    let page = get_page(&app, &id, "offset=40&limit=5").await;
    assert_eq!(page, json!({"results": [], "next_offset": null}));
    // The largest page holds the whole job.
    let page = get_page(&app, &id, "limit=10000").await;
    assert_eq!(indices(page["results"].as_array().unwrap()), all);
    assert_eq!(page["next_offset"], Value::Null);

    for bad in ["limit=0", "limit=10001", "limit=-1", "limit=x", "offset=-1"] {
        let response = app.get(&format!("/v1/jobs/{id}/results?{bad}")).await;
        assert_eq!(response.status(), 400, "{bad}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["code"], "invalid_request", "{bad}: {problem}");
    }
}
}

on_both_stores! {
async fn completion_order_differs_from_index_order_and_resumes_after_last_event_id(backend: Backend) {
    let app = TestApp::spawn_on(backend, &[]).await;
    // Item 0 keeps one worker for 1.5 s; the other runs items 1..9 one after the other
    // (0.05 s each is too long to pipeline), so item 0 comes last.
    let mut items = vec![json!(1.5)];
    items.extend(std::iter::repeat_n(json!(0.05), 8));
    let id = app
        .submit(json!({"function": "sleep", "items": items, "chunksize": 1}))
        .await;
    let unordered = app.events(&id, "?order=completion", None).await;
    let results = result_events(&unordered);
    assert_eq!(event_ids(&results), (0..9).collect::<Vec<_>>());
    assert_eq!(
        event_indices(&results),
        [1, 2, 3, 4, 5, 6, 7, 8, 0],
        "the slow item 0 is recorded last"
    );
    assert_eq!(results[8].data, json!({"index": 0, "value": 1.5}));
    assert_eq!(unordered.last().unwrap().event, "end");
    // The same job in index order, by stream and by page.
    let ordered = app.events(&id, "", None).await;
    let ordered = result_events(&ordered);
    assert_eq!(event_indices(&ordered), (0..9).collect::<Vec<_>>());
    assert_eq!(event_ids(&ordered), (0..9).collect::<Vec<_>>());
    assert_eq!(indices(&app.results(&id).await), (0..9).collect::<Vec<_>>());

    // Resume in completion order with the header: exactly the rest, as first read.
    let tail = app.events(&id, "?order=completion", Some(3)).await;
    let tail = result_events(&tail);
    assert_eq!(event_ids(&tail), (4..9).collect::<Vec<_>>());
    let first: Vec<&Value> = results[4..].iter().map(|e| &e.data).collect();
    assert_eq!(tail.iter().map(|e| &e.data).collect::<Vec<_>>(), first);
    // The header wins over `after`.
    let tail = app.events(&id, "?order=completion&after=1", Some(5)).await;
    let tail = result_events(&tail);
    assert_eq!(event_ids(&tail), (6..9).collect::<Vec<_>>());
    assert_eq!(event_indices(&tail), [7, 8, 0]);
    let tail = app.events(&id, "?order=completion&after=5", None).await;
    assert_eq!(event_indices(&result_events(&tail)), [7, 8, 0]);

    // Chunks of 7: resume from the middle of one, in both orders.
    let id = app
        .submit(json!({"function": "echo", "items": (0..40).map(|i| format!("item {i}")).collect::<Vec<_>>(), "chunksize": 7}))
        .await;
    app.wait_job(&id).await;
    let unordered = app.events(&id, "?order=completion", None).await;
    let unordered = result_events(&unordered);
    assert_eq!(event_ids(&unordered), (0..40).collect::<Vec<_>>());
    let mut sorted = event_indices(&unordered);
    sorted.sort();
    assert_eq!(sorted, (0..40).collect::<Vec<_>>());
    // After 10: inside the second chunk recorded (positions 7..14).
    let tail = app.events(&id, "?order=completion", Some(10)).await;
    let tail = result_events(&tail);
    assert_eq!(event_ids(&tail), (11..40).collect::<Vec<_>>());
    assert_eq!(
        tail.iter().map(|e| &e.data).collect::<Vec<_>>(),
        unordered[11..].iter().map(|e| &e.data).collect::<Vec<_>>()
    );
    let tail = app
        .events(&id, "?order=completion&after=30", Some(10))
        .await;
    assert_eq!(
        event_ids(&result_events(&tail)),
        (11..40).collect::<Vec<_>>(),
        "Last-Event-ID wins over after"
    );
    // Index order, after 17 (inside chunk 14..21); the header again wins over `after`.
    for (query, header, from) in [
        ("", Some(17), 18),
        ("?after=3", Some(17), 18),
        ("?after=3", None, 4),
    ] {
        let tail = app.events(&id, query, header).await;
        let tail = result_events(&tail);
        assert_eq!(
            event_ids(&tail),
            (from..40).collect::<Vec<_>>(),
            "{query} {header:?}"
        );
        assert_eq!(event_indices(&tail), (from..40).collect::<Vec<_>>());
        assert!(
            tail.iter()
                .all(|e| e.data["value"] == format!("item {}", e.data["index"])),
            "{query} {header:?}"
        );
    }
}
}

/// Wait until at least `n` of a job's items have a result (bounded).
async fn wait_done(app: &TestApp, id: &str, n: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let job = app.job(id).await;
        if job["done"].as_u64().unwrap() >= n {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job never reached {n} done: {job}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ndjson_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).expect("an NDJSON line"))
        .collect()
}

on_both_stores! {
async fn streams_of_2500_results_of_a_running_job_end_with_the_job(backend: Backend) {
    let app = TestApp::spawn_on(backend, &[]).await;
    let total = 2500u64;
    // Distinct values, so that every result can be told from every other (short decimals:
    // poold's JSON parsing does not round-trip every float to the last bit).
    let item = |i: u64| (1000 + i) as f64 / 1e6;
    let id = app
        .submit(json!({"function": "sleep", "items": (0..total).map(item).collect::<Vec<_>>(), "chunksize": 7}))
        .await;
    let job = wait_done(&app, &id, 1).await;
    assert_eq!(job["status"], "running", "{job}");
    let check = |r: &Value| {
        let i = r["index"].as_u64().expect("index");
        assert!(i < total, "{r}");
        assert_eq!(r["value"].as_f64(), Some(item(i)), "{r}");
    };

    let ndjson_now = async {
        let response = app.results_ndjson(&id).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/x-ndjson");
        ndjson_lines(&response.text().await.unwrap())
    };
    let ndjson_at_end = async {
        let response = app
            .client
            .get(format!("{}/v1/jobs/{id}/results?wait=60", app.url))
            .header("accept", "application/x-ndjson")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        ndjson_lines(&response.text().await.unwrap())
    };
    let (ordered, unordered, now, at_end) = tokio::join!(
        app.events(&id, "", None),
        app.events(&id, "?order=completion", None),
        ndjson_now,
        ndjson_at_end,
    );

    for (name, events) in [("index", &ordered), ("completion", &unordered)] {
        let progress: Vec<&Value> = events
            .iter()
            .filter(|e| e.event == "progress")
            .map(|e| &e.data)
            .collect();
        let first = progress.first().expect("progress events");
        assert!(
            first["done"].as_u64().unwrap() < total,
            "{name}: the stream began while the job ran: {first}"
        );
        for pair in progress.windows(2) {
            assert!(pair[1]["done"].as_u64() >= pair[0]["done"].as_u64());
        }
        let end = events.last().unwrap();
        assert_eq!(end.event, "end", "{name}");
        assert_eq!(
            (end.data["status"].as_str(), end.data["done"].as_u64()),
            (Some("completed"), Some(total)),
            "{name}"
        );
        assert_eq!(
            events.iter().filter(|e| e.event == "end").count(),
            1,
            "{name}"
        );
        let results = result_events(events);
        results.iter().for_each(|e| check(&e.data));
        assert_eq!(
            event_ids(&results),
            (0..total).collect::<Vec<_>>(),
            "{name}"
        );
    }
    assert_eq!(
        event_indices(&result_events(&ordered)),
        (0..total).collect::<Vec<_>>()
    );
    let mut sorted = event_indices(&result_events(&unordered));
    sorted.sort();
    assert_eq!(sorted, (0..total).collect::<Vec<_>>());

    // Read while the job ran: some results, in index order, each right.
    now.iter().for_each(check);
    let seen = indices(&now);
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "index order, no duplicate"
    );
    // With `wait`: read once the job ended, every result.
    assert_eq!(indices(&at_end), (0..total).collect::<Vec<_>>());
    at_end.iter().for_each(check);
    let after = app.results_ndjson(&id).await.text().await.unwrap();
    assert_eq!(ndjson_lines(&after), at_end);
}
}

on_both_stores! {
async fn a_job_cancelled_mid_run_keeps_its_recorded_results_and_its_streams_skip_the_gaps(backend: Backend) {
    let app = TestApp::spawn_on(backend, &[]).await;
    // Chunks of 7; chunk 1 (items 7..14) hangs one worker while the other runs the rest.
    let items: Vec<f64> = (0..140)
        .map(|i| if (7..14).contains(&i) { 30.0 } else { 0.01 })
        .collect();
    let id = app
        .submit(json!({"function": "sleep", "items": items, "chunksize": 7}))
        .await;
    wait_done(&app, &id, 35).await;
    let response = app.post(&format!("/v1/jobs/{id}/cancel")).await;
    assert_eq!(response.status(), 200);
    let cancelled: Value = response.json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    let done = cancelled["done"].as_u64().unwrap();
    assert!((35..140).contains(&done), "{cancelled}");
    // Nothing else runs: the pool drains to idle with nothing queued.
    app.wait_pool("idle workers and nothing queued", |p| {
        p["queued_chunks"] == 0
            && p["workers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|w| w["state"] == "idle")
    })
    .await;
    let job = app.wait_job(&id).await;
    assert_eq!(
        (
            job["status"].as_str(),
            job["done"].as_u64(),
            job["total"].as_u64()
        ),
        (Some("cancelled"), Some(done), Some(140)),
        "{job}"
    );

    let results = app.results(&id).await;
    let recorded = indices(&results);
    assert_eq!(recorded.len() as u64, done);
    assert!(recorded.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(&recorded[..7], &[0, 1, 2, 3, 4, 5, 6]);
    assert!(
        recorded.iter().all(|i| !(7..14).contains(i)),
        "the hung chunk never ran"
    );
    // Whole chunks only.
    for i in &recorded {
        let chunk = i / 7 * 7;
        assert!(
            (chunk..chunk + 7).all(|j| recorded.contains(&j)),
            "{recorded:?}"
        );
    }
    for r in &results {
        assert_eq!(
            r,
            &json!({"index": r["index"], "value": 0.01}),
            "recorded values stay readable"
        );
    }
    let ndjson = app.results_ndjson(&id).await.text().await.unwrap();
    assert_eq!(ndjson_lines(&ndjson), results);

    let ordered = app.events(&id, "", None).await;
    let end = ordered.last().unwrap();
    assert_eq!(end.event, "end");
    assert_eq!(
        (
            end.data["status"].as_str(),
            end.data["done"].as_u64(),
            end.data["total"].as_u64()
        ),
        (Some("cancelled"), Some(done), Some(140)),
        "the end says the job was cancelled with {done} of 140 done: {:?}",
        end.data
    );
    let streamed = result_events(&ordered);
    assert_eq!(
        streamed.iter().map(|e| e.data.clone()).collect::<Vec<_>>(),
        results,
        "index order skips the items that never ran"
    );
    assert_eq!(event_ids(&streamed), recorded);
    // Resuming before the gap goes on across it.
    let tail = app.events(&id, "", Some(3)).await;
    let tail = result_events(&tail);
    assert_eq!(event_indices(&tail), recorded[4..]);
    let unordered = app.events(&id, "?order=completion", None).await;
    assert_eq!(unordered.last().unwrap().event, "end");
    let unordered = result_events(&unordered);
    assert_eq!(event_ids(&unordered), (0..done).collect::<Vec<_>>());
    let mut sorted = event_indices(&unordered);
    sorted.sort();
    assert_eq!(sorted, recorded);
}
}
