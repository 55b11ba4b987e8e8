//! Log lines: a plugin file name (or anything else from outside) cannot end
//! an event early or forge another; entries of the plugins folder that
//! cannot be read are named in a warning, not skipped without a word.

use std::time::Duration;

use super::{LONG, sample_plugins};
use crate::support::app::{self, Proc, embedded_config, eventually};
use crate::support::servers;

/// What a file name tries to slip into the log as an event of its own.
const FORGED: &str = "2030-01-01T00:00:00.000000Z  INFO vendorhost: plugin loaded vendor=evil";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_names_cannot_break_log_lines_and_unreadable_plugins_are_named() {
    let plugins = sample_plugins();
    let dir = plugins.path();
    std::os::unix::fs::symlink(dir.join("nowhere"), dir.join("dangling.wasm")).unwrap();
    std::fs::create_dir(dir.join("folder.wasm")).unwrap();
    std::fs::write(dir.join(format!("evil\n{FORGED}\n.wasm")), b"not a component").unwrap();

    let data = tempfile::tempdir().unwrap();
    let cfg = embedded_config(data.path(), dir);
    let port = servers::free_port();
    let mut env = app::env_for(&cfg);
    env.push(("VENDORHOST_LISTEN", format!("127.0.0.1:{port}")));
    env.push(("NO_COLOR", "1".into()));
    let mut p = Proc::spawn(&["serve"], &env, data.path().join("serve.log"));
    let client = reqwest::Client::new();
    eventually(LONG, "the server to answer", || async {
        let r = client.get(format!("http://127.0.0.1:{port}/healthz")).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    let log = eventually(Duration::from_secs(10), "the scan's warnings", || async {
        let log = p.log_text();
        (log.contains("plugin rejected") && log.matches("cannot be read").count() >= 2).then_some(log)
    })
    .await;
    let lines: Vec<&str> = log.lines().collect();
    let find = |needles: &[&str]| lines.iter().find(|l| needles.iter().all(|n| l.contains(n))).copied();

    // The dangling symlink and the folder are each named, with why.
    let dangling = find(&["WARN", "dangling.wasm", "cannot be read"]);
    assert!(dangling.is_some_and(|l| l.contains("symlink")), "no warning names the dangling symlink:\n{log}");
    assert!(find(&["WARN", "folder.wasm", "cannot be read"]).is_some(), "no warning names the folder:\n{log}");

    // The hostile name is refused on one line, its newlines escaped.
    let rejected = find(&["WARN", "plugin rejected", "evil\\n2030-01-01"]);
    assert!(
        rejected.is_some_and(|l| l.contains("vendor=evil\\n.wasm")),
        "the rejection is not one escaped line:\n{log}"
    );
    for line in &lines {
        assert!(!line.starts_with("2030-01-01"), "a file name forged a log line: {line:?}\n{log}");
        assert!(!line.starts_with(".wasm"), "a file name split a log line: {line:?}\n{log}");
    }
    // Still serving the real plugins.
    let vendors: serde_json::Value =
        client.get(format!("http://127.0.0.1:{port}/vendors")).send().await.unwrap().json().await.unwrap();
    let ids: Vec<&str> = vendors["vendors"].as_array().unwrap().iter().filter_map(|v| v["id"].as_str()).collect();
    assert_eq!(ids, ["async", "sync"], "{vendors}");
    assert!(p.term(Duration::from_secs(15)).is_some_and(|s| s.success()), "{}", p.log_text());
}
