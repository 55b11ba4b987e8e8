//! The MongoDB store.
//!
//! Collections:
//! - `jobs`: `_id` = request_id; timestamps are i64 epoch ms (the Mongo
//!   stand-in stores a BSON date written by `$set` as a string); `data` and
//!   `result` are JSON text. `queued` records that the queue message exists.
//!   `redactions` (a complete job's, when cleaning removed anything): an
//!   array of `{path, kind}`.
//! - `webhook_ids`: `_id` = `<vendor>:<id>`, `expires_at` (ms).
//! - `idempotency`: `_id` = scoped key, `body_hash`, `request_id`, `expires_at` (ms).
//!
//! Every state change is one conditional update (`status` in the filter).
//! `purge` deletes by the i64 fields; a TTL index on the BSON date `ttl` lets
//! a real mongod expire records too.

use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{Bson, DateTime, Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{
    Acknowledgment, ClientOptions, CollectionOptions, IndexOptions, ReadPreference, ReturnDocument, SelectionCriteria,
    WriteConcern,
};
use mongodb::{Client, Collection, IndexModel};
use std::time::Duration;

use super::{Attempt, Inserted, Overdue, Result, Store, StoreError, WebhookClaim};
use crate::model::{Job, Millis, NewJob, Outcome, Redaction, Status, now_ms};

const IN_FLIGHT: [&str; 2] = ["pending", "processing"];
const FINISHED: [&str; 2] = ["complete", "failed"];
/// Rounds of the idempotency race (a key replaced or purged under us).
const KEY_ROUNDS: usize = 5;

pub struct MongoStore {
    jobs: Collection<Document>,
    webhooks: Collection<Document>,
    keys: Collection<Document>,
    db: mongodb::Database,
    /// How long a real mongod keeps a finished job before its TTL monitor
    /// deletes it; None leaves finished jobs to `purge`.
    job_ttl: Option<Duration>,
}

/// How the store's writes are acknowledged.
#[derive(Debug, Clone, PartialEq)]
pub struct Durability {
    /// `majority`, a number of nodes, or a tag set name.
    pub write_concern: String,
    /// Wait for the journal.
    pub journal: bool,
}

impl Default for Durability {
    /// Majority, journaled: an acknowledged job survives a primary's crash
    /// and a failover.
    fn default() -> Self {
        Durability { write_concern: "majority".into(), journal: true }
    }
}

impl MongoStore {
    /// Connects with the default durability and creates the indexes.
    pub async fn connect(uri: &str, db: &str) -> std::result::Result<MongoStore, StoreError> {
        let options = ClientOptions::parse(uri).await?;
        Self::connect_with(options, db, &Durability::default()).await
    }

    /// Connects with `options` (a parsed URI, plus whatever the caller adds,
    /// such as event handlers) and creates the indexes (idempotent). Every
    /// collection writes with `durability` and reads from the primary,
    /// whatever the URI says: a worker must never act on a secondary's stale
    /// copy of a job.
    pub async fn connect_with(
        options: ClientOptions,
        db: &str,
        durability: &Durability,
    ) -> std::result::Result<MongoStore, StoreError> {
        let client = Client::with_options(options)?;
        let db = client.database(db);
        let w = match durability.write_concern.as_str() {
            "majority" => Acknowledgment::Majority,
            n => match n.parse::<u32>() {
                Ok(n) => Acknowledgment::Nodes(n),
                Err(_) => Acknowledgment::Custom(n.to_string()),
            },
        };
        let collection = CollectionOptions::builder()
            .write_concern(WriteConcern::builder().w(w).journal(durability.journal).build())
            .selection_criteria(SelectionCriteria::ReadPreference(ReadPreference::Primary))
            .build();
        let store = MongoStore {
            jobs: db.collection_with_options("jobs", collection.clone()),
            webhooks: db.collection_with_options("webhook_ids", collection.clone()),
            keys: db.collection_with_options("idempotency", collection),
            db,
            job_ttl: None,
        };
        store.create_indexes().await?;
        Ok(store)
    }

    /// Where job reads go (always the primary; see `connect_with`).
    pub fn read_preference(&self) -> Option<&SelectionCriteria> {
        self.jobs.selection_criteria()
    }

    /// Lets the server's TTL monitor delete finished jobs `ttl` after they end
    /// (set it to the retention `purge` is called with).
    pub fn with_job_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.job_ttl = ttl;
        self
    }

    async fn create_indexes(&self) -> Result<()> {
        let plain = |keys: Document| IndexModel::builder().keys(keys).build();
        let ttl = || {
            IndexModel::builder()
                .keys(doc! { "ttl": 1 })
                .options(IndexOptions::builder().expire_after(Duration::ZERO).build())
                .build()
        };
        self.jobs
            .create_indexes([
                plain(doc! { "status": 1, "queued": 1, "created_at": 1 }),
                plain(doc! { "vendor": 1, "vendor_ref": 1 }),
                plain(doc! { "status": 1, "webhook_deadline": 1 }),
                plain(doc! { "status": 1, "updated_at": 1 }),
                plain(doc! { "status": 1, "due_at": 1 }),
                ttl(),
            ])
            .await?;
        self.webhooks.create_indexes([plain(doc! { "expires_at": 1 }), ttl()]).await?;
        self.keys.create_indexes([plain(doc! { "expires_at": 1 }), ttl()]).await?;
        Ok(())
    }

    /// Claims the idempotency key for `job`, storing the job's document in
    /// the key itself. Returns what the insert amounts to, and for an
    /// existing key the job document it carries (to finish a pair whose job
    /// write was lost).
    async fn claim_key(
        &self,
        job: &NewJob,
        key: &crate::model::Idempotency,
        job_doc: &Document,
    ) -> Result<(Inserted, Option<Document>)> {
        let fresh = doc! {
            "_id": &key.key,
            "body_hash": &key.body_hash,
            "request_id": &job.request_id,
            "expires_at": key.expires_at,
            "ttl": ttl_date(key.expires_at),
            "job": job_doc.clone(),
        };
        for _ in 0..KEY_ROUNDS {
            match self.keys.insert_one(fresh.clone()).await {
                Ok(_) => return Ok((Inserted::Created { enqueued: false }, None)),
                Err(e) if !is_duplicate(&e) => return Err(e.into()),
                Err(_) => {}
            }
            let Some(old) = self.keys.find_one(doc! { "_id": &key.key }).await? else {
                continue; // purged in between: try again
            };
            let old_expires = old.get_i64("expires_at").unwrap_or(i64::MIN);
            if old_expires < job.created_at {
                // Expired: take it over, unless someone else just did.
                let filter = doc! { "_id": &key.key, "expires_at": old_expires };
                if self.keys.replace_one(filter, fresh.clone()).await?.matched_count == 1 {
                    return Ok((Inserted::Created { enqueued: false }, None));
                }
                continue;
            }
            let owner = old.get_str("request_id").map_err(|e| StoreError::Corrupt(format!("idempotency key: {e}")))?;
            if old.get_str("body_hash").ok() != Some(key.body_hash.as_str()) {
                return Ok((Inserted::KeyConflict, None));
            }
            let carried = old.get_document("job").ok().cloned();
            return Ok((Inserted::Existing { request_id: owner.to_string() }, carried));
        }
        Err(StoreError::Corrupt(format!("idempotency key {} kept changing under us", key.key)))
    }

    /// Writes a job document; one already there (a racing finisher of the
    /// same pair) is fine.
    async fn write_job(&self, d: Document) -> Result<()> {
        match self.jobs.insert_one(d).await {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[async_trait]
impl Store for MongoStore {
    async fn insert(&self, job: &NewJob) -> Result<Inserted> {
        // With an idempotency key, the key first, carrying the whole job, and
        // then the job: a crash between the two leaves a key whose retry
        // writes the job it carries (same request id, one job), never a job
        // that a retried request cannot find.
        let mut d = doc! {
            "_id": &job.request_id,
            "vendor": &job.vendor,
            "status": Status::Pending.as_str(),
            "data": &job.data,
            "created_at": job.created_at,
            "updated_at": job.created_at,
            "attempts": 0_i64,
            "queued": false,
            "due_at": job.created_at,
        };
        if let Some(owner) = &job.owner {
            d.insert("owner", owner);
        }
        let Some(key) = &job.idempotency else {
            self.jobs.insert_one(d).await?;
            return Ok(Inserted::Created { enqueued: false });
        };
        let (outcome, carried) = self.claim_key(job, key, &d).await?;
        match &outcome {
            Inserted::Created { .. } => {
                crate::failpoint::hit("idempotency.after_key").await;
                self.write_job(d).await?;
            }
            Inserted::Existing { request_id } => {
                if let Some(carried) = carried
                    && self.jobs.find_one(doc! { "_id": request_id }).projection(doc! { "_id": 1 }).await?.is_none()
                {
                    tracing::warn!(request_id = %request_id, "finishing a submit whose job write was lost (the key was written)");
                    self.write_job(carried).await?;
                    return Ok(Inserted::Recovered { request_id: request_id.clone() });
                }
            }
            Inserted::KeyConflict | Inserted::Recovered { .. } => {}
        }
        Ok(outcome)
    }

    async fn mark_queued(&self, request_ids: &[String], now: Millis) -> Result<()> {
        if request_ids.is_empty() {
            return Ok(());
        }
        self.jobs.update_many(doc! { "_id": { "$in": request_ids } }, doc! { "$set": { "queued": true } }).await?;
        let waiting = doc! {
            "_id": { "$in": request_ids },
            "status": { "$in": IN_FLIGHT.to_vec() },
            "vendor_ref": { "$exists": false },
        };
        self.jobs.update_many(waiting, doc! { "$set": { "due_at": now } }).await?;
        Ok(())
    }

    async fn get(&self, request_id: &str) -> Result<Option<Job>> {
        self.jobs.find_one(doc! { "_id": request_id }).await?.map(job_of).transpose()
    }

    async fn start_attempt(&self, request_id: &str, now: Millis, lease_until: Millis) -> Result<Attempt> {
        let update = doc! {
            "$set": { "status": Status::Processing.as_str(), "updated_at": now, "due_at": lease_until },
            "$inc": { "attempts": 1_i64 },
        };
        // Two conditional updates rather than one `$or` (the stand-in's
        // support for it is thin): a pending job, or a processing one whose
        // last lease ran out.
        let pending =
            doc! { "_id": request_id, "status": Status::Pending.as_str(), "vendor_ref": { "$exists": false } };
        let lapsed = doc! {
            "_id": request_id,
            "status": Status::Processing.as_str(),
            "vendor_ref": { "$exists": false },
            "due_at": { "$lte": now },
        };
        for filter in [pending, lapsed] {
            let started =
                self.jobs.find_one_and_update(filter, update.clone()).return_document(ReturnDocument::After).await?;
            if let Some(d) = started {
                return Ok(Attempt::Started(Box::new(job_of(d)?)));
            }
        }
        let held = self
            .jobs
            .find_one(
                doc! { "_id": request_id, "status": Status::Processing.as_str(), "vendor_ref": { "$exists": false } },
            )
            .projection(doc! { "due_at": 1 })
            .await?;
        Ok(match held.and_then(|d| int(&d, "due_at")) {
            Some(until) => Attempt::Held { until },
            None => Attempt::Over,
        })
    }

    async fn hold(&self, request_id: &str, until: Millis) -> Result<()> {
        let filter =
            doc! { "_id": request_id, "status": Status::Processing.as_str(), "vendor_ref": { "$exists": false } };
        self.jobs.update_one(filter, doc! { "$set": { "due_at": until } }).await?;
        Ok(())
    }

    async fn record_error(&self, request_id: &str, error: &str, now: Millis, due: Millis) -> Result<()> {
        let filter = doc! { "_id": request_id, "status": { "$in": IN_FLIGHT.to_vec() } };
        self.jobs.update_one(filter, doc! { "$set": { "error": error, "updated_at": now, "due_at": due } }).await?;
        Ok(())
    }

    async fn set_vendor_ref(&self, request_id: &str, vendor_ref: &str, deadline: Millis, now: Millis) -> Result<bool> {
        let filter = doc! { "_id": request_id, "status": Status::Processing.as_str() };
        let update = doc! {
            "$set": { "vendor_ref": vendor_ref, "webhook_deadline": deadline, "updated_at": now },
            "$unset": { "due_at": "" },
        };
        Ok(self.jobs.update_one(filter, update).await?.matched_count == 1)
    }

    async fn find_by_vendor_ref(&self, vendor: &str, vendor_ref: &str) -> Result<Option<String>> {
        let found = self
            .jobs
            .find_one(doc! { "vendor": vendor, "vendor_ref": vendor_ref })
            .projection(doc! { "_id": 1 })
            .await?;
        Ok(found.and_then(|d| d.get_str("_id").ok().map(str::to_string)))
    }

    async fn finish(&self, request_id: &str, outcome: &Outcome, now: Millis) -> Result<bool> {
        let filter = doc! { "_id": request_id, "status": { "$in": IN_FLIGHT.to_vec() } };
        let mut set = doc! { "status": outcome.status().as_str(), "updated_at": now };
        let mut unset = Document::new();
        match outcome {
            Outcome::Complete { result, redactions } => {
                set.insert("result", result);
                unset.insert("error", "");
                if redactions.is_empty() {
                    unset.insert("redactions", "");
                } else {
                    let list: Vec<Bson> =
                        redactions.iter().map(|r| Bson::Document(doc! { "path": &r.path, "kind": &r.kind })).collect();
                    set.insert("redactions", list);
                }
            }
            Outcome::Failed { error } => {
                set.insert("error", error);
                unset.insert("result", "");
                unset.insert("redactions", "");
            }
        }
        // Stored as a string by the stand-in (so it never expires there);
        // a real mongod stores a date and its TTL monitor honours it.
        if let Some(ttl) = self.job_ttl {
            set.insert("ttl", ttl_date(now.saturating_add(ttl.as_millis() as i64)));
        }
        unset.insert("due_at", "");
        let update = doc! { "$set": set, "$unset": unset };
        Ok(self.jobs.update_one(filter, update).await?.matched_count == 1)
    }

    async fn reopen(&self, request_id: &str, now: Millis) -> Result<bool> {
        let filter = doc! { "_id": request_id, "status": Status::Failed.as_str() };
        // `queued: false`: the sweeper enqueues it if the replay's enqueue is
        // lost; `unqueued_pending` also waits on `updated_at`, so not at once.
        let update = doc! {
            "$set": { "status": Status::Pending.as_str(), "attempts": 0_i64, "updated_at": now, "due_at": now, "queued": false },
            "$unset": { "ttl": "", "vendor_ref": "", "webhook_deadline": "", "error": "", "result": "", "redactions": "" },
        };
        Ok(self.jobs.update_one(filter, update).await?.matched_count == 1)
    }

    async fn unqueued_pending(&self, before: Millis, limit: usize) -> Result<Vec<(String, String)>> {
        let filter = doc! {
            "status": Status::Pending.as_str(),
            "queued": false,
            "created_at": { "$lt": before },
            "updated_at": { "$lt": before },
        };
        let docs: Vec<Document> = self
            .jobs
            .find(filter)
            .sort(doc! { "created_at": 1 })
            .limit(limit_of(limit))
            .projection(doc! { "_id": 1, "vendor": 1 })
            .await?
            .try_collect()
            .await?;
        docs.into_iter().map(|d| Ok((text(&d, "_id")?, text(&d, "vendor")?))).collect()
    }

    async fn overdue(&self, before: Millis, after: Option<(Millis, String)>, limit: usize) -> Result<Vec<Overdue>> {
        let mut filter = doc! {
            "status": { "$in": IN_FLIGHT.to_vec() },
            "vendor_ref": { "$exists": false },
            "due_at": { "$lt": before },
        };
        if let Some((due, id)) = after {
            filter.insert("$or", vec![doc! { "due_at": { "$gt": due } }, doc! { "due_at": due, "_id": { "$gt": id } }]);
        }
        let docs: Vec<Document> = self
            .jobs
            .find(filter)
            .sort(doc! { "due_at": 1, "_id": 1 })
            .limit(limit_of(limit))
            .projection(doc! { "_id": 1, "vendor": 1, "due_at": 1 })
            .await?
            .try_collect()
            .await?;
        docs.into_iter()
            .map(|d| {
                let due_at = int(&d, "due_at").ok_or_else(|| StoreError::Corrupt("due_at is not a number".into()))?;
                Ok(Overdue { request_id: text(&d, "_id")?, vendor: text(&d, "vendor")?, due_at })
            })
            .collect()
    }

    async fn overdue_webhooks(&self, now: Millis, limit: usize) -> Result<Vec<String>> {
        let filter = doc! { "status": Status::Processing.as_str(), "webhook_deadline": { "$lt": now } };
        let docs: Vec<Document> = self
            .jobs
            .find(filter)
            .sort(doc! { "webhook_deadline": 1 })
            .limit(limit_of(limit))
            .projection(doc! { "_id": 1 })
            .await?
            .try_collect()
            .await?;
        docs.iter().map(|d| text(d, "_id")).collect()
    }

    async fn claim_webhook(&self, vendor: &str, webhook_id: &str, until: Millis) -> Result<WebhookClaim> {
        let id = format!("{vendor}:{webhook_id}");
        let fresh = doc! { "_id": &id, "expires_at": until, "done": false, "ttl": ttl_date(until) };
        match self.webhooks.insert_one(fresh.clone()).await {
            Ok(_) => return Ok(WebhookClaim::New),
            Err(e) if !is_duplicate(&e) => return Err(e.into()),
            Err(_) => {}
        }
        // Seen, but an expired record (a lapsed claim, an old id) not yet
        // purged does not count.
        let filter = doc! { "_id": &id, "expires_at": { "$lt": now_ms() } };
        if self.webhooks.replace_one(filter, fresh).await?.matched_count == 1 {
            return Ok(WebhookClaim::New);
        }
        let seen = self.webhooks.find_one(doc! { "_id": &id }).await?;
        Ok(match seen.map(|d| d.get_bool("done").unwrap_or(true)) {
            Some(false) => WebhookClaim::InProgress,
            Some(true) => WebhookClaim::Done,
            None => WebhookClaim::InProgress, // purged in between: let the vendor retry
        })
    }

    async fn complete_webhook(&self, vendor: &str, webhook_id: &str, expires_at: Millis) -> Result<()> {
        let id = format!("{vendor}:{webhook_id}");
        let done = doc! { "_id": &id, "expires_at": expires_at, "done": true, "ttl": ttl_date(expires_at) };
        self.webhooks.replace_one(doc! { "_id": &id }, done).upsert(true).await?;
        Ok(())
    }

    async fn forget_webhook(&self, vendor: &str, webhook_id: &str) -> Result<()> {
        self.webhooks.delete_one(doc! { "_id": format!("{vendor}:{webhook_id}") }).await?;
        Ok(())
    }

    async fn purge(&self, before: Millis, now: Millis) -> Result<u64> {
        let jobs = doc! { "status": { "$in": FINISHED.to_vec() }, "updated_at": { "$lt": before } };
        let deleted = self.jobs.delete_many(jobs).await?.deleted_count;
        let expired = doc! { "expires_at": { "$lt": now } };
        self.webhooks.delete_many(expired.clone()).await?;
        self.keys.delete_many(expired).await?;
        Ok(deleted)
    }

    async fn ping(&self) -> Result<()> {
        self.db.run_command(doc! { "ping": 1 }).await?;
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "mongo"
    }
}

/// Duplicate key (11000), however the driver wraps it.
fn is_duplicate(e: &mongodb::error::Error) -> bool {
    const DUPLICATE_KEY: i32 = 11000;
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        ErrorKind::Command(c) => c.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(m) => {
            m.write_errors.as_ref().is_some_and(|ws| ws.iter().any(|w| w.code == DUPLICATE_KEY))
        }
        _ => false,
    }
}

/// A TTL date, kept within years 1970..=9999 (servers and drivers written in
/// other languages reject dates outside it).
fn ttl_date(ms: Millis) -> DateTime {
    const YEAR_9999_END: Millis = 253_402_300_799_999;
    DateTime::from_millis(ms.clamp(0, YEAR_9999_END))
}

fn limit_of(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

fn text(d: &Document, field: &str) -> Result<String> {
    d.get_str(field).map(str::to_string).map_err(|e| StoreError::Corrupt(format!("job {field}: {e}")))
}

fn opt_text(d: &Document, field: &str) -> Option<String> {
    d.get_str(field).ok().map(str::to_string)
}

/// An integer field, whatever width the server kept it in.
fn int(d: &Document, field: &str) -> Option<i64> {
    match d.get(field)? {
        Bson::Int64(v) => Some(*v),
        Bson::Int32(v) => Some(i64::from(*v)),
        Bson::Double(v) => Some(*v as i64),
        _ => None,
    }
}

fn job_of(d: Document) -> Result<Job> {
    let request_id = text(&d, "_id")?;
    let status_text = text(&d, "status")?;
    let status = Status::parse(&status_text)
        .ok_or_else(|| StoreError::Corrupt(format!("job {request_id}: status {status_text:?}")))?;
    let need = |field: &str| int(&d, field).ok_or_else(|| StoreError::Corrupt(format!("job {request_id}: {field}")));
    Ok(Job {
        vendor: text(&d, "vendor")?,
        status,
        data: text(&d, "data")?,
        created_at: need("created_at")?,
        updated_at: need("updated_at")?,
        attempts: u32::try_from(need("attempts")?.max(0)).unwrap_or(u32::MAX),
        result: opt_text(&d, "result"),
        error: opt_text(&d, "error"),
        vendor_ref: opt_text(&d, "vendor_ref"),
        webhook_deadline: int(&d, "webhook_deadline"),
        owner: opt_text(&d, "owner"),
        redactions: redactions_of(&d, &request_id)?,
        request_id,
    })
}

fn redactions_of(d: &Document, request_id: &str) -> Result<Vec<Redaction>> {
    let corrupt = || StoreError::Corrupt(format!("job {request_id}: redactions"));
    match d.get("redactions") {
        None | Some(Bson::Null) => Ok(Vec::new()),
        Some(Bson::Array(list)) => list
            .iter()
            .map(|r| match r {
                Bson::Document(r) => Ok(Redaction {
                    path: r.get_str("path").map_err(|_| corrupt())?.to_string(),
                    kind: r.get_str("kind").map_err(|_| corrupt())?.to_string(),
                }),
                _ => Err(corrupt()),
            })
            .collect(),
        Some(_) => Err(corrupt()),
    }
}
