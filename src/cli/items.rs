//! Items from a file or stdin, uploaded as an NDJSON streaming ingest (`POST /v1/jobs` with
//! `Content-Type: application/x-ndjson`): line 1 the job, then one item per line. A thread
//! reads the input and hands the body over in ~64 KiB pieces, so memory stays small whatever
//! the input's size.
//!
//! The input is JSON lines (one item per line; blank lines skipped) or one JSON array of
//! items (possibly pretty-printed over many lines). Rule: input holding exactly one JSON value
//! that is an array is that array of items; otherwise each line is an item.

use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::anyhow;
use reqwest::{Method, header};
use serde::de::{self, IgnoredAny, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::client::Client;
use super::follow::Progress;

/// Bytes of lines handed to the HTTP body at a time.
const PIECE: usize = 64 * 1024;

type Piece = Result<String, std::io::Error>;

/// Upload `spec` and the items read from `input`; returns the job the server answered with
/// (once the upload has ended). With `show`, shows how many items were sent meanwhile.
pub async fn upload(
    client: &Client,
    spec: &Value,
    input: Box<dyn Read + Send>,
    show: bool,
) -> anyhow::Result<Value> {
    let (tx, rx) = mpsc::channel::<Piece>(4);
    let sent = Arc::new(AtomicU64::new(0));
    let first = format!("{spec}\n");
    let counter = sent.clone();
    let reader = std::thread::spawn(move || -> anyhow::Result<()> {
        let mut body = Body {
            tx,
            piece: first,
            sent: counter,
        };
        let read = read_items(BufReader::new(input), &mut body).and_then(|()| body.flush());
        match read {
            // The server stopped reading: its answer says why.
            Err(e) if e.is::<UploadClosed>() => Ok(()),
            Err(e) => {
                // Abort the upload: the server then fails the partial job.
                let _ = body
                    .tx
                    .blocking_send(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
            Ok(()) => Ok(()),
        }
    });
    let request = client
        .request(Method::POST, "/v1/jobs")
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(reqwest::Body::wrap_stream(ReceiverStream::new(rx)));
    let mut answer = std::pin::pin!(client.send(request));
    let mut progress = show.then(Progress::new);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let answer = loop {
        tokio::select! {
            answer = &mut answer => break answer,
            _ = tick.tick() => {
                if let Some(progress) = progress.as_mut() {
                    progress.uploading(sent.load(Ordering::Relaxed));
                }
            }
        }
    };
    if let Some(Progress::Bar(bar)) = progress {
        bar.finish_and_clear();
    }
    // The input's own error explains a broken upload better than the HTTP error does.
    match reader.join() {
        Ok(Err(e)) => return Err(e),
        Ok(Ok(())) => {}
        Err(_) => return Err(anyhow!("the thread reading the items panicked")),
    }
    let job: Value = answer?
        .json()
        .await
        .map_err(|e| anyhow!("the server's answer is not JSON: {e}"))?;
    Ok(job)
}

/// The request ended before the whole input was sent (the server answered early).
#[derive(Debug, thiserror::Error)]
#[error("the upload ended before all items were sent")]
struct UploadClosed;

/// The request body being written: whole lines, handed over a piece at a time.
struct Body {
    tx: mpsc::Sender<Piece>,
    piece: String,
    sent: Arc<AtomicU64>,
}

impl Body {
    /// Add one item (JSON text without line breaks).
    fn item(&mut self, item: &str) -> anyhow::Result<()> {
        self.piece.push_str(item);
        self.piece.push('\n');
        self.sent.fetch_add(1, Ordering::Relaxed);
        if self.piece.len() >= PIECE {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if self.piece.is_empty() {
            return Ok(());
        }
        let piece = std::mem::take(&mut self.piece);
        self.tx
            .blocking_send(Ok(piece))
            .map_err(|_| UploadClosed.into())
    }
}

/// Read the input (see the module doc for the two formats) and add each item to `body`.
fn read_items(mut input: impl BufRead, body: &mut Body) -> anyhow::Result<()> {
    let Some((first, first_no)) = next_line(&mut input, 0)? else {
        return Ok(()); // no items
    };
    if serde_json::from_str::<IgnoredAny>(&first).is_err() {
        // Not a value on its own line: the start of an array spread over lines.
        let rest = std::io::Cursor::new(first.into_bytes()).chain(input);
        return read_array(rest, body);
    }
    let Some((second, second_no)) = next_line(&mut input, first_no)? else {
        if first.starts_with('[') {
            return read_array(first.as_bytes(), body);
        }
        return body.item(&first);
    };
    body.item(&first)?;
    line_item(body, &second, second_no)?;
    let mut line_no = second_no;
    while let Some((line, no)) = next_line(&mut input, line_no)? {
        line_item(body, &line, no)?;
        line_no = no;
    }
    Ok(())
}

/// One line of JSON lines input, checked here so that an error names the input's own line.
fn line_item(body: &mut Body, line: &str, line_no: u64) -> anyhow::Result<()> {
    serde_json::from_str::<IgnoredAny>(line)
        .map_err(|e| anyhow!("line {line_no} of the items is not JSON: {e}"))?;
    body.item(line)
}

/// The next non-blank line (trimmed) and its number.
fn next_line(input: &mut impl BufRead, mut line_no: u64) -> anyhow::Result<Option<(String, u64)>> {
    let mut line = String::new();
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        line_no += 1;
        let trimmed = line.trim();
        if !trimmed.is_empty() {
            return Ok(Some((trimmed.to_string(), line_no)));
        }
    }
}

/// Stream the elements of one top-level JSON array.
fn read_array(input: impl Read, body: &mut Body) -> anyhow::Result<()> {
    struct Elements<'a>(&'a mut Body);
    impl<'de> Visitor<'de> for Elements<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON array of items, or one JSON item per line")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while let Some(item) = seq.next_element::<Box<RawValue>>()? {
                // Line breaks in JSON text are whitespace between tokens: a space will do.
                let text = item.get().replace(['\n', '\r'], " ");
                self.0.item(&text).map_err(de::Error::custom)?;
            }
            Ok(())
        }
    }
    let mut de = serde_json::Deserializer::from_reader(input);
    de::Deserializer::deserialize_seq(&mut de, Elements(body))
        .map_err(|e| anyhow!("the items are not valid JSON: {e}"))?;
    de.end()
        .map_err(|e| anyhow!("unexpected text after the array of items: {e}"))
}
