//! One Redis connection per process for every non-blocking command (queue,
//! rate limits, breakers share it: it is multiplexed and reconnects by
//! itself), and the client that blocking readers open their own
//! connections from (a blocked command stalls everything behind it on its
//! connection).

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// Response timeout of the shared connection. Callers that must give up
/// sooner (the rate limiter, the breakers) bound their own commands.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct RedisConn {
    /// For dedicated (blocking) connections.
    pub client: redis::Client,
    /// Shared by every non-blocking command of the process.
    pub manager: ConnectionManager,
}

impl RedisConn {
    pub async fn connect(url: &str) -> redis::RedisResult<RedisConn> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new().set_response_timeout(Some(RESPONSE_TIMEOUT));
        let manager = client.get_connection_manager_with_config(config).await?;
        Ok(RedisConn { client, manager })
    }
}
