//! A vendor's callback (webhook): verify the signature, refuse replays, let
//! the plugin map the body, clean the result, and finish the job — only if
//! it is still running, only if it belongs to this vendor.

use std::sync::Arc;

use crate::jobs::finish::{FinishError, Via, finish};
use crate::model::{Outcome, Status, now_ms};
use crate::plugins::{CallError, Registry};
use crate::policy::Policies;
use crate::queue::{Queue, QueueError};
use crate::store::{Store, StoreError};
use crate::telemetry;
use crate::webhook::{self, Secret, WebhookError};

#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    #[error("unknown vendor {0:?}")]
    UnknownVendor(String),
    #[error("no webhook secret is configured for vendor {0:?}; set vendors.{0}.webhook_secrets")]
    NoSecret(String),
    #[error("webhook signature rejected: {0}")]
    Signature(#[from] WebhookError),
    #[error("the webhook names no job of vendor {0:?}")]
    UnknownJob(String),
    #[error("the plugin could not read the webhook: {0}")]
    Plugin(CallError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

impl From<FinishError> for CallbackError {
    fn from(e: FinishError) -> Self {
        match e {
            FinishError::Store(e) => CallbackError::Store(e),
            FinishError::Queue(e) => CallbackError::Queue(e),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum CallbackOutcome {
    /// The job is now finished with this status.
    Applied { request_id: String, status: Status },
    /// The job was already finished; nothing changed.
    AlreadyFinished { request_id: String, status: Status },
    /// This webhook id was seen before; nothing changed.
    Duplicate,
}

pub struct Callbacks {
    pub store: Arc<dyn Store>,
    pub queue: Arc<dyn Queue>,
    pub registry: Arc<Registry>,
    pub policies: Arc<Policies>,
    /// How long webhook ids are remembered.
    pub replay_window: std::time::Duration,
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

impl Callbacks {
    /// `headers` with lowercase names.
    pub async fn receive(
        &self,
        vendor: &str,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> Result<CallbackOutcome, CallbackError> {
        let result = self.receive_inner(vendor, headers, body).await;
        let label = match &result {
            Ok(CallbackOutcome::Applied { .. }) => "applied",
            Ok(CallbackOutcome::AlreadyFinished { .. }) => "already_finished",
            Ok(CallbackOutcome::Duplicate) => "replay",
            Err(CallbackError::Signature(e)) => e.reason(),
            Err(CallbackError::NoSecret(_)) => "no_secret",
            Err(CallbackError::UnknownVendor(_)) => "unknown_vendor",
            Err(CallbackError::UnknownJob(_)) => "unknown_job",
            Err(CallbackError::Plugin(_)) => "unparsable",
            Err(CallbackError::Store(_)) => "store_error",
            Err(CallbackError::Queue(_)) => "queue_error",
        };
        let accepted = matches!(result, Ok(CallbackOutcome::Applied { .. } | CallbackOutcome::AlreadyFinished { .. }));
        let name = if accepted { telemetry::WEBHOOKS_ACCEPTED } else { telemetry::WEBHOOKS_REJECTED };
        metrics::counter!(name, "vendor" => vendor.to_string(), "reason" => label).increment(1);
        result
    }

    async fn receive_inner(
        &self,
        vendor: &str,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> Result<CallbackOutcome, CallbackError> {
        let plugin = self.registry.get(vendor).ok_or_else(|| CallbackError::UnknownVendor(vendor.to_string()))?;
        let policy = self.policies.for_plugin(&plugin);
        let secrets: Vec<Secret> = policy
            .webhook_secrets
            .iter()
            .filter_map(|s| match Secret::parse(s) {
                Ok(k) => Some(k),
                Err(e) => {
                    tracing::warn!(vendor, error = %e, "ignoring an invalid webhook secret");
                    None
                }
            })
            .collect();
        if secrets.is_empty() {
            return Err(CallbackError::NoSecret(vendor.to_string()));
        }
        let id = header(&headers, "webhook-id");
        webhook::verify(
            &secrets,
            id,
            header(&headers, "webhook-timestamp"),
            header(&headers, "webhook-signature"),
            &body,
            now_ms() / 1000,
            policy.webhook_tolerance,
        )?;
        let id = id.unwrap_or_default().to_string();
        let expires = now_ms() + self.replay_window.as_millis() as i64;
        if !self.store.remember_webhook(vendor, &id, expires).await? {
            tracing::warn!(vendor, webhook_id = %id, "webhook replay refused");
            return Ok(CallbackOutcome::Duplicate);
        }
        let result = self.apply(vendor, &plugin, policy.call.clone(), headers, body).await;
        if result.is_err() {
            // Not applied: let the vendor's retry of this id through.
            if let Err(e) = self.store.forget_webhook(vendor, &id).await {
                tracing::warn!(vendor, webhook_id = %id, error = %e, "could not forget a failed webhook id");
            }
        }
        result
    }

    async fn apply(
        &self,
        vendor: &str,
        plugin: &crate::plugins::loader::Plugin,
        call: Arc<crate::plugins::CallPolicy>,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> Result<CallbackOutcome, CallbackError> {
        let parsed = self
            .registry
            .runtime()
            .on_webhook(&plugin.pre, call, headers, body)
            .await
            .map_err(CallbackError::Plugin)?;
        let request_id = if !parsed.request_id.is_empty() {
            parsed.request_id.clone()
        } else {
            match &parsed.vendor_ref {
                Some(r) => self
                    .store
                    .find_by_vendor_ref(vendor, r)
                    .await?
                    .ok_or_else(|| CallbackError::UnknownJob(vendor.to_string()))?,
                None => return Err(CallbackError::UnknownJob(vendor.to_string())),
            }
        };
        let job = self
            .store
            .get(&request_id)
            .await?
            .filter(|j| j.vendor == vendor)
            .ok_or_else(|| CallbackError::UnknownJob(vendor.to_string()))?;
        if job.status.is_terminal() {
            return Ok(CallbackOutcome::AlreadyFinished { request_id, status: job.status });
        }
        let outcome = match parsed.outcome {
            Ok(text) => Outcome::Complete { result: self.policies.cleaner().clean_text(&text) },
            Err(reason) => Outcome::Failed { error: format!("vendor reported failure: {reason}") },
        };
        let status = outcome.status();
        if finish(&*self.store, &*self.queue, &request_id, vendor, outcome, None, Via::Webhook).await? {
            Ok(CallbackOutcome::Applied { request_id, status })
        } else {
            let now = self.store.get(&request_id).await?.map(|j| j.status).unwrap_or(status);
            Ok(CallbackOutcome::AlreadyFinished { request_id, status: now })
        }
    }
}
