//! One Redis connection per process for every non-blocking command (queue,
//! rate limits, breakers share it: it is multiplexed and reconnects by
//! itself), and the client that blocking readers open their own
//! connections from (a blocked command stalls everything behind it on its
//! connection).
//!
//! Two deployments, chosen by the URL: one node (`redis://`, `rediss://`:
//! a `ConnectionManager`) or a Redis Cluster (`redis+cluster://h1:p1,h2:p2`:
//! the `redis` crate's async cluster client, which routes every command to
//! the master owning its key's slot, follows `MOVED`/`ASK` and refreshes
//! its slot map after a failover). Callers see one connection type either
//! way; on a cluster every command, pipeline and script must stay within
//! one slot (the client refuses a pipeline that does not: `CROSSSLOT`).
//!
//! A dead connection cannot hang its users: every socket has TCP keepalive
//! (and, on Linux, `TCP_USER_TIMEOUT`), every command on the shared
//! connection is given up after the response timeout, and a command given up
//! that way replaces the shared connection with a new one (a peer that
//! stopped answering without closing the socket never tells the client
//! otherwise). Blocking readers bound each read to its block time plus the
//! same timeout (see `queue/redis`).
//!
//! Every request sent through either kind (a command, a pipeline, a script
//! invocation) counts one round-trip (`vendorhost_redis_round_trips_total`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::{TcpSettings, socket2::TcpKeepalive};
use redis::{AsyncConnectionConfig, Cmd, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, Value};

/// The scheme of a Redis Cluster URL: `redis+cluster://[user:pass@]h1:p1[,h2:p2...][/]`.
pub const CLUSTER_SCHEME: &str = "redis+cluster://";

/// Default response timeout of the shared connection (`redis_timeout`).
/// Callers that must give up sooner (the rate limiter, the breakers) bound
/// their own commands.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// An idle connection is probed after this long without traffic...
const KEEPALIVE_IDLE: Duration = Duration::from_secs(15);
/// ...then every `KEEPALIVE_INTERVAL`, and dropped after `KEEPALIVE_PROBES`
/// unanswered probes (or, on Linux, once sent data or probes go
/// unacknowledged for `USER_TIMEOUT`).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_PROBES: u32 = 3;
const USER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct RedisConn {
    /// Where dedicated (blocking) connections come from; their sockets
    /// have TCP keepalive.
    source: Source,
    /// Shared by every non-blocking command of the process.
    pub shared: SharedConn,
    /// Response timeout: of every command on `shared`, and what a blocking
    /// read may take beyond its block time.
    pub timeout: Duration,
}

/// A standalone node or a cluster (boxed: the cluster client is large).
#[derive(Clone)]
enum Source {
    Single(redis::Client),
    Cluster(Box<ClusterClient>),
}

impl RedisConn {
    /// With the default response timeout (tests, tools).
    pub async fn connect(url: &str) -> redis::RedisResult<RedisConn> {
        Self::connect_with(url, RESPONSE_TIMEOUT).await
    }

    /// Connects the shared connection; `timeout` bounds every command on it.
    /// A `redis+cluster://` URL connects to a cluster, anything else to one node.
    pub async fn connect_with(url: &str, timeout: Duration) -> redis::RedisResult<RedisConn> {
        let source = match cluster_nodes(url) {
            Some(nodes) => {
                let nodes =
                    nodes.map_err(|m| RedisError::from((redis::ErrorKind::InvalidClientConfig, "cluster URL", m)))?;
                let client = ClusterClient::builder(nodes)
                    .tcp_settings(tcp_settings())
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .build()?;
                Source::Cluster(Box::new(client))
            }
            None => {
                let info = url.into_connection_info()?.set_tcp_settings(tcp_settings());
                Source::Single(redis::Client::open(info)?)
            }
        };
        let shared = SharedConn::connect(source.clone(), timeout).await?;
        Ok(RedisConn { source, shared, timeout })
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.source, Source::Cluster(_))
    }

    /// A new connection of its own for blocking commands, with no response
    /// timeout: the caller bounds each command (block time + `timeout`). On
    /// a cluster it routes by key like the shared one, so a blocking read
    /// goes to the master owning its stream's slot.
    pub async fn blocking(&self) -> redis::RedisResult<BlockingConn> {
        match &self.source {
            Source::Single(client) => {
                let config =
                    AsyncConnectionConfig::new().set_connection_timeout(Some(self.timeout)).set_response_timeout(None);
                Ok(BlockingConn::Single(client.get_multiplexed_async_connection_with_config(&config).await?))
            }
            Source::Cluster(client) => {
                // The cluster client has no "no timeout": a day stands for none.
                let config = ClusterConfig::new().set_connection_timeout(self.timeout).set_response_timeout(UNBOUNDED);
                Ok(BlockingConn::Cluster(client.get_async_connection_with_config(config).await?))
            }
        }
    }
}

