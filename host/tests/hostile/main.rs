//! `make hostile`: the slow, large-scale hostile cases, each against its own
//! `vendorhost serve` child process (so the memory measured is the
//! service's alone), run with the binary in `VENDORHOST_BIN` (the release
//! build under `make hostile`; the debug build otherwise). Not part of
//! `cargo test`'s default run (`test = false` in host/Cargo.toml): select it
//! with `cargo test -p vendorhost --test hostile`. Each case prints what it
//! measured; README's "Hostile inputs" carries the figures.

#[path = "../integration/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use support::app::{Proc, embedded_config, env_for, plugin, plugins_dir};
use support::servers::free_port;

const MIB: f64 = 1024.0 * 1024.0;

/// `vendorhost serve` on a free port with the sample plugins and `extra`
/// settings; returns it once `/healthz` answers.
struct Server {
    proc: Proc,
    addr: SocketAddr,
    _plugins: tempfile::TempDir,
    _data: tempfile::TempDir,
}

impl Server {
    async fn start(extra: &[(&'static str, &str)]) -> Server {
        Server::start_role("serve", extra).await
    }

    /// `vendorhost <role>`: `serve` (API and workers) or `api` (no workers).
    async fn start_role(role: &str, extra: &[(&'static str, &str)]) -> Server {
        let plugins = plugins_dir(&[plugin("sync"), plugin("async")]);
        let data = tempfile::tempdir().unwrap();
        let cfg = embedded_config(data.path(), plugins.path());
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut env = env_for(&cfg);
        env.push(("VENDORHOST_LISTEN", addr.to_string()));
        env.push(("VENDORHOST_LOG", "warn".into()));
        env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        let proc = spawn(role, &env, &data.path().join("serve.log"));
        let server = Server { proc, addr, _plugins: plugins, _data: data };
        let deadline = Instant::now() + Duration::from_secs(60);
        let client = reqwest::Client::new();
        while !client.get(server.url("/healthz")).send().await.is_ok_and(|r| r.status().is_success()) {
            assert!(Instant::now() < deadline, "the server did not come up:\n{}", server.proc.log_text());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        server
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The process's resident memory, bytes.
    fn rss(&self) -> f64 {
        status_bytes(self.proc.child.id(), "VmRSS:")
    }

    /// The process's peak resident memory so far, bytes.
    fn peak_rss(&self) -> f64 {
        status_bytes(self.proc.child.id(), "VmHWM:")
    }

    async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics")).await.unwrap().text().await.unwrap()
    }
}

/// `VENDORHOST_BIN`, else the binary cargo built with this test.
fn spawn(role: &str, env: &[(&str, String)], log: &Path) -> Proc {
    let bin = std::env::var("VENDORHOST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_vendorhost").to_string());
    let out = std::fs::File::create(log).unwrap();
    let mut cmd = Command::new(&bin);
    // Every VENDORHOST_* variable is a setting to the service: not this one.
    cmd.arg(role).env_remove("VENDORHOST_BIN").stdout(out.try_clone().unwrap()).stderr(out).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc { child: cmd.spawn().unwrap_or_else(|e| panic!("cannot run {bin}: {e}")), log: log.to_path_buf() }
}

/// The series of a Prometheus text (name and labels, without values).
fn series(metrics: &str) -> std::collections::BTreeSet<String> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(s, _)| s.to_string())
        .collect()
}

/// 5,000 callbacks to made-up vendor names (no key needed for a webhook)
/// cost no memory and no metric series: they are refused before the body is
/// read, and labels come only from loaded vendors.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_to_random_vendors_leave_memory_and_metrics_alone() {
    let server = Server::start(&[]).await;
    let client = reqwest::Client::new();
    let body = vec![b'x'; 1024];
    let send = |i: usize| {
        let req = client
            .post(server.url(&format!("/vendor-webhook/vendor-{i}-{}", rand_suffix(i))))
            .header("content-type", "application/json")
            .body(body.clone());
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or_default())
        }
    };
    // Warm up (connections, the `unknown` series), then measure.
    let warm: Vec<_> = futures::stream::iter(0..500).map(send).buffer_unordered(50).collect().await;
    assert!(warm.iter().all(|(s, _)| *s == 404));
    let (rss_before, metrics_before) = (server.rss(), server.metrics().await);

    let started = Instant::now();
    let answers: Vec<_> = futures::stream::iter(500..5_500).map(send).buffer_unordered(50).collect().await;
    let took = started.elapsed();
    for (status, reply) in &answers {
        assert_eq!((*status, reply["error"]["code"].as_str()), (404, Some("not_found")), "{reply}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss_after, metrics_after) = (server.rss(), server.metrics().await);
    let grew = (rss_after - rss_before) / MIB;
    println!(
        "5,000 webhooks to random vendors (1 KiB bodies) in {took:.2?}: RSS {:.1} -> {:.1} MiB ({grew:+.2} MiB); /metrics {} -> {} bytes, {} -> {} series",
        rss_before / MIB,
        rss_after / MIB,
        metrics_before.len(),
        metrics_after.len(),
        series(&metrics_before).len(),
        series(&metrics_after).len(),
    );
    assert!(grew < 5.0, "RSS grew by {grew:.2} MiB");
    assert_eq!(series(&metrics_before), series(&metrics_after), "new metric series appeared");
    assert!(!metrics_after.contains("vendor-5"), "a URL became a label");
}

fn rand_suffix(i: usize) -> String {
    format!("{:x}", (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(std::process::id()))
}

/// 300 clients submit 1 MiB each at once. Memory for bodies in flight is
/// bounded (`api.max_body_bytes_in_flight`; past it 503 + Retry-After, and
/// the client retries), and it goes back to the OS once they are done.
///
/// Measured twice: `vendorhost api` (the submit path alone, no workers:
/// within 100 MiB of where it started once the submits are answered), and
/// `vendorhost serve`, where 64 workers also run the 300 jobs through the
/// plugin: there each plugin instance slot a worker used keeps up to 1 MiB
/// resident by design (plugins/engine.rs, `KEEP_RESIDENT_BYTES`), so the
/// bound is 100 MiB + 64 x 1 MiB once every job is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_concurrent_one_mib_submits_give_their_memory_back() {
    let body = json!({"vendor": "sync", "data": "x".repeat(1024 * 1024 - 64)}).to_string();
    assert!(body.len() <= 1024 * 1024);
    let client = reqwest::Client::new();
    for (role, bound_mib) in [("api", 100.0), ("serve", 164.0)] {
        let server = Server::start_role(role, &[]).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss_before = server.rss();
        let started = Instant::now();
        let (ids, retried) = burst(&client, &server.url("/jobs"), &body).await;
        let submitted = started.elapsed();
        if role == "serve" {
            // Every job runs to the end, so nothing of theirs is still in use.
            wait_done(&client, &server, &ids).await;
        }
        let done = started.elapsed();
        // Settled: give the allocator a moment to hand pages back.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut after = server.rss();
        while after - rss_before >= bound_mib * MIB && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
            after = server.rss();
        }
        let peak = server.peak_rss();
        println!(
            "300 concurrent 1 MiB submits, vendorhost {role}: all accepted in {submitted:.2?} ({retried} retries after 503), done in {done:.2?}; RSS {:.1} MiB before, {:.1} MiB peak (VmHWM), {:.1} MiB after ({:+.1} MiB)",
            rss_before / MIB,
            peak / MIB,
            after / MIB,
            (after - rss_before) / MIB
        );
        assert_eq!(ids.len(), 300);
        assert!(
            after - rss_before < bound_mib * MIB,
            "vendorhost {role}: RSS stayed {:.1} MiB above where it started",
            (after - rss_before) / MIB
        );
    }
}

