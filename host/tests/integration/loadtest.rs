//! The load generator (issue 8) against a real service: every job it
//! submits is followed to a terminal state, closed and open loop.

use clap::Parser;
use vendorhost_loadtest::{self as loadtest, LoadtestArgs};

use crate::support::app::{TestApp, embedded_config, plugin, plugins_dir};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: LoadtestArgs,
}

fn args(base: &str, extra: &[&str]) -> LoadtestArgs {
    let mut argv = vec!["loadtest", "--url", base, "--no-progress", "--stall-timeout", "20s"];
    argv.extend_from_slice(extra);
    Cli::try_parse_from(argv).unwrap().args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_job_reaches_a_terminal_state() {
    let p = plugins_dir(&[plugin("sync")]);
    let d = tempfile::tempdir().unwrap();
    let mut cfg = embedded_config(d.path(), p.path());
    // The sample plugin suggests 50/s; lift it so the test is quick.
    cfg.vendor_defaults.rate = Some(100_000.0);
    cfg.vendor_defaults.burst = Some(10_000);
    let app = TestApp::start(cfg).await;

    let closed = loadtest::measure(&args(&app.base, &["--mode", "e2e", "-n", "200", "-c", "16"])).await.unwrap();
    let e = closed.e2e.as_ref().unwrap();
    assert_eq!((e.jobs, e.accepted, e.terminal, e.complete, e.lost), (200, 200, 200, 200, 0), "{}", closed.text());
    assert!(e.completed_per_sec > 0.0 && e.latency.samples == 200, "{}", closed.text());
    assert_eq!(closed.submit.as_ref().unwrap().ok, 200);

    // Open loop: 100 jobs on a 400/s schedule, latency from the schedule.
    let open = loadtest::measure(&args(
        &app.base,
        &["--mode", "e2e", "-n", "100", "-c", "8", "--rate", "400", "--max-open", "50"],
    ))
    .await
    .unwrap();
    let e = open.e2e.as_ref().unwrap();
    assert_eq!((e.terminal, e.lost), (100, 0), "{}", open.text());
    assert!(open.elapsed_s >= 0.2, "100 at 400/s takes about 0.25 s: {}", open.text());

    // Submit and get modes count 2xx replies only.
    let sub = loadtest::measure(&args(&app.base, &["--mode", "submit", "-n", "300", "-c", "32"])).await.unwrap();
    assert_eq!(sub.submit.as_ref().unwrap().ok, 300, "{}", sub.text());
    let get = loadtest::measure(&args(&app.base, &["--mode", "get", "--ids", "50", "--duration", "500ms", "-c", "8"]))
        .await
        .unwrap();
    let g = get.get.as_ref().unwrap();
    assert!(g.ok > 0 && g.errors == 0 && g.non_2xx.is_empty(), "{}", get.text());

    // A vendor the service does not know is one clear error, not N.
    let err = loadtest::measure(&args(&app.base, &["--vendor", "nope", "-n", "5"])).await.unwrap_err().to_string();
    assert!(err.contains("400"), "{err}");
    app.stop().await;
}
