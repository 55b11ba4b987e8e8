//! Security under abuse: signed webhooks (forged, expired, rotated, replayed,
//! misdirected, to made-up vendors), Idempotency-Key races on both backends,
//! API-key isolation, hostile and malformed requests (each answered with the
//! JSON error body), slow bodies, slow-loris clients, the connection caps
//! (total and per address), HTTP/2 idle and age limits, log lines that file
//! names cannot break, and the OpenAPI document against the routes actually
//! served. The slow, large-scale cases are `make hostile` (host/tests/hostile).

mod connections;
mod logs;
mod openapi;
mod properties;
mod requests;
mod webhooks;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::app::{plugin, plugins_dir};

const LONG: Duration = Duration::from_secs(30);

fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn sample_plugins() -> tempfile::TempDir {
    plugins_dir(&[plugin("sync"), plugin("async")])
}

/// Sends `prefix` and then nothing; returns the socket.
async fn stalled(addr: SocketAddr, prefix: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    if !prefix.is_empty() {
        s.write_all(prefix).await.unwrap();
    }
    s
}

/// Reads until the server closes; returns what it sent (errors count as closed).
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()
    .map(|_| out)
}

/// Reads one HTTP/1.1 response with a `content-length` body: (status, the
/// head in lowercase, the body as JSON or `Null`). `None` if the connection
/// closed or `limit` passed first.
async fn read_response(s: &mut TcpStream, limit: Duration) -> Option<(u16, String, serde_json::Value)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if got.len() >= end + 4 + length {
                    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
                    let body = serde_json::from_slice(&got[end + 4..end + 4 + length]).unwrap_or_default();
                    return Some((status, head, body));
                }
            }
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()
    .flatten()
}

/// Asserts the service's own error answer: `status`, JSON, `error.code`
/// and a non-empty `error.message`.
fn assert_json_error(what: &str, answer: Option<(u16, String, serde_json::Value)>, status: u16, code: &str) {
    let Some((got, head, body)) = answer else { panic!("{what}: no complete answer") };
    assert_eq!((got, body["error"]["code"].as_str()), (status, Some(code)), "{what}: {head}\n{body}");
    assert!(head.contains("content-type: application/json"), "{what}: {head}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {body}");
}

/// An HTTP/2 (prior knowledge, cleartext) connection to `addr`, and the task
/// driving it (finished once the server closes the connection).
async fn h2c(
    addr: SocketAddr,
) -> (hyper::client::conn::http2::SendRequest<axum::body::Body>, tokio::task::JoinHandle<()>) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    (
        send,
        tokio::spawn(async move {
            let _ = conn.await;
        }),
    )
}
