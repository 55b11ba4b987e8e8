//! The `Store` behaviour suite: every case runs on `SqliteStore` (with the
//! queue elsewhere, so the service enqueues) and on `MongoStore` (see the
//! table at the end).

use std::sync::Arc;
use std::time::{Duration, Instant};

use vendorhost::model::{
    AttemptOutcome, AttemptRecord, Idempotency, Job, Millis, NewJob, Outcome, Redaction, Status, now_ms,
};
use vendorhost::queue::sqlite::SqliteQueue;
use vendorhost::queue::{Message, Queue};
use vendorhost::store::mongo::MongoStore;
use vendorhost::store::sqlite::SqliteStore;
use vendorhost::store::{Attempt, AttemptLog, Inserted, Overdue, Store, WebhookClaim};

use super::{Subject, sqlite_db};
use crate::support::servers;

/// What `insert` answers for a new job in this suite: the service enqueues
/// (the inline SQLite queue has its own test below).
const CREATED: Inserted = Inserted::Created { enqueued: false };

// ---- implementations ----

async fn sqlite() -> Subject<dyn Store> {
    let (db, dir) = sqlite_db();
    let s: Arc<dyn Store> = Arc::new(SqliteStore::new(db, false));
    assert_eq!(s.kind(), "sqlite");
    Subject::new(s, Some(dir))
}

async fn mongo() -> Subject<dyn Store> {
    let db = servers::unique("vh_contract");
    let s: Arc<dyn Store> = Arc::new(MongoStore::connect(&servers::mongo().uri, &db).await.expect("connect to mongo"));
    assert_eq!(s.kind(), "mongo");
    Subject::new(s, None)
}

// ---- helpers ----

fn new_job(id: &str, created_at: Millis) -> NewJob {
    NewJob {
        request_id: id.into(),
        vendor: "acme".into(),
        data: r#"{"q":1}"#.into(),
        owner: Some("alice".into()),
        created_at,
        idempotency: None,
        notify_url: None,
        trace: None,
        priority: vendorhost::model::Priority::Normal,
    }
}

/// A job under idempotency key `key`, binding for a minute after `created_at`.
fn keyed(id: &str, key: &str, hash: &str, created_at: Millis) -> NewJob {
    let idempotency = Some(Idempotency { key: key.into(), body_hash: hash.into(), expires_at: created_at + 60_000 });
    NewJob { idempotency, ..new_job(id, created_at) }
}

/// How long the attempts of this suite hold their job.
const LEASE: Millis = 1_000;

/// Starts an attempt at `now` that must start.
async fn start(s: &dyn Store, id: &str, now: Millis) -> Job {
    match s.start_attempt(id, now, now + LEASE).await.unwrap() {
        Attempt::Started(j) => *j,
        other => panic!("{id}: no attempt started at {now}: {other:?}"),
    }
}

async fn job(s: &dyn Store, id: &str) -> Job {
    s.get(id).await.unwrap().unwrap_or_else(|| panic!("no job {id}"))
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

fn pair(id: &str) -> (String, String) {
    (id.to_string(), "acme".to_string())
}

fn complete(result: &str) -> Outcome {
    Outcome::Complete { result: result.into(), redactions: Vec::new() }
}

fn redaction(path: &str, kind: &str) -> Redaction {
    Redaction { path: path.into(), kind: kind.into() }
}

fn failed(error: &str) -> Outcome {
    Outcome::Failed { error: error.into() }
}

// ---- cases ----

/// A new job reads back exactly as written, `pending` with no attempts; a
/// request id is taken once.
async fn insert_get(s: Arc<dyn Store>) {
    s.ping().await.unwrap();
    assert_eq!(s.insert(&new_job("j1", 1_000)).await.unwrap(), CREATED);
    let expected = Job {
        request_id: "j1".into(),
        vendor: "acme".into(),
        status: Status::Pending,
        data: r#"{"q":1}"#.into(),
        created_at: 1_000,
        updated_at: 1_000,
        attempts: 0,
        result: None,
        error: None,
        vendor_ref: None,
        webhook_deadline: None,
        owner: Some("alice".into()),
        redactions: Vec::new(),
        notify: None,
        attempts_log: Vec::new(),
        priority: vendorhost::model::Priority::Normal,
        cached: false,
    };
    assert_eq!(job(&*s, "j1").await, expected);
    // A priority other than the default reads back too.
    let low = NewJob { priority: vendorhost::model::Priority::Low, ..new_job("j-low", 1_000) };
    assert_eq!(s.insert(&low).await.unwrap(), CREATED);
    assert_eq!(job(&*s, "j-low").await.priority, vendorhost::model::Priority::Low);

    let anonymous = NewJob { owner: None, vendor: "other".into(), ..new_job("j2", 2_000) };
    assert_eq!(s.insert(&anonymous).await.unwrap(), CREATED);
    let j2 = job(&*s, "j2").await;
    assert_eq!((j2.owner, j2.vendor.as_str(), j2.created_at), (None, "other", 2_000));

    assert!(s.get("nope").await.unwrap().is_none());
    let again = NewJob { data: "{}".into(), ..new_job("j1", 5_000) };
    assert!(s.insert(&again).await.is_err(), "a second insert of one request id must fail");
    assert_eq!(job(&*s, "j1").await, expected, "a second insert changed the job");
}

/// Racing `start_attempt`s on one job: exactly one starts; the others see
/// it held until its lease end, so a job never runs twice at once.
async fn racing_start_attempts_one_wins(s: Arc<dyn Store>) {
    s.insert(&new_job("j1", 1_000)).await.unwrap();
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.start_attempt("j1", 2_000 + i, 5_000).await.unwrap() })
        })
        .collect();
    let (mut started, mut held) = (Vec::new(), 0);
    for t in tasks {
        match t.await.unwrap() {
            Attempt::Started(j) => started.push(*j),
            Attempt::Held { until } => {
                assert_eq!(until, 5_000, "held until the winner's lease end");
                held += 1;
            }
            Attempt::Over => panic!("an in-flight job was reported over"),
        }
    }
    assert_eq!((started.len(), held), (1, 31), "{started:?}");
    assert_eq!((started[0].status, started[0].attempts), (Status::Processing, 1));
    let j = job(&*s, "j1").await;
    assert_eq!((j.status, j.attempts), (Status::Processing, 1));
    assert_eq!(s.start_attempt("nope", 1, 2).await.unwrap(), Attempt::Over);
}

