//! Serving the router over TCP. Done by hand rather than with `axum::serve`
//! so that slow, idle or greedy clients cannot exhaust the server:
//! - a client must send a request's whole header within `header_read_timeout`
//!   (hyper's HTTP/1 timer; our own guard covers the protocol sniffing before
//!   it, which has no timer of its own);
//! - headers are capped at `max_header_bytes`: 431 with the JSON error body,
//!   for HTTP/1 (hyper's own empty answers to requests it cannot parse are
//!   rewritten on the way out, see `Rewrite`) and HTTP/2 (checked here,
//!   below hyper's slightly larger limit);
//! - at most `max_connections` connections are open, and at most
//!   `max_connections_per_ip` from one address (IPv6: one /64); one more is
//!   answered 503 (429 for the per-address cap) + Retry-After at once and
//!   closed;
//! - a connection with no request in flight for `idle_timeout` is closed, and
//!   any connection is asked to close after `max_connection_age` (HTTP/2:
//!   GOAWAY, in-flight streams finish);
//! - on shutdown the listener closes at once and in-flight requests finish.
//!
//! Request-level limits (body size, body deadline and memory, request
//! timeout, load shedding) are in `api::router` and `api::body`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::response::IntoResponse;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;
use tower::ServiceExt;

use super::error::ApiError;
use crate::config::ApiSettings;
use crate::telemetry;

/// Open connections at once, by default (each is a file descriptor).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// The largest request header, by default (nginx's default is 32 KiB too).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 32 * 1024;
/// How long a refused connection is kept to deliver its 503.
const REFUSAL_LINGER: Duration = Duration::from_millis(500);
/// Refused connections being answered at once; past it a refused connection
/// is closed without an answer (a flood cannot pile up lingering sockets).
const MAX_REFUSALS: usize = 1024;
/// hyper refuses a smaller HTTP/1 read buffer.
const MIN_BUF: usize = 8192;

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    /// Open connections from one address (IPv6: one /64); 0 for no cap.
    pub max_connections_per_ip: usize,
    pub idle_timeout: Duration,
    pub max_connection_age: Duration,
}

impl Default for ServeOptions {
    fn default() -> ServeOptions {
        ServeOptions::from_settings(&ApiSettings::default())
    }
}

impl ServeOptions {
    pub fn from_settings(api: &ApiSettings) -> ServeOptions {
        ServeOptions {
            header_read_timeout: api.header_read_timeout,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_connections_per_ip: api.max_connections_per_ip,
            idle_timeout: api.idle_timeout,
            max_connection_age: api.max_connection_age,
        }
    }
}

/// Sent, unasked, to a connection over the cap, which is then closed.
static OVER_CAPACITY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    ApiError {
        retry_after: Some(1),
        ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", "too many open connections; retry shortly")
    }
    .http1_bytes()
});

/// Sent to a connection over the per-address cap.
static OVER_PER_IP: LazyLock<Vec<u8>> = LazyLock::new(|| {
    ApiError {
        retry_after: Some(1),
        ..ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_connections",
            "too many open connections from your address; reuse one, or retry shortly",
        )
    }
    .http1_bytes()
});

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
        // Twice ours, so the JSON 431 below answers first; a client that
        // honours the advertised limit never meets h2's own empty 431.
        .max_header_list_size(u32::try_from(opts.max_header_bytes.saturating_mul(2)).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let permits = Arc::new(Semaphore::new(opts.max_connections.max(1)));
    let per_ip = PerIp::new(opts.max_connections_per_ip);
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    // Connections watch `stop`; each holds a `live` sender, so `recv` on
    // `drained` returns once the last one has ended.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (live, mut drained) = mpsc::channel::<()>(1);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
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
        let Some(slot) = per_ip.enter(peer.ip()) else {
            refuse(stream, &OVER_PER_IP, "per_ip", &refusals);
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refuse(stream, &OVER_CAPACITY, "total", &refusals);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let service = {
            let (router, activity, limit) = (router.clone(), activity.clone(), opts.max_header_bytes);
            service_fn(move |req: Request<Incoming>| {
                let busy = activity.begin();
                let router = router.clone();
                async move {
                    let _busy = busy;
                    if req.version() == Version::HTTP_2 && header_list_size(&req) > limit {
                        return Ok::<_, Infallible>(ApiError::headers_too_large(limit).into_response());
                    }
                    router.oneshot(req).await
                }
            })
        };
        let io = TokioIo::new(Rewrite::new(stream, opts.max_header_bytes));
        let conn = builder.serve_connection(io, service).into_owned();
        let (opts, mut stop, live) = (opts.clone(), stop_rx.clone(), live.clone());
        tokio::spawn(async move {
            let (_permit, _slot, _live, _open) = (permit, slot, live, OpenGauge::new());
            let mut conn = std::pin::pin!(conn);
            // hyper's HTTP/1 timer starts only once the protocol is known; a
            // client that sends nothing (or half an HTTP/2 preface) is closed
            // here instead.
            let header_deadline = tokio::time::sleep(opts.header_read_timeout);
            let too_old = tokio::time::sleep(opts.max_connection_age);
            let idle = tokio::time::sleep(opts.idle_timeout);
            tokio::pin!(header_deadline, too_old, idle);
            let (mut header_checked, mut closing) = (false, false);
            loop {
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    _ = &mut header_deadline, if !header_checked => {
                        header_checked = true;
                        if activity.requests() == 0 {
                            ::metrics::counter!(telemetry::HTTP_HEADER_TIMEOUTS).increment(1);
                            break;
                        }
                    }
                    _ = stop.wait_for(|s| *s), if !closing => {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    _ = &mut too_old, if !closing => {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    _ = &mut idle, if !closing => match activity.idle_for() {
                        Some(quiet) if quiet >= opts.idle_timeout => {
                            closing = true;
                            conn.as_mut().graceful_shutdown();
                        }
                        Some(quiet) => idle.as_mut().reset(Instant::now() + (opts.idle_timeout - quiet)),
                        None => idle.as_mut().reset(Instant::now() + opts.idle_timeout),
                    },
                }
            }
        });
    }
    drop(listener);
    tracing::debug!("listener closed; waiting for open connections");
    let _ = stop_tx.send(true);
    drop(live);
    let _ = drained.recv().await;
}

/// The size HTTP/2 counts for a header list (RFC 7540 §6.5.2: name, value
/// and 32 per field), with the request target for the pseudo-headers.
fn header_list_size<B>(req: &Request<B>) -> usize {
    let fields: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 32).sum();
    fields + req.uri().to_string().len() + req.method().as_str().len() + 4 * 32
}

