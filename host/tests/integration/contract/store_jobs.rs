//! The `Store` behaviour behind job listing, batch submit and cancel
//! (issue 18): every case runs on `SqliteStore` and on `MongoStore` (table
//! at the end), plus the index checks of each backend (SQLite's query plans,
//! MongoDB's index list).

use futures::TryStreamExt;
use std::sync::Arc;

use vendorhost::model::{Idempotency, JobQuery, Millis, NewJob, Outcome, Status, now_ms};
use vendorhost::store::mongo::{LIST_INDEXES, MongoStore, Sharding};
use vendorhost::store::sqlite::{SqliteStore, list_sql};
use vendorhost::store::{Attempt, Inserted, Store};

use super::{Subject, sqlite_db};
use crate::support::servers;

const CREATED: Inserted = Inserted::Created { enqueued: false };

async fn sqlite() -> Subject<dyn Store> {
    let (db, dir) = sqlite_db();
    Subject::new(Arc::new(SqliteStore::new(db, false)), Some(dir))
}

async fn mongo_store() -> (MongoStore, String) {
    let db = servers::unique("vh_jobs");
    let s = MongoStore::connect(&servers::mongo().uri, &db).await.expect("connect to mongo");
    s.init(Sharding::Never).await.expect("create the indexes");
    (s, db)
}

async fn mongo() -> Subject<dyn Store> {
    Subject::new(Arc::new(mongo_store().await.0), None)
}

fn job(id: &str, owner: &str, vendor: &str, created_at: Millis) -> NewJob {
    NewJob {
        request_id: id.into(),
        vendor: vendor.into(),
        data: "1".into(),
        owner: Some(owner.into()),
        created_at,
        idempotency: None,
        notify_url: None,
        trace: None,
        priority: vendorhost::model::Priority::Normal,
    }
}

fn keyed(mut j: NewJob, key: &str, hash: &str) -> NewJob {
    j.idempotency = Some(Idempotency { key: key.into(), body_hash: hash.into(), expires_at: j.created_at + 60_000 });
    j
}

async fn ids(s: &dyn Store, q: JobQuery) -> Vec<String> {
    s.list(&q).await.unwrap().into_iter().map(|j| j.request_id).collect()
}

fn q(limit: usize) -> JobQuery {
    JobQuery { limit, ..JobQuery::default() }
}

/// Each filter selects what it says, all together too; newest first by
/// (created_at, request_id); at most `limit`; the error filter is a prefix.
async fn listing_filters_select_and_order(s: Arc<dyn Store>) {
    // Ten jobs, created 1000..1009 except c5 and c6 which share a time.
    for i in 0..10 {
        let at = if i == 6 { 1_005 } else { 1_000 + i };
        let owner = if i % 2 == 0 { "alice" } else { "bob" };
        let vendor = if i < 5 { "acme" } else { "zeta" };
        s.insert(&job(&format!("c{i}"), owner, vendor, at)).await.unwrap();
    }
    for (id, error) in [("c1", "timeout: vendor slow"), ("c2", "timeout: again"), ("c7", "denied: host")] {
        assert!(s.finish(id, &Outcome::Failed { error: error.into() }, 2_000, None).await.unwrap());
    }
    assert!(s.finish("c3", &Outcome::Complete { result: "{}".into(), redactions: vec![] }, 2_000, None).await.unwrap());
    assert!(s.finish("c4", &Outcome::Cancelled, 2_000, None).await.unwrap());

    let all = ids(&*s, q(50)).await;
    assert_eq!(all, ["c9", "c8", "c7", "c6", "c5", "c4", "c3", "c2", "c1", "c0"], "newest first, ties by id");
    assert_eq!(ids(&*s, q(3)).await, ["c9", "c8", "c7"]);
    let owned = JobQuery { owner: Some("alice".into()), ..q(50) };
    assert_eq!(ids(&*s, owned).await, ["c8", "c6", "c4", "c2", "c0"]);
    let vendor = JobQuery { vendor: Some("zeta".into()), ..q(50) };
    assert_eq!(ids(&*s, vendor).await, ["c9", "c8", "c7", "c6", "c5"]);
    let failed = JobQuery { status: Some(Status::Failed), ..q(50) };
    assert_eq!(ids(&*s, failed).await, ["c7", "c2", "c1"]);
    let cancelled = JobQuery { status: Some(Status::Cancelled), ..q(50) };
    assert_eq!(ids(&*s, cancelled).await, ["c4"]);
    let timeouts = JobQuery { error_prefix: Some("timeout:".into()), ..q(50) };
    assert_eq!(ids(&*s, timeouts).await, ["c2", "c1"]);
    let not_a_prefix = JobQuery { error_prefix: Some("vendor slow".into()), ..q(50) };
    assert!(ids(&*s, not_a_prefix).await.is_empty(), "the error filter matches prefixes only");
    let window = JobQuery { created_after: Some(1_003), created_before: Some(1_007), ..q(50) };
    assert_eq!(ids(&*s, window).await, ["c6", "c5", "c4", "c3"], "after is inclusive, before exclusive");
    let together = JobQuery {
        owner: Some("bob".into()),
        vendor: Some("acme".into()),
        status: Some(Status::Failed),
        error_prefix: Some("timeout".into()),
        created_after: Some(1_000),
        created_before: Some(1_100),
        ..q(50)
    };
    assert_eq!(ids(&*s, together).await, ["c1"]);
    // The cursor: strictly older than (1005, "c6") is c5 (same time, smaller id) on.
    let after = JobQuery { before: Some((1_005, "c6".into())), ..q(3) };
    assert_eq!(ids(&*s, after).await, ["c5", "c4", "c3"]);
    // A listed job has the shape `get` gives.
    let listed =
        s.list(&JobQuery { vendor: Some("acme".into()), status: Some(Status::Complete), ..q(1) }).await.unwrap();
    assert_eq!(listed, [s.get("c3").await.unwrap().unwrap()]);
}

