//! Observability (issue 18, part 6): one OpenTelemetry trace follows a job
//! from its submit through the queue, the worker, the plugin call and the
//! vendor's HTTP request to the vendor's webhook; and `/metrics` describes
//! every family and shows the known series at zero from the start.
//!
//! The trace test gives its own runtime's threads a subscriber with the
//! SDK's in-memory exporter (tests in this binary run side by side, so no
//! process-wide subscriber): the service, its embedded mock vendors and the
//! test client all run on those threads.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::json;
use tracing_subscriber::layer::SubscriberExt;

use crate::support::app::{self, Proc, TestApp, embedded_config, eventually, plugin, plugins_dir};

const LONG: Duration = Duration::from_secs(30);

/// The spans a job's trace must hold, one per hop.
const HOPS: [&str; 6] = ["submit", "enqueue", "job", "plugin.fetch", "vendor.http", "webhook"];

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.as_str().to_string())
}

#[test]
fn one_trace_covers_submit_queue_worker_plugin_vendor_http_and_webhook() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("vendorhost-test"));
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(layer));
    let on_threads = dispatch.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .on_thread_start(move || std::mem::forget(tracing::dispatcher::set_default(&on_threads)))
        .build()
        .unwrap();
    let spans = tracing::dispatcher::with_default(&dispatch, || {
        rt.block_on(async {
            let p = plugins_dir(&[plugin("async")]);
            let d = tempfile::tempdir().unwrap();
            // The embedded mocks: the async vendor calls back with the
            // `traceparent` it was called with.
            let app = TestApp::start(embedded_config(d.path(), p.path())).await;
            let id = app.submit("async", json!({"q": "traced"})).await;
            eventually(LONG, "the async job to complete", || async {
                (app.job(&id).await["status"] == "complete").then_some(())
            })
            .await;
            // Every hop's span has ended once the job is complete but the
            // webhook's (it answers after the job's state is written).
            let spans = eventually(LONG, "the job's trace to hold every hop", || async {
                let spans = exporter.get_finished_spans().unwrap();
                let trace = spans
                    .iter()
                    .find(|s| s.name == "submit" && attr(s, "request_id").as_deref() == Some(id.as_str()))?
                    .span_context
                    .trace_id();
                let ours: Vec<SpanData> = spans.into_iter().filter(|s| s.span_context.trace_id() == trace).collect();
                let names: BTreeSet<&str> = ours.iter().map(|s| s.name.as_ref()).collect();
                HOPS.iter().all(|h| names.contains(h)).then_some(ours)
            })
            .await;
            app.stop().await;
            spans
        })
    });
    drop(rt);

    // One trace, and each hop a child of the one before it.
    let trace: std::collections::HashSet<TraceId> = spans.iter().map(|s| s.span_context.trace_id()).collect();
    assert_eq!(trace.len(), 1);
    let by_id: HashMap<SpanId, &SpanData> = spans.iter().map(|s| (s.span_context.span_id(), s)).collect();
    let parent_name = |name: &str| {
        let s = spans.iter().find(|s| s.name == name).unwrap();
        by_id.get(&s.parent_span_id).map(|p| p.name.to_string())
    };
    assert_eq!(parent_name("submit"), None, "the submit starts the trace");
    assert_eq!(parent_name("enqueue").as_deref(), Some("submit"));
    assert_eq!(parent_name("job").as_deref(), Some("enqueue"), "the worker continues the queue entry's trace");
    assert_eq!(parent_name("plugin.fetch").as_deref(), Some("job"));
    assert_eq!(parent_name("vendor.http").as_deref(), Some("plugin.fetch"));
    assert_eq!(parent_name("webhook").as_deref(), Some("vendor.http"), "the vendor sent the traceparent back");
    let http = spans.iter().find(|s| s.name == "vendor.http").unwrap();
    assert_eq!(attr(http, "vendor").as_deref(), Some("async"));
}

