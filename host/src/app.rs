//! The composition root: builds the backends, the plugin runtime, the API
//! and the workers from a `Config`, runs them, and shuts them down in order
//! (stop accepting, drain workers, stop mocks).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{self, AppState};
use crate::breaker::Breakers;
use crate::breaker::local::LocalBreakers;
use crate::breaker::redis::RedisBreakers;
use crate::config::Config;
use crate::db::Db;
use crate::jobs::callbacks::Callbacks;
use crate::jobs::dead_letters::DeadLetters;
use crate::jobs::service::JobService;
use crate::jobs::sweeper::Sweeper;
use crate::jobs::worker::{self, WorkerCtx};
use crate::limits::RateLimiter;
use crate::limits::local::LocalLimiter;
use crate::limits::redis::RedisLimiter;
use crate::mock::{self, MockHandle, MockKind, MockOptions};
use crate::plugins::cache::ComponentCache;
use crate::plugins::{Registry, Runtime, watch as plugin_watch};
use crate::policy::Policies;
use crate::queue::Queue;
use crate::queue::redis::RedisQueue;
use crate::queue::sqlite::SqliteQueue;
use crate::store::Store;
use crate::store::mongo::MongoStore;
use crate::store::sqlite::SqliteStore;

/// Start-up failures: one line naming the cause and the fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("configuration: {0} (check vendorhost.toml and VENDORHOST_* variables)")]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot listen on {addr}: {source} (is another process using the port? set --listen or VENDORHOST_LISTEN)")]
    Listen { addr: String, source: std::io::Error },
    #[error("cannot open the embedded database {path}: {message} (set --data or VENDORHOST_DATA to a writable path)")]
    Database { path: PathBuf, message: String },
    #[error("cannot reach Redis at {url}: {message} (start Redis or fix VENDORHOST_QUEUE)")]
    Redis { url: String, message: String },
    #[error("cannot reach MongoDB at {url}: {message} (start MongoDB or fix VENDORHOST_STORE)")]
    Mongo { url: String, message: String },
    #[error("plugin runtime: {0}")]
    Runtime(String),
    #[error("mock vendor: {0}")]
    Mock(std::io::Error),
}

/// What this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// API, workers and (if enabled) mock vendors in one process.
    Serve,
    /// The API only.
    Api,
    /// Workers (and the sweeper) only.
    Worker,
}

pub struct Backends {
    pub queue: Arc<dyn Queue>,
    pub store: Arc<dyn Store>,
    pub limiter: Arc<dyn RateLimiter>,
    pub breakers: Arc<dyn Breakers>,
    pub description: String,
}

/// Hides credentials in a URL for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

pub async fn backends(cfg: &Config) -> Result<Backends, StartError> {
    let db = if cfg.is_embedded_queue() || cfg.is_embedded_store() {
        Some(Db::open(&cfg.data).map_err(|e| StartError::Database { path: cfg.data.clone(), message: e.to_string() })?)
    } else {
        None
    };
    let redis_err = |e: &dyn std::fmt::Display| StartError::Redis { url: redact(&cfg.queue), message: e.to_string() };
    let (queue, limiter, breakers): (Arc<dyn Queue>, Arc<dyn RateLimiter>, Arc<dyn Breakers>) = match &db {
        Some(db) if cfg.is_embedded_queue() => {
            (Arc::new(SqliteQueue::new(db.clone())), Arc::new(LocalLimiter::new()), Arc::new(LocalBreakers::new()))
        }
        _ => {
            let q = RedisQueue::connect(&cfg.queue, &cfg.redis_prefix).await.map_err(|e| redis_err(&e))?;
            let l = RedisLimiter::connect(&cfg.queue, &cfg.redis_prefix).await.map_err(|e| redis_err(&e))?;
            let b = RedisBreakers::connect(&cfg.queue, &cfg.redis_prefix).await.map_err(|e| redis_err(&e))?;
            (Arc::new(q), Arc::new(l), Arc::new(b))
        }
    };
    let store: Arc<dyn Store> = match &db {
        Some(db) if cfg.is_embedded_store() => Arc::new(SqliteStore::new(db.clone(), cfg.is_embedded_queue())),
        _ => Arc::new(
            MongoStore::connect(&cfg.store, &cfg.mongo_db)
                .await
                .map_err(|e| StartError::Mongo { url: redact(&cfg.store), message: e.to_string() })?
                .with_job_ttl(Some(cfg.retention.jobs)),
        ),
    };
    let description = format!(
        "queue: {}, store: {}",
        if cfg.is_embedded_queue() { format!("sqlite ({})", cfg.data.display()) } else { format!("redis ({})", redact(&cfg.queue)) },
        if cfg.is_embedded_store() { format!("sqlite ({})", cfg.data.display()) } else { format!("mongodb ({})", redact(&cfg.store)) },
    );
    Ok(Backends { queue, store, limiter, breakers, description })
}

