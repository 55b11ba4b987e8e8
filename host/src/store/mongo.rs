//! The MongoDB store.
//!
//! Collections:
//! - `jobs`: `_id` = request_id; timestamps are i64 epoch ms (the Mongo
//!   stand-in stores a BSON date written by `$set` as a string); `data` and
//!   `result` are JSON text. `queued` records that the sweeper found
//!   (or put) the queue message there.
//!   `redactions` (a complete job's, when cleaning removed anything): an
//!   array of `{path, kind}`.
//! - `webhook_ids`: `_id` = `<vendor>:<id>`, `expires_at` (ms).
//! - `idempotency`: `_id` = scoped key, `body_hash`, `request_id`, `expires_at` (ms).
//! - `vendor_refs`: `_id` = `<vendor>:<vendor_ref>`, `request_id`, `deadline`
//!   (the job's webhook deadline, ms): an index of the jobs' own `vendor_ref`
//!   so a webhook finds its job with one read by `_id`.
//! - `result_cache`: `_id` = cache key, `vendor`, `result` and `redactions`
//!   (JSON text), `stored_at`, `expires_at` (ms; reads check it, the stand-in
//!   ignoring TTL indexes) and `ttl` (a BSON date for a real mongod's TTL).
//! - `cache_flights`: `_id` = cache key, `leader` (request_id), `until` (ms):
//!   the one call in flight per key. `cache_waiters`: `_id` = cache key,
//!   `waiters` (a set of `["<request_id>", "<vendor>"]` JSON texts), `until`:
//!   the jobs waiting for that call, taken all at once by one delete.
//!
//! Every state change is one conditional update (`status` in the filter).
//! `purge` deletes by the i64 fields; a TTL index on the BSON date `ttl` lets
//! a real mongod expire records too.
//!
//! Sharding: every query on the hot path names one `_id`, so on a sharded
//! cluster whose collections are sharded on `{_id: "hashed"}` (what
//! [`MongoStore::init`] sets up against a `mongos`) it reads or writes one
//! shard. The sweeper's scans, `purge` and the lookup of a vendor reference
//! the `vendor_refs` collection does not know (jobs accepted by an earlier
//! version) go to every shard; README lists them with their index.

