//! Idempotency records in Redis: one hash per key, changed only by Lua scripts so
//! each claim, completion and release is atomic.

use std::time::Duration;

use async_trait::async_trait;
use redis::{Script, Value};

use super::{Claim, IdempotencyStore, StoreError, StoredResponse};
use crate::cache::redis::Redis;

const CLAIM: &str = r"
local rec = redis.call('HMGET', KEYS[1], 'state', 'fp', 'status', 'ctype', 'location', 'body')
if not rec[1] then
  redis.call('HSET', KEYS[1], 'state', 'running', 'owner', ARGV[1], 'fp', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {'acquired'}
end
if rec[2] ~= ARGV[2] then return {'mismatch'} end
if rec[1] == 'running' then return {'running', tostring(redis.call('PTTL', KEYS[1]))} end
return {'done', rec[3], rec[4] or '', rec[5] or '', rec[6] or ''}";

const COMPLETE: &str = r"
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'done', 'status', ARGV[2], 'ctype', ARGV[3], 'location', ARGV[4], 'body', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return 1";

const RELEASE: &str = r"
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

pub struct RedisIdempotency {
    redis: Redis,
    claim: Script,
    complete: Script,
    release: Script,
}

impl RedisIdempotency {
    pub fn new(redis: Redis) -> Self {
        RedisIdempotency {
            redis,
            claim: Script::new(CLAIM),
            complete: Script::new(COMPLETE),
            release: Script::new(RELEASE),
        }
    }

    fn key(&self, key: &str) -> String {
        self.redis.key(&format!("idem:{key}"))
    }
}

fn err(e: redis::RedisError) -> StoreError {
    StoreError(e.to_string())
}

fn text(v: &Value) -> Result<String, StoreError> {
    match v {
        Value::BulkString(b) => Ok(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Ok(s.clone()),
        Value::Int(i) => Ok(i.to_string()),
        other => Err(StoreError(format!("unexpected reply {other:?}"))),
    }
}

fn bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::BulkString(b) => b.clone(),
        Value::SimpleString(s) => s.clone().into_bytes(),
        _ => Vec::new(),
    }
}

#[async_trait]
impl IdempotencyStore for RedisIdempotency {
    async fn claim(
        &self,
        key: &str,
        owner: &str,
        fingerprint: &str,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let mut conn = self.redis.conn();
        let mut claim = self.claim.key(self.key(key));
        claim
            .arg(owner)
            .arg(fingerprint)
            .arg(lease.as_millis().max(1) as u64);
        let reply: Vec<Value> = crate::telemetry::traced(
            self.redis.span("EVALSHA idempotency.claim"),
            claim.invoke_async(&mut conn),
        )
        .await
        .map_err(err)?;
        let state = reply.first().map(text).transpose()?.unwrap_or_default();
        match state.as_str() {
            "acquired" => Ok(Claim::Acquired),
            "mismatch" => Ok(Claim::Mismatch),
            "running" => {
                let ms: i64 = reply
                    .get(1)
                    .map(text)
                    .transpose()?
                    .unwrap_or_default()
                    .parse()
                    .unwrap_or(1000);
                Ok(Claim::InFlight(Duration::from_millis(ms.max(0) as u64)))
            }
            "done" if reply.len() == 5 => Ok(Claim::Completed(StoredResponse {
                status: text(&reply[1])?
                    .parse()
                    .map_err(|_| StoreError("bad stored status".into()))?,
                content_type: text(&reply[2])?,
                location: text(&reply[3])?,
                body: bytes(&reply[4]),
            })),
            other => Err(StoreError(format!("unexpected claim state {other:?}"))),
        }
    }

    async fn complete(
        &self,
        key: &str,
        owner: &str,
        r: &StoredResponse,
        retention: Duration,
    ) -> Result<bool, StoreError> {
        let mut conn = self.redis.conn();
        let mut complete = self.complete.key(self.key(key));
        complete
            .arg(owner)
            .arg(r.status)
            .arg(&r.content_type)
            .arg(&r.location)
            .arg(&r.body[..])
            .arg(retention.as_millis().max(1) as u64);
        let stored: i64 = crate::telemetry::traced(
            self.redis.span("EVALSHA idempotency.complete"),
            complete.invoke_async(&mut conn),
        )
        .await
        .map_err(err)?;
        Ok(stored == 1)
    }

    async fn release(&self, key: &str, owner: &str) -> Result<(), StoreError> {
        let mut conn = self.redis.conn();
        let mut release = self.release.key(self.key(key));
        release.arg(owner);
        crate::telemetry::traced(
            self.redis.span("EVALSHA idempotency.release"),
            release.invoke_async::<i64>(&mut conn),
        )
        .await
        .map(drop)
        .map_err(err)
    }
}