/// Settings derived at start-up (the in-process mocks' addresses and
/// secret), applied under whatever the operator configured.
pub type Overlay = std::collections::BTreeMap<String, crate::config::VendorPolicy>;

/// Fills each vendor field the operator left unset from `overlay`.
pub fn apply_overlay(cfg: &mut Config, overlay: &Overlay) {
    for (id, o) in overlay {
        let v = cfg.vendors.entry(id.clone()).or_default();
        if v.allowed_hosts.is_none() {
            v.allowed_hosts = o.allowed_hosts.clone();
        }
        if v.webhook_secrets.is_none() {
            v.webhook_secrets = o.webhook_secrets.clone();
        }
        if let Some(oc) = &o.config {
            let c = v.config.get_or_insert_with(Default::default);
            for (k, val) in oc {
                c.entry(k.clone()).or_insert_with(|| val.clone());
            }
        }
    }
}

/// The in-process mock vendors of the embedded default, and the grants and
/// settings that point the sample plugins at them (only where the operator
/// set nothing).
async fn start_mocks(overlay: &mut Overlay) -> Result<Vec<MockHandle>, StartError> {
    let (_, secret) = crate::webhook::Secret::generate();
    let mut handles = Vec::new();
    for (kind, id) in [(MockKind::Sync, "sync"), (MockKind::Async, "async")] {
        let listener = TcpListener::bind("127.0.0.1:0").await.map_err(StartError::Mock)?;
        let opts = MockOptions { secret: (kind == MockKind::Async).then(|| secret.clone()), ..MockOptions::default() };
        let h = mock::spawn(kind, listener, opts).await.map_err(StartError::Mock)?;
        let v = overlay.entry(id.to_string()).or_default();
        v.allowed_hosts = Some(vec![h.addr.to_string()]);
        v.config = Some([("base_url".to_string(), h.base_url())].into_iter().collect());
        if kind == MockKind::Async {
            v.webhook_secrets = Some(vec![secret.clone()]);
        }
        println!("mock vendor {id} on {}", h.base_url());
        handles.push(h);
    }
    Ok(handles)
}

pub struct Started {
    pub addr: Option<SocketAddr>,
}

