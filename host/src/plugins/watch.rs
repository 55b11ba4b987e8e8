//! Watches the plugins directory and rescans on change.
//!
//! Events are debounced (a file being copied fires many), and a slow poll
//! backs the watcher up where inotify does not reach (some shared volumes).
//! A half-written file is either still changing (debounced) or fails
//! validation and is retried when it changes again; copy to a dotfile and
//! rename into place to make the swap atomic.

use std::sync::Arc;
use std::time::Duration;

use notify_debouncer_mini::{DebounceEventResult, new_debouncer, notify::RecursiveMode};

use super::registry::Registry;

pub const DEBOUNCE: Duration = Duration::from_millis(150);
pub const POLL: Duration = Duration::from_secs(3);

/// Runs until `shutdown` resolves.
pub async fn watch(registry: Arc<Registry>, shutdown: impl std::future::Future<Output = ()>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let debouncer = new_debouncer(DEBOUNCE, move |res: DebounceEventResult| {
        if res.is_ok() {
            let _ = tx.send(());
        }
    });
    let _debouncer = match debouncer {
        Ok(mut d) => match d.watcher().watch(registry.dir(), RecursiveMode::NonRecursive) {
            Ok(()) => Some(d),
            Err(e) => {
                tracing::warn!(dir = %registry.dir().display(), error = %e, "cannot watch plugins directory; polling every {POLL:?}");
                None
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "file watcher unavailable; polling every {POLL:?}");
            None
        }
    };
    tokio::pin!(shutdown);
    let mut poll = tokio::time::interval(POLL);
    poll.tick().await;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(()) = rx.recv() => {
                while rx.try_recv().is_ok() {}
                registry.scan().await;
            }
            _ = poll.tick() => { registry.scan().await; }
        }
    }
}
