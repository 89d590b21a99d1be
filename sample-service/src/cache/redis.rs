//! The shared cache layer on Redis.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

use super::{SharedCache, SharedError};
use crate::telemetry::{traced, Backend};

/// One multiplexed, reconnecting connection with a command timeout, shared by the
/// cache, the idempotency records and the rate limiter.
#[derive(Clone)]
pub struct Redis {
    conn: ConnectionManager,
    prefix: String,
    backend: Backend,
}

impl Redis {
    pub async fn connect(
        url: &str,
        prefix: &str,
        timeout: Duration,
        agent: agent::Agent,
    ) -> redis::RedisResult<Redis> {
        let client = redis::Client::open(url)?;
        let backend = Backend::redis(agent, client.get_connection_info());
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout.max(Duration::from_secs(1))))
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_with_config(client, config).await?;
        Ok(Redis {
            conn,
            prefix: prefix.to_string(),
            backend,
        })
    }

    /// `<prefix>:<key>`: several shops (or tests) share one Redis.
    pub fn key(&self, key: &str) -> String {
        format!("{}:{key}", self.prefix)
    }

    pub fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// A CLIENT span for one Redis command or script, inside a trace.
    pub fn span(&self, summary: &'static str) -> Option<agent::Span> {
        self.backend.span(summary)
    }

    pub async fn ping(&self) -> redis::RedisResult<()> {
        redis::cmd("PING")
            .query_async::<String>(&mut self.conn())
            .await
            .map(drop)
    }
}

fn shared(e: redis::RedisError) -> SharedError {
    SharedError(e.to_string())
}

const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

#[async_trait]
impl SharedCache for Redis {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, SharedError> {
        traced(self.span("GET"), self.conn().get(self.key(key)))
            .await
            .map_err(shared)
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<(), SharedError> {
        let mut conn = self.conn();
        let set = conn.pset_ex(self.key(key), value, ttl.as_millis().max(1) as u64);
        traced(self.span("SET"), set).await.map_err(shared)
    }

    async fn try_lock(&self, key: &str, token: &str, ttl: Duration) -> Result<bool, SharedError> {
        let mut conn = self.conn();
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(key))
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64);
        let set: Option<String> = traced(self.span("SET NX"), cmd.query_async(&mut conn))
            .await
            .map_err(shared)?;
        Ok(set.is_some())
    }

    async fn unlock(&self, key: &str, token: &str) -> Result<(), SharedError> {
        let mut conn = self.conn();
        let script = Script::new(UNLOCK);
        let mut unlock = script.key(self.key(key));
        unlock.arg(token);
        traced(
            self.span("EVALSHA cache.unlock"),
            unlock.invoke_async::<i64>(&mut conn),
        )
        .await
        .map(drop)
        .map_err(shared)
    }

    async fn delete(&self, key: &str) -> Result<(), SharedError> {
        self.conn()
            .del::<_, ()>(self.key(key))
            .await
            .map_err(shared)
    }
}
