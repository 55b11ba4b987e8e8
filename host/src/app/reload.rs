//! Live configuration reload: the vendor tables (grants, limits, secrets)
//! follow the config file without a restart.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use super::mocks::{Overlay, apply_overlay};
use crate::plugins::watch as plugin_watch;
use crate::policy::Policies;
use crate::shutdown;

/// Reloads the vendor tables (grants, limits, secrets) when the config file
/// changes, without a restart. Polled (editors and config-management tools
/// replace files in ways watchers miss); a change is read only once the file
/// has been still for a moment, so a half-saved file is not taken for an
/// empty one. An invalid file is logged and ignored: the last good policies
/// stay in force.
pub async fn watch_config(path: PathBuf, policies: Arc<Policies>, overlay: Overlay, mut stop: watch::Receiver<bool>) {
    const TICK: std::time::Duration = std::time::Duration::from_millis(500);
    let stamp = |p: &PathBuf| std::fs::metadata(p).ok().map(|m| (m.modified().ok(), m.len()));
    let mut last = stamp(&path);
    let mut tick = tokio::time::interval(TICK);
    while shutdown::next_tick(&mut tick, &mut stop).await {
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
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "configuration change ignored: invalid; the previous settings stay in force")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::config::{Config, Overrides};

    /// Log output, captured.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A reload with a value out of range keeps the running settings and
    /// logs which key is wrong; the next good edit applies.
    #[tokio::test] // one thread: the watcher logs to this thread's subscriber
    async fn an_out_of_range_edit_keeps_the_old_settings_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vendorhost.toml");
        std::fs::write(&path, "[vendors.sync]\nrate = 5.0\n").unwrap();
        let cfg =
            Config::load_from(Some(&path), &Overrides::default(), std::iter::empty::<(String, String)>()).unwrap();
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt().with_writer(move || sink.clone()).with_ansi(false).finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let policies = Arc::new(Policies::new(cfg));
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(watch_config(path.clone(), policies.clone(), Overlay::new(), stop_rx));
        tokio::time::sleep(Duration::from_millis(200)).await; // it has read the file's first stamp

        std::fs::write(&path, "[vendors.sync]\nrate = 0 # stalls every job\n").unwrap();
        until("the refusal in the log", || captured.text().contains("configuration change ignored")).await;
        let log = captured.text();
        assert!(log.contains("vendors.sync.rate") && log.contains("vendorhost.toml"), "{log}");
        assert_eq!(policies.config().vendor("sync").rate, Some(5.0), "the bad rate was applied");

        std::fs::write(&path, "[vendors.sync]\nrate = 7.0\n").unwrap();
        until("the good edit", || policies.config().vendor("sync").rate == Some(7.0)).await;
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }
}
