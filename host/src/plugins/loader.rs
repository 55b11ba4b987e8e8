//! Loading one plugin file: check it is a component of our world and
//! contract version that imports only what the host offers, compile it (or
//! take it from the cache), pre-link it, and read its `info`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::bindings::{
    Linked, PluginPre, VENDOR_EXPORT, VENDOR_EXPORT_V0_1, VendorPluginPre, is_contract_import, v0_1,
};
use super::cache::{ComponentCache, Source, sha256_hex};
use super::policy::CallPolicy;
use super::runtime::Runtime;
use super::state::State;
use super::types::{CallError, VendorInfo};

/// A loaded, ready-to-call plugin. Immutable: an upgrade loads a new one and
/// swaps it in; calls already running keep theirs.
pub struct Plugin {
    pub info: VendorInfo,
    pub file: PathBuf,
    pub sha256: String,
    pub size: u64,
    pub pre: PluginPre<State>,
    pub source: Source,
    pub load_time: std::time::Duration,
    pub loaded_at: crate::model::Millis,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("info", &self.info).field("file", &self.file).finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read: {0}")]
    Read(#[from] std::io::Error),
    #[error("not a WebAssembly file (no \\0asm header)")]
    NotWasm,
    #[error("a core WebAssembly module, not a component: build for wasm32-wasip2 (or run `wasm-tools component new`)")]
    CoreModule,
    #[error("unsupported WebAssembly binary version {0:02x?}")]
    UnknownVersion([u8; 4]),
    #[error("invalid component: {0}")]
    Invalid(String),
    #[error("a component of another world: it does not export `{VENDOR_EXPORT}` (its exports: {0})")]
    WrongWorld(String),
    #[error(
        "contract version mismatch: the plugin exports `{found}`, this host speaks `{VENDOR_EXPORT}` and `{VENDOR_EXPORT_V0_1}`"
    )]
    ContractVersion { found: String },
    #[error(
        "imports `{0}`, which vendorhost does not link (plugins get vendorhost:plugin/host and WASI preview 2 with nothing granted; outbound HTTP goes through the host's http-send, not wasi:http)"
    )]
    ForbiddenImport(String),
    #[error("cannot link: {0}")]
    Link(String),
    #[error("`info` failed: {0}")]
    Info(CallError),
    #[error("invalid `info`: {0}")]
    BadInfo(String),
}

/// Cheap checks on the bytes before compiling.
pub fn check_header(bytes: &[u8]) -> Result<(), LoadError> {
    if bytes.len() < 8 || &bytes[0..4] != b"\0asm" {
        return Err(LoadError::NotWasm);
    }
    match [bytes[4], bytes[5], bytes[6], bytes[7]] {
        [0x01, 0x00, 0x00, 0x00] => Err(LoadError::CoreModule),
        [0x0d, 0x00, 0x01, 0x00] => Ok(()),
        v => Err(LoadError::UnknownVersion(v)),
    }
}

/// WASI preview 2 packages the host links (with nothing granted: see
/// `engine`). `wasi:http` is not among them.
const WASI_LINKED: [&str; 6] =
    ["wasi:cli/", "wasi:io/", "wasi:clocks/", "wasi:random/", "wasi:filesystem/", "wasi:sockets/"];

fn import_allowed(name: &str) -> bool {
    is_contract_import(name) || WASI_LINKED.iter().any(|p| name.starts_with(p))
}

