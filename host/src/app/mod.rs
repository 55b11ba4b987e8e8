//! The composition root: builds the backends, the plugin runtime, the API
//! and the workers from a `Config`, runs them, and shuts them down in order
//! (stop accepting, drain workers, stop mocks).

mod backends;
mod error;
mod mocks;
mod needs;
mod reload;

pub use backends::{Backends, backends, mongo_store, redact};
pub use error::StartError;
pub use mocks::{Overlay, apply_overlay};

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{self, AppShared, AppState, MetricsState};
use crate::config::Config;
use crate::jobs::callbacks::Callbacks;
use crate::jobs::cancel::CancelBus;
use crate::jobs::completions::Completions;
use crate::jobs::dead_letters::DeadLetters;
use crate::jobs::notify::{Notifier, NotifyPolicy};
use crate::jobs::service::JobService;
use crate::jobs::sweeper::Sweeper;
use crate::jobs::worker::{self, Liveness, WorkerCtx};
use crate::plugins::cache::ComponentCache;
use crate::plugins::{Registry, Runtime, watch as plugin_watch};
use crate::policy::Policies;
use crate::redis_conn::RedisConn;

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
    crate::traces::start(&cfg.telemetry)
        .map_err(|e| StartError::Config(crate::config::ConfigError::Invalid(e.to_string())))?;
    let listener = match (role, listener) {
        (Role::Worker, _) => None,
        (_, Some(l)) => Some(l),
        (_, None) => Some(
            TcpListener::bind(&cfg.listen)
                .await
                .map_err(|e| StartError::Listen { addr: cfg.listen.clone(), source: e })?,
        ),
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
    let mocks = if cfg.mocks && role == Role::Serve { mocks::start_mocks(&mut overlay).await? } else { Vec::new() };
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
        tasks.spawn(async move {
            plugin_watch::watch(registry, async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await
        });
    }
    if let Some(path) = config_path.clone() {
        let policies = policies.clone();
        let rx = stop_rx.clone();
        tasks.spawn(reload::watch_config(path, policies, overlay.clone(), rx));
    }
    tasks.spawn(needs::watch(registry.clone(), policies.clone(), overlay.keys().cloned().collect(), stop_rx.clone()));
    // Cancels reach workers in this process directly, and through Redis
    // pub/sub those of other processes.
    let cancels = if cfg.is_embedded_queue() {
        CancelBus::local()
    } else {
        CancelBus::redis(&cfg.queue, &cfg.redis_prefix, stop_rx.clone())
            .await
            .map_err(|e| StartError::Redis { url: redact(&cfg.queue), message: format!("cancel channel: {e}") })?
    };
    let completions = completions(&cfg, role, stop_rx.clone(), &mut tasks).await?;
    let notify_policy = Arc::new(
        NotifyPolicy::from_config(&cfg.auth, &cfg.notify)
            .map_err(|e| StartError::Config(crate::config::ConfigError::Invalid(e.to_string())))?,
    );
    if role != Role::Worker {
        // Deliveries run in API processes (they hold the keys' secrets);
        // several share the work through the store.
        let notifier = Arc::new(Notifier {
            store: backends.store.clone(),
            policy: notify_policy.clone(),
            settings: cfg.notify.clone(),
            outbound: crate::plugins::net::Outbound::new(),
            completions: completions.clone(),
            render: Arc::new(api::jobs::notification_body),
        });
        tasks.spawn(notifier.run(stop_rx.clone()));
    }
    let key_limits = Arc::new(crate::jobs::key_limits::KeyLimits::new(
        cfg.auth.keys.clone(),
        backends.limiter.clone(),
        backends.store.clone(),
    ));
    let liveness = (role != Role::Api).then(|| Arc::new(Liveness::new(&cfg.queue_settings)));
    let usage_book = Arc::new(crate::jobs::usage::UsageBook::new(backends.store.clone()));
    if let Some(liveness) = &liveness {
        tasks.spawn(usage_book.clone().run(stop_rx.clone()));
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
            liveness: liveness.clone(),
            cancels: cancels.clone(),
            completions: completions.clone(),
            key_limits: key_limits.clone(),
            vendor_holds: Default::default(),
            usage: usage_book.clone(),
        });
        tasks.spawn(worker::run(ctx, cfg.workers, stop_rx.clone()));
        let sweeper = Sweeper::new(
            backends.queue.clone(),
            backends.store.clone(),
            cfg.queue_settings.clone(),
            cfg.retention.clone(),
        )
        .with_completions(completions.clone());
        tasks.spawn(sweeper.run(stop_rx.clone()));
    }

    let server = match listener {
        Some(listener) => {
            let state = AppState::new(AppShared {
                service: Arc::new(JobService {
                    store: backends.store.clone(),
                    queue: backends.queue.clone(),
                    registry: registry.clone(),
                    cancels: cancels.clone(),
                    completions: completions.clone(),
                    notify: notify_policy.clone(),
                    limits: key_limits.clone(),
                    policies: policies.clone(),
                    use_cache: true,
                }),
                callbacks: Arc::new(Callbacks {
                    store: backends.store.clone(),
                    queue: backends.queue.clone(),
                    registry: registry.clone(),
                    policies: policies.clone(),
                    replay_window: cfg.retention.webhook_ids,
                    completions: completions.clone(),
                }),
                dead_letters: Arc::new(DeadLetters { queue: backends.queue.clone(), store: backends.store.clone() }),
                registry: registry.clone(),
                policies: policies.clone(),
                breakers: backends.breakers.clone(),
                limiter: backends.limiter.clone(),
                queue: backends.queue.clone(),
                store: backends.store.clone(),
                api: Arc::new(cfg.api.clone()),
                auth: Arc::new(cfg.auth.clone()),
                metrics: metrics.clone(),
                liveness: liveness.clone(),
            });
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
        let state = MetricsState {
            auth: Arc::new(cfg.auth.clone()),
            queue: backends.queue.clone(),
            registry: registry.clone(),
            breakers: backends.breakers.clone(),
            handle: metrics.clone(),
            liveness: liveness.clone(),
        };
        tasks.spawn(serve_worker_metrics(cfg.metrics_listen.clone(), cfg.api.clone(), state, stop_rx.clone()));
    }

    shutdown.await;
    tracing::info!("shutting down: no new requests; draining workers");
    let _ = stop_tx.send(true);
    if let Some(s) = server {
        let _ = tokio::time::timeout(cfg.queue_settings.shutdown_grace, s).await;
    }
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(cfg.queue_settings.shutdown_grace.saturating_add(std::time::Duration::from_secs(2)), drain)
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not stop within the grace period");
    }
    // The last calls' usage, once the workers are done.
    if tokio::time::timeout(std::time::Duration::from_secs(5), usage_book.flush()).await.is_err() {
        tracing::warn!("usage of the last second could not be written");
    }
    for m in mocks {
        m.shutdown().await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// A worker process has no API; this small listener serves the API's own
/// `/metrics` and `/healthz` handlers (the job, call, retry, rate-limit and
/// breaker series live in the workers), behind the admin key when one is set.
async fn serve_worker_metrics(
    addr: String,
    api_settings: crate::config::ApiSettings,
    state: MetricsState,
    mut stop: watch::Receiver<bool>,
) {
    let listener = match TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(addr = %addr, error = %e, "cannot serve worker metrics");
            return;
        }
    };
    println!("worker metrics on http://{addr}/metrics");
    let graceful = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let opts = api::serve::ServeOptions::from_settings(&api_settings);
    api::serve::serve(listener, api::worker_router(state), opts, graceful).await;
}