/// What a blocking connection's own response timeout is set to on a
/// cluster (callers bound each read themselves).
const UNBOUNDED: Duration = Duration::from_secs(24 * 3600);

/// The nodes of a `redis+cluster://` URL as `redis://` URLs (credentials
/// copied to each); None if `url` is not a cluster URL, `Some(Err)` if it
/// is one without a usable node list.
pub fn cluster_nodes(url: &str) -> Option<Result<Vec<String>, String>> {
    let rest = url.strip_prefix(CLUSTER_SCHEME)?;
    let rest = rest.trim_end_matches('/');
    let (auth, hosts) = match rest.rfind('@') {
        Some(at) => (format!("{}@", &rest[..at]), &rest[at + 1..]),
        None => (String::new(), rest),
    };
    let nodes: Vec<String> =
        hosts.split(',').map(str::trim).filter(|h| !h.is_empty()).map(|h| format!("redis://{auth}{h}/")).collect();
    if nodes.is_empty() {
        return Some(Err(format!("{CLUSTER_SCHEME} needs at least one host:port")));
    }
    if hosts.split(',').any(|h| h.contains('/')) {
        return Some(Err("a cluster URL names no database (a cluster has only database 0)".into()));
    }
    Some(Ok(nodes))
}

/// One node's URL: `url` itself, or a cluster URL's first node (pub/sub
/// users: a PUBLISH on any node of a cluster reaches every node).
pub fn one_node(url: &str) -> String {
    match cluster_nodes(url) {
        Some(Ok(nodes)) => nodes.into_iter().next().unwrap_or_else(|| url.to_string()),
        _ => url.to_string(),
    }
}

/// A dedicated connection for blocking commands.
pub enum BlockingConn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

/// Counts one request sent to Redis on a connection of `kind`.
fn round_trip(kind: &'static str) {
    metrics::counter!(crate::telemetry::REDIS_ROUND_TRIPS, "kind" => kind).increment(1);
}

impl ConnectionLike for BlockingConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        round_trip("blocking");
        match self {
            BlockingConn::Single(c) => c.req_packed_command(cmd),
            BlockingConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        round_trip("blocking");
        match self {
            BlockingConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            BlockingConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            BlockingConn::Single(c) => c.get_db(),
            BlockingConn::Cluster(c) => c.get_db(),
        }
    }
}

/// The key `<what>` of one vendor, under the vendor's own hash tag
/// (`{<prefix>:v:<vendor>}:<what>`): every key a rate-limit or breaker script
/// touches for one vendor is in one cluster slot, and vendors spread over
/// the slots.
pub fn vendor_key(prefix: &str, vendor: &str, what: &str) -> String {
    format!("{{{prefix}:v:{vendor}}}:{what}")
}

/// Keys a script read for its caller beside its own work, on one node
/// (issue 24: the lease reads what the worker's gate would otherwise ask
/// for in round trips of its own; see `queue::LeaseOptions`). The readers
/// (the rate limiter, the breakers) name their keys and make sense of the
/// values; the queue only carries them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Peeked {
    /// Redis' clock when the keys were read, in epoch milliseconds.
    pub clock_ms: i64,
    /// Each key read: its value (None: the key does not exist). A key not
    /// in the map was not read.
    pub values: std::collections::HashMap<String, Option<Peek>>,
}

/// One key's value as read.
#[derive(Debug, Clone, PartialEq)]
pub enum Peek {
    Text(String),
    /// A hash's fields.
    Hash(std::collections::HashMap<String, String>),
}

impl Peeked {
    /// Whether `key` was read.
    pub fn has(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }

    /// `key`'s text, if it was read and holds a string.
    pub fn text(&self, key: &str) -> Option<&str> {
        match self.values.get(key) {
            Some(Some(Peek::Text(t))) => Some(t),
            _ => None,
        }
    }

    /// `key`'s field `field`, if it was read and holds a hash with it.
    pub fn field(&self, key: &str, field: &str) -> Option<&str> {
        match self.values.get(key) {
            Some(Some(Peek::Hash(h))) => h.get(field).map(String::as_str),
            _ => None,
        }
    }
}

