//! Plugin call cost on the production path (`Runtime::info`/`fetch`: async,
//! a fresh Store per call), and compile vs cached-load time.
//!
//! Also the cost of result cleaning (`clean`: key rules and value detectors
//! over a vendor answer), in µs per KB of result.
//!
//! And the same sync vendor in each language (`langs`: Rust `sync`, Python
//! `sync-py`, JavaScript `sync-js`): instantiate + call p50/p99 against a
//! loopback vendor, component size, compile time, and the smallest memory cap
//! each runs under.
//!
//! `cargo bench -p vendorhost --bench plugins` (release). `BENCH_ITERS`
//! changes the iteration count (default 10 000); `BENCH_PLUGIN_ONLY=info|echo|http|compile|clean|langs`
//! runs one part (for profiling). Needs the built plugins (`make build-plugins`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vendorhost::plugins::cache::ComponentCache;
use vendorhost::plugins::grants::Grants;
use vendorhost::plugins::loader::{self, Plugin};
use vendorhost::plugins::{CallPolicy, FetchOutcome, JobInput, Runtime};

/// The goal for instantiate + call with a fresh Store, p50.
const GOAL_US: f64 = 15.0;

fn main() {
    let iters: usize = std::env::var("BENCH_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // Spawned, not block_on'd: the calls run on a worker thread as in the service.
    rt.block_on(async move { tokio::spawn(run(iters)).await.unwrap() });
}

fn plugin_path(rel: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    assert!(p.exists(), "{} is missing: run `make build-plugins`", p.display());
    p
}

async fn run(iters: usize) {
    let runtime = Arc::new(Runtime::new().unwrap());
    let cache = ComponentCache::new(None, runtime.engine.compatibility_key());
    let load = |rel: &'static str| {
        let runtime = runtime.clone();
        let cache = cache.clone();
        async move { loader::load(&runtime, &cache, &plugin_path(rel)).await.unwrap() }
    };
    let sync: Plugin = load("plugins/dist/sync.wasm").await;
    let echo: Plugin = load("plugins/dist-test/echo-v1.wasm").await;
    let server = fake_vendor().await;

    let policy = |grants: &[String], config: &[(&str, String)]| {
        Arc::new(CallPolicy {
            vendor: "bench".into(),
            grants: Grants::new(grants).unwrap(),
            allow_private_addresses: false,
            secret_headers: Vec::new(),
            memory_cap_bytes: 64 << 20,
            timeout: Duration::from_secs(5),
            config: config.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
            observed: Default::default(),
        })
    };
    let none = policy(&[], &[]);
    let to_server = policy(&[server.to_string()], &[("base_url", format!("http://{server}"))]);
    let job = |data: &str| JobInput {
        request_id: "bench-1".into(),
        data: data.into(),
        callback_url: "http://127.0.0.1:9/cb".into(),
        attempt: 1,
    };
    let echo_job = job("{}");
    let sync_job = job(r#"{"name":"Ada"}"#);

    println!("plugin call cost: {iters} iterations each (after {} warm-up), fresh Store per call", iters / 10);
    println!("{:<40} {:>9} {:>9} {:>9} {:>10}", "", "p50 µs", "p99 µs", "mean µs", "p50/goal");
    let only = std::env::var("BENCH_PLUGIN_ONLY").unwrap_or_default();
    let on = |part: &str| only.is_empty() || only == part;
    if on("info") {
        let info = measure(iters, || async { runtime.info(&echo.pre, none.clone()).await.unwrap() }).await;
        row("info (instantiate + call)", &info);
    }
    if on("echo") {
        let fetch = measure(iters, || async {
            let out = runtime.fetch(&echo.pre, none.clone(), &echo_job).await.unwrap();
            assert!(matches!(out, FetchOutcome::Complete(_)));
        })
        .await;
        row("echo fetch (instantiate + call, JSON)", &fetch);
    }
    if on("http") {
        let http = measure(iters, || async {
            let out = runtime.fetch(&sync.pre, to_server.clone(), &sync_job).await.unwrap();
            assert!(matches!(out, FetchOutcome::Complete(_)));
        })
        .await;
        row("sync fetch (+ loopback HTTP)", &http);
    }
    if on("compile") {
        compile_vs_cache(&runtime);
    }
    if on("langs") {
        languages(&runtime, iters, server).await;
    }
    if on("clean") {
        cleaning_cost(iters);
    }
}

/// A vendor answer of `records` records, each with personal data by key
/// and inside strings (or, `pii` false, with none of either).
fn answer(records: usize, pii: bool) -> String {
    let items: Vec<serde_json::Value> = (0..records)
        .map(|i| {
            let mut r = serde_json::json!({
                "id": format!("ORD-2024-{i:06}"),
                "name": "  Ada Lovelace ",
                "created_at": "2024-01-15T10:30:00.123Z",
                "score": i as f64 / 7.0,
                "address": {"city": " London ", "zip": "SW1A 1AA", "note": "ring twice, leave at the door"},
                "tags": ["alpha", "beta", "gamma"],
            });
            if pii {
                r["owner_email"] = "ada@example.com".into();
                r["contact"] = serde_json::json!({"phoneNumber": "+44 20 7946 0958"});
                r["note"] = "reach me at ada@example.org or (555) 123-4567; card 4111 1111 1111 1111".into();
            } else {
                r["note"] = "reach me through the vendor's portal; reference 2024-000123, batch 17".into();
            }
            r
        })
        .collect();
    serde_json::json!({"request_id": "01a21092-6e96-73ff-a85f-67c18ef9b1d5", "records": items}).to_string()
}

/// Cleaning cost per KB of result: parse, clean, serialize (what the worker
/// does with each answer), at two sizes, with and without personal data.
fn cleaning_cost(iters: usize) {
    let cleaner = vendorhost::clean::Cleaner::with_keys(vendorhost::clean::DEFAULT_PII_KEYS);
    for (records, pii) in [(40, true), (40, false), (4000, true)] {
        let text = answer(records, pii);
        let kb = text.len() as f64 / 1024.0;
        let runs = (iters * 4 / records).clamp(20, 20_000);
        let mut ns: Vec<u64> = Vec::with_capacity(runs);
        let mut removed = 0;
        for _ in 0..runs {
            let t = Instant::now();
            let out = cleaner.clean_text(&text);
            ns.push(t.elapsed().as_nanos() as u64);
            removed = out.report.counts.total();
            std::hint::black_box(out);
        }
        ns.sort_unstable();
        // What parsing and serializing alone cost (the floor).
        let mut base: Vec<u64> = Vec::with_capacity(runs);
        for _ in 0..runs {
            let t = Instant::now();
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            let out = serde_json::to_string(&v).unwrap();
            drop(v);
            base.push(t.elapsed().as_nanos() as u64);
            std::hint::black_box(out);
        }
        base.sort_unstable();
        let per_kb = |n: u64| n as f64 / 1000.0 / kb;
        println!(
            "result cleaning: {:.2} µs/KB p50, {:.2} µs/KB p99 ({:.0} KB result, {} removed; parse + clean + serialize, \
             of which parse + serialize {:.2} µs/KB; {} runs)",
            per_kb(ns[ns.len() / 2]),
            per_kb(ns[(ns.len() * 99 / 100).min(ns.len() - 1)]),
            kb,
            removed,
            per_kb(base[base.len() / 2]),
            runs,
        );
    }
}

/// Per-call latencies in ns, sorted.
async fn measure<F, Fut>(iters: usize, mut f: F) -> Vec<u64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future,
{
    for _ in 0..iters / 10 {
        f().await;
    }
    let mut ns = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        f().await;
        ns.push(t.elapsed().as_nanos() as u64);
    }
    ns.sort_unstable();
    ns
}

