//! Idempotency records on sled, for one process without Redis. One lock makes each
//! claim, completion and release atomic; records expire by their own deadline.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{Claim, IdempotencyStore, StoreError, StoredResponse};

#[derive(Serialize, Deserialize)]
struct Record {
    owner: String,
    fingerprint: String,
    expires_ms: u64,
    /// None while the first request runs.
    response: Option<(u16, String, String, Vec<u8>)>,
}

pub struct SledIdempotency {
    tree: sled::Tree,
    lock: std::sync::Mutex<()>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

impl SledIdempotency {
    pub fn open(db: &sled::Db) -> Result<Self, StoreError> {
        Ok(SledIdempotency {
            tree: db.open_tree("idempotency").map_err(err)?,
            lock: std::sync::Mutex::new(()),
        })
    }

    /// The live record of `key` (an expired one counts as none).
    fn live(&self, key: &str) -> Result<Option<Record>, StoreError> {
        let Some(raw) = self.tree.get(key).map_err(err)? else {
            return Ok(None);
        };
        let record: Record = serde_json::from_slice(&raw).map_err(err)?;
        Ok((record.expires_ms > now_ms()).then_some(record))
    }

    fn put(&self, key: &str, record: &Record) -> Result<(), StoreError> {
        let value = serde_json::to_vec(record).map_err(err)?;
        self.tree.insert(key, value).map_err(err).map(drop)
    }

    /// Drops expired records now and then, so the tree does not grow without bound.
    fn sweep(&self) {
        let now = now_ms();
        for (k, v) in self.tree.iter().flatten() {
            if serde_json::from_slice::<Record>(&v).is_ok_and(|r| r.expires_ms <= now) {
                let _ = self.tree.remove(k);
            }
        }
    }
}

#[async_trait]
impl IdempotencyStore for SledIdempotency {
    async fn claim(
        &self,
        key: &str,
        owner: &str,
        fingerprint: &str,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let _atomic = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if rand::random::<u16>() == 0 {
            self.sweep();
        }
        match self.live(key)? {
            None => {
                self.put(
                    key,
                    &Record {
                        owner: owner.into(),
                        fingerprint: fingerprint.into(),
                        expires_ms: now_ms() + lease.as_millis() as u64,
                        response: None,
                    },
                )?;
                Ok(Claim::Acquired)
            }
            Some(r) if r.fingerprint != fingerprint => Ok(Claim::Mismatch),
            Some(Record {
                response: None,
                expires_ms,
                ..
            }) => Ok(Claim::InFlight(Duration::from_millis(
                expires_ms.saturating_sub(now_ms()),
            ))),
            Some(Record {
                response: Some((status, content_type, location, body)),
                ..
            }) => Ok(Claim::Completed(StoredResponse {
                status,
                content_type,
                location,
                body,
            })),
        }
    }

    async fn complete(
        &self,
        key: &str,
        owner: &str,
        r: &StoredResponse,
        retention: Duration,
    ) -> Result<bool, StoreError> {
        let _atomic = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        match self.live(key)? {
            Some(mut record) if record.owner == owner => {
                record.expires_ms = now_ms() + retention.as_millis() as u64;
                record.response = Some((
                    r.status,
                    r.content_type.clone(),
                    r.location.clone(),
                    r.body.clone(),
                ));
                self.put(key, &record)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release(&self, key: &str, owner: &str) -> Result<(), StoreError> {
        let _atomic = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.live(key)?.is_some_and(|r| r.owner == owner) {
            self.tree.remove(key).map_err(err)?;
        }
        Ok(())
    }
}
