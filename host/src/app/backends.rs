//! Backend selection: the configuration names a queue (`sqlite`, `redis://`
//! for one node or `redis+cluster://` for a Redis Cluster) and a store (`sqlite` or `mongodb://`); this connects them,
//! with the rate limiter and breakers that go with the queue (in-process
//! beside SQLite, shared through Redis beside Redis).

use std::sync::Arc;

use super::error::StartError;
use crate::breaker::Breakers;
use crate::breaker::local::LocalBreakers;
use crate::breaker::redis::RedisBreakers;
use crate::config::Config;
use crate::db::Db;
use crate::limits::RateLimiter;
use crate::limits::local::LocalLimiter;
use crate::limits::redis::RedisLimiter;
use crate::queue::Queue;
use crate::queue::fair::Fairness;
use crate::queue::redis::RedisQueue;
use crate::queue::sqlite::SqliteQueue;
use crate::redis_conn::RedisConn;
use crate::store::Store;
use crate::store::mongo::{Durability, MongoStore, ShardOutcome, Sharding};
use crate::store::sqlite::SqliteStore;

pub struct Backends {
    pub queue: Arc<dyn Queue>,
    pub store: Arc<dyn Store>,
    pub limiter: Arc<dyn RateLimiter>,
    pub breakers: Arc<dyn Breakers>,
    pub description: String,
}

/// Hides credentials in a URL for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

pub async fn backends(cfg: &Config) -> Result<Backends, StartError> {
    let db = if cfg.is_embedded_queue() || cfg.is_embedded_store() {
        Some(Db::open(&cfg.data).map_err(|e| StartError::Database { path: cfg.data.clone(), message: e.to_string() })?)
    } else {
        None
    };
    // The queue's fair order: the keys' weights and the aging (on the
    // embedded queue the same for its rows written by `enqueue` and by the
    // store's submits).
    let fair = Arc::new(Fairness {
        weights: cfg.auth.keys.iter().filter_map(|(name, k)| Some((name.clone(), k.weight?))).collect(),
        aging: cfg.queue_settings.priority_aging,
    });
    let redis_err = |e: &dyn std::fmt::Display| StartError::Redis { url: redact(&cfg.queue), message: e.to_string() };
    let (queue, limiter, breakers): (Arc<dyn Queue>, Arc<dyn RateLimiter>, Arc<dyn Breakers>) = match &db {
        Some(db) if cfg.is_embedded_queue() => {
            let q = SqliteQueue::new(db.clone()).with_fairness(fair.clone());
            (Arc::new(q), Arc::new(LocalLimiter::new()), Arc::new(LocalBreakers::new()))
        }
        _ => {
            // One shared connection for the queue's non-blocking commands,
            // the rate limiter and the breakers; the queue opens its own
            // for blocking reads.
            let conn = RedisConn::connect_with(&cfg.queue, cfg.redis_timeout).await.map_err(|e| redis_err(&e))?;
            let partitions = cfg.queue_settings.partitions;
            let q = RedisQueue::with_partitions(&conn, &cfg.redis_prefix, partitions)
                .await
                .map_err(|e| redis_err(&e))?
                .with_fairness(fair.clone());
            tracing::info!(partitions = q.partitions(), cluster = conn.is_cluster(), "redis queue ready");
            let l = RedisLimiter::new(&conn, &cfg.redis_prefix);
            let b = RedisBreakers::new(&conn, &cfg.redis_prefix);
            (Arc::new(q), Arc::new(l), Arc::new(b))
        }
    };
    let store: Arc<dyn Store> = match &db {
        Some(db) if cfg.is_embedded_store() => {
            Arc::new(SqliteStore::new(db.clone(), cfg.is_embedded_queue()).with_fairness(fair.clone()))
        }
        _ => Arc::new(
            connect_mongo(cfg)
                .await
                .map_err(|e| StartError::Mongo { url: redact(&cfg.store), message: e.to_string() })?,
        ),
    };
    let description = format!(
        "queue: {}, store: {}",
        if cfg.is_embedded_queue() {
            format!("sqlite ({})", cfg.data.display())
        } else {
            let kind = if cfg.queue.starts_with("redis+cluster://") { "redis cluster" } else { "redis" };
            format!("{kind} ({})", redact(&cfg.queue))
        },
        if cfg.is_embedded_store() {
            format!("sqlite ({})", cfg.data.display())
        } else {
            format!("mongodb ({})", redact(&cfg.store))
        },
    );
    Ok(Backends { queue, store, limiter, breakers, description })
}

/// Connects the MongoDB store, then does what `mongo_init` says: create
/// the missing indexes (`indexes`), also shard the collections against a
/// `mongos` (`shard`), or nothing (`off`; `vendorhost store init` does it).
async fn connect_mongo(cfg: &Config) -> Result<MongoStore, crate::store::StoreError> {
    let store = mongo_store(cfg).await?;
    let sharding = match cfg.mongo_init.as_str() {
        "off" => return Ok(store),
        "shard" => Sharding::IfMongos,
        _ => Sharding::Never,
    };
    let report = store.init(sharding).await?;
    tracing::info!(
        database = %report.database,
        mongos = report.mongos,
        indexes_created = report.created(),
        indexes_present = report.indexes.len() - report.created(),
        collections_sharded = report.shards.iter().filter(|s| s.outcome == ShardOutcome::Sharded).count(),
        "mongodb store initialised"
    );
    if report.mongos && sharding == Sharding::Never {
        tracing::info!(
            "connected to a mongos: collections are sharded by `vendorhost store init` (or mongo_init = \"shard\")"
        );
    }
    Ok(store)
}

/// The MongoDB store `cfg` names, connected (nothing created).
pub async fn mongo_store(cfg: &Config) -> Result<MongoStore, crate::store::StoreError> {
    let options = mongodb::options::ClientOptions::parse(&cfg.store).await?;
    let durability = Durability { write_concern: cfg.mongo_write_concern.clone(), journal: cfg.mongo_journal };
    Ok(MongoStore::connect_with(options, &cfg.mongo_db, &durability).await?.with_job_ttl(Some(cfg.retention.jobs)))
}
