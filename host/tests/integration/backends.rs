//! What only one backend does, against the real server started by
//! `support::servers` (redis-server): entries written to the stream by
//! someone else, entries deleted while pending, a second connect on one
//! prefix. The behaviour every `Queue` and `Store` implementation shares is
//! the suite in `contract/`, run on each of them.

use std::time::Duration;

use crate::support::servers;
use vendorhost::queue::redis::RedisQueue;
use vendorhost::queue::{Message, Queue};

const LONG: Duration = Duration::from_secs(60);

async fn queue() -> (RedisQueue, String) {
    let prefix = servers::unique("vh");
    let q = RedisQueue::connect(&servers::redis().url, &prefix).await.unwrap();
    (q, prefix)
}

async fn raw_redis() -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(servers::redis().url.as_str()).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

fn msg(i: usize) -> Message {
    Message::new(format!("job-{i}"), "acme")
}

#[tokio::test]
async fn redis_foreign_entries_show_up_raw() {
    let (q, prefix) = queue().await;
    let mut conn = raw_redis().await;
    let jobs = format!("{prefix}:jobs");
    let _: String =
        redis::cmd("XADD").arg(&jobs).arg("*").arg("m").arg("{garbage").query_async(&mut conn).await.unwrap();
    let _: String = redis::cmd("XADD").arg(&jobs).arg("*").arg("x").arg("y").query_async(&mut conn).await.unwrap();
    let got = q.lease("c1", 10, LONG, Duration::ZERO).await.unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].payload, "{garbage");
    assert!(Message::decode(&got[0].payload).is_err());
    assert_eq!(got[1].payload, r#"{"x":"y"}"#);
    assert!(Message::decode(&got[1].payload).is_err());
}

#[tokio::test]
async fn redis_reclaim_skips_entries_deleted_while_pending() {
    let (q, prefix) = queue().await;
    q.enqueue(&[msg(1), msg(2)]).await.unwrap();
    let lease = Duration::from_millis(100);
    let got = q.lease("c1", 2, lease, Duration::ZERO).await.unwrap();
    let mut conn = raw_redis().await;
    let _: i64 =
        redis::cmd("XDEL").arg(format!("{prefix}:jobs")).arg(&got[0].entry_id).query_async(&mut conn).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let again = q.lease("c2", 2, lease, Duration::ZERO).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].entry_id, got[1].entry_id);
    q.ack(&again[0]).await.unwrap();
    let d = q.depth().await.unwrap();
    assert_eq!((d.ready, d.leased), (0, 0));
}

#[tokio::test]
async fn redis_connect_twice_is_fine() {
    let (first, prefix) = queue().await;
    // The consumer group exists already: the second connect shares it.
    let second = RedisQueue::connect(&servers::redis().url, &prefix).await.unwrap();
    first.enqueue(&[msg(1)]).await.unwrap();
    let got = second.lease("c2", 10, LONG, Duration::ZERO).await.unwrap();
    assert_eq!(got.len(), 1);
    assert!(first.lease("c1", 10, LONG, Duration::ZERO).await.unwrap().is_empty(), "delivered to both");
}

/// Every store write asks for `majority` and the journal (what the driver
/// sends, read off its command events), and jobs are read from the primary
/// even when the URI asks for a secondary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_writes_are_majority_journaled_and_reads_go_to_the_primary() {
    use mongodb::bson::{Document, doc};
    use mongodb::event::EventHandler;
    use mongodb::event::command::CommandEvent;
    use mongodb::options::{ClientOptions, ReadPreference, SelectionCriteria};
    use std::sync::{Arc, Mutex};
    use vendorhost::model::{NewJob, Outcome, now_ms};
    use vendorhost::store::Store;
    use vendorhost::store::mongo::{Durability, MongoStore};

    let seen: Arc<Mutex<Vec<Document>>> = Arc::default();
    let uri = format!("{}&readPreference=secondaryPreferred", servers::mongo().uri);
    let mut options = ClientOptions::parse(&uri).await.unwrap();
    let sink = seen.clone();
    options.command_event_handler = Some(EventHandler::callback(move |ev: CommandEvent| {
        if let CommandEvent::Started(s) = ev {
            sink.lock().unwrap().push(s.command);
        }
    }));
    let store = MongoStore::connect_with(options, &servers::unique("vh_wc"), &Durability::default()).await.unwrap();
    assert_eq!(store.read_preference(), Some(&SelectionCriteria::ReadPreference(ReadPreference::Primary)));
    let now = now_ms();
    let job = NewJob {
        request_id: "wc-1".into(),
        vendor: "acme".into(),
        data: "{}".into(),
        owner: None,
        created_at: now,
        idempotency: None,
        notify_url: None,
        trace: None,
        priority: vendorhost::model::Priority::Normal,
    };
    store.insert(&job).await.unwrap();
    store.mark_queued(&["wc-1".to_string()], now).await.unwrap();
    store.start_attempt("wc-1", now, now + 1_000).await.unwrap();
    assert!(
        store
            .finish("wc-1", &Outcome::Complete { result: "1".into(), redactions: Vec::new() }, now + 10, None)
            .await
            .unwrap()
    );

    let commands = seen.lock().unwrap().clone();
    let writes: Vec<&Document> = commands
        .iter()
        .filter(|c| ["insert", "update", "findAndModify", "delete"].iter().any(|w| c.contains_key(w)))
        .filter(|c| !c.contains_key("createIndexes"))
        .collect();
    assert!(writes.len() >= 4, "expected the job's writes among {commands:?}");
    for w in writes {
        assert_eq!(w.get_document("writeConcern").ok(), Some(&doc! { "w": "majority", "j": true }), "{w}");
    }
    for c in commands.iter().filter(|c| c.contains_key("find") || c.contains_key("findAndModify")) {
        if let Ok(rp) = c.get_document("$readPreference") {
            assert_eq!(rp.get_str("mode").ok(), Some("primary"), "a job read went elsewhere than the primary: {c}");
        }
    }
}