/// Keepalive on every socket: a peer that vanished (host down, connection
/// state lost on the path) is noticed even on an idle connection.
fn tcp_settings() -> TcpSettings {
    let keepalive = TcpKeepalive::new().with_time(KEEPALIVE_IDLE);
    #[cfg(target_os = "linux")]
    let keepalive = keepalive.with_interval(KEEPALIVE_INTERVAL).with_retries(KEEPALIVE_PROBES);
    let settings = TcpSettings::default().set_nodelay(true).set_keepalive(keepalive);
    #[cfg(target_os = "linux")]
    let settings = settings.set_user_timeout(USER_TIMEOUT);
    #[cfg(not(target_os = "linux"))]
    let _ = (KEEPALIVE_INTERVAL, KEEPALIVE_PROBES, USER_TIMEOUT);
    settings
}

/// The shared connection: a `ConnectionManager` (multiplexed, reconnects
/// when the socket closes) or a cluster connection, whose every command is
/// bounded by `timeout`, and which is replaced by a new one when a command
/// runs out of time. The manager alone reconnects only on errors that close
/// the socket; a response timeout leaves it on a connection that may never
/// answer again.
#[derive(Clone)]
pub struct SharedConn(Arc<Shared>);

struct Shared {
    source: Source,
    config: ConnectionManagerConfig,
    timeout: Duration,
    /// The current connection and its generation (bumped on each
    /// replacement, so that many commands timing out together replace it
    /// once).
    current: Mutex<(u64, Link)>,
}

/// One live connection of either kind (both are cheap handles to clone).
#[derive(Clone)]
enum Link {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Single(c) => c.req_packed_command(cmd),
            Link::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Link::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Single(c) => c.get_db(),
            Link::Cluster(c) => c.get_db(),
        }
    }
}

impl SharedConn {
    async fn connect(source: Source, timeout: Duration) -> redis::RedisResult<SharedConn> {
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout))
            .set_max_delay(timeout);
        let link = match &source {
            Source::Single(client) => Link::Single(client.get_connection_manager_with_config(config.clone()).await?),
            Source::Cluster(client) => {
                Link::Cluster(client.get_async_connection_with_config(cluster_config(timeout)).await?)
            }
        };
        Ok(SharedConn(Arc::new(Shared { source, config, timeout, current: Mutex::new((0, link)) })))
    }

    fn current(&self) -> (u64, Link) {
        let guard = self.0.current.lock().unwrap_or_else(|p| p.into_inner());
        (guard.0, guard.1.clone())
    }

    /// Runs one request on the current connection within the timeout; a
    /// request that ran out of time replaces the connection (once per
    /// generation). Requests in flight on the old one end by their own
    /// timeout; its sockets close with its last user.
    async fn run<'a, T>(&self, request: impl FnOnce(Link) -> RedisFuture<'a, T>) -> redis::RedisResult<T> {
        let (generation, link) = self.current();
        let result = match tokio::time::timeout(self.0.timeout, request(link)).await {
            Ok(r) => r,
            Err(_) => Err(timed_out(self.0.timeout)),
        };
        if let Err(e) = &result
            && e.is_timeout()
        {
            self.replace(generation, e);
        }
        result
    }

    fn replace(&self, generation: u64, cause: &RedisError) {
        let mut guard = self.0.current.lock().unwrap_or_else(|p| p.into_inner());
        if guard.0 != generation {
            return; // already replaced since
        }
        let fresh = match &self.0.source {
            Source::Single(client) => {
                ConnectionManager::new_lazy_with_config(client.clone(), self.0.config.clone()).map(Link::Single)
            }
            Source::Cluster(client) => {
                Ok(Link::Cluster(client.get_pending_async_connection_with_config(cluster_config(self.0.timeout))))
            }
        };
        match fresh {
            Ok(fresh) => {
                *guard = (generation + 1, fresh);
                tracing::warn!(error = %cause, timeout = ?self.0.timeout, "redis did not answer in time; reconnecting");
            }
            Err(e) => tracing::warn!(error = %e, "redis did not answer in time, and no new connection could be made"),
        }
    }
}

fn cluster_config(timeout: Duration) -> ClusterConfig {
    ClusterConfig::new().set_connection_timeout(timeout).set_response_timeout(timeout)
}

fn timed_out(after: Duration) -> RedisError {
    let e = std::io::Error::new(std::io::ErrorKind::TimedOut, format!("redis did not answer within {after:?}"));
    RedisError::from(e)
}

impl ConnectionLike for SharedConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        round_trip("shared");
        Box::pin(self.run(move |mut m| Box::pin(async move { m.req_packed_command(cmd).await })))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        round_trip("shared");
        Box::pin(self.run(move |mut m| Box::pin(async move { m.req_packed_commands(pipeline, offset, count).await })))
    }

    fn get_db(&self) -> i64 {
        self.current().1.get_db()
    }
}
