//! The synchronous mock vendor: `POST /v1/lookup` answers with the record.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{MockKind, Shared, admit, record};

pub(super) async fn lookup(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let call = match admit(&shared, MockKind::Sync, &body).await {
        Ok(call) => call,
        Err(resp) => return resp,
    };
    let body = Json(json!({
        "request_id": call.request_id,
        "source": "mock-sync",
        "record": record::untidy(&call.data),
    }));
    (call.limit_headers, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::super::MockOptions;
    use super::super::test_util::*;
    use super::*;
    use serde_json::Value;

    #[tokio::test]
    async fn answers_with_an_untidy_record() {
        let mock = start(MockKind::Sync, MockOptions::default()).await;
        let r = client()
            .post(format!("{}/v1/lookup", mock.base_url()))
            .json(&json!({"request_id": "req-1", "data": "Ada"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["request_id"], "req-1");
        assert_eq!(body["source"], "mock-sync");
        let rec = &body["record"];
        assert_eq!(rec["query"], "  Ada  ");
        assert_eq!(rec["name"], "  Ada Lovelace ");
        assert_eq!(rec["address"]["contact"]["note"], " keep me ");
        assert!(rec["score"].is_number());
        assert_eq!(mock.stats().total, 1);
        mock.shutdown().await;
    }

    #[tokio::test]
    async fn rejects_a_request_without_request_id() {
        let mock = start(MockKind::Sync, MockOptions::default()).await;
        let r =
            client().post(format!("{}/v1/lookup", mock.base_url())).json(&json!({"data": "Ada"})).send().await.unwrap();
        assert_eq!(r.status(), 400);
        mock.shutdown().await;
    }

    #[tokio::test]
    async fn per_request_latency_is_applied() {
        let mock = start(MockKind::Sync, MockOptions::default()).await;
        let started = std::time::Instant::now();
        let r = client()
            .post(format!("{}/v1/lookup", mock.base_url()))
            .json(&json!({"request_id": "r", "data": {"_latency_ms": 150}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(started.elapsed() >= std::time::Duration::from_millis(150));
        mock.shutdown().await;
    }
}
