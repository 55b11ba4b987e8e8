//! The run's summary: text for people, JSON for scripts (`--json`).

use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;

use super::LoadtestArgs;
use super::e2e::Tracker;
use super::stats::{Latency, Summary, fmt_ms};

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub mode: &'static str,
    pub url: String,
    pub vendor: String,
    /// Requests (jobs) planned; None: bounded by the duration.
    pub planned: Option<u64>,
    pub concurrency: usize,
    /// Open loop rate, requests per second.
    pub rate: Option<f64>,
    pub elapsed_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub submit: Option<Summary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub get: Option<Summary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e2e: Option<E2eReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait: Option<super::waiters::WaitReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel: Option<super::cancel::CancelReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct E2eReport {
    /// Jobs the generator tried to submit (N).
    pub jobs: u64,
    /// Jobs the service accepted (2xx).
    pub accepted: u64,
    pub terminal: u64,
    pub complete: u64,
    pub failed: u64,
    /// N − terminal: refused for good, or accepted and never finished.
    pub lost: u64,
    pub accepted_per_sec: f64,
    /// Terminal jobs per second, first submission to the last terminal stamp.
    pub completed_per_sec: f64,
    /// Submission to the service's terminal `updated_at` stamp (ms resolution).
    pub latency: Latency,
    /// Submission to the poll that saw the job terminal (includes polling lag).
    pub observed_latency: Latency,
    /// GET /jobs/{id} sent to follow the jobs (each a store read on the service).
    pub polls: u64,
    pub poll_errors: u64,
}

impl E2eReport {
    pub fn new(t: &Tracker, jobs: u64, submit: &Summary, first_wall_ms: i64, elapsed: Duration) -> E2eReport {
        let terminal = t.terminal();
        let last = t.last_finish_ms.load(Ordering::Relaxed);
        let span_s = if last > first_wall_ms { (last - first_wall_ms) as f64 / 1000.0 } else { elapsed.as_secs_f64() };
        E2eReport {
            jobs,
            accepted: submit.ok,
            terminal,
            complete: t.complete.load(Ordering::Relaxed),
            failed: t.failed.load(Ordering::Relaxed),
            lost: jobs.saturating_sub(terminal),
            accepted_per_sec: submit.per_sec,
            completed_per_sec: if span_s > 0.0 { terminal as f64 / span_s } else { 0.0 },
            latency: t.by_stamp.summary(Duration::ZERO).latency,
            observed_latency: t.observed.summary(Duration::ZERO).latency,
            polls: t.polls.load(Ordering::Relaxed),
            poll_errors: t.poll_errors.load(Ordering::Relaxed),
        }
    }
}

impl Report {
    pub fn new(args: &LoadtestArgs, planned: Option<u64>) -> Report {
        Report {
            mode: args.mode.as_str(),
            url: args.url.clone(),
            vendor: args.vendor.clone(),
            planned,
            concurrency: args.concurrency,
            rate: args.rate,
            elapsed_s: 0.0,
            submit: None,
            get: None,
            e2e: None,
            wait: None,
            cancel: None,
        }
    }

    pub fn text(&self) -> String {
        let mut s = String::new();
        let shape = match self.rate {
            Some(r) => format!("open loop at {r}/s, up to {} connections", self.concurrency),
            None => format!("closed loop, {} in flight", self.concurrency),
        };
        let _ = writeln!(
            s,
            "loadtest {} against {} (vendor {}; {shape}; {:.1} s)",
            self.mode, self.url, self.vendor, self.elapsed_s
        );
        if let Some(sub) = &self.submit {
            let _ = writeln!(s, "  POST /jobs       {}", sub.line());
        }
        if let Some(g) = &self.get {
            let _ = writeln!(s, "  GET /jobs/{{id}}  {}", g.line());
        }
        if let Some(w) = &self.wait {
            let _ = writeln!(
                s,
                "  waiters          {} at once on {} HTTP/2 connections ({} jobs submitted in {:.1} s); {} answered, {} finished, {} errors",
                w.waiters, w.connections, w.waiters, w.submit_s, w.answered, w.finished, w.errors
            );
            let _ = writeln!(
                s,
                "  end to answer    p50 {}  p99 {}  max {}  (the job's terminal stamp to its waiter's answer)",
                fmt_ms(w.latency.p50_ms),
                fmt_ms(w.latency.p99_ms),
                fmt_ms(w.latency.max_ms)
            );
            if let (Some(before), Some(waiting)) = (w.rss_before_kib, w.rss_waiting_kib) {
                let _ = writeln!(
                    s,
                    "  service RSS      {:.1} MiB with the jobs in flight, {:.1} MiB with every waiter waiting ({:+.1} MiB; {} answered early)",
                    before as f64 / 1024.0,
                    waiting as f64 / 1024.0,
                    (waiting as f64 - before as f64) / 1024.0,
                    w.ended_early
                );
            }
        }
        if let Some(c) = &self.cancel {
            let _ = writeln!(
                s,
                "  cancels          {} running jobs, {} cancelled, {} timed, {} errors",
                c.running, c.cancelled, c.timed, c.errors
            );
            let _ = writeln!(
                s,
                "  cancel to stop   p50 {}  p99 {}  max {}  (the cancel sent to the running call dropped)",
                fmt_ms(c.stop.p50_ms),
                fmt_ms(c.stop.p99_ms),
                fmt_ms(c.stop.max_ms)
            );
            let _ = writeln!(s, "  cancel answer    p50 {}  p99 {}", fmt_ms(c.answer.p50_ms), fmt_ms(c.answer.p99_ms));
        }
        if let Some(e) = &self.e2e {
            let _ = writeln!(
                s,
                "  jobs             {} submitted, {} accepted ({:.1}/s), {} terminal ({} complete, {} failed), {:.1} completed/s",
                e.jobs, e.accepted, e.accepted_per_sec, e.terminal, e.complete, e.failed, e.completed_per_sec
            );
            let _ = writeln!(
                s,
                "  end to end       p50 {}  p99 {}  max {}  (observed by polling: p50 {}  p99 {})",
                fmt_ms(e.latency.p50_ms),
                fmt_ms(e.latency.p99_ms),
                fmt_ms(e.latency.max_ms),
                fmt_ms(e.observed_latency.p50_ms),
                fmt_ms(e.observed_latency.p99_ms)
            );
            if e.lost > 0 {
                let _ = writeln!(s, "  LOST             {} of {} jobs never reached a terminal state", e.lost, e.jobs);
            } else {
                let _ = writeln!(s, "  lost             0");
            }
        }
        s
    }
}
