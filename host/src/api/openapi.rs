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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    /// Every `.rs` file under `dir`.
    fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                sources(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    /// utoipa names a schema after its type alone and keeps one per name,
    /// so two `ToSchema` types of one name make one response be checked
    /// against the other's shape (as `UsageView` did).
    #[test]
    fn schema_names_are_unique() {
        let mut files = Vec::new();
        sources(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut files);
        let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            let mut derived = false;
            for line in text.lines().map(str::trim) {
                if line.starts_with("#[derive(") && line.contains("ToSchema") {
                    derived = true;
                } else if derived
                    && let Some(rest) = line.strip_prefix("pub struct ").or(line.strip_prefix("pub enum "))
                {
                    let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    seen.entry(name).or_default().push(f.display().to_string());
                    derived = false;
                }
            }
        }
        assert!(seen.len() > 30, "found only {seen:?}");
        let twice: Vec<_> = seen.iter().filter(|(_, at)| at.len() > 1).collect();
        assert!(twice.is_empty(), "schema names used twice: {twice:?}");
    }
}
