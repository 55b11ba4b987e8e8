//! The `Store` behaviour behind completion notifications (issue 18): a job
//! submitted with a `notify_url` becomes due once finished (whoever ended
//! it), one claim per due time wins, and each attempt is recorded. Every
//! case runs on `SqliteStore` and on `MongoStore` (table at the end).

use std::sync::Arc;

use vendorhost::model::{Millis, NewJob, Notify, NotifyAttempt, Outcome};
use vendorhost::store::Store;
use vendorhost::store::mongo::MongoStore;
use vendorhost::store::sqlite::SqliteStore;

use super::{Subject, sqlite_db};
use crate::support::servers;

async fn sqlite() -> Subject<dyn Store> {
    let (db, dir) = sqlite_db();
    Subject::new(Arc::new(SqliteStore::new(db, false)), Some(dir))
}

async fn mongo() -> Subject<dyn Store> {
    let db = servers::unique("vh_notify");
    Subject::new(Arc::new(MongoStore::connect(&servers::mongo().uri, &db).await.expect("connect to mongo")), None)
}

fn job(id: &str, notify_url: Option<&str>, created_at: Millis) -> NewJob {
    NewJob {
        request_id: id.into(),
        vendor: "acme".into(),
        data: "1".into(),
        owner: Some("alice".into()),
        created_at,
        idempotency: None,
        notify_url: notify_url.map(str::to_string),
        trace: None,
        priority: vendorhost::model::Priority::Normal,
    }
}

fn ids(jobs: &[vendorhost::model::Job]) -> Vec<&str> {
    jobs.iter().map(|j| j.request_id.as_str()).collect()
}

async fn finished_jobs_with_a_url_come_due(s: Arc<dyn Store>) {
    s.insert(&job("n1", Some("https://a.example/hook"), 1_000)).await.unwrap();
    s.insert(&job("n2", Some("https://b.example/hook"), 1_100)).await.unwrap();
    s.insert(&job("plain", None, 1_000)).await.unwrap();
    let fresh = s.get("n1").await.unwrap().unwrap().notify.unwrap();
    assert_eq!((fresh.url.as_str(), fresh.attempts, fresh.delivered_at), ("https://a.example/hook", 0, None));
    assert!(s.get("plain").await.unwrap().unwrap().notify.is_none());
    assert!(s.due_notifications(10_000, 10).await.unwrap().is_empty(), "running jobs are not due");
    for id in ["n1", "n2", "plain"] {
        assert!(
            s.finish(id, &Outcome::Complete { result: "1".into(), redactions: vec![] }, 2_000, None).await.unwrap()
        );
    }
    assert_eq!(ids(&s.due_notifications(10_000, 10).await.unwrap()), ["n1", "n2"], "longest due first");
    assert_eq!(ids(&s.due_notifications(10_000, 1).await.unwrap()), ["n1"]);
    assert!(s.due_notifications(999, 10).await.unwrap().is_empty(), "not due before its time");
    // A cancelled or failed job is due too.
    s.insert(&job("n3", Some("https://c.example/hook"), 1_200)).await.unwrap();
    assert!(s.finish("n3", &Outcome::Cancelled, 2_000, None).await.unwrap());
    assert!(ids(&s.due_notifications(10_000, 10).await.unwrap()).contains(&"n3"));
}

async fn one_claim_wins_and_attempts_are_recorded(s: Arc<dyn Store>) {
    s.insert(&job("n", Some("https://a.example/hook"), 1_000)).await.unwrap();
    assert!(s.finish("n", &Outcome::Failed { error: "boom".into() }, 2_000, None).await.unwrap());
    let due = s.due_notifications(3_000, 10).await.unwrap();
    let at = due[0].notify.as_ref().unwrap().next_at.unwrap();
    assert!(s.claim_notification("n", at, 60_000).await.unwrap());
    assert!(!s.claim_notification("n", at, 60_000).await.unwrap(), "the same due time taken twice");
    assert!(s.due_notifications(3_000, 10).await.unwrap().is_empty(), "taken: not due until its claim lapses");
    assert_eq!(ids(&s.due_notifications(60_000, 10).await.unwrap()), ["n"], "a lapsed claim is due again");
    let retry = NotifyAttempt {
        status: Some(500),
        error: Some("answered 500".into()),
        delivered_at: None,
        next_at: Some(5_000),
    };
    s.record_notification("n", &retry).await.unwrap();
    assert_eq!(
        s.get("n").await.unwrap().unwrap().notify.unwrap(),
        Notify {
            url: "https://a.example/hook".into(),
            attempts: 1,
            last_status: Some(500),
            last_error: Some("answered 500".into()),
            delivered_at: None,
            next_at: Some(5_000),
        }
    );
    assert!(s.due_notifications(4_999, 10).await.unwrap().is_empty());
    assert!(s.claim_notification("n", 5_000, 70_000).await.unwrap());
    let done = NotifyAttempt { status: Some(204), error: None, delivered_at: Some(5_100), next_at: None };
    s.record_notification("n", &done).await.unwrap();
    let n = s.get("n").await.unwrap().unwrap().notify.unwrap();
    assert_eq!(
        (n.attempts, n.last_status, n.last_error, n.delivered_at, n.next_at),
        (2, Some(204), None, Some(5_100), None)
    );
    assert!(s.due_notifications(i64::MAX, 10).await.unwrap().is_empty(), "delivered: never due again");
    // A job without a URL records nothing.
    s.insert(&job("plain", None, 1_000)).await.unwrap();
    s.record_notification("plain", &done).await.unwrap();
    assert!(s.get("plain").await.unwrap().unwrap().notify.is_none());
}

macro_rules! store_notify_suite {
    ($( $case:ident => $sqlite:ident, $mongo:ident; )*) => {
        $(
            contract_test!($case, sqlite, $sqlite);
            contract_test!($case, mongo, $mongo);
        )*
    };
}

store_notify_suite! {
    finished_jobs_with_a_url_come_due =>
        store_sqlite_finished_jobs_with_a_url_come_due, store_mongo_finished_jobs_with_a_url_come_due;
    one_claim_wins_and_attempts_are_recorded =>
        store_sqlite_one_claim_wins_and_attempts_are_recorded, store_mongo_one_claim_wins_and_attempts_are_recorded;
}