/// The hub that tells waiters (and the notification loop) a job ended. On
/// the embedded backend every job ends in this process. With Redis, jobs
/// end in worker processes too: finishes are published on `<prefix>:done`,
/// and a process serving the API holds one subscriber connection to it.
async fn completions(
    cfg: &Config,
    role: Role,
    stop: watch::Receiver<bool>,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Result<Arc<Completions>, StartError> {
    if cfg.is_embedded_queue() {
        return Ok(if role == Role::Api { Completions::shared(None) } else { Completions::local() });
    }
    let conn = RedisConn::connect_with(&cfg.queue, cfg.redis_timeout)
        .await
        .map_err(|e| StartError::Redis { url: redact(&cfg.queue), message: format!("completion channel: {e}") })?;
    let hub = Completions::shared(Some((conn, &cfg.redis_prefix)));
    if role != Role::Worker {
        tasks.spawn(hub.clone().subscribe(cfg.queue.clone(), cfg.redis_prefix.clone(), stop));
    }
    Ok(hub)
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
        let (version, file) = (crate::telemetry::one_line(&v.version), crate::telemetry::one_line(&v.file));
        println!("  loaded   {:<12} {:<6} v{:<8} {}", v.id, v.mode.as_str(), version, file);
    }
    for r in &rejected {
        println!("  rejected {}: {}", crate::telemetry::one_line(&r.file), crate::telemetry::one_line(&r.reason));
    }
    if vendors.is_empty() {
        println!("  (no plugins: run `make build-plugins`, or drop .wasm files into {})", cfg.plugins_dir.display());
    }
}
