//! The loaded plugins, swapped atomically.
//!
//! A scan of the plugins directory builds a new snapshot from the old one and
//! swaps it in whole: readers (`get`) never lock and never see half a change,
//! and a call that took an `Arc<Plugin>` finishes on that version even if an
//! upgrade lands meanwhile.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use serde::Serialize;

use super::cache::ComponentCache;
use super::loader::{self, Plugin};
use super::runtime::Runtime;
use super::types::Mode;
use crate::model::{Millis, now_ms};
use crate::telemetry;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Rejected {
    /// The file name in the plugins directory.
    pub file: String,
    pub reason: String,
}

/// What `GET /vendors` says about a loaded plugin.
#[derive(Debug, Clone, Serialize)]
pub struct VendorSummary {
    pub id: String,
    pub display_name: String,
    pub mode: Mode,
    pub version: String,
    pub file: String,
    pub sha256: String,
    pub hosts: Vec<String>,
    /// When this version was loaded.
    pub loaded_at: Millis,
}

/// One change to the loaded plugins: the registry's reload history.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PluginEvent {
    pub at: Millis,
    /// `loaded` (a new vendor), `reloaded` (a vendor's file changed and its
    /// new version serves), `removed`, or `rejected`.
    pub kind: &'static str,
    /// The vendor (not known for a file rejected before it said its id).
    pub vendor: Option<String>,
    pub file: String,
    pub version: Option<String>,
    pub sha256: Option<String>,
    /// Why a file was rejected.
    pub reason: Option<String>,
}

/// How many plugin events the registry remembers (the newest).
pub const HISTORY: usize = 100;

/// A file that fails to load this soon after its last change may still be
/// being written: it is retried, not rejected, until it has been still this
/// long.
pub const SETTLE: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Snapshot {
    pub plugins: BTreeMap<String, Arc<Plugin>>,
    files: BTreeMap<PathBuf, FileState>,
    pub rejected: BTreeMap<PathBuf, Rejected>,
    /// Vendors whose plugin was removed, and when.
    pub removed: BTreeMap<String, Millis>,
}

/// What a file looked like when last read. The inode catches a rename over
/// the file even when its size and timestamp happen to match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileSig {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

#[derive(Debug, Clone)]
struct FileState {
    sig: FileSig,
    /// The vendor this file provides (or, after a failed upgrade, still
    /// provides with its previous version).
    vendor: Option<String>,
    /// Refused because this id was taken by another file: retried as soon as
    /// the id is free again.
    blocked_on: Option<String>,
}

/// What one scan changed, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ScanReport {
    pub loaded: Vec<String>,
    pub removed: Vec<String>,
    pub rejected: Vec<Rejected>,
    /// Files that changed while being read, or failed to load while still
    /// fresh: scan again after `SETTLE`.
    pub pending: Vec<String>,
}

pub struct Registry {
    runtime: Arc<Runtime>,
    cache: ComponentCache,
    dir: PathBuf,
    snapshot: ArcSwap<Snapshot>,
    scan_lock: tokio::sync::Mutex<()>,
    /// Fires after every scan that changed something.
    changed: tokio::sync::watch::Sender<u64>,
    /// `*.wasm` entries that cannot be read as files (a dangling symlink, a
    /// directory), and why: each is warned about once, and forgotten when
    /// it is gone or readable.
    unusable: std::sync::Mutex<BTreeMap<PathBuf, String>>,
    /// The last `HISTORY` changes, oldest first.
    history: std::sync::Mutex<VecDeque<PluginEvent>>,
}