/// Paging with the cursor returns every job that existed at the first page
/// exactly once, in order, however many jobs are added between pages (new
/// ones are newer than any cursor: UUID v7 ids and creation times only grow).
async fn listing_pages_stay_stable_while_jobs_are_added(s: Arc<dyn Store>) {
    let mut existing = Vec::new();
    for i in 0..23 {
        // Two jobs per millisecond: ties broken by id.
        let id = format!("p{i:03}");
        s.insert(&job(&id, "alice", "acme", 1_000 + i / 2)).await.unwrap();
        existing.push(id);
    }
    existing.reverse();
    let mut seen = Vec::new();
    let mut cursor = None;
    let mut added = 0;
    loop {
        let page = s.list(&JobQuery { before: cursor.clone(), ..q(5) }).await.unwrap();
        if page.is_empty() {
            break;
        }
        cursor = page.last().map(|j| (j.created_at, j.request_id.clone()));
        seen.extend(page.into_iter().map(|j| j.request_id));
        // Newer jobs arrive meanwhile, some in the same millisecond as the
        // newest existing one with larger ids.
        for _ in 0..3 {
            s.insert(&job(&format!("q{added:03}"), "alice", "acme", 1_011 + added / 4)).await.unwrap();
            added += 1;
        }
    }
    assert_eq!(seen, existing, "pages repeated, skipped or let in a newer job");
    assert_eq!(ids(&*s, q(500)).await.len(), 23 + added as usize);
}

/// One key's jobs are not another's: the owner filter is exact.
async fn listing_keeps_keys_apart(s: Arc<dyn Store>) {
    s.insert(&job("a1", "alice", "acme", 1_000)).await.unwrap();
    s.insert(&job("b1", "bob", "acme", 1_001)).await.unwrap();
    s.insert(&job("a2", "alice", "acme", 1_002)).await.unwrap();
    s.insert(&job("ab", "alice-bob", "acme", 1_003)).await.unwrap();
    s.insert(&NewJob { owner: None, ..job("anon", "x", "acme", 1_004) }).await.unwrap();
    let of = |o: &str| JobQuery { owner: Some(o.into()), ..q(50) };
    assert_eq!(ids(&*s, of("alice")).await, ["a2", "a1"]);
    assert_eq!(ids(&*s, of("bob")).await, ["b1"]);
    assert!(ids(&*s, of("ali")).await.is_empty());
    assert_eq!(ids(&*s, q(50)).await.len(), 5, "without an owner every job is listed");
}

