//! vendorhost-loadtest: the load generator behind `vendorhost loadtest`.
//!
//! It talks to the service only over HTTP, through the API's JSON shapes
//! (`POST /jobs`, `GET /jobs/{id}`, `GET /healthz`), and shares no code with
//! the server: it drives a running service (either deployment) and reports
//! throughput and latency.
//!
//! Modes: `submit` (POST /jobs only), `get` (submit `--ids` jobs, then GET
//! them round-robin), `e2e` (submit and follow every job to a terminal
//! state). Closed loop by default (`-c` requests in flight); `--rate` makes
//! it an open loop with latency counted from each request's scheduled time.

mod cancel;
mod drive;
mod e2e;
mod http;
mod report;
mod stats;
mod waiters;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Deserialize;
use tokio::time::Instant;

use drive::{Plan, Shot, Started};
use e2e::Tracker;
use http::Pool;
use stats::Recorder;

pub use report::{E2eReport, Report};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// POST /jobs only.
    Submit,
    /// Submit `--ids` jobs, then GET /jobs/{id} cycling over them.
    Get,
    /// Submit, then poll every job to complete or failed.
    E2e,
    /// Submit `-n` jobs, then hold one `GET /jobs/{id}?wait=` per job open at
    /// once (over HTTP/2) and time each answer against the job's end.
    Wait,
    /// Submit `-n` slow jobs, cancel each while its vendor call runs, and
    /// time how soon the call was stopped.
    Cancel,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Submit => "submit",
            Mode::Get => "get",
            Mode::E2e => "e2e",
            Mode::Wait => "wait",
            Mode::Cancel => "cancel",
        }
    }
}

/// Parses a duration flag the way the service's configuration does
/// (`vendorhost::config::parse_duration`): a bare integer is milliseconds,
/// anything else goes to `humantime` ("250ms", "5s", "1m 30s").
/// `humantime::parse_duration` alone would reject a bare number other than
/// "0", hence the integer case first.
fn duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(Duration::from_millis(ms));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("invalid duration {s:?}: {e} (use milliseconds or e.g. \"250ms\", \"5s\")"))
}