/// Answers `answer` and closes. The client's request is read and discarded
/// briefly first: closing on unread data would reset the connection and
/// could lose the answer. Bounded in time and in number (`MAX_REFUSALS`;
/// past it the socket is just closed), so a flood cannot pile these up.
fn refuse(mut stream: TcpStream, answer: &'static [u8], cap: &'static str, refusals: &Arc<Semaphore>) {
    ::metrics::counter!(telemetry::HTTP_CONNECTIONS_REFUSED, "cap" => cap).increment(1);
    let Ok(answering) = refusals.clone().try_acquire_owned() else { return };
    tokio::spawn(async move {
        let _answering = answering;
        let _ = tokio::time::timeout(REFUSAL_LINGER, async {
            stream.write_all(answer).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 4096];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<_, io::Error>(())
        })
        .await;
    });
}

fn is_connection_error(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}

/// Open connections per client address. An address's entry goes when its
/// last connection does, so the map holds only addresses connected now.
#[derive(Clone)]
struct PerIp {
    cap: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One connection's place in `PerIp`; gives it back on drop.
struct IpSlot {
    owner: Option<(PerIp, IpAddr)>,
}

impl PerIp {
    fn new(cap: usize) -> PerIp {
        PerIp { cap, open: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// IPv4 as is (also when mapped into IPv6); IPv6 by its /64, which one
    /// client usually has whole.
    fn key(ip: IpAddr) -> IpAddr {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let mut o = v6.octets();
                o[8..].fill(0);
                IpAddr::V6(o.into())
            }
            v4 => v4,
        }
    }

    fn enter(&self, ip: IpAddr) -> Option<IpSlot> {
        if self.cap == 0 {
            return Some(IpSlot { owner: None });
        }
        let key = PerIp::key(ip);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(key).or_insert(0);
        if *n >= self.cap {
            return None;
        }
        *n += 1;
        Some(IpSlot { owner: Some((self.clone(), key)) })
    }

    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.open.lock().map(|m| m.len()).unwrap_or(0)
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Some((per_ip, key)) = self.owner.take() {
            let mut open = per_ip.open.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = open.get_mut(&key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    open.remove(&key);
                }
            }
        }
    }
}

/// Requests on one connection: how many started, how many are in flight,
/// and when the last one ended (for the idle timeout).
struct Activity {
    opened: Instant,
    started: AtomicU64,
    in_flight: AtomicUsize,
    /// Milliseconds after `opened`.
    last_end: AtomicU64,
}

/// One request in flight; ends it on drop.
struct Busy(Arc<Activity>);

