//! WASI is linked with nothing granted: a plugin that reaches for a file,
//! a directory, the environment, its arguments or a socket gets an error or
//! nothing, while clocks and random work (they grant no access).

use serde_json::Value;
use vendorhost::plugins::FetchOutcome;

use super::{job, load, policy, runtime};
use crate::support::app::test_plugin;

#[tokio::test]
async fn opening_a_file_fails_and_sockets_env_and_args_are_empty() {
    let p = load(&test_plugin("test-fs")).await;
    // A listener the plugin is told to connect to: nothing may reach it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let data = serde_json::json!(port);
    let out = runtime().fetch(&p.pre, policy("test-fs", &[], &[]), &job("fs-1", data)).await.unwrap();
    let FetchOutcome::Complete(text) = out else { panic!("{out:?}") };
    let report: Value = serde_json::from_str(&text).unwrap();
    let field = |k: &str| report[k].as_str().unwrap_or_default().to_string();
    assert!(field("file").starts_with("error:"), "reading /etc/hostname worked: {report}");
    assert!(field("dir").starts_with("error:"), "listing . worked: {report}");
    assert!(field("socket").starts_with("error:"), "a TCP connect worked: {report}");
    assert_eq!(report["env"], 0, "{report}");
    assert_eq!(report["args"], 0, "{report}");
    // Clocks and random are there (a HashMap seeded from wasi:random works).
    assert!(report["clock_secs"].as_u64().unwrap() > 1_700_000_000, "{report}");
    assert_eq!(report["random"], 1, "{report}");
    // The call is over: a connection it made would be waiting to be accepted.
    listener.set_nonblocking(true).unwrap();
    let accepted = listener.accept();
    assert!(
        matches!(&accepted, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the plugin connected: {accepted:?}"
    );
}