#[derive(clap::Args, Debug, Clone)]
pub struct LoadtestArgs {
    /// Base URL of the service.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// What to measure.
    #[arg(long, value_enum, default_value = "e2e")]
    pub mode: Mode,
    /// Jobs to submit (get mode: GET requests) [default: 1000, or no limit with --duration].
    #[arg(short = 'n', long = "jobs")]
    pub jobs: Option<u64>,
    /// Closed loop: requests in flight. With --rate: connections at most.
    #[arg(short = 'c', long, default_value_t = 64)]
    pub concurrency: usize,
    /// Open loop: send this many requests per second on a fixed schedule.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Stop sending after this long (e.g. 10s), measured after --warmup.
    #[arg(long, value_parser = duration)]
    pub duration: Option<Duration>,
    /// Send but do not measure for this long first (submit and get modes).
    #[arg(long, value_parser = duration, default_value = "0")]
    pub warmup: Duration,
    /// The vendor every job is for.
    #[arg(long, default_value = "sync")]
    pub vendor: String,
    /// The jobs' `data`, JSON.
    #[arg(long, default_value = r#"{"query":"loadtest"}"#)]
    pub data: String,
    /// Get mode: distinct jobs to cycle over (submitted first and awaited
    /// until terminal, so no worker runs while GETs are measured).
    #[arg(long, default_value_t = 1000)]
    pub ids: u64,
    /// Wait mode: how long each waiter asks to wait (`?wait=`).
    #[arg(long, value_parser = duration, default_value = "60s")]
    pub wait: Duration,
    /// Wait mode: the service's process id (same machine), to read its RSS
    /// before the waiters connect and once they all wait.
    #[arg(long)]
    pub rss_pid: Option<u32>,
    /// E2e mode: tasks polling jobs.
    #[arg(long, default_value_t = 8)]
    pub pollers: usize,
    /// Per-request deadline.
    #[arg(long, value_parser = duration, default_value = "30s")]
    pub timeout: Duration,
    /// E2e mode: give up when no job turned terminal for this long.
    #[arg(long, value_parser = duration, default_value = "60s")]
    pub stall_timeout: Duration,
    /// E2e mode: at most this many jobs submitted and not yet seen terminal
    /// (keeps a duration-bound run from leaving a long backlog).
    #[arg(long)]
    pub max_open: Option<u64>,
    /// E2e mode: retries of a submission the service refused (429/503).
    #[arg(long, default_value_t = 20)]
    pub submit_retries: u32,
    /// `Authorization: Bearer` key for /jobs.
    #[arg(long, env = "VENDORHOST_API_KEY")]
    pub api_key: Option<String>,
    /// Print one JSON summary on stdout instead of the text report.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// Runs the load test and prints its report. `Ok(false)`: jobs were lost.
pub async fn run(args: LoadtestArgs) -> anyhow::Result<bool> {
    let report = measure(&args).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    Ok(report.e2e.as_ref().is_none_or(|e| e.lost == 0))
}

/// Runs the load test and returns what it measured (nothing is printed but progress).
pub async fn measure(args: &LoadtestArgs) -> anyhow::Result<Report> {
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        anyhow::bail!("--rate must be a positive number");
    }
    let data: serde_json::Value =
        serde_json::from_str(&args.data).map_err(|e| anyhow::anyhow!("--data is not JSON: {e}"))?;
    let body = Arc::new(serde_json::to_vec(&serde_json::json!({"vendor": args.vendor, "data": data}))?);
    // Pollers and the get-mode prefill share the pool with the senders.
    let pool =
        Arc::new(Pool::new(&args.url, args.concurrency.max(1) + args.pollers, args.timeout, args.api_key.as_deref())?);
    preflight(&pool, &args.url, &body).await?;
    let plan = Plan {
        total: args.jobs.or(if args.duration.is_some() { None } else { Some(1000) }),
        duration: args.duration,
        concurrency: args.concurrency.max(1),
        rate: args.rate,
        warmup: if args.mode == Mode::E2e { Duration::ZERO } else { args.warmup },
    };
    let begin = Instant::now();
    let mut report = Report::new(args, plan.total);
    match args.mode {
        Mode::Wait => {
            let n = args.jobs.unwrap_or(10_000);
            let w = waiters::run(&pool, &body, n, args).await?;
            report.wait = Some(w);
        }
        Mode::Cancel => {
            report.cancel = Some(cancel::run(&pool, &body, args.jobs.unwrap_or(50)).await?);
        }
        Mode::Submit => {
            let rec = Arc::new(Recorder::default());
            let started = Arc::new(Started::default());
            let bar = progress(args, plan.total, "submit", started.clone(), rec.clone(), None);
            let driven = drive::drive(&plan, started, submitter(pool.clone(), body, rec.clone(), None)).await;
            bar.finish_and_clear();
            report.submit = Some(rec.summary(driven.window));
        }
        Mode::Get => {
            let ids = prefill(&pool, &body, args).await?;
            let rec = Arc::new(Recorder::default());
            let started = Arc::new(Started::default());
            let bar = progress(args, plan.total, "get", started.clone(), rec.clone(), None);
            let paths: Arc<Vec<String>> = Arc::new(ids.iter().map(|id| format!("/jobs/{id}")).collect());
            let (p, r) = (pool.clone(), rec.clone());
            let driven = drive::drive(&plan, started, move |shot: Shot| {
                let (pool, rec, paths) = (p.clone(), r.clone(), paths.clone());
                async move {
                    let path = &paths[(shot.index % paths.len() as u64) as usize];
                    record(&rec, shot, pool.send("GET", path, None).await.map(|r| r.status));
                }
            })
            .await;
            bar.finish_and_clear();
            report.get = Some(rec.summary(driven.window));
        }
        Mode::E2e => {
            let rec = Arc::new(Recorder::default());
            let tracker = Arc::new(Tracker::default());
            let started = Arc::new(Started::default());
            let bar = progress(args, plan.total, "e2e", started.clone(), rec.clone(), Some(tracker.clone()));
            let first_wall = e2e::wall_ms();
            let follow = Follow {
                tracker: tracker.clone(),
                retries: args.submit_retries,
                max_open: args.max_open.unwrap_or(u64::MAX),
            };
            let op = submitter(pool.clone(), body, rec.clone(), Some(follow));
            let submitting = async {
                let d = drive::drive(&plan, started, op).await;
                tracker.submitting_done();
                d
            };
            let (driven, ()) = tokio::join!(submitting, tracker.follow(&pool, args.pollers, args.stall_timeout));
            bar.finish_and_clear();
            let submit = rec.summary(driven.window);
            report.e2e = Some(E2eReport::new(&tracker, driven.started, &submit, first_wall, begin.elapsed()));
            report.submit = Some(submit);
        }
    }
    report.elapsed_s = begin.elapsed().as_secs_f64();
    Ok(report)
}

/// Fails fast, with the reason, if the service is not there or refuses the job.
async fn preflight(pool: &Pool, url: &str, body: &[u8]) -> anyhow::Result<()> {
    let r = pool
        .send("GET", "/healthz", None)
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the service at {url}: {e}"))?;
    if !r.ok() {
        anyhow::bail!("{url}/healthz answered {}", r.status);
    }
    // One job up front, so a bad vendor or key is one clear error, not N.
    let r = pool.send("POST", "/jobs", Some(body)).await.map_err(|e| anyhow::anyhow!("POST {url}/jobs: {e}"))?;
    if !r.ok() && r.status != 503 && r.status != 429 {
        anyhow::bail!("POST {url}/jobs answered {}: {}", r.status, String::from_utf8_lossy(&r.body));
    }
    Ok(())
}

#[derive(Deserialize)]
struct Accepted {
    request_id: String,
}

fn record(rec: &Recorder, shot: Shot, result: Result<u16, http::HttpError>) {
    if !shot.measured {
        return;
    }
    match result {
        Ok(s) if (200..300).contains(&s) => rec.ok(shot.t0.elapsed()),
        Ok(s) => rec.status(s),
        Err(e) => rec.error(&e),
    }
}

