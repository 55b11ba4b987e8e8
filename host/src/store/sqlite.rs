//! The store on the embedded database. A submit writes the job and its queue
//! entry in one transaction, so the embedded backend never needs the sweeper
//! to recover a lost enqueue.

use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::{OptionalExtension, Row, params};

use super::{Attempt, AttemptLog, CacheEntry, Flight, Inserted, Overdue, Result, Store, StoreError, WebhookClaim};
use crate::db::{Db, DbError};
use crate::model::{
    AttemptRecord, Job, JobQuery, Millis, NewJob, Notify, NotifyAttempt, Outcome, Priority, Redaction, Status, now_ms,
    prefix_end,
};
use crate::queue::fair::Fairness;
use crate::queue::{Lease, Message};

pub struct SqliteStore {
    db: Arc<Db>,
    /// The queue is the same database: write the queue row with the job.
    /// False when the queue is elsewhere (Redis): the service enqueues.
    queue_inline: bool,
    /// How the inline queue rows are tagged (the queue's own settings).
    fair: Arc<Fairness>,
}

impl SqliteStore {
    pub fn new(db: Arc<Db>, queue_inline: bool) -> SqliteStore {
        SqliteStore { db, queue_inline, fair: Arc::default() }
    }

    /// `lease`'s entry and token when the queue is this database, whose
    /// entries the `_held` writes ack with the job's change.
    fn own_entry(&self, lease: &Lease) -> Option<(i64, i64)> {
        self.queue_inline.then(|| crate::queue::sqlite::held(lease).ok()).flatten()
    }

    /// Tags inline queue rows by `fair` (the `SqliteQueue`'s settings).
    pub fn with_fairness(mut self, fair: Arc<Fairness>) -> SqliteStore {
        self.fair = fair;
        self
    }

    /// `insert_batch`, with the queue rows (`inline`) or without.
    async fn insert_many(&self, jobs: &[NewJob], inline: bool) -> Result<Vec<Inserted>> {
        let jobs = jobs.to_vec();
        let inline = inline.then(|| self.fair.clone());
        // One write: every job (and its queue row) in one savepoint of one
        // commit, all or none; none either when a key conflicts.
        let out = self
            .db
            .write(move |c| {
                c.execute_batch("SAVEPOINT batch")?;
                let out =
                    jobs.iter().map(|j| insert_job(c, j, inline.as_deref())).collect::<rusqlite::Result<Vec<_>>>()?;
                if out.iter().any(|i| matches!(i, Inserted::KeyConflict)) {
                    c.execute_batch("ROLLBACK TO batch; RELEASE batch")?;
                } else {
                    c.execute_batch("RELEASE batch")?;
                }
                Ok(out)
            })
            .await?;
        if out.iter().any(|i| matches!(i, Inserted::Created { .. })) {
            self.db.queue_signal.notify_waiters();
        }
        Ok(out)
    }
}

/// What [`init`] found and did to the embedded database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteInit {
    /// The schema version (`PRAGMA user_version`) before; None for a new file.
    pub before: Option<i64>,
    /// The schema version now, every migration run.
    pub after: i64,
}

impl SqliteInit {
    /// A short account for people.
    pub fn summary(&self, path: &std::path::Path) -> String {
        let what = match self.before {
            None => format!("created, schema version {} (every migration run)", self.after),
            Some(v) if v < self.after => format!("migrated from schema version {v} to {}", self.after),
            Some(v) => format!("schema version {v}, up to date: nothing to do"),
        };
        format!("SQLite store {}: {what}; its indexes are part of the schema, and it has no sharding", path.display())
    }
}

/// Opens (creating if needed) the embedded database at `path`, which runs
/// every pending migration: `vendorhost store init` on the embedded store.
pub fn init(path: &std::path::Path) -> Result<SqliteInit> {
    let version = |c: &rusqlite::Connection| c.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0));
    let before = if path.exists() {
        let c = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        Some(version(&c)?)
    } else {
        None
    };
    let db = Db::open(path)?;
    let after = db.lookup(version)?;
    Ok(SqliteInit { before, after })
}

/// Runs `stmt` and decodes its usage rows. A plain loop on purpose: through
/// `query_map(..).collect()` each row is moved across several iterator
/// adapters, which in a debug build cost more than the query itself.
fn usage_rows(
    stmt: &mut rusqlite::CachedStatement<'_>,
    args: impl rusqlite::Params,
) -> rusqlite::Result<Vec<crate::model::usage::UsageRow>> {
    let mut rows = stmt.query(args)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(usage_row(r)?);
    }
    Ok(out)
}

/// One usage row: key, vendor, bucket start, then the five sums.
fn usage_row(r: &Row<'_>) -> rusqlite::Result<crate::model::usage::UsageRow> {
    let u = |i: usize| r.get::<_, i64>(i).map(|v| v.max(0) as u64);
    Ok(crate::model::usage::UsageRow {
        key: r.get(0)?,
        vendor: r.get(1)?,
        from: r.get(2)?,
        usage: crate::model::usage::UsageDelta {
            calls: u(3)?,
            bytes_in: u(4)?,
            bytes_out: u(5)?,
            cpu_us: u(6)?,
            latency_ms: u(7)?,
        },
    })
}

impl From<DbError> for StoreError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Sqlite(e) => StoreError::Sqlite(e),
            DbError::Closed => StoreError::Closed,
            other => StoreError::Corrupt(other.to_string()),
        }
    }
}

