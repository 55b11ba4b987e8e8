//! The loaded plugins, swapped atomically.
//!
//! A scan of the plugins directory builds a new snapshot from the old one and
//! swaps it in whole: readers (`get`) never lock and never see half a change,
//! and a call that took an `Arc<Plugin>` finishes on that version even if an
//! upgrade lands meanwhile.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use serde::Serialize;

use super::cache::ComponentCache;
use super::loader::{self, Plugin};
use super::runtime::Runtime;
use super::types::Mode;
use crate::jobs::{Millis, now_ms};

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Rejected {
    /// The file name in the plugins directory.
    pub file: String,
    pub reason: String,
}

/// What `GET /vendors` says about a loaded plugin.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct VendorSummary {
    pub id: String,
    pub display_name: String,
    pub mode: Mode,
    pub version: String,
    pub file: String,
    pub sha256: String,
    pub hosts: Vec<String>,
}

#[derive(Default)]
pub struct Snapshot {
    pub plugins: BTreeMap<String, Arc<Plugin>>,
    /// File → (its signature when last read, the vendor it provides if loaded).
    files: BTreeMap<PathBuf, (FileSig, Option<String>)>,
    pub rejected: BTreeMap<PathBuf, Rejected>,
    /// Vendors whose plugin was removed, and when.
    pub removed: BTreeMap<String, Millis>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileSig {
    len: u64,
    modified: Option<SystemTime>,
}

/// What one scan changed, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ScanReport {
    pub loaded: Vec<String>,
    pub removed: Vec<String>,
    pub rejected: Vec<Rejected>,
}

pub struct Registry {
    runtime: Arc<Runtime>,
    cache: ComponentCache,
    dir: PathBuf,
    snapshot: ArcSwap<Snapshot>,
    scan_lock: tokio::sync::Mutex<()>,
    /// Fires after every scan that changed something.
    changed: tokio::sync::watch::Sender<u64>,
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
            })
            .collect();
        (vendors, snap.rejected.values().cloned().collect())
    }

    /// Reads the directory and applies what changed: new and changed files
    /// are loaded, removed files unregister their vendor. A file that fails to
    /// load is listed as rejected, and the vendor's previous version (if any)
    /// keeps serving.
    pub async fn scan(&self) -> ScanReport {
        let _guard = self.scan_lock.lock().await;
        let old = self.snapshot.load_full();
        let mut report = ScanReport::default();
        let found = match list_wasm(&self.dir) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read plugins directory");
                return report;
            }
        };

        let mut plugins = old.plugins.clone();
        let mut files = old.files.clone();
        let mut rejected = old.rejected.clone();
        let mut removed = old.removed.clone();

        // Files that are gone take their vendor with them.
        let gone: Vec<PathBuf> = files.keys().filter(|p| !found.iter().any(|(f, _)| f == *p)).cloned().collect();
        for path in gone {
            rejected.remove(&path);
            if let Some((_, Some(vendor))) = files.remove(&path)
                && plugins.get(&vendor).is_some_and(|p| p.file == path)
            {
                plugins.remove(&vendor);
                removed.insert(vendor.clone(), now_ms());
                tracing::info!(vendor = %vendor, file = %file_name(&path), "plugin removed");
                report.removed.push(vendor);
            }
        }

        for (path, sig) in found {
            if files.get(&path).is_some_and(|(s, _)| *s == sig) {
                continue;
            }
            let previous = files.get(&path).and_then(|(_, v)| v.clone());
            match loader::load(&self.runtime, &self.cache, &path).await {
                Ok(plugin) => {
                    let id = plugin.info.id.clone();
                    if let Some(other) = plugins.get(&id).filter(|p| p.file != path) {
                        let reason = format!("vendor id {id:?} is already provided by {}", file_name(&other.file));
                        tracing::warn!(file = %file_name(&path), reason = %reason, "plugin rejected");
                        let r = Rejected { file: file_name(&path), reason };
                        report.rejected.push(r.clone());
                        rejected.insert(path.clone(), r);
                        files.insert(path, (sig, None));
                        continue;
                    }
                    // The same file now providing another id frees the old one.
                    if let Some(prev) = previous.filter(|p| *p != id)
                        && plugins.get(&prev).is_some_and(|p| p.file == path)
                    {
                        plugins.remove(&prev);
                        removed.insert(prev.clone(), now_ms());
                        report.removed.push(prev);
                    }
                    let old_version = plugins.get(&id).map(|p| p.info.version.clone());
                    tracing::info!(
                        vendor = %id,
                        file = %file_name(&path),
                        version = %plugin.info.version,
                        previous_version = old_version.as_deref().unwrap_or("-"),
                        mode = plugin.info.mode.as_str(),
                        source = ?plugin.source,
                        load_ms = plugin.load_time.as_secs_f64() * 1000.0,
                        "plugin loaded"
                    );
                    removed.remove(&id);
                    rejected.remove(&path);
                    report.loaded.push(id.clone());
                    plugins.insert(id.clone(), Arc::new(plugin));
                    files.insert(path, (sig, Some(id)));
                }
                Err(e) => {
                    let reason = e.to_string();
                    tracing::warn!(file = %file_name(&path), reason = %reason, "plugin rejected");
                    metrics::counter!("vendorhost_plugins_rejected_total").increment(1);
                    let r = Rejected { file: file_name(&path), reason };
                    report.rejected.push(r.clone());
                    rejected.insert(path.clone(), r);
                    // Keep serving the previous good version of this file's vendor.
                    files.insert(path, (sig, previous));
                }
            }
        }

        if !(report.loaded.is_empty() && report.removed.is_empty() && report.rejected.is_empty()) {
            self.snapshot.store(Arc::new(Snapshot { plugins, files, rejected, removed }));
            metrics::gauge!("vendorhost_plugins_loaded").set(self.snapshot.load().plugins.len() as f64);
            self.changed.send_modify(|n| *n += 1);
        }
        report
    }
}

pub fn file_name(p: &Path) -> String {
    p.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_else(|| p.display().to_string())
}

/// `*.wasm` files directly in `dir` (dotfiles skipped: a copy in progress
/// should be written as `.name.wasm` or `name.wasm.tmp`, then renamed).
fn list_wasm(dir: &Path) -> std::io::Result<Vec<(PathBuf, FileSig)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with('.') || !name.ends_with(".wasm") {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        out.push((path, FileSig { len: meta.len(), modified: meta.modified().ok() }));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}
