//! Telling workers that a job was cancelled, so a plugin call running for it
//! stops at once rather than at its next heartbeat.
//!
//! The store is the truth (a cancel is a forward-only write of `cancelled`);
//! this bus only makes it fast. In one process (`serve`) it is a tokio
//! broadcast channel; with Redis it also publishes on `<prefix>:cancel`, and
//! every process subscribes and re-broadcasts what it hears. A worker
//! running a job listens while it holds the job and drops the call's future
//! when the job's id comes by (wasmtime stops an async call when its future
//! is dropped). A missed message (a Redis reconnect, a lagging listener) is
//! caught by the worker's heartbeat, which reads the job's status.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{broadcast, watch};

/// Cancels remembered per listener before it lags (then it asks the store).
const CAPACITY: usize = 1024;

pub struct CancelBus {
    local: broadcast::Sender<String>,
    /// Connection and channel for publishing to other processes.
    redis: Option<(redis::aio::MultiplexedConnection, String)>,
}

impl CancelBus {
    /// In-process only (the embedded backend: API and workers share it).
    pub fn local() -> Arc<CancelBus> {
        Arc::new(CancelBus { local: broadcast::channel(CAPACITY).0, redis: None })
    }

    /// Shared through Redis pub/sub on `<prefix>:cancel`: publishes there and
    /// re-broadcasts in this process what any process publishes, until `stop`.
    pub async fn redis(url: &str, prefix: &str, stop: watch::Receiver<bool>) -> redis::RedisResult<Arc<CancelBus>> {
        let client = redis::Client::open(crate::redis_conn::one_node(url).as_str())?;
        let conn = client.get_multiplexed_async_connection().await?;
        let channel = format!("{prefix}:cancel");
        let local = broadcast::channel(CAPACITY).0;
        // Subscribed before the first publish can matter.
        let first = subscribe(&client, &channel).await?;
        tokio::spawn(listen(client, channel.clone(), local.clone(), first, stop));
        Ok(Arc::new(CancelBus { local, redis: Some((conn, channel)) }))
    }

    /// Announces that `request_id` was cancelled (after the store says so).
    /// Best effort: a lost message leaves the heartbeat to notice.
    pub async fn publish(&self, request_id: &str) {
        match &self.redis {
            // Other processes and this one alike hear it through Redis.
            Some((conn, channel)) => {
                let mut conn = conn.clone();
                let sent: redis::RedisResult<i64> =
                    redis::cmd("PUBLISH").arg(channel).arg(request_id).query_async(&mut conn).await;
                if let Err(e) = sent {
                    tracing::warn!(request_id, error = %e, "could not publish a cancel; workers see it at their next heartbeat");
                    let _ = self.local.send(request_id.to_string());
                }
            }
            None => {
                let _ = self.local.send(request_id.to_string());
            }
        }
    }

    /// Every cancel announced from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.local.subscribe()
    }
}

async fn subscribe(client: &redis::Client, channel: &str) -> redis::RedisResult<redis::aio::PubSub> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    Ok(pubsub)
}

/// Re-broadcasts the channel's messages here; resubscribes after a lost
/// connection, until `stop`.
async fn listen(
    client: redis::Client,
    channel: String,
    local: broadcast::Sender<String>,
    first: redis::aio::PubSub,
    mut stop: watch::Receiver<bool>,
) {
    let mut pubsub = Some(first);
    loop {
        if *stop.borrow() {
            return;
        }
        let current = match pubsub.take() {
            Some(p) => p,
            None => match subscribe(&client, &channel).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "cancel channel: cannot subscribe; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = stop.changed() => return,
                    }
                }
            },
        };
        let mut messages = current.into_on_message();
        loop {
            tokio::select! {
                m = messages.next() => match m {
                    Some(m) => {
                        if let Ok(id) = m.get_payload::<String>() {
                            let _ = local.send(id);
                        }
                    }
                    None => {
                        tracing::warn!("cancel channel: connection lost; resubscribing");
                        break;
                    }
                },
                _ = stop.changed() => return,
            }
        }
    }
}
