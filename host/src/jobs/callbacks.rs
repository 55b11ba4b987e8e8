//! A vendor's callback (webhook): verify the signature, refuse replays, let
//! the plugin map the body, clean the result, and finish the job — only if
//! it is still running, only if it belongs to this vendor.

use std::sync::Arc;

use crate::jobs::finish::{FinishError, Via, cleaned_outcome, count_redactions, finish};
use crate::model::{Outcome, Status, millis, now_ms};
use crate::plugins::{CallError, Registry};
use crate::policy::Policies;
use crate::queue::{Queue, QueueError};
use crate::store::{Store, StoreError, WebhookClaim};
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
    #[error("this webhook id is being applied by another request; retry shortly")]
    InProgress,
    #[error(
        "the webhook names a vendor reference of {0:?} not recorded yet (the job may be just starting); retry shortly"
    )]
    NotYet(String),
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
    /// Told when a job ends (waiters, notifications).
    pub completions: Arc<crate::jobs::completions::Completions>,
}

/// A vendor that may call back: its plugin, its policy, its secrets.
type Trusted = (Arc<crate::plugins::loader::Plugin>, Arc<crate::policy::Resolved>, Vec<Secret>);

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// How long past the plugin's own deadline a webhook claim lasts (then a
/// claim whose handler died lapses).
const CLAIM_MARGIN: std::time::Duration = std::time::Duration::from_secs(5);

/// A webhook id claimed by this handler, released (forgotten) if the handler
/// is cancelled before it settles the claim (a request timeout, a client that
/// went away), so the vendor's retry is not turned away until the claim
/// lapses.
struct Claim {
    store: Arc<dyn Store>,
    vendor: String,
    id: String,
    held: bool,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        let (store, vendor, id) = (self.store.clone(), std::mem::take(&mut self.vendor), std::mem::take(&mut self.id));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = store.forget_webhook(&vendor, &id).await {
                    tracing::warn!(vendor, webhook_id = ?id, error = %e, "could not release a webhook id; it lapses by itself");
                }
            });
        }
    }
}

impl Callbacks {
    /// The checks that need no body: `vendor` is a loaded plugin with a
    /// webhook secret. The API runs this before it reads the body, so a
    /// stranger's callback to a made-up vendor costs no memory (and shows in
    /// metrics under `vendor="unknown"`, never under its own name).
    pub fn admit(&self, vendor: &str) -> Result<(), CallbackError> {
        let result = self.trusted(vendor, false).map(|_| ());
        if let Err(e) = &result {
            self.count(vendor, Err(e));
        }
        result
    }

    /// The plugin, its policy and its usable secrets (invalid ones are
    /// logged when `warn`).
    fn trusted(&self, vendor: &str, warn: bool) -> Result<Trusted, CallbackError> {
        let plugin = self.registry.get(vendor).ok_or_else(|| CallbackError::UnknownVendor(vendor.to_string()))?;
        let policy = self.policies.for_plugin(&plugin);
        let secrets: Vec<Secret> = policy
            .webhook_secrets
            .iter()
            .filter_map(|s| match Secret::parse(s) {
                Ok(k) => Some(k),
                Err(e) => {
                    if warn {
                        tracing::warn!(vendor, error = %e, "ignoring an invalid webhook secret");
                    }
                    None
                }
            })
            .collect();
        if secrets.is_empty() {
            return Err(CallbackError::NoSecret(vendor.to_string()));
        }
        Ok((plugin, policy, secrets))
    }

    /// Counts one webhook by result. The vendor label is the vendor's id only
    /// if it is a loaded plugin: labels never come from the URL alone.
    fn count(&self, vendor: &str, result: Result<&CallbackOutcome, &CallbackError>) {
        let label = match result {
            Ok(CallbackOutcome::Applied { .. }) => "applied",
            Ok(CallbackOutcome::AlreadyFinished { .. }) => "already_finished",
            Ok(CallbackOutcome::Duplicate) => "replay",
            Err(CallbackError::Signature(e)) => e.reason(),
            Err(CallbackError::NoSecret(_)) => "no_secret",
            Err(CallbackError::UnknownVendor(_)) => "unknown_vendor",
            Err(CallbackError::UnknownJob(_)) => "unknown_job",
            Err(CallbackError::InProgress) => "in_progress",
            Err(CallbackError::NotYet(_)) => "not_yet",
            Err(CallbackError::Plugin(_)) => "unparsable",
            Err(CallbackError::Store(_)) => "store_error",
            Err(CallbackError::Queue(_)) => "queue_error",
        };
        let accepted = matches!(result, Ok(CallbackOutcome::Applied { .. } | CallbackOutcome::AlreadyFinished { .. }));
        let name = if accepted { telemetry::WEBHOOKS_ACCEPTED } else { telemetry::WEBHOOKS_REJECTED };
        let vendor = if self.registry.get(vendor).is_some() { vendor.to_string() } else { "unknown".to_string() };
        metrics::counter!(name, "vendor" => vendor, "reason" => label).increment(1);
    }