impl Activity {
    fn new() -> Activity {
        Activity {
            opened: Instant::now(),
            started: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            last_end: AtomicU64::new(0),
        }
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    fn requests(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// How long nothing has been in flight; `None` while something is.
    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since_open = self.opened.elapsed();
        Some(since_open.saturating_sub(Duration::from_millis(self.last_end.load(Ordering::Relaxed))))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let at = u64::try_from(self.0.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.last_end.store(at, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The connection's socket, with one change on the way out: hyper answers
/// an HTTP/1 request it cannot parse (bad request line or headers, headers
/// over the buffer, a URI too long) itself, with an empty 400/414/431. That
/// one write is replaced by the same status with the service's JSON error.
struct Rewrite<S> {
    inner: S,
    header_limit: usize,
    /// The replacement being written, how much of it is out, and the length
    /// of hyper's write it stands for.
    pending: Option<(Vec<u8>, usize, usize)>,
}

impl<S> Rewrite<S> {
    fn new(inner: S, header_limit: usize) -> Rewrite<S> {
        Rewrite { inner, header_limit, pending: None }
    }
}

/// The status of `buf` if it is exactly hyper's automatic error answer: an
/// HTTP/1.1 4xx/5xx head with `content-length: 0` and nothing after it.
/// The service's own error answers always carry a JSON body.
fn bare_error_status(buf: &[u8]) -> Option<StatusCode> {
    let rest = buf.strip_prefix(b"HTTP/1.1 ")?;
    let status = StatusCode::from_bytes(rest.get(..3)?).ok()?;
    if !(status.is_client_error() || status.is_server_error()) || !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    let head = &buf[..buf.len() - 2];
    let lines = head.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let mut empty = false;
    for line in lines.skip(1) {
        if line.is_empty() {
            continue;
        }
        let (name, value) = line.split_at(line.iter().position(|&b| b == b':')?);
        if name.eq_ignore_ascii_case(b"content-type") {
            return None;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            empty = value[1..].trim_ascii() == b"0";
        }
    }
    empty.then_some(status)
}

impl<S: AsyncWrite + Unpin> Rewrite<S> {
    /// Writes the pending replacement; `Ready(Ok(n))` with hyper's length
    /// once it is all out.
    fn flush_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some((bytes, written, stands_for)) = &mut self.pending else { return Poll::Ready(Ok(0)) };
        while *written < bytes.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        let n = *stands_for;
        self.pending = None;
        Poll::Ready(Ok(n))
    }

    fn start_rewrite(&mut self, buf: &[u8]) -> bool {
        match bare_error_status(buf) {
            Some(status) if self.pending.is_none() => {
                let answer = ApiError::malformed_http(status, self.header_limit).http1_bytes();
                self.pending = Some((answer, 0, buf.len()));
                true
            }
            _ => false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewrite<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewrite<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.pending.is_some() || this.start_rewrite(buf) {
            return this.flush_pending(cx);
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let first = bufs.iter().find(|b| !b.is_empty());
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if this.pending.is_some() || first.is_some_and(|f| f.len() == total && this.start_rewrite(f)) {
            return this.flush_pending(cx);
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pending.is_some() {
            ready!(this.flush_pending(cx))?;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
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

    fn split(answer: &[u8]) -> (String, serde_json::Value) {
        let text = std::str::from_utf8(answer).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        (head.to_string(), serde_json::from_str(body).unwrap())
    }

    #[test]
    fn the_refusals_are_well_formed_responses() {
        let (head, body) = split(&OVER_CAPACITY);
        assert!(head.starts_with("HTTP/1.1 503 ") && head.contains("retry-after: 1"), "{head}");
        assert_eq!(body["error"]["code"], "overloaded");
        let (head, body) = split(&OVER_PER_IP);
        assert!(head.starts_with("HTTP/1.1 429 ") && head.contains("retry-after: 1"), "{head}");
        assert_eq!(body["error"]["code"], "too_many_connections");
    }

    #[test]
    fn only_hypers_empty_error_heads_are_rewritten() {
        let bare = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Mon, 01 Jan 2024 00:00:00 GMT\r\n\r\n";
        assert_eq!(bare_error_status(bare), Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
        assert_eq!(
            bare_error_status(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n"),
            Some(StatusCode::BAD_REQUEST)
        );
        for ours in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 12\r\n\r\n",
            b"\x00\x00\x12\x04\x00\x00\x00\x00\x00",
        ] {
            assert_eq!(bare_error_status(ours), None, "{}", String::from_utf8_lossy(ours));
        }
        let (head, body) =
            split(&ApiError::malformed_http(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, 32768).http1_bytes());
        assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
        assert_eq!(body["error"]["code"], "headers_too_large");
    }

    #[test]
    fn an_address_leaves_the_map_with_its_last_connection() {
        let per_ip = PerIp::new(2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        let (a1, a2) = (per_ip.enter(a).unwrap(), per_ip.enter(a).unwrap());
        assert!(per_ip.enter(a).is_none(), "over the cap");
        let b1 = per_ip.enter(b).unwrap();
        // One /64 is one client.
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        let c1 = per_ip.enter(v6("2001:db8::1")).unwrap();
        let c2 = per_ip.enter(v6("2001:db8::2")).unwrap();
        assert!(per_ip.enter(v6("2001:db8::ffff:1")).is_none());
        assert_eq!(per_ip.addresses(), 3);
        drop((a1, c1, c2));
        assert_eq!(per_ip.addresses(), 2);
        let a3 = per_ip.enter(a).unwrap();
        drop((a2, a3, b1));
        assert_eq!(per_ip.addresses(), 0, "entries at zero are removed");
        assert!(PerIp::new(0).enter(a).is_some(), "0 is no cap");
    }
}
