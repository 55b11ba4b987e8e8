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
