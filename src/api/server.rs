//! Serving HTTP connections: the accept loop that `app::run` runs with the API's router.
//!
//! It is `axum::serve` with the bounds a public service needs (axum's own loop has none):
//! - a cap on open connections (`--max-connections`): past it, a new connection gets a `503`
//!   problem with `Retry-After` and is closed at once, so overload is answered, never queued;
//! - a header read timeout (`--header-timeout`): a client must send a request's headers within
//!   it, and an idle keep-alive connection is closed after it (hyper starts the same timer
//!   while it waits for the next request), so half-sent requests cannot hold connections;
//! - a bounded graceful stop: when `stop` is cancelled it stops accepting and lets open
//!   requests finish, but only for `grace`; connections still open then (a client that stopped
//!   reading a stream) are dropped.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Bounds on the connections the server keeps.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    /// How long open requests may go on once `stop` is cancelled.
    pub grace: Duration,
}

/// The answer to a connection over the cap, written without reading its request.
const REFUSAL_BODY: &str = r#"{"type":"urn:poold:problem:too_many_connections","title":"Service Unavailable","status":503,"detail":"the server has as many connections open as it takes (--max-connections); retry later","code":"too_many_connections"}"#;

/// Serve `app` on `listener` until `stop` is cancelled and open requests ended (or `grace`
/// passed).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // HTTP/1.1 only: what clients of this API speak. (Serving HTTP/2 without TLS too would
    // mean sniffing the first bytes of each connection, a read with no timeout.)
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut connections = JoinSet::new();
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        while connections.try_join_next().is_some() {}
        // No Nagle delay: an SSE event or a small JSON answer leaves at once, not 40 ms later.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY");
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            connections.spawn(refuse(tcp));
            continue;
        };
        let service = app
            .clone()
            .map_request(|request: axum::http::Request<Incoming>| {
                request.map(axum::body::Body::new)
            });
        let connection =
            builder.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        connections.spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(limits.grace) => {
            tracing::warn!(
                connections = connections.len(),
                "closing connections still open after the grace period"
            );
        }
    }
    connections.shutdown().await;
}

/// Answer a connection over the cap with a 503 and close it, bounded in time so that a client
/// that does not read cannot keep it. What it sent is read and dropped for a moment first:
/// closing a socket with unread data resets it, and the client would not see the answer.
async fn refuse(mut tcp: TcpStream) {
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{REFUSAL_BODY}",
        REFUSAL_BODY.len()
    );
    let answer = async {
        tcp.write_all(response.as_bytes()).await?;
        tcp.shutdown().await?;
        tokio::io::copy(&mut tcp, &mut tokio::io::sink()).await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
}
