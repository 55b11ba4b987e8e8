//! Watches the plugins directory and rescans on change.
//!
//! Events are debounced: a scan runs once the directory has been quiet for
//! `DEBOUNCE`, so a copy in progress (many write events) is read once, after
//! its last write. The watcher's own reads open files, and inotify reports
//! opens: those events are ignored, or every scan would cause another. A slow
//! poll backs the watcher up where inotify does not reach (some shared
//! volumes). A file that changes while it is read, or fails to load while
//! fresh, is scanned again after `SETTLE`, so a half-written file is neither
//! loaded nor reported as rejected. Copying to a dotfile and renaming it into
//! place makes the swap atomic regardless.

use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecursiveMode, Watcher};
use tokio::time::Instant;

use super::registry::{Registry, SETTLE};

pub const DEBOUNCE: Duration = Duration::from_millis(150);
pub const POLL: Duration = Duration::from_secs(3);

/// Does this event say a file in the directory may have changed? Opens and
/// reads do not (a closed write does).
fn is_change(kind: &EventKind) -> bool {
    !matches!(kind, EventKind::Access(AccessKind::Open(_) | AccessKind::Read | AccessKind::Close(AccessMode::Read)))
}

/// Runs until `shutdown` resolves.
pub async fn watch(registry: Arc<Registry>, shutdown: impl std::future::Future<Output = ()>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
        Ok(event) if is_change(&event.kind) => {
            let _ = tx.send(());
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "plugins directory watcher error; the poll catches up"),
    });
    let _watcher = match watcher {
        Ok(mut w) => match w.watch(registry.dir(), RecursiveMode::NonRecursive) {
            Ok(()) => Some(w),
            Err(e) => {
                tracing::warn!(dir = ?registry.dir(), error = %e, "cannot watch plugins directory; polling every {POLL:?}");
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
    // When to scan next because of events (debounce) or a pending file (settle).
    let mut due: Option<Instant> = None;
    let mut retry: Option<Instant> = None;
    loop {
        let next = match (due, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let sleep = async {
            match next {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown => break,
            Some(()) = rx.recv() => {
                while rx.try_recv().is_ok() {}
                due = Some(Instant::now() + DEBOUNCE);
                continue;
            }
            _ = poll.tick() => {}
            _ = sleep => {}
        }
        due = None;
        retry = None;
        let report = registry.scan_live().await;
        if !report.pending.is_empty() {
            retry = Some(Instant::now() + SETTLE);
        }
    }
}
