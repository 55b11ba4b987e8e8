//! Connections: slow-loris clients, the connection caps (total and per
//! address), oversize headers, HTTP/2 idle and age limits, and graceful
//! shutdown of `api::serve`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::future::join_all;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use vendorhost::api::serve::{ServeOptions, serve};

use super::{assert_json_error, h2c, read_response, read_until_closed, sample_plugins, stalled};
use crate::support::app::{TestApp, embedded_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_clients_neither_block_others_nor_stay_open() {
    let plugins = sample_plugins();
    let data = tempfile::tempdir().unwrap();
    let mut cfg = embedded_config(data.path(), plugins.path());
    let timeout = Duration::from_secs(2);
    cfg.api.header_read_timeout = timeout;
    let app = TestApp::start(cfg).await;
    let addr: SocketAddr = app.base.trim_start_matches("http://").parse().unwrap();

    // Half a header; nothing at all; half an HTTP/2 preface (before hyper's own timer runs).
    let opened = Instant::now();
    let prefixes: [&[u8]; 3] = [b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ", b"", b"PRI * HTTP/2.0\r\n"];
    let mut socks =
        join_all((0..100).map(|i| stalled(addr, prefixes[usize::from(i % 10 >= 8) + usize::from(i % 10 >= 9)]))).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let t = Instant::now();
    let fresh = reqwest::Client::new();
    let r = fresh.get(app.url("/healthz")).timeout(timeout).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(t.elapsed() < Duration::from_secs(1), "a normal request took {:?} beside 100 stalled ones", t.elapsed());

    let closed = join_all(socks.iter_mut().map(|s| read_until_closed(s, timeout + Duration::from_secs(5)))).await;
    let elapsed = opened.elapsed();
    assert!(closed.iter().all(Option::is_some), "some stalled connections were still open after {elapsed:?}");
    assert!(elapsed >= timeout - Duration::from_millis(200), "closed before the header timeout: {elapsed:?}");
    let r = fresh.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    app.stop().await;
}

/// `serve` alone, with a tiny router, on a free port.
async fn tiny_server(
    opts: ServeOptions,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    use axum::routing::get;
    let router = axum::Router::new().route("/", get(|| async { "ok" })).route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(600)).await;
            "done"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, router, opts, async move {
        let _ = rx.await;
    }));
    (addr, tx, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_sheds_with_503_and_shutdown_finishes_in_flight_requests() {
    let opts = ServeOptions {
        header_read_timeout: Duration::from_secs(1),
        max_connections: 3,
        max_header_bytes: 16 * 1024,
        ..ServeOptions::default()
    };
    let (addr, stop, task) = tiny_server(opts).await;
    let mut held = join_all((0..3).map(|_| stalled(addr, b"GET / HTTP/1.1\r\n"))).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut extra = TcpStream::connect(addr).await.unwrap();
    let answer = read_until_closed(&mut extra, Duration::from_secs(3)).await.unwrap();
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(answer.starts_with("http/1.1 503") && answer.contains("retry-after: 1"), "{answer}");

    // The stalled ones time out and free their places.
    for s in &mut held {
        read_until_closed(s, Duration::from_secs(5)).await.unwrap();
    }
    let client = reqwest::Client::new();
    assert_eq!(client.get(format!("http://{addr}/")).send().await.unwrap().text().await.unwrap(), "ok");

    // Shutdown: the in-flight request finishes, then nothing is accepted.
    let slow = tokio::spawn({
        let client = client.clone();
        async move { client.get(format!("http://{addr}/slow")).send().await.unwrap().text().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.send(()).unwrap();
    assert_eq!(slow.await.unwrap(), "done");
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("serve did not return after shutdown").unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_over_the_cap_get_431() {
    let opts = ServeOptions {
        header_read_timeout: Duration::from_secs(5),
        max_connections: 16,
        max_header_bytes: 16 * 1024,
        ..ServeOptions::default()
    };
    let (addr, stop, task) = tiny_server(opts).await;
    let request = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(20 * 1024));
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(request.as_bytes()).await; // the server may stop reading early
    assert_json_error("a 20 KiB header", read_response(&mut s, Duration::from_secs(5)).await, 431, "headers_too_large");
    let ok = reqwest::get(format!("http://{addr}/")).await.unwrap();
    assert_eq!(ok.status(), 200);
    stop.send(()).unwrap();
    task.await.unwrap();
}

/// A connection from `local` (any 127.x.y.z works on Linux) to `addr`.
async fn connect_from(local: &str, addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_at_its_cap_does_not_lock_out_another() {
    let opts = ServeOptions { max_connections_per_ip: 3, ..ServeOptions::default() };
    let (addr, stop, task) = tiny_server(opts).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = connect_from("127.0.0.1", addr).await;
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let (status, _, _) = read_response(&mut s, Duration::from_secs(5)).await.unwrap();
        assert_eq!(status, 200);
        held.push(s); // kept open (keep-alive)
    }
    let mut fourth = connect_from("127.0.0.1", addr).await;
    let _ = fourth.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let answer = read_response(&mut fourth, Duration::from_secs(5)).await;
    assert_json_error("a 4th connection from 127.0.0.1", answer, 429, "too_many_connections");

    let mut other = connect_from("127.0.0.2", addr).await;
    other.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let (status, _, _) = read_response(&mut other, Duration::from_secs(5)).await.unwrap();
    assert_eq!(status, 200, "127.0.0.2 is served while 127.0.0.1 holds its cap");

    // The place comes back when a connection closes.
    drop(held.pop());
    let accepted = crate::support::app::eventually(Duration::from_secs(5), "a freed place", || async {
        let mut s = connect_from("127.0.0.1", addr).await;
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.ok()?;
        let (status, _, _) = read_response(&mut s, Duration::from_secs(2)).await?;
        (status == 200).then_some(status)
    })
    .await;
    assert_eq!(accepted, 200);
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_old_http2_connections_are_closed() {
    let opts = ServeOptions {
        idle_timeout: Duration::from_millis(800),
        max_connection_age: Duration::from_secs(2),
        ..ServeOptions::default()
    };
    let (addr, stop, task) = tiny_server(opts).await;
    let get = || hyper::Request::get(format!("http://{addr}/")).body(axum::body::Body::empty()).unwrap();

    // One request, then quiet: closed after the idle timeout, not before.
    let (mut idle, idle_conn) = h2c(addr).await;
    let opened = Instant::now();
    assert_eq!(idle.send_request(get()).await.unwrap().status(), 200);
    tokio::time::timeout(Duration::from_secs(5), idle_conn).await.expect("an idle h2 connection stayed open").unwrap();
    let idle_for = opened.elapsed();
    assert!(idle_for >= Duration::from_millis(700), "closed after {idle_for:?}, before the idle timeout");

    // Busy all along: closed once it reaches its maximum age.
    let (mut busy, busy_conn) = h2c(addr).await;
    let opened = Instant::now();
    let mut served = 0;
    while !busy_conn.is_finished() && opened.elapsed() < Duration::from_secs(6) {
        if let Ok(r) = busy.send_request(get()).await {
            assert_eq!(r.status(), 200);
            served += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let age = opened.elapsed();
    assert!(busy_conn.is_finished(), "a busy h2 connection outlived its maximum age ({age:?})");
    assert!(age >= Duration::from_millis(1900) && served >= 10, "closed after {age:?} and {served} requests");
    stop.send(()).unwrap();
    task.await.unwrap();
}