/// Loads `path`. Compilation runs on a blocking thread.
pub async fn load(runtime: &Arc<Runtime>, cache: &ComponentCache, path: &Path) -> Result<Plugin, LoadError> {
    let started = Instant::now();
    let bytes = tokio::fs::read(path).await?;
    check_header(&bytes)?;
    let sha = sha256_hex(&bytes);
    let size = bytes.len() as u64;
    let (component, source) = {
        let engine = runtime.engine.engine.clone();
        let cache = cache.clone();
        let sha = sha.clone();
        tokio::task::spawn_blocking(move || cache.load(&engine, &sha, &bytes))
            .await
            .map_err(|e| LoadError::Invalid(format!("compile task failed: {e}")))?
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))?
    };
    let engine = &runtime.engine.engine;
    let ty = component.component_type();
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    let current = exports.iter().any(|e| e == VENDOR_EXPORT);
    if !current && !exports.iter().any(|e| e == VENDOR_EXPORT_V0_1) {
        if let Some(found) = exports.iter().find(|e| e.starts_with("vendorhost:plugin/vendor")) {
            return Err(LoadError::ContractVersion { found: found.clone() });
        }
        let list = if exports.is_empty() { "none".to_string() } else { exports.join(", ") };
        return Err(LoadError::WrongWorld(list));
    }
    if let Some((name, _)) = ty.imports(engine).find(|(n, _)| !import_allowed(n)) {
        return Err(LoadError::ForbiddenImport(name.to_string()));
    }
    let pre = runtime.engine.linker.instantiate_pre(&component).map_err(|e| LoadError::Link(format!("{e:#}")))?;
    let linked = if current {
        Linked::Current(VendorPluginPre::new(pre).map_err(|e| LoadError::Link(format!("{e:#}")))?)
    } else {
        Linked::V0_1(v0_1::VendorPluginPre::new(pre).map_err(|e| LoadError::Link(format!("{e:#}")))?)
    };
    let pre = PluginPre::new(linked);
    let file_name = path.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
    let info = runtime.info(&pre, Arc::new(CallPolicy::for_load(&file_name))).await.map_err(LoadError::Info)?;
    validate_info(&info)?;
    let required = info.config.iter().filter(|k| k.required).map(|k| k.name.clone()).collect();
    let pre = pre.with_required_config(required);
    Ok(Plugin {
        info,
        file: path.to_path_buf(),
        sha256: sha,
        size,
        pre,
        source,
        load_time: started.elapsed(),
        loaded_at: crate::model::now_ms(),
    })
}

pub fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 {
        return Err(format!("vendor id {id:?} must be 1 to 64 characters"));
    }
    if !id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Err(format!("vendor id {id:?} may hold only lowercase letters, digits and '-'"));
    }
    Ok(())
}

fn validate_info(info: &VendorInfo) -> Result<(), LoadError> {
    validate_id(&info.id).map_err(LoadError::BadInfo)?;
    if !(info.rate_per_second > 0.0 && info.rate_per_second.is_finite()) {
        return Err(LoadError::BadInfo(format!("rate-per-second {} must be a positive number", info.rate_per_second)));
    }
    if info.version.is_empty() || info.version.len() > 64 {
        return Err(LoadError::BadInfo("version must be 1 to 64 characters".into()));
    }
    let mut seen = std::collections::BTreeSet::new();
    for key in &info.config {
        if key.name.is_empty() || key.name.len() > 128 {
            return Err(LoadError::BadInfo(format!("config key {:?} must be 1 to 128 characters", key.name)));
        }
        if !seen.insert(key.name.as_str()) {
            return Err(LoadError::BadInfo(format!("config key {:?} is declared twice", key.name)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_checks_name_the_problem() {
        assert!(matches!(check_header(b"hello world"), Err(LoadError::NotWasm)));
        assert!(matches!(check_header(b"\0asm\x01\0\0\0"), Err(LoadError::CoreModule)));
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_ok());
    }

    #[test]
    fn wasi_and_both_contracts_are_linked_but_not_wasi_http() {
        assert!(import_allowed("wasi:filesystem/types@0.2.6"));
        assert!(import_allowed("wasi:sockets/tcp@0.2.0"));
        assert!(import_allowed("vendorhost:plugin/host@0.1.0"));
        assert!(import_allowed("vendorhost:plugin/host@0.2.0"));
        assert!(!import_allowed("vendorhost:plugin/host@0.3.0"));
        assert!(!import_allowed("wasi:http/outgoing-handler@0.2.6"));
    }

    #[test]
    fn ids_are_checked() {
        assert!(validate_id("sync").is_ok());
        assert!(validate_id("Bad Id").is_err());
        assert!(validate_id("").is_err());
    }
}
