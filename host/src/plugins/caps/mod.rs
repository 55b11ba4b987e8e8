//! The host capabilities: everything a plugin may ask of the host (the WIT
//! `host` interface), and nothing else. `http` does outbound requests under
//! the vendor's grants; log lines, the clock and config values are small
//! enough to live here.

pub mod http;

use super::bindings::{host, types};
use super::state::State;

impl types::Host for State {}

impl host::Host for State {
    async fn http_send(&mut self, request: host::HttpRequest) -> Result<host::HttpResponse, host::HttpError> {
        http::send(&self.http, &self.policy, &self.request_id, self.deadline, request).await
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
}
