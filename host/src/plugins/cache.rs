//! Compiled components on disk, keyed by the file's SHA-256 and the engine's
//! compatibility hash: a restart loads without compiling, and an engine
//! change (version or settings) misses the cache and recompiles instead of
//! failing.
//!
//! Deserializing a compiled artifact runs its machine code, so an entry is
//! trusted only if it authenticates: each file is `MAGIC`, then an
//! HMAC-SHA256 tag, then the serialized component. The tag covers the entry's
//! file name (plugin hash and engine key) and its bytes, under a random key
//! made on first start and kept beside the entries (`hmac.key`, mode 0600).
//! An entry that does not verify (tampered, truncated, written under another
//! key or for another plugin, or by an older vendorhost) is never
//! deserialized: it is logged, recompiled and overwritten. A key file that is
//! not a regular file of ours with mode 0600 is refused and replaced (and the
//! entries signed with it are then recompiled). Without a usable key the
//! cache is off.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The key's file name, in the cache directory.
pub const KEY_FILE: &str = "hmac.key";
/// The first bytes of every entry (and the format's version).
const MAGIC: &[u8; 8] = b"vhcwasm1";
const TAG_LEN: usize = 32;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Loaded from the on-disk cache.
    Cache,
    /// Compiled now (and written to the cache).
    Compiled,
}

#[derive(Clone)]
pub struct ComponentCache {
    /// The directory and the key that authenticates its entries; `None`: off.
    dir: Option<(PathBuf, Arc<[u8; 32]>)>,
    engine_key: String,
    /// Entries ignored because they did not authenticate.
    rejected: Arc<AtomicU64>,
}

impl std::fmt::Debug for ComponentCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ComponentCache")
            .field("dir", &self.dir.as_ref().map(|(d, _)| d))
            .field("engine_key", &self.engine_key)
            .finish_non_exhaustive()
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl ComponentCache {
    /// `dir = None` disables the on-disk cache; so does a directory that
    /// cannot be created or a key that can be neither read nor made.
    pub fn new(dir: Option<PathBuf>, engine_key: String) -> ComponentCache {
        let rejected = Arc::new(AtomicU64::new(0));
        let Some(d) = dir else { return ComponentCache { dir: None, engine_key, rejected } };
        if let Err(e) = std::fs::create_dir_all(&d) {
            tracing::warn!(dir = %d.display(), error = %e, "compile cache disabled: cannot create its directory");
            return ComponentCache { dir: None, engine_key, rejected };
        }
        match load_or_create_key(&d) {
            Ok(key) => ComponentCache { dir: Some((d, Arc::new(key))), engine_key, rejected },
            Err(e) => {
                tracing::warn!(file = %d.join(KEY_FILE).display(), error = %e, "compile cache disabled: no usable key");
                ComponentCache { dir: None, engine_key, rejected }
            }
        }
    }

    fn name(&self, sha: &str) -> String {
        format!("{sha}-{}.cwasm", self.engine_key)
    }

    /// How many entries were ignored (and recompiled) because they did not
    /// authenticate.
    pub fn rejected_entries(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Loads the compiled form of `bytes`, compiling (and caching) on a miss.
    /// Errors are compile errors: the file is not a valid component.
    pub fn load(&self, engine: &Engine, sha: &str, bytes: &[u8]) -> Result<(Component, Source), wasmtime::Error> {
        let name = self.name(sha);
        if let Some((dir, key)) = &self.dir {
            let path = dir.join(&name);
            match std::fs::read(&path) {
                Ok(entry) => match open_entry(key, &name, &entry) {
                    // SAFETY: the bytes authenticated under our key for this
                    // very name, so `store` below (in this process or another
                    // sharing the key file) wrote them from
                    // `Component::serialize`; they are deserialized from the
                    // memory that was checked, not read again.
                    Ok(serialized) => match unsafe { Component::deserialize(engine, serialized) } {
                        Ok(c) => return Ok((c, Source::Cache)),
                        Err(e) => {
                            tracing::warn!(file = %path.display(), error = %format!("{e:#}"), "stale compile cache entry; recompiling");
                        }
                    },
                    Err(reason) => {
                        self.rejected.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            file = %path.display(),
                            reason,
                            "compile cache entry does not authenticate (tampered, foreign or from an older version); not loading it, recompiling"
                        );
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot read compile cache entry; recompiling");
                }
            }
        }
        let component = Component::new(engine, bytes)?;
        if let Some((dir, key)) = &self.dir {
            store(&component, key, &dir.join(&name), &name);
        }
        Ok((component, Source::Compiled))
    }
}

fn mac(key: &[u8; 32], name: &str, serialized: &[u8]) -> Result<HmacSha256, &'static str> {
    let mut mac = HmacSha256::new_from_slice(key).map_err(|_| "bad key length")?;
    mac.update(MAGIC);
    mac.update(&(name.len() as u64).to_le_bytes());
    mac.update(name.as_bytes());
    mac.update(serialized);
    Ok(mac)
}