/// `insert_batch` writes every job and answers in order; with keys a replay
/// answers the same jobs, and a key reused with another body is a conflict
/// for the whole batch that writes nothing.
async fn batch_insert_answers_in_order(s: Arc<dyn Store>) {
    let plain: Vec<NewJob> = (0..5).map(|i| job(&format!("b{i}"), "alice", "acme", 1_000 + i)).collect();
    assert_eq!(s.insert_batch(&plain).await.unwrap(), vec![CREATED; 5]);
    for j in &plain {
        let got = s.get(&j.request_id).await.unwrap().expect("a batch job was not written");
        assert_eq!((got.status, got.created_at, got.owner.as_deref()), (Status::Pending, j.created_at, Some("alice")));
    }
    assert_eq!(s.insert_batch(&[]).await.unwrap(), vec![]);

    // Keys bind for a minute from now (a key already past in wall-clock time
    // may vanish at once: MongoDB's TTL index).
    let now = now_ms();
    let batch = |prefix: &str, hash: &str, n: usize| -> Vec<NewJob> {
        (0..n)
            .map(|i| keyed(job(&format!("{prefix}{i}"), "alice", "acme", now), &format!("k\nbatch:{i}"), hash))
            .collect()
    };
    assert_eq!(s.insert_batch(&batch("first", "h1", 3)).await.unwrap(), vec![CREATED; 3]);
    let replay = s.insert_batch(&batch("second", "h1", 3)).await.unwrap();
    let earlier: Vec<Inserted> = (0..3).map(|i| Inserted::Existing { request_id: format!("first{i}") }).collect();
    assert_eq!(replay, earlier, "a replay answers the first batch's jobs, in order");
    for i in 0..3 {
        assert!(s.get(&format!("second{i}")).await.unwrap().is_none(), "a replay wrote a job");
    }
    // Another body under the same key, one item longer: nothing is written.
    let conflict = s.insert_batch(&batch("third", "h2", 4)).await.unwrap();
    assert!(conflict.contains(&Inserted::KeyConflict), "{conflict:?}");
    for i in 0..4 {
        assert!(s.get(&format!("third{i}")).await.unwrap().is_none(), "a conflicting batch wrote third{i}");
    }
    // ... and its new fourth key was not kept either: it binds afresh.
    let fourth = keyed(job("fourth", "alice", "acme", now + 100), "k\nbatch:3", "h3");
    assert_eq!(s.insert(&fourth).await.unwrap(), CREATED);
}

/// `cancelled` is terminal: from pending, processing or accepted (awaiting
/// a webhook) only; nothing moves it on; an attempt finds nothing to do;
/// `purge` removes it like other finished jobs.
async fn cancel_is_terminal_and_forward_only(s: Arc<dyn Store>) {
    for id in ["pending", "running", "accepted", "done"] {
        s.insert(&job(id, "alice", "acme", 1_000)).await.unwrap();
    }
    for id in ["running", "accepted", "done"] {
        assert!(matches!(s.start_attempt(id, 1_100, 60_000).await.unwrap(), Attempt::Started(_)));
    }
    assert!(s.set_vendor_ref("accepted", "ref-1", 90_000, 1_200, None).await.unwrap());
    let complete = Outcome::Complete { result: "{}".into(), redactions: vec![] };
    assert!(s.finish("done", &complete, 1_300, None).await.unwrap());
    for id in ["pending", "running", "accepted"] {
        assert!(s.finish(id, &Outcome::Cancelled, 1_400, None).await.unwrap(), "{id} not cancelled");
        let j = s.get(id).await.unwrap().unwrap();
        assert_eq!((j.status, j.updated_at, j.result.as_deref()), (Status::Cancelled, 1_400, None), "{id}");
        assert!(!s.finish(id, &complete, 1_500, None).await.unwrap(), "{id}: a result overwrote cancelled");
        assert!(!s.finish(id, &Outcome::Cancelled, 1_500, None).await.unwrap(), "{id}: cancelled twice");
        assert_eq!(s.start_attempt(id, 100_000, 160_000).await.unwrap(), Attempt::Over, "{id}: an attempt started");
        assert!(!s.reopen(id, 1_600).await.unwrap(), "{id}: reopened");
    }
    assert!(!s.finish("done", &Outcome::Cancelled, 1_500, None).await.unwrap(), "a complete job was cancelled");
    assert!(s.overdue_webhooks(100_000, 10).await.unwrap().is_empty(), "a cancelled job still awaits its webhook");
    assert_eq!(s.purge(5_000, 5_000).await.unwrap(), 4);
}

