//! `GET /openapi.json`: the API described from the handlers themselves.
//! This module only assembles the document; each handler and type
//! describes itself where it is defined.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Header, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::Route;
use super::error::{ErrorBody, ErrorDetail};

#[derive(OpenApi)]
#[openapi(
    info(title = "vendorhost", description = "Unified access to external data vendors; every vendor is a WASI component plugin."),
    paths(
        super::jobs::submit, super::jobs::get_job,
        super::job_control::list_jobs, super::job_control::cancel_job, super::job_control::submit_batch,
        super::webhooks::receive,
        super::vendors::list,
        super::health::healthz, super::health::readyz,
        super::metrics::render,
        super::admin::list, super::admin::replay, super::admin::replay_all,
        super::admin::discard, super::admin::bulk,
        super::usage::usage,
        openapi_json,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&Common)
)]
pub struct ApiDoc;

/// What every operation shares: the bearer-key schemes, and the 503 the
/// protective layers (load shedding, request timeout) may answer anywhere.
struct Common;

impl Modify for Common {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        let bearer = |what: &str| {
            SecurityScheme::Http(
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some(what.to_string())).build(),
            )
        };
        components.add_security_scheme(
            "api_key",
            bearer("A key from `auth.api_keys`; required on /jobs when any is configured."),
        );
        components.add_security_scheme(
            "admin_key",
            bearer(
                "`auth.admin_key`; required on /admin, /metrics and /vendors when set. The web console's session \
                 cookie (`POST /ui/login`) stands for it on requests that also send `X-Requested-With`.",
            ),
        );
        let unavailable = || {
            let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
            let retry_after = Header::new(ObjectBuilder::new().schema_type(Type::Integer).build());
            ResponseBuilder::new()
                .description("Overloaded, timed out, or a backend is unavailable; retry after `Retry-After` seconds")
                .content("application/json", content)
                .header("Retry-After", retry_after)
                .build()
        };
        for item in doc.paths.paths.values_mut() {
            for op in [&mut item.get, &mut item.post].into_iter().flatten() {
                op.responses.responses.entry("503".to_string()).or_insert_with(|| RefOr::T(unavailable()));
            }
        }
    }
}

pub fn routes() -> Vec<Route> {
    vec![Route::get("/openapi.json", openapi_json)]
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "health", operation_id = "openapi", responses((status = 200, description = "OpenAPI 3 document", body = Object)))]
pub async fn openapi_json() -> Response {
    // Built once: the document never changes while the process runs.
    static DOC: OnceLock<String> = OnceLock::new();
    let text = DOC.get_or_init(|| ApiDoc::openapi().to_json().unwrap_or_else(|_| "{}".to_string()));
    ([(header::CONTENT_TYPE, "application/json")], text.as_str()).into_response()
}
