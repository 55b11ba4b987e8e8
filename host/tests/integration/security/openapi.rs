//! The OpenAPI document against the routes the router serves.

use std::collections::BTreeSet;

use serde_json::Value;
use utoipa::OpenApi;

use super::sample_plugins;
use crate::support::app::{TestApp, embedded_config};

fn documented() -> BTreeSet<(String, String)> {
    let doc = vendorhost::api::openapi::ApiDoc::openapi();
    let mut out = BTreeSet::new();
    for (path, item) in &doc.paths.paths {
        let ops = [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PUT", &item.put),
            ("DELETE", &item.delete),
            ("PATCH", &item.patch),
        ];
        for (method, op) in ops {
            if op.is_some() {
                out.insert((method.to_string(), path.clone()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_served_route_is_documented_and_every_documented_route_is_served() {
    let served: BTreeSet<(String, String)> =
        vendorhost::api::route_list().into_iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    assert_eq!(served, documented(), "the router and /openapi.json disagree");

    let doc = serde_json::to_value(vendorhost::api::openapi::ApiDoc::openapi()).unwrap();
    let mut op_ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            assert!(
                op_ids.insert(op["operationId"].as_str().unwrap().to_string()),
                "duplicate operationId at {method} {path}"
            );
            let responses = op["responses"].as_object().unwrap();
            assert!(responses.contains_key("503"), "{method} {path}: the overload answer is undocumented");
            if path.contains('{') {
                assert!(
                    responses.contains_key("400") && responses.contains_key("404"),
                    "{method} {path}: bad or unknown ids undocumented"
                );
            }
        }
    }

    // And the live router serves each one (no fallback 404, no 405).
    let plugins = sample_plugins();
    let data = tempfile::tempdir().unwrap();
    let app = TestApp::start(embedded_config(data.path(), plugins.path())).await;
    for (method, path) in &served {
        let concrete: String =
            path.split('/').map(|seg| if seg.starts_with('{') { "x" } else { seg }).collect::<Vec<_>>().join("/");
        let r = app.client.request(method.parse().unwrap(), app.url(&concrete)).send().await.unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        let fallback = body["error"]["message"].as_str().is_some_and(|m| m.starts_with("no such endpoint"));
        assert!(status != 405 && !fallback, "{method} {path} is not served: {status} {body}");
    }
    let live: Value = app.get_json("/openapi.json").await;
    assert_eq!(live, doc, "GET /openapi.json serves another document");
    app.stop().await;
}

/// A job documents what cleaning removed: an optional list of `{path, kind}`.
#[test]
fn the_job_view_documents_its_redactions() {
    let doc = serde_json::to_value(vendorhost::api::openapi::ApiDoc::openapi()).unwrap();
    let schemas = &doc["components"]["schemas"];
    let job = &schemas["JobView"];
    assert_eq!(job["properties"]["redactions"]["items"]["$ref"], "#/components/schemas/RedactionView", "{job}");
    let required = job["required"].as_array().unwrap();
    assert!(!required.iter().any(|r| r == "redactions"), "redactions must be optional: {job}");
    let redaction = &schemas["RedactionView"];
    assert_eq!(redaction["required"], serde_json::json!(["path", "kind"]), "{redaction}");
}
