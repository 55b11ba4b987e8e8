//! `vendorhost`: parse flags, set up logging, hand over to the command.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

fn main() -> ExitCode {
    tune_allocator();
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

/// glibc's malloc raises its mmap threshold each time a large block is
/// freed; after that, request bodies and job data (up to 1 MiB each) come
/// from its heaps and stay resident after a burst: 300 concurrent 1 MiB
/// submits left the process at ~830 MiB. With fixed thresholds, blocks of
/// 128 KiB and more get mappings of their own, unmapped when freed, and heap
/// tops over 128 KiB are trimmed: the same burst peaks at ~250 MiB and ends
/// within ~65 MiB of where it started (README, Hostile inputs).
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets two of the allocator's parameters; it runs
    // first thing in main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024);
    }
}