fn row(name: &str, ns: &[u64]) {
    let pct = |p: f64| ns[((ns.len() as f64 * p) as usize).min(ns.len() - 1)] as f64 / 1000.0;
    let mean = ns.iter().sum::<u64>() as f64 / ns.len() as f64 / 1000.0;
    let p50 = pct(0.50);
    println!("{name:<40} {p50:>9.1} {:>9.1} {mean:>9.1} {:>9.2}x", pct(0.99), p50 / GOAL_US);
}

/// Compiling sync.wasm vs loading its serialized form from a compile cache
/// entry (HMAC verified, then deserialized).
fn compile_vs_cache(runtime: &Runtime) {
    use wasmtime::component::Component;
    let engine = &runtime.engine.engine;
    let bytes = std::fs::read(plugin_path("plugins/dist/sync.wasm")).unwrap();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut compile = Vec::new();
    let mut component = None;
    for _ in 0..5 {
        let t = Instant::now();
        component = Some(Component::new(engine, &bytes).unwrap());
        compile.push(ms(t.elapsed()));
    }
    let serialized = component.unwrap().serialize().unwrap();
    // What the cache does on a hit: verify the entry's HMAC, then deserialize.
    let (key, name) = ([7u8; 32], "sync-bench.cwasm");
    let entry = vendorhost::plugins::cache::seal_entry(&key, name, &serialized).unwrap();
    let mut load = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let verified = vendorhost::plugins::cache::open_entry(&key, name, &entry).unwrap();
        // SAFETY: bytes serialized just above by this engine.
        let c = unsafe { Component::deserialize(engine, verified) }.unwrap();
        load.push(ms(t.elapsed()));
        drop(c);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    println!(
        "sync.wasm ({} KB): compile {:.1} ms (median of 5), cached load {:.3} ms (median of 50, {} KB serialized)",
        bytes.len() / 1024,
        median(&mut compile),
        median(&mut load),
        serialized.len() / 1024
    );
}

