//! Slow, stalled and greedy clients (the hardening issue, items 6, 10 and 11): none of them can
//! hold poold's connections, delay its shutdown, or make a replay cost more than a page each.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::TestApp;
use serde_json::json;

fn address(app: &TestApp) -> String {
    app.url.trim_start_matches("http://").to_string()
}

/// Open a connection, send `head` and never read (the socket stays open until dropped).
fn stalled(address: &str, head: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(address).expect("connect");
    tcp.write_all(head.as_bytes()).expect("send");
    tcp
}

/// Whether the server closed the connection within `limit` (read gives EOF or an error).
fn closed_within(tcp: &mut TcpStream, limit: Duration) -> bool {
    tcp.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0; 4096];
    let deadline = Instant::now() + limit;
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
        if Instant::now() > deadline {
            return false;
        }
    }
}

#[tokio::test]
async fn item_6_sigterm_ends_streams_whose_clients_stopped_reading() {
    let mut app = TestApp::spawn_with(&["--shutdown-grace", "1", "--kill-grace", "1"]).await;
    let items: Vec<u64> = (0..300_000).collect();
    let id = app
        .submit(json!({"function": "square", "items": items, "chunksize": 1000}))
        .await;
    app.wait_job(&id).await;
    let address = address(&app);
    // Two clients ask for a replay (index and completion order) and never read it.
    let index = stalled(
        &address,
        &format!("GET /v1/jobs/{id}/events HTTP/1.1\r\nhost: poold\r\n\r\n"),
    );
    let completion = stalled(
        &address,
        &format!("GET /v1/jobs/{id}/events?order=completion HTTP/1.1\r\nhost: poold\r\n\r\n"),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let status = app.terminate();
    assert!(status.success(), "{status:?}; log:\n{}", app.log_text());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "poold took {:?} to stop",
        started.elapsed()
    );
    drop((index, completion));
}

#[tokio::test]
async fn item_10_half_sent_headers_and_idle_connections_are_closed() {
    let app = TestApp::spawn_with(&["--header-timeout", "1"]).await;
    let address = address(&app);
    let mut slow: Vec<TcpStream> = (0..200)
        .map(|_| stalled(&address, "GET /v1/pool HTTP/1.1\r\nhost: po"))
        .collect();
    let mut idle = stalled(&address, "");
    tokio::time::sleep(Duration::from_secs(2)).await;
    for tcp in &mut slow {
        assert!(
            closed_within(tcp, Duration::from_secs(3)),
            "a half-sent request kept its connection"
        );
    }
    assert!(
        closed_within(&mut idle, Duration::from_secs(3)),
        "an idle connection was kept"
    );
    assert_eq!(app.get("/v1/pool").await.status(), 200);
}

#[tokio::test]
async fn item_10_connections_over_the_cap_are_answered_503_at_once() {
    let app = TestApp::spawn_with(&["--max-connections", "8", "--header-timeout", "30"]).await;
    let address = address(&app);
    let held: Vec<TcpStream> = (0..8)
        .map(|_| stalled(&address, "GET /v1/pool HTTP/1.1\r\nhost: po"))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer = tokio::task::spawn_blocking(move || {
        let mut tcp = stalled(&address, "GET /v1/pool HTTP/1.1\r\nhost: poold\r\n\r\n");
        tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut answer = String::new();
        let _ = tcp.read_to_string(&mut answer);
        answer
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert!(
        answer.contains("too_many_connections") && answer.contains("retry-after"),
        "{answer}"
    );
    drop(held);
    // Once those are gone, requests are served again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(r) = app.client.get(format!("{}/v1/pool", app.url)).send().await
            && r.status() == 200
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not served after the held connections closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn item_11_a_completion_order_replay_costs_a_page_at_a_time() {
    let app = TestApp::spawn().await;
    let items: Vec<u64> = (0..300_000).collect();
    let id = app
        .submit(json!({"function": "square", "items": items, "chunksize": 1000}))
        .await;
    app.wait_job(&id).await;
    let started = Instant::now();
    let events = app.events(&id, "?order=completion", None).await;
    let took = started.elapsed();
    let results: Vec<_> = events.iter().filter(|e| e.event == "result").collect();
    assert_eq!(results.len(), 300_000);
    for (position, event) in results.iter().enumerate() {
        assert_eq!(event.id.as_deref(), Some(position.to_string().as_str()));
    }
    let mut indices: Vec<u64> = results
        .iter()
        .map(|e| e.data["index"].as_u64().unwrap())
        .collect();
    indices.sort_unstable();
    assert_eq!(indices, items);
    // Paging by offset made this quadratic (19 s for 300,000 results); by position it takes
    // about as long as an index-order replay (a fraction of a second).
    assert!(took < Duration::from_secs(8), "the replay took {took:?}");

    // A resume from the middle goes on at the next position.
    let tail = app.events(&id, "?order=completion", Some(149_999)).await;
    let tail: Vec<_> = tail.iter().filter(|e| e.event == "result").collect();
    assert_eq!(tail.len(), 150_000);
    assert_eq!(tail[0].id.as_deref(), Some("150000"));
    assert_eq!(tail[0].data, results[150_000].data);
}
