//! What a plugin declares it needs (contract 0.2.0 `vendor-info`: config keys,
//! hosts) against what the operator configured: required keys left unset,
//! declared hosts not granted, and config tables naming no loaded plugin.
//! Pure functions: the runtime refuses calls with `missing_config`, the app
//! logs the rest at load and on reload, `GET /vendors` shows ungranted hosts.

use std::collections::BTreeMap;

use super::grants::Grants;
use super::types::VendorInfo;

/// The `required` keys unset or empty in `config`, in declaration order.
pub fn missing_config(required: &[String], config: &BTreeMap<String, String>) -> Vec<String> {
    required.iter().filter(|k| config.get(k.as_str()).is_none_or(|v| v.is_empty())).cloned().collect()
}

/// The one error for a vendor missing required keys (logged at load, and the
/// error of each job refused for it).
pub fn missing_config_message(vendor: &str, missing: &[String]) -> String {
    let keys: Vec<String> = missing.iter().map(|k| format!("`{k}`")).collect();
    format!(
        "vendor {vendor} requires config key{} {} (declared in its info); set {} in [vendors.{vendor}.config]",
        if missing.len() == 1 { "" } else { "s" },
        keys.join(", "),
        if missing.len() == 1 { "it" } else { "them" }
    )
}

/// Hosts the plugin's `info` asks for that `grants` does not cover.
pub fn ungranted_hosts(info: &VendorInfo, grants: &Grants) -> Vec<String> {
    info.hosts.iter().filter(|h| !grants.covers_declared(h)).cloned().collect()
}

/// Config tables (`[vendors.<id>]`) whose id no loaded plugin has: most often
/// a typo, or a plugin that failed to load.
pub fn unmatched_tables<'a>(configured: impl IntoIterator<Item = &'a str>, loaded: &[String]) -> Vec<String> {
    configured.into_iter().filter(|id| !loaded.iter().any(|l| l == id)).map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::plugins::types::Mode;

    fn info(hosts: &[&str]) -> VendorInfo {
        VendorInfo {
            id: "acme".into(),
            display_name: "Acme".into(),
            mode: Mode::Sync,
            version: "1.0.0".into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            rate_per_second: 1.0,
            burst: 1,
            call_timeout: Duration::from_secs(1),
            config: Vec::new(),
        }
    }

    #[test]
    fn required_keys_unset_or_empty_are_missing() {
        let config: BTreeMap<String, String> =
            [("a".to_string(), "1".to_string()), ("b".to_string(), String::new())].into_iter().collect();
        let required = ["a".to_string(), "b".to_string(), "c".to_string()];
        assert_eq!(missing_config(&required, &config), ["b", "c"]);
        assert_eq!(
            missing_config_message("acme", &["api_key".into()]),
            "vendor acme requires config key `api_key` (declared in its info); set it in [vendors.acme.config]"
        );
        assert!(missing_config_message("acme", &["a".into(), "b".into()]).contains("keys `a`, `b`"));
    }

    #[test]
    fn declared_hosts_are_checked_against_the_grants() {
        let i = info(&["api.acme.example", "127.0.0.1", "eu.acme.example:8443", "other.example"]);
        let g = Grants::new(&["api.acme.example", "127.0.0.1:9001", "*.acme.example:8443"]).unwrap();
        assert_eq!(ungranted_hosts(&i, &g), ["other.example"]);
        assert_eq!(ungranted_hosts(&i, &Grants::deny_all()).len(), 4);
        assert!(ungranted_hosts(&i, &Grants::new(&["*"]).unwrap()).is_empty());
    }

    #[test]
    fn tables_without_a_plugin_are_named() {
        let loaded = ["sync".to_string(), "async".to_string()];
        assert_eq!(unmatched_tables(["sync", "synk", "async"], &loaded), ["synk"]);
    }
}
