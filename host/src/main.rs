//! `vendorhost`: parse flags, set up logging, hand over to the command.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

fn main() -> ExitCode {
    let cli = vendorhost::cli::Cli::parse();
    let filter = EnvFilter::try_from_env("VENDORHOST_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info,wasmtime=warn,cranelift=warn,wasmtime_cranelift=warn"));
    let json = std::env::var("VENDORHOST_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    // The trace layer stays empty until the configuration names an OTLP
    // endpoint (`vendorhost::traces::start`).
    let logs = tracing_subscriber::registry().with(filter).with(vendorhost::traces::slot());
    if json {
        logs.with(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr)).init();
    } else {
        logs.with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr)).init();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vendorhost: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(vendorhost::cli::commands::run(cli));
    drop(rt);
    vendorhost::traces::shutdown();
    code
}

/// jemalloc rather than glibc's malloc: about a fifth of the service's CPU
/// per job went to malloc and free (README, Performance). Its settings make
/// memory go back to the OS after a burst (300 concurrent 1 MiB submits,
/// README Hostile inputs): a background thread purges pages unused for a
/// second, whatever the worker threads are doing, and purged pages are
/// returned at once (no "muzzy" stage).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc reads its compile-time options from this symbol (its
/// `malloc_conf`, under the crate's `_rjem_` prefix: a pointer to a C
/// string) before `main` runs.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
static malloc_conf: Option<&u8> = Some(&b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0"[0]);
