//! Usage accounting (issue 20): every vendor call's cost (calls, HTTP bytes
//! in and out, CPU time, latency) summed per (API key name, vendor, hour) in
//! the store, read through `GET /usage` (the admin key sees every key, an
//! API key only itself), and counted in Prometheus per key and vendor. Real
//! HTTP, the real `sync` plugin against a mock vendor; on the embedded
//! backend and on Redis + nx-27017; the same figures per vendor and key on
//! the admin's `GET /vendors`, with each key's limits and quotas used (an
//! API key still gets 401 there). Plus the rollup read over a month of 100
//! keys x 20 vendors, whose time is printed (not asserted).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vendorhost::config::{KeyQuota, KeySettings, QuotaPeriod};
use vendorhost::db::Db;
use vendorhost::mock::{self, MockKind, MockOptions};
use vendorhost::model::usage::{DAY_MS, Granularity, HOUR_MS, UsageQuery};
use vendorhost::model::{format_ms, now_ms, parse_ms};
use vendorhost::store::Store;
use vendorhost::store::sqlite::SqliteStore;

use crate::support::app::{TestApp, embedded_config, eventually, plugin, plugins_dir, production_config};

const ADMIN: &str = "key-admin";

async fn get(app: &TestApp, path: &str, key: &str) -> (u16, Value) {
    let r = app.client.get(app.url(path)).bearer_auth(key).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn metric(app: &TestApp, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = app.client.get(app.url("/metrics")).bearer_auth(ADMIN).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{')))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn row<'a>(body: &'a Value, key: &str) -> Vec<&'a Value> {
    body["usage"].as_array().unwrap().iter().filter(|r| r["key"] == key).collect()
}

async fn usage_per_key(production: bool) {
    let p = plugins_dir(&[plugin("sync")]);
    let data = tempfile::tempdir().unwrap();
    let mut cfg =
        if production { production_config(data.path(), p.path()) } else { embedded_config(data.path(), p.path()) };
    cfg.mocks = false;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sync = mock::spawn(MockKind::Sync, listener, MockOptions::default()).await.unwrap();
    let v = cfg.vendors.entry("sync".to_string()).or_default();
    v.allowed_hosts = Some(vec![sync.addr.to_string()]);
    v.config = Some([("base_url".to_string(), sync.base_url())].into_iter().collect());
    cfg.auth.api_keys =
        [("key-a".to_string(), "alice".to_string()), ("key-b".to_string(), "bob".to_string())].into_iter().collect();
    cfg.auth.admin_key = ADMIN.into();
    cfg.auth.keys.insert(
        "alice".into(),
        KeySettings {
            submit_rate: Some(100.0),
            submit_burst: Some(20),
            max_in_flight: Some(50),
            quotas: [("sync".to_string(), KeyQuota { limit: 10, per: QuotaPeriod::Day })].into_iter().collect(),
            ..Default::default()
        },
    );
    let started = now_ms();
    let app = TestApp::start(cfg).await;
    let mut ids = Vec::new();
    for (key, n) in [("key-a", 3), ("key-b", 1)] {
        for i in 0..n {
            let r = app
                .client
                .post(app.url("/jobs"))
                .bearer_auth(key)
                .json(&json!({"vendor": "sync", "data": format!("{key}-{i}")}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 202);
            let b: Value = r.json().await.unwrap();
            ids.push((key, b["request_id"].as_str().unwrap().to_string()));
        }
    }
    for (key, id) in &ids {
        eventually(Duration::from_secs(30), "job complete", || async {
            (get(&app, &format!("/jobs/{id}"), key).await.1["status"] == "complete").then_some(())
        })
        .await;
    }
    // Each job shows what its calls cost, per attempt and in total.
    let (_, job) = get(&app, &format!("/jobs/{}", ids[0].1), "key-a").await;
    let u = &job["usage"];
    assert_eq!((u["calls"].as_u64(), u["http_calls"].as_u64()), (Some(1), Some(1)), "{job}");
    assert!(u["bytes_in"].as_u64() > Some(0) && u["bytes_out"].as_u64() > Some(0), "{job}");
    assert!(u["cpu_ms"].as_f64() > Some(0.0) && u["peak_memory_bytes"].as_u64() > Some(0), "{job}");
    assert_eq!(job["attempts_log"][0]["usage"], job["usage"], "{job}");
    // The admin sees both keys; the rollup is written right after each call.
    let all = eventually(Duration::from_secs(10), "usage rows", || async {
        let (code, body) = get(&app, "/usage", ADMIN).await;
        assert_eq!(code, 200, "{body}");
        let calls = |k: &str| row(&body, k).iter().map(|r| r["calls"].as_u64().unwrap()).sum::<u64>();
        (calls("alice") == 3 && calls("bob") == 1).then_some(body)
    })
    .await;
    let a = row(&all, "alice");
    assert_eq!(a.len(), 1, "one hour, one vendor: {all}");
    let a = a[0];
    assert_eq!(a["vendor"], "sync");
    assert!(a["bytes_in"].as_u64().unwrap() > 0 && a["bytes_out"].as_u64().unwrap() > 0, "{a}");
    assert!(a["cpu_ms"].as_f64().unwrap() > 0.0, "{a}");
    let (from, to) = (parse_ms(a["from"].as_str().unwrap()).unwrap(), parse_ms(a["to"].as_str().unwrap()).unwrap());
    assert_eq!((from % HOUR_MS, to - from), (0, HOUR_MS), "{a}");
    assert!(from <= now_ms() && now_ms() < to, "{a}");
    // An API key sees only itself, and may not ask for another.
    let (code, own) = get(&app, "/usage", "key-a").await;
    assert_eq!(code, 200);
    assert!(own["usage"].as_array().unwrap().iter().all(|r| r["key"] == "alice"), "{own}");
    assert_eq!(row(&own, "alice")[0]["calls"], 3);
    let (code, body) = get(&app, "/usage?key=bob", "key-a").await;
    assert_eq!((code, body["error"]["code"].as_str()), (403, Some("forbidden")), "{body}");
    // By day, filtered by key and vendor.
    let (code, day) = get(&app, "/usage?key=bob&vendor=sync&granularity=day", ADMIN).await;
    assert_eq!(code, 200, "{day}");
    let d = &day["usage"][0];
    let (from, to) = (parse_ms(d["from"].as_str().unwrap()).unwrap(), parse_ms(d["to"].as_str().unwrap()).unwrap());
    assert_eq!((from % DAY_MS, to - from, d["calls"].as_u64()), (0, DAY_MS, Some(1)), "{day}");
    assert_eq!(day["usage"].as_array().unwrap().len(), 1, "{day}");
    // Outside the range: nothing.
    let (_, old) = get(&app, "/usage?from=2020-01-01T00:00:00Z&to=2020-01-02T00:00:00Z", ADMIN).await;
    assert_eq!(old["usage"], json!([]));
    // Bad parameters are named.
    for (q, field) in [
        ("granularity=week", "`granularity`"),
        ("from=yesterday", "`from`"),
        ("to=1&from=7200000", "`to`"),
        ("from=0&to=99999999999999", "`to`"),
        ("color=red", "`color`"),
        ("vendor=a&vendor=b", "`vendor`"),
    ] {
        let (code, body) = get(&app, &format!("/usage?{q}"), ADMIN).await;
        assert_eq!(code, 400, "{q}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(field), "{q}: {body}");
    }
    // Prometheus, per key name and vendor (the recorder is the process's:
    // at least these calls).
    assert!(metric(&app, "vendorhost_usage_calls_total", &[("key", "alice"), ("vendor", "sync")]).await >= 3.0);
    assert!(metric(&app, "vendorhost_usage_bytes_out_total", &[("key", "bob"), ("vendor", "sync")]).await > 0.0);
    vendors_show_usage_and_limits(&app, &all, started).await;
    app.stop().await;
}

/// `GET /vendors` for the admin: the sync vendor's usage per key and in
/// total (the same figures as `GET /usage`), every key's limits with its
/// quota used; an API key gets 401 there, as before.
async fn vendors_show_usage_and_limits(app: &TestApp, usage: &Value, started: i64) {
    let (code, body) = get(app, "/vendors", ADMIN).await;
    assert_eq!(code, 200, "{body}");
    let sync = body["vendors"].as_array().unwrap().iter().find(|v| v["id"] == "sync").unwrap();
    let day = &sync["usage"]["last_24h"];
    assert_eq!(day["total"]["calls"], 4, "{sync}");
    let keys: Vec<(&str, u64)> = day["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["key"].as_str().unwrap(), k["calls"].as_u64().unwrap()))
        .collect();
    assert_eq!(keys, [("alice", 3), ("bob", 1)], "{sync}");
    let a = &day["keys"][0];
    let from_usage = row(usage, "alice")[0];
    for f in ["bytes_in", "bytes_out", "cpu_ms", "latency_ms"] {
        assert_eq!(a[f], from_usage[f], "{f}: {a} vs GET /usage {from_usage}");
    }
    let hour = parse_ms(day["from"].as_str().unwrap()).unwrap();
    assert_eq!(hour % HOUR_MS, 0, "{day}");
    assert!(now_ms() - hour >= DAY_MS && now_ms() - hour < DAY_MS + 2 * HOUR_MS, "{day}");
    // Today (UTC) and the quota: the same calls unless the test crossed midnight.
    let midnight = (started.div_euclid(DAY_MS) + 1) * DAY_MS;
    let same_day = now_ms() < midnight;
    if same_day {
        assert_eq!(sync["usage"]["today"]["total"]["calls"], 4, "{sync}");
        assert_eq!(sync["usage"]["today"]["from"], format_ms(midnight - DAY_MS), "{sync}");
    }
    let alice = &body["keys"][0];
    assert_eq!(alice["name"], "alice", "{body}");
    assert_eq!(
        (alice["submit_rate"].as_f64(), alice["submit_burst"].as_u64(), alice["max_in_flight"].as_u64()),
        (Some(100.0), Some(20), Some(50)),
        "{alice}"
    );
    assert_eq!((alice["in_flight"].as_u64(), alice["weight"].as_f64()), (Some(0), Some(1.0)), "{alice}");
    let q = &alice["quotas"][0];
    assert_eq!((q["vendor"].as_str(), q["limit"].as_u64(), q["per"].as_str()), (Some("sync"), Some(10), Some("day")));
    if same_day {
        assert_eq!((q["used"].as_u64(), q["remaining"].as_u64()), (Some(3), Some(7)), "{q}");
        assert_eq!(q["resets_at"], format_ms(midnight), "{q}");
    }
    // A key without settings lists none; nothing else about keys is shown.
    assert_eq!(body["keys"][1], json!({"name": "bob", "weight": 1.0, "quotas": []}), "{body}");
    assert_eq!(body["keys"].as_array().unwrap().len(), 2, "{body}");
    // An API key is not the admin: no vendors, no one's usage.
    let (code, other) = get(app, "/vendors", "key-a").await;
    assert_eq!(code, 401, "{other}");
    assert!(other.get("vendors").is_none() && other.get("keys").is_none(), "{other}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn usage_is_summed_per_key_vendor_and_hour_embedded() {
    usage_per_key(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn usage_is_summed_per_key_vendor_and_hour_production() {
    usage_per_key(true).await;
}

/// CPU time of this process so far: unlike wall time, not stretched by
/// whatever else the machine runs.
fn process_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec for the call to write.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A month of hourly rollups for 100 keys x 20 vendors (1.44 M rows) in the
/// embedded store: the reads `GET /usage` makes, timed and printed (the
/// figure goes to README; `--nocapture` shows it). Sums are checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_rollup_month_read_time_is_printed() {
    let d = tempfile::tempdir().unwrap();
    let db = Db::open(&d.path().join("u.db")).unwrap();
    let start = 1_764_547_200_000_i64; // 2025-12-01T00:00:00Z
    let hours = 30 * 24;
    db.write(move |c| {
        c.execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
             INSERT INTO usage_rollup (key, vendor, hour, calls, bytes_in, bytes_out, cpu_us, latency_ms)
             SELECT 'key' || (i % 100), 'vendor' || ((i / 100) % 20), ?2 + (i / 2000) * 3600000, 2, 100, 50, 1000, 30
             FROM n",
            rusqlite::params![100 * 20 * hours - 1, start],
        )?;
        // The daily rows `record_usage` keeps beside the hourly ones.
        c.execute(
            "INSERT INTO usage_rollup_day (key, vendor, day, calls, bytes_in, bytes_out, cpu_us, latency_ms)
             SELECT key, vendor, (hour / 86400000) * 86400000, sum(calls), sum(bytes_in), sum(bytes_out),
                sum(cpu_us), sum(latency_ms)
             FROM usage_rollup GROUP BY key, vendor, (hour / 86400000) * 86400000",
            [],
        )
    })
    .await
    .unwrap();
    let store = SqliteStore::new(db, true);
    let month = |key: Option<&str>, granularity| UsageQuery {
        key: key.map(str::to_string),
        vendor: None,
        from: start,
        to: start + hours * HOUR_MS,
        granularity,
    };
    for (what, q, rows) in [
        ("one key, hourly", month(Some("key7"), Granularity::Hour), 20 * hours),
        ("one key, daily", month(Some("key7"), Granularity::Day), 20 * 30),
        ("every key, daily", month(None, Granularity::Day), 2000 * 30),
    ] {
        let (t, cpu) = (Instant::now(), process_cpu());
        let got = store.usage(&q).await.unwrap();
        let (took, cpu) = (t.elapsed(), process_cpu() - cpu);
        assert_eq!(got.len() as i64, rows, "{what}");
        let per = if q.granularity == Granularity::Day { 24 * 2 } else { 2 };
        assert!(got.iter().all(|r| r.usage.calls == per), "{what}");
        // In the answer's order: key, vendor, time.
        assert!(got.windows(2).all(|w| (&w[0].key, &w[0].vendor, w[0].from) < (&w[1].key, &w[1].vendor, w[1].from)));
        // What the handler adds: the views and the JSON text.
        let t = Instant::now();
        let body = serde_json::to_vec(&vendorhost::api::usage::views(got, q.granularity)).unwrap();
        let json = t.elapsed();
        assert!(body.len() as i64 > rows * 100, "{what}");
        println!(
            "usage rollup read, a month of 100 keys x 20 vendors, {what}: {rows} rows in {took:?} \
             (store; {cpu:?} of CPU), then {json:?} to JSON ({} kB), {:?} in all",
            body.len() / 1000,
            took + json
        );
    }
}
