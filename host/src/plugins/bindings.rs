//! The one place WIT bindings are generated (`wit/vendor-plugin.wit`).
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

/// The contract this host speaks; a plugin exporting another version is refused.
pub const CONTRACT_VERSION: &str = "0.1.0";
/// The export every vendor plugin must have.
pub const VENDOR_EXPORT: &str = "vendorhost:plugin/vendor@0.1.0";
/// The host interface plugins import.
pub const HOST_IMPORT: &str = "vendorhost:plugin/host@0.1.0";
/// The shared types interface (type-only) plugins may import.
pub const TYPES_IMPORT: &str = "vendorhost:plugin/types@0.1.0";