/// An entry's file contents: `MAGIC`, the tag over (name, serialized), the
/// serialized component.
pub fn seal_entry(key: &[u8; 32], name: &str, serialized: &[u8]) -> Result<Vec<u8>, &'static str> {
    let tag = mac(key, name, serialized)?.finalize().into_bytes();
    let mut out = Vec::with_capacity(MAGIC.len() + TAG_LEN + serialized.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&tag);
    out.extend_from_slice(serialized);
    Ok(out)
}

/// The serialized component inside `entry`, if the entry authenticates
/// under `key` for `name` (compared in constant time); else why not.
pub fn open_entry<'a>(key: &[u8; 32], name: &str, entry: &'a [u8]) -> Result<&'a [u8], &'static str> {
    let Some(rest) = entry.strip_prefix(MAGIC.as_slice()) else {
        return Err("no vendorhost entry header");
    };
    if rest.len() < TAG_LEN {
        return Err("truncated");
    }
    let (tag, serialized) = rest.split_at(TAG_LEN);
    mac(key, name, serialized)?.verify_slice(tag).map_err(|_| "tag mismatch")?;
    Ok(serialized)
}

fn store(component: &Component, key: &[u8; 32], path: &Path, name: &str) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let result = component.serialize().map_err(|e| format!("{e:#}")).and_then(|bytes| {
        let entry = seal_entry(key, name, &bytes)?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
        std::fs::write(&tmp, entry).and_then(|_| std::fs::rename(&tmp, path)).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            e.to_string()
        })
    });
    if let Err(e) = result {
        tracing::warn!(file = %path.display(), error = %e, "could not write compile cache entry");
    }
}

/// Why an existing key file is not used.
enum KeyProblem {
    Missing,
    Refused(String),
}

/// The cache's key: read from `dir/hmac.key` when that is a regular file of
/// ours with mode 0600 holding 64 hex digits; otherwise (with a warning
/// naming the file) a new one replaces it. A new key is written to a
/// private temporary file and linked into place, so no process reads half a
/// key and two starting at once agree on one.
fn load_or_create_key(dir: &Path) -> std::io::Result<[u8; 32]> {
    let path = dir.join(KEY_FILE);
    let replace = match read_key(&path) {
        Ok(key) => return Ok(key),
        Err(KeyProblem::Missing) => false,
        Err(KeyProblem::Refused(why)) => {
            tracing::warn!(file = %path.display(), reason = %why, "compile cache key refused; making a new one (entries signed with the old key will be recompiled)");
            true
        }
    };
    let key: [u8; 32] = rand::random();
    let tmp = dir.join(format!(".{KEY_FILE}.tmp{}-{}", std::process::id(), crate::model::now_ms()));
    let written = write_private(&tmp, hex::encode(key).as_bytes()).and_then(|_| {
        if replace {
            std::fs::rename(&tmp, &path)
        } else {
            // No-clobber: if another process made the key first, use theirs.
            std::fs::hard_link(&tmp, &path)
        }
    });
    let _ = std::fs::remove_file(&tmp);
    match written {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match read_key(&path) {
            Ok(key) => Ok(key),
            Err(KeyProblem::Missing) => Err(e),
            Err(KeyProblem::Refused(why)) => Err(std::io::Error::other(why)),
        },
        Err(e) => Err(e),
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn read_key(path: &Path) -> Result<[u8; 32], KeyProblem> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(KeyProblem::Missing),
        Err(e) => return Err(KeyProblem::Refused(format!("cannot inspect it: {e}"))),
    };
    if !meta.file_type().is_file() {
        return Err(KeyProblem::Refused("not a regular file".into()));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if meta.mode() & 0o077 != 0 {
            return Err(KeyProblem::Refused(format!(
                "mode {:04o}: readable or writable by others (must be 0600)",
                meta.mode() & 0o7777
            )));
        }
        let ours = our_uid(path.parent().unwrap_or(Path::new(".")))
            .map_err(|e| KeyProblem::Refused(format!("cannot tell our user id: {e}")))?;
        if meta.uid() != ours {
            return Err(KeyProblem::Refused(format!("owned by uid {}, not by this process (uid {ours})", meta.uid())));
        }
    }
    let text = std::fs::read_to_string(path).map_err(|e| KeyProblem::Refused(format!("cannot read it: {e}")))?;
    let mut key = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut key).map_err(|_| KeyProblem::Refused("not a key (64 hex digits)".into()))?;
    Ok(key)
}

