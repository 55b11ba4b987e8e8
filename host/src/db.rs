//! The embedded database: one SQLite file (WAL) holding both the queue and
//! the store.
//!
//! All writes go through one writer thread that commits them in groups: it
//! takes every operation waiting (up to `MAX_BATCH`), runs them in one
//! transaction, commits once (one fsync), and only then answers each caller.
//! So a submit's 202 leaves after its row is durable, and a thousand submits
//! cost a handful of fsyncs. A write that fails (or panics) must fail alone:
//! then the group is rolled back and run again with each write in its own
//! savepoint (see `writer_loop`). Reads use a small pool of
//! read-only connections, which WAL lets run beside the writer. Each write
//! and each read counts one store operation
//! (`vendorhost_store_operations_total{backend="sqlite"}`; queue work
//! included, the file holding both).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::telemetry;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::{Notify, mpsc, oneshot};

/// Operations committed together at most.
const MAX_BATCH: usize = 512;
/// Rounds of a group's replay that may each lose the transaction to one
/// write before the group fails whole (see `replay`).
const REPLAY_ROUNDS: usize = 8;
/// Read connections kept open.
const READERS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error("database writer stopped")]
    Closed,
}

/// One write waiting in the writer's group: run (again, when the group is
/// replayed), then answered once the group committed or failed.
trait Pending: Send {
    /// Runs the write; `savepoint`: in its own savepoint, rolled back alone
    /// if it fails. Whether it succeeded.
    fn run(&mut self, conn: &Connection, savepoint: bool) -> bool;
    /// Tells the caller. A write that never finished a run (it panicked)
    /// drops its answer channel: the caller sees the writer's error.
    fn answer(self: Box<Self>, committed: Result<(), String>);
    /// Whether its group's commit must reach the disk (fsync) before it is
    /// answered; see `Db::write_unsynced`.
    fn synced(&self) -> bool;
}

type Op = Box<dyn Pending>;

struct Write<R, F> {
    f: F,
    result: Option<rusqlite::Result<R>>,
    tx: oneshot::Sender<Result<R, DbError>>,
    synced: bool,
}

