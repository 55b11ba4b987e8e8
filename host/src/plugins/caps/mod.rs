//! The host capabilities: everything a plugin may ask of the host (the WIT
//! `host` interface), and nothing else. `http` does outbound requests under
//! the vendor's grants; log lines, the clock, config values, a plugin's ask
//! to pause its vendor and its not-cacheable mark are small enough to live
//! here.

pub mod http;

use super::bindings::{host, types};
use super::state::State;

impl types::Host for State {}

impl host::Host for State {
    async fn http_send(&mut self, request: host::HttpRequest) -> Result<host::HttpResponse, host::HttpError> {
        let out = request.method.len()
            + request.url.len()
            + request.headers.iter().map(|h| h.name.len() + h.value.len() + 4).sum::<usize>()
            + request.body.len();
        let result = http::send(&self.http, &self.policy, &self.request_id, self.deadline, request).await;
        if let Ok(r) = &result {
            self.usage.http_calls += 1;
            self.usage.bytes_out += out as u64;
            let headers: usize = r.headers.iter().map(|h| h.name.len() + h.value.len() + 4).sum();
            self.usage.bytes_in += (headers + r.body.len()) as u64;
        }
        result
    }

    fn log(&mut self, level: host::Level, message: String) {
        let vendor = self.policy.vendor.as_str();
        let request_id = self.request_id.as_str();
        // One event, one line, whatever the plugin (or the vendor data it logs) holds.
        let message: String = message.chars().take(4096).collect();
        let message = crate::telemetry::one_line(&message);
        match level {
            host::Level::Trace => tracing::trace!(target: "plugin", vendor, request_id, "{message}"),
            host::Level::Debug => tracing::debug!(target: "plugin", vendor, request_id, "{message}"),
            host::Level::Info => tracing::info!(target: "plugin", vendor, request_id, "{message}"),
            host::Level::Warn => tracing::warn!(target: "plugin", vendor, request_id, "{message}"),
            host::Level::Error => tracing::error!(target: "plugin", vendor, request_id, "{message}"),
        }
    }

    fn now(&mut self) -> u64 {
        crate::model::now_ms().max(0) as u64
    }

    fn config_get(&mut self, key: String) -> Option<String> {
        // Only this vendor's table: the policy was built for this vendor alone.
        self.policy.config.get(&key).cloned()
    }

    fn pause_vendor(&mut self, ms: u64) {
        // Applied by the worker once the call returns, like a 429's pause.
        let pause = std::time::Duration::from_millis(ms).min(crate::rate_headers::MAX_PAUSE);
        tracing::info!(target: "plugin", vendor = %self.policy.vendor, request_id = %self.request_id, pause_ms = pause.as_millis() as u64, "plugin asks to pause the vendor");
        self.policy.observed.request_pause(pause);
    }

    fn not_cacheable(&mut self) {
        self.policy.observed.mark_not_cacheable();
    }
}
