//! Compiled components on disk, keyed by the file's SHA-256 and the engine's
//! compatibility hash: a restart loads in ~0.1 ms instead of compiling, and an
//! engine change (version or settings) misses the cache and recompiles
//! instead of failing.
//!
//! The cache directory is trusted like the binary itself: deserializing a
//! compiled artifact runs its machine code. Only this process writes it.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Loaded from the on-disk cache.
    Cache,
    /// Compiled now (and written to the cache).
    Compiled,
}

#[derive(Debug, Clone)]
pub struct ComponentCache {
    dir: Option<PathBuf>,
    engine_key: String,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl ComponentCache {
    /// `dir = None` disables the on-disk cache.
    pub fn new(dir: Option<PathBuf>, engine_key: String) -> ComponentCache {
        if let Some(d) = &dir
            && let Err(e) = std::fs::create_dir_all(d)
        {
            tracing::warn!(dir = %d.display(), error = %e, "compile cache disabled: cannot create its directory");
            return ComponentCache { dir: None, engine_key };
        }
        ComponentCache { dir, engine_key }
    }

    fn path(&self, sha: &str) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(format!("{sha}-{}.cwasm", self.engine_key)))
    }

    /// Loads the compiled form of `bytes`, compiling (and caching) on a miss.
    /// Errors are compile errors: the file is not a valid component.
    pub fn load(&self, engine: &Engine, sha: &str, bytes: &[u8]) -> Result<(Component, Source), wasmtime::Error> {
        if let Some(path) = self.path(sha)
            && path.exists()
        {
            // SAFETY: files in the cache directory are written only by
            // `store` below from `Component::serialize` of this engine's
            // configuration (the key includes its compatibility hash).
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(c) => return Ok((c, Source::Cache)),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %format!("{e:#}"), "stale compile cache entry; recompiling");
                }
            }
        }
        let component = Component::new(engine, bytes)?;
        if let Some(path) = self.path(sha) {
            store(&component, &path);
        }
        Ok((component, Source::Compiled))
    }
}

fn store(component: &Component, path: &Path) {
    let result = component.serialize().map_err(|e| format!("{e:#}")).and_then(|bytes| {
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, path)).map_err(|e| e.to_string())
    });
    if let Err(e) = result {
        tracing::warn!(file = %path.display(), error = %e, "could not write compile cache entry");
    }
}
