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