impl Registry {
    pub fn new(runtime: Arc<Runtime>, cache: ComponentCache, dir: PathBuf) -> Registry {
        Registry {
            runtime,
            cache,
            dir,
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            scan_lock: tokio::sync::Mutex::new(()),
            changed: tokio::sync::watch::channel(0).0,
            unusable: std::sync::Mutex::new(BTreeMap::new()),
            history: std::sync::Mutex::new(VecDeque::new()),
        }
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn get(&self, vendor: &str) -> Option<Arc<Plugin>> {
        self.snapshot.load().plugins.get(vendor).cloned()
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn vendor_ids(&self) -> Vec<String> {
        self.snapshot.load().plugins.keys().cloned().collect()
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// When the vendor's plugin was removed, if it was and is still gone.
    pub fn removed_at(&self, vendor: &str) -> Option<Millis> {
        self.snapshot.load().removed.get(vendor).copied()
    }

    pub fn summaries(&self) -> (Vec<VendorSummary>, Vec<Rejected>) {
        let snap = self.snapshot.load();
        let vendors = snap
            .plugins
            .values()
            .map(|p| VendorSummary {
                id: p.info.id.clone(),
                display_name: p.info.display_name.clone(),
                mode: p.info.mode,
                version: p.info.version.clone(),
                file: file_name(&p.file),
                sha256: p.sha256.clone(),
                hosts: p.info.hosts.clone(),
                loaded_at: p.loaded_at,
            })
            .collect();
        (vendors, snap.rejected.values().cloned().collect())
    }

    /// Recent loads, reloads, removals and rejections, newest first.
    pub fn history(&self) -> Vec<PluginEvent> {
        self.history.lock().unwrap_or_else(|p| p.into_inner()).iter().rev().cloned().collect()
    }

    /// Reads the directory and applies what changed: new and changed files
    /// are loaded, removed files unregister their vendor. A file that fails to
    /// load is listed as rejected, and the vendor's previous version (if any)
    /// keeps serving. The new state is swapped in whole, once.
    pub async fn scan(&self) -> ScanReport {
        self.scan_with(false).await
    }

    /// `scan` for the watcher: a file that fails to load within `SETTLE` of
    /// its last change may still be being copied, so it is reported as
    /// `pending` (to be scanned again) rather than rejected.
    pub async fn scan_live(&self) -> ScanReport {
        self.scan_with(true).await
    }

    async fn scan_with(&self, defer_fresh: bool) -> ScanReport {
        let _guard = self.scan_lock.lock().await;
        let old = self.snapshot.load_full();
        let found = match list_wasm(&self.dir) {
            Ok((f, unusable)) => {
                self.warn_unusable(unusable);
                f
            }
            Err(e) => {
                // Keep serving what is loaded: a directory that is briefly
                // gone (a volume remount) must not unload every vendor.
                tracing::warn!(dir = ?self.dir, error = %e, "cannot read plugins directory");
                return ScanReport::default();
            }
        };
        let mut work = Work {
            plugins: old.plugins.clone(),
            files: old.files.clone(),
            rejected: old.rejected.clone(),
            removed: old.removed.clone(),
            report: ScanReport::default(),
            changed: false,
            defer_fresh,
        };

        // Files that are gone take their vendor with them.
        let gone: Vec<PathBuf> = work.files.keys().filter(|p| !found.iter().any(|(f, _)| f == *p)).cloned().collect();
        for path in gone {
            work.changed |= work.rejected.remove(&path).is_some();
            if let Some(FileState { vendor: Some(vendor), .. }) = work.files.remove(&path)
                && work.plugins.get(&vendor).is_some_and(|p| p.file == path)
            {
                work.plugins.remove(&vendor);
                work.removed.insert(vendor.clone(), now_ms());
                tracing::info!(vendor = %vendor, file = %telemetry::one_line(&file_name(&path)), "plugin removed");
                work.report.removed.push(vendor);
                work.changed = true;
            }
        }

        for (path, sig) in &found {
            // Unchanged, and not waiting for an id that is free now.
            let settled = work
                .files
                .get(path)
                .is_some_and(|s| s.sig == *sig && s.blocked_on.as_ref().is_none_or(|id| work.plugins.contains_key(id)));
            if !settled {
                work.consider(self, path, *sig).await;
            }
        }
        // A file refused for an id clash gets the id once its holder is gone
        // or now provides another id (possibly decided later in this scan).
        for (path, sig) in &found {
            let free = work.files.get(path).is_some_and(|s| {
                s.sig == *sig && s.blocked_on.as_ref().is_some_and(|id| !work.plugins.contains_key(id))
            });
            if free {
                work.consider(self, path, *sig).await;
            }
        }

        let Work { plugins, files, rejected, removed, report, changed, .. } = work;
        if changed {
            self.record(&old, &plugins, &report);
            let loaded = plugins.len();
            self.snapshot.store(Arc::new(Snapshot { plugins, files, rejected, removed }));
            metrics::gauge!(telemetry::PLUGINS_LOADED).set(loaded as f64);
            self.changed.send_modify(|n| *n += 1);
        }
        report
    }
}

impl Registry {
    /// Appends what one scan changed to the history (dropping the oldest).
    fn record(&self, old: &Snapshot, plugins: &BTreeMap<String, Arc<Plugin>>, report: &ScanReport) {
        let at = now_ms();
        let mut events = Vec::new();
        for vendor in &report.removed {
            let file = old.plugins.get(vendor).map(|p| file_name(&p.file)).unwrap_or_default();
            events.push(PluginEvent {
                at,
                kind: "removed",
                vendor: Some(vendor.clone()),
                file,
                version: old.plugins.get(vendor).map(|p| p.info.version.clone()),
                sha256: None,
                reason: None,
            });
        }
        for vendor in &report.loaded {
            let Some(p) = plugins.get(vendor) else { continue };
            events.push(PluginEvent {
                at,
                kind: if old.plugins.contains_key(vendor) { "reloaded" } else { "loaded" },
                vendor: Some(vendor.clone()),
                file: file_name(&p.file),
                version: Some(p.info.version.clone()),
                sha256: Some(p.sha256.clone()),
                reason: None,
            });
        }
        for r in &report.rejected {
            events.push(PluginEvent {
                at,
                kind: "rejected",
                vendor: None,
                file: r.file.clone(),
                version: None,
                sha256: None,
                reason: Some(r.reason.clone()),
            });
        }
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        for e in events {
            if history.len() == HISTORY {
                history.pop_front();
            }
            history.push_back(e);
        }
    }

    /// Warns once about each entry that looks like a plugin but cannot be
    /// read; it is skipped (and any vendor it provided is removed).
    fn warn_unusable(&self, now: BTreeMap<PathBuf, String>) {
        let mut known = self.unusable.lock().unwrap_or_else(|p| p.into_inner());
        for (path, why) in &now {
            if known.get(path) != Some(why) {
                tracing::warn!(
                    file = %telemetry::one_line(&file_name(path)),
                    reason = %telemetry::one_line(why),
                    "plugin file skipped: it cannot be read"
                );
            }
        }
        *known = now;
    }
}

/// The next snapshot, being built by one scan.
struct Work {
    plugins: BTreeMap<String, Arc<Plugin>>,
    files: BTreeMap<PathBuf, FileState>,
    rejected: BTreeMap<PathBuf, Rejected>,
    removed: BTreeMap<String, Millis>,
    report: ScanReport,
    changed: bool,
    defer_fresh: bool,
}

impl Work {
    /// Loads one new or changed file and records the outcome.
    async fn consider(&mut self, registry: &Registry, path: &Path, sig: FileSig) {
        let name = file_name(path);
        let previous = self.files.get(path).and_then(|s| s.vendor.clone());
        let result = loader::load(&registry.runtime, &registry.cache, path).await;
        // Changed while it was read (a copy in progress): it is read again
        // when the writer's next event arrives, or after SETTLE.
        if file_sig(path).ok() != Some(sig) {
            tracing::debug!(file = %telemetry::one_line(&name), "plugin file changed while being read; will retry");
            self.report.pending.push(name);
            return;
        }
        let plugin = match result {
            Ok(p) => p,
            Err(e) if self.defer_fresh && is_fresh(&sig) => {
                tracing::debug!(file = %telemetry::one_line(&name), error = %telemetry::one_line(&e.to_string()), "fresh plugin file does not load yet; retrying once it is still");
                self.report.pending.push(name);
                return;
            }
            Err(e) => {
                self.reject(path, sig, previous, None, e.to_string());
                return;
            }
        };
        let id = plugin.info.id.clone();
        if let Some(other) = self.plugins.get(&id).filter(|p| p.file != path) {
            let reason = format!(
                "vendor id {id:?} is already provided by {}; remove one of the two files",
                file_name(&other.file)
            );
            self.reject(path, sig, previous, Some(id), reason);
            return;
        }
        // The same file now providing another id frees the old one.
        if let Some(prev) = previous.filter(|p| *p != id)
            && self.plugins.get(&prev).is_some_and(|p| p.file == path)
        {
            self.plugins.remove(&prev);
            self.removed.insert(prev.clone(), now_ms());
            tracing::info!(vendor = %prev, file = %telemetry::one_line(&name), "plugin removed (its file now provides another vendor)");
            self.report.removed.push(prev);
        }
        let old_version = self.plugins.get(&id).map(|p| p.info.version.clone());
        tracing::info!(
            vendor = %id,
            file = %telemetry::one_line(&name),
            version = %telemetry::one_line(&plugin.info.version),
            previous_version = old_version.as_deref().unwrap_or("-"),
            mode = plugin.info.mode.as_str(),
            source = ?plugin.source,
            load_ms = plugin.load_time.as_secs_f64() * 1000.0,
            "plugin loaded"
        );
        self.removed.remove(&id);
        self.rejected.remove(path);
        self.report.loaded.push(id.clone());
        self.plugins.insert(id.clone(), Arc::new(plugin));
        self.files.insert(path.to_path_buf(), FileState { sig, vendor: Some(id), blocked_on: None });
        self.changed = true;
    }

    /// Lists the file as rejected; the vendor it provided (if any) keeps
    /// serving its previous version.
    fn reject(
        &mut self,
        path: &Path,
        sig: FileSig,
        previous: Option<String>,
        blocked_on: Option<String>,
        reason: String,
    ) {
        let name = file_name(path);
        tracing::warn!(file = %telemetry::one_line(&name), reason = %telemetry::one_line(&reason), still_serving = previous.as_deref().unwrap_or("-"), "plugin rejected");
        metrics::counter!(telemetry::PLUGINS_REJECTED).increment(1);
        let r = Rejected { file: name, reason };
        self.report.rejected.push(r.clone());
        self.rejected.insert(path.to_path_buf(), r);
        self.files.insert(path.to_path_buf(), FileState { sig, vendor: previous, blocked_on });
        self.changed = true;
    }
}

pub fn file_name(p: &Path) -> String {
    p.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_else(|| p.display().to_string())
}

/// Modified less than `SETTLE` ago.
fn is_fresh(sig: &FileSig) -> bool {
    sig.modified.and_then(|m| SystemTime::now().duration_since(m).ok()).is_some_and(|age| age < SETTLE)
}

/// Follows symlinks: a mounted volume (a Kubernetes ConfigMap, say) often
/// presents its files as links.
fn file_sig(path: &Path) -> std::io::Result<FileSig> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Ok(FileSig { len: meta.len(), modified: meta.modified().ok(), inode })
}

/// Readable plugin files, and unreadable entries with why.
type Listing = (Vec<(PathBuf, FileSig)>, BTreeMap<PathBuf, String>);

/// `*.wasm` files directly in `dir` (dotfiles skipped: a copy in progress
/// should be written as `.name.wasm` or `name.wasm.tmp`, then renamed), and
/// the `*.wasm` entries that are not readable files (a dangling symlink, a
/// directory), with why.
fn list_wasm(dir: &Path) -> std::io::Result<Listing> {
    let mut out = Vec::new();
    let mut unusable = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with('.') || !name.ends_with(".wasm") {
            continue;
        }
        let path = entry.path();
        match file_sig(&path) {
            Ok(sig) => out.push((path, sig)),
            Err(e) => {
                let why = match std::fs::symlink_metadata(&path) {
                    Ok(m) if m.file_type().is_symlink() => format!("a symlink whose target cannot be read: {e}"),
                    _ => e.to_string(),
                };
                unusable.insert(path, why);
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((out, unusable))
}
