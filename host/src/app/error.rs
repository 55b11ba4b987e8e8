//! Start-up failures of the service, each one line naming the cause and the
//! fix.

use std::path::PathBuf;

/// Start-up failures: one line naming the cause and the fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("configuration: {0} (check vendorhost.toml and VENDORHOST_* variables)")]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot listen on {addr}: {source} (is another process using the port? set --listen or VENDORHOST_LISTEN)")]
    Listen { addr: String, source: std::io::Error },
    #[error("cannot open the embedded database {path}: {message} (set --data or VENDORHOST_DATA to a writable path)")]
    Database { path: PathBuf, message: String },
    #[error("cannot reach Redis at {url}: {message} (start Redis or fix VENDORHOST_QUEUE)")]
    Redis { url: String, message: String },
    #[error("cannot reach MongoDB at {url}: {message} (start MongoDB or fix VENDORHOST_STORE)")]
    Mongo { url: String, message: String },
    #[error("plugin runtime: {0}")]
    Runtime(String),
    #[error("mock vendor: {0}")]
    Mock(std::io::Error),
}
