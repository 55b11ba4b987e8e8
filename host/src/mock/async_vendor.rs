//! The asynchronous mock vendor: `POST /v1/jobs` answers 202 with a
//! `vendor_ref`, then calls `callback_url` back with the result, signed as a
//! Standard Webhook and retried like a real sender (same `webhook-id`, fresh
//! timestamp and signature per attempt).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use uuid::Uuid;

use super::fault::Callback;
use super::{MockKind, Shared, admit, bad_request, record, stats};
use crate::webhook;

/// Retries after the first attempt; backoff starts here and doubles up to
/// `MAX_BACKOFF` (about 30 s in all: real senders retry for hours, and a
/// receiver restarting mid-delivery must still get the callback).
const MAX_RETRIES: u32 = 10;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub(super) async fn submit(State(shared): State<Arc<Shared>>, headers: axum::http::HeaderMap, body: Bytes) -> Response {
    let call = match admit(&shared, MockKind::Async, &body).await {
        Ok(call) => call,
        Err(resp) => return resp,
    };
    let url = match call.request.get("callback_url").and_then(Value::as_str).map(reqwest::Url::parse) {
        Some(Ok(url)) if matches!(url.scheme(), "http" | "https") => url,
        _ => return bad_request("callback_url (an http or https URL) is required"),
    };
    let delay = call.data.get("_delay_ms").and_then(Value::as_u64).map_or(shared.callback_delay, Duration::from_millis);
    let vendor_ref = format!("ref-{}", Uuid::new_v4());
    let payload = match call.plan.callback {
        Callback::Complete => Some(json!({
            "vendor_ref": vendor_ref,
            "request_id": call.request_id,
            "status": "complete",
            "result": record::untidy(&call.data),
        })),
        Callback::Failed => Some(json!({
            "vendor_ref": vendor_ref,
            "request_id": call.request_id,
            "status": "failed",
            "error": "vendor could not find a match",
        })),
        Callback::Never => None,
    };
    // Sent back on the callback, as a vendor that keeps W3C trace context would.
    let trace = headers.get(crate::traces::TRACEPARENT).and_then(|v| v.to_str().ok()).map(str::to_string);
    if let Some(payload) = payload {
        tokio::spawn(deliver(shared.clone(), url, payload, delay, trace));
    }
    (StatusCode::ACCEPTED, call.limit_headers, Json(json!({ "vendor_ref": vendor_ref }))).into_response()
}