/// A job row's columns as `job_from_row` reads them, by position. A macro so
/// that the statements that read rows are literals built at compile time
/// (`concat!`), not formatted at every call (issue 24: ~1 % of a GET).
macro_rules! job_columns {
    () => {
        "request_id, vendor, status, data, created_at, updated_at, attempts, result, error, vendor_ref, webhook_deadline, owner, redactions, notify_url, notify_attempts, notify_status, notify_error, notify_delivered_at, notify_next_at, attempts_log, cached, priority"
    };
}
const JOB_COLUMNS: &str = job_columns!();

fn job_from_row(r: &Row<'_>) -> rusqlite::Result<Job> {
    let status: String = r.get(2)?;
    Ok(Job {
        request_id: r.get(0)?,
        vendor: r.get(1)?,
        status: Status::parse(&status).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                2,
                rusqlite::types::Type::Text,
                format!("unknown status {status:?}").into(),
            )
        })?,
        data: r.get(3)?,
        created_at: r.get(4)?,
        updated_at: r.get(5)?,
        attempts: r.get::<_, i64>(6)?.max(0) as u32,
        result: r.get(7)?,
        error: r.get(8)?,
        vendor_ref: r.get(9)?,
        webhook_deadline: r.get(10)?,
        owner: r.get(11)?,
        redactions: match r.get::<_, Option<String>>(12)? {
            None => Vec::new(),
            Some(text) => serde_json::from_str::<Vec<Redaction>>(&text)
                .map_err(|e| rusqlite::Error::FromSqlConversionFailure(12, rusqlite::types::Type::Text, Box::new(e)))?,
        },
        notify: match r.get::<_, Option<String>>(13)? {
            None => None,
            Some(url) => Some(Notify {
                url,
                attempts: r.get::<_, i64>(14)?.clamp(0, i64::from(u32::MAX)) as u32,
                last_status: r.get::<_, Option<i64>>(15)?.and_then(|s| u16::try_from(s).ok()),
                last_error: r.get(16)?,
                delivered_at: r.get(17)?,
                next_at: r.get(18)?,
            }),
        },
        attempts_log: match r.get::<_, Option<String>>(19)? {
            None => Vec::new(),
            Some(text) => serde_json::from_str::<Vec<AttemptRecord>>(&text)
                .map_err(|e| rusqlite::Error::FromSqlConversionFailure(19, rusqlite::types::Type::Text, Box::new(e)))?,
        },
        // By position, as the rest: a lookup by name compares every
        // column's name (~1 % of a GET).
        cached: r.get::<_, i64>(20)? != 0,
        priority: priority_of(r.get(21)?),
    })
}

/// The priority column: NULL (and anything unknown) is `normal`.
fn priority_of(text: Option<String>) -> Priority {
    text.as_deref().and_then(Priority::parse).unwrap_or_default()
}

/// The redactions column: JSON text, NULL when there are none.
fn redactions_text(redactions: &[Redaction]) -> Option<String> {
    if redactions.is_empty() { None } else { serde_json::to_string(redactions).ok() }
}

