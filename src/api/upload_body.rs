//! The request body of an NDJSON upload as lines, for `ingest.rs`; and the one way a client
//! stops its own upload: the trailer field [`UPLOAD_ERROR_TRAILER`].
//!
//! A client streaming items that it produces as it goes (a Python generator, say) may fail
//! half-way: its input raises. HTTP has a place for "the body went wrong after the headers were
//! sent": a trailer field after the last chunk of a chunked body. With
//! `Poold-Upload-Error: <reason>`, the upload ends as stopped by its client: the items received
//! run, then the job fails with that reason (see `ingest.rs`). Any other trailer is ignored.

use std::fmt;
use std::io;
use std::pin::Pin;

use axum::body::{Body, Bytes, HttpBody};
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tokio_util::io::StreamReader;

/// The trailer field that stops an upload, with the client's reason as its value.
pub const UPLOAD_ERROR_TRAILER: &str = "poold-upload-error";

/// The most of the client's reason kept (it becomes the job's `error`).
const MAX_REASON_CHARS: usize = 1000;

pub type Lines = FramedRead<StreamReader<BoxStream<'static, io::Result<Bytes>>, Bytes>, LinesCodec>;

/// The body's lines, at most `max_line` bytes each. A [`UPLOAD_ERROR_TRAILER`] comes out as an
/// I/O error that [`client_stopped`] recognizes, after every line before it.
pub fn lines(body: Body, max_line: usize) -> Lines {
    let data = futures::stream::unfold(Some(body), |body| async move {
        let mut body = body?;
        loop {
            let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
            match frame {
                None => return None,
                Some(Err(e)) => return Some((Err(io::Error::other(e)), None)),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => return Some((Ok(data), Some(body))),
                    Err(frame) => {
                        let reason = frame
                            .trailers_ref()
                            .and_then(|trailers| trailers.get(UPLOAD_ERROR_TRAILER));
                        if let Some(reason) = reason {
                            let reason = String::from_utf8_lossy(reason.as_bytes());
                            let reason = reason.chars().take(MAX_REASON_CHARS).collect();
                            return Some((Err(io::Error::other(ClientStopped(reason))), None));
                        }
                    }
                },
            }
        }
    });
    FramedRead::new(
        StreamReader::new(data.boxed()),
        LinesCodec::new_with_max_length(max_line),
    )
}

/// The client's reason, when this error is its [`UPLOAD_ERROR_TRAILER`].
pub fn client_stopped(error: &LinesCodecError) -> Option<&str> {
    match error {
        LinesCodecError::Io(e) => e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<ClientStopped>())
            .map(|stopped| stopped.0.as_str()),
        LinesCodecError::MaxLineLengthExceeded => None,
    }
}

#[derive(Debug)]
struct ClientStopped(String);

impl fmt::Display for ClientStopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the client stopped the upload: {}", self.0)
    }
}

impl std::error::Error for ClientStopped {}
