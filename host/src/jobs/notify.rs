//! Completion notifications: a job submitted with a `notify_url` is POSTed
//! there once it is finished, as `GET /jobs/{id}` shows it, signed per
//! Standard Webhooks with the submitting key's secret.
//!
//! The store is the source of truth: a job with a `notify_url` carries its
//! delivery state and the time its next attempt is due (set at insert, so a
//! job is due the moment its status is terminal, whoever ended it, and no
//! restart loses one). [`Notifier::run`] takes due ones (a conditional
//! update, so several API processes never send one attempt twice), sends
//! them off the workers' path, and records each attempt; failures are
//! retried with exponential backoff (with jitter) until `notify.max_age`
//! after the job ended. Outbound requests follow the plugins' rules
//! (`plugins::net`): names resolved once and the addresses checked, no
//! proxy, no redirects, and no non-public address unless the key allows it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, watch};

use super::completions::Completions;
use crate::config::{AuthSettings, NotifySettings};
use crate::model::{Job, Millis, NotifyAttempt, now_ms};
use crate::plugins::net::{AddressRule, Outbound, refusal};
use crate::store::Store;
use crate::telemetry;
use crate::webhook::{self, Secret};

/// The longest `notify_url`.
pub const MAX_URL_LEN: usize = 2048;
/// Deliveries in flight at once per process.
const MAX_IN_FLIGHT: usize = 64;
/// Due notifications taken per store read.
const BATCH: usize = 256;
/// How often the store is read for due notifications when nothing wakes
/// the loop (retries come due; jobs end in other processes).
const POLL: Duration = Duration::from_secs(1);
/// Reads for due notifications start at least this far apart, however often
/// jobs end: every end wakes the loop, and one read finds all that came due
/// since. A notification leaves within about this long of its job's end; a
/// read per end cost ~5 % of the embedded service's CPU and, in production,
/// a MongoDB find per ~10 jobs, with no notification due.
const MIN_GAP: Duration = Duration::from_millis(200);
/// A taken attempt not recorded by then (its process died) is due again.
const CLAIM_SLACK: Duration = Duration::from_secs(30);

/// The outcome labels of `vendorhost_notifications_total`.
pub const OUTCOMES: [&str; 4] = ["delivered", "retry", "gave_up", "refused"];

/// The body of a notification: the job's public JSON (the API renders it).
pub type Render = Arc<dyn Fn(&Job) -> Vec<u8> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct NotifyConfigError {
    pub key: String,
    pub message: String,
}

/// Who signs one caller's notifications, and where they may go.
struct Signer {
    secret: Option<Secret>,
    allow_private: bool,
}

/// Per caller (API key name, or none with keys off): the signing secret and
/// whether non-public addresses may be notified.
pub struct NotifyPolicy {
    keys: HashMap<String, Signer>,
    anonymous: Signer,
}

impl NotifyPolicy {
    /// From `[auth.keys.<name>]` and `[notify]`; a secret that is not a
    /// `whsec_<base64>` secret is refused, naming its key.
    pub fn from_config(auth: &AuthSettings, notify: &NotifySettings) -> Result<NotifyPolicy, NotifyConfigError> {
        let parse = |key: String, text: &Option<String>| match text {
            None => Ok(None),
            Some(t) => Secret::parse(t).map(Some).map_err(|e| NotifyConfigError { key, message: e.to_string() }),
        };
        let mut keys = HashMap::new();
        for (name, k) in &auth.keys {
            let secret = parse(format!("auth.keys.{name}.notify_secret"), &k.notify_secret)?;
            keys.insert(name.clone(), Signer { secret, allow_private: k.notify_allow_private.unwrap_or(false) });
        }
        let anonymous =
            Signer { secret: parse("notify.secret".into(), &notify.secret)?, allow_private: notify.allow_private };
        Ok(NotifyPolicy { keys, anonymous })
    }

    fn signer(&self, owner: Option<&str>) -> Option<&Signer> {
        match owner {
            None => Some(&self.anonymous),
            Some(name) => self.keys.get(name),
        }
    }

    /// Whether `owner` may have `url` notified: an absolute http(s) URL of
    /// at most [`MAX_URL_LEN`] characters without credentials, a signing
    /// secret for the caller, and no non-public IP literal unless allowed
    /// (names are checked when they are resolved, at each attempt). The
    /// error says why, for the client.
    pub fn check(&self, owner: Option<&str>, url: &str) -> Result<(), String> {
        let parsed = parse_url(url)?;
        let signer = self.signer(owner).filter(|s| s.secret.is_some()).ok_or_else(|| match owner {
            None => "completion notifications are off: no signing secret is configured (`notify.secret`)".to_string(),
            Some(name) => format!(
                "completion notifications are off for API key {name:?}: no signing secret is configured \
                 (`auth.keys.{name}.notify_secret`)"
            ),
        })?;
        if let Some(ip) = literal_ip(&parsed)
            && let Some(why) = AddressRule::all_or_none(signer.allow_private).refusal(ip)
        {
            return Err(format!("{ip} is {why}; notifications may not go to non-public addresses"));
        }
        Ok(())
    }
}

