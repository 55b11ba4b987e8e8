//! `vendorhost plugins new NAME`: a standalone plugin crate from the template
//! in `plugins/template`, with its own copy of the Rust guest SDK
//! (`plugins/sdk`, crate `vendorhost-plugin`) and of the WIT contract, so it
//! builds anywhere with nothing but crates.io.

use std::path::Path;

const LIB_RS: &str = include_str!("../../../plugins/template/src/lib.rs");
const WIT: &str = include_str!("../../../wit/vendor-plugin.wit");

/// The SDK's files, copied under `vendorhost-plugin/` in the new crate.
const SDK_FILES: [(&str, &str); 9] = [
    ("Cargo.toml", include_str!("../../../plugins/sdk/Cargo.toml")),
    ("src/lib.rs", include_str!("../../../plugins/sdk/src/lib.rs")),
    ("src/config.rs", include_str!("../../../plugins/sdk/src/config.rs")),
    ("src/http.rs", include_str!("../../../plugins/sdk/src/http.rs")),
    ("src/limits.rs", include_str!("../../../plugins/sdk/src/limits.rs")),
    ("src/log.rs", include_str!("../../../plugins/sdk/src/log.rs")),
    ("src/sys.rs", include_str!("../../../plugins/sdk/src/sys.rs")),
    ("src/testing.rs", include_str!("../../../plugins/sdk/src/testing.rs")),
    ("src/types.rs", include_str!("../../../plugins/sdk/src/types.rs")),
];

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{0}")]
    BadName(String),
    #[error("{0} already exists; pick another --dir")]
    Exists(String),
    #[error("cannot write {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

fn cargo_toml(name: &str) -> String {
    let lib = name.replace('-', "_");
    format!(
        r#"# A vendorhost plugin: a WebAssembly component for the `vendor-plugin`
# world (vendorhost-plugin/wit/vendor-plugin.wit), written with the Rust guest
# SDK copied into vendorhost-plugin/.
#   build:  cargo build --release --target wasm32-wasip2
#           (then: vendorhost plugins check target/wasm32-wasip2/release/{lib}.wasm)
#   test:   cargo test     (runs `fetch` natively against the SDK's fake host)
[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
# For serde helpers (Request::json, HttpResponse::json, Job::data_as):
# vendorhost-plugin = {{ path = "vendorhost-plugin", features = ["json"] }}
vendorhost-plugin = {{ path = "vendorhost-plugin" }}

# Standalone: not part of any enclosing workspace.
[workspace]

[profile.release]
opt-level = "s"
lto = true
strip = true
codegen-units = 1
panic = "abort"
"#
    )
}

pub fn create(name: &str, dir: &Path) -> Result<(), TemplateError> {
    crate::plugins::loader::validate_id(name).map_err(TemplateError::BadName)?;
    if dir.exists() {
        return Err(TemplateError::Exists(dir.display().to_string()));
    }
    let lib = LIB_RS
        .replace(
            "VendorInfo::new(\"template\", \"Template vendor\"",
            &format!("VendorInfo::new(\"{name}\", \"{name}\""),
        )
        .replace("[vendors.template.config]", &format!("[vendors.{name}.config]"));
    let sdk = dir.join("vendorhost-plugin");
    let mut files = vec![
        (dir.join("Cargo.toml"), cargo_toml(name)),
        (dir.join("src/lib.rs"), lib),
        (sdk.join("wit/vendor-plugin.wit"), WIT.to_string()),
        (dir.join(".gitignore"), "/target\n".to_string()),
    ];
    for (path, text) in SDK_FILES {
        // In the repository the SDK reads the one WIT file at ../../wit.
        files.push((sdk.join(path), text.replace("path: \"../../wit\"", "path: \"wit\"")));
    }
    for (path, text) in files {
        let io = |e| TemplateError::Io { path: path.display().to_string(), source: e };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::write(&path, text).map_err(|e| TemplateError::Io { path: path.display().to_string(), source: e })?;
    }
    Ok(())
}
