//! One Redis connection per process for every non-blocking command (queue,
//! rate limits, breakers share it: it is multiplexed and reconnects by
//! itself), and the client that blocking readers open their own
//! connections from (a blocked command stalls everything behind it on its
//! connection).
//!
//! A dead connection cannot hang its users: every socket has TCP keepalive
//! (and, on Linux, `TCP_USER_TIMEOUT`), every command on the shared
//! connection is given up after the response timeout, and a command given up
//! that way replaces the shared connection with a new one (a peer that
//! stopped answering without closing the socket never tells the client
//! otherwise). Blocking readers bound each read to its block time plus the
//! same timeout (see `queue/redis.rs`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::io::tcp::{TcpSettings, socket2::TcpKeepalive};
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, Value};

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
    /// For dedicated (blocking) connections; its sockets have TCP keepalive.
    pub client: redis::Client,
    /// Shared by every non-blocking command of the process.
    pub shared: SharedConn,
    /// Response timeout: of every command on `shared`, and what a blocking
    /// read may take beyond its block time.
    pub timeout: Duration,
}

impl RedisConn {
    /// With the default response timeout (tests, tools).
    pub async fn connect(url: &str) -> redis::RedisResult<RedisConn> {
        Self::connect_with(url, RESPONSE_TIMEOUT).await
    }

    /// Connects the shared connection; `timeout` bounds every command on it.
    pub async fn connect_with(url: &str, timeout: Duration) -> redis::RedisResult<RedisConn> {
        let info = url.into_connection_info()?.set_tcp_settings(tcp_settings());
        let client = redis::Client::open(info)?;
        let shared = SharedConn::connect(client.clone(), timeout).await?;
        Ok(RedisConn { client, shared, timeout })
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
/// when the socket closes) whose every command is bounded by `timeout`, and
/// which is replaced by a new one when a command runs out of time. The
/// manager alone reconnects only on errors that close the socket; a response
/// timeout leaves it on a connection that may never answer again.
#[derive(Clone)]
pub struct SharedConn(Arc<Shared>);

struct Shared {
    client: redis::Client,
    config: ConnectionManagerConfig,
    timeout: Duration,
    /// The current manager and its generation (bumped on each replacement,
    /// so that many commands timing out together replace it once).
    current: Mutex<(u64, ConnectionManager)>,
}

impl SharedConn {
    async fn connect(client: redis::Client, timeout: Duration) -> redis::RedisResult<SharedConn> {
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout))
            .set_max_delay(timeout);
        let manager = client.get_connection_manager_with_config(config.clone()).await?;
        Ok(SharedConn(Arc::new(Shared { client, config, timeout, current: Mutex::new((0, manager)) })))
    }

    fn current(&self) -> (u64, ConnectionManager) {
        let guard = self.0.current.lock().unwrap_or_else(|p| p.into_inner());
        (guard.0, guard.1.clone())
    }

    /// Runs one request on the current manager within the timeout; a
    /// request that ran out of time replaces the manager (once per
    /// generation). Requests in flight on the old one end by their own
    /// timeout; its socket closes with its last user.
    async fn run<'a, T>(&self, request: impl FnOnce(ConnectionManager) -> RedisFuture<'a, T>) -> redis::RedisResult<T> {
        let (generation, manager) = self.current();
        let result = match tokio::time::timeout(self.0.timeout, request(manager)).await {
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
        match ConnectionManager::new_lazy_with_config(self.0.client.clone(), self.0.config.clone()) {
            Ok(fresh) => {
                *guard = (generation + 1, fresh);
                tracing::warn!(error = %cause, timeout = ?self.0.timeout, "redis did not answer in time; reconnecting");
            }
            Err(e) => tracing::warn!(error = %e, "redis did not answer in time, and no new connection could be made"),
        }
    }
}

fn timed_out(after: Duration) -> RedisError {
    let e = std::io::Error::new(std::io::ErrorKind::TimedOut, format!("redis did not answer within {after:?}"));
    RedisError::from(e)
}

impl ConnectionLike for SharedConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(self.run(move |mut m| Box::pin(async move { m.req_packed_command(cmd).await })))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(self.run(move |mut m| Box::pin(async move { m.req_packed_commands(pipeline, offset, count).await })))
    }

    fn get_db(&self) -> i64 {
        self.current().1.get_db()
    }
}