/// A processing job is taken again only once its due time (the lease end,
/// pushed on by `hold`) has passed; a job waiting for its webhook never.
async fn lease_end_fences_attempts(s: Arc<dyn Store>) {
    s.insert(&new_job("j1", 1_000)).await.unwrap();
    assert_eq!(start(&*s, "j1", 1_000).await.attempts, 1);
    assert_eq!(s.start_attempt("j1", 1_500, 2_500).await.unwrap(), Attempt::Held { until: 2_000 });
    s.hold("j1", 3_000).await.unwrap();
    assert_eq!(s.start_attempt("j1", 2_500, 3_500).await.unwrap(), Attempt::Held { until: 3_000 });
    let again = match s.start_attempt("j1", 3_000, 4_000).await.unwrap() {
        Attempt::Started(j) => *j,
        other => panic!("not taken over at the lease end: {other:?}"),
    };
    assert_eq!(again.attempts, 2);
    assert!(s.set_vendor_ref("j1", "ref", 99_000, 3_100, None).await.unwrap());
    assert_eq!(s.start_attempt("j1", 50_000, 51_000).await.unwrap(), Attempt::Over, "an accepted async job ran again");
    s.hold("j1", 60_000).await.unwrap();
    assert_eq!(job(&*s, "j1").await.attempts, 2);
}

/// `overdue` lists in-flight jobs past their due time, in (due, id) order,
/// pages after a cursor, and skips finished jobs, jobs awaiting a webhook and
/// jobs whose due time moved on (a running attempt, a retry, a re-enqueue).
async fn overdue_lists_jobs_past_due(s: Arc<dyn Store>) {
    for (id, at) in [("a", 1_000), ("b", 2_000), ("c", 3_000), ("d", 4_000), ("e", 4_500)] {
        let priority = if id == "b" { vendorhost::model::Priority::High } else { vendorhost::model::Priority::Normal };
        s.insert(&NewJob { priority, ..new_job(id, at) }).await.unwrap();
    }
    assert!(s.start_attempt("c", 3_100, 10_000).await.unwrap() != Attempt::Over);
    start(&*s, "d", 4_100).await;
    assert!(s.set_vendor_ref("d", "ref-d", 99_000, 4_200, None).await.unwrap());
    assert!(s.finish("e", &complete("1"), 4_600, None).await.unwrap());
    let ids = |v: Vec<Overdue>| v.into_iter().map(|o| (o.request_id, o.due_at)).collect::<Vec<_>>();
    assert_eq!(ids(s.overdue(5_000, None, 10).await.unwrap()), [("a".into(), 1_000), ("b".into(), 2_000)]);
    // What a re-enqueue needs for the fair queue: the owner and priority.
    let owners: Vec<_> = s.overdue(5_000, None, 10).await.unwrap().into_iter().map(|o| (o.owner, o.priority)).collect();
    assert_eq!(
        owners,
        [
            (Some("alice".into()), vendorhost::model::Priority::Normal),
            (Some("alice".into()), vendorhost::model::Priority::High)
        ]
    );
    assert_eq!(ids(s.overdue(5_000, None, 1).await.unwrap()), [("a".into(), 1_000)]);
    assert_eq!(ids(s.overdue(5_000, Some((1_000, "a".into())), 10).await.unwrap()), [("b".into(), 2_000)]);
    assert_eq!(ids(s.overdue(1_500, None, 10).await.unwrap()), [("a".into(), 1_000)]);
    assert_eq!(ids(s.overdue(11_000, None, 10).await.unwrap()).len(), 3, "c is overdue once its lease ends");
    s.record_error("b", "retry later", 5_000, 9_000, None).await.unwrap();
    s.mark_queued(&["a".to_string()], 6_000).await.unwrap();
    assert!(s.overdue(5_500, None, 10).await.unwrap().is_empty(), "a retry or a re-enqueue moves the due time");
    assert_eq!(ids(s.overdue(9_500, None, 10).await.unwrap()), [("a".into(), 6_000), ("b".into(), 9_000)]);
}