/// E2e mode: where accepted jobs go, and how submissions behave.
#[derive(Clone)]
struct Follow {
    tracker: Arc<Tracker>,
    /// Retries of a refusal (429/503).
    retries: u32,
    max_open: u64,
}

type BoxFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// The submit operation; in e2e mode accepted jobs are followed and
/// refusals are retried.
fn submitter(
    pool: Arc<Pool>,
    body: Arc<Vec<u8>>,
    rec: Arc<Recorder>,
    follow: Option<Follow>,
) -> impl Fn(Shot) -> BoxFuture + Send + Sync + 'static {
    move |shot: Shot| {
        let (pool, body, rec, follow) = (pool.clone(), body.clone(), rec.clone(), follow.clone());
        Box::pin(async move {
            if let Some(f) = &follow {
                f.tracker.reserve(f.max_open).await;
            }
            let sent_wall = e2e::wall_ms();
            let mut attempt = 0;
            loop {
                let result = pool.send("POST", "/jobs", Some(&body)).await;
                if let (Some(f), Ok(r)) = (&follow, &result)
                    && (r.status == 429 || r.status == 503)
                    && attempt < f.retries
                {
                    rec.status(r.status);
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(50u64 << attempt.min(4))).await;
                    continue;
                }
                if let Some(f) = &follow {
                    match &result {
                        Ok(r)
                            if r.ok()
                                && let Ok(a) = serde_json::from_slice::<Accepted>(&r.body) =>
                        {
                            f.tracker.add(a.request_id, sent_wall, shot.t0)
                        }
                        _ => f.tracker.release(),
                    }
                }
                record(&rec, shot, result.map(|r| r.status));
                return;
            }
        })
    }
}

/// Submits `n` jobs for get mode and returns their ids once every one is
/// terminal (so the GETs that follow do not compete with workers).
async fn prefill(pool: &Arc<Pool>, body: &Arc<Vec<u8>>, args: &LoadtestArgs) -> anyhow::Result<Vec<String>> {
    let n = args.ids.max(1);
    let ids = Arc::new(std::sync::Mutex::new(Vec::with_capacity(n as usize)));
    let tracker = Arc::new(Tracker::default());
    let plan = Plan {
        total: Some(n),
        duration: None,
        concurrency: args.concurrency.max(1),
        rate: None,
        warmup: Duration::ZERO,
    };
    let (p, b, i, t) = (pool.clone(), body.clone(), ids.clone(), tracker.clone());
    let submitting = async {
        drive::drive(&plan, Arc::default(), move |shot: Shot| {
            let (pool, body, ids, tracker) = (p.clone(), b.clone(), i.clone(), t.clone());
            async move {
                let sent_wall = e2e::wall_ms();
                if let Ok(r) = pool.send("POST", "/jobs", Some(&body)).await
                    && r.ok()
                    && let Ok(a) = serde_json::from_slice::<Accepted>(&r.body)
                    && let Ok(mut v) = ids.lock()
                {
                    v.push(a.request_id.clone());
                    tracker.add(a.request_id, sent_wall, shot.t0);
                }
            }
        })
        .await;
        tracker.submitting_done();
    };
    tokio::join!(submitting, tracker.follow(pool, args.pollers, args.stall_timeout));
    let ids = std::mem::take(&mut *ids.lock().map_err(|_| anyhow::anyhow!("prefill poisoned"))?);
    if ids.is_empty() {
        anyhow::bail!("get mode: none of the {n} prefill submissions was accepted");
    }
    Ok(ids)
}

/// A progress bar on stderr (hidden when asked, with --json, or off a terminal).
fn progress(
    args: &LoadtestArgs,
    total: Option<u64>,
    what: &'static str,
    started: Arc<Started>,
    rec: Arc<Recorder>,
    tracker: Option<Arc<Tracker>>,
) -> ProgressBar {
    let bar = match total {
        Some(t) => ProgressBar::new(t),
        None => ProgressBar::new_spinner(),
    };
    if args.no_progress || args.json {
        bar.set_draw_target(ProgressDrawTarget::hidden());
        return bar;
    }
    let style = ProgressStyle::with_template("{spinner} {prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(what);
    let b = bar.clone();
    tokio::spawn(async move {
        let begin = Instant::now();
        while !b.is_finished() {
            let secs = begin.elapsed().as_secs_f64().max(0.001);
            let ok = rec.ok_count();
            let mut msg = format!("{ok} ok ({:.0}/s)", ok as f64 / secs);
            match &tracker {
                Some(t) => {
                    b.set_position(t.terminal());
                    msg.push_str(&format!("  terminal {}", t.terminal()));
                }
                None => b.set_position(started.0.load(Ordering::Relaxed)),
            }
            let errors = rec.errors.load(Ordering::Relaxed);
            if errors > 0 {
                msg.push_str(&format!("  errors {errors}"));
            }
            b.set_message(msg);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    bar
}