use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{Bson, DateTime, Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{
    Acknowledgment, ClientOptions, CollectionOptions, IndexOptions, ReadPreference, ReturnDocument, SelectionCriteria,
    WriteConcern,
};
use mongodb::{Client, Collection, IndexModel};
use std::collections::BTreeMap;
use std::time::Duration;

use super::{Attempt, AttemptLog, CacheEntry, Flight, Inserted, Overdue, Result, Store, StoreError, WebhookClaim};
use crate::model::{
    AttemptOutcome, AttemptRecord, Job, JobQuery, Millis, NewJob, Notify, NotifyAttempt, Outcome, Priority, Redaction,
    Status, now_ms, prefix_end,
};

const IN_FLIGHT: [&str; 2] = ["pending", "processing"];
/// The terminal statuses (a finished job's notification may be due).
const FINISHED: [&str; 3] = ["complete", "failed", "cancelled"];
/// Rounds of the idempotency race (a key replaced or purged under us).
const KEY_ROUNDS: usize = 5;
/// The collections, by name.
const JOBS: &str = "jobs";
const WEBHOOK_IDS: &str = "webhook_ids";
const IDEMPOTENCY: &str = "idempotency";
const VENDOR_REFS: &str = "vendor_refs";
const RESULT_CACHE: &str = "result_cache";
const CACHE_FLIGHTS: &str = "cache_flights";
const CACHE_WAITERS: &str = "cache_waiters";
/// Rounds of the flight-claim race (a claim deleted under us).
const FLIGHT_ROUNDS: usize = 5;
/// Every collection, each sharded on its `_id` hashed: the key each is read
/// and deduplicated by (UUID v7 job ids grow with time, so a range key would
/// put every insert on the last shard).
pub const SHARDED_COLLECTIONS: [&str; 7] =
    [JOBS, WEBHOOK_IDS, IDEMPOTENCY, VENDOR_REFS, RESULT_CACHE, CACHE_FLIGHTS, CACHE_WAITERS];
/// `hello.msg` of a `mongos`.
const MONGOS_MSG: &str = "isdbgrid";

pub struct MongoStore {
    jobs: Collection<Document>,
    webhooks: Collection<Document>,
    keys: Collection<Document>,
    vendor_refs: Collection<Document>,
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

/// Counts each command the driver starts (`vendorhost_store_operations_total{backend="mongo"}`).
fn count_commands() -> mongodb::event::EventHandler<mongodb::event::command::CommandEvent> {
    use mongodb::event::command::CommandEvent;
    mongodb::event::EventHandler::callback(|ev: CommandEvent| {
        if let CommandEvent::Started(ev) = ev {
            let op = crate::telemetry::mongo_op(&ev.command_name);
            metrics::counter!(crate::telemetry::STORE_OPERATIONS, "backend" => "mongo", "op" => op).increment(1);
        }
    })
}

impl MongoStore {
    /// Connects with the default durability (no index is created: see
    /// [`MongoStore::init`]).
    pub async fn connect(uri: &str, db: &str) -> std::result::Result<MongoStore, StoreError> {
        let options = ClientOptions::parse(uri).await?;
        Self::connect_with(options, db, &Durability::default()).await
    }

    /// Connects with `options` (a parsed URI, plus whatever the caller adds,
    /// such as event handlers; without a command event handler of the
    /// caller's, every command started counts one store operation, by
    /// name: `telemetry::mongo_op`); the indexes are [`MongoStore::init`]'s. Every
    /// collection writes with `durability` and reads from the primary,
    /// whatever the URI says: a worker must never act on a secondary's stale
    /// copy of a job.
    pub async fn connect_with(
        options: ClientOptions,
        db: &str,
        durability: &Durability,
    ) -> std::result::Result<MongoStore, StoreError> {
        let mut options = options;
        if options.command_event_handler.is_none() {
            options.command_event_handler = Some(count_commands());
        }
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
            jobs: db.collection_with_options(JOBS, collection.clone()),
            webhooks: db.collection_with_options(WEBHOOK_IDS, collection.clone()),
            keys: db.collection_with_options(IDEMPOTENCY, collection.clone()),
            vendor_refs: db.collection_with_options(VENDOR_REFS, collection),
            db,
            job_ttl: None,
        };
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

    /// Creates every index of [`index_plan`] that is missing and, with
    /// `Sharding::IfMongos` against a `mongos` (`hello.msg` is `isdbgrid`),
    /// shards every collection not yet sharded on `{_id: "hashed"}`.
    /// Idempotent: a second run creates nothing and says what exists. Run by
    /// `vendorhost store init` and at start-up (setting `mongo_init`).
    pub async fn init(&self, sharding: Sharding) -> Result<InitReport> {
        // `hello` from MongoDB 4.4.2; `isMaster` before it.
        let hello = match self.db.run_command(doc! { "hello": 1 }).await {
            Ok(h) => h,
            Err(_) => self.db.run_command(doc! { "isMaster": 1 }).await?,
        };
        let mongos = hello.get_str("msg").ok() == Some(MONGOS_MSG);
        let shard = mongos && sharding == Sharding::IfMongos;
        let mut report = InitReport { database: self.db.name().to_string(), mongos, ..InitReport::default() };
        for (name, wanted) in index_plan(shard) {
            let coll = self.db.collection::<Document>(name);
            let existing = existing_indexes(&coll).await?;
            let (present, missing): (Vec<IndexModel>, Vec<IndexModel>) =
                wanted.into_iter().partition(|m| existing.iter().any(|e| same_index(e, m)));
            if !missing.is_empty() {
                coll.create_indexes(missing.clone()).await?;
            }
            let states = present.into_iter().map(|m| (m, false)).chain(missing.into_iter().map(|m| (m, true)));
            report.indexes.extend(states.map(|(m, created)| IndexState {
                collection: name,
                name: m.options.as_ref().and_then(|o| o.name.clone()).unwrap_or_else(|| index_name(&m.keys)),
                keys: m.keys,
                created,
            }));
        }
        if shard {
            let admin = self.db.client().database("admin");
            let sharded = self.db.client().database("config").collection::<Document>("collections");
            let mut enabled = false;
            for name in SHARDED_COLLECTIONS {
                // A collection that was dropped, or an unsharded one a
                // recent server tracks, is not sharded.
                let filter = doc! {
                    "_id": format!("{}.{name}", self.db.name()),
                    "dropped": { "$ne": true },
                    "unsplittable": { "$ne": true },
                };
                let outcome = match sharded.find_one(filter).await?.and_then(|e| e.get_document("key").ok().cloned()) {
                    Some(key) if same_keys(&key, &shard_key()) => ShardOutcome::AlreadySharded,
                    Some(key) => ShardOutcome::OtherKey(key),
                    None => {
                        if !enabled {
                            admin.run_command(enable_sharding_command(self.db.name())).await?;
                            enabled = true;
                        }
                        admin.run_command(shard_collection_command(self.db.name(), name)).await?;
                        ShardOutcome::Sharded
                    }
                };
                report.shards.push(ShardState { collection: name, outcome });
            }
        }
        Ok(report)
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

    /// Records that `vendor_ref` of `vendor` belongs to `request_id` (the
    /// last writer wins, as a vendor reference names one job).
    /// The attempt of a state change that matched nothing (the job ended
    /// meanwhile), appended on its own: the call did happen.
    async fn attempt_alone(&self, request_id: &str, attempt: Option<&AttemptLog<'_>>, matched: bool) -> Result<()> {
        match attempt {
            Some(a) if !matched => self.record_attempt(request_id, a.record, a.keep).await,
            _ => Ok(()),
        }
    }

    async fn write_vendor_ref(&self, vendor: &str, vendor_ref: &str, request_id: &str, deadline: Millis) -> Result<()> {
        let id = ref_key(vendor, vendor_ref);
        let mut entry = doc! { "_id": &id, "vendor": vendor, "vendor_ref": vendor_ref, "request_id": request_id, "deadline": deadline };
        if let Some(ttl) = self.job_ttl {
            entry.insert("ttl", ttl_date(deadline.saturating_add(ttl.as_millis() as i64)));
        }
        self.vendor_refs.replace_one(doc! { "_id": &id }, entry).upsert(true).await?;
        Ok(())
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
        let d = job_doc(job);
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

    async fn insert_batch_unqueued(&self, jobs: &[NewJob]) -> Result<Vec<Inserted>> {
        // The queue is elsewhere: no insert here writes an entry.
        self.insert_batch(jobs).await
    }

    async fn insert_batch(&self, jobs: &[NewJob]) -> Result<Vec<Inserted>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let mut out: Vec<Option<Inserted>> = vec![None; jobs.len()];
        let keyed: Vec<usize> = (0..jobs.len()).filter(|&i| jobs[i].idempotency.is_some()).collect();
        if !keyed.is_empty() {
            // Keys first (as `insert` does), in one unordered bulk write, each
            // carrying its job: a key already there fails alone.
            let key_docs: Vec<Document> = keyed
                .iter()
                .filter_map(|&i| {
                    let key = jobs[i].idempotency.as_ref()?;
                    Some(doc! {
                        "_id": &key.key,
                        "body_hash": &key.body_hash,
                        "request_id": &jobs[i].request_id,
                        "expires_at": key.expires_at,
                        "ttl": ttl_date(key.expires_at),
                        "job": job_doc(&jobs[i]),
                    })
                })
                .collect();
            match self.keys.insert_many(key_docs).ordered(false).await {
                Ok(_) => {}
                Err(e) if is_duplicate(&e) => {}
                Err(e) => return Err(e.into()),
            }
            // Which keys this batch wrote: those carrying its ids. Read back
            // rather than taken from the write's answer (the stand-in does
            // not report every duplicate of an unordered insert).
            let names: Vec<&str> =
                keyed.iter().filter_map(|&i| jobs[i].idempotency.as_ref().map(|k| k.key.as_str())).collect();
            let found: Vec<Document> = self
                .keys
                .find(doc! { "_id": { "$in": names } })
                .projection(doc! { "request_id": 1 })
                .await?
                .try_collect()
                .await?;
            let ours: std::collections::HashSet<String> =
                found.iter().filter_map(|d| opt_text(d, "request_id")).collect();
            for &i in &keyed {
                if !ours.contains(&jobs[i].request_id) {
                    // Taken before: the one-at-a-time path settles a replay,
                    // a conflict or an expired key.
                    out[i] = Some(self.insert(&jobs[i]).await?);
                }
            }
            if out.iter().any(|o| matches!(o, Some(Inserted::KeyConflict))) {
                // Nothing of a conflicting batch stays: its keys go again.
                let mine: Vec<&str> = keyed
                    .iter()
                    .filter(|&&i| ours.contains(&jobs[i].request_id))
                    .filter_map(|&i| jobs[i].idempotency.as_ref().map(|k| k.key.as_str()))
                    .collect();
                let ids: Vec<&str> = keyed.iter().map(|&i| jobs[i].request_id.as_str()).collect();
                self.keys.delete_many(doc! { "_id": { "$in": mine }, "request_id": { "$in": ids } }).await?;
                return Ok(vec![Inserted::KeyConflict; jobs.len()]);
            }
        }
        let fresh: Vec<usize> = (0..jobs.len()).filter(|&i| out[i].is_none()).collect();
        if !fresh.is_empty() {
            let docs: Vec<Document> = fresh.iter().map(|&i| job_doc(&jobs[i])).collect();
            match self.jobs.insert_many(docs).ordered(false).await {
                Ok(_) => {}
                // A racing replay already finished one of these pairs.
                Err(e) if is_duplicate(&e) => {}
                Err(e) => return Err(e.into()),
            }
            for i in fresh {
                out[i] = Some(Inserted::Created { enqueued: false });
            }
        }
        Ok(out.into_iter().map(|o| o.unwrap_or(Inserted::Created { enqueued: false })).collect())
    }

    async fn list(&self, query: &JobQuery) -> Result<Vec<Job>> {
        let mut filter = Document::new();
        if let Some(o) = &query.owner {
            filter.insert("owner", o);
        }
        if let Some(st) = query.status {
            filter.insert("status", st.as_str());
        }
        if let Some(v) = &query.vendor {
            filter.insert("vendor", v);
        }
        if let Some(e) = query.error_prefix.as_deref().filter(|e| !e.is_empty()) {
            // A range, not a regex: the `error` index serves it on any server.
            let mut range = doc! { "$gte": e };
            if let Some(end) = prefix_end(e) {
                range.insert("$lt", end);
            }
            filter.insert("error", range);
        }
        // The time window and the cursor are one range on `list_key`
        // (`(created_at, request_id)` as one sortable string).
        let mut range = Document::new();
        if let Some(t) = query.created_after {
            range.insert("$gte", list_key(t, ""));
        }
        let upper =
            [query.created_before.map(|t| list_key(t, "")), query.before.as_ref().map(|(t, id)| list_key(*t, id))];
        if let Some(upper) = upper.into_iter().flatten().min() {
            range.insert("$lt", upper);
        }
        if !range.is_empty() {
            filter.insert(LIST_KEY, range);
        }
        let docs: Vec<Document> = self
            .jobs
            .find(filter)
            .sort(doc! { LIST_KEY: -1 })
            .limit(limit_of(query.limit))
            .await?
            .try_collect()
            .await?;
        docs.into_iter().map(job_of).collect()
    }

    async fn mark_queued(&self, request_ids: &[String], now: Millis) -> Result<()> {
        if request_ids.is_empty() {
            return Ok(());
        }
        // One update when every job still waits (the sweeper's pending jobs:
        // the usual case); the others get the flag alone.
        let waiting = doc! {
            "_id": { "$in": request_ids },
            "status": { "$in": IN_FLIGHT.to_vec() },
            "vendor_ref": { "$exists": false },
        };
        let marked = self.jobs.update_many(waiting, doc! { "$set": { "queued": true, "due_at": now } }).await?;
        if marked.matched_count < request_ids.len() as u64 {
            self.jobs.update_many(doc! { "_id": { "$in": request_ids } }, doc! { "$set": { "queued": true } }).await?;
        }
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

    async fn record_error(
        &self,
        request_id: &str,
        error: &str,
        now: Millis,
        due: Millis,
        attempt: Option<&AttemptLog<'_>>,
    ) -> Result<()> {
        let filter = doc! { "_id": request_id, "status": { "$in": IN_FLIGHT.to_vec() } };
        let mut update = doc! { "$set": { "error": error, "updated_at": now, "due_at": due } };
        with_attempt(&mut update, attempt);
        let matched = self.jobs.update_one(filter, update).await?.matched_count == 1;
        self.attempt_alone(request_id, attempt, matched).await
    }

    async fn record_attempt(&self, request_id: &str, attempt: &AttemptRecord, keep: usize) -> Result<()> {
        let mut update = Document::new();
        with_attempt(&mut update, Some(&AttemptLog { record: attempt, keep }));
        self.jobs.update_one(doc! { "_id": request_id }, update).await?;
        Ok(())
    }

    async fn set_vendor_ref(
        &self,
        request_id: &str,
        vendor_ref: &str,
        deadline: Millis,
        now: Millis,
        attempt: Option<&AttemptLog<'_>>,
    ) -> Result<bool> {
        // The job first, then its entry in `vendor_refs`: the job's own
        // `vendor_ref` is the truth and `vendor_refs` an index of it (as the
        // queue is of the store). A crash or an error between the two leaves
        // a job whose lookup takes the indexed fallback in
        // `find_by_vendor_ref`, which writes the entry then; the other order
        // could leave an entry pointing at a job that never took the
        // reference (one reopened meanwhile would then take a stale result).
        let filter = doc! { "_id": request_id, "status": Status::Processing.as_str() };
        let mut update = doc! {
            "$set": { "vendor_ref": vendor_ref, "webhook_deadline": deadline, "updated_at": now },
            "$unset": { "due_at": "" },
        };
        with_attempt(&mut update, attempt);
        let Some(updated) = self.jobs.find_one_and_update(filter, update).projection(doc! { "vendor": 1 }).await?
        else {
            self.attempt_alone(request_id, attempt, false).await?;
            return Ok(false);
        };
        let vendor = text(&updated, "vendor")?;
        if let Err(e) = self.write_vendor_ref(&vendor, vendor_ref, request_id, deadline).await {
            // The reference is recorded on the job: lookups still find it.
            tracing::warn!(request_id = %request_id, vendor = %vendor, error = %e, "vendor reference not indexed; webhooks find the job by the slower scan");
        }
        Ok(true)
    }

    async fn find_by_vendor_ref(&self, vendor: &str, vendor_ref: &str) -> Result<Option<String>> {
        // One read by `_id`: one shard.
        let entry = self.vendor_refs.find_one(doc! { "_id": ref_key(vendor, vendor_ref) }).await?;
        if let Some(id) = entry.as_ref().and_then(|d| opt_text(d, "request_id")) {
            return Ok(Some(id));
        }
        // A job accepted by an earlier version (no entry), or one whose entry
        // was not written: the indexed query on the jobs (every shard).
        let found = self
            .jobs
            .find_one(doc! { "vendor": vendor, "vendor_ref": vendor_ref })
            .projection(doc! { "_id": 1, "status": 1, "webhook_deadline": 1 })
            .await?;
        let Some(found) = found else { return Ok(None) };
        let request_id = text(&found, "_id")?;
        if found.get_str("status").ok() == Some(Status::Processing.as_str()) {
            // Index it, so its next webhook is a one-shard read too. (Only
            // while it waits: a failed job may be reopened, which drops it.)
            let deadline = int(&found, "webhook_deadline").unwrap_or_else(now_ms);
            if let Err(e) = self.write_vendor_ref(vendor, vendor_ref, &request_id, deadline).await {
                tracing::warn!(request_id = %request_id, vendor = %vendor, error = %e, "vendor reference not indexed");
            }
        }
        Ok(Some(request_id))
    }

    async fn finish(
        &self,
        request_id: &str,
        outcome: &Outcome,
        now: Millis,
        attempt: Option<&AttemptLog<'_>>,
    ) -> Result<bool> {
        let filter = doc! { "_id": request_id, "status": { "$in": IN_FLIGHT.to_vec() } };
        let mut set = doc! { "status": outcome.status().as_str(), "updated_at": now };
        let mut unset = Document::new();
        match outcome {
            Outcome::Complete { result, redactions } | Outcome::Cached { result, redactions } => {
                if matches!(outcome, Outcome::Cached { .. }) {
                    set.insert("cached", true);
                }
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
            Outcome::Cancelled => {
                for field in ["result", "redactions", "error", "webhook_deadline"] {
                    unset.insert(field, "");
                }
            }
        }
        // Stored as a string by the stand-in (so it never expires there);
        // a real mongod stores a date and its TTL monitor honours it.
        if let Some(ttl) = self.job_ttl {
            set.insert("ttl", ttl_date(now.saturating_add(ttl.as_millis() as i64)));
        }
        unset.insert("due_at", "");
        let mut update = doc! { "$set": set, "$unset": unset };
        with_attempt(&mut update, attempt);
        let ended = self.jobs.update_one(filter, update).await?.matched_count == 1;
        self.attempt_alone(request_id, attempt, ended).await?;
        Ok(ended)
    }

    async fn reopen(&self, request_id: &str, now: Millis) -> Result<bool> {
        let filter = doc! { "_id": request_id, "status": Status::Failed.as_str() };
        // A failed job stays failed until reopened: drop its old reference's
        // entry first, so a late webhook for the old run cannot find the new
        // one (a crash in between leaves a failed job the fallback finds).
        let Some(failed) = self.jobs.find_one(filter.clone()).projection(doc! { "vendor": 1, "vendor_ref": 1 }).await?
        else {
            return Ok(false);
        };
        if let (Some(vendor), Some(vendor_ref)) = (opt_text(&failed, "vendor"), opt_text(&failed, "vendor_ref")) {
            let entry = doc! { "_id": ref_key(&vendor, &vendor_ref), "request_id": request_id };
            self.vendor_refs.delete_one(entry).await?;
        }
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
            .projection(doc! { "_id": 1, "vendor": 1, "due_at": 1, "owner": 1, "priority": 1 })
            .await?
            .try_collect()
            .await?;
        docs.into_iter()
            .map(|d| {
                let due_at = int(&d, "due_at").ok_or_else(|| StoreError::Corrupt("due_at is not a number".into()))?;
                Ok(Overdue {
                    request_id: text(&d, "_id")?,
                    vendor: text(&d, "vendor")?,
                    due_at,
                    owner: opt_text(&d, "owner"),
                    priority: priority_of(&d),
                })
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
        // A reference whose webhook deadline is older than the retention:
        // its job is finished and purged (or is, by the job's own rule, soon).
        self.vendor_refs.delete_many(doc! { "deadline": { "$lt": before } }).await?;
        // The stand-in ignores TTL indexes: expired results go here too.
        self.db.collection::<Document>(RESULT_CACHE).delete_many(doc! { "expires_at": { "$lt": now } }).await?;
        self.db.collection::<Document>(CACHE_FLIGHTS).delete_many(doc! { "until": { "$lt": now } }).await?;
        let stale = doc! { "until": { "$lt": before.min(now) } };
        self.db.collection::<Document>(CACHE_WAITERS).delete_many(stale).await?;
        Ok(deleted)
    }

    async fn due_notifications(&self, now: Millis, limit: usize) -> Result<Vec<Job>> {
        let filter = doc! { "status": { "$in": FINISHED.to_vec() }, "notify_at": { "$lte": now } };
        let found: Vec<Document> =
            self.jobs.find(filter).sort(doc! { "notify_at": 1 }).limit(limit_of(limit)).await?.try_collect().await?;
        found.into_iter().map(job_of).collect()
    }

    async fn claim_notification(&self, request_id: &str, due: Millis, until: Millis) -> Result<bool> {
        let filter = doc! { "_id": request_id, "notify_at": due };
        Ok(self.jobs.update_one(filter, doc! { "$set": { "notify_at": until } }).await?.matched_count == 1)
    }

    async fn record_notification(&self, request_id: &str, attempt: &NotifyAttempt) -> Result<()> {
        let mut set = Document::new();
        let mut unset = Document::new();
        let mut put = |field: &str, v: Option<Bson>| match v {
            Some(v) => {
                set.insert(field, v);
            }
            None => {
                unset.insert(field, "");
            }
        };
        put("notify_status", attempt.status.map(|s| Bson::Int64(i64::from(s))));
        put("notify_error", attempt.error.clone().map(Bson::String));
        put("notify_delivered_at", attempt.delivered_at.map(Bson::Int64));
        put("notify_at", attempt.next_at.map(Bson::Int64));
        let mut update = doc! { "$inc": { "notify_attempts": 1_i64 } };
        if !set.is_empty() {
            update.insert("$set", set);
        }
        if !unset.is_empty() {
            update.insert("$unset", unset);
        }
        let filter = doc! { "_id": request_id, "notify_url": { "$exists": true } };
        self.jobs.update_one(filter, update).await?;
        Ok(())
    }

    async fn count_active(&self, owner: &str) -> Result<u64> {
        let filter = doc! { "owner": owner, "status": { "$in": IN_FLIGHT.to_vec() } };
        Ok(self.jobs.count_documents(filter).await?)
    }

    async fn take_quota(&self, id: &str, limit: u64, expires_at: Millis) -> Result<bool> {
        // Two single-document writes, each atomic: make sure the counter
        // exists, then take a unit only below the limit (the filter and the
        // $inc are one operation, so racing workers cannot both take the
        // last unit). Periods are in the id: a counter is never reset.
        let quotas = self.db.collection::<Document>("quotas");
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let made = quotas
            .update_one(doc! { "_id": id }, doc! { "$setOnInsert": { "used": 0_i64, "expires_at": expires_at } })
            .upsert(true)
            .await;
        // Two racing upserts: the loser's duplicate key means it exists.
        if let Err(e) = made
            && !is_duplicate(&e)
        {
            return Err(e.into());
        }
        let r =
            quotas.update_one(doc! { "_id": id, "used": { "$lt": limit } }, doc! { "$inc": { "used": 1_i64 } }).await?;
        Ok(r.modified_count == 1)
    }

    async fn quota_used(&self, id: &str, now: Millis) -> Result<u64> {
        let found = self.db.collection::<Document>("quotas").find_one(doc! { "_id": id }).await?;
        let Some(d) = found else { return Ok(0) };
        let num = |f: &str| match d.get(f) {
            Some(Bson::Int64(v)) => *v,
            Some(Bson::Int32(v)) => i64::from(*v),
            Some(Bson::Double(v)) => *v as i64,
            _ => 0,
        };
        // The period is in the id, so an expired counter is simply old.
        if num("expires_at") <= now {
            return Ok(0);
        }
        Ok(num("used").max(0) as u64)
    }

    async fn record_usage(
        &self,
        key: &str,
        vendor: &str,
        hour: Millis,
        d: &crate::model::usage::UsageDelta,
    ) -> Result<()> {
        // One upsert with $inc per call: concurrent workers add, never
        // overwrite. A racing first insert loses on the duplicate `_id` and
        // is retried once as a plain $inc.
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let id = format!("{key}|{vendor}|{hour}");
        let inc = doc! { "$inc": {
            "calls": n(d.calls), "bytes_in": n(d.bytes_in), "bytes_out": n(d.bytes_out),
            "cpu_us": n(d.cpu_us), "latency_ms": n(d.latency_ms),
        } };
        let mut update = inc.clone();
        update.insert("$setOnInsert", doc! { "key": key, "vendor": vendor, "hour": hour });
        let usage = self.db.collection::<Document>("usage");
        match usage.update_one(doc! { "_id": &id }, update).upsert(true).await {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate(&e) => {
                usage.update_one(doc! { "_id": &id }, inc).await?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn usage(&self, q: &crate::model::usage::UsageQuery) -> Result<Vec<crate::model::usage::UsageRow>> {
        use crate::model::usage::{UsageDelta, UsageRow};
        let mut filter = doc! { "hour": { "$gte": q.from, "$lt": q.to } };
        if let Some(k) = &q.key {
            filter.insert("key", k);
        }
        if let Some(v) = &q.vendor {
            filter.insert("vendor", v);
        }
        let g = q.granularity.millis();
        let num = |d: &Document, f: &str| -> u64 {
            match d.get(f) {
                Some(Bson::Int64(v)) => (*v).max(0) as u64,
                Some(Bson::Int32(v)) => (*v).max(0) as u64,
                Some(Bson::Double(v)) => v.max(0.0) as u64,
                _ => 0,
            }
        };
        // Summed here per bucket (the stand-in has no reliable $group).
        let mut sums: BTreeMap<(String, String, Millis), UsageDelta> = BTreeMap::new();
        let mut cursor = self.db.collection::<Document>("usage").find(filter).await?;
        while let Some(d) = cursor.try_next().await? {
            let key = d.get_str("key").unwrap_or_default().to_string();
            let vendor = d.get_str("vendor").unwrap_or_default().to_string();
            let hour = num(&d, "hour") as Millis;
            let e = sums.entry((key, vendor, hour.div_euclid(g) * g)).or_default();
            e.calls += num(&d, "calls");
            e.bytes_in += num(&d, "bytes_in");
            e.bytes_out += num(&d, "bytes_out");
            e.cpu_us += num(&d, "cpu_us");
            e.latency_ms += num(&d, "latency_ms");
        }
        Ok(sums.into_iter().map(|((key, vendor, from), usage)| UsageRow { key, vendor, from, usage }).collect())
    }

    async fn usage_totals(&self, from: Millis, to: Millis) -> Result<Vec<crate::model::usage::UsageRow>> {
        use crate::model::usage::{UsageDelta, UsageRow};
        let num = |d: &Document, f: &str| -> u64 {
            match d.get(f) {
                Some(Bson::Int64(v)) => (*v).max(0) as u64,
                Some(Bson::Int32(v)) => (*v).max(0) as u64,
                Some(Bson::Double(v)) => v.max(0.0) as u64,
                _ => 0,
            }
        };
        // Summed here per (key, vendor) (the stand-in has no reliable $group).
        let mut sums: BTreeMap<(String, String), UsageDelta> = BTreeMap::new();
        let filter = doc! { "hour": { "$gte": from, "$lt": to } };
        let mut cursor = self.db.collection::<Document>("usage").find(filter).await?;
        while let Some(d) = cursor.try_next().await? {
            let key = d.get_str("key").unwrap_or_default().to_string();
            let vendor = d.get_str("vendor").unwrap_or_default().to_string();
            let e = sums.entry((key, vendor)).or_default();
            e.calls += num(&d, "calls");
            e.bytes_in += num(&d, "bytes_in");
            e.bytes_out += num(&d, "bytes_out");
            e.cpu_us += num(&d, "cpu_us");
            e.latency_ms += num(&d, "latency_ms");
        }
        Ok(sums.into_iter().map(|((key, vendor), usage)| UsageRow { key, vendor, from, usage }).collect())
    }

    async fn cache_get(&self, key: &str, now: Millis) -> Result<Option<CacheEntry>> {
        let filter = doc! { "_id": key, "expires_at": { "$gt": now } };
        let Some(d) = self.db.collection::<Document>(RESULT_CACHE).find_one(filter).await? else { return Ok(None) };
        let corrupt = |field: &str| StoreError::Corrupt(format!("cached result {key}: {field}"));
        let redactions = match opt_text(&d, "redactions") {
            None => Vec::new(),
            Some(t) => serde_json::from_str::<Vec<Redaction>>(&t).map_err(|_| corrupt("redactions"))?,
        };
        Ok(Some(CacheEntry {
            key: key.to_string(),
            vendor: opt_text(&d, "vendor").ok_or_else(|| corrupt("vendor"))?,
            result: opt_text(&d, "result").ok_or_else(|| corrupt("result"))?,
            redactions,
            stored_at: int(&d, "stored_at").ok_or_else(|| corrupt("stored_at"))?,
            expires_at: int(&d, "expires_at").ok_or_else(|| corrupt("expires_at"))?,
        }))
    }

    async fn cache_put(&self, e: &CacheEntry) -> Result<()> {
        let mut entry = doc! {
            "_id": &e.key,
            "vendor": &e.vendor,
            "result": &e.result,
            "stored_at": e.stored_at,
            "expires_at": e.expires_at,
            "ttl": ttl_date(e.expires_at),
        };
        if !e.redactions.is_empty() {
            let text = serde_json::to_string(&e.redactions).map_err(|x| StoreError::Corrupt(x.to_string()))?;
            entry.insert("redactions", text);
        }
        let coll = self.db.collection::<Document>(RESULT_CACHE);
        match coll.replace_one(doc! { "_id": &e.key }, entry).upsert(true).await {
            // Two racing first writes: the other's result stands (as good).
            Err(x) if !is_duplicate(&x) => Err(x.into()),
            _ => Ok(()),
        }
    }

    async fn claim_flight(&self, key: &str, request_id: &str, until: Millis, now: Millis) -> Result<Flight> {
        let flights = self.db.collection::<Document>(CACHE_FLIGHTS);
        for _ in 0..FLIGHT_ROUNDS {
            // One conditional upsert: free, lapsed or our own → ours; held by
            // another job → the upsert's insert loses on the duplicate `_id`.
            let filter = doc! { "_id": key, "$or": [ { "until": { "$lte": now } }, { "leader": request_id } ] };
            let update = doc! { "$set": { "leader": request_id, "until": until } };
            if let Err(e) = flights.update_one(filter, update).upsert(true).await
                && !is_duplicate(&e)
            {
                return Err(e.into());
            }
            let Some(held) = flights.find_one(doc! { "_id": key }).await? else {
                continue; // purged in between: try again
            };
            let leader = text(&held, "leader")?;
            if leader == request_id {
                return Ok(Flight::Leader);
            }
            return Ok(Flight::Follower { leader, until: int(&held, "until").unwrap_or(now) });
        }
        Err(StoreError::Corrupt(format!("flight claim {key} kept changing under us")))
    }

    async fn end_flight(&self, key: &str, request_id: &str) -> Result<()> {
        let flights = self.db.collection::<Document>(CACHE_FLIGHTS);
        flights.delete_one(doc! { "_id": key, "leader": request_id }).await?;
        Ok(())
    }

    async fn add_waiter(&self, key: &str, request_id: &str, vendor: &str, until: Millis) -> Result<()> {
        let waiters = self.db.collection::<Document>(CACHE_WAITERS);
        let entry = serde_json::json!([request_id, vendor]).to_string();
        let update = doc! { "$addToSet": { "waiters": entry }, "$set": { "until": until } };
        match waiters.update_one(doc! { "_id": key }, update).upsert(true).await {
            // Two racing first records: the loser's is added again.
            Err(e) if is_duplicate(&e) => {
                let update = doc! { "$addToSet": { "waiters": serde_json::json!([request_id, vendor]).to_string() } };
                waiters.update_one(doc! { "_id": key }, update).upsert(true).await?;
                Ok(())
            }
            Err(e) => Err(e.into()),
            Ok(_) => Ok(()),
        }
    }

    async fn take_waiters(&self, key: &str) -> Result<Vec<(String, String)>> {
        // One delete takes the key's whole set: racing takers never share a
        // waiter, and one recorded after it starts a new set for the next.
        let waiters = self.db.collection::<Document>(CACHE_WAITERS);
        let Some(d) = waiters.find_one_and_delete(doc! { "_id": key }).await? else { return Ok(Vec::new()) };
        let Ok(list) = d.get_array("waiters") else { return Ok(Vec::new()) };
        Ok(list
            .iter()
            .filter_map(|b| match b {
                Bson::String(text) => serde_json::from_str::<(String, String)>(text).ok(),
                _ => None,
            })
            .collect())
    }

    async fn ping(&self) -> Result<()> {
        self.db.run_command(doc! { "ping": 1 }).await?;
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "mongo"
    }
}

/// The listing order of a job, `(created_at, request_id)`, as one string
/// that sorts the same (creation time zero-padded): one field to index, sort
/// and page by (the Mongo stand-in cannot index `_id` inside a compound
/// index). Written at insert; jobs written before listing existed lack it and
/// are not listed.
const LIST_KEY: &str = "list_key";

fn list_key(created_at: Millis, request_id: &str) -> String {
    format!("{:020}:{request_id}", created_at.max(0))
}

/// The listing indexes: name and key fields (`-` descending).
pub const LIST_INDEXES: [(&str, &[&str]); 5] = [
    ("jobs_list_created", &["-list_key"]),
    ("jobs_list_owner", &["owner", "-list_key"]),
    ("jobs_list_status", &["status", "-list_key"]),
    ("jobs_list_vendor", &["vendor", "-list_key"]),
    ("jobs_list_error", &["error"]),
];

fn list_index_keys(fields: &[&str]) -> Document {
    let mut keys = Document::new();
    for f in fields {
        match f.strip_prefix('-') {
            Some(name) => keys.insert(name, -1_i32),
            None => keys.insert(*f, 1_i32),
        };
    }
    keys
}

/// A new job's document (`pending`, not yet queued).
fn job_doc(job: &NewJob) -> Document {
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
        LIST_KEY: list_key(job.created_at, &job.request_id),
    };
    if let Some(owner) = &job.owner {
        d.insert("owner", owner);
    }
    if job.priority != Priority::Normal {
        d.insert("priority", job.priority.as_str());
    }
    if let Some(url) = &job.notify_url {
        // Due from the start: the delivery loop takes it once the job's
        // status is terminal, whoever ended it.
        d.insert("notify_url", url);
        d.insert("notify_attempts", 0_i64);
        d.insert("notify_at", job.created_at);
    }
    d
}

/// Whether [`MongoStore::init`] may shard collections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharding {
    /// Indexes only, whatever the server.
    Never,
    /// Against a `mongos`, also shard every collection (see
    /// [`SHARDED_COLLECTIONS`]); elsewhere indexes only.
    IfMongos,
}

/// What [`MongoStore::init`] found and did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InitReport {
    pub database: String,
    /// The server is a `mongos` (a sharded cluster's router).
    pub mongos: bool,
    pub indexes: Vec<IndexState>,
    /// One per collection when sharding was asked for against a `mongos`.
    pub shards: Vec<ShardState>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IndexState {
    pub collection: &'static str,
    /// Its name, or the name a server gives it by default.
    pub name: String,
    pub keys: Document,
    /// Created by this run (else it was there).
    pub created: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ShardState {
    pub collection: &'static str,
    pub outcome: ShardOutcome,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ShardOutcome {
    /// Sharded on `{_id: "hashed"}` by this run.
    Sharded,
    /// Already sharded on `{_id: "hashed"}`.
    AlreadySharded,
    /// Sharded before on another key: left alone (resharding is the
    /// operator's call), but its hot-path queries may reach several shards.
    OtherKey(Document),
}

impl InitReport {
    /// Indexes this run created.
    pub fn created(&self) -> usize {
        self.indexes.iter().filter(|i| i.created).count()
    }

    /// A short account for people: one line per index and collection, then
    /// the totals.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "MongoDB database {} on a {}\n",
            self.database,
            if self.mongos { "mongos (sharded cluster)" } else { "mongod (not a mongos: nothing to shard)" }
        );
        for i in &self.indexes {
            let what = if i.created { "created" } else { "exists " };
            out.push_str(&format!("  {what} index {}.{}\n", i.collection, i.name));
        }
        for s in &self.shards {
            let line = match &s.outcome {
                ShardOutcome::Sharded => format!("sharded {} on {{_id: \"hashed\"}}", s.collection),
                ShardOutcome::AlreadySharded => format!("exists  sharding of {} on {{_id: \"hashed\"}}", s.collection),
                ShardOutcome::OtherKey(k) => {
                    format!("WARNING {} is sharded on {k}, not {{_id: \"hashed\"}}: left as it is", s.collection)
                }
            };
            out.push_str(&format!("  {line}\n"));
        }
        let sharded = self.shards.iter().filter(|s| s.outcome == ShardOutcome::Sharded).count();
        out.push_str(&format!(
            "{} index(es) created, {} already there",
            self.created(),
            self.indexes.len() - self.created()
        ));
        if self.mongos {
            out.push_str(&format!(
                "; {sharded} collection(s) sharded, {} already sharded",
                self.shards.iter().filter(|s| s.outcome == ShardOutcome::AlreadySharded).count()
            ));
        }
        out
    }
}

/// Every index the store reads through, by collection; with `shard`, also
/// the hashed `_id` index each collection's shard key needs (a non-empty
/// collection must have it before `shardCollection`).
fn index_plan(shard: bool) -> Vec<(&'static str, Vec<IndexModel>)> {
    let plain = |keys: Document| IndexModel::builder().keys(keys).build();
    let ttl = || {
        IndexModel::builder()
            .keys(doc! { "ttl": 1 })
            .options(IndexOptions::builder().expire_after(Duration::ZERO).build())
            .build()
    };
    let named = |name: &str, keys: Document| {
        IndexModel::builder().keys(keys).options(IndexOptions::builder().name(name.to_string()).build()).build()
    };
    let mut jobs = vec![
        // The sweeper: stranded pending jobs, overdue jobs, webhook deadlines.
        plain(doc! { "status": 1, "queued": 1, "created_at": 1 }),
        plain(doc! { "status": 1, "webhook_deadline": 1 }),
        plain(doc! { "status": 1, "due_at": 1 }),
        // `purge`.
        plain(doc! { "status": 1, "updated_at": 1 }),
        // Vendor references `vendor_refs` does not know (earlier versions).
        plain(doc! { "vendor": 1, "vendor_ref": 1 }),
        // Finished jobs whose notification is due (`notify_at` is set at
        // insert on jobs with a `notify_url` only).
        plain(doc! { "status": 1, "notify_at": 1 }),
        ttl(),
    ];
    // Job listing, newest first: one index per filter, each ordered for the
    // keyset cursor, and the error-prefix range.
    jobs.extend(LIST_INDEXES.iter().map(|(name, keys)| named(name, list_index_keys(keys))));
    let mut plan = vec![
        (JOBS, jobs),
        (WEBHOOK_IDS, vec![plain(doc! { "expires_at": 1 }), ttl()]),
        (IDEMPOTENCY, vec![plain(doc! { "expires_at": 1 }), ttl()]),
        (VENDOR_REFS, vec![plain(doc! { "deadline": 1 }), ttl()]),
        // The result cache: `purge` by `expires_at`, a real mongod's TTL
        // monitor by `ttl`; flights and waiters purged by `until` (all
        // three read by `_id`).
        (RESULT_CACHE, vec![plain(doc! { "expires_at": 1 }), ttl()]),
        (CACHE_FLIGHTS, vec![plain(doc! { "until": 1 })]),
        (CACHE_WAITERS, vec![plain(doc! { "until": 1 })]),
    ];
    if shard {
        for (_, models) in &mut plan {
            models.push(plain(shard_key()));
        }
    }
    plan
}

/// A collection's indexes (none for a collection not yet created).
async fn existing_indexes(coll: &Collection<Document>) -> Result<Vec<IndexModel>> {
    const NAMESPACE_NOT_FOUND: i32 = 26;
    match coll.list_indexes().await {
        Ok(cursor) => Ok(cursor.try_collect().await?),
        Err(e) if matches!(e.kind.as_ref(), ErrorKind::Command(c) if c.code == NAMESPACE_NOT_FOUND) => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// `existing` (as the server lists it) is the index `wanted`: the same name
/// (a named one), or the same keys. A server that lists a compound index
/// without its `_id` fields and with every direction ascending (the Mongo
/// stand-in the tests run on) is read the same way.
fn same_index(existing: &IndexModel, wanted: &IndexModel) -> bool {
    let name = |m: &IndexModel| m.options.as_ref().and_then(|o| o.name.clone());
    if name(wanted).is_some() && name(existing) == name(wanted) {
        return true;
    }
    let mut folded = Document::new();
    for (k, v) in &wanted.keys {
        if k != "_id" {
            folded.insert(k, if matches!(v, Bson::String(_)) { v.clone() } else { Bson::Int32(1) });
        }
    }
    same_keys(&existing.keys, &wanted.keys) || (!folded.is_empty() && same_keys(&existing.keys, &folded))
}

/// Two index key documents are the same index: the same fields in the same
/// order, each with the same direction or kind (a server may send `1` back
/// as an int32, an int64 or a double).
fn same_keys(a: &Document, b: &Document) -> bool {
    let value = |v: &Bson| match v {
        Bson::Int32(n) => Bson::Double(f64::from(*n)),
        Bson::Int64(n) => Bson::Double(*n as f64),
        other => other.clone(),
    };
    a.len() == b.len() && a.iter().zip(b.iter()).all(|((ka, va), (kb, vb))| ka == kb && value(va) == value(vb))
}

/// The name a server gives an index by default: `status_1_due_at_1`.
fn index_name(keys: &Document) -> String {
    let part = |v: &Bson| match v {
        Bson::String(s) => s.clone(),
        Bson::Int32(n) => n.to_string(),
        Bson::Int64(n) => n.to_string(),
        Bson::Double(n) => (*n as i64).to_string(),
        other => other.to_string(),
    };
    keys.iter().map(|(k, v)| format!("{k}_{}", part(v))).collect::<Vec<_>>().join("_")
}

/// Every collection's shard key: its `_id`, hashed.
pub fn shard_key() -> Document {
    doc! { "_id": "hashed" }
}

/// The admin command that lets a database's collections be sharded
/// (`sh.enableSharding(db)`; implicit from MongoDB 6.0, harmless there).
pub fn enable_sharding_command(db: &str) -> Document {
    doc! { "enableSharding": db }
}

/// The admin command that shards `collection` on its hashed `_id`
/// (`sh.shardCollection("<db>.<collection>", {_id: "hashed"})`).
pub fn shard_collection_command(db: &str, collection: &str) -> Document {
    doc! { "shardCollection": format!("{db}.{collection}"), "key": shard_key() }
}

/// The `_id` of a vendor reference's entry in `vendor_refs` (a vendor id
/// holds no `:`).
fn ref_key(vendor: &str, vendor_ref: &str) -> String {
    format!("{vendor}:{vendor_ref}")
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

/// A job's priority: absent (and anything unknown) is `normal`.
fn priority_of(d: &Document) -> Priority {
    d.get_str("priority").ok().and_then(Priority::parse).unwrap_or_default()
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
        notify: opt_text(&d, "notify_url").map(|url| Notify {
            url,
            attempts: u32::try_from(int(&d, "notify_attempts").unwrap_or(0).max(0)).unwrap_or(u32::MAX),
            last_status: int(&d, "notify_status").and_then(|s| u16::try_from(s).ok()),
            last_error: opt_text(&d, "notify_error"),
            delivered_at: int(&d, "notify_delivered_at"),
            next_at: int(&d, "notify_at"),
        }),
        attempts_log: attempts_of(&d),
        // The stand-in may return a stored boolean as an integer.
        cached: match d.get("cached") {
            Some(Bson::Boolean(b)) => *b,
            Some(_) => int(&d, "cached").is_some_and(|n| n != 0),
            None => false,
        },
        priority: priority_of(&d),
        request_id,
    })
}

/// The job's call history; a record that does not read is left out. The
/// nx-27017 stand-in returns documents `$push`ed into an array as their JSON
/// text: read that too.
fn attempts_of(d: &Document) -> Vec<AttemptRecord> {
    let Ok(list) = d.get_array("attempts_log") else { return Vec::new() };
    list.iter()
        .filter_map(|r| {
            let r = match r {
                Bson::Document(r) => r,
                Bson::String(text) => return serde_json::from_str::<AttemptRecord>(text).ok(),
                _ => return None,
            };
            Some(AttemptRecord {
                started_at: int(r, "started_at")?,
                duration_ms: u64::try_from(int(r, "duration_ms")?).unwrap_or(0),
                outcome: AttemptOutcome::parse(r.get_str("outcome").ok()?)?,
                error: opt_text(r, "error"),
                usage: r.get_document("usage").ok().map(|u| {
                    let n = |f: &str| int(u, f).map(|v| v.max(0) as u64).unwrap_or(0);
                    crate::model::usage::AttemptUsage {
                        http_calls: n("http_calls"),
                        bytes_in: n("bytes_in"),
                        bytes_out: n("bytes_out"),
                        cpu_us: n("cpu_us"),
                        peak_memory_bytes: n("peak_memory_bytes"),
                    }
                }),
            })
        })
        .collect()
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

/// Adds to `update` the `$push` that appends an attempt to the job's
/// history, keeping the latest `keep`.
fn with_attempt(update: &mut Document, attempt: Option<&AttemptLog<'_>>) {
    let Some(AttemptLog { record: attempt, keep }) = attempt else { return };
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let mut record = doc! {
        "started_at": attempt.started_at,
        "duration_ms": n(attempt.duration_ms),
        "outcome": attempt.outcome.as_str(),
    };
    if let Some(e) = &attempt.error {
        record.insert("error", e);
    }
    if let Some(u) = &attempt.usage {
        record.insert(
            "usage",
            doc! {
                "http_calls": n(u.http_calls), "bytes_in": n(u.bytes_in), "bytes_out": n(u.bytes_out),
                "cpu_us": n(u.cpu_us), "peak_memory_bytes": n(u.peak_memory_bytes),
            },
        );
    }
    let keep = -i64::try_from(*keep).unwrap_or(i64::MAX);
    update.insert("$push", doc! { "attempts_log": { "$each": [record], "$slice": keep } });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact bodies `init` sends a `mongos` (to the `admin` database).
    #[test]
    fn sharding_commands_are_what_a_mongos_expects() {
        assert_eq!(enable_sharding_command("vendorhost"), doc! { "enableSharding": "vendorhost" });
        for (collection, ns) in [
            ("jobs", "vendorhost.jobs"),
            ("webhook_ids", "vendorhost.webhook_ids"),
            ("idempotency", "vendorhost.idempotency"),
            ("vendor_refs", "vendorhost.vendor_refs"),
        ] {
            assert!(SHARDED_COLLECTIONS.contains(&collection));
            assert_eq!(
                shard_collection_command("vendorhost", collection),
                doc! { "shardCollection": ns, "key": { "_id": "hashed" } }
            );
        }
        assert_eq!(SHARDED_COLLECTIONS.len(), 7);
    }

    /// Against a `mongos` every collection also gets the hashed `_id` index
    /// its shard key needs; elsewhere no index names `_id` (the Mongo
    /// stand-in refuses those).
    #[test]
    fn the_hashed_id_index_is_planned_only_for_a_mongos() {
        let names = |shard| -> Vec<(&str, Vec<Document>)> {
            index_plan(shard).into_iter().map(|(c, ms)| (c, ms.into_iter().map(|m| m.keys).collect())).collect()
        };
        let plain = names(false);
        let sharded = names(true);
        assert_eq!(plain.iter().map(|(c, _)| *c).collect::<Vec<_>>(), SHARDED_COLLECTIONS);
        for ((c, keys), (_, with)) in plain.iter().zip(&sharded) {
            assert!(!keys.iter().any(|k| same_keys(k, &shard_key())), "{c}");
            assert_eq!(with.len(), keys.len() + 1, "{c}");
            assert!(same_keys(with.last().unwrap(), &doc! { "_id": "hashed" }), "{c}");
        }
        let refs = &plain.iter().find(|(c, _)| *c == "vendor_refs").unwrap().1;
        assert!(refs.iter().any(|k| same_keys(k, &doc! { "deadline": 1 })), "purge needs the deadline index");
    }

    #[test]
    fn index_keys_compare_across_number_widths_and_order() {
        assert!(same_keys(&doc! { "a": 1_i32, "b": -1_i64 }, &doc! { "a": 1.0, "b": -1_i32 }));
        assert!(!same_keys(&doc! { "a": 1, "b": 1 }, &doc! { "b": 1, "a": 1 }));
        assert!(!same_keys(&doc! { "a": 1 }, &doc! { "a": -1 }));
        assert!(!same_keys(&doc! { "a": 1 }, &doc! { "a": 1, "b": 1 }));
        assert!(!same_keys(&doc! { "_id": 1 }, &doc! { "_id": "hashed" }));
        assert_eq!(index_name(&doc! { "status": 1, "due_at": 1 }), "status_1_due_at_1");
        assert_eq!(index_name(&doc! { "_id": "hashed" }), "_id_hashed");
        let model = |keys: Document, name: Option<&str>| {
            IndexModel::builder()
                .keys(keys)
                .options(name.map(|n| IndexOptions::builder().name(n.to_string()).build()))
                .build()
        };
        let listing = model(doc! { "owner": 1, "created_at": -1, "_id": -1 }, Some("jobs_list_owner"));
        assert!(same_index(&model(doc! { "x": 1 }, Some("jobs_list_owner")), &listing), "by name");
        assert!(same_index(&model(doc! { "owner": 1, "created_at": -1, "_id": -1 }, None), &listing), "by keys");
        assert!(
            same_index(&model(doc! { "owner": 1, "created_at": 1 }, Some("idx_x")), &listing),
            "as the stand-in lists it"
        );
        assert!(!same_index(&model(doc! { "owner": 1 }, None), &listing));
        assert!(!same_index(&model(doc! { "_id": 1 }, Some("_id_")), &model(doc! { "_id": "hashed" }, None)));
    }

    #[test]
    fn the_summary_says_what_was_created_and_what_existed() {
        let report = InitReport {
            database: "vh".into(),
            mongos: true,
            indexes: vec![
                IndexState {
                    collection: "jobs",
                    name: "status_1_due_at_1".into(),
                    keys: doc! { "status": 1, "due_at": 1 },
                    created: true,
                },
                IndexState { collection: "jobs", name: "ttl_1".into(), keys: doc! { "ttl": 1 }, created: false },
            ],
            shards: vec![
                ShardState { collection: "jobs", outcome: ShardOutcome::Sharded },
                ShardState { collection: "webhook_ids", outcome: ShardOutcome::AlreadySharded },
                ShardState { collection: "idempotency", outcome: ShardOutcome::OtherKey(doc! { "x": 1 }) },
            ],
        };
        let text = report.summary();
        assert!(text.contains("created index jobs.status_1_due_at_1"), "{text}");
        assert!(text.contains("exists  index jobs.ttl_1"), "{text}");
        assert!(text.contains("sharded jobs on {_id: \"hashed\"}"), "{text}");
        assert!(text.contains("exists  sharding of webhook_ids"), "{text}");
        assert!(text.contains("WARNING idempotency is sharded on"), "{text}");
        assert!(
            text.ends_with("1 index(es) created, 1 already there; 1 collection(s) sharded, 1 already sharded"),
            "{text}"
        );
    }
}