impl<R, F> Pending for Write<R, F>
where
    R: Send,
    F: FnMut(&Connection) -> rusqlite::Result<R> + Send,
{
    fn run(&mut self, conn: &Connection, savepoint: bool) -> bool {
        self.result = None;
        let result = if savepoint { in_savepoint(conn, &mut self.f) } else { (self.f)(conn) };
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn answer(self: Box<Self>, committed: Result<(), String>) {
        let Write { result, tx, .. } = *self;
        let Some(result) = result else { return };
        let out = match committed {
            Ok(()) => result.map_err(DbError::from),
            Err(msg) => Err(DbError::Open { path: PathBuf::new(), message: format!("write not committed: {msg}") }),
        };
        let _ = tx.send(out);
    }

    fn synced(&self) -> bool {
        self.synced
    }
}

pub struct Db {
    path: PathBuf,
    writer: mpsc::Sender<Op>,
    readers: Mutex<Vec<Connection>>,
    /// Woken after a commit that made queue entries visible.
    pub queue_signal: Notify,
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS jobs (
    request_id       TEXT PRIMARY KEY,
    vendor           TEXT NOT NULL,
    status           TEXT NOT NULL,
    data             TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    result           TEXT,
    error            TEXT,
    vendor_ref       TEXT,
    webhook_deadline INTEGER,
    owner            TEXT,
    queued           INTEGER NOT NULL DEFAULT 0,
    idem_key         TEXT,
    idem_hash        TEXT,
    idem_expires     INTEGER
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idem ON jobs(idem_key) WHERE idem_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_unqueued ON jobs(created_at) WHERE status = 'pending' AND queued = 0;
CREATE INDEX IF NOT EXISTS jobs_vendor_ref ON jobs(vendor, vendor_ref) WHERE vendor_ref IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_webhook ON jobs(webhook_deadline) WHERE webhook_deadline IS NOT NULL AND status = 'processing';
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs(updated_at) WHERE status IN ('complete', 'failed');
CREATE TABLE IF NOT EXISTS queue (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    payload     TEXT NOT NULL,
    visible_at  INTEGER NOT NULL,
    deliveries  INTEGER NOT NULL DEFAULT 0,
    leased      INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id  TEXT,
    vendor      TEXT,
    payload     TEXT NOT NULL,
    reason      TEXT NOT NULL,
    died_at     INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_ids (
    key         TEXT PRIMARY KEY,
    expires_at  INTEGER NOT NULL
) WITHOUT ROWID;
"#;

/// Changes to files made by earlier versions, in order; `PRAGMA user_version`
/// counts those applied. Each runs once, in one transaction with its bump.
const MIGRATIONS: &[&str] = &[
    // 1: the job's next due time (lease end or retry time) for recovery of
    // lost queue entries; a fencing token per queue entry that only grows;
    // a lookup of a job's entries; webhook ids in progress (not yet applied).
    r#"
    ALTER TABLE jobs ADD COLUMN due_at INTEGER;
    UPDATE jobs SET due_at = updated_at WHERE status IN ('pending', 'processing') AND vendor_ref IS NULL;
    CREATE INDEX IF NOT EXISTS jobs_due ON jobs(due_at, request_id)
        WHERE status IN ('pending', 'processing') AND vendor_ref IS NULL;
    ALTER TABLE queue ADD COLUMN token INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX IF NOT EXISTS queue_job ON queue(json_extract(payload, '$.request_id'));
    ALTER TABLE webhook_ids ADD COLUMN done INTEGER NOT NULL DEFAULT 1;
    "#,
    // 2: what cleaning removed from a complete job's result (JSON text:
    // [{"path", "kind"}]; NULL when nothing).
    r#"
    ALTER TABLE jobs ADD COLUMN redactions TEXT;
    "#,
    // Job listing (`GET /jobs`), newest first by (created_at, request_id):
    // one index per filter, each ordered for the keyset cursor, plus the
    // error-prefix range; and the purge of cancelled jobs.
    r#"
    CREATE INDEX IF NOT EXISTS jobs_list_created ON jobs(created_at, request_id);
    CREATE INDEX IF NOT EXISTS jobs_list_owner ON jobs(owner, created_at, request_id);
    CREATE INDEX IF NOT EXISTS jobs_list_status ON jobs(status, created_at, request_id);
    CREATE INDEX IF NOT EXISTS jobs_list_vendor ON jobs(vendor, created_at, request_id);
    CREATE INDEX IF NOT EXISTS jobs_list_error ON jobs(error) WHERE error IS NOT NULL;
    CREATE INDEX IF NOT EXISTS jobs_cancelled ON jobs(updated_at) WHERE status = 'cancelled';
    "#,
    // Completion notifications (`notify_url`): the delivery state, and the
    // finished jobs whose next attempt is due (set at insert: a job becomes
    // due for delivery the moment its status is terminal, whoever ended it).
    r#"
    ALTER TABLE jobs ADD COLUMN notify_url TEXT;
    ALTER TABLE jobs ADD COLUMN notify_attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN notify_status INTEGER;
    ALTER TABLE jobs ADD COLUMN notify_error TEXT;
    ALTER TABLE jobs ADD COLUMN notify_delivered_at INTEGER;
    ALTER TABLE jobs ADD COLUMN notify_next_at INTEGER;
    CREATE INDEX IF NOT EXISTS jobs_notify_due ON jobs(status, notify_next_at) WHERE notify_next_at IS NOT NULL;
    "#,
    // The job's latest vendor calls (JSON text: [{"started_at",
    // "duration_ms", "outcome", "error"?}], oldest first; NULL before the
    // first).
    r#"
    ALTER TABLE jobs ADD COLUMN attempts_log TEXT;
    "#,
    // Per-key limits (issue 20): jobs in flight per key (a partial index the
    // count uses), and quota counters, one row per (key, vendor, period).
    r#"
    CREATE INDEX IF NOT EXISTS jobs_owner_active ON jobs(owner) WHERE status IN ('pending', 'processing');
    CREATE TABLE IF NOT EXISTS quota_usage (
        id TEXT PRIMARY KEY,
        used INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
    );
    "#,
    // Usage rollups (issue 20): each vendor call's cost summed per (API key
    // name, vendor, hour start).
    r#"
    CREATE TABLE IF NOT EXISTS usage_rollup (
        key TEXT NOT NULL,
        vendor TEXT NOT NULL,
        hour INTEGER NOT NULL,
        calls INTEGER NOT NULL,
        bytes_in INTEGER NOT NULL,
        bytes_out INTEGER NOT NULL,
        cpu_us INTEGER NOT NULL,
        latency_ms INTEGER NOT NULL,
        PRIMARY KEY (key, vendor, hour)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS usage_rollup_hour ON usage_rollup(hour);
    "#,
    // Daily usage rollups beside the hourly ones (issue 20): `GET /usage`
    // by day reads a month as 30 rows per (key, vendor), not 720.
    r#"
    CREATE TABLE IF NOT EXISTS usage_rollup_day (
        key TEXT NOT NULL,
        vendor TEXT NOT NULL,
        day INTEGER NOT NULL,
        calls INTEGER NOT NULL,
        bytes_in INTEGER NOT NULL,
        bytes_out INTEGER NOT NULL,
        cpu_us INTEGER NOT NULL,
        latency_ms INTEGER NOT NULL,
        PRIMARY KEY (key, vendor, day)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS usage_rollup_day_day ON usage_rollup_day(day);
    INSERT OR IGNORE INTO usage_rollup_day (key, vendor, day, calls, bytes_in, bytes_out, cpu_us, latency_ms)
        SELECT key, vendor, (hour / 86400000) * 86400000, sum(calls), sum(bytes_in), sum(bytes_out), sum(cpu_us),
            sum(latency_ms)
        FROM usage_rollup GROUP BY key, vendor, (hour / 86400000) * 86400000;
    "#,
    // Vendor result cache and coalescing (issue 21): a job completed with a
    // result it did not call for (`cached`); the cleaned results by cache
    // key until `expires_at`; the claim of the one call in flight per key
    // (its leader job, until its lease ends); the jobs waiting for it.
    r#"
    ALTER TABLE jobs ADD COLUMN cached INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE IF NOT EXISTS result_cache (
        key TEXT PRIMARY KEY,
        vendor TEXT NOT NULL,
        result TEXT NOT NULL,
        redactions TEXT,
        stored_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS result_cache_expires ON result_cache(expires_at);
    CREATE TABLE IF NOT EXISTS cache_flights (
        key TEXT PRIMARY KEY,
        leader TEXT NOT NULL,
        until INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS cache_flights_until ON cache_flights(until);
    CREATE TABLE IF NOT EXISTS cache_waiters (
        key TEXT NOT NULL,
        request_id TEXT NOT NULL,
        vendor TEXT NOT NULL,
        until INTEGER NOT NULL,
        PRIMARY KEY (key, request_id)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS cache_waiters_until ON cache_waiters(until);
    "#,
    // The (key, vendor) pairs that have usage (issue 20), kept by a trigger
    // when a pair's first daily row is written: a usage read walks these
    // and seeks each pair's time range in the rollup's primary key, in
    // order, instead of looking up every row found through the time index
    // and sorting them (98 ms for a month of 2,000 pairs, now a few).
    r#"
    CREATE TABLE IF NOT EXISTS usage_pairs (
        key TEXT NOT NULL,
        vendor TEXT NOT NULL,
        PRIMARY KEY (key, vendor)
    ) WITHOUT ROWID;
    INSERT OR IGNORE INTO usage_pairs (key, vendor) SELECT DISTINCT key, vendor FROM usage_rollup_day;
    CREATE TRIGGER IF NOT EXISTS usage_pairs_add AFTER INSERT ON usage_rollup_day BEGIN
        INSERT OR IGNORE INTO usage_pairs (key, vendor) VALUES (new.key, new.vendor);
    END;
    "#,
    // Fair scheduling and priorities (issue 20): a job's priority; queue
    // rows carry their vendor, key (the job's owner, "" without keys),
    // aged-priority rank, virtual-time tag and readiness (see
    // `queue/sqlite.rs`), and each vendor's virtual clock. Rows queued
    // before get tag 0 (leased first, in id order) and wait for the next
    // lease call to be marked ready.
    r#"
    ALTER TABLE jobs ADD COLUMN priority TEXT;
    ALTER TABLE queue ADD COLUMN vendor TEXT NOT NULL DEFAULT '';
    ALTER TABLE queue ADD COLUMN key TEXT NOT NULL DEFAULT '';
    ALTER TABLE queue ADD COLUMN rank INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE queue ADD COLUMN vt REAL NOT NULL DEFAULT 0;
    ALTER TABLE queue ADD COLUMN ready INTEGER NOT NULL DEFAULT 0;
    UPDATE queue SET vendor = COALESCE(json_extract(payload, '$.vendor'), ''), rank = visible_at;
    CREATE TABLE IF NOT EXISTS queue_clock (vendor TEXT PRIMARY KEY, v REAL NOT NULL) WITHOUT ROWID;
    INSERT OR IGNORE INTO queue_clock (vendor, v) SELECT DISTINCT vendor, 0 FROM queue;
    CREATE INDEX IF NOT EXISTS queue_ready ON queue(vendor, vt) WHERE ready = 1;
    CREATE INDEX IF NOT EXISTS queue_rank ON queue(vendor, key, rank) WHERE ready = 1;
    CREATE INDEX IF NOT EXISTS queue_flow ON queue(vendor, key, vt);
    CREATE INDEX IF NOT EXISTS queue_waiting ON queue(visible_at) WHERE ready = 0;
    "#,
    // Fewer indexes for every queue row to keep up (issue 24): a job's
    // entries are found by a plain column instead of an index on an
    // expression that parsed the payload's JSON at every insert and delete,
    // and the index on (visible_at, id) goes: promotion and the next wake-up
    // use queue_waiting, and the depth counts are one pass over the table.
    r#"
    ALTER TABLE queue ADD COLUMN request_id TEXT;
    UPDATE queue SET request_id = json_extract(payload, '$.request_id');
    DROP INDEX IF EXISTS queue_job;
    CREATE INDEX IF NOT EXISTS queue_request ON queue(request_id);
    DROP INDEX IF EXISTS queue_visible;
    "#,
];

fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let done: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done.max(0) as usize) {
        conn.execute_batch(&format!("BEGIN IMMEDIATE; {sql}; PRAGMA user_version = {}; COMMIT;", i + 1))?;
    }
    Ok(())
}

fn open(path: &Path, read_only: bool) -> Result<Connection, DbError> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| DbError::Open { path: path.to_owned(), message: e.to_string() })?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.set_prepared_statement_cache_capacity(128);
    if !read_only {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: each group commit is fsynced before anyone is answered
        // (except a group of unsynced writes only: `Db::write_unsynced`).
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "wal_autocheckpoint", 4000)?;
        // A write in its own savepoint (a replayed group, see `writer_loop`)
        // or a statement that may fail halfway keeps an undo copy of the
        // pages it touches (the sub-journal), which SQLite spills to a
        // temporary file past 64 KiB unless temporary storage is memory: a
        // submit with its queue row touches ~20 pages, so without this every
        // such write opened a temp file and wrote each page to it (18 % of
        // the writer's time when every write had a savepoint). It is undo
        // data for one open transaction only, never needed after a crash.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
    }
    Ok(conn)
}

impl Db {
    /// Opens (creating if needed) the database at `path` and starts its writer.
    pub fn open(path: &Path) -> Result<Arc<Db>, DbError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| DbError::Open {
                path: path.to_owned(),
                message: format!("cannot create its directory: {e}"),
            })?;
        }
        let conn = open(path, false)?;
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            readers.push(open(path, true)?);
        }
        let (tx, rx) = mpsc::channel::<Op>(16 * 1024);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .map_err(|e| DbError::Open { path: path.to_owned(), message: format!("cannot start writer: {e}") })?;
        Ok(Arc::new(Db {
            path: path.to_owned(),
            writer: tx,
            readers: Mutex::new(readers),
            queue_signal: Notify::new(),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A write through the writer thread that changes nothing: fails if the
    /// writer is gone or cannot begin a transaction (readiness).
    pub async fn probe_write(&self) -> Result<(), DbError> {
        self.write(|c| c.query_row("SELECT 1", [], |_| Ok(()))).await
    }

    /// Runs `f` in the next group commit; answers after the commit. `f` may
    /// run more than once (the group is replayed when another write in it
    /// fails, see `replay`), so it must do nothing but its SQL: an earlier
    /// run's changes are rolled back before the next.
    pub async fn write<R, F>(&self, f: F) -> Result<R, DbError>
    where
        R: Send + 'static,
        F: FnMut(&Connection) -> rusqlite::Result<R> + Send + 'static,
    {
        self.send(f, true).await
    }

    /// Like `write`, but answered without waiting for the disk when no
    /// write in its group needs that: the group commits with `synchronous =
    /// NORMAL` (in WAL mode, no fsync; the commit has reached the OS, so a
    /// crash of this process loses nothing). Only an OS crash or power loss
    /// before the next synced commit can undo it, and then together with
    /// everything after it (the log is a prefix), so it suits a write whose
    /// loss, alone, is harmless: the queue's lease pick (lost, the entries
    /// are simply leased again, as after an expired lease; anything done
    /// under the lease that was synced made the pick durable with it).
    pub async fn write_unsynced<R, F>(&self, f: F) -> Result<R, DbError>
    where
        R: Send + 'static,
        F: FnMut(&Connection) -> rusqlite::Result<R> + Send + 'static,
    {
        self.send(f, false).await
    }

    async fn send<R, F>(&self, f: F, synced: bool) -> Result<R, DbError>
    where
        R: Send + 'static,
        F: FnMut(&Connection) -> rusqlite::Result<R> + Send + 'static,
    {
        count_op("write");
        let (tx, rx) = oneshot::channel::<Result<R, DbError>>();
        let op: Op = Box::new(Write { f, result: None, tx, synced });
        self.writer.send(op).await.map_err(|_| DbError::Closed)?;
        rx.await.map_err(|_| DbError::Closed)?
    }

    /// Runs a point lookup (one indexed row) on this thread's own read
    /// connection, inline: under WAL a reader never waits for the writer, and
    /// such a query costs a few microseconds, less than handing it to the
    /// blocking pool. Scans and counts go through `read`.
    pub fn lookup<R>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<R>) -> Result<R, DbError> {
        thread_local! {
            static CONNS: std::cell::RefCell<Vec<(PathBuf, Connection)>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        count_op("read");
        CONNS.with(|cell| {
            let mut conns = cell.borrow_mut();
            let idx = match conns.iter().position(|(p, _)| *p == self.path) {
                Some(i) => i,
                None => {
                    // A handful of databases per process at most (tests run several).
                    if conns.len() >= 8 {
                        conns.remove(0);
                    }
                    conns.push((self.path.clone(), open(&self.path, true)?));
                    conns.len() - 1
                }
            };
            f(&conns[idx].1).map_err(DbError::from)
        })
    }

    /// Runs `f` on a read connection, off the async threads.
    pub async fn read<R, F>(self: &Arc<Self>, f: F) -> Result<R, DbError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    {
        count_op("read");
        let db = self.clone();
        tokio::task::spawn_blocking(move || {
            let conn = db.readers.lock().ok().and_then(|mut r| r.pop());
            let conn = match conn {
                Some(c) => c,
                None => open(&db.path, true)?,
            };
            let res = f(&conn);
            if let Ok(mut r) = db.readers.lock()
                && r.len() < READERS
            {
                r.push(conn);
            }
            res.map_err(DbError::from)
        })
        .await
        .map_err(|_| DbError::Closed)?
    }
}

/// Counts one store operation (`write` or `read`) on the embedded database.
fn count_op(op: &'static str) {
    metrics::counter!(telemetry::STORE_OPERATIONS, "backend" => "sqlite", "op" => op).increment(1);
}

/// Runs one statement without arguments through the statement cache: the
/// transaction and savepoint statements run once or twice per write, and
/// `execute_batch` would parse them each time.
fn run(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

fn in_savepoint<R>(conn: &Connection, f: impl FnOnce(&Connection) -> rusqlite::Result<R>) -> rusqlite::Result<R> {
    run(conn, "SAVEPOINT op")?;
    match f(conn) {
        Ok(r) => {
            run(conn, "RELEASE op")?;
            Ok(r)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK TO op; RELEASE op");
            Err(e)
        }
    }
}

/// Runs `op`, catching a panic (a bug in one write must not take the
/// writer, and every later write, down). Whether it succeeded.
fn run_op(op: &mut Op, conn: &Connection, savepoint: bool) -> bool {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op.run(conn, savepoint))) {
        Ok(ok) => ok,
        Err(_) => {
            if savepoint {
                let _ = conn.execute_batch("ROLLBACK TO op; RELEASE op");
            }
            tracing::error!("sqlite: a write panicked; it was rolled back and the writer goes on");
            false
        }
    }
}

/// Runs each group in one transaction. First without savepoints: a
/// savepoint per write made SQLite copy every page a write touched to its
/// undo journal before changing it (~12 % of the writer's time, issue 24).
/// Writes almost never fail; when one does (or panics), the whole group is
/// rolled back and run again with each write in its own savepoint, so the
/// failed one is undone alone and the rest commit (`replay`).
///
/// A group of unsynced writes only (`Db::write_unsynced`) commits without
/// an fsync; every other group is fsynced, as the connection was opened.
fn writer_loop(conn: Connection, mut rx: mpsc::Receiver<Op>) {
    let mut batch: Vec<Op> = Vec::with_capacity(MAX_BATCH);
    // The connection's `synchronous` setting: FULL as opened.
    let mut synced = true;
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let sync = batch.iter().any(|op| op.synced());
        if sync != synced {
            let setting = if sync { "PRAGMA synchronous = FULL" } else { "PRAGMA synchronous = NORMAL" };
            match run(&conn, setting) {
                Ok(()) => synced = sync,
                // Left unsynced, a group that needs the disk cannot commit.
                Err(e) if sync => {
                    fail_group(&mut batch, "cannot set synchronous = FULL", e);
                    continue;
                }
                // Left synced: the group only waits for the disk.
                Err(_) => {}
            }
        }
        if let Err(e) = run(&conn, "BEGIN IMMEDIATE") {
            fail_group(&mut batch, "cannot begin a transaction", e);
            continue;
        }
        let clean = batch.iter_mut().all(|op| run_op(op, &conn, false));
        if !clean {
            metrics::counter!(telemetry::SQLITE_REPLAYS).increment(1);
            if let Err((what, e)) = replay(&conn, &mut batch) {
                let _ = conn.execute_batch("ROLLBACK");
                fail_group(&mut batch, what, e);
                continue;
            }
        }
        let committed = run(&conn, "COMMIT").map_err(|e| {
            let _ = conn.execute_batch("ROLLBACK");
            e.to_string()
        });
        metrics::histogram!(telemetry::SQLITE_BATCH_SIZE).record(batch.len() as f64);
        for op in batch.drain(..) {
            op.answer(committed.clone());
        }
    }
}

/// Runs a group that failed again in a new transaction, each write in its
/// own savepoint, so a failing write is undone alone and the rest commit.
///
/// Some failures undo more than a savepoint can: a statement without a
/// statement journal that fails with a full disk, out of memory or an I/O
/// error makes SQLite roll the whole transaction back, and the writes after
/// it would then each run, and commit, outside any transaction, while the
/// group's commit fails and everyone is told so. So when a write leaves no
/// transaction open, it is left out and the others run again in a new one.
/// Each round leaves one out; after `REPLAY_ROUNDS` of them (a disk that is
/// full for every write, say) the group fails whole: nothing of it committed.
fn replay(conn: &Connection, batch: &mut [Op]) -> Result<(), (&'static str, rusqlite::Error)> {
    let mut left_out = vec![false; batch.len()];
    for _ in 0..REPLAY_ROUNDS {
        if !conn.is_autocommit() {
            run(conn, "ROLLBACK").map_err(|e| ("cannot roll back a failed group", e))?;
        }
        run(conn, "BEGIN IMMEDIATE").map_err(|e| ("cannot begin a transaction", e))?;
        let mut lost = None;
        for (i, op) in batch.iter_mut().enumerate().filter(|(i, _)| !left_out[*i]) {
            if !run_op(op, conn, true) && conn.is_autocommit() {
                lost = Some(i);
                break;
            }
        }
        match lost {
            Some(i) => left_out[i] = true,
            None => return Ok(()),
        }
    }
    let gave_up = rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
        Some(format!("{REPLAY_ROUNDS} writes in a row rolled the whole transaction back")),
    );
    Err(("cannot replay the group", gave_up))
}

/// A group that could not start (its sync setting or its transaction):
/// every caller is told, and the writer pauses a moment before the next.
fn fail_group(batch: &mut Vec<Op>, what: &str, e: rusqlite::Error) {
    let msg = format!("{what}: {e}");
    tracing::error!(error = %e, "sqlite: {what}");
    for op in batch.drain(..) {
        op.answer(Err(msg.clone()));
    }
    std::thread::sleep(std::time::Duration::from_millis(50));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of the version before the queue's request_id column: its
    /// entries get the column from their payload (found by the new index),
    /// and the expression index and (visible_at, id) index are gone.
    #[test]
    fn queue_entries_of_an_older_file_are_found_by_request_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let conn = open(&path, false).unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        migrate(&conn).unwrap();
        let before = MIGRATIONS.len() - 1;
        conn.execute_batch(&format!(
            "DROP INDEX queue_request; ALTER TABLE queue DROP COLUMN request_id;
             CREATE INDEX queue_visible ON queue(visible_at, id);
             CREATE INDEX queue_job ON queue(json_extract(payload, '$.request_id'));
             INSERT INTO queue (payload, visible_at, vendor, ready) VALUES ('{{\"request_id\":\"r1\"}}', 5, 'v', 1);
             PRAGMA user_version = {before};"
        ))
        .unwrap();
        drop(conn);

        let conn = open(&path, false).unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        migrate(&conn).unwrap();
        let found: i64 =
            conn.query_row("SELECT COUNT(*) FROM queue WHERE request_id = 'r1'", [], |r| r.get(0)).unwrap();
        assert_eq!(found, 1);
        let plan: String =
            conn.query_row("EXPLAIN QUERY PLAN SELECT 1 FROM queue WHERE request_id = 'r1'", [], |r| r.get(3)).unwrap();
        assert!(plan.contains("queue_request"), "{plan}");
        let gone: i64 = conn
            .query_row("SELECT COUNT(*) FROM sqlite_master WHERE name IN ('queue_job', 'queue_visible')", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(gone, 0);
    }

    #[tokio::test]
    async fn a_panicking_write_fails_alone_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db")).unwrap();
        db.write(|c| c.execute_batch("CREATE TABLE t (x INTEGER)")).await.unwrap();
        let panicked = db.write(|c| -> rusqlite::Result<()> {
            c.execute("INSERT INTO t VALUES (1)", [])?;
            panic!("a bug in one write")
        });
        assert!(panicked.await.is_err(), "a panicking write reported success");
        db.write(|c| c.execute("INSERT INTO t VALUES (2)", [])).await.unwrap();
        db.probe_write().await.unwrap();
        let rows: Vec<i64> =
            db.read(|c| c.prepare("SELECT x FROM t")?.query_map([], |r| r.get(0))?.collect()).await.unwrap();
        assert_eq!(rows, [2], "the panicking write's row must be rolled back, the next one kept");
    }

    #[tokio::test]
    async fn a_failing_write_in_a_group_is_undone_alone_and_the_rest_commit() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db")).unwrap();
        db.write(|c| c.execute_batch("CREATE TABLE t (x INTEGER)")).await.unwrap();
        // The first write holds the writer while the others queue up behind
        // it, so they run as one group.
        let hold = db.write(|c| {
            std::thread::sleep(std::time::Duration::from_millis(200));
            c.execute("INSERT INTO t VALUES (0)", [])
        });
        let before = db.write(|c| c.execute("INSERT INTO t VALUES (1)", []));
        let failing = db.write(|c| -> rusqlite::Result<()> {
            // A change made, then an error: the change must not stay.
            c.execute("INSERT INTO t VALUES (2)", [])?;
            c.execute("INSERT INTO no_such_table VALUES (3)", [])?;
            Ok(())
        });
        let after = db.write(|c| c.execute("INSERT INTO t VALUES (4)", []));
        let (hold, before, failing, after) = tokio::join!(hold, before, failing, after);
        assert!(failing.is_err(), "the failing write reported success");
        assert_eq!((hold.unwrap(), before.unwrap(), after.unwrap()), (1, 1, 1));
        let rows: Vec<i64> =
            db.read(|c| c.prepare("SELECT x FROM t ORDER BY x")?.query_map([], |r| r.get(0))?.collect()).await.unwrap();
        assert_eq!(rows, [0, 1, 4], "only the failing write's change is undone");
    }

    /// Starts a write (unsynced or not) that holds the writer for 200 ms
    /// before running `f`, and returns once it has started: it is then in a
    /// group of its own, and writes sent after this returns queue up behind
    /// it as one group.
    async fn hold_writer<R: Send + 'static>(
        db: &Arc<Db>,
        unsynced: bool,
        f: impl Fn(&Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> tokio::task::JoinHandle<Result<R, DbError>> {
        let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = started.clone();
        let db = db.clone();
        let held = move |c: &Connection| {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(200));
            f(c)
        };
        let hold =
            tokio::spawn(async move { if unsynced { db.write_unsynced(held).await } else { db.write(held).await } });
        while !started.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        hold
    }

    /// A database with a table `t (x, pad)` in a file that cannot grow past a
    /// few more pages: a large row then fails with SQLITE_FULL, which (an
    /// insert of one row has no statement journal) makes SQLite roll the
    /// whole transaction back.
    async fn capped_db() -> (tempfile::TempDir, Arc<Db>) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db")).unwrap();
        db.write(|c| {
            c.execute_batch("CREATE TABLE t (x INTEGER, pad BLOB)")?;
            let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
            c.query_row(&format!("PRAGMA max_page_count = {}", pages + 8), [], |_| Ok(()))
        })
        .await
        .unwrap();
        (dir, db)
    }

    #[tokio::test]
    async fn a_write_that_fills_the_file_fails_alone_and_no_write_is_answered_otherwise_than_it_ended() {
        let (_dir, db) = capped_db().await;
        let insert = |x: i64, bytes: i64| {
            db.write(move |c| c.execute("INSERT INTO t VALUES (?1, zeroblob(?2))", rusqlite::params![x, bytes]))
        };
        let hold = db.write(|c| {
            std::thread::sleep(std::time::Duration::from_millis(200));
            c.execute("INSERT INTO t VALUES (0, NULL)", [])
        });
        let (hold, a, bad, full, b) = tokio::join!(
            hold,
            insert(1, 16),
            db.write(|c| c.execute("INSERT INTO no_such_table VALUES (2)", [])),
            insert(3, 1 << 20),
            insert(4, 16),
        );
        assert!(bad.is_err() && full.is_err(), "the failing writes reported success");
        assert_eq!((hold.unwrap(), a.unwrap(), b.unwrap()), (1, 1, 1), "the others commit");
        let rows: Vec<i64> =
            db.read(|c| c.prepare("SELECT x FROM t ORDER BY x")?.query_map([], |r| r.get(0))?.collect()).await.unwrap();
        assert_eq!(rows, [0, 1, 4], "each write's row is there exactly when it was answered Ok");
        // The same alone, in the first run of a group (no other failure).
        let hold = db.write(|c| {
            std::thread::sleep(std::time::Duration::from_millis(200));
            c.execute("INSERT INTO t VALUES (5, NULL)", [])
        });
        let (hold, full, c) = tokio::join!(hold, insert(6, 1 << 20), insert(7, 16));
        assert!(full.is_err());
        assert_eq!((hold.unwrap(), c.unwrap()), (1, 1));
        let n: i64 = db.read(|c| c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))).await.unwrap();
        assert_eq!(n, 5);
    }

    #[tokio::test]
    async fn a_group_whose_writes_keep_filling_the_file_fails_whole_and_commits_nothing() {
        let (_dir, db) = capped_db().await;
        let hold = hold_writer(&db, false, |c| c.execute("INSERT INTO t VALUES (0, NULL)", [])).await;
        // More writes that cannot fit than the replay has rounds, then one
        // that could: the group gives up rather than replay for ever.
        let writes = (1..=REPLAY_ROUNDS as i64 + 2).map(|x| {
            let bytes = if x as usize > REPLAY_ROUNDS + 1 { 16 } else { 1 << 20 };
            db.write(move |c| c.execute("INSERT INTO t VALUES (?1, zeroblob(?2))", rusqlite::params![x, bytes]))
        });
        let (hold, answers) = tokio::join!(hold, futures::future::join_all(writes));
        assert_eq!(hold.unwrap().unwrap(), 1);
        assert!(answers.iter().all(|a| a.is_err()), "{answers:?}");
        let rows: Vec<i64> =
            db.read(|c| c.prepare("SELECT x FROM t ORDER BY x")?.query_map([], |r| r.get(0))?.collect()).await.unwrap();
        assert_eq!(rows, [0], "nothing answered as failed committed");
        // The writer goes on.
        assert_eq!(db.write(|c| c.execute("INSERT INTO t VALUES (99, NULL)", [])).await.unwrap(), 1);
    }

    /// `synchronous` as a write sees it: 1 NORMAL (no fsync), 2 FULL.
    fn sync_level(c: &Connection) -> rusqlite::Result<i64> {
        c.query_row("PRAGMA synchronous", [], |r| r.get(0))
    }

    #[tokio::test]
    async fn only_a_group_of_unsynced_writes_skips_the_fsync_and_a_durable_write_never_does() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db")).unwrap();
        db.write(|c| c.execute_batch("CREATE TABLE t (x INTEGER)")).await.unwrap();
        assert_eq!(db.write(sync_level).await.unwrap(), 2, "a durable write alone");
        let unsynced = db.write_unsynced(|c| {
            c.execute("INSERT INTO t VALUES (1)", [])?;
            sync_level(c)
        });
        assert_eq!(unsynced.await.unwrap(), 1, "an unsynced write alone");
        assert_eq!(db.write(sync_level).await.unwrap(), 2, "a durable write right after an unsynced one");
        // One group: these two queue up behind the holding write; the
        // durable write among them makes their group synced.
        let hold = hold_writer(&db, true, sync_level).await;
        let (a, b) = tokio::join!(db.write_unsynced(sync_level), db.write(sync_level));
        assert_eq!(hold.await.unwrap().unwrap(), 1, "the holding write ran alone");
        assert_eq!((a.unwrap(), b.unwrap()), (2, 2), "a group with a durable write");
        // An unsynced write is committed like any other: readers see it.
        let rows: i64 = db.read(|c| c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))).await.unwrap();
        assert_eq!(rows, 1);
    }

    #[test]
    fn writes_and_reads_are_counted() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        metrics::with_local_recorder(&recorder, || {
            rt.block_on(async {
                let db = Db::open(&dir.path().join("t.db")).unwrap();
                db.write(|c| c.execute_batch("CREATE TABLE t (x INTEGER)")).await.unwrap();
                db.write(|c| c.execute("INSERT INTO t VALUES (1)", [])).await.unwrap();
                db.lookup(|c| c.query_row("SELECT x FROM t", [], |r| r.get::<_, i64>(0))).unwrap();
            })
        });
        let text = handle.render();
        let count = |op: &str| {
            let series = format!("{}{{backend=\"sqlite\",op=\"{op}\"}} ", telemetry::STORE_OPERATIONS);
            text.lines().find_map(|l| l.strip_prefix(series.as_str())).map(|v| v.trim().to_string())
        };
        assert_eq!(count("write").as_deref(), Some("2"), "{text}");
        assert_eq!(count("read").as_deref(), Some("1"), "{text}");
    }
}
