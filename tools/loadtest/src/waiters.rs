//! Wait mode: N jobs whose vendor answers later (e.g. the async mock with
//! `"_delay_ms"`), then one `GET /jobs/{id}?wait=` per job, all held open at
//! once. Waiters share a few HTTP/2 connections (cleartext, prior knowledge:
//! up to `STREAMS_PER_CONN` each, under the server's 200 concurrent
//! streams), the way a client fleet stays far below the service's
//! connection cap. Each answer is timed against the job's own terminal
//! `updated_at`: how long after the job ended its waiter heard of it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::http::Pool;
use super::stats::Latency;

/// Waits in flight per HTTP/2 connection.
const STREAMS_PER_CONN: usize = 190;

#[derive(Debug, Clone, Serialize)]
pub struct WaitReport {
    /// Jobs submitted and accepted (one waiter each).
    pub waiters: u64,
    /// HTTP/2 connections the waiters shared.
    pub connections: u64,
    /// Seconds to submit every job.
    pub submit_s: f64,
    /// Waiters answered 200.
    pub answered: u64,
    /// Of those, answered with the job finished.
    pub finished: u64,
    /// Waiters that failed (no answer, not 200).
    pub errors: u64,
    /// From the job's terminal `updated_at` to its waiter's answer (ms
    /// resolution: the stamp has it).
    pub latency: Latency,
    /// The service's RSS (`--rss-pid`) once every job was taken by a worker
    /// and before any waiter connected, and once every waiter waited (before
    /// the first job ended): their difference is what the waiters cost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_before_kib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_waiting_kib: Option<u64>,
    /// Waiters answered before every waiter was waiting (the second RSS
    /// reading then includes some answers).
    pub ended_early: u64,
}

#[derive(Deserialize)]
struct Accepted {
    request_id: String,
}

#[derive(Deserialize)]
struct JobState {
    status: String,
    updated_at: String,
}

fn now_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0)
}

/// The resident set of process `pid`, KiB (Linux).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Polls until job `id` has left `pending` (a worker took it).
async fn taken(pool: &Pool, id: &str) {
    for _ in 0..600 {
        if let Ok(r) = pool.send("GET", &format!("/jobs/{id}"), None).await
            && let Ok(job) = serde_json::from_slice::<JobState>(&r.body)
            && job.status != "pending"
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Submits `n` jobs with `body` (`--concurrency` at once), then waits on
/// every one for at most `--wait`.
pub async fn run(
    pool: &Arc<Pool>,
    body: &Arc<Vec<u8>>,
    n: u64,
    args: &super::LoadtestArgs,
) -> anyhow::Result<WaitReport> {
    let (base, concurrency, wait, api_key) = (args.url.as_str(), args.concurrency, args.wait, args.api_key.as_deref());
    let begin = std::time::Instant::now();
    // `--rate`: submits on a fixed schedule, so the jobs (and their ends)
    // are spread out rather than all at once.
    let start = tokio::time::Instant::now();
    let pace = args.rate.filter(|r| *r > 0.0 && r.is_finite());
    let ids: Vec<String> = futures::stream::iter(0..n)
        .map(|i| {
            let (pool, body) = (pool.clone(), body.clone());
            async move {
                if let Some(rate) = pace {
                    tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
                }
                let r = pool.send("POST", "/jobs", Some(&body)).await.ok()?;
                if !r.ok() {
                    return None;
                }
                serde_json::from_slice::<Accepted>(&r.body).ok().map(|a| a.request_id)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .filter_map(|id| async move { id })
        .collect()
        .await;
    let submit_s = begin.elapsed().as_secs_f64();
    let Some(last) = ids.last() else { anyhow::bail!("wait mode: no job was accepted") };
    // Workers take jobs in order: once the last is taken, the service holds
    // every job in flight and no waiter yet.
    taken(pool, last).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before_kib = args.rss_pid.and_then(rss_kib);
    let conns = ids.len().div_ceil(STREAMS_PER_CONN);
    let mut clients = Vec::with_capacity(conns);
    for _ in 0..conns {
        let mut b = reqwest::Client::builder().http2_prior_knowledge().timeout(wait + Duration::from_secs(30));
        if let Some(k) = api_key {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert(reqwest::header::AUTHORIZATION, format!("Bearer {k}").parse()?);
            b = b.default_headers(h);
        }
        clients.push(b.build()?);
    }
    let base = base.trim_end_matches('/').to_string();
    let wait_ms = wait.as_millis();
    let sent = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let client = clients[i / STREAMS_PER_CONN].clone();
            let url = format!("{base}/jobs/{id}?wait={wait_ms}ms");
            let sent = sent.clone();
            tokio::spawn(async move {
                let pending = client.get(url).send();
                sent.fetch_add(1, Ordering::Relaxed);
                let r = pending.await.ok()?;
                let heard = now_ms();
                if !r.status().is_success() {
                    return None;
                }
                let job: JobState = r.json().await.ok()?;
                let finished = matches!(job.status.as_str(), "complete" | "failed" | "cancelled");
                let ended = humantime::parse_rfc3339(&job.updated_at).ok()?;
                let ended_ms = ended.duration_since(UNIX_EPOCH).ok()?.as_secs_f64() * 1000.0;
                Some((finished, (heard - ended_ms).max(0.0)))
            })
        })
        .collect();
    // Every request started; give the service a moment to take them all in,
    // then read what it holds.
    while sent.load(Ordering::Relaxed) < ids.len() as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_waiting_kib = args.rss_pid.and_then(rss_kib);
    let ended_early = tasks.iter().filter(|t| t.is_finished()).count() as u64;
    let (mut answered, mut finished, mut errors) = (0u64, 0u64, 0u64);
    let mut lat = hdrhistogram::Histogram::<u64>::new(3)?;
    for t in tasks {
        match t.await {
            Ok(Some((done, ms))) => {
                answered += 1;
                if done {
                    finished += 1;
                    let _ = lat.record((ms * 1000.0) as u64);
                }
            }
            _ => errors += 1,
        }
    }
    Ok(WaitReport {
        waiters: ids.len() as u64,
        connections: conns as u64,
        submit_s,
        answered,
        finished,
        errors,
        latency: Latency::of(&lat),
        rss_before_kib,
        rss_waiting_kib,
        ended_early,
    })
}