/// The sync vendor in Rust, Python and JavaScript: call cost, size, compile
/// time, and the smallest memory cap (in MiB steps) a call succeeds under.
/// Python and JavaScript calls cost milliseconds: a tenth of the iterations.
async fn languages(runtime: &Arc<Runtime>, iters: usize, server: std::net::SocketAddr) {
    let cache = ComponentCache::new(None, runtime.engine.compatibility_key());
    let job = JobInput {
        request_id: "bench-1".into(),
        data: r#"{"name":"Ada"}"#.into(),
        callback_url: String::new(),
        attempt: 1,
    };
    let mut sizes = Vec::new();
    for (file, language) in [("sync", "Rust"), ("sync-py", "Python"), ("sync-js", "JavaScript")] {
        let path = plugin_path(&format!("plugins/dist/{file}.wasm"));
        let size = std::fs::metadata(&path).unwrap().len();
        let t = Instant::now();
        let p = loader::load(runtime, &cache, &path).await.unwrap();
        let compile_s = t.elapsed().as_secs_f64();
        let policy = |cap_mib: usize| {
            Arc::new(CallPolicy {
                vendor: file.into(),
                grants: Grants::new(&[server.to_string()]).unwrap(),
                allow_private_addresses: false,
                secret_headers: Vec::new(),
                memory_cap_bytes: cap_mib << 20,
                timeout: Duration::from_secs(10),
                config: [("base_url".to_string(), format!("http://{server}"))].into_iter().collect(),
                observed: Default::default(),
            })
        };
        let mut needed = None;
        for cap in 1..=256 {
            if runtime.fetch(&p.pre, policy(cap), &job).await.is_ok() {
                needed = Some(cap);
                break;
            }
        }
        let default_cap = policy(64);
        let n = if file == "sync" { iters } else { (iters / 10).max(100) };
        let ns = measure(n, || async {
            let out = runtime.fetch(&p.pre, default_cap.clone(), &job).await.unwrap();
            assert!(matches!(out, FetchOutcome::Complete(_)));
        })
        .await;
        row(&format!("{file} fetch ({language}, + HTTP)"), &ns);
        sizes.push(format!(
            "{file}.wasm {:.1} KB ({language}: compile {compile_s:.1} s, runs under a {} memory cap)",
            size as f64 / 1024.0,
            needed.map_or("> 256 MiB".to_string(), |m| format!("{m} MiB"))
        ));
    }
    for line in sizes {
        println!("{line}");
    }
}

/// A vendor answering every lookup with the same JSON, on loopback.
async fn fake_vendor() -> std::net::SocketAddr {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/v1/lookup",
        post(|| async {
            (
                [("content-type", "application/json")],
                r#"{"request_id":"bench-1","source":"bench","record":{"name":"Ada Lovelace"}}"#,
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}
