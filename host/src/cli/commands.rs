//! What each subcommand does (the flags live in `cli`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::app::{self, Role};
use crate::cli::{Cli, Command, DlqCommand, MockArgs, PluginsCommand, ServeArgs, StoreCommand};
use crate::config::Config;
use crate::jobs::dead_letters::DeadLetters;
use crate::plugins::CallPolicy;
use crate::plugins::cache::ComponentCache;
use crate::plugins::grants::Grants;
use crate::plugins::{FetchOutcome, JobInput, Runtime, loader};

pub async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command.unwrap_or(Command::Serve(ServeArgs::default())) {
        Command::Serve(a) => serve(a, Role::Serve).await,
        Command::Api(a) => serve(a, Role::Api).await,
        Command::Worker(a) => serve(a, Role::Worker).await,
        Command::MockVendor(a) => mock_vendor(a).await,
        Command::Plugins(p) => plugins(p).await,
        Command::Dlq(d) => dlq(d).await,
        Command::Store(s) => store(s).await,
        Command::Loadtest(a) => match vendorhost_loadtest::run(a).await {
            Ok(true) => Ok(()),
            Ok(false) => Err("some jobs were lost (see the report above)".into()),
            Err(e) => Err(format!("{e:#}")),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("vendorhost: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(a: &ServeArgs) -> Result<Config, String> {
    Config::load(a.config.as_deref(), &a.overrides()).map_err(|e| format!("configuration: {e}"))
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

async fn serve(a: ServeArgs, role: Role) -> Result<(), String> {
    let cfg = load_config(&a)?;
    let path = a.config.clone();
    app::run(cfg, path, role, None, shutdown_signal()).await.map_err(|e| e.to_string())
}

async fn mock_vendor(a: MockArgs) -> Result<(), String> {
    let kind = if a.kind == "async" { crate::mock::MockKind::Async } else { crate::mock::MockKind::Sync };
    let fault = a.fault.parse().map_err(|e| format!("--fault: {e}"))?;
    let addr = format!("{}:{}", a.bind, a.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e} (pick another --port)"))?;
    let opts = crate::mock::MockOptions {
        latency_ms: a.latency_ms,
        fault,
        callback_delay_ms: a.callback_delay_ms,
        secret: a.secret,
        limit: a
            .limit
            .as_deref()
            .map(str::parse::<crate::mock::HiddenLimit>)
            .transpose()
            .map_err(|e| e.to_string())?
            .map(|l| crate::mock::HiddenLimit { headers: a.limit_headers, ..l }),
    };
    let h = crate::mock::spawn(kind, listener, opts).await.map_err(|e| e.to_string())?;
    println!("mock {} vendor listening on {}", a.kind, h.base_url());
    shutdown_signal().await;
    h.shutdown().await;
    Ok(())
}

async fn runtime() -> Result<Arc<Runtime>, String> {
    Runtime::shared().map_err(|e| format!("plugin runtime: {e:#}"))
}

async fn plugins(cmd: PluginsCommand) -> Result<(), String> {
    match cmd {
        PluginsCommand::Check { files } => {
            let rt = runtime().await?;
            let cache = ComponentCache::new(None, rt.engine.compatibility_key());
            let mut bad = 0;
            for f in &files {
                match loader::load(&rt, &cache, f).await {
                    Ok(p) => println!(
                        "ok       {}: vendor {} ({}), mode {}, version {}, hosts [{}]",
                        f.display(),
                        p.info.id,
                        p.info.display_name,
                        p.info.mode.as_str(),
                        p.info.version,
                        p.info.hosts.join(", ")
                    ),
                    Err(e) => {
                        bad += 1;
                        println!("rejected {}: {e}", f.display());
                    }
                }
            }
            if bad > 0 { Err(format!("{bad} of {} file(s) rejected", files.len())) } else { Ok(()) }
        }
        PluginsCommand::List { dir } => {
            let rt = runtime().await?;
            let cache = ComponentCache::new(None, rt.engine.compatibility_key());
            let registry = crate::plugins::Registry::new(rt, cache, dir.clone());
            if !dir.is_dir() {
                return Err(format!("{} is not a directory", dir.display()));
            }
            registry.scan().await;
            let (vendors, rejected) = registry.summaries();
            println!("{}: {} would load, {} rejected", dir.display(), vendors.len(), rejected.len());
            for v in vendors {
                println!(
                    "  {:<14} {:<6} v{:<8} {}  hosts [{}]",
                    v.id,
                    v.mode.as_str(),
                    v.version,
                    v.file,
                    v.hosts.join(", ")
                );
            }
            for r in rejected {
                println!("  rejected {}: {}", r.file, r.reason);
            }
            Ok(())
        }
        PluginsCommand::New { name, dir } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            super::template::create(&name, &dir).map_err(|e| e.to_string())?;
            println!("created plugin crate {} (vendor id {name})", dir.display());
            println!(
                "test it:   cd {} && cargo test   (fetch runs natively against the SDK's fake host)",
                dir.display()
            );
            println!("build it:  cd {} && cargo build --release --target wasm32-wasip2", dir.display());
            println!(
                "check it:  vendorhost plugins check {}/target/wasm32-wasip2/release/{}.wasm",
                dir.display(),
                name.replace('-', "_")
            );
            Ok(())
        }
        PluginsCommand::Call { file, data, allow, config, callback_url, timeout_ms, clean, service_config } => {
            let cleaning = if clean { Some(service_config) } else { None };
            call(&file, data, allow, config, callback_url, timeout_ms, cleaning).await
        }
    }
}

/// `cleaning`: print the result cleaned by the vendor's rules from the
/// service configuration at this file (or the built-in rules).
async fn call(
    file: &Path,
    data: String,
    allow: Vec<String>,
    config: Vec<String>,
    callback_url: String,
    timeout_ms: u64,
    cleaning: Option<Option<PathBuf>>,
) -> Result<(), String> {
    let service = match &cleaning {
        Some(path) => Some(
            Config::load(path.as_deref(), &crate::config::Overrides::default())
                .map_err(|e| format!("configuration: {e}"))?,
        ),
        None => None,
    };
    serde_json::from_str::<serde_json::Value>(&data).map_err(|e| format!("--data is not JSON: {e}"))?;
    let rt = runtime().await?;
    let cache = ComponentCache::new(None, rt.engine.compatibility_key());
    let p = loader::load(&rt, &cache, file).await.map_err(|e| format!("{}: {e}", file.display()))?;
    let mut cfg = std::collections::BTreeMap::new();
    for kv in config {
        let (k, v) = kv.split_once('=').ok_or_else(|| format!("--config {kv:?}: expected KEY=VALUE"))?;
        cfg.insert(k.to_string(), v.to_string());
    }
    let policy = CallPolicy {
        vendor: p.info.id.clone(),
        grants: Grants::new(&allow).map_err(|e| format!("--allow: {e}"))?,
        // Only the IP literals --allow names are reachable among non-public addresses.
        allow_private_addresses: false,
        secret_headers: Vec::new(),
        memory_cap_bytes: 64 << 20,
        timeout: Duration::from_millis(timeout_ms),
        config: cfg,
        observed: Default::default(),
    };
    let job = JobInput {
        request_id: crate::model::new_request_id(),
        data,
        callback_url: callback_url.replace("VENDOR", &p.info.id),
        attempt: 1,
    };
    match rt.fetch(&p.pre, Arc::new(policy), &job).await {
        Ok(FetchOutcome::Complete(d)) => {
            let Some(service) = service else {
                println!("complete: {d}");
                return Ok(());
            };
            // The same cleaner the service resolves for this vendor.
            let cleaner = crate::policy::resolve(&service, &p.info.id, Some(&p)).cleaner;
            let cleaned = cleaner.clean_text(&d);
            println!("complete (cleaned): {}", cleaned.text);
            if cleaned.report.removed.is_empty() {
                println!("redacted: nothing");
            }
            for r in &cleaned.report.removed {
                println!("redacted: {} ({})", r.path, r.kind.as_str());
            }
            if cleaned.report.unlisted > 0 {
                println!("redacted: {} more not listed", cleaned.report.unlisted);
            }
            Ok(())
        }
        Ok(FetchOutcome::Accepted(r)) => {
            println!("accepted: vendor_ref {r} (request_id {})", job.request_id);
            Ok(())
        }
        Err(e) => {
            let kind = if e.is_retryable() { "retryable" } else { "permanent" };
            // A 429's Retry-After as the host parsed it: the floor of the next attempt's backoff.
            let retry_after = match &e {
                crate::plugins::CallError::Vendor(v) => v.retry_after(),
                _ => None,
            };
            match retry_after {
                Some(ra) => Err(format!("{e} ({kind}; retry after {} ms)", ra.as_millis())),
                None => Err(format!("{e} ({kind})")),
            }
        }
    }
}

async fn store(cmd: StoreCommand) -> Result<(), String> {
    let StoreCommand::Init { backend } = cmd;
    let cfg = load_config(&backend)?;
    if cfg.is_embedded_store() {
        let done = crate::store::sqlite::init(&cfg.data).map_err(|e| format!("{}: {e}", cfg.data.display()))?;
        println!("{}", done.summary(&cfg.data));
        return Ok(());
    }
    let url = app::redact(&cfg.store);
    let store = app::mongo_store(&cfg).await.map_err(|e| format!("MongoDB at {url}: {e}"))?;
    let report =
        store.init(crate::store::mongo::Sharding::IfMongos).await.map_err(|e| format!("MongoDB at {url}: {e}"))?;
    println!("{}", report.summary());
    Ok(())
}

async fn dlq(cmd: DlqCommand) -> Result<(), String> {
    let backend = match &cmd {
        DlqCommand::List { backend, .. } | DlqCommand::Replay { backend, .. } => backend.clone(),
    };
    let cfg = load_config(&backend)?;
    let b = app::backends(&cfg).await.map_err(|e| e.to_string())?;
    let dl = DeadLetters { queue: b.queue, store: b.store };
    match cmd {
        DlqCommand::List { limit, .. } => {
            let letters = dl.list(limit).await.map_err(|e| e.to_string())?;
            if letters.is_empty() {
                println!("no dead letters");
            }
            for l in letters {
                println!(
                    "{}  {}  {}  {}  {}",
                    l.id,
                    crate::model::format_ms(l.died_at),
                    l.vendor.as_deref().unwrap_or("-"),
                    l.request_id.as_deref().unwrap_or("(malformed entry)"),
                    l.reason
                );
            }
            Ok(())
        }
        DlqCommand::Replay { id: Some(id), .. } => {
            let job = dl.replay(&id).await.map_err(|e| e.to_string())?;
            println!("replayed {id}: job {job} is pending again");
            Ok(())
        }
        DlqCommand::Replay { .. } => {
            let (done, skipped) = dl.replay_all().await.map_err(|e| e.to_string())?;
            println!("replayed {} job(s); skipped {} dead letter(s) with no job", done.len(), skipped.len());
            Ok(())
        }
    }
}