/// Runs `role` until `shutdown` resolves. `listener`: an already bound
/// socket (tests bind port 0); otherwise `cfg.listen` is bound.
pub async fn run(
    mut cfg: Config,
    config_path: Option<PathBuf>,
    role: Role,
    listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let metrics = api::metrics::recorder();
    let listener = match (role, listener) {
        (Role::Worker, _) => None,
        (_, Some(l)) => Some(l),
        (_, None) => Some(TcpListener::bind(&cfg.listen).await.map_err(|e| StartError::Listen { addr: cfg.listen.clone(), source: e })?),
    };
    let addr = listener.as_ref().and_then(|l| l.local_addr().ok());
    if cfg.public_url.is_empty() {
        let port = addr.map(|a| a.port()).unwrap_or(8000);
        let host = match addr {
            Some(a) if !a.ip().is_unspecified() => a.ip().to_string(),
            _ => "127.0.0.1".to_string(),
        };
        cfg.public_url = format!("http://{host}:{port}");
    }
    let mut overlay = Overlay::new();
    let mocks = if cfg.mocks && role == Role::Serve { start_mocks(&mut overlay).await? } else { Vec::new() };
    apply_overlay(&mut cfg, &overlay);

    let backends = backends(&cfg).await?;
    let runtime = Runtime::shared().map_err(|e| StartError::Runtime(format!("{e:#}")))?;
    let cache = ComponentCache::new(Some(cfg.cache_dir()), runtime.engine.compatibility_key());
    if let Err(e) = std::fs::create_dir_all(&cfg.plugins_dir) {
        tracing::warn!(dir = %cfg.plugins_dir.display(), error = %e, "cannot create plugins directory");
    }
    let registry = Arc::new(Registry::new(runtime, cache, cfg.plugins_dir.clone()));
    registry.scan().await;
    print_banner(&cfg, role, addr, &backends, &registry);

    let policies = Arc::new(Policies::new(cfg.clone()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();

    {
        let registry = registry.clone();
        let mut rx = stop_rx.clone();
        tasks.spawn(async move { plugin_watch::watch(registry, async move { let _ = rx.wait_for(|s| *s).await; }).await });
    }
    if let Some(path) = config_path.clone() {
        let policies = policies.clone();
        let rx = stop_rx.clone();
        tasks.spawn(watch_config(path, policies, overlay.clone(), rx));
    }
    if role != Role::Api {
        let ctx = Arc::new(WorkerCtx {
            queue: backends.queue.clone(),
            store: backends.store.clone(),
            registry: registry.clone(),
            policies: policies.clone(),
            limiter: backends.limiter.clone(),
            breakers: backends.breakers.clone(),
            settings: cfg.queue_settings.clone(),
            public_url: cfg.public_url.clone(),
            consumer: format!("{}-{}", hostname(), std::process::id()),
        });
        tasks.spawn(worker::run(ctx, cfg.workers, stop_rx.clone()));
        let sweeper = Sweeper {
            queue: backends.queue.clone(),
            store: backends.store.clone(),
            settings: cfg.queue_settings.clone(),
            retention: cfg.retention.clone(),
        };
        tasks.spawn(sweeper.run(stop_rx.clone()));
    }

    let server = match listener {
        Some(listener) => {
            let state = AppState {
                service: Arc::new(JobService { store: backends.store.clone(), queue: backends.queue.clone(), registry: registry.clone() }),
                callbacks: Arc::new(Callbacks {
                    store: backends.store.clone(),
                    queue: backends.queue.clone(),
                    registry: registry.clone(),
                    policies: policies.clone(),
                    replay_window: cfg.retention.webhook_ids,
                }),
                dead_letters: Arc::new(DeadLetters { queue: backends.queue.clone(), store: backends.store.clone() }),
                registry: registry.clone(),
                policies: policies.clone(),
                breakers: backends.breakers.clone(),
                queue: backends.queue.clone(),
                store: backends.store.clone(),
                api: Arc::new(cfg.api.clone()),
                auth: Arc::new(cfg.auth.clone()),
                metrics: metrics.clone(),
            };
            let router = api::router(state);
            let opts = api::serve::ServeOptions::from_settings(&cfg.api);
            let mut rx = stop_rx.clone();
            Some(tokio::spawn(async move {
                let graceful = async move {
                    let _ = rx.wait_for(|s| *s).await;
                };
                api::serve::serve(listener, router, opts, graceful).await;
            }))
        }
        None => None,
    };

    if role == Role::Worker && !cfg.metrics_listen.is_empty() {
        tasks.spawn(serve_worker_metrics(cfg.metrics_listen.clone(), cfg.api.clone(), metrics.clone(), stop_rx.clone()));
    }

    shutdown.await;
    tracing::info!("shutting down: no new requests; draining workers");
    let _ = stop_tx.send(true);
    if let Some(s) = server {
        let _ = tokio::time::timeout(cfg.queue_settings.shutdown_grace, s).await;
    }
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(cfg.queue_settings.shutdown_grace + std::time::Duration::from_secs(2), drain).await.is_err() {
        tracing::warn!("some tasks did not stop within the grace period");
    }
    for m in mocks {
        m.shutdown().await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// A worker process has no API; this tiny listener exposes its metrics (the
/// job, call, retry, rate-limit and breaker series live in the workers).
async fn serve_worker_metrics(
    addr: String,
    api_settings: crate::config::ApiSettings,
    handle: Option<metrics_exporter_prometheus::PrometheusHandle>,
    mut stop: watch::Receiver<bool>,
) {
    use axum::routing::get;
    let listener = match TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(addr = %addr, error = %e, "cannot serve worker metrics");
            return;
        }
    };
    println!("worker metrics on http://{addr}/metrics");
    let router = axum::Router::new()
        .route("/metrics", get(move || async move { handle.as_ref().map(|h| h.render()).unwrap_or_default() }))
        .route("/healthz", get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }));
    let graceful = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    api::serve::serve(listener, router, api::serve::ServeOptions::from_settings(&api_settings), graceful).await;
}

