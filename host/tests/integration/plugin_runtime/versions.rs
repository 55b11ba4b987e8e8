//! Contract versions: a plugin built against 0.1.0 (raw wit-bindgen, the
//! frozen `wit/0.1.0`) keeps loading and working on a 0.2.0 host, and a 0.2.0
//! plugin's declared config keys reach the host.

use serde_json::{Value, json};
use vendorhost::plugins::{CallError, FetchOutcome, VendorError};

use super::{cli, job, load, policy, runtime};
use crate::support::app::{plugin, test_plugin};

#[tokio::test]
async fn a_plugin_built_against_contract_0_1_0_loads_and_answers() {
    let p = load(&test_plugin("test-v1")).await;
    assert_eq!(p.pre.contract_version(), "0.1.0");
    assert_eq!(p.info.id, "test-v1");
    assert!(p.info.config.is_empty(), "0.1.0 declares no config keys: {:?}", p.info.config);

    let rt = runtime();
    let pol = policy("test-v1", &[], &[("greeting", "hello")]);
    let out = rt.fetch(&p.pre, pol.clone(), &job("v1-1", json!({"a": 1}))).await.unwrap();
    let FetchOutcome::Complete(text) = out else { panic!("{out:?}") };
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!((v["contract"].as_str(), v["greeting"].as_str()), (Some("0.1.0"), Some("hello")), "{v}");
    assert_eq!(v["data"], json!({"a": 1}), "{v}");
    assert!(v["now"].as_u64().unwrap() > 1_700_000_000_000, "host clock through 0.1.0's host: {v}");

    // Its vendor errors keep their kind and retry-after.
    let res = rt.fetch(&p.pre, pol.clone(), &job("v1-2", json!("rate-limited"))).await;
    match res {
        Err(CallError::Vendor(e @ VendorError::RateLimited { .. })) => {
            assert_eq!(e.retry_after(), Some(std::time::Duration::from_millis(1500)))
        }
        other => panic!("{other:?}"),
    }
    let hook = rt.on_webhook(&p.pre, pol, vec![("x".into(), "y".into())], b"req-9".to_vec()).await.unwrap();
    assert_eq!((hook.request_id.as_str(), hook.outcome), ("req-9", Err("v1 webhook".to_string())));

    let (ok, out) = cli(&["plugins", "check", test_plugin("test-v1").to_str().unwrap()]);
    assert!(ok && out.contains("vendor test-v1"), "{out}");
}

#[tokio::test]
async fn a_current_plugin_declares_its_config_keys() {
    let p = load(&plugin("sync")).await;
    assert_eq!(p.pre.contract_version(), "0.2.0");
    let keys: Vec<(&str, bool, bool)> = p.info.config.iter().map(|k| (k.name.as_str(), k.required, k.secret)).collect();
    assert_eq!(keys, [("base_url", false, false)]);
}

/// A vendor whose `info` declares a required key is not called while the key
/// is unset: the job's error names the key and where to set it.
#[tokio::test]
async fn a_required_config_key_left_unset_refuses_the_call() {
    let p = load(&test_plugin("test-needs")).await;
    assert_eq!(p.pre.required_config(), ["api_key".to_string()]);
    let rt = runtime();
    let res = rt.fetch(&p.pre, policy("test-needs", &[], &[("region", "us")]), &job("n-1", json!({}))).await;
    match res {
        Err(CallError::Vendor(e @ VendorError::Misconfigured(_))) => {
            assert!(!e.is_retryable());
            let text = e.to_string();
            assert!(text.contains("`api_key`") && text.contains("[vendors.test-needs.config]"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    let empty = rt.fetch(&p.pre, policy("test-needs", &[], &[("api_key", "")]), &job("n-2", json!({}))).await;
    assert!(matches!(empty, Err(CallError::Vendor(VendorError::Misconfigured(_)))), "{empty:?}");
    let out = rt.fetch(&p.pre, policy("test-needs", &[], &[("api_key", "s3cret")]), &job("n-3", json!({}))).await;
    let FetchOutcome::Complete(text) = out.unwrap() else { panic!() };
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), json!({"api_key_len": 6, "region": "eu"}));
}