/// 300 clients POST `body` to `url` at once, each retrying a 503 (which must
/// carry Retry-After) until accepted: the request ids, and the retries.
async fn burst(client: &reqwest::Client, url: &str, body: &str) -> (Vec<String>, usize) {
    let submits: FuturesUnordered<_> = (0..300)
        .map(|_| {
            let (client, url, body) = (client.clone(), url.to_string(), body.to_string());
            async move {
                let mut retries = 0;
                loop {
                    let r =
                        client.post(&url).header("content-type", "application/json").body(body.clone()).send().await;
                    match r {
                        Ok(r) if r.status() == 202 => {
                            let v: Value = r.json().await.unwrap();
                            return (v["request_id"].as_str().unwrap().to_string(), retries);
                        }
                        Ok(r) if r.status() == 503 => {
                            assert!(r.headers().contains_key("retry-after"), "503 without Retry-After");
                            let v: Value = r.json().await.unwrap();
                            assert_eq!(v["error"]["code"], "overloaded", "{v}");
                        }
                        Ok(r) => panic!("unexpected answer {}: {}", r.status(), r.text().await.unwrap_or_default()),
                        // The server may close a refused request's connection while it still sends.
                        Err(e) => assert!(e.is_request() || e.is_connect() || e.is_body(), "{e}"),
                    }
                    retries += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        })
        .collect();
    let done: Vec<(String, usize)> = submits.collect().await;
    let retried = done.iter().map(|(_, r)| r).sum();
    (done.into_iter().map(|(id, _)| id).collect(), retried)
}

/// Waits until every job in `ids` is complete or failed.
async fn wait_done(client: &reqwest::Client, server: &Server, ids: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(300);
    for id in ids {
        loop {
            let v: Value = client.get(server.url(&format!("/jobs/{id}"))).send().await.unwrap().json().await.unwrap();
            if matches!(v["status"].as_str(), Some("complete" | "failed")) {
                break;
            }
            assert!(Instant::now() < deadline, "job {id} did not finish");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A `kB` field of /proc/PID/status, in bytes.
fn status_bytes(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    kb * 1024.0
}

/// A connection to `addr` from `local`.
async fn connect_from(local: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

/// 1,000 HTTP/2 connections that made one request and went quiet, and 300
/// that send a body one byte a second: another client is still served at
/// once; the trickling bodies are cut at `api.body_read_timeout` and the
/// idle connections closed at `api.idle_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_http2_and_trickling_bodies_do_not_stall_a_normal_client() {
    let body_timeout = Duration::from_secs(5);
    let idle_timeout = Duration::from_secs(8);
    let server =
        Server::start(&[("VENDORHOST_API__BODY_READ_TIMEOUT", "5s"), ("VENDORHOST_API__IDLE_TIMEOUT", "8s")]).await;
    let addr = server.addr;
    let rss_before = server.rss();

    // 1,000 idle h2c connections from 127.0.0.3, one request each.
    let opened = Instant::now();
    let idle: Vec<_> = futures::stream::iter(0..1_000)
        .map(|_| async move {
            let stream = connect_from("127.0.0.3", addr).await;
            let (mut send, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(stream),
            )
            .await
            .unwrap();
            let conn = tokio::spawn(async move {
                let _ = conn.await;
            });
            let req = hyper::Request::get(format!("http://{addr}/healthz")).body(axum::body::Body::empty()).unwrap();
            assert_eq!(send.send_request(req).await.unwrap().status(), 200);
            (send, conn)
        })
        .buffer_unordered(100)
        .collect()
        .await;
    let idle_opened = opened.elapsed();

    // 300 bodies at one byte a second, from 127.0.0.4.
    let trickle_started = Instant::now();
    let trickles: Vec<_> = (0..300)
        .map(|_| {
            tokio::spawn(async move {
                let mut s = connect_from("127.0.0.4", addr).await;
                let head =
                    "POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n";
                s.write_all(head.as_bytes()).await.unwrap();
                let mut answer = Vec::new();
                let mut buf = [0u8; 1024];
                loop {
                    tokio::select! {
                        n = s.read(&mut buf) => match n {
                            Ok(0) | Err(_) => break,
                            Ok(n) => answer.extend_from_slice(&buf[..n]),
                        },
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {
                            if s.write_all(b" ").await.is_err() { break; }
                        }
                    }
                    if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}}") {
                        break;
                    }
                }
                (String::from_utf8_lossy(&answer).to_string(), trickle_started.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_loaded = server.rss();

    // A normal client, from 127.0.0.1.
    let client =
        reqwest::Client::builder().local_address("127.0.0.1".parse::<std::net::IpAddr>().unwrap()).build().unwrap();
    let t = Instant::now();
    let r = client.post(server.url("/jobs")).json(&json!({"vendor": "sync", "data": "normal"})).send().await.unwrap();
    let status = r.status().as_u16();
    let reply: Value = r.json().await.unwrap();
    let served_in = t.elapsed();
    assert_eq!(status, 202, "{reply}");
    assert!(served_in < Duration::from_secs(1), "a normal client waited {served_in:?}");
    let t = Instant::now();
    assert_eq!(client.get(server.url("/healthz")).send().await.unwrap().status(), 200);
    let health_in = t.elapsed();

    // The trickling bodies are cut at the body deadline, with the JSON 408.
    let mut cut_at = Vec::new();
    for t in trickles {
        let (answer, at) = t.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408") && answer.contains("body_timeout"), "{answer}");
        cut_at.push(at);
    }
    let latest_cut = cut_at.iter().max().copied().unwrap_or_default();
    assert!(latest_cut < body_timeout + Duration::from_secs(3), "a trickling body was held {latest_cut:?}");

    // The idle connections are closed by the server at the idle timeout.
    let deadline = opened + idle_opened + idle_timeout + Duration::from_secs(10);
    let mut open = idle.len();
    while open > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        open = idle.iter().filter(|(_, c)| !c.is_finished()).count();
    }
    println!(
        "1,000 idle h2c connections (opened in {idle_opened:.2?}) + 300 bodies at 1 byte/s: POST /jobs answered in {served_in:.2?}, GET /healthz in {health_in:.2?}; bodies cut with 408 by {latest_cut:.2?}; idle connections closed: {}; RSS {:.1} MiB before, {:.1} MiB with all of them open",
        idle.len() - open,
        rss_before / MIB,
        rss_loaded / MIB
    );
    assert_eq!(open, 0, "{open} idle h2 connections still open after the idle timeout");
}
