//! Serving the router over TCP. Done by hand rather than with `axum::serve`
//! so that slow or idle clients cannot exhaust the server:
//! - a client must send a request's whole header within `header_read_timeout`
//!   (hyper's HTTP/1 timer; our own guard covers the protocol sniffing before
//!   it, which has no timer of its own);
//! - headers are capped at `max_header_bytes` (431 above);
//! - at most `max_connections` connections are open; one more is answered
//!   503 + Retry-After at once and closed;
//! - on shutdown the listener closes at once and in-flight requests finish.
//!
//! Request-level limits (body size, request timeout, load shedding) are tower
//! layers in `api::router`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use hyper::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::config::ApiSettings;
use crate::telemetry;

/// Open connections at once, by default (each is a file descriptor).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// The largest request header, by default (nginx's default is 32 KiB too).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 32 * 1024;
/// How long a refused connection is kept to deliver its 503.
const REFUSAL_LINGER: Duration = Duration::from_millis(500);
/// hyper refuses a smaller HTTP/1 read buffer.
const MIN_BUF: usize = 8192;

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
}

impl ServeOptions {
    pub fn from_settings(api: &ApiSettings) -> ServeOptions {
        ServeOptions {
            header_read_timeout: api.header_read_timeout,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
        }
    }
}

/// Sent, unasked, to a connection over the cap, which is then closed.
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 84\r\n\r\n\
{\"error\":{\"code\":\"overloaded\",\"message\":\"too many open connections; retry shortly\"}}";

/// Serves `router` on `listener` until `shutdown` resolves, then stops
/// accepting and returns once every open connection has finished its
/// in-flight requests (callers bound that wait with their grace period).
pub async fn serve(listener: TcpListener, router: Router, opts: ServeOptions, shutdown: impl Future<Output = ()>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout)
        .max_buf_size(opts.max_header_bytes.max(MIN_BUF));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(opts.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let permits = Arc::new(Semaphore::new(opts.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Most likely out of file descriptors: give some back time to close.
                    tracing::error!(error = %e, "accept failed");
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refuse(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let seen_request = Arc::new(AtomicBool::new(false));
        let service = {
            let (router, seen) = (router.clone(), seen_request.clone());
            service_fn(move |req: Request<Incoming>| {
                seen.store(true, Ordering::Relaxed);
                router.clone().oneshot(req)
            })
        };
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned());
        let header_deadline = opts.header_read_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let _open = OpenGauge::new();
            let mut conn = std::pin::pin!(conn);
            // hyper's HTTP/1 timer starts only once the protocol is known; a
            // client that sends nothing (or half an HTTP/2 preface) is closed
            // here instead.
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = tokio::time::sleep(header_deadline) => {
                    if !seen_request.load(Ordering::Relaxed) {
                        ::metrics::counter!(telemetry::HTTP_HEADER_TIMEOUTS).increment(1);
                        return;
                    }
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::debug!(open = graceful.count(), "listener closed; waiting for open connections");
    graceful.shutdown().await;
}

/// Answers 503 and closes. The client's request is read and discarded
/// briefly first: closing on unread data would reset the connection and
/// could lose the answer. Bounded in time, so a flood cannot pile these up.
fn refuse(mut stream: TcpStream) {
    ::metrics::counter!(telemetry::HTTP_CONNECTIONS_REFUSED).increment(1);
    tokio::spawn(async move {
        let _ = tokio::time::timeout(REFUSAL_LINGER, async {
            stream.write_all(OVER_CAPACITY).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 4096];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<_, std::io::Error>(())
        })
        .await;
    });
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}

/// Keeps `vendorhost_http_connections` right however a connection ends.
struct OpenGauge;

impl OpenGauge {
    fn new() -> OpenGauge {
        ::metrics::gauge!(telemetry::HTTP_CONNECTIONS).increment(1.0);
        OpenGauge
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        ::metrics::gauge!(telemetry::HTTP_CONNECTIONS).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_a_well_formed_response() {
        let text = std::str::from_utf8(OVER_CAPACITY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "overloaded");
    }
}
