//! Failpoints for crash tests: `VH_FAILPOINT=<name>` (outside the
//! `VENDORHOST_` namespace, which is all configuration) makes the code
//! path that calls `hit(name)` stop there for good (it logs, then waits
//! forever), so a test can SIGKILL the process exactly between two writes.
//! Unset (always, outside tests), `hit` is one load of a cached flag.

use std::sync::OnceLock;

fn armed() -> Option<&'static str> {
    static NAME: OnceLock<Option<String>> = OnceLock::new();
    NAME.get_or_init(|| std::env::var("VH_FAILPOINT").ok().filter(|v| !v.is_empty())).as_deref()
}

/// Stops this task here forever if failpoint `name` is armed.
pub async fn hit(name: &str) {
    if armed() == Some(name) {
        tracing::error!(failpoint = name, "failpoint reached; this request stops here");
        eprintln!("failpoint {name} reached");
        std::future::pending::<()>().await;
    }
}
