//! Job listing at scale (`make bench`, scenario `listing`): fills an embedded
//! store with many jobs, then measures `GET /jobs` first pages over HTTP
//! against a running `vendorhost api` on that file.
//!
//! Driven by environment variables (cargo passes `--bench` as an argument):
//! - `LISTING_MODE=fill LISTING_DB=<file> LISTING_JOBS=1000000`: writes the
//!   jobs through `SqliteStore::insert_batch` (5,000 per write), then gives
//!   them a mix of statuses and errors in one SQL update (a job's status
//!   otherwise changes only through a worker); prints `{"jobs", "seconds"}`.
//! - `LISTING_MODE=measure LISTING_URL=http://… LISTING_REQUESTS=2000
//!   LISTING_CONCURRENCY=8`: one JSON line per query shape with p50/p99 ms.

use std::sync::Arc;
use std::time::Instant;

use vendorhost::db::Db;
use vendorhost::model::{NewJob, new_request_id};
use vendorhost::store::Store;
use vendorhost::store::sqlite::SqliteStore;

const BATCH: usize = 5_000;
const VENDORS: [&str; 4] = ["sync", "async", "acme", "zeta"];

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    match env("LISTING_MODE", "").as_str() {
        "fill" => rt.block_on(fill()),
        "measure" => rt.block_on(measure()),
        other => eprintln!("listing bench: set LISTING_MODE=fill or measure (got {other:?}); nothing to do"),
    }
}

async fn fill() {
    let path = env("LISTING_DB", "target/listing-bench.db");
    let n: usize = env("LISTING_JOBS", "1000000").parse().unwrap();
    let db = Db::open(std::path::Path::new(&path)).unwrap();
    let store = Arc::new(SqliteStore::new(db.clone(), false));
    let start = Instant::now();
    // Created one per 2 ms, ending now: about 33 minutes of history per 1M.
    let base = vendorhost::model::now_ms() - 2 * n as i64;
    let mut i = 0;
    while i < n {
        let end = (i + BATCH).min(n);
        let jobs: Vec<NewJob> = (i..end)
            .map(|k| NewJob {
                request_id: new_request_id(),
                vendor: VENDORS[k % VENDORS.len()].to_string(),
                data: format!("{{\"n\":{k}}}"),
                owner: Some(format!("key{}", k % 10)),
                created_at: base + 2 * k as i64,
                idempotency: None,
                notify_url: None,
                trace: None,
                priority: vendorhost::model::Priority::Normal,
            })
            .collect();
        store.insert_batch(&jobs).await.unwrap();
        i = end;
    }
    let inserted = start.elapsed().as_secs_f64();
    // 70 % complete, 20 % failed (two error kinds), 10 % left pending.
    db.write(|c| {
        c.execute_batch(
            "UPDATE jobs SET
               status = CASE WHEN (created_at / 2) % 10 < 7 THEN 'complete' WHEN (created_at / 2) % 10 < 9 THEN 'failed' ELSE status END,
               error = CASE WHEN (created_at / 2) % 10 = 7 THEN 'timeout: the vendor did not answer within 5s'
                            WHEN (created_at / 2) % 10 = 8 THEN 'vendor rejected the request: 400' ELSE NULL END,
               result = CASE WHEN (created_at / 2) % 10 < 7 THEN '{\"ok\":true}' ELSE NULL END,
               queued = 1;
             ANALYZE;",
        )
    })
    .await
    .unwrap();
    println!("{{\"jobs\": {n}, \"insert_seconds\": {inserted:.1}, \"seconds\": {:.1}}}", start.elapsed().as_secs_f64());
}

async fn measure() {
    let url = env("LISTING_URL", "http://127.0.0.1:8000");
    let requests: usize = env("LISTING_REQUESTS", "2000").parse().unwrap();
    let concurrency: usize = env("LISTING_CONCURRENCY", "8").parse().unwrap();
    let client = reqwest::Client::new();
    let shapes = [
        ("filtered", "/jobs?status=failed&vendor=sync&limit=50"),
        ("error_prefix", "/jobs?error=timeout&limit=50"),
        ("key_status", "/jobs?key=key3&status=complete&limit=50"),
        ("unfiltered", "/jobs?limit=50"),
        ("window", "/jobs?vendor=zeta&created_after=0&created_before=99999999999999&limit=500"),
    ];
    for (name, path) in shapes {
        let target = format!("{url}{path}");
        // Warm-up: the first reads fault the index pages in.
        for _ in 0..20 {
            let _ = client.get(&target).send().await.unwrap().bytes().await;
        }
        let per = requests / concurrency;
        let mut tasks = Vec::new();
        let started = Instant::now();
        for _ in 0..concurrency {
            let (client, target) = (client.clone(), target.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per);
                let mut bad = 0usize;
                for _ in 0..per {
                    let t = Instant::now();
                    match client.get(&target).send().await {
                        Ok(r) if r.status().is_success() => {
                            let _ = r.bytes().await;
                        }
                        _ => bad += 1,
                    }
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                (lat, bad)
            }));
        }
        let mut all = Vec::new();
        let mut bad = 0;
        for t in tasks {
            let (lat, b) = t.await.unwrap();
            all.extend(lat);
            bad += b;
        }
        let secs = started.elapsed().as_secs_f64();
        all.sort_by(f64::total_cmp);
        let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
        let items = client.get(&target).send().await.unwrap().json::<serde_json::Value>().await.unwrap()["jobs"]
            .as_array()
            .map_or(0, Vec::len);
        println!(
            "{{\"shape\": \"{name}\", \"path\": \"{path}\", \"requests\": {}, \"errors\": {bad}, \"per_sec\": {:.0}, \"p50_ms\": {:.2}, \"p99_ms\": {:.2}, \"items\": {items}}}",
            all.len(),
            all.len() as f64 / secs,
            pct(0.5),
            pct(0.99)
        );
    }
}
