//! Cancel mode: how fast `POST /jobs/{id}/cancel` stops a running vendor
//! call. Submits `-n` jobs whose vendor answers slowly (e.g. the sync mock
//! with `"_latency_ms": 60000`), waits until each is `processing` (its call
//! running), then cancels them one at a time and reads each job's
//! `attempts_log`: the cancelled attempt's `started_at + duration_ms` is when
//! the worker dropped the call (its own clock, the same machine's), timed
//! against the moment the cancel request was sent.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::http::Pool;
use super::stats::Latency;

/// Pause between two cancels, so each is timed on its own rather than in a
/// burst.
const GAP: Duration = Duration::from_millis(25);

#[derive(Debug, Clone, Serialize)]
pub struct CancelReport {
    /// Jobs submitted and seen running.
    pub running: u64,
    /// Cancels answered 200 with status `cancelled`.
    pub cancelled: u64,
    /// Cancelled jobs whose attempts_log shows the dropped call.
    pub timed: u64,
    /// Cancels that were refused or failed.
    pub errors: u64,
    /// From sending the cancel to the worker dropping the running call.
    pub stop: Latency,
    /// The cancel request's own round trip (the job marked cancelled).
    pub answer: Latency,
}

#[derive(Deserialize)]
struct Accepted {
    request_id: String,
}

#[derive(Deserialize)]
struct Attempt {
    started_at: String,
    duration_ms: u64,
    outcome: String,
}

#[derive(Deserialize)]
struct JobState {
    status: String,
    #[serde(default)]
    attempts_log: Vec<Attempt>,
}

fn wall_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0)
}

async fn job(pool: &Pool, id: &str) -> Option<JobState> {
    let r = pool.send("GET", &format!("/jobs/{id}"), None).await.ok()?;
    serde_json::from_slice(&r.body).ok()
}

/// Polls until job `id` is `processing` (or gives up after ~60 s).
async fn running(pool: &Pool, id: &str) -> bool {
    for _ in 0..600 {
        match job(pool, id).await {
            Some(j) if j.status == "processing" => return true,
            Some(j) if j.status != "pending" => return false,
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    false
}

pub async fn run(pool: &Pool, body: &[u8], n: u64) -> anyhow::Result<CancelReport> {
    let ids: Vec<String> = futures::stream::iter(0..n)
        .map(|_| async move {
            let r = pool.send("POST", "/jobs", Some(body)).await.ok()?;
            if !r.ok() {
                return None;
            }
            serde_json::from_slice::<Accepted>(&r.body).ok().map(|a| a.request_id)
        })
        .buffer_unordered(16)
        .filter_map(|id| async move { id })
        .collect()
        .await;
    if ids.is_empty() {
        anyhow::bail!("cancel mode: no job was accepted");
    }
    let mut live = Vec::new();
    for id in &ids {
        if running(pool, id).await {
            live.push(id.clone());
        }
    }
    // A call starts a moment after the job turns `processing`.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut cancelled, mut errors) = (0u64, 0u64);
    let mut sent_at = Vec::new();
    let mut answer = hdrhistogram::Histogram::<u64>::new(3)?;
    for id in &live {
        let t0 = wall_ms();
        let begin = std::time::Instant::now();
        match pool.send("POST", &format!("/jobs/{id}/cancel"), Some(b"{}")).await {
            Ok(r) if r.ok() => {
                let _ = answer.record(begin.elapsed().as_micros() as u64);
                cancelled += 1;
                sent_at.push((id.clone(), t0));
            }
            _ => errors += 1,
        }
        tokio::time::sleep(GAP).await;
    }
    // The dropped call is recorded just after the drop.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut stop = hdrhistogram::Histogram::<u64>::new(3)?;
    let mut timed = 0u64;
    for (id, t0) in &sent_at {
        let Some(j) = job(pool, id).await else { continue };
        let Some(a) = j.attempts_log.iter().rev().find(|a| a.outcome == "cancelled") else { continue };
        let Ok(started) = humantime::parse_rfc3339(&a.started_at) else { continue };
        let Ok(started) = started.duration_since(UNIX_EPOCH) else { continue };
        let dropped_ms = started.as_secs_f64() * 1000.0 + a.duration_ms as f64;
        // Millisecond stamps: a drop in the same millisecond reads as 0.
        let _ = stop.record(((dropped_ms - t0).max(0.0) * 1000.0) as u64);
        timed += 1;
    }
    Ok(CancelReport {
        running: live.len() as u64,
        cancelled,
        timed,
        errors,
        stop: Latency::of(&stop),
        answer: Latency::of(&answer),
    })
}
