//! The vendor result cache and call coalescing (issue 21), for vendors with
//! `cache_ttl` set.
//!
//! A job's cache key is a hash of its vendor, the canonical JSON of its
//! `data` (object keys sorted at every depth, no whitespace) and its scope
//! (the API key's name, or everyone's with `cache_scope = "global"`).
//!
//! - Cache: a job that ends `complete` stores its cleaned result under its
//!   key until `cache_ttl` (unless the plugin called `not-cacheable`); a
//!   submit whose key has a fresh entry is written `complete` from it at
//!   once (`cached: true`), with no queue entry and no call.
//! - Coalescing: before its call, a job claims its key in the store (one
//!   claim per key, held until the call's deadline). A job that finds the
//!   claim held records itself as a waiter and goes back on the queue, due
//!   when the claim would lapse, holding no worker. The leader's `complete`
//!   ends every waiter with its result (`cached: true`) through `finish`;
//!   a leader that ends any other way drops its claim and re-queues its
//!   waiters at once, each to make its own call (`Message::solo`). A leader
//!   that dies leaves a claim that lapses: its waiters come back then and
//!   one of them leads. A waiter that comes back to find a result stored
//!   after it was submitted completes from it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::completions::Completions;
use super::finish::{Via, finish};
use crate::model::{Job, Millis, Outcome, millis};
use crate::policy::CachePolicy;
use crate::queue::{Message, Queue};
use crate::store::{CacheEntry, Flight, Store, StoreError};
use crate::telemetry;

/// How jobs a leader serves are finished at once (store writes in flight).
const SERVE_CONCURRENCY: usize = 16;

/// `data` (JSON text) in canonical form: object keys sorted at every depth,
/// no insignificant whitespace. None when it is not JSON.
pub fn canonical_json(data: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(data).ok()?;
    let mut out = String::with_capacity(data.len());
    write_canonical(&value, &mut out);
    Some(out)
}

