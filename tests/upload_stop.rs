//! How an NDJSON upload ends other than with its last item, against the real binary, over a
//! plain TCP connection (so the test writes the chunked body, trailer included, byte for
//! byte): a client whose input failed ends the body with a `Poold-Upload-Error` trailer, and
//! the items it sent run before the job fails with its reason; and a refused upload is answered
//! at once, while the client is still sending.

mod common;

use std::time::Duration;

use common::TestApp;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An NDJSON upload on a connection of its own, its body sent chunk by chunk.
struct RawUpload {
    stream: TcpStream,
}

impl RawUpload {
    async fn start(app: &TestApp, first_line: Value) -> Self {
        let address = app.url.trim_start_matches("http://");
        let mut stream = TcpStream::connect(address).await.expect("connect");
        let head = format!(
            "POST /v1/jobs HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/x-ndjson\r\n\
             Transfer-Encoding: chunked\r\nTrailer: Poold-Upload-Error\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut upload = RawUpload { stream };
        upload.lines(&[first_line.to_string()]).await;
        upload
    }

    async fn lines(&mut self, lines: &[String]) {
        let data = lines.iter().map(|l| format!("{l}\n")).collect::<String>();
        let chunk = format!("{:x}\r\n{data}\r\n", data.len());
        self.stream.write_all(chunk.as_bytes()).await.unwrap();
    }

    /// End the body with the trailer that says the client's input failed.
    async fn stop(&mut self, reason: &str) {
        let end = format!("0\r\nPoold-Upload-Error: {reason}\r\n\r\n");
        self.stream.write_all(end.as_bytes()).await.unwrap();
    }

    /// The answer, as soon as it has come (whether the body was ended or not): status and
    /// JSON body.
    async fn answer(mut self) -> (u16, Value) {
        let read = async {
            let mut raw = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = self.stream.read(&mut buf).await.expect("read the answer");
                assert!(
                    n > 0,
                    "the connection closed without a whole answer: {raw:?}"
                );
                raw.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&raw).into_owned();
                let Some((head, body)) = text.split_once("\r\n\r\n") else {
                    continue;
                };
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .expect("a content-length");
                if body.len() >= length {
                    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                    return (
                        status,
                        serde_json::from_str(&body[..length]).expect("a JSON body"),
                    );
                }
            }
        };
        // Well under the 30 s poold gives a refused body to end before it closes.
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("an answer in time")
    }
}

#[tokio::test]
async fn a_client_whose_input_failed_gets_its_items_run_then_the_job_failed_with_its_reason() {
    let app = TestApp::spawn().await;
    let mut upload = RawUpload::start(&app, json!({"function": "sleep", "chunksize": 2})).await;
    // Five items: two whole chunks and a partial one, which still runs.
    let items: Vec<String> = (0..5).map(|_| "0.05".to_string()).collect();
    upload.lines(&items).await;
    upload
        .stop("item 5 of the input raised KeyError: 'gone'")
        .await;
    let (status, job) = upload.answer().await;
    assert_eq!(status, 201, "{job}");
    assert_eq!(
        (
            job["status"].as_str(),
            job["done"].as_u64(),
            job["failed"].as_u64()
        ),
        (Some("failed"), Some(5), Some(0))
    );
    assert_eq!(
        job["error"],
        "its client stopped the upload after 5 items: item 5 of the input raised KeyError: 'gone'"
    );
    let indices: Vec<u64> = app
        .results(job["id"].as_str().unwrap())
        .await
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indices, [0, 1, 2, 3, 4]);

    // Stopped before any item: failed at once.
    let mut upload = RawUpload::start(&app, json!({"function": "square"})).await;
    upload.stop("the input raised at once").await;
    let (status, job) = upload.answer().await;
    assert_eq!(
        (status, job["status"].as_str(), job["done"].as_u64()),
        (201, Some("failed"), Some(0))
    );
    assert!(
        job["error"]
            .as_str()
            .unwrap()
            .ends_with("the input raised at once")
    );
}

#[tokio::test]
async fn a_refused_upload_is_answered_while_the_client_still_sends() {
    let app = TestApp::spawn().await;
    for (line1, code) in [
        (json!({"function": "no_such_function"}), "unknown_function"),
        (
            json!({"function": "square", "codec": "pickle"}),
            "unsupported_codec",
        ),
    ] {
        let mut upload = RawUpload::start(&app, line1).await;
        upload.lines(&["1".to_string(), "2".to_string()]).await;
        // The body is not ended: the answer must not wait for it.
        let (status, problem) = upload.answer().await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (422, Some(code)),
            "{problem}"
        );
    }
    // A bad item line mid-upload too: the job is failed and the answer comes at once.
    let mut upload = RawUpload::start(&app, json!({"function": "square", "chunksize": 1})).await;
    upload
        .lines(&["1".to_string(), "{not json".to_string()])
        .await;
    let (status, problem) = upload.answer().await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (400, Some("invalid_request"))
    );
    assert!(
        problem["detail"].as_str().unwrap().contains("line 3"),
        "{problem}"
    );
}