fn parse_url(url: &str) -> Result<reqwest::Url, String> {
    if url.chars().count() > MAX_URL_LEN {
        return Err(format!("must be at most {MAX_URL_LEN} characters"));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("must be an absolute http or https URL ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none_or(str::is_empty) {
        return Err("must be an absolute http or https URL".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not carry credentials (user:password@)".into());
    }
    Ok(parsed)
}

fn literal_ip(url: &reqwest::Url) -> Option<IpAddr> {
    url.host_str()?.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

/// How one attempt went.
enum Sent {
    /// 2xx.
    Delivered(u16),
    /// Another status, or no answer: retried.
    Failed { status: Option<u16>, error: String },
    /// Never to be sent (a refused address, no secret): not retried.
    Refused(String),
}

/// The delivery loop.
pub struct Notifier {
    pub store: Arc<dyn Store>,
    pub policy: Arc<NotifyPolicy>,
    pub settings: NotifySettings,
    pub outbound: Outbound,
    pub completions: Arc<Completions>,
    pub render: Render,
}

impl Notifier {
    /// Delivers due notifications until `stop`; woken early whenever a job
    /// ends in (or is announced to) this process.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        for outcome in OUTCOMES {
            metrics::counter!(telemetry::NOTIFICATIONS, "outcome" => outcome).absolute(0);
        }
        loop {
            if *stop.borrow() {
                break;
            }
            let read_at = tokio::time::Instant::now();
            let full = match self.store.due_notifications(now_ms(), BATCH).await {
                Ok(due) => {
                    let n = due.len();
                    for job in due {
                        let Some(due_at) = job.notify.as_ref().and_then(|n| n.next_at) else { continue };
                        let permit = tokio::select! {
                            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                            _ = stop.wait_for(|s| *s) => break,
                        };
                        let until = now_ms().saturating_add(ms(self.settings.timeout + CLAIM_SLACK));
                        match self.store.claim_notification(&job.request_id, due_at, until).await {
                            Ok(true) => {
                                let me = self.clone();
                                tokio::spawn(async move {
                                    me.deliver(job).await;
                                    drop(permit);
                                });
                            }
                            Ok(false) => {} // another process took it
                            Err(e) => tracing::warn!(request_id = %job.request_id, error = %e,
                                "could not take a due notification"),
                        }
                    }
                    n == BATCH
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not read due notifications");
                    false
                }
            };
            if full {
                continue;
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                _ = self.completions.any.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                _ = tokio::time::sleep_until(read_at + MIN_GAP) => {}
            }
        }
        // In-flight deliveries finish (each is bounded by `notify.timeout`).
        let _ = tokio::time::timeout(self.settings.timeout, slots.acquire_many(MAX_IN_FLIGHT as u32)).await;
    }

    /// One attempt at `job`'s notification, recorded on the job.
    async fn deliver(&self, job: Job) {
        let Some(notify) = job.notify.clone() else { return };
        let sent = match self.policy.signer(job.owner.as_deref()).and_then(|s| s.secret.as_ref().map(|k| (k, s))) {
            None => Sent::Refused("no signing secret is configured for the job's API key".into()),
            Some((secret, signer)) => self.send(&job, &notify.url, secret, signer.allow_private).await,
        };
        let now = now_ms();
        let attempt_no = notify.attempts.saturating_add(1);
        let (attempt, outcome) = match sent {
            Sent::Delivered(status) => (
                NotifyAttempt { status: Some(status), error: None, delivered_at: Some(now), next_at: None },
                "delivered",
            ),
            Sent::Refused(error) => {
                (NotifyAttempt { status: None, error: Some(error), delivered_at: None, next_at: None }, "refused")
            }
            Sent::Failed { status, error } => {
                let next = now.saturating_add(ms(backoff(&self.settings, attempt_no)));
                let give_up_at = job.updated_at.saturating_add(ms(self.settings.max_age));
                let next_at = (next <= give_up_at).then_some(next);
                let outcome = if next_at.is_some() { "retry" } else { "gave_up" };
                (NotifyAttempt { status, error: Some(error), delivered_at: None, next_at }, outcome)
            }
        };
        metrics::counter!(telemetry::NOTIFICATIONS, "outcome" => outcome).increment(1);
        match outcome {
            "delivered" => {
                tracing::debug!(request_id = %job.request_id, attempt = attempt_no, "notification delivered")
            }
            _ => tracing::warn!(request_id = %job.request_id, attempt = attempt_no, outcome,
                status = attempt.status, error = attempt.error.as_deref().map(telemetry::one_line).as_deref(),
                "notification not delivered"),
        }
        if let Err(e) = self.store.record_notification(&job.request_id, &attempt).await {
            // The claim lapses and the attempt is made again.
            tracing::warn!(request_id = %job.request_id, error = %e, "could not record a notification attempt");
        }
    }

    async fn send(&self, job: &Job, url: &str, secret: &Secret, allow_private: bool) -> Sent {
        let parsed = match parse_url(url) {
            Ok(u) => u,
            Err(e) => return Sent::Refused(format!("notify_url {e}")),
        };
        let rule = AddressRule::all_or_none(allow_private);
        if let Some(ip) = literal_ip(&parsed)
            && let Some(why) = rule.refusal(ip)
        {
            return Sent::Refused(format!("{ip} is {why}"));
        }
        let client = match self.outbound.client(&rule) {
            Ok(c) => c,
            Err(e) => return Sent::Failed { status: None, error: format!("no HTTP client: {e}") },
        };
        let body = (self.render)(job);
        let msg_id = format!("msg_{}", job.request_id);
        let mut req = client
            .post(parsed)
            .timeout(self.settings.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::USER_AGENT, concat!("vendorhost/", env!("CARGO_PKG_VERSION")));
        for (name, value) in webhook::headers(secret, &msg_id, now_ms() / 1000, &body) {
            req = req.header(name, value);
        }
        match req.body(body).send().await {
            Ok(resp) if resp.status().is_success() => Sent::Delivered(resp.status().as_u16()),
            Ok(resp) => {
                Sent::Failed { status: Some(resp.status().as_u16()), error: format!("answered {}", resp.status()) }
            }
            Err(e) => match refusal(&e) {
                Some(r) => Sent::Refused(r.to_string()),
                None => Sent::Failed { status: None, error: error_chain(&e) },
            },
        }
    }
}

/// The delay before attempt `attempt + 1`: `backoff_base` doubled per
/// attempt, at most `backoff_max`, with jitter (between half and all of it).
fn backoff(s: &NotifySettings, attempt: u32) -> Duration {
    let exp = s.backoff_base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let full = exp.min(s.backoff_max).max(Duration::from_millis(1));
    let half = full / 2;
    half + Duration::from_millis(rand::random_range(0..=(full - half).as_millis() as u64))
}

fn ms(d: Duration) -> Millis {
    Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX)
}