fn write_canonical(v: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            // Sorted here whatever order the map keeps (`preserve_order`).
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// The cache key of a job of `vendor` with `data` submitted by `owner` (an
/// API key's name; None with keys off): hex SHA-256 of the vendor, the
/// scope and the canonical data, each length-prefixed.
pub fn cache_key(vendor: &str, data: &str, owner: Option<&str>, policy: &CachePolicy) -> String {
    let canonical = canonical_json(data).unwrap_or_else(|| data.to_string());
    let scope = if policy.global { "*".to_string() } else { format!("key:{}", owner.unwrap_or("-")) };
    let mut h = Sha256::new();
    for part in [vendor, scope.as_str(), canonical.as_str()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The cache key of `job`.
pub fn key_of(job: &Job, policy: &CachePolicy) -> String {
    cache_key(&job.vendor, &job.data, job.owner.as_deref(), policy)
}

/// Counts a call saved for `vendor`; `how` is one of
/// [`telemetry::SAVED_HOW`].
pub fn saved(vendor: &str, how: &'static str, n: u64) {
    metrics::counter!(telemetry::VENDOR_CALLS_SAVED, "vendor" => vendor.to_string(), "how" => how).increment(n);
}

/// The fresh entry under `key`, if any. A store that cannot answer is a
/// miss (the job makes its call).
pub async fn lookup(store: &dyn Store, key: &str, now: Millis) -> Option<CacheEntry> {
    match store.cache_get(key, now).await {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "result cache unavailable; the job makes its call");
            None
        }
    }
}

/// Stores a complete job's cleaned result under `key` for `ttl` (best
/// effort: a failed write only costs later calls).
pub async fn remember(store: &dyn Store, key: &str, vendor: &str, outcome: &Outcome, ttl: Duration, now: Millis) {
    let (Outcome::Complete { result, redactions } | Outcome::Cached { result, redactions }) = outcome else {
        return;
    };
    let entry = CacheEntry {
        key: key.to_string(),
        vendor: vendor.to_string(),
        result: result.clone(),
        redactions: redactions.clone(),
        stored_at: now,
        expires_at: now.saturating_add(millis(ttl)),
    };
    if let Err(e) = store.cache_put(&entry).await {
        tracing::warn!(vendor, error = %e, "could not store the result in the result cache");
    }
}

/// The outcome a cache entry gives a job.
pub fn outcome_of(entry: &CacheEntry) -> Outcome {
    Outcome::Cached { result: entry.result.clone(), redactions: entry.redactions.clone() }
}

/// Where a job stands against the call in flight for its key.
pub enum Joined {
    /// It makes the call, holding the claim.
    Lead(Lead),
    /// A result stored after it was submitted answers it.
    Answered(CacheEntry),
    /// Another job's call is in flight: back on the queue for `wait` (about
    /// when that claim lapses), recorded as its waiter.
    Wait { wait: Duration },
}

/// A leader's claim on its key: how its call ended decides what its
/// waiters get ([`Lead::served`] or [`Lead::abandon`]).
pub struct Lead {
    pub key: String,
    pub request_id: String,
    /// Its waiters were served (or the claim is kept for a later delivery).
    settled: AtomicBool,
}

impl Lead {
    /// The claim outlives this delivery: the job waits for its turn (rate
    /// limit, bulkhead, breaker) and comes back to make the call.
    pub fn keep(&self) {
        self.settled.store(true, Ordering::Relaxed);
    }

    pub fn is_settled(&self) -> bool {
        self.settled.load(Ordering::Relaxed)
    }

    /// The call completed: every waiter ends with its result (`cached`),
    /// then the claim goes.
    pub async fn served(&self, store: &dyn Store, queue: &dyn Queue, completions: &Completions, outcome: &Outcome) {
        self.settled.store(true, Ordering::Relaxed);
        let (Outcome::Complete { result, redactions } | Outcome::Cached { result, redactions }) = outcome else {
            return;
        };
        let shared = Outcome::Cached { result: result.clone(), redactions: redactions.clone() };
        let waiters = match store.take_waiters(&self.key).await {
            Ok(w) => w,
            Err(e) => {
                // They come back when the claim lapses and find the result.
                tracing::warn!(error = %e, "could not read the jobs waiting for this call");
                Vec::new()
            }
        };
        let ended = futures::stream::iter(waiters.into_iter().filter(|(id, _)| *id != self.request_id))
            .map(|(id, vendor)| {
                let shared = shared.clone();
                async move {
                    match finish(store, queue, completions, &id, &vendor, shared, None, Via::Cache, None).await {
                        Ok(true) => {
                            saved(&vendor, "coalesced", 1);
                            1usize
                        }
                        Ok(false) => 0,
                        Err(e) => {
                            tracing::warn!(request_id = %id, error = %e, "could not complete a waiting job; it comes back for the result");
                            0
                        }
                    }
                }
            })
            .buffer_unordered(SERVE_CONCURRENCY)
            .fold(0usize, |n, e| async move { n + e })
            .await;
        if ended > 0 {
            tracing::info!(served = ended, "identical jobs completed with this call's result");
        }
        if let Err(e) = store.end_flight(&self.key, &self.request_id).await {
            tracing::warn!(error = %e, "could not drop the claim on the call; it lapses");
        }
    }

    /// The call did not produce a shareable result (an error, a retry, an
    /// async acceptance, a `not-cacheable` result): the claim goes and every
    /// waiter is queued at once to make its own call.
    pub async fn abandon(&self, store: &dyn Store, queue: &dyn Queue) {
        self.settled.store(true, Ordering::Relaxed);
        if let Err(e) = store.end_flight(&self.key, &self.request_id).await {
            tracing::warn!(error = %e, "could not drop the claim on the call; it lapses");
        }
        let waiters = match store.take_waiters(&self.key).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the jobs waiting for this call; they come back when it lapses");
                return;
            }
        };
        // Each goes back in its own key's fair share, at its own priority
        // (a failure path: one read per waiter is affordable here).
        let msgs: Vec<Message> = futures::stream::iter(waiters.into_iter().filter(|(id, _)| *id != self.request_id))
            .map(|(id, vendor)| async move {
                let job = store.get(&id).await.ok().flatten();
                let (owner, priority) = job.map(|j| (j.owner, j.priority)).unwrap_or_default();
                Message::new(id, vendor).owned(owner.as_deref(), priority).solo()
            })
            .buffered(16)
            .collect()
            .await;
        if msgs.is_empty() {
            return;
        }
        match queue.enqueue(&msgs).await {
            Ok(()) => tracing::info!(waiters = msgs.len(), "the call failed; its waiters each retry on their own"),
            Err(e) => {
                tracing::warn!(error = %e, "could not re-queue the waiting jobs; they come back when the claim lapses")
            }
        }
    }
}

