//! OpenTelemetry traces: off unless an OTLP endpoint is configured
//! (`[telemetry] otlp_endpoint`, else the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`).
//!
//! The service's `tracing` spans are the trace's spans (through
//! `tracing-opentelemetry`); this module installs the exporter behind them
//! and carries a span's context across the hops `tracing` cannot see, as a
//! W3C `traceparent`: through the queue (`queue::Message::trace`), to vendors
//! (plugin HTTP requests) and back from them (their webhooks).
//!
//! `main` puts an empty, reloadable layer into the subscriber before any
//! configuration is read ([`slot`]); [`start`] fills it once the
//! configuration is known, and [`shutdown`] flushes what is left at exit.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, layer::Layered, reload};

use crate::config::TelemetrySettings;

/// The W3C trace-context header.
pub const TRACEPARENT: &str = "traceparent";

/// The subscriber the trace layer sits on in `main`.
pub type Base = Layered<EnvFilter, Registry>;
/// What the slot holds: the trace layer, once started.
type Inner = Option<Box<dyn Layer<Base> + Send + Sync>>;
/// The trace layer: absent until [`start`] finds an endpoint.
pub type Slot = reload::Layer<Inner, Base>;

static HANDLE: OnceLock<reload::Handle<Inner, Base>> = OnceLock::new();
static PROVIDER: Mutex<Option<SdkTracerProvider>> = Mutex::new(None);

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("telemetry.otlp_endpoint: cannot build the OTLP exporter: {0}")]
    Exporter(String),
}

/// The empty trace layer for `main`'s subscriber (once per process).
pub fn slot() -> Slot {
    let (layer, handle) = reload::Layer::new(None);
    let _ = HANDLE.set(handle);
    layer
}

/// Where spans go: the configured endpoint, else the standard variables'
/// (None: traces are off).
fn endpoint(settings: &TelemetrySettings) -> Option<String> {
    let set = |v: String| Some(v.trim().to_string()).filter(|v| !v.is_empty());
    if let Some(base) = set(settings.otlp_endpoint.clone()) {
        // A base URL, as OTEL_EXPORTER_OTLP_ENDPOINT is: the signal's path goes after it.
        return Some(if base.ends_with("/v1/traces") {
            base
        } else {
            format!("{}/v1/traces", base.trim_end_matches('/'))
        });
    }
    if let Some(url) = std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").ok().and_then(set) {
        return Some(url);
    }
    std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .and_then(set)
        .map(|b| format!("{}/v1/traces", b.trim_end_matches('/')))
}

/// Starts exporting spans if an endpoint is configured; returns whether it
/// did. Spans are batched on a thread of their own and sent over HTTP
/// (protobuf); an unreachable collector costs dropped spans, never a
/// request.
pub fn start(settings: &TelemetrySettings) -> Result<bool, TraceError> {
    let Some(url) = endpoint(settings) else { return Ok(false) };
    let Some(handle) = HANDLE.get() else {
        tracing::warn!("traces: an OTLP endpoint is set but this process has no trace layer (embedded use)");
        return Ok(false);
    };
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(url.clone())
        .build()
        .map_err(|e| TraceError::Exporter(e.to_string()))?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(settings.service_name.clone()).build();
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("vendorhost"));
    if let Err(e) = handle.reload(Some(Box::new(layer) as Box<dyn Layer<Base> + Send + Sync>)) {
        tracing::warn!(error = %e, "traces: could not install the trace layer");
        return Ok(false);
    }
    if let Ok(mut p) = PROVIDER.lock() {
        *p = Some(provider);
    }
    tracing::info!(endpoint = %url, service = %settings.service_name, "traces exported over OTLP/HTTP");
    Ok(true)
}

/// Flushes and stops the exporter (blocking: call outside the runtime).
pub fn shutdown() {
    let provider = PROVIDER.lock().ok().and_then(|mut p| p.take());
    if let Some(p) = provider
        && let Err(e) = p.shutdown()
    {
        eprintln!("vendorhost: traces: shutdown: {e}");
    }
}

/// The W3C `traceparent` of `span`, when it is traced.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// The current span's `traceparent`, when it is traced.
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&tracing::Span::current())
}

/// Makes `span` a child of the remote span `traceparent` names (nothing
/// when it does not parse).
pub fn continue_from(span: &tracing::Span, traceparent: &str) {
    if traceparent.len() > 128 {
        return;
    }
    let carrier = HashMap::from([(TRACEPARENT.to_string(), traceparent.to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_without_an_endpoint_and_the_base_url_gains_the_signal_path() {
        let mut s = TelemetrySettings::default();
        // The standard variables are the process's; this test sets none.
        if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
            && std::env::var_os("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none()
        {
            assert_eq!(endpoint(&s), None);
        }
        s.otlp_endpoint = "http://collector:4318/".into();
        assert_eq!(endpoint(&s).as_deref(), Some("http://collector:4318/v1/traces"));
        s.otlp_endpoint = "https://otel.example/v1/traces".into();
        assert_eq!(endpoint(&s).as_deref(), Some("https://otel.example/v1/traces"));
    }

    #[test]
    fn an_untraced_span_has_no_traceparent_and_garbage_is_ignored() {
        assert_eq!(current_traceparent(), None);
        let span = tracing::info_span!("x");
        continue_from(&span, "not a traceparent");
        assert_eq!(traceparent_of(&span), None);
    }
}
