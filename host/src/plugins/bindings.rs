//! The one place WIT bindings are generated: the current contract
//! (`wit/vendor-plugin.wit`, 0.2.0) and, in `v0_1`, the frozen 0.1.0
//! (`wit/0.1.0/`) whose plugins keep loading. Both `host` interfaces are linked
//! (`compat` maps 0.1.0's onto 0.2.0's), and a loaded
//! plugin is a [`PluginPre`] of either version.
//!
//! Only `http-send` is async on the host side: it does network I/O. The other
//! imports are plain functions, cheaper to call.

wasmtime::component::bindgen!({
    world: "vendor-plugin",
    path: "../wit",
    // No `tracing` flag: it would log call arguments and results (config
    // values, which may be secrets) at trace level.
    imports: {
        "vendorhost:plugin/host.http-send": async,
    },
    exports: { default: async },
});

pub use exports::vendorhost::plugin::vendor as guest;
pub use vendorhost::plugin::host;
pub use vendorhost::plugin::types;

/// Contract 0.1.0, as released: the same functions, a `vendor-info` without
/// `config`. Its types convert to the current ones in `compat`.
pub mod v0_1 {
    wasmtime::component::bindgen!({
        world: "vendor-plugin",
        path: "../wit/0.1.0",
        imports: {
            "vendorhost:plugin/host.http-send": async,
        },
        exports: { default: async },
    });

    pub use exports::vendorhost::plugin::vendor as guest;
    pub use vendorhost::plugin::host;
    pub use vendorhost::plugin::types;
}

/// The contract this host speaks; plugins built against [`CONTRACT_VERSIONS`]
/// load, a plugin exporting another version is refused.
pub const CONTRACT_VERSION: &str = "0.2.0";
/// Every contract version a plugin may be built against, newest first.
pub const CONTRACT_VERSIONS: [&str; 2] = ["0.2.0", "0.1.0"];
/// The export every vendor plugin must have (current contract).
pub const VENDOR_EXPORT: &str = "vendorhost:plugin/vendor@0.2.0";
/// The same export of contract 0.1.0.
pub const VENDOR_EXPORT_V0_1: &str = "vendorhost:plugin/vendor@0.1.0";

/// Whether `name` is one of the contract's own interfaces (of a version this
/// host speaks) that a plugin may import.
pub fn is_contract_import(name: &str) -> bool {
    CONTRACT_VERSIONS
        .iter()
        .any(|v| name == format!("vendorhost:plugin/host@{v}") || name == format!("vendorhost:plugin/types@{v}"))
}

/// A plugin linked and ready to instantiate, by the contract it was built
/// for, with the config keys its `info` declared required (the runtime
/// refuses a call while one is unset).
pub struct PluginPre<T: 'static> {
    pub linked: Linked<T>,
    required_config: std::sync::Arc<[String]>,
}

/// The linked component, by contract version.
pub enum Linked<T: 'static> {
    Current(VendorPluginPre<T>),
    V0_1(v0_1::VendorPluginPre<T>),
}

impl<T: 'static> Clone for PluginPre<T> {
    fn clone(&self) -> Self {
        let linked = match &self.linked {
            Linked::Current(p) => Linked::Current(p.clone()),
            Linked::V0_1(p) => Linked::V0_1(p.clone()),
        };
        PluginPre { linked, required_config: self.required_config.clone() }
    }
}

impl<T: 'static> PluginPre<T> {
    pub fn new(linked: Linked<T>) -> PluginPre<T> {
        PluginPre { linked, required_config: std::sync::Arc::from(Vec::new()) }
    }

    /// The same plugin, with the keys its `info` declared required.
    pub fn with_required_config(self, keys: Vec<String>) -> PluginPre<T> {
        PluginPre { required_config: keys.into(), ..self }
    }

    pub fn required_config(&self) -> &[String] {
        &self.required_config
    }

    /// The contract version the plugin was built against.
    pub fn contract_version(&self) -> &'static str {
        match self.linked {
            Linked::Current(_) => CONTRACT_VERSION,
            Linked::V0_1(_) => "0.1.0",
        }
    }
}