fn hostname() -> String {
    std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "vendorhost".into())
}

fn print_banner(cfg: &Config, role: Role, addr: Option<SocketAddr>, backends: &Backends, registry: &Registry) {
    let role_name = match role {
        Role::Serve => "serve (API + workers)",
        Role::Api => "api",
        Role::Worker => "worker",
    };
    println!("vendorhost {} — {role_name}", env!("CARGO_PKG_VERSION"));
    if let Some(a) = addr {
        println!("listening on http://{a}  (public URL {})", cfg.public_url);
    }
    println!("{}", backends.description);
    let (vendors, rejected) = registry.summaries();
    println!("plugins from {}: {} loaded, {} rejected", cfg.plugins_dir.display(), vendors.len(), rejected.len());
    for v in &vendors {
        println!("  loaded   {:<12} {:<6} v{:<8} {}", v.id, v.mode.as_str(), v.version, v.file);
    }
    for r in &rejected {
        println!("  rejected {}: {}", r.file, r.reason);
    }
    if vendors.is_empty() {
        println!("  (no plugins: run `make build-plugins`, or drop .wasm files into {})", cfg.plugins_dir.display());
    }
}

/// Reloads the vendor tables (grants, limits, secrets) when the config file
/// changes, without a restart. Polled (editors and config-management tools
/// replace files in ways watchers miss); a change is read only once the file
/// has been still for a moment, so a half-saved file is not taken for an
/// empty one. An invalid file is logged and ignored: the last good policies
/// stay in force.
async fn watch_config(path: PathBuf, policies: Arc<Policies>, overlay: Overlay, mut stop: watch::Receiver<bool>) {
    const TICK: std::time::Duration = std::time::Duration::from_millis(500);
    let stamp = |p: &PathBuf| std::fs::metadata(p).ok().map(|m| (m.modified().ok(), m.len()));
    let mut last = stamp(&path);
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            break;
        }
        let now = stamp(&path);
        if now == last {
            continue;
        }
        tokio::time::sleep(plugin_watch::DEBOUNCE).await;
        if stamp(&path) != now {
            continue; // still being written: the next tick sees it again
        }
        last = now;
        let current = policies.config();
        match current.reload_vendors(Some(&path)) {
            Ok(mut fresh) => {
                apply_overlay(&mut fresh, &overlay);
                let vendors: Vec<&str> = fresh.vendors.keys().map(String::as_str).collect();
                tracing::info!(file = %path.display(), vendors = ?vendors, "configuration reloaded (vendor policies, grants, secrets)");
                policies.set_config(fresh);
            }
            Err(e) => tracing::warn!(file = %path.display(), error = %e, "configuration change ignored: invalid; the previous settings stay in force"),
        }
    }
}