macro_rules! store_jobs_suite {
    ($( $case:ident => $sqlite:ident, $mongo:ident; )*) => {
        $(
            contract_test!($case, sqlite, $sqlite);
            contract_test!($case, mongo, $mongo);
        )*
    };
}

store_jobs_suite! {
    listing_filters_select_and_order =>
        store_sqlite_listing_filters_select_and_order, store_mongo_listing_filters_select_and_order;
    listing_pages_stay_stable_while_jobs_are_added =>
        store_sqlite_listing_pages_stay_stable_while_jobs_are_added,
        store_mongo_listing_pages_stay_stable_while_jobs_are_added;
    listing_keeps_keys_apart => store_sqlite_listing_keeps_keys_apart, store_mongo_listing_keeps_keys_apart;
    batch_insert_answers_in_order =>
        store_sqlite_batch_insert_answers_in_order, store_mongo_batch_insert_answers_in_order;
    cancel_is_terminal_and_forward_only =>
        store_sqlite_cancel_is_terminal_and_forward_only, store_mongo_cancel_is_terminal_and_forward_only;
}

/// Every combination of listing filters (and the cursor) is served by an
/// index: SQLite's plan never scans the table; with any filter but a common
/// error prefix it seeks (searches) an index, and with a common error prefix
/// it walks an index in listing order (stopping after a page of matches).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_sqlite_every_listing_filter_uses_an_index() {
    let (db, _dir) = sqlite_db();
    let s = SqliteStore::new(db.clone(), false);
    // Some rows, so the plan is not that of an empty table.
    let rows: Vec<NewJob> = (0..200).map(|i| job(&format!("j{i:04}"), "alice", "acme", 1_000 + i)).collect();
    s.insert_batch(&rows).await.unwrap();
    for error_index in [true, false] {
        for mask in 0u32..128 {
            let on = |bit: u32| mask & (1 << bit) != 0;
            let query = JobQuery {
                owner: on(0).then(|| "alice".to_string()),
                status: on(1).then_some(Status::Failed),
                vendor: on(2).then(|| "acme".to_string()),
                error_prefix: on(3).then(|| "timeout".to_string()),
                created_after: on(4).then_some(1_050),
                created_before: on(5).then_some(1_150),
                before: on(6).then(|| (1_100, "j0100".to_string())),
                limit: 51,
            };
            let (sql, args) = list_sql(&query, "request_id", error_index);
            let plan: Vec<String> = db
                .lookup(|c| {
                    c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?
                        .query_map(rusqlite::params_from_iter(args.iter()), |r| r.get::<_, String>(3))?
                        .collect()
                })
                .unwrap();
            let on_jobs: Vec<&String> = plan.iter().filter(|d| d.contains(" jobs")).collect();
            assert!(!on_jobs.is_empty(), "{query:?}: no step reads jobs? {plan:?}");
            // Only the error filter, kept off its index: a walk of the time order.
            let walk = mask == 0 || (mask == 1 << 3 && !error_index);
            for step in &on_jobs {
                assert!(step.contains("USING INDEX") || step.contains("USING COVERING INDEX"), "{query:?}: {plan:?}");
                if !walk {
                    assert!(step.starts_with("SEARCH"), "{query:?} walks an index instead of seeking: {plan:?}");
                }
                if !error_index {
                    assert!(!step.contains("jobs_list_error"), "{query:?}: the error index was to be left: {plan:?}");
                    assert!(!plan.iter().any(|p| p.contains("TEMP B-TREE")), "{query:?} sorts: {plan:?}");
                }
            }
        }
    }
}