/// An error with its causes, on one line.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KeySettings;

    fn policy() -> NotifyPolicy {
        let mut auth = AuthSettings::default();
        auth.api_keys.insert("k1".into(), "alice".into());
        auth.api_keys.insert("k2".into(), "bob".into());
        auth.keys.insert(
            "alice".into(),
            KeySettings {
                notify_secret: Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
                notify_allow_private: Some(true),
                ..Default::default()
            },
        );
        auth.keys.insert(
            "carol".into(),
            KeySettings { notify_secret: Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()), ..Default::default() },
        );
        NotifyPolicy::from_config(&auth, &NotifySettings::default()).unwrap()
    }

    #[test]
    fn urls_are_checked_and_callers_need_a_secret() {
        let p = policy();
        assert_eq!(p.check(Some("alice"), "http://127.0.0.1:9/hook"), Ok(()));
        assert_eq!(p.check(Some("alice"), "https://example.com/x?y=1"), Ok(()));
        let refused = p.check(Some("carol"), "http://10.1.2.3/x").unwrap_err();
        assert!(refused.contains("10.1.2.3") && refused.contains("non-public"), "{refused}");
        assert!(p.check(Some("carol"), "http://[::1]:8080/").is_err());
        assert_eq!(p.check(Some("carol"), "https://example.com/"), Ok(()));
        assert!(p.check(Some("bob"), "https://example.com/").unwrap_err().contains("auth.keys.bob.notify_secret"));
        assert!(p.check(None, "https://example.com/").unwrap_err().contains("notify.secret"));
        for bad in [
            "example.com/x",
            "/relative",
            "ftp://example.com/",
            "http://",
            "https://user:pw@example.com/",
            "mailto:a@example.com",
        ] {
            assert!(p.check(Some("alice"), bad).is_err(), "{bad}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert!(p.check(Some("alice"), &long).unwrap_err().contains("2048"));
    }

    #[test]
    fn a_malformed_secret_is_refused_by_its_key() {
        let mut auth = AuthSettings::default();
        auth.keys
            .insert("a".into(), KeySettings { notify_secret: Some("whsec_not base64!".into()), ..Default::default() });
        let e = NotifyPolicy::from_config(&auth, &NotifySettings::default()).err().unwrap();
        assert_eq!(e.key, "auth.keys.a.notify_secret");
    }

    #[test]
    fn backoff_doubles_within_its_cap() {
        let s = NotifySettings {
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(10),
            ..Default::default()
        };
        for (attempt, full) in [(1, 1), (2, 2), (3, 4), (4, 8), (5, 10), (40, 10)] {
            let d = backoff(&s, attempt);
            let full = Duration::from_secs(full);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
    }
}
