//! The in-process mock vendors of the embedded default, and the overlay of
//! settings that points the sample plugins at them: applied under whatever
//! the operator configured, at start and on every reload.

use tokio::net::TcpListener;

use super::error::StartError;
use crate::config::Config;
use crate::mock::{self, MockHandle, MockKind, MockOptions};

/// Settings derived at start-up (the in-process mocks' addresses and
/// secret), applied under whatever the operator configured.
pub type Overlay = std::collections::BTreeMap<String, crate::config::VendorPolicy>;

/// Fills each vendor field the operator left unset from `overlay`.
pub fn apply_overlay(cfg: &mut Config, overlay: &Overlay) {
    for (id, o) in overlay {
        let v = cfg.vendors.entry(id.clone()).or_default();
        if v.allowed_hosts.is_none() {
            v.allowed_hosts = o.allowed_hosts.clone();
            // The private-address opt-in goes with the overlay's own grant
            // (the mocks on 127.0.0.1), never with the operator's.
            if v.allow_private_addresses.is_none() {
                v.allow_private_addresses = o.allow_private_addresses;
            }
        }
        if v.webhook_secrets.is_none() {
            v.webhook_secrets = o.webhook_secrets.clone();
        }
        if let Some(oc) = &o.config {
            let c = v.config.get_or_insert_with(Default::default);
            for (k, val) in oc {
                c.entry(k.clone()).or_insert_with(|| val.clone());
            }
        }
    }
}

/// The vendor ids served by the sync mock: the sample plugin in Rust, Python
/// (plugins/python/sync-py) and JavaScript (plugins/js/sync-js).
pub const SYNC_VENDORS: [&str; 3] = ["sync", "sync-py", "sync-js"];

/// The in-process mock vendors of the embedded default, and the grants and
/// settings that point the sample plugins at them (only where the operator
/// set nothing).
pub async fn start_mocks(overlay: &mut Overlay) -> Result<Vec<MockHandle>, StartError> {
    let (_, secret) = crate::webhook::Secret::generate();
    let mut handles = Vec::new();
    for (kind, id) in [(MockKind::Sync, "sync"), (MockKind::Async, "async")] {
        let listener = TcpListener::bind("127.0.0.1:0").await.map_err(StartError::Mock)?;
        let opts = MockOptions { secret: (kind == MockKind::Async).then(|| secret.clone()), ..MockOptions::default() };
        let h = mock::spawn(kind, listener, opts).await.map_err(StartError::Mock)?;
        // The sync vendor's plugin in Python and in JavaScript call the same mock.
        let ids: &[&str] = if kind == MockKind::Sync { &SYNC_VENDORS } else { &[id] };
        for id in ids {
            let v = overlay.entry(id.to_string()).or_default();
            v.allowed_hosts = Some(vec![h.addr.to_string()]);
            // The mocks listen on 127.0.0.1, a non-public address.
            v.allow_private_addresses = Some(true);
            v.config = Some([("base_url".to_string(), h.base_url())].into_iter().collect());
            if kind == MockKind::Async {
                v.webhook_secrets = Some(vec![secret.clone()]);
            }
        }
        println!("mock vendor {id} on {}", h.base_url());
        handles.push(h);
    }
    Ok(handles)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VendorPolicy;

    #[test]
    fn the_mocks_private_address_opt_in_goes_only_with_their_grant() {
        let mock = VendorPolicy {
            allowed_hosts: Some(vec!["127.0.0.1:9001".into()]),
            allow_private_addresses: Some(true),
            ..VendorPolicy::default()
        };
        let overlay: Overlay = [("sync".to_string(), mock)].into_iter().collect();

        let mut cfg = Config::default();
        apply_overlay(&mut cfg, &overlay);
        assert_eq!(cfg.vendor("sync").allowed_hosts, Some(vec!["127.0.0.1:9001".to_string()]));
        assert_eq!(cfg.vendor("sync").allow_private_addresses, Some(true));

        let mut cfg = Config::default();
        let own = VendorPolicy { allowed_hosts: Some(vec!["api.vendor.example".into()]), ..VendorPolicy::default() };
        cfg.vendors.insert("sync".into(), own);
        apply_overlay(&mut cfg, &overlay);
        assert_eq!(cfg.vendor("sync").allowed_hosts, Some(vec!["api.vendor.example".to_string()]));
        assert_eq!(cfg.vendor("sync").allow_private_addresses, None, "the operator's grant got the mocks' opt-in");
    }
}
