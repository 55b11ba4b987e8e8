//! The `Store` behaviour behind the vendor result cache and call coalescing
//! (issue 21): cached results expire by their time whatever a TTL monitor
//! did, one claim per cache key leads and a lapsed one is taken over, each
//! waiter is taken once, and a job ended `Cached` reads back marked. Every
//! case runs on `SqliteStore` and on `MongoStore` (table at the end).

use std::collections::BTreeSet;
use std::sync::Arc;

use vendorhost::model::{NewJob, Outcome, Priority, Redaction, Status};
use vendorhost::store::mongo::MongoStore;
use vendorhost::store::sqlite::SqliteStore;
use vendorhost::store::{CacheEntry, Flight, Store};

use super::{Subject, sqlite_db};
use crate::support::servers;

async fn sqlite() -> Subject<dyn Store> {
    let (db, dir) = sqlite_db();
    Subject::new(Arc::new(SqliteStore::new(db, true)), Some(dir))
}

async fn mongo() -> Subject<dyn Store> {
    let db = servers::unique("vh_cache");
    Subject::new(Arc::new(MongoStore::connect(&servers::mongo().uri, &db).await.expect("connect to mongo")), None)
}

fn entry(key: &str, result: &str, stored_at: i64, expires_at: i64) -> CacheEntry {
    CacheEntry {
        key: key.into(),
        vendor: "acme".into(),
        result: result.into(),
        redactions: vec![Redaction { path: "owner.email".into(), kind: "key".into() }],
        stored_at,
        expires_at,
    }
}