/// Joins `job` (not finished, of a vendor with `policy`) to the call in
/// flight for its key: claim it (`Lead`), or wait for it. `hold`: how long
/// a claim lasts (the lease plus the call's deadline).
pub async fn join(
    store: &dyn Store,
    job: &Job,
    policy: &CachePolicy,
    hold: Duration,
    now: Millis,
) -> Result<Joined, StoreError> {
    let key = key_of(job, policy);
    // A result stored since the job was submitted (its waiter's record was
    // missed, or it came back after the leader ended) answers it; an older
    // one was the submit's to use.
    let fresh = |e: &CacheEntry| e.stored_at >= job.created_at;
    if let Some(e) = lookup(store, &key, now).await.filter(fresh) {
        return Ok(Joined::Answered(e));
    }
    let until = now.saturating_add(millis(hold));
    // Twice at most: a claim dropped between our claim and our waiter's
    // record is taken over at once.
    for round in 0..2 {
        match store.claim_flight(&key, &job.request_id, until, now).await? {
            Flight::Leader => {
                return Ok(Joined::Lead(Lead {
                    key,
                    request_id: job.request_id.clone(),
                    settled: AtomicBool::new(false),
                }));
            }
            Flight::Follower { until: leader_until, .. } => {
                if round == 0 {
                    store
                        .add_waiter(&key, &job.request_id, &job.vendor, leader_until.saturating_add(millis(hold)))
                        .await?;
                    // The leader may have ended between the claim and the
                    // record: its result is stored before it reads waiters.
                    if let Some(e) = lookup(store, &key, now).await.filter(fresh) {
                        return Ok(Joined::Answered(e));
                    }
                    continue;
                }
                let wait = Duration::from_millis((leader_until - now).max(0) as u64 + 1);
                return Ok(Joined::Wait { wait });
            }
        }
    }
    Ok(Joined::Wait { wait: hold })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_ignores_key_order_and_whitespace() {
        let a = canonical_json(r#"{"b": [1, {"z": true, "a": null}], "a": "x y"}"#).unwrap();
        let b = canonical_json("{\"a\":\"x y\",\n \"b\":[1,{\"a\":null,\"z\":true}]}").unwrap();
        assert_eq!(a, b);
        assert_eq!(a, r#"{"a":"x y","b":[1,{"a":null,"z":true}]}"#);
        assert_ne!(canonical_json("[1,2]"), canonical_json("[2,1]"), "array order matters");
    }

    #[test]
    fn keys_differ_by_vendor_scope_and_data() {
        let key = CachePolicy { ttl: Duration::from_secs(60), global: false };
        let global = CachePolicy { global: true, ..key };
        let k = |v: &str, d: &str, o: Option<&str>, p: &CachePolicy| cache_key(v, d, o, p);
        assert_eq!(k("a", r#"{"x":1,"y":2}"#, Some("k1"), &key), k("a", r#"{ "y":2, "x":1 }"#, Some("k1"), &key));
        assert_ne!(k("a", "1", Some("k1"), &key), k("a", "1", Some("k2"), &key), "per key");
        assert_eq!(k("a", "1", Some("k1"), &global), k("a", "1", Some("k2"), &global), "global");
        assert_ne!(k("a", "1", None, &key), k("b", "1", None, &key), "per vendor");
        assert_ne!(k("a", "1", None, &key), k("a", "2", None, &key), "per data");
        assert_ne!(k("a", "1", None, &key), k("a", "1", None, &global), "scope is part of the key");
    }
}