/// The user id files this process creates get (std has no `geteuid`): the
/// owner of a file made for the purpose in `dir`.
#[cfg(unix)]
fn our_uid(dir: &Path) -> std::io::Result<u32> {
    use std::os::unix::fs::MetadataExt;
    let probe = dir.join(format!(".uid-probe{}-{}", std::process::id(), crate::model::now_ms()));
    let made = write_private(&probe, b"").and_then(|_| std::fs::metadata(&probe));
    let _ = std::fs::remove_file(&probe);
    Ok(made?.uid())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: &str = "abc-123.cwasm";

    #[test]
    fn an_entry_opens_only_untouched_under_its_key_and_name() {
        let key = [7u8; 32];
        let payload = b"compiled machine code".to_vec();
        let entry = seal_entry(&key, NAME, &payload).unwrap();
        assert_eq!(open_entry(&key, NAME, &entry), Ok(payload.as_slice()));

        for i in [0, MAGIC.len(), MAGIC.len() + TAG_LEN - 1, MAGIC.len() + TAG_LEN + 3, entry.len() - 1] {
            let mut flipped = entry.clone();
            flipped[i] ^= 0x01;
            assert!(open_entry(&key, NAME, &flipped).is_err(), "a flipped byte at {i} was accepted");
        }
        assert_eq!(open_entry(&[8u8; 32], NAME, &entry), Err("tag mismatch"), "another key");
        assert_eq!(open_entry(&key, "other-123.cwasm", &entry), Err("tag mismatch"), "another plugin's name");
        assert_eq!(open_entry(&key, NAME, &entry[..MAGIC.len() + 5]), Err("truncated"));
        assert!(open_entry(&key, NAME, &entry[..entry.len() - 1]).is_err(), "truncated payload");
        let mut longer = entry.clone();
        longer.push(0);
        assert!(open_entry(&key, NAME, &longer).is_err(), "appended byte");
        assert_eq!(open_entry(&key, NAME, &payload), Err("no vendorhost entry header"), "an unsealed entry");
        assert_eq!(open_entry(&key, NAME, b""), Err("no vendorhost entry header"));
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[cfg(unix)]
    #[test]
    fn the_key_is_made_private_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let key = load_or_create_key(dir.path()).unwrap();
        let path = dir.path().join(KEY_FILE);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(load_or_create_key(dir.path()).unwrap(), key, "the second start reads the same key");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy() != KEY_FILE)
            .collect();
        assert!(leftovers.is_empty(), "temporary files left behind: {leftovers:?}");
    }

    #[cfg(unix)]
    #[test]
    fn a_key_others_can_read_or_a_non_key_is_replaced() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        let old = load_or_create_key(dir.path()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let new = load_or_create_key(dir.path()).unwrap();
        assert_ne!(new, old, "a world-readable key is not used");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(load_or_create_key(dir.path()).unwrap(), new);

        std::fs::remove_file(&path).unwrap();
        write_private(&path, b"not hex").unwrap();
        let third = load_or_create_key(dir.path()).unwrap();
        assert_ne!(third, new);
        assert_eq!(load_or_create_key(dir.path()).unwrap(), third);

        std::fs::remove_file(&path).unwrap();
        let elsewhere = dir.path().join("elsewhere");
        write_private(&elsewhere, hex::encode([1u8; 32]).as_bytes()).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        assert_ne!(load_or_create_key(dir.path()).unwrap(), [1u8; 32], "a symlinked key is not followed");
        assert!(std::fs::symlink_metadata(&path).unwrap().file_type().is_file());
    }
}