/// Racing `finish`es: exactly one ends the job, and its outcome is the one
/// kept.
async fn racing_finish_exactly_one_wins(s: Arc<dyn Store>) {
    s.insert(&new_job("j1", 1_000)).await.unwrap();
    start(&*s, "j1", 1_500).await;
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let outcome = if i % 2 == 0 { complete(&format!("{{\"n\":{i}}}")) } else { failed(&format!("e{i}")) };
                let won = s.finish("j1", &outcome, 2_000 + i, None).await.unwrap();
                (won, outcome, 2_000 + i)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for t in tasks {
        let (won, outcome, at) = t.await.unwrap();
        if won {
            winners.push((outcome, at));
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let (outcome, at) = &winners[0];
    let j = job(&*s, "j1").await;
    assert_eq!((j.status, j.updated_at), (outcome.status(), *at));
    match outcome {
        Outcome::Complete { result, .. } | Outcome::Cached { result, .. } => {
            assert_eq!((j.result.as_ref(), j.error), (Some(result), None))
        }
        Outcome::Failed { error } => assert_eq!((j.result, j.error.as_ref()), (None, Some(error))),
        Outcome::Cancelled => assert_eq!((j.result, j.error), (None, None)),
    }
}

/// Nothing moves a finished job: not another finish, an attempt, an error,
/// a vendor reference or a reopen of a complete job.
async fn finished_jobs_do_not_move(s: Arc<dyn Store>) {
    s.insert(&new_job("j1", 1_000)).await.unwrap();
    let started = start(&*s, "j1", 1_100).await;
    assert_eq!((started.status, started.attempts, started.updated_at), (Status::Processing, 1, 1_100));
    s.record_error("j1", "timeout", 1_200, 1_200 + LEASE, None).await.unwrap();
    let j = job(&*s, "j1").await;
    assert_eq!((j.status, j.error.as_deref(), j.updated_at), (Status::Processing, Some("timeout"), 1_200));

    assert!(s.finish("j1", &complete("1"), 2_000, None).await.unwrap());
    let done = job(&*s, "j1").await;
    assert_eq!(
        (done.status, done.result.as_deref(), done.error.as_deref(), done.updated_at),
        (Status::Complete, Some("1"), None, 2_000),
        "completing clears the last retry error"
    );
    assert!(!s.finish("j1", &failed("late"), 3_000, None).await.unwrap());
    assert!(!s.finish("j1", &complete("2"), 3_000, None).await.unwrap());
    assert_eq!(s.start_attempt("j1", 3_000, 3_000 + LEASE).await.unwrap(), Attempt::Over);
    s.record_error("j1", "late", 3_000, 3_000 + LEASE, None).await.unwrap();
    assert!(!s.set_vendor_ref("j1", "v1", 9_000, 3_000, None).await.unwrap());
    assert!(!s.reopen("j1", 3_000).await.unwrap(), "a complete job is not reopened");
    assert_eq!(job(&*s, "j1").await, done);

    // A failed job keeps its reason.
    s.insert(&new_job("j2", 1_000)).await.unwrap();
    assert!(s.finish("j2", &failed("boom"), 2_000, None).await.unwrap(), "a pending job can fail outright");
    let dead = job(&*s, "j2").await;
    assert_eq!((dead.status, dead.result.as_deref(), dead.error.as_deref()), (Status::Failed, None, Some("boom")));
    assert!(!s.finish("j2", &complete("1"), 3_000, None).await.unwrap());
    s.record_error("j2", "late", 3_000, 3_000 + LEASE, None).await.unwrap();
    assert_eq!(s.start_attempt("j2", 3_000, 3_000 + LEASE).await.unwrap(), Attempt::Over);
    assert_eq!(job(&*s, "j2").await, dead);

    assert!(!s.finish("nope", &complete("1"), 3_000, None).await.unwrap());
}

/// What cleaning removed is stored with a complete result, in order, and
/// read back exactly; a result with nothing removed and a failure have none,
/// and a later finish does not change them.
async fn redactions_are_kept_with_the_result(s: Arc<dyn Store>) {
    for id in ["j1", "j2", "j3"] {
        s.insert(&new_job(id, 1_000)).await.unwrap();
        start(&*s, id, 1_100).await;
    }
    let listed = vec![
        redaction("owner.email", "key"),
        redaction("notes[1]", "phone"),
        redaction("[\"odd.key\"].x", "card"),
        redaction("$", "email"),
    ];
    let outcome = Outcome::Complete { result: r#"{"owner":{}}"#.into(), redactions: listed.clone() };
    assert!(s.finish("j1", &outcome, 2_000, None).await.unwrap());
    assert!(s.finish("j2", &complete("{}"), 2_000, None).await.unwrap());
    assert!(s.finish("j3", &failed("boom"), 2_000, None).await.unwrap());
    let j1 = job(&*s, "j1").await;
    assert_eq!((j1.status, j1.result.as_deref(), &j1.redactions), (Status::Complete, Some(r#"{"owner":{}}"#), &listed));
    assert_eq!(job(&*s, "j2").await.redactions, []);
    assert_eq!(job(&*s, "j3").await.redactions, []);
    let other = Outcome::Complete { result: "1".into(), redactions: vec![redaction("x", "ssn")] };
    assert!(!s.finish("j1", &other, 3_000, None).await.unwrap());
    assert!(!s.finish("j2", &other, 3_000, None).await.unwrap());
    assert_eq!(job(&*s, "j1").await.redactions, listed, "a second finish changed them");
    assert_eq!(job(&*s, "j2").await.redactions, [], "a second finish added some");
}

/// `reopen` is the one backward move, and only from `failed`: the job is
/// `pending` again with its attempts, result and vendor reference reset.
async fn reopen_only_from_failed(s: Arc<dyn Store>) {
    s.insert(&new_job("j1", 1_000)).await.unwrap();
    assert!(!s.reopen("j1", 1_500).await.unwrap(), "reopened a pending job");
    start(&*s, "j1", 1_600).await;
    assert!(!s.reopen("j1", 1_650).await.unwrap(), "reopened a processing job");
    assert!(s.set_vendor_ref("j1", "ref-1", 9_000, 1_700, None).await.unwrap());
    assert!(s.finish("j1", &failed("boom"), 2_000, None).await.unwrap());

    assert!(s.reopen("j1", 3_000).await.unwrap());
    let j = job(&*s, "j1").await;
    assert_eq!((j.status, j.attempts, j.updated_at), (Status::Pending, 0, 3_000));
    assert_eq!((j.result, j.vendor_ref, j.webhook_deadline), (None, None, None));
    assert!(s.find_by_vendor_ref("acme", "ref-1").await.unwrap().is_none(), "the old vendor reference still finds it");
    assert!(!s.reopen("j1", 3_100).await.unwrap(), "reopened twice");
    assert_eq!(start(&*s, "j1", 3_200).await.attempts, 1, "a reopened job runs again");
    assert!(!s.reopen("nope", 3_000).await.unwrap());
}

/// A reopened job does not carry its old failure reason as if it were the
/// error of its new run.
async fn reopened_job_clears_its_error(s: Arc<dyn Store>) {
    s.insert(&new_job("j1", 1_000)).await.unwrap();
    start(&*s, "j1", 1_100).await;
    assert!(s.finish("j1", &failed("boom"), 2_000, None).await.unwrap());
    assert!(s.reopen("j1", 3_000).await.unwrap());
    assert_eq!(job(&*s, "j1").await.error, None);
}

/// A reopened job is the sweeper's again (its replay's enqueue may be lost),
/// but only once `before` passes its reopening: the replay enqueues it right
/// after the reopen, and the sweeper must not race it.
async fn reopened_job_waits_for_the_sweeper_until_updated_at(s: Arc<dyn Store>) {
    s.insert(&new_job("j1", 1_000)).await.unwrap();
    s.mark_queued(&["j1".to_string()], 0).await.unwrap();
    start(&*s, "j1", 1_100).await;
    assert!(s.finish("j1", &failed("boom"), 2_000, None).await.unwrap());
    assert!(s.reopen("j1", 3_000).await.unwrap());
    assert!(s.unqueued_pending(3_000, 10).await.unwrap().is_empty(), "swept before its reopening");
    assert_eq!(s.unqueued_pending(3_001, 10).await.unwrap(), [pair("j1")]);
    s.mark_queued(&["j1".to_string()], 0).await.unwrap();
    assert!(s.unqueued_pending(10_000, 10).await.unwrap().is_empty());
}

/// Racing inserts under one idempotency key: one job is created, every other
/// insert is told which one and leaves no job behind; another body under the
/// key is a conflict; another key is independent.
async fn idempotency_race_has_one_winner(s: Arc<dyn Store>) {
    let now = now_ms();
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let id = format!("j{i}");
                let r = s.insert(&keyed(&id, "alice:k1", "h1", now)).await.unwrap();
                (id, r)
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let created: Vec<&String> = results.iter().filter(|(_, r)| *r == CREATED).map(|(id, _)| id).collect();
    assert_eq!(created.len(), 1, "{results:?}");
    let winner = created[0].clone();
    for (id, r) in &results {
        if *id != winner {
            assert_eq!(*r, Inserted::Existing { request_id: winner.clone() }, "{id}");
            assert!(s.get(id).await.unwrap().is_none(), "loser {id} left a job");
        }
    }
    assert_eq!(job(&*s, &winner).await.status, Status::Pending);

    assert_eq!(s.insert(&keyed("other", "alice:k1", "h2", now)).await.unwrap(), Inserted::KeyConflict);
    assert!(s.get("other").await.unwrap().is_none(), "a conflicting insert left a job");
    assert_eq!(s.insert(&keyed("k2", "alice:k2", "h1", now)).await.unwrap(), CREATED);
}

/// A key binds every job created up to its expiry, then the first one after
/// takes it over.
async fn idempotency_key_binds_until_it_expires(s: Arc<dyn Store>) {
    let now = now_ms();
    assert_eq!(s.insert(&keyed("j1", "k", "h1", now)).await.unwrap(), CREATED); // binds for a minute
    let existing = Inserted::Existing { request_id: "j1".into() };
    assert_eq!(s.insert(&keyed("j2", "k", "h1", now + 59_000)).await.unwrap(), existing);
    assert_eq!(s.insert(&keyed("j3", "k", "h2", now + 59_000)).await.unwrap(), Inserted::KeyConflict);
    assert!(s.get("j2").await.unwrap().is_none() && s.get("j3").await.unwrap().is_none());
    assert_eq!(s.insert(&keyed("j4", "k", "h2", now + 60_001)).await.unwrap(), CREATED, "an expired key still bound");
    assert!(s.get("j1").await.unwrap().is_some(), "the first job stays");
    assert_eq!(s.insert(&keyed("j5", "k", "h1", now + 60_002)).await.unwrap(), Inserted::KeyConflict);
    assert_eq!(
        s.insert(&keyed("j6", "k", "h2", now + 60_003)).await.unwrap(),
        Inserted::Existing { request_id: "j4".into() }
    );
}

/// Once its key expired, the key binds the next job (with any body); the
/// first job stays.
async fn expired_idempotency_key_binds_anew(s: Arc<dyn Store>) {
    let now = now_ms();
    // Bound until a minute ago.
    assert_eq!(s.insert(&keyed("j1", "k", "h1", now - 120_000)).await.unwrap(), CREATED);
    assert_eq!(s.insert(&keyed("j2", "k", "h2", now)).await.unwrap(), CREATED);
    assert!(s.get("j1").await.unwrap().is_some(), "the first job stays");
    assert_eq!(
        s.insert(&keyed("j3", "k", "h2", now + 1)).await.unwrap(),
        Inserted::Existing { request_id: "j2".into() }
    );
    assert_eq!(s.insert(&keyed("j4", "k", "h1", now + 2)).await.unwrap(), Inserted::KeyConflict);
    assert!(s.get("j3").await.unwrap().is_none() && s.get("j4").await.unwrap().is_none());
}

/// Applies a webhook id: claimed, then done until `expires_at`.
async fn applied(s: &dyn Store, vendor: &str, id: &str, expires_at: Millis) {
    assert_eq!(s.claim_webhook(vendor, id, now_ms() + 60_000).await.unwrap(), WebhookClaim::New, "{vendor}:{id}");
    s.complete_webhook(vendor, id, expires_at).await.unwrap();
}

/// A webhook id is claimed once per vendor: while its claim is held a second
/// claim is told it is in progress, once done it is a replay; forgetting it
/// lets it in again.
async fn webhook_ids_claim_complete_and_forget(s: Arc<dyn Store>) {
    let later = now_ms() + 60_000;
    assert_eq!(s.claim_webhook("acme", "w1", later).await.unwrap(), WebhookClaim::New);
    assert_eq!(s.claim_webhook("acme", "w1", later).await.unwrap(), WebhookClaim::InProgress, "claimed twice at once");
    s.complete_webhook("acme", "w1", later).await.unwrap();
    assert_eq!(s.claim_webhook("acme", "w1", later).await.unwrap(), WebhookClaim::Done, "a replay was let in");
    applied(&*s, "other", "w1", later).await;
    applied(&*s, "acme", "w2", later).await;
    s.forget_webhook("acme", "w1").await.unwrap();
    s.forget_webhook("acme", "never-seen").await.unwrap();
    assert_eq!(s.claim_webhook("acme", "w1", later).await.unwrap(), WebhookClaim::New, "a forgotten id is new again");
    assert_eq!(s.claim_webhook("acme", "w2", later).await.unwrap(), WebhookClaim::Done, "forgot the wrong id");
    assert_eq!(s.claim_webhook("other", "w1", later).await.unwrap(), WebhookClaim::Done, "forgot another vendor's id");
}

/// A claim whose holder died lapses at its `until`, and an id applied until a
/// moment now past no longer counts as a replay, purged or not.
async fn lapsed_claims_and_expired_ids_are_new(s: Arc<dyn Store>) {
    let now = now_ms();
    assert_eq!(s.claim_webhook("acme", "dead-holder", now + 300).await.unwrap(), WebhookClaim::New);
    assert_eq!(s.claim_webhook("acme", "dead-holder", now + 60_000).await.unwrap(), WebhookClaim::InProgress);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        s.claim_webhook("acme", "dead-holder", now_ms() + 60_000).await.unwrap(),
        WebhookClaim::New,
        "a lapsed claim blocked the retry"
    );
    applied(&*s, "acme", "old", now - 1_000).await;
    assert_eq!(
        s.claim_webhook("acme", "old", now + 60_000).await.unwrap(),
        WebhookClaim::New,
        "an expired id counted as a replay"
    );
}

/// `unqueued_pending` lists `pending` jobs created before `before` whose
/// queue message was never recorded; `mark_queued` takes them off.
async fn unqueued_pending_and_mark_queued(s: Arc<dyn Store>) {
    for (id, at) in [("a", 1_000), ("b", 2_000), ("c", 3_000), ("fresh", 9_000), ("d", 500)] {
        s.insert(&new_job(id, at)).await.unwrap();
    }
    s.mark_queued(&["b".to_string()], 0).await.unwrap();
    s.mark_queued(&[], 0).await.unwrap();
    s.mark_queued(&["nope".to_string()], 0).await.unwrap();
    start(&*s, "c", 3_500).await;

    assert_eq!(sorted(s.unqueued_pending(5_000, 10).await.unwrap()), [pair("a"), pair("d")]);
    let one = s.unqueued_pending(5_000, 1).await.unwrap();
    assert!(one == [pair("a")] || one == [pair("d")], "{one:?}");
    assert_eq!(s.unqueued_pending(1_000, 10).await.unwrap(), [pair("d")], "created before, strictly");

    s.mark_queued(&["a".to_string(), "d".to_string()], 0).await.unwrap();
    assert!(s.unqueued_pending(5_000, 10).await.unwrap().is_empty());
    assert_eq!(s.unqueued_pending(10_000, 10).await.unwrap(), [pair("fresh")]);
}

/// A vendor reference is set only while `processing`, finds its job by
/// (vendor, reference), and its deadline makes the job overdue once passed
/// and until it finishes.
async fn vendor_refs_and_overdue_webhooks(s: Arc<dyn Store>) {
    for id in ["a", "b", "c"] {
        s.insert(&new_job(id, 1_000)).await.unwrap();
    }
    assert!(!s.set_vendor_ref("a", "ref-a", 5_000, 1_100, None).await.unwrap(), "set on a pending job");
    assert!(!s.set_vendor_ref("nope", "ref-x", 5_000, 1_100, None).await.unwrap());
    for id in ["a", "b", "c"] {
        start(&*s, id, 1_200).await;
    }
    assert!(s.set_vendor_ref("a", "ref-a", 5_000, 1_300, None).await.unwrap());
    assert!(s.set_vendor_ref("b", "ref-b", 4_000, 1_300, None).await.unwrap());
    assert!(s.set_vendor_ref("c", "ref-c", 9_000, 1_300, None).await.unwrap());
    let a = job(&*s, "a").await;
    assert_eq!((a.vendor_ref.as_deref(), a.webhook_deadline, a.updated_at), (Some("ref-a"), Some(5_000), 1_300));
    assert_eq!(s.find_by_vendor_ref("acme", "ref-a").await.unwrap().as_deref(), Some("a"));
    assert!(s.find_by_vendor_ref("other", "ref-a").await.unwrap().is_none(), "references are per vendor");
    assert!(s.find_by_vendor_ref("acme", "ref-zzz").await.unwrap().is_none());

    assert!(s.overdue_webhooks(4_000, 10).await.unwrap().is_empty(), "overdue at its deadline, not past it");
    assert_eq!(sorted(s.overdue_webhooks(6_000, 10).await.unwrap()), ["a", "b"]);
    let one = s.overdue_webhooks(6_000, 1).await.unwrap();
    assert!(one == ["a"] || one == ["b"], "{one:?}");
    assert!(s.finish("b", &complete("{}"), 4_500, None).await.unwrap());
    assert_eq!(s.overdue_webhooks(6_000, 10).await.unwrap(), ["a"]);
    // A late webhook still finds its finished job (and cannot move it).
    assert_eq!(s.find_by_vendor_ref("acme", "ref-b").await.unwrap().as_deref(), Some("b"));
}

/// `purge` deletes finished jobs last updated before `before` (and says how
/// many), expired webhook ids and expired idempotency keys; nothing else.
async fn purge(s: Arc<dyn Store>) {
    let now = now_ms();
    for id in ["old-done", "old-failed", "new-done", "old-pending"] {
        s.insert(&new_job(id, 1_000)).await.unwrap();
    }
    s.finish("old-done", &complete("1"), 2_000, None).await.unwrap();
    s.finish("old-failed", &failed("x"), 2_000, None).await.unwrap();
    s.finish("new-done", &complete("1"), 8_000, None).await.unwrap();
    applied(&*s, "acme", "soon", now + 60_000).await; // past by the purge's `now`
    applied(&*s, "acme", "live", i64::MAX / 2).await; // far future (a TTL date is clamped)
    // A key binding for a minute (past by the purge's `now`), on a job the
    // purge keeps. (A key already past in wall-clock time may vanish sooner:
    // MongoDB's TTL index.)
    s.insert(&keyed("keyed", "k", "h", now)).await.unwrap();
    s.finish("keyed", &complete("1"), 8_000, None).await.unwrap();
    let late = keyed("keyed2", "k", "h", now + 1_000);
    assert_eq!(s.insert(&late).await.unwrap(), Inserted::Existing { request_id: "keyed".into() });

    assert_eq!(s.claim_webhook("acme", "soon", now + 60_000).await.unwrap(), WebhookClaim::Done);

    let purge_now = now + 120_000;
    assert_eq!(s.purge(5_000, purge_now).await.unwrap(), 2);
    assert!(s.get("old-done").await.unwrap().is_none());
    assert!(s.get("old-failed").await.unwrap().is_none());
    assert!(s.get("new-done").await.unwrap().is_some());
    assert!(s.get("old-pending").await.unwrap().is_some(), "purged a job still in flight");
    assert!(s.get("keyed").await.unwrap().is_some());
    assert_eq!(
        s.claim_webhook("acme", "live", now_ms() + 60_000).await.unwrap(),
        WebhookClaim::Done,
        "purged a live webhook id"
    );
    assert_eq!(
        s.claim_webhook("acme", "soon", now_ms() + 60_000).await.unwrap(),
        WebhookClaim::New,
        "an expired webhook id was kept"
    );
    // The expired key was purged: it binds a new job, even one created while
    // it still bound.
    assert_eq!(s.insert(&late).await.unwrap(), CREATED);
    assert_eq!(s.purge(5_000, purge_now).await.unwrap(), 0);
}

/// A vendor reference is recorded only on a job that is processing: one
/// refused (a pending, finished or unknown job) leaves nothing a webhook
/// could find; the same reference of two vendors names two jobs; a job's
/// later reference finds it too.
async fn vendor_ref_lookup_follows_the_job(s: Arc<dyn Store>) {
    for id in ["p", "f", "x", "y"] {
        let vendor = if id == "y" { "zeta" } else { "acme" };
        s.insert(&NewJob { vendor: vendor.into(), ..new_job(id, 1_000) }).await.unwrap();
    }
    assert!(!s.set_vendor_ref("p", "ref-p", 9_000, 1_100, None).await.unwrap());
    assert!(s.find_by_vendor_ref("acme", "ref-p").await.unwrap().is_none(), "a pending job took a reference");
    start(&*s, "f", 1_100).await;
    assert!(s.finish("f", &complete("1"), 1_200, None).await.unwrap());
    assert!(!s.set_vendor_ref("f", "ref-f", 9_000, 1_300, None).await.unwrap());
    assert!(s.find_by_vendor_ref("acme", "ref-f").await.unwrap().is_none(), "a finished job took a reference");
    assert!(!s.set_vendor_ref("ghost", "ref-g", 9_000, 1_300, None).await.unwrap());
    assert!(s.find_by_vendor_ref("acme", "ref-g").await.unwrap().is_none(), "an unknown job took a reference");

    start(&*s, "x", 1_400).await;
    start(&*s, "y", 1_400).await;
    assert!(s.set_vendor_ref("x", "shared", 9_000, 1_500, None).await.unwrap());
    assert!(s.set_vendor_ref("y", "shared", 9_000, 1_500, None).await.unwrap());
    assert_eq!(s.find_by_vendor_ref("acme", "shared").await.unwrap().as_deref(), Some("x"));
    assert_eq!(s.find_by_vendor_ref("zeta", "shared").await.unwrap().as_deref(), Some("y"));
    // The vendor accepted it again (a second call): the new reference finds it.
    assert!(s.set_vendor_ref("x", "again", 9_500, 1_600, None).await.unwrap());
    assert_eq!(s.find_by_vendor_ref("acme", "again").await.unwrap().as_deref(), Some("x"));
    assert_eq!(job(&*s, "x").await.vendor_ref.as_deref(), Some("again"));
}

/// Each vendor call is kept on the job, oldest first, the latest `keep`
/// only; errors as given; a job that does not exist is left alone.
async fn attempts_are_kept_latest_first_bounded(s: Arc<dyn Store>) {
    assert_eq!(s.insert(&new_job("a1", 1_000)).await.unwrap(), CREATED);
    let rec = |i: i64, outcome, error: Option<&str>| AttemptRecord::new(1_000 + i, i as u64 * 10, outcome, error);
    for i in 0..5 {
        s.record_attempt("a1", &rec(i, AttemptOutcome::RetryableError, Some("vendor said 503")), 3).await.unwrap();
    }
    s.record_attempt("a1", &rec(5, AttemptOutcome::Complete, None), 3).await.unwrap();
    let log = job(&*s, "a1").await.attempts_log;
    assert_eq!(
        log,
        vec![
            rec(3, AttemptOutcome::RetryableError, Some("vendor said 503")),
            rec(4, AttemptOutcome::RetryableError, Some("vendor said 503")),
            rec(5, AttemptOutcome::Complete, None),
        ]
    );
    // Read back the same way by a listing.
    let listed = s.list(&vendorhost::model::JobQuery { limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(listed.iter().find(|j| j.request_id == "a1").map(|j| j.attempts_log.len()), Some(3));
    s.record_attempt("nope", &rec(0, AttemptOutcome::Failed, Some("x")), 3).await.unwrap();
    assert!(s.get("nope").await.unwrap().is_none());
    // A long error is cut.
    let long = "e".repeat(2_000);
    let cut = AttemptRecord::new(1, 1, AttemptOutcome::Failed, Some(&long));
    assert!(cut.error.as_ref().unwrap().chars().count() <= vendorhost::model::job::ATTEMPT_ERROR_CHARS + 1);
}

/// The call that settles a job is recorded in the same write as the state
/// it settles in: a retry (`record_error`), an async acceptance
/// (`set_vendor_ref`), the end (`finish`); and still recorded when the job
/// had ended meanwhile (the call did happen), without moving it.
async fn settling_writes_record_their_attempt(s: Arc<dyn Store>) {
    assert_eq!(s.insert(&new_job("s1", 1_000)).await.unwrap(), CREATED);
    let rec = |i: i64, outcome| AttemptRecord::new(1_000 + i, 5, outcome, None);
    let retry = rec(1, AttemptOutcome::RetryableError);
    s.start_attempt("s1", 1_001, 9_000).await.unwrap();
    s.record_error("s1", "503", 1_002, 1_100, Some(&AttemptLog { record: &retry, keep: 3 })).await.unwrap();
    let accepted = rec(2, AttemptOutcome::Accepted);
    assert!(
        s.set_vendor_ref("s1", "ref-1", 9_000, 1_003, Some(&AttemptLog { record: &accepted, keep: 3 })).await.unwrap()
    );
    let done = rec(3, AttemptOutcome::Complete);
    assert!(s.finish("s1", &complete("{}"), 1_004, Some(&AttemptLog { record: &done, keep: 3 })).await.unwrap());
    let j = job(&*s, "s1").await;
    assert_eq!(j.status, Status::Complete);
    assert_eq!(j.attempts_log, vec![retry.clone(), accepted.clone(), done.clone()]);
    // A late call's end: the job stays as it was, the call is on record.
    let late = rec(4, AttemptOutcome::Failed);
    assert!(!s.finish("s1", &failed("late"), 1_005, Some(&AttemptLog { record: &late, keep: 3 })).await.unwrap());
    let j = job(&*s, "s1").await;
    assert_eq!(j.status, Status::Complete);
    assert_eq!(j.attempts_log, vec![accepted, done, late]);
}

// ---- the table: one test per (case, implementation) ----

macro_rules! store_suite {
    ($( $case:ident => $(#[$sqlite_attr:meta])* $sqlite:ident, $(#[$mongo_attr:meta])* $mongo:ident; )*) => {
        $(
            contract_test!($case, sqlite, $sqlite $(, #[$sqlite_attr])*);
            contract_test!($case, mongo, $mongo $(, #[$mongo_attr])*);
        )*
    };
}

store_suite! {
    insert_get => store_sqlite_insert_get, store_mongo_insert_get;
    racing_start_attempts_one_wins => store_sqlite_racing_start_attempts_one_wins, store_mongo_racing_start_attempts_one_wins;
    lease_end_fences_attempts => store_sqlite_lease_end_fences_attempts, store_mongo_lease_end_fences_attempts;
    overdue_lists_jobs_past_due => store_sqlite_overdue_lists_jobs_past_due, store_mongo_overdue_lists_jobs_past_due;
    racing_finish_exactly_one_wins => store_sqlite_racing_finish_exactly_one_wins, store_mongo_racing_finish_exactly_one_wins;
    finished_jobs_do_not_move => store_sqlite_finished_jobs_do_not_move, store_mongo_finished_jobs_do_not_move;
    redactions_are_kept_with_the_result =>
        store_sqlite_redactions_are_kept_with_the_result, store_mongo_redactions_are_kept_with_the_result;
    reopen_only_from_failed => store_sqlite_reopen_only_from_failed, store_mongo_reopen_only_from_failed;
    reopened_job_clears_its_error =>
        store_sqlite_reopened_job_clears_its_error,
        store_mongo_reopened_job_clears_its_error;
    reopened_job_waits_for_the_sweeper_until_updated_at =>
        store_sqlite_reopened_job_waits_for_the_sweeper_until_updated_at,
        store_mongo_reopened_job_waits_for_the_sweeper_until_updated_at;
    idempotency_race_has_one_winner => store_sqlite_idempotency_race_has_one_winner, store_mongo_idempotency_race_has_one_winner;
    idempotency_key_binds_until_it_expires =>
        store_sqlite_idempotency_key_binds_until_it_expires, store_mongo_idempotency_key_binds_until_it_expires;
    expired_idempotency_key_binds_anew =>
        store_sqlite_expired_idempotency_key_binds_anew, store_mongo_expired_idempotency_key_binds_anew;
    webhook_ids_claim_complete_and_forget =>
        store_sqlite_webhook_ids_claim_complete_and_forget, store_mongo_webhook_ids_claim_complete_and_forget;
    lapsed_claims_and_expired_ids_are_new =>
        store_sqlite_lapsed_claims_and_expired_ids_are_new, store_mongo_lapsed_claims_and_expired_ids_are_new;
    unqueued_pending_and_mark_queued =>
        store_sqlite_unqueued_pending_and_mark_queued, store_mongo_unqueued_pending_and_mark_queued;
    vendor_refs_and_overdue_webhooks =>
        store_sqlite_vendor_refs_and_overdue_webhooks, store_mongo_vendor_refs_and_overdue_webhooks;
    purge => store_sqlite_purge, store_mongo_purge;
    vendor_ref_lookup_follows_the_job =>
        store_sqlite_vendor_ref_lookup_follows_the_job, store_mongo_vendor_ref_lookup_follows_the_job;
    settling_writes_record_their_attempt => store_sqlite_settling_writes_record_their_attempt, store_mongo_settling_writes_record_their_attempt;
    attempts_are_kept_latest_first_bounded =>
        store_sqlite_attempts_are_kept_latest_first_bounded, store_mongo_attempts_are_kept_latest_first_bounded;
}

// ---- SQLite only ----

/// A file written before jobs had redactions (schema version 1) gains the
/// column when opened, keeping its jobs, and then stores them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_sqlite_an_older_file_gains_the_redactions_column() {
    let (db, dir) = sqlite_db();
    let path = db.path().to_owned();
    let s = SqliteStore::new(db.clone(), false);
    s.insert(&new_job("old", 1_000)).await.unwrap();
    start(&s, "old", 1_100).await;
    assert!(s.finish("old", &complete("1"), 2_000, None).await.unwrap());
    // Back to version 1: no column, the version before it.
    // (Columns of later versions go too: a version-1 file had none of them.)
    db.write(|c| {
        c.execute_batch(
            "ALTER TABLE jobs DROP COLUMN redactions;
             DROP INDEX IF EXISTS jobs_notify_due;
             ALTER TABLE jobs DROP COLUMN notify_url; ALTER TABLE jobs DROP COLUMN notify_attempts;
             ALTER TABLE jobs DROP COLUMN notify_status; ALTER TABLE jobs DROP COLUMN notify_error;
             ALTER TABLE jobs DROP COLUMN notify_delivered_at; ALTER TABLE jobs DROP COLUMN notify_next_at;
             ALTER TABLE jobs DROP COLUMN attempts_log;
             ALTER TABLE jobs DROP COLUMN priority;
             ALTER TABLE jobs DROP COLUMN cached;
             DROP INDEX queue_ready; DROP INDEX queue_rank; DROP INDEX queue_flow; DROP INDEX queue_waiting;
             ALTER TABLE queue DROP COLUMN vendor; ALTER TABLE queue DROP COLUMN key;
             ALTER TABLE queue DROP COLUMN rank; ALTER TABLE queue DROP COLUMN vt; ALTER TABLE queue DROP COLUMN ready;
             DROP TABLE queue_clock;
             DROP INDEX queue_request; ALTER TABLE queue DROP COLUMN request_id;
             PRAGMA user_version = 1;",
        )
    })
    .await
    .unwrap();
    drop(s);
    drop(db);

    let db = vendorhost::db::Db::open(&path).expect("reopen the file");
    let version: i64 = db.lookup(|c| c.query_row("PRAGMA user_version", [], |r| r.get(0))).unwrap();
    assert!(version >= 2, "not migrated: user_version {version}");
    let s = SqliteStore::new(db, false);
    let old = job(&s, "old").await;
    assert_eq!((old.result.as_deref(), old.redactions), (Some("1"), vec![]));
    s.insert(&new_job("new", 3_000)).await.unwrap();
    start(&s, "new", 3_100).await;
    let outcome = Outcome::Complete { result: "{}".into(), redactions: vec![redaction("a.email", "key")] };
    assert!(s.finish("new", &outcome, 4_000, None).await.unwrap());
    assert_eq!(job(&s, "new").await.redactions, [redaction("a.email", "key")]);
    drop(dir);
}

/// With the queue in the same database, `finish_held` acks the worker's lease
/// in the job's finishing write: the entry is gone with the job's end. A
/// failure it writes keeps the entry leased (its holder moves it to the dead
/// letters); a job already ended still has its lease acked. An async
/// vendor's acceptance (`set_vendor_ref_held`) acks it with the reference.
/// With the queue elsewhere neither acks and the caller does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_sqlite_inline_queue_held_writes_ack_in_the_same_write() {
    let (db, _dir) = sqlite_db();
    let s = SqliteStore::new(db.clone(), true);
    let q = SqliteQueue::new(db.clone());
    let now = now_ms();
    for id in ["ok", "bad", "gone", "accepted"] {
        assert_eq!(s.insert(&new_job(id, now)).await.unwrap(), Inserted::Created { enqueued: true });
    }
    let leases = q.lease("w", 10, Duration::from_secs(60), Duration::ZERO).await.unwrap();
    assert_eq!(leases.len(), 4);
    let lease_of = |id: &str| {
        leases.iter().find(|l| Message::decode(&l.payload).unwrap().request_id == id).expect("a lease per job")
    };
    let done = Outcome::Complete { result: "{}".into(), redactions: vec![] };
    let failed = Outcome::Failed { error: "boom".into() };

    assert_eq!(s.finish_held("ok", &done, now, None, lease_of("ok")).await.unwrap(), (true, true));
    assert_eq!(s.finish_held("bad", &failed, now, None, lease_of("bad")).await.unwrap(), (true, false));
    assert!(s.finish("gone", &Outcome::Cancelled, now, None).await.unwrap());
    assert_eq!(s.finish_held("gone", &done, now, None, lease_of("gone")).await.unwrap(), (false, true));
    assert_eq!(job(&s, "ok").await.status, Status::Complete);
    assert_eq!(job(&s, "bad").await.status, Status::Failed);
    assert_eq!(job(&s, "gone").await.status, Status::Cancelled, "a later end overwrote the first");
    start(&s, "accepted", now).await;
    let acked = s.set_vendor_ref_held("accepted", "ref-1", now + 60_000, now, None, lease_of("accepted")).await;
    assert_eq!(acked.unwrap(), (true, true));
    let accepted = job(&s, "accepted").await;
    assert_eq!((accepted.status, accepted.vendor_ref.as_deref()), (Status::Processing, Some("ref-1")));
    let d = q.depth().await.unwrap();
    assert_eq!((d.ready, d.delayed, d.leased), (0, 0, 1), "only the failed job's entry is left: {d:?}");

    // The queue elsewhere (here: the same file, but not this store's to ack).
    let apart = SqliteStore::new(db.clone(), false);
    apart.insert(&new_job("apart", now)).await.unwrap();
    q.enqueue(&[Message::new("apart", "acme")]).await.unwrap();
    let held = q.lease("w", 10, Duration::from_secs(60), Duration::ZERO).await.unwrap();
    assert_eq!(held.len(), 1);
    start(&apart, "apart", now).await;
    let set = apart.set_vendor_ref_held("apart", "ref-2", now + 60_000, now, None, &held[0]).await.unwrap();
    assert_eq!(set, (true, false));
    assert_eq!(apart.finish_held("apart", &done, now, None, &held[0]).await.unwrap(), (true, false));
    assert_eq!(q.depth().await.unwrap().leased, 2, "a store without the queue acked");
}

/// With the queue in the same database, `insert` writes the queue entry in
/// the job's own transaction: `Created { enqueued: true }`, a waiting consumer
/// is woken, the job is already there when its message is, and the sweeper
/// has nothing to recover. An insert that creates nothing enqueues nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_sqlite_inline_queue_enqueues_in_the_same_transaction() {
    let (db, _dir) = sqlite_db();
    let s = SqliteStore::new(db.clone(), true);
    let q = Arc::new(SqliteQueue::new(db));
    let waiter = {
        let q = q.clone();
        tokio::spawn(async move { q.lease("w", 10, Duration::from_secs(60), Duration::from_secs(10)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "the lease returned before anything was inserted");

    let started = Instant::now();
    let now = now_ms();
    assert_eq!(s.insert(&new_job("j1", now)).await.unwrap(), Inserted::Created { enqueued: true });
    let got = tokio::time::timeout(Duration::from_secs(15), waiter).await.expect("the waiter hung").unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(3), "woke {:?} after the insert", started.elapsed());
    assert_eq!(got.len(), 1);
    // The entry names the job's owner (the fair queue's key).
    let expected = Message::new("j1", "acme").owned(Some("alice"), vendorhost::model::Priority::Normal);
    assert_eq!(Message::decode(&got[0].payload).unwrap(), expected);
    assert_eq!(job(&s, "j1").await.status, Status::Pending);
    assert!(s.unqueued_pending(i64::MAX, 10).await.unwrap().is_empty(), "an inline-queued job left to the sweeper");

    assert_eq!(s.insert(&keyed("k1", "alice:k", "h1", now)).await.unwrap(), Inserted::Created { enqueued: true });
    assert_eq!(
        s.insert(&keyed("k2", "alice:k", "h1", now)).await.unwrap(),
        Inserted::Existing { request_id: "k1".into() }
    );
    assert_eq!(s.insert(&keyed("k3", "alice:k", "h2", now)).await.unwrap(), Inserted::KeyConflict);
    assert!(s.insert(&new_job("j1", now)).await.is_err());
    let d = q.depth().await.unwrap();
    assert_eq!((d.ready, d.delayed, d.leased), (1, 0, 1), "{d:?}");
    let next = q.lease("w", 10, Duration::from_secs(60), Duration::ZERO).await.unwrap();
    let msgs: Vec<Message> = next.iter().map(|l| Message::decode(&l.payload).unwrap()).collect();
    assert_eq!(msgs, [Message::new("k1", "acme").owned(Some("alice"), vendorhost::model::Priority::Normal)]);
}

// ---- MongoDB only ----

/// On MongoDB a vendor reference is also written to `vendor_refs`
/// (`_id` = `<vendor>:<reference>`), so a webhook's lookup is one read by
/// `_id`. A job accepted by an earlier version (its reference only on the
/// job) or whose entry was lost is still found, by the indexed query on the
/// jobs, and a waiting one is indexed then; a reopened job's entry goes; and
/// `purge` drops entries whose deadline is older than the retention.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_mongo_vendor_refs_are_indexed_and_earlier_jobs_fall_back() {
    use mongodb::bson::{Document, doc};
    let name = servers::unique("vh_refs");
    let s = MongoStore::connect(&servers::mongo().uri, &name).await.expect("connect to mongo");
    let db = mongodb::Client::with_uri_str(&servers::mongo().uri).await.unwrap().database(&name);
    let refs = db.collection::<Document>("vendor_refs");
    let entry = |id: &'static str| {
        let refs = refs.clone();
        async move { refs.find_one(doc! { "_id": id }).await.unwrap() }
    };

    s.insert(&new_job("a", 1_000)).await.unwrap();
    start(&s, "a", 1_100).await;
    assert!(s.set_vendor_ref("a", "ref-a", 9_000, 1_200, None).await.unwrap());
    let e = entry("acme:ref-a").await.expect("no vendor_refs entry");
    assert_eq!(e.get_str("request_id").unwrap(), "a");
    assert_eq!(e.get("deadline").and_then(|d| d.as_i64().or(d.as_i32().map(i64::from))), Some(9_000));

    // Jobs as an earlier version wrote them: the reference on the job only.
    for (id, status) in [("legacy", "processing"), ("legacy-done", "complete")] {
        let d = doc! {
            "_id": id, "vendor": "acme", "status": status, "data": "{}", "created_at": 1_000_i64,
            "updated_at": 1_000_i64, "attempts": 1_i64, "queued": true,
            "vendor_ref": format!("ref-{id}"), "webhook_deadline": 9_000_i64,
        };
        db.collection::<Document>("jobs").insert_one(d).await.unwrap();
    }
    assert_eq!(s.find_by_vendor_ref("acme", "ref-legacy").await.unwrap().as_deref(), Some("legacy"));
    let healed = entry("acme:ref-legacy").await.expect("the waiting legacy job was not indexed by its lookup");
    assert_eq!(healed.get_str("request_id").unwrap(), "legacy");
    assert_eq!(s.find_by_vendor_ref("acme", "ref-legacy").await.unwrap().as_deref(), Some("legacy"));
    assert_eq!(s.find_by_vendor_ref("acme", "ref-legacy-done").await.unwrap().as_deref(), Some("legacy-done"));
    assert!(entry("acme:ref-legacy-done").await.is_none(), "a finished job was indexed");
    assert!(s.find_by_vendor_ref("other", "ref-legacy").await.unwrap().is_none(), "references are per vendor");

    // An entry lost (a crash between the job's update and its entry).
    refs.delete_one(doc! { "_id": "acme:ref-a" }).await.unwrap();
    assert_eq!(s.find_by_vendor_ref("acme", "ref-a").await.unwrap().as_deref(), Some("a"));

    // A reopened job's entry goes with its reference.
    s.insert(&new_job("r", 1_000)).await.unwrap();
    start(&s, "r", 1_100).await;
    assert!(s.set_vendor_ref("r", "ref-r", 3_000, 1_200, None).await.unwrap());
    assert!(s.finish("r", &failed("x"), 1_300, None).await.unwrap());
    assert!(entry("acme:ref-r").await.is_some());
    assert!(s.reopen("r", 1_400).await.unwrap());
    assert!(entry("acme:ref-r").await.is_none(), "a reopened job kept its old reference's entry");
    assert!(s.find_by_vendor_ref("acme", "ref-r").await.unwrap().is_none());

    // Purge: entries whose deadline is before `before` go, later ones stay.
    assert!(!s.set_vendor_ref("r", "ref-r2", 3_000, 1_450, None).await.unwrap(), "a pending job took a reference");
    start(&s, "r", 1_500).await;
    assert!(s.set_vendor_ref("r", "ref-r2", 3_000, 1_600, None).await.unwrap());
    s.purge(5_000, now_ms()).await.unwrap();
    assert!(entry("acme:ref-r2").await.is_none(), "an entry past its deadline and the retention was kept");
    assert!(entry("acme:ref-legacy").await.is_some(), "an entry inside the retention was purged");
    assert_eq!(s.find_by_vendor_ref("acme", "ref-r2").await.unwrap().as_deref(), Some("r"), "the job still answers");
}