    /// `headers` with lowercase names.
    pub async fn receive(
        &self,
        vendor: &str,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> Result<CallbackOutcome, CallbackError> {
        let result = self.receive_inner(vendor, headers, body).await;
        self.count(vendor, result.as_ref());
        result
    }

    async fn receive_inner(
        &self,
        vendor: &str,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> Result<CallbackOutcome, CallbackError> {
        let (plugin, policy, secrets) = self.trusted(vendor, true)?;
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
        // The id is claimed while the webhook is applied and marked done only
        // once the job's state is written: a crash in between leaves a claim
        // that lapses (the vendor's retry then applies it), never an id that
        // turns the retry away as a duplicate.
        let claim_until = now_ms().saturating_add(millis(policy.call.timeout + CLAIM_MARGIN));
        match self.store.claim_webhook(vendor, &id, claim_until).await? {
            WebhookClaim::New => {}
            WebhookClaim::InProgress => return Err(CallbackError::InProgress),
            WebhookClaim::Done => {
                tracing::warn!(vendor, webhook_id = ?id, "webhook replay refused");
                return Ok(CallbackOutcome::Duplicate);
            }
        }
        let mut claim = Claim { store: self.store.clone(), vendor: vendor.to_string(), id: id.clone(), held: true };
        crate::failpoint::hit("webhook.applying").await;
        let result = self.apply(vendor, &plugin, &policy, headers, body).await;
        if result.is_ok() {
            let expires = now_ms().saturating_add(millis(self.replay_window));
            self.store.complete_webhook(vendor, &id, expires).await?;
        } else if let Err(e) = self.store.forget_webhook(vendor, &id).await {
            // Not applied: the vendor's retry of this id must get through
            // (the claim lapses by itself if this fails).
            tracing::warn!(vendor, webhook_id = ?id, error = %e, "could not release a webhook id; it lapses by itself");
        }
        claim.held = false;
        result
    }

    async fn apply(
        &self,
        vendor: &str,
        plugin: &crate::plugins::loader::Plugin,
        policy: &crate::policy::Resolved,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> Result<CallbackOutcome, CallbackError> {
        let parsed = self
            .registry
            .runtime()
            .on_webhook(&plugin.pre, policy.call.clone(), headers, body)
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
                    // The vendor may call back before the worker has stored
                    // the reference its call returned: a retry will find it.
                    .ok_or_else(|| CallbackError::NotYet(vendor.to_string()))?,
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
        let (outcome, removed) = match parsed.outcome {
            Ok(text) => {
                let (outcome, removed) = cleaned_outcome(policy.cleaner.clean_text(&text));
                (outcome, Some(removed))
            }
            Err(reason) => (Outcome::Failed { error: format!("vendor reported failure: {reason}") }, None),
        };
        let status = outcome.status();
        // An async vendor's result is cached as a sync one's (`cache_ttl`).
        if let Some(cache) = &policy.cache
            && matches!(outcome, Outcome::Complete { .. })
        {
            let key = crate::jobs::result_cache::key_of(&job, cache);
            crate::jobs::result_cache::remember(&*self.store, &key, vendor, &outcome, cache.ttl, now_ms()).await;
        }
        if finish(&*self.store, &*self.queue, &self.completions, &request_id, vendor, outcome, None, Via::Webhook, None)
            .await?
        {
            if let Some(removed) = removed {
                // `vendor` is a loaded plugin's id (`trusted` found it).
                count_redactions(vendor, &removed);
            }
            Ok(CallbackOutcome::Applied { request_id, status })
        } else {
            let now = self.store.get(&request_id).await?.map(|j| j.status).unwrap_or(status);
            Ok(CallbackOutcome::AlreadyFinished { request_id, status: now })
        }
    }
}