/// An entry reads back whole until it expires, not at or after; a second
/// put replaces it; `purge` deletes expired entries (a later read at an
/// earlier clock finds nothing).
async fn cached_results_expire_and_are_replaced(s: Arc<dyn Store>) {
    assert_eq!(s.cache_get("k1", 1_000).await.unwrap(), None);
    let first = entry("k1", r#"{"a":1}"#, 1_000, 2_000);
    s.cache_put(&first).await.unwrap();
    assert_eq!(s.cache_get("k1", 1_500).await.unwrap(), Some(first.clone()));
    assert_eq!(s.cache_get("k1", 2_000).await.unwrap(), None, "expired at its time");
    let second = CacheEntry { redactions: Vec::new(), ..entry("k1", r#"{"a":2}"#, 3_000, 9_000) };
    s.cache_put(&second).await.unwrap();
    assert_eq!(s.cache_get("k1", 3_000).await.unwrap(), Some(second));
    s.cache_put(&entry("k2", "2", 1_000, 2_000)).await.unwrap();
    s.purge(0, 5_000).await.unwrap();
    assert_eq!(s.cache_get("k2", 1_500).await.unwrap(), None, "purged once expired");
    assert!(s.cache_get("k1", 5_000).await.unwrap().is_some(), "a live entry stays");
}

/// One claim per key leads: another job follows (told whose claim and until
/// when); the leader renews its own; a lapsed claim is taken over; ending a
/// claim that is not yours does nothing. Of 16 racing claims one leads.
async fn one_claim_leads_and_a_lapsed_one_is_taken_over(s: Arc<dyn Store>) {
    assert_eq!(s.claim_flight("k", "a", 2_000, 1_000).await.unwrap(), Flight::Leader);
    let b = s.claim_flight("k", "b", 2_500, 1_500).await.unwrap();
    assert_eq!(b, Flight::Follower { leader: "a".into(), until: 2_000 });
    assert_eq!(s.claim_flight("k", "a", 3_000, 1_900).await.unwrap(), Flight::Leader, "renewed");
    let b = s.claim_flight("k", "b", 3_500, 2_500).await.unwrap();
    assert_eq!(b, Flight::Follower { leader: "a".into(), until: 3_000 }, "the renewal holds");
    assert_eq!(s.claim_flight("k", "b", 5_000, 3_000).await.unwrap(), Flight::Leader, "lapsed: taken over");
    s.end_flight("k", "a").await.unwrap();
    assert!(matches!(s.claim_flight("k", "c", 6_000, 3_100).await.unwrap(), Flight::Follower { .. }));
    s.end_flight("k", "b").await.unwrap();
    assert_eq!(s.claim_flight("k", "c", 6_000, 3_200).await.unwrap(), Flight::Leader, "ended: free");

    let racers = (0..16).map(|i| {
        let s = s.clone();
        tokio::spawn(async move { s.claim_flight("race", &format!("j{i}"), 10_000, 1_000).await.unwrap() })
    });
    let mut leaders = 0;
    for r in racers {
        if r.await.unwrap() == Flight::Leader {
            leaders += 1;
        }
    }
    assert_eq!(leaders, 1, "exactly one of the racing claims leads");
}

/// Waiters are recorded per key (twice is once) and each is taken once,
/// even by racing takers; other keys keep theirs.
async fn each_waiter_is_taken_once(s: Arc<dyn Store>) {
    for i in 0..40 {
        s.add_waiter("k", &format!("j{i}"), "acme", 9_000).await.unwrap();
    }
    s.add_waiter("k", "j0", "acme", 9_500).await.unwrap();
    s.add_waiter("other", "x", "acme", 9_000).await.unwrap();
    let (a, b) = tokio::join!(s.take_waiters("k"), s.take_waiters("k"));
    let mut taken: Vec<(String, String)> = a.unwrap();
    taken.extend(b.unwrap());
    let ids: BTreeSet<&str> = taken.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(taken.len(), 40, "each waiter taken once: {taken:?}");
    assert_eq!(ids.len(), 40);
    assert!(taken.iter().all(|(_, v)| v == "acme"));
    assert!(s.take_waiters("k").await.unwrap().is_empty(), "nothing left");
    assert_eq!(s.take_waiters("other").await.unwrap(), vec![("x".to_string(), "acme".to_string())]);
}

/// A job ended `Cached` is `complete` with the result, marked `cached`; a
/// job ended `Complete` is not marked; a finished job cannot be ended
/// `Cached` again.
async fn a_cached_outcome_marks_the_job(s: Arc<dyn Store>) {
    for id in ["c1", "c2"] {
        let job = NewJob {
            request_id: id.into(),
            vendor: "acme".into(),
            data: "{}".into(),
            owner: None,
            created_at: 1_000,
            idempotency: None,
            notify_url: None,
            trace: None,
            priority: Priority::Normal,
        };
        s.insert(&job).await.unwrap();
    }
    let redactions = vec![Redaction { path: "a".into(), kind: "email".into() }];
    let cached = Outcome::Cached { result: r#"{"r":1}"#.into(), redactions: redactions.clone() };
    assert!(s.finish("c1", &cached, 2_000, None).await.unwrap());
    assert!(!s.finish("c1", &cached, 2_001, None).await.unwrap(), "ended once");
    let c1 = s.get("c1").await.unwrap().unwrap();
    assert_eq!((c1.status, c1.cached, c1.result.as_deref()), (Status::Complete, true, Some(r#"{"r":1}"#)));
    assert_eq!(c1.redactions, redactions);
    assert!(
        s.finish("c2", &Outcome::Complete { result: "1".into(), redactions: Vec::new() }, 2_000, None).await.unwrap()
    );
    let c2 = s.get("c2").await.unwrap().unwrap();
    assert_eq!((c2.status, c2.cached), (Status::Complete, false));
}

macro_rules! store_cache_suite {
    ($( $case:ident => $sqlite:ident, $mongo:ident; )*) => {
        $(
            contract_test!($case, sqlite, $sqlite);
            contract_test!($case, mongo, $mongo);
        )*
    };
}

store_cache_suite! {
    cached_results_expire_and_are_replaced =>
        store_sqlite_cached_results_expire_and_are_replaced, store_mongo_cached_results_expire_and_are_replaced;
    one_claim_leads_and_a_lapsed_one_is_taken_over =>
        store_sqlite_one_claim_leads_and_a_lapsed_one_is_taken_over,
        store_mongo_one_claim_leads_and_a_lapsed_one_is_taken_over;
    each_waiter_is_taken_once => store_sqlite_each_waiter_is_taken_once, store_mongo_each_waiter_is_taken_once;
    a_cached_outcome_marks_the_job => store_sqlite_a_cached_outcome_marks_the_job, store_mongo_a_cached_outcome_marks_the_job;
}