/// The listing indexes exist on MongoDB after `init`, and (where the server
/// can explain) a filtered, sorted first page uses one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_mongo_listing_indexes_exist() {
    use mongodb::bson::{Document, doc};
    let (_store, db) = mongo_store().await;
    let client = mongodb::Client::with_uri_str(&servers::mongo().uri).await.unwrap();
    let jobs = client.database(&db).collection::<Document>("jobs");
    // By their keys (the stand-in names indexes its own way): field and direction.
    let key_of = |keys: &Document| -> Vec<String> {
        keys.iter()
            .map(|(f, v)| {
                let down = matches!(v, mongodb::bson::Bson::Int32(n) if *n < 0)
                    || matches!(v, mongodb::bson::Bson::Int64(n) if *n < 0)
                    || matches!(v, mongodb::bson::Bson::Double(n) if *n < 0.0);
                if down { format!("-{f}") } else { f.clone() }
            })
            .collect()
    };
    let have: Vec<Vec<String>> = jobs
        .list_indexes()
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .iter()
        .map(|m| key_of(&m.keys))
        .collect();
    // The stand-in reports every direction as ascending: there, fields only.
    let fields_only =
        |k: &Vec<String>| -> Vec<String> { k.iter().map(|f| f.trim_start_matches('-').to_string()).collect() };
    let directions_kept = have.iter().flatten().any(|f| f.starts_with('-'));
    for (name, fields) in LIST_INDEXES {
        let want: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
        let found =
            have.contains(&want) || (!directions_kept && have.iter().any(|k| fields_only(k) == fields_only(&want)));
        assert!(found, "index {name} {want:?} missing: {have:?}");
    }
    let explain = doc! {
        "explain": { "find": "jobs", "filter": { "status": "failed" }, "sort": { "created_at": -1, "_id": -1 }, "limit": 50 },
    };
    match client.database(&db).run_command(explain).await {
        // A real mongod: the winning plan seeks an index.
        Ok(answer) => {
            let text = answer.to_string();
            assert!(text.contains("IXSCAN") || !text.contains("COLLSCAN"), "a collection scan: {text}");
        }
        // The stand-in has no `explain`: the index list above is the check.
        Err(e) => eprintln!("explain unsupported here ({e}); checked listIndexes only"),
    }
}

/// A common error prefix (more matches than the store probes for) is
/// listed by walking the time order, a rare one through the error index:
/// both give the same jobs in the same order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_sqlite_common_and_rare_error_prefixes_list_alike() {
    let (db, _dir) = sqlite_db();
    let s = SqliteStore::new(db.clone(), false);
    let rows: Vec<NewJob> = (0..3_000).map(|i| job(&format!("e{i:05}"), "alice", "acme", 1_000 + i)).collect();
    s.insert_batch(&rows).await.unwrap();
    // Every job times out but every 100th, which the vendor refused.
    db.write(|c| {
        c.execute_batch(
            "UPDATE jobs SET status = 'failed',
               error = CASE WHEN CAST(substr(request_id, 2) AS INTEGER) % 100 = 0 THEN 'refused: 400' ELSE 'timeout: 5s' END",
        )
    })
    .await
    .unwrap();
    let expect = |refused: bool, limit: usize, before: Option<i64>| -> Vec<String> {
        (0..3_000i64)
            .rev()
            .filter(|i| (i % 100 == 0) == refused && before.is_none_or(|b| 1_000 + i < b))
            .take(limit)
            .map(|i| format!("e{i:05}"))
            .collect()
    };
    let page = |prefix: &str, limit: usize, before: Option<i64>| JobQuery {
        error_prefix: Some(prefix.into()),
        before: before.map(|b| (b, String::new())),
        limit,
        ..JobQuery::default()
    };
    assert_eq!(ids(&s, page("timeout", 50, None)).await, expect(false, 50, None));
    assert_eq!(ids(&s, page("timeout:", 7, Some(2_500))).await, expect(false, 7, Some(2_500)));
    assert_eq!(ids(&s, page("refused", 50, None)).await, expect(true, 50, None));
    assert_eq!(ids(&s, page("refused: 4", 5, Some(2_500))).await, expect(true, 5, Some(2_500)));
    assert!(ids(&s, page("timeouts", 50, None)).await.is_empty());
}
