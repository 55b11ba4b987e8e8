//! `vendorhost plugins new NAME`: a standalone plugin crate from the template
//! in `plugins/template`, with its own copy of the WIT contract.

use std::path::Path;

const LIB_RS: &str = include_str!("../../../plugins/template/src/lib.rs");
const WIT: &str = include_str!("../../../wit/vendor-plugin.wit");

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
    format!(
        r#"# A vendorhost plugin: a WebAssembly component for the `vendor-plugin`
# world in wit/. Build: cargo build --release --target wasm32-wasip2
[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
wit-bindgen = {{ version = "=0.63.0", default-features = false, features = ["macros", "realloc", "std", "bitflags"] }}

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
        .replace("path: \"../../wit\"", "path: \"wit\"")
        .replace("id: \"template\".into()", &format!("id: \"{name}\".into()"))
        .replace("display_name: \"Template vendor\".into()", &format!("display_name: \"{name}\".into()"))
        .replace("[vendors.template.config]", &format!("[vendors.{name}.config]"));
    let files = [
        (dir.join("Cargo.toml"), cargo_toml(name)),
        (dir.join("src/lib.rs"), lib),
        (dir.join("wit/vendor-plugin.wit"), WIT.to_string()),
        (dir.join(".gitignore"), "/target\n".to_string()),
    ];
    for (path, text) in files {
        let io = |e| TemplateError::Io { path: path.display().to_string(), source: e };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::write(&path, text).map_err(|e| TemplateError::Io { path: path.display().to_string(), source: e })?;
    }
    Ok(())
}
