//! The operator's settings for this vendor (`[vendors.<id>.config]` in
//! vendorhost.toml). A plugin sees only its own vendor's values. Declare the
//! keys you read in `info` ([`crate::VendorInfo::config_key`]) so the host can
//! refuse a vendor whose required keys are missing before any call.

use crate::{ConfigKey, VendorError, sys};

/// The value of `key`, if the operator set it.
pub fn get(key: &str) -> Option<String> {
    sys::config_get(key)
}

/// The value of `key`, or `default` when unset.
pub fn get_or(key: &str, default: &str) -> String {
    get(key).unwrap_or_else(|| default.to_string())
}

/// The value of `key`; unset (or empty) is a permanent `unsupported` error
/// naming the key, so the job fails at once with a message the operator can
/// act on.
pub fn require(key: &str) -> Result<String, VendorError> {
    match get(key) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(VendorError::Unsupported(format!(
            "config key {key:?} is not set: add it to [vendors.<id>.config] in vendorhost.toml"
        ))),
    }
}

impl ConfigKey {
    /// An optional, non-secret key.
    pub fn optional(name: &str, description: &str) -> ConfigKey {
        ConfigKey { name: name.into(), required: false, secret: false, description: description.into() }
    }

    /// A key the vendor cannot be called without.
    pub fn required(name: &str, description: &str) -> ConfigKey {
        ConfigKey { required: true, ..ConfigKey::optional(name, description) }
    }

    /// Marks the key a credential: its value is never shown.
    pub fn secret(mut self) -> ConfigKey {
        self.secret = true;
        self
    }
}
