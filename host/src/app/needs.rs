//! Plugins' declared needs against the configuration, reported where an
//! operator looks: at load (start, and each plugin added or upgraded) and on
//! each configuration reload. A loaded vendor whose required config keys are
//! unset gets one error line naming them (its jobs fail with the same text
//! until they are set); a `[vendors.<id>]` table that names no loaded plugin
//! gets a warning (a typo, or a plugin that did not load). Each problem is
//! logged once, when it appears.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::plugins::{Registry, needs};
use crate::policy::Policies;
use crate::shutdown;

/// How often the registry's version and the configuration are compared with
/// what was last checked (both are cheap to read).
const TICK: Duration = Duration::from_millis(500);

/// `implicit`: vendor tables the service added itself (the embedded mocks'
/// grants), never reported as unmatched.
pub async fn watch(
    registry: Arc<Registry>,
    policies: Arc<Policies>,
    implicit: BTreeSet<String>,
    mut stop: watch::Receiver<bool>,
) {
    let versions = registry.subscribe();
    let mut checked: Option<(u64, Arc<crate::config::Config>)> = None;
    let mut reported: BTreeSet<String> = BTreeSet::new();
    let mut tick = tokio::time::interval(TICK);
    while shutdown::next_tick(&mut tick, &mut stop).await {
        let version = *versions.borrow();
        let cfg = policies.config();
        if checked.as_ref().is_some_and(|(v, c)| *v == version && Arc::ptr_eq(c, &cfg)) {
            continue;
        }
        checked = Some((version, cfg.clone()));
        let mut now = BTreeSet::new();
        for id in registry.vendor_ids() {
            let Some(plugin) = registry.get(&id) else { continue };
            let config = cfg.vendor(&id).config.unwrap_or_default().into_iter().collect();
            let missing = needs::missing_config(plugin.pre.required_config(), &config);
            if !missing.is_empty() {
                let message = needs::missing_config_message(&id, &missing);
                if !reported.contains(&message) {
                    tracing::error!(vendor = %id, missing = ?missing, "{message}; its jobs fail until then");
                }
                now.insert(message);
            }
        }
        let loaded = registry.vendor_ids();
        let tables = cfg.vendors.keys().map(String::as_str).filter(|id| !implicit.contains(*id));
        for id in needs::unmatched_tables(tables, &loaded) {
            let message = format!("[vendors.{id}] in the configuration matches no loaded plugin");
            if !reported.contains(&message) {
                tracing::warn!(vendor = %crate::telemetry::one_line(&id), loaded = ?loaded, "{message} (a typo, or a plugin that did not load: see GET /vendors)");
            }
            now.insert(message);
        }
        reported = now;
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::path::Path;
    use std::sync::Mutex;
    use std::time::Instant;

    use super::*;
    use crate::config::Config;
    use crate::plugins::Runtime;
    use crate::plugins::cache::ComponentCache;

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
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// At load: a required key unset is one error naming it, a table with no
    /// plugin a warning, the service's own tables nothing. On reload: a newly
    /// unmatched table is reported too.
    #[tokio::test] // one thread: the task logs to this thread's subscriber
    async fn unset_required_keys_and_unmatched_tables_are_logged_at_load_and_on_reload() {
        let plugin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist-test/test-needs.wasm");
        assert!(plugin.exists(), "{} is missing: run `make build-plugins`", plugin.display());
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(&plugin, dir.path().join("test-needs.wasm")).unwrap();
        let runtime = Runtime::shared().unwrap();
        let cache = ComponentCache::new(None, runtime.engine.compatibility_key());
        let registry = Arc::new(Registry::new(runtime, cache, dir.path().to_path_buf()));
        registry.scan().await;

        let mut cfg = Config::default();
        cfg.vendors.entry("test-needs".into()).or_default().config =
            Some([("region".to_string(), "eu".to_string())].into_iter().collect());
        cfg.vendors.entry("typo-vendor".into()).or_default();
        cfg.vendors.entry("sync".into()).or_default();
        let policies = Arc::new(Policies::new(cfg.clone()));
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt().with_writer(move || sink.clone()).with_ansi(false).finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let (stop_tx, stop_rx) = watch::channel(false);
        let implicit: BTreeSet<String> = ["sync".to_string()].into_iter().collect();
        let task = tokio::spawn(watch(registry, policies.clone(), implicit, stop_rx));

        until("the load report", || captured.text().contains("typo-vendor")).await;
        let log = captured.text();
        assert!(
            log.contains("ERROR") && log.contains("vendor test-needs requires config key `api_key`"),
            "no error for the unset key:\n{log}"
        );
        assert!(log.contains("[vendors.typo-vendor] in the configuration matches no loaded plugin"), "{log}");
        assert!(!log.contains("[vendors.sync]"), "the service's own table was reported:\n{log}");

        cfg.vendors.entry("other-typo".into()).or_default();
        policies.set_config(cfg);
        until("the reload report", || captured.text().contains("other-typo")).await;
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }
}
