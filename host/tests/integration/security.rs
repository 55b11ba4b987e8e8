//! Security under abuse: signed webhooks (forged, expired, rotated, replayed,
//! misdirected), Idempotency-Key races on both backends, API-key isolation,
//! hostile bodies, slow-loris clients, the connection cap, and the OpenAPI
//! document against the routes actually served.

mod connections;
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