/// Right after start-up, before any job, in a process of its own (the
/// recorder is process-wide): every family has HELP text, and the
/// per-vendor and per-reason series read 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_described_and_known_series_start_at_zero() {
    let p = plugins_dir(&[plugin("sync"), plugin("async")]);
    let d = tempfile::tempdir().unwrap();
    let cfg = embedded_config(d.path(), p.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut env = app::env_for(&cfg);
    env.push(("VENDORHOST_LISTEN", format!("127.0.0.1:{port}")));
    env.push(("VENDORHOST_MOCKS", "false".into()));
    let mut proc = Proc::spawn(&["serve"], &env, d.path().join("serve.log"));
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/metrics");
    // Up once it answers and both plugins are loaded.
    let text = eventually(LONG, "the service to start", || async {
        let text = client.get(&url).send().await.ok()?.text().await.ok()?;
        text.lines().any(|l| l.starts_with("vendorhost_plugins_loaded ") && l.ends_with(" 2")).then_some(text)
    })
    .await;
    let helped: BTreeSet<&str> =
        text.lines().filter_map(|l| l.strip_prefix("# HELP ")).filter_map(|l| l.split(' ').next()).collect();
    let typed: BTreeSet<&str> =
        text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).collect();
    let missing: Vec<&&str> = typed.difference(&helped).collect();
    assert!(missing.is_empty(), "families without HELP: {missing:?}\n{text}");
    let zero = |family: &str, labels: &[(&str, &str)]| {
        text.lines().any(|l| {
            l.strip_prefix(family).is_some_and(|rest| rest.starts_with('{'))
                && labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
                && l.ends_with(" 0")
        })
    };
    for vendor in ["sync", "async"] {
        for family in [
            "vendorhost_jobs_submitted_total",
            "vendorhost_jobs_completed_total",
            "vendorhost_jobs_failed_total",
            "vendorhost_webhooks_accepted_total",
        ] {
            assert!(zero(family, &[("vendor", vendor)]), "{family} for {vendor} not at 0:\n{text}");
        }
        for reason in ["rate_limit", "breaker_open", "bulkhead"] {
            let labels = [("vendor", vendor), ("reason", reason)];
            assert!(zero("vendorhost_jobs_delayed_total", &labels), "jobs_delayed {vendor}/{reason}:\n{text}");
        }
        assert!(zero("vendorhost_webhooks_rejected_total", &[("vendor", vendor), ("reason", "mismatch")]), "{text}");
    }
    for outcome in ["delivered", "retry", "gave_up", "refused"] {
        assert!(zero("vendorhost_notifications_total", &[("outcome", outcome)]), "notifications {outcome}:\n{text}");
    }
    proc.term(Duration::from_secs(10));
}

/// The exporter itself: a `serve` process told only the standard
/// `OTEL_EXPORTER_OTLP_ENDPOINT` posts its spans as OTLP protobuf to
/// `/v1/traces` there (flushed at the latest when it stops).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp_http_to_the_standard_endpoint() {
    use axum::http::HeaderMap;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, usize)>();
    let collector = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let tx = tx.clone();
            async move {
                let kind = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                let _ = tx.send((kind, body.len()));
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, collector).await });

    let p = plugins_dir(&[plugin("sync")]);
    let d = tempfile::tempdir().unwrap();
    let cfg = embedded_config(d.path(), p.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut env = app::env_for(&cfg);
    env.push(("VENDORHOST_LISTEN", format!("127.0.0.1:{port}")));
    env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector_addr}")));
    let mut proc = Proc::spawn(&["serve"], &env, d.path().join("serve.log"));
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    eventually(LONG, "the service to be ready", || async {
        client.get(format!("{base}/readyz")).send().await.ok()?.status().is_success().then_some(())
    })
    .await;
    let r =
        client.post(format!("{base}/jobs")).json(&json!({"vendor": "sync", "data": "traced"})).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let id = r.json::<serde_json::Value>().await.unwrap()["request_id"].as_str().unwrap().to_string();
    eventually(LONG, "the job to complete", || async {
        let j: serde_json::Value = client.get(format!("{base}/jobs/{id}")).send().await.ok()?.json().await.ok()?;
        (j["status"] == "complete").then_some(())
    })
    .await;
    assert!(proc.term(LONG).is_some_and(|s| s.success()), "{}", proc.log_text());
    let (kind, len) = tokio::time::timeout(LONG, rx.recv()).await.expect("no export").expect("collector gone");
    assert_eq!(kind, "application/x-protobuf");
    assert!(len > 0);
    assert!(proc.log_text().contains("traces exported over OTLP/HTTP"), "{}", proc.log_text());
}