/// Waits `delay`, then POSTs until a 2xx, `MAX_RETRIES` retries or shutdown.
async fn deliver(shared: Arc<Shared>, url: reqwest::Url, payload: Value, delay: Duration, trace: Option<String>) {
    if !shared.sleep(delay).await {
        return;
    }
    let body = payload.to_string().into_bytes();
    let msg_id = format!("msg_{}", Uuid::new_v4());
    let mut backoff = FIRST_BACKOFF;
    for attempt in 0..=MAX_RETRIES {
        let outcome = match shared.until_stopped(send_once(&shared, &url, &msg_id, &body, trace.as_deref())).await {
            Some(outcome) => outcome,
            None => return,
        };
        match outcome {
            Ok(()) => {
                tracing::debug!(%url, msg_id, attempt, "mock callback delivered");
                return;
            }
            Err(reason) => tracing::debug!(%url, msg_id, attempt, reason, "mock callback failed"),
        }
        if attempt == MAX_RETRIES || !shared.sleep(backoff).await {
            break;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    tracing::warn!(%url, msg_id, "mock callback given up");
}

async fn send_once(
    shared: &Shared,
    url: &reqwest::Url,
    msg_id: &str,
    body: &[u8],
    trace: Option<&str>,
) -> Result<(), String> {
    let ts = stats::now_secs();
    let mut req = shared.http.post(url.clone()).header(header::CONTENT_TYPE, "application/json").body(body.to_vec());
    if let Some(tp) = trace {
        req = req.header(crate::traces::TRACEPARENT, tp);
    }
    req = match &shared.secret {
        Some(secret) => {
            webhook::headers(secret, msg_id, ts, body).into_iter().fold(req, |req, (k, v)| req.header(k, v))
        }
        // Unsigned, but the id and timestamp still let a receiver dedupe.
        None => req.header(webhook::HEADER_ID, msg_id).header(webhook::HEADER_TIMESTAMP, ts.to_string()),
    };
    let resp = req.send().await.map_err(|e| e.to_string())?;
    if resp.status().is_success() { Ok(()) } else { Err(format!("status {}", resp.status())) }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::http::HeaderMap;
    use axum::routing::post;
    use tokio::sync::mpsc;

    use super::super::test_util::*;
    use super::super::{MockHandle, MockOptions};
    use super::*;
    use crate::webhook::Secret;

    type Delivery = (HeaderMap, Bytes);

    /// A tiny callback receiver answering 500 to its first `fail_first` calls.
    async fn receiver(fail_first: usize) -> (String, mpsc::UnboundedReceiver<Delivery>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let seen = Arc::new(AtomicUsize::new(0));
        let app = axum::Router::new().route(
            "/cb",
            post(move |headers: HeaderMap, body: Bytes| {
                let (tx, seen) = (tx.clone(), seen.clone());
                async move {
                    let _ = tx.send((headers, body));
                    if seen.fetch_add(1, Ordering::SeqCst) < fail_first {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::NO_CONTENT
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/cb", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, rx)
    }

    async fn submit_job(mock: &MockHandle, callback_url: &str, data: Value) -> reqwest::Response {
        client()
            .post(format!("{}/v1/jobs", mock.base_url()))
            .json(&json!({"request_id": "req-9", "data": data, "callback_url": callback_url}))
            .send()
            .await
            .unwrap()
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<Delivery>) -> Delivery {
        tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap()
    }

    fn check_signature(secret: &Secret, (headers, body): &Delivery) -> Result<(), webhook::WebhookError> {
        let h = |name| headers.get(name).and_then(|v| v.to_str().ok());
        webhook::verify(
            std::slice::from_ref(secret),
            h(webhook::HEADER_ID),
            h(webhook::HEADER_TIMESTAMP),
            h(webhook::HEADER_SIGNATURE),
            body,
            stats::now_secs(),
            webhook::DEFAULT_TOLERANCE,
        )
    }

    fn signed_mock_options(text: String) -> MockOptions {
        MockOptions { callback_delay_ms: 20, secret: Some(text), ..MockOptions::default() }
    }

    #[tokio::test]
    async fn accepts_then_calls_back_signed() {
        let (secret, text) = Secret::generate();
        let mock = start(MockKind::Async, signed_mock_options(text)).await;
        let (url, mut rx) = receiver(0).await;
        let r = submit_job(&mock, &url, json!("Ada")).await;
        assert_eq!(r.status(), 202);
        let accepted: Value = r.json().await.unwrap();
        let vendor_ref = accepted["vendor_ref"].as_str().unwrap().to_owned();
        assert!(vendor_ref.starts_with("ref-"));

        let delivery = next(&mut rx).await;
        assert_eq!(check_signature(&secret, &delivery), Ok(()));
        assert!(delivery.0[webhook::HEADER_ID].to_str().unwrap().starts_with("msg_"));
        let cb: Value = serde_json::from_slice(&delivery.1).unwrap();
        assert_eq!(cb["vendor_ref"], vendor_ref.as_str());
        assert_eq!(cb["request_id"], "req-9");
        assert_eq!(cb["status"], "complete");
        assert_eq!(cb["result"]["query"], "  Ada  ");
        let (other, _) = Secret::generate();
        assert!(check_signature(&other, &delivery).is_err());
        mock.shutdown().await;
    }

    #[tokio::test]
    async fn retries_a_failed_callback_with_the_same_id() {
        let (secret, text) = Secret::generate();
        let mock = start(MockKind::Async, signed_mock_options(text)).await;
        let (url, mut rx) = receiver(1).await;
        assert_eq!(submit_job(&mock, &url, json!({"x": 1})).await.status(), 202);
        let first = next(&mut rx).await;
        let second = next(&mut rx).await;
        assert_eq!(first.0[webhook::HEADER_ID], second.0[webhook::HEADER_ID]);
        assert_eq!(check_signature(&secret, &second), Ok(()));
        assert_eq!(first.1, second.1);
        // A 2xx ends it: no third attempt.
        let third = tokio::time::timeout(Duration::from_millis(600), rx.recv()).await;
        assert!(third.is_err());
        mock.shutdown().await;
    }

    #[tokio::test]
    async fn failed_and_missing_callbacks_unsigned() {
        let mock = start(MockKind::Async, MockOptions { callback_delay_ms: 20, ..MockOptions::default() }).await;
        let (url, mut rx) = receiver(0).await;
        let r = submit_job(&mock, &url, json!({"_fault": "no_callback"})).await;
        assert_eq!(r.status(), 202);
        let r = submit_job(&mock, &url, json!({"_fault": "callback_failed", "_delay_ms": 300})).await;
        assert_eq!(r.status(), 202);
        let (headers, body) = next(&mut rx).await;
        assert!(headers.get(webhook::HEADER_SIGNATURE).is_none());
        assert!(headers.get(webhook::HEADER_ID).is_some());
        let cb: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(cb["status"], "failed");
        assert_eq!(cb["error"], "vendor could not find a match");
        let more = tokio::time::timeout(Duration::from_millis(400), rx.recv()).await;
        assert!(more.is_err(), "no_callback must never call back");
        assert_eq!(mock.stats().total, 2);
        mock.shutdown().await;
    }

    #[tokio::test]
    async fn faults_and_bad_callback_urls_send_nothing() {
        let mock = start(MockKind::Async, MockOptions { callback_delay_ms: 0, ..MockOptions::default() }).await;
        let (url, mut rx) = receiver(0).await;
        let r = submit_job(&mock, &url, json!({"_fault": "429:2"})).await;
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "2");
        assert_eq!(submit_job(&mock, "ftp://nope", json!(1)).await.status(), 400);
        let none = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await;
        assert!(none.is_err());
        mock.shutdown().await;
    }
}