/// Writes one new job (and with `inline` its queue row) inside the caller's
/// write, honouring its idempotency key.
fn insert_job(c: &rusqlite::Connection, job: &NewJob, inline: Option<&Fairness>) -> rusqlite::Result<Inserted> {
    if let Some(idem) = &job.idempotency {
        let existing: Option<(String, Option<String>, Option<i64>)> = c
            .prepare_cached("SELECT request_id, idem_hash, idem_expires FROM jobs WHERE idem_key = ?1")?
            .query_row([&idem.key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        if let Some((id, hash, expires)) = existing {
            if expires.unwrap_or(0) > job.created_at {
                return Ok(if hash.as_deref() == Some(idem.body_hash.as_str()) {
                    Inserted::Existing { request_id: id }
                } else {
                    Inserted::KeyConflict
                });
            }
            // The key expired: it binds the new job from now on.
            c.prepare_cached("UPDATE jobs SET idem_key = NULL WHERE request_id = ?1")?.execute([&id])?;
        }
    }
    let (key, hash, expires) = match &job.idempotency {
        Some(i) => (Some(i.key.as_str()), Some(i.body_hash.as_str()), Some(i.expires_at)),
        None => (None, None, None),
    };
    c.prepare_cached(
        "INSERT INTO jobs (request_id, vendor, status, data, created_at, updated_at, due_at, attempts, owner, queued, idem_key, idem_hash, idem_expires,
                           notify_url, notify_next_at, priority)
         VALUES (?1, ?2, 'pending', ?3, ?4, ?4, ?4, 0, ?5, ?9, ?6, ?7, ?8, ?10, CASE WHEN ?10 IS NULL THEN NULL ELSE ?4 END,
                 ?11)",
    )?
    .execute(params![
        job.request_id,
        job.vendor,
        job.data,
        job.created_at,
        job.owner,
        key,
        hash,
        expires,
        inline.is_some(),
        job.notify_url,
        (job.priority != Priority::Normal).then_some(job.priority.as_str()),
    ])?;
    if let Some(fair) = inline {
        let msg = Message::new(&job.request_id, &job.vendor)
            .traced(job.trace.clone())
            .owned(job.owner.as_deref(), job.priority);
        crate::queue::fair::insert(c, std::slice::from_ref(&msg), fair, job.created_at)?;
    }
    Ok(Inserted::Created { enqueued: inline.is_some() })
}

/// Jobs an error prefix may match before a listing stops using the error
/// index (and sorting the matches) and walks the time order instead.
const ERROR_PROBE: i64 = 2_000;

/// The listing query for `q` selecting `columns`, and its arguments. Each
/// filter is a plain comparison on an indexed column (`jobs_list_*`), the
/// cursor a row-value comparison; SQLite serves every combination from one
/// of those indexes (the contract tests read its query plans).
///
/// The error prefix is a range `[prefix, prefix_end)`. With `error_index`
/// it may seek `jobs_list_error` (its matches are then sorted: right when
/// they are few); without, the range is only a filter (`+error`) on a walk
/// of the time order, which stops after `limit` matches (right when they
/// are many).
pub fn list_sql(q: &JobQuery, columns: &str, error_index: bool) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value as V;
    let mut cond: Vec<String> = Vec::new();
    let mut args: Vec<V> = Vec::new();
    let arg = |v: V, args: &mut Vec<V>| {
        args.push(v);
        format!("?{}", args.len())
    };
    if let Some(o) = &q.owner {
        let p = arg(V::Text(o.clone()), &mut args);
        cond.push(format!("owner = {p}"));
    }
    if let Some(s) = q.status {
        let p = arg(V::Text(s.as_str().to_string()), &mut args);
        cond.push(format!("status = {p}"));
    }
    if let Some(v) = &q.vendor {
        let p = arg(V::Text(v.clone()), &mut args);
        cond.push(format!("vendor = {p}"));
    }
    if let Some(e) = q.error_prefix.as_deref().filter(|e| !e.is_empty()) {
        let p = arg(V::Text(e.to_string()), &mut args);
        let col = if error_index { "error" } else { "+error" };
        cond.push(format!("{col} >= {p}"));
        if let Some(end) = prefix_end(e) {
            let p = arg(V::Text(end), &mut args);
            cond.push(format!("{col} < {p}"));
        }
    }
    if let Some(t) = q.created_after {
        let p = arg(V::Integer(t), &mut args);
        cond.push(format!("created_at >= {p}"));
    }
    if let Some(t) = q.created_before {
        let p = arg(V::Integer(t), &mut args);
        cond.push(format!("created_at < {p}"));
    }
    if let Some((at, id)) = &q.before {
        let a = arg(V::Integer(*at), &mut args);
        let b = arg(V::Text(id.clone()), &mut args);
        cond.push(format!("(created_at, request_id) < ({a}, {b})"));
    }
    let limit = arg(V::Integer(i64::try_from(q.limit).unwrap_or(i64::MAX)), &mut args);
    let filter = if cond.is_empty() { String::new() } else { format!("WHERE {}", cond.join(" AND ")) };
    (format!("SELECT {columns} FROM jobs {filter} ORDER BY created_at DESC, request_id DESC LIMIT {limit}"), args)
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert(&self, job: &NewJob) -> Result<Inserted> {
        let job = job.clone();
        let inline = self.queue_inline.then(|| self.fair.clone());
        let out = self.db.write(move |c| insert_job(c, &job, inline.as_deref())).await?;
        if matches!(out, Inserted::Created { .. }) {
            self.db.queue_signal.notify_waiters();
        }
        Ok(out)
    }

    async fn insert_batch(&self, jobs: &[NewJob]) -> Result<Vec<Inserted>> {
        self.insert_many(jobs, self.queue_inline).await
    }

    async fn insert_batch_unqueued(&self, jobs: &[NewJob]) -> Result<Vec<Inserted>> {
        self.insert_many(jobs, false).await
    }

    async fn list(&self, query: &JobQuery) -> Result<Vec<Job>> {
        let query = query.clone();
        Ok(self
            .db
            .read(move |c| {
                // How common the error prefix is decides the plan: a count
                // on the error index, capped.
                let error_index = match query.error_prefix.as_deref().filter(|e| !e.is_empty()) {
                    None => true,
                    Some(prefix) => {
                        let end = prefix_end(prefix);
                        let n: i64 = c
                            .prepare_cached(
                                "SELECT count(*) FROM (SELECT 1 FROM jobs WHERE error >= ?1 AND (?2 IS NULL OR error < ?2) LIMIT ?3)",
                            )?
                            .query_row(params![prefix, end, ERROR_PROBE], |r| r.get(0))?;
                        n < ERROR_PROBE
                    }
                };
                let (sql, args) = list_sql(&query, JOB_COLUMNS, error_index);
                c.prepare_cached(&sql)?.query_map(rusqlite::params_from_iter(args.iter()), job_from_row)?.collect()
            })
            .await?)
    }

    async fn mark_queued(&self, request_ids: &[String], now: Millis) -> Result<()> {
        let ids = request_ids.to_vec();
        self.db
            .write(move |c| {
                let mut st = c.prepare_cached(
                    "UPDATE jobs SET queued = 1,
                       due_at = CASE WHEN status IN ('pending', 'processing') AND vendor_ref IS NULL THEN ?2 ELSE due_at END
                     WHERE request_id = ?1",
                )?;
                for id in &ids {
                    st.execute(params![id, now])?;
                }
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn get(&self, request_id: &str) -> Result<Option<Job>> {
        Ok(self.db.lookup(|c| {
            c.prepare_cached(concat!("SELECT ", job_columns!(), " FROM jobs WHERE request_id = ?1"))?
                .query_row([request_id], job_from_row)
                .optional()
        })?)
    }

    async fn start_attempt(&self, request_id: &str, now: Millis, lease_until: Millis) -> Result<Attempt> {
        let id = request_id.to_string();
        Ok(self
            .db
            .write(move |c| {
                // OR FAIL, not the default ABORT: SQLite runs RETURNING as a
                // trigger, and a statement that has a trigger and whose
                // constraint checks may abort it copies every page it changes
                // to a statement journal first, to undo the statement alone
                // (~1 % of a job's CPU, in the lease's pick too). FAIL keeps
                // what the statement already changed, which for one row by
                // its key is nothing: the checks run before the row is
                // written.
                let started = c
                    .prepare_cached(concat!(
                        "UPDATE OR FAIL jobs SET status = 'processing', attempts = attempts + 1, updated_at = ?2, due_at = ?3
                         WHERE request_id = ?1 AND vendor_ref IS NULL
                           AND (status = 'pending' OR (status = 'processing' AND (due_at IS NULL OR due_at <= ?2)))
                         RETURNING ",
                        job_columns!()
                    ))?
                    .query_row(params![id, now, lease_until], job_from_row)
                    .optional()?;
                if let Some(job) = started {
                    return Ok(Attempt::Started(Box::new(job)));
                }
                let held: Option<Option<Millis>> = c
                    .prepare_cached(
                        "SELECT due_at FROM jobs WHERE request_id = ?1 AND status = 'processing' AND vendor_ref IS NULL",
                    )?
                    .query_row([&id], |r| r.get(0))
                    .optional()?;
                Ok(match held.flatten() {
                    Some(until) => Attempt::Held { until },
                    None => Attempt::Over,
                })
            })
            .await?)
    }

    async fn hold(&self, request_id: &str, until: Millis) -> Result<()> {
        let id = request_id.to_string();
        self.db
            .write(move |c| {
                c.prepare_cached(
                    "UPDATE jobs SET due_at = ?2 WHERE request_id = ?1 AND status = 'processing' AND vendor_ref IS NULL",
                )?
                .execute(params![id, until])
            })
            .await?;
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
        let (id, err) = (request_id.to_string(), error.to_string());
        let log = attempt_json(attempt)?;
        self.db
            .write(move |c| {
                with_history(c, &id, log.as_ref(), |history| {
                    c.prepare_cached(
                        "UPDATE jobs SET error = ?2, updated_at = ?3, due_at = ?4,
                           attempts_log = COALESCE(?5, attempts_log)
                         WHERE request_id = ?1 AND status IN ('pending', 'processing')",
                    )?
                    .execute(params![id, err, now, due, history])
                })
            })
            .await?;
        Ok(())
    }

    async fn record_attempt(&self, request_id: &str, attempt: &AttemptRecord, keep: usize) -> Result<()> {
        let id = request_id.to_string();
        let record = serde_json::to_value(attempt).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.db.write(move |c| append_attempt(c, &id, &record, keep)).await?;
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
        let (id, vref, log) = (request_id.to_string(), vendor_ref.to_string(), attempt_json(attempt)?);
        Ok(self.db.write(move |c| vendor_ref_row(c, &id, &vref, deadline, now, log.as_ref())).await? == 1)
    }

    async fn set_vendor_ref_held(
        &self,
        request_id: &str,
        vendor_ref: &str,
        deadline: Millis,
        now: Millis,
        attempt: Option<&AttemptLog<'_>>,
        lease: &Lease,
    ) -> Result<(bool, bool)> {
        let Some((entry, token)) = self.own_entry(lease) else {
            return Ok((self.set_vendor_ref(request_id, vendor_ref, deadline, now, attempt).await?, false));
        };
        let (id, vref, log) = (request_id.to_string(), vendor_ref.to_string(), attempt_json(attempt)?);
        Ok(self
            .db
            .write(move |c| {
                let set = vendor_ref_row(c, &id, &vref, deadline, now, log.as_ref())? == 1;
                crate::queue::sqlite::ack_row(c, entry, token)?;
                Ok((set, true))
            })
            .await?)
    }

    async fn find_by_vendor_ref(&self, vendor: &str, vendor_ref: &str) -> Result<Option<String>> {
        Ok(self.db.lookup(|c| {
            c.prepare_cached("SELECT request_id FROM jobs WHERE vendor = ?1 AND vendor_ref = ?2")?
                .query_row([vendor, vendor_ref], |row| row.get(0))
                .optional()
        })?)
    }

    async fn finish(
        &self,
        request_id: &str,
        outcome: &Outcome,
        now: Millis,
        attempt: Option<&AttemptLog<'_>>,
    ) -> Result<bool> {
        let (id, outcome, inline, log) =
            (request_id.to_string(), outcome.clone(), self.queue_inline, attempt_json(attempt)?);
        Ok(self.db.write(move |c| finish_row(c, &id, &outcome, now, log.as_ref(), inline)).await? == 1)
    }

    async fn finish_held(
        &self,
        request_id: &str,
        outcome: &Outcome,
        now: Millis,
        attempt: Option<&AttemptLog<'_>>,
        lease: &Lease,
    ) -> Result<(bool, bool)> {
        let Some((entry, token)) = self.own_entry(lease) else {
            return Ok((self.finish(request_id, outcome, now, attempt).await?, false));
        };
        let (id, outcome, log) = (request_id.to_string(), outcome.clone(), attempt_json(attempt)?);
        Ok(self
            .db
            .write(move |c| {
                let ended = finish_row(c, &id, &outcome, now, log.as_ref(), true)? == 1;
                // A failure this call wrote goes to the dead letters with its entry.
                let acked = !(ended && matches!(outcome, Outcome::Failed { .. }));
                if acked {
                    crate::queue::sqlite::ack_row(c, entry, token)?;
                }
                Ok((ended, acked))
            })
            .await?)
    }

    async fn reopen(&self, request_id: &str, now: Millis) -> Result<bool> {
        let id = request_id.to_string();
        Ok(self
            .db
            .write(move |c| {
                c.prepare_cached(
                    "UPDATE jobs SET status = 'pending', attempts = 0, error = NULL, result = NULL, redactions = NULL,
                     vendor_ref = NULL, webhook_deadline = NULL, updated_at = ?2, due_at = ?2, queued = 0
                     WHERE request_id = ?1 AND status = 'failed'",
                )?
                .execute(params![id, now])
            })
            .await?
            == 1)
    }

    async fn unqueued_pending(&self, before: Millis, limit: usize) -> Result<Vec<(String, String)>> {
        Ok(self
            .db
            .read(move |c| {
                c.prepare_cached(
                    // `updated_at` too: a replayed job (reopened, its enqueue on the way)
                    // is not the sweeper's until it has waited as long.
                    "SELECT request_id, vendor FROM jobs WHERE status = 'pending' AND queued = 0 AND created_at < ?1
                     AND updated_at < ?1 LIMIT ?2",
                )?
                .query_map(params![before, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
            })
            .await?)
    }

    async fn overdue(&self, before: Millis, after: Option<(Millis, String)>, limit: usize) -> Result<Vec<Overdue>> {
        let (after_due, after_id) = after.unwrap_or((Millis::MIN, String::new()));
        Ok(self
            .db
            .read(move |c| {
                // The conditions are the partial index's (jobs_due).
                c.prepare_cached(
                    "SELECT request_id, vendor, due_at, owner, priority FROM jobs
                     WHERE status IN ('pending', 'processing') AND vendor_ref IS NULL
                       AND due_at < ?1 AND (due_at, request_id) > (?2, ?3)
                     ORDER BY due_at, request_id LIMIT ?4",
                )?
                .query_map(params![before, after_due, after_id, limit as i64], |r| {
                    Ok(Overdue {
                        request_id: r.get(0)?,
                        vendor: r.get(1)?,
                        due_at: r.get(2)?,
                        owner: r.get(3)?,
                        priority: priority_of(r.get(4)?),
                    })
                })?
                .collect()
            })
            .await?)
    }

    async fn overdue_webhooks(&self, now: Millis, limit: usize) -> Result<Vec<String>> {
        Ok(self
            .db
            .read(move |c| {
                c.prepare_cached(
                    "SELECT request_id FROM jobs WHERE webhook_deadline IS NOT NULL AND status = 'processing' AND webhook_deadline < ?1 LIMIT ?2",
                )?
                .query_map(params![now, limit as i64], |r| r.get(0))?
                .collect()
            })
            .await?)
    }

    async fn claim_webhook(&self, vendor: &str, webhook_id: &str, until: Millis) -> Result<WebhookClaim> {
        let key = format!("{vendor}:{webhook_id}");
        Ok(self
            .db
            .write(move |c| {
                // Seen, but an expired record (a lapsed claim, an old id) not
                // yet purged does not count.
                let claimed = c
                    .prepare_cached(
                        "INSERT INTO webhook_ids (key, expires_at, done) VALUES (?1, ?2, 0)
                         ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at, done = 0 WHERE expires_at < ?3",
                    )?
                    .execute(params![key, until, now_ms()])?;
                if claimed == 1 {
                    return Ok(WebhookClaim::New);
                }
                let done: bool =
                    c.prepare_cached("SELECT done FROM webhook_ids WHERE key = ?1")?.query_row([&key], |r| r.get(0))?;
                Ok(if done { WebhookClaim::Done } else { WebhookClaim::InProgress })
            })
            .await?)
    }

    async fn complete_webhook(&self, vendor: &str, webhook_id: &str, expires_at: Millis) -> Result<()> {
        let key = format!("{vendor}:{webhook_id}");
        self.db
            .write(move |c| {
                c.prepare_cached(
                    "INSERT INTO webhook_ids (key, expires_at, done) VALUES (?1, ?2, 1)
                     ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at, done = 1",
                )?
                .execute(params![key, expires_at])
            })
            .await?;
        Ok(())
    }

    async fn forget_webhook(&self, vendor: &str, webhook_id: &str) -> Result<()> {
        let key = format!("{vendor}:{webhook_id}");
        self.db.write(move |c| c.prepare_cached("DELETE FROM webhook_ids WHERE key = ?1")?.execute([&key])).await?;
        Ok(())
    }

    async fn purge(&self, before: Millis, now: Millis) -> Result<u64> {
        Ok(self
            .db
            .write(move |c| {
                let mut n = c
                    .prepare_cached("DELETE FROM jobs WHERE status IN ('complete', 'failed') AND updated_at < ?1")?
                    .execute([before])?;
                // Its own statement: the partial index `jobs_cancelled` serves it.
                n += c
                    .prepare_cached("DELETE FROM jobs WHERE status = 'cancelled' AND updated_at < ?1")?
                    .execute([before])?;
                c.prepare_cached("DELETE FROM webhook_ids WHERE expires_at < ?1")?.execute([now])?;
                c.prepare_cached("DELETE FROM result_cache WHERE expires_at < ?1")?.execute([now])?;
                c.prepare_cached("DELETE FROM cache_flights WHERE until < ?1")?.execute([now])?;
                c.prepare_cached("DELETE FROM cache_waiters WHERE until < ?1")?.execute([before.min(now)])?;
                c.prepare_cached("UPDATE jobs SET idem_key = NULL WHERE idem_key IS NOT NULL AND idem_expires < ?1")?
                    .execute([now])?;
                Ok(n as u64)
            })
            .await?)
    }

    async fn due_notifications(&self, now: Millis, limit: usize) -> Result<Vec<Job>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(self
            .db
            .read(move |c| {
                c.prepare_cached(concat!(
                    "SELECT ",
                    job_columns!(),
                    " FROM jobs
                     WHERE status IN ('complete', 'failed', 'cancelled') AND notify_next_at <= ?1
                     ORDER BY notify_next_at LIMIT ?2"
                ))?
                .query_map(params![now, limit], job_from_row)?
                .collect()
            })
            .await?)
    }

    async fn claim_notification(&self, request_id: &str, due: Millis, until: Millis) -> Result<bool> {
        let id = request_id.to_string();
        Ok(self
            .db
            .write(move |c| {
                c.prepare_cached("UPDATE jobs SET notify_next_at = ?3 WHERE request_id = ?1 AND notify_next_at = ?2")?
                    .execute(params![id, due, until])
            })
            .await?
            == 1)
    }

    async fn record_notification(&self, request_id: &str, attempt: &NotifyAttempt) -> Result<()> {
        let id = request_id.to_string();
        let a = attempt.clone();
        self.db
            .write(move |c| {
                c.prepare_cached(
                    "UPDATE jobs SET notify_attempts = notify_attempts + 1, notify_status = ?2, notify_error = ?3,
                       notify_delivered_at = ?4, notify_next_at = ?5
                     WHERE request_id = ?1 AND notify_url IS NOT NULL",
                )?
                .execute(params![id, a.status, a.error, a.delivered_at, a.next_at])
            })
            .await?;
        Ok(())
    }

    async fn count_active(&self, owner: &str) -> Result<u64> {
        let owner = owner.to_string();
        let n: i64 = self
            .db
            .read(move |c| {
                c.prepare_cached("SELECT count(*) FROM jobs WHERE owner = ?1 AND status IN ('pending', 'processing')")?
                    .query_row(params![owner], |r| r.get(0))
            })
            .await?;
        Ok(n.max(0) as u64)
    }

    async fn take_quota(&self, id: &str, limit: u64, expires_at: Millis) -> Result<bool> {
        let id = id.to_string();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // One write transaction (the single writer): create the counter if
        // new, then take a unit only below the limit. Expired counters go.
        Ok(self
            .db
            .write(move |c| {
                let now = crate::model::now_ms();
                c.prepare_cached("DELETE FROM quota_usage WHERE id = ?1 AND expires_at <= ?2")?
                    .execute(params![id, now])?;
                c.prepare_cached("INSERT OR IGNORE INTO quota_usage (id, used, expires_at) VALUES (?1, 0, ?2)")?
                    .execute(params![id, expires_at])?;
                let n = c
                    .prepare_cached("UPDATE quota_usage SET used = used + 1 WHERE id = ?1 AND used < ?2")?
                    .execute(params![id, limit])?;
                Ok(n == 1)
            })
            .await?)
    }

    async fn quota_used(&self, id: &str, now: Millis) -> Result<u64> {
        let id = id.to_string();
        let used: Option<i64> = self
            .db
            .read(move |c| {
                c.prepare_cached("SELECT used FROM quota_usage WHERE id = ?1 AND expires_at > ?2")?
                    .query_row(params![id, now], |r| r.get(0))
                    .optional()
            })
            .await?;
        Ok(used.unwrap_or(0).max(0) as u64)
    }

    async fn record_usage(
        &self,
        key: &str,
        vendor: &str,
        hour: Millis,
        d: &crate::model::usage::UsageDelta,
    ) -> Result<()> {
        let (key, vendor, d) = (key.to_string(), vendor.to_string(), *d);
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.db
            .write(move |c| {
                // The hour's row and its day's, in one write transaction.
                let day = hour.div_euclid(crate::model::usage::DAY_MS) * crate::model::usage::DAY_MS;
                for (table, col, at) in [("usage_rollup", "hour", hour), ("usage_rollup_day", "day", day)] {
                    c.prepare_cached(&format!(
                        "INSERT INTO {table} (key, vendor, {col}, calls, bytes_in, bytes_out, cpu_us, latency_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                         ON CONFLICT (key, vendor, {col}) DO UPDATE SET calls = calls + excluded.calls,
                            bytes_in = bytes_in + excluded.bytes_in, bytes_out = bytes_out + excluded.bytes_out,
                            cpu_us = cpu_us + excluded.cpu_us, latency_ms = latency_ms + excluded.latency_ms"
                    ))?
                    .execute(params![
                        key,
                        vendor,
                        at,
                        n(d.calls),
                        n(d.bytes_in),
                        n(d.bytes_out),
                        n(d.cpu_us),
                        n(d.latency_ms)
                    ])?;
                }
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn usage(&self, q: &crate::model::usage::UsageQuery) -> Result<Vec<crate::model::usage::UsageRow>> {
        let q = q.clone();
        Ok(self
            .db
            .read(move |c| {
                // Each table holds one bucket size, the granularity's: its
                // rows are the answer as they are, nothing to group.
                let (table, col) = match q.granularity {
                    crate::model::usage::Granularity::Hour => ("usage_rollup", "hour"),
                    crate::model::usage::Granularity::Day => ("usage_rollup_day", "day"),
                };
                // Walk the (key, vendor) pairs and seek each one's range in
                // the primary key: rows come out in the answer's order, with
                // no lookup through the time index and no sort (CROSS JOIN
                // fixes the loop order whatever the planner's statistics).
                let mut sql = format!(
                    "SELECT u.key, u.vendor, u.{col}, u.calls, u.bytes_in, u.bytes_out, u.cpu_us, u.latency_ms
                     FROM usage_pairs p CROSS JOIN {table} u
                       ON u.key = p.key AND u.vendor = p.vendor AND u.{col} >= ?1 AND u.{col} < ?2"
                );
                let mut args: Vec<rusqlite::types::Value> = vec![q.from.into(), q.to.into()];
                let mut filters = Vec::new();
                if let Some(k) = &q.key {
                    args.push(k.clone().into());
                    filters.push(format!("p.key = ?{}", args.len()));
                }
                if let Some(v) = &q.vendor {
                    args.push(v.clone().into());
                    filters.push(format!("p.vendor = ?{}", args.len()));
                }
                if !filters.is_empty() {
                    sql.push_str(&format!(" WHERE {}", filters.join(" AND ")));
                }
                sql.push_str(&format!(" ORDER BY p.key, p.vendor, u.{col}"));
                usage_rows(&mut c.prepare_cached(&sql)?, rusqlite::params_from_iter(args.iter()))
            })
            .await?)
    }

    async fn usage_totals(&self, from: Millis, to: Millis) -> Result<Vec<crate::model::usage::UsageRow>> {
        Ok(self
            .db
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT p.key, p.vendor, ?1, sum(u.calls), sum(u.bytes_in), sum(u.bytes_out), sum(u.cpu_us),
                        sum(u.latency_ms)
                     FROM usage_pairs p CROSS JOIN usage_rollup u
                       ON u.key = p.key AND u.vendor = p.vendor AND u.hour >= ?1 AND u.hour < ?2
                     GROUP BY p.key, p.vendor ORDER BY p.key, p.vendor",
                )?;
                usage_rows(&mut stmt, params![from, to])
            })
            .await?)
    }

    async fn cache_get(&self, key: &str, now: Millis) -> Result<Option<CacheEntry>> {
        let key = key.to_string();
        let row = self
            .db
            .read(move |c| {
                c.prepare_cached(
                    "SELECT key, vendor, result, redactions, stored_at, expires_at FROM result_cache
                     WHERE key = ?1 AND expires_at > ?2",
                )?
                .query_row(params![key, now], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, Option<String>>(3)?, r.get(4)?, r.get(5)?))
                })
                .optional()
            })
            .await?;
        let Some((key, vendor, result, redactions, stored_at, expires_at)) = row else { return Ok(None) };
        let redactions = match redactions {
            None => Vec::new(),
            Some(text) => serde_json::from_str::<Vec<Redaction>>(&text)
                .map_err(|e| StoreError::Corrupt(format!("cached result {key}: redactions: {e}")))?,
        };
        Ok(Some(CacheEntry { key, vendor, result, redactions, stored_at, expires_at }))
    }

    async fn cache_put(&self, entry: &CacheEntry) -> Result<()> {
        let e = entry.clone();
        self.db
            .write(move |c| {
                c.prepare_cached(
                    "INSERT OR REPLACE INTO result_cache (key, vendor, result, redactions, stored_at, expires_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![
                    e.key,
                    e.vendor,
                    e.result,
                    redactions_text(&e.redactions),
                    e.stored_at,
                    e.expires_at
                ])
            })
            .await?;
        Ok(())
    }

    async fn claim_flight(&self, key: &str, request_id: &str, until: Millis, now: Millis) -> Result<Flight> {
        let (key, id) = (key.to_string(), request_id.to_string());
        // One write (the single writer): take the claim if free, lapsed or
        // the job's own, then read who holds it.
        let (leader, held_until): (String, Millis) = self
            .db
            .write(move |c| {
                c.prepare_cached(
                    "INSERT INTO cache_flights (key, leader, until) VALUES (?1, ?2, ?3)
                     ON CONFLICT(key) DO UPDATE SET leader = excluded.leader, until = excluded.until
                     WHERE cache_flights.until <= ?4 OR cache_flights.leader = excluded.leader",
                )?
                .execute(params![key, id, until, now])?;
                c.prepare_cached("SELECT leader, until FROM cache_flights WHERE key = ?1")?
                    .query_row([&key], |r| Ok((r.get(0)?, r.get(1)?)))
            })
            .await?;
        Ok(if leader == request_id { Flight::Leader } else { Flight::Follower { leader, until: held_until } })
    }

    async fn end_flight(&self, key: &str, request_id: &str) -> Result<()> {
        let (key, id) = (key.to_string(), request_id.to_string());
        self.db
            .write(move |c| {
                c.prepare_cached("DELETE FROM cache_flights WHERE key = ?1 AND leader = ?2")?.execute([&key, &id])
            })
            .await?;
        Ok(())
    }

    async fn add_waiter(&self, key: &str, request_id: &str, vendor: &str, until: Millis) -> Result<()> {
        let (key, id, vendor) = (key.to_string(), request_id.to_string(), vendor.to_string());
        self.db
            .write(move |c| {
                c.prepare_cached(
                    "INSERT INTO cache_waiters (key, request_id, vendor, until) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(key, request_id) DO UPDATE SET until = max(until, excluded.until)",
                )?
                .execute(params![key, id, vendor, until])
            })
            .await?;
        Ok(())
    }

    async fn take_waiters(&self, key: &str) -> Result<Vec<(String, String)>> {
        let key = key.to_string();
        Ok(self
            .db
            .write(move |c| {
                let taken = c
                    .prepare_cached("SELECT request_id, vendor FROM cache_waiters WHERE key = ?1")?
                    .query_map([&key], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<Vec<(String, String)>>>()?;
                c.prepare_cached("DELETE FROM cache_waiters WHERE key = ?1")?.execute([&key])?;
                Ok(taken)
            })
            .await?)
    }

    async fn ping(&self) -> Result<()> {
        // Through the writer: a dead writer thread or a file that cannot
        // take a write transaction is not ready, however well reads go.
        self.db.probe_write().await?;
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "sqlite"
    }
}

/// An async vendor's reference on job `id` (`Store::set_vendor_ref`), only
/// while `processing`. Rows changed.
fn vendor_ref_row(
    c: &rusqlite::Connection,
    id: &str,
    vendor_ref: &str,
    deadline: Millis,
    now: Millis,
    log: Option<&(serde_json::Value, usize)>,
) -> rusqlite::Result<usize> {
    with_history(c, id, log, |history| {
        c.prepare_cached(
            "UPDATE jobs SET vendor_ref = ?2, webhook_deadline = ?3, updated_at = ?4, due_at = NULL,
               attempts_log = COALESCE(?5, attempts_log)
             WHERE request_id = ?1 AND status = 'processing'",
        )?
        .execute(params![id, vendor_ref, deadline, now, history])
    })
}

/// The job's end (`Store::finish`): the row changes only from `pending` or
/// `processing`; with the queue inline, a job answered without a call drops
/// its waiting entries. Rows changed (1: this write ended it).
fn finish_row(
    c: &rusqlite::Connection,
    id: &str,
    outcome: &Outcome,
    now: Millis,
    log: Option<&(serde_json::Value, usize)>,
    inline: bool,
) -> rusqlite::Result<usize> {
    let (status, result, error, redactions) = match outcome {
        Outcome::Complete { result, redactions } | Outcome::Cached { result, redactions } => {
            ("complete", Some(result.as_str()), None, redactions_text(redactions))
        }
        Outcome::Failed { error } => ("failed", None, Some(error.as_str()), None),
        Outcome::Cancelled => ("cancelled", None, None, None),
    };
    let cached = matches!(outcome, Outcome::Cached { .. });
    // On completion the last retry error is cleared; on failure it is the reason.
    let n = with_history(c, id, log, |history| {
        c.prepare_cached(
            "UPDATE jobs SET status = ?2, result = ?3, error = ?4, updated_at = ?5, webhook_deadline = NULL, due_at = NULL,
               redactions = ?6, cached = ?7, attempts_log = COALESCE(?8, attempts_log)
             WHERE request_id = ?1 AND status IN ('pending', 'processing')",
        )?
        .execute(params![id, status, result, error, now, redactions, cached, history])
    })?;
    if n == 1 && cached && inline {
        // A job answered without a call (a cache hit at submit, a
        // coalesced follower) has no use for its waiting entries:
        // none is leased again only to be acked. A leased one is
        // its holder's to ack.
        c.prepare_cached("DELETE FROM queue WHERE request_id = ?1 AND leased = 0")?.execute([id])?;
    }
    Ok(n)
}

/// An attempt to append, as JSON, with how many to keep.
fn attempt_json(attempt: Option<&AttemptLog<'_>>) -> Result<Option<(serde_json::Value, usize)>> {
    attempt
        .map(|a| {
            let record = serde_json::to_value(a.record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            Ok((record, a.keep))
        })
        .transpose()
}

/// Appends `record` to job `id`'s history, keeping the latest `keep` (in
/// the caller's transaction; nothing for an unknown job).
fn append_attempt(c: &rusqlite::Connection, id: &str, record: &serde_json::Value, keep: usize) -> rusqlite::Result<()> {
    match appended_history(c, id, record, keep)? {
        Some(text) => set_history(c, id, &text),
        None => Ok(()),
    }
}

/// Runs `update` (a write of job `id`'s row that sets `attempts_log` to its
/// argument when given) with the history `log` appends, so the call is
/// recorded in the same row update as the state it leads to; when the
/// update changed no row (the job had moved on: the call did happen), the
/// history is written on its own. Rows `update` changed.
fn with_history(
    c: &rusqlite::Connection,
    id: &str,
    log: Option<&(serde_json::Value, usize)>,
    update: impl FnOnce(Option<&str>) -> rusqlite::Result<usize>,
) -> rusqlite::Result<usize> {
    let history = match log {
        Some((record, keep)) => appended_history(c, id, record, *keep)?,
        None => None,
    };
    let n = update(history.as_deref())?;
    if n == 0
        && let Some(text) = &history
    {
        set_history(c, id, text)?;
    }
    Ok(n)
}

fn set_history(c: &rusqlite::Connection, id: &str, text: &str) -> rusqlite::Result<()> {
    c.prepare_cached("UPDATE jobs SET attempts_log = ?2 WHERE request_id = ?1")?.execute(params![id, text])?;
    Ok(())
}

/// Job `id`'s history as JSON text with `record` appended and the latest
/// `keep` kept; None for an unknown job.
fn appended_history(
    c: &rusqlite::Connection,
    id: &str,
    record: &serde_json::Value,
    keep: usize,
) -> rusqlite::Result<Option<String>> {
    let text: Option<Option<String>> = c
        .prepare_cached("SELECT attempts_log FROM jobs WHERE request_id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?;
    let Some(text) = text else { return Ok(None) };
    // A history that does not parse is started over, not kept wrong.
    let old: Vec<serde_json::Value> = text.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
    // By reference: the record is not copied (a write may run more than once).
    let mut log: Vec<&serde_json::Value> = old.iter().chain([record]).collect();
    let drop = log.len().saturating_sub(keep);
    log.drain(..drop);
    serde_json::to_string(&log).map(Some).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

#[cfg(test)]
mod tests {
    use super::JOB_COLUMNS;

    /// `job_from_row` reads every column by its position in `JOB_COLUMNS`.
    #[test]
    fn job_from_row_positions_match_the_column_list() {
        let cols: Vec<&str> = JOB_COLUMNS.split(", ").collect();
        let at = |name: &str| cols.iter().position(|c| *c == name);
        for (i, name) in [(0, "request_id"), (2, "status"), (7, "result"), (12, "redactions"), (19, "attempts_log")] {
            assert_eq!(at(name), Some(i), "{name}");
        }
        assert_eq!(at("cached"), Some(20));
        assert_eq!(at("priority"), Some(21));
        assert_eq!(cols.len(), 22);
    }
}
