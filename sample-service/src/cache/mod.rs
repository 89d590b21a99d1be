//! Layered cache-aside: in-process (moka) → shared (Redis) → the loader (PostgreSQL).
//!
//! - One process: concurrent misses for a key share one load (moka's `try_get_with`).
//! - Several processes: a Redis lock lets one rebuild an entry while the others wait
//!   briefly and re-read; probabilistic early refresh (XFetch) rebuilds hot entries
//!   before they expire, so they rarely expire under load at all.
//! - "Does not exist" is cached too, with a shorter TTL.
//! - Failures are not cached, and a failing Redis only costs the shared layer.
//!
//! The cache is an efficiency measure: correctness stays in the database.

mod envelope;
pub mod redis;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use moka::future::Cache;
use rand::Rng;

use crate::faults::FaultSwitch;
use crate::metrics::PatternMetrics;
use crate::store::StoreError;
use envelope::Envelope;

/// A cached answer: the entity's JSON, or the fact that it does not exist.
#[derive(Clone, Debug, PartialEq)]
pub enum Cached {
    Found(Bytes),
    Missing,
}

#[derive(Debug, thiserror::Error)]
#[error("shared cache: {0}")]
pub struct SharedError(pub String);

/// The cache shared by every replica (Redis).
#[async_trait]
pub trait SharedCache: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, SharedError>;
    /// The key's version: every invalidation raises it.
    async fn version(&self, key: &str) -> Result<u64, SharedError>;
    /// Stores `value` only if the key's version is still `version` (read before the
    /// load): a value loaded before an invalidation never lands after it.
    async fn set_if_version(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
        version: u64,
    ) -> Result<bool, SharedError>;
    /// `SET lock NX PX`: true when this caller holds the rebuild lock.
    async fn try_lock(&self, key: &str, token: &str, ttl: Duration) -> Result<bool, SharedError>;
    /// Deletes the lock only if `token` still holds it.
    async fn unlock(&self, key: &str, token: &str) -> Result<(), SharedError>;
    /// Deletes the entry and raises its version, in one step.
    async fn invalidate(&self, key: &str) -> Result<(), SharedError>;
}

pub struct CacheSettings {
    pub ttl: Duration,
    pub negative_ttl: Duration,
    pub capacity: u64,
    /// How long a caller that found the rebuild lock taken waits for the value.
    pub lock_wait: Duration,
}

pub struct LayeredCache {
    memory: Cache<String, Cached>,
    shared: Option<Arc<dyn SharedCache>>,
    settings: CacheSettings,
    faults: Arc<FaultSwitch>,
    metrics: PatternMetrics,
    /// Raised by every invalidation: an in-process load that saw it change may hold a
    /// value from before the write, and is not kept.
    invalidations: AtomicU64,
}

struct ByKind {
    ttl: Duration,
    negative_ttl: Duration,
}

impl moka::Expiry<String, Cached> for ByKind {
    fn expire_after_create(&self, _: &String, value: &Cached, _: Instant) -> Option<Duration> {
        Some(match value {
            Cached::Found(_) => self.ttl,
            Cached::Missing => self.negative_ttl,
        })
    }
}

/// ±10 % so that entries written together do not expire together.
fn jittered(ttl: Duration) -> Duration {
    ttl.mul_f64(rand::rng().random_range(0.9..=1.1))
}

impl LayeredCache {
    pub fn new(
        settings: CacheSettings,
        shared: Option<Arc<dyn SharedCache>>,
        faults: Arc<FaultSwitch>,
        metrics: PatternMetrics,
    ) -> Self {
        // With a shared layer the in-process copy lives shorter, so replicas converge
        // on the shared value soon after an invalidation they missed; alone, it is the
        // cache and keeps the full TTL.
        let divisor = if shared.is_some() { 4 } else { 1 };
        let memory = Cache::builder()
            .max_capacity(settings.capacity)
            .expire_after(ByKind {
                ttl: settings.ttl / divisor,
                negative_ttl: settings.negative_ttl / divisor,
            })
            .build();
        // Coalescing depends on timing, so its series may never be recorded in a quiet
        // run: start each layer's at zero so the dashboard shows 0 rather than no data.
        metrics.cache_coalesced.add(0, &[("cache.layer", "memory")]);
        if shared.is_some() {
            metrics.cache_coalesced.add(0, &[("cache.layer", "redis")]);
        }
        LayeredCache {
            memory,
            shared,
            settings,
            faults,
            metrics,
            invalidations: AtomicU64::new(0),
        }
    }

    fn count(&self, layer: &'static str, result: &'static str) {
        self.metrics
            .cache_requests
            .add(1, &[("cache.layer", layer), ("cache.result", result)]);
    }

    /// The value of `key`, loading it with `load` (`Ok(None)`: does not exist) only
    /// when no layer has it.
    pub async fn get_or_load<F, Fut>(&self, key: &str, load: F) -> Result<Cached, StoreError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<Bytes>, StoreError>>,
    {
        if !self.faults.cache_enabled() {
            return Ok(into_cached(load().await?));
        }
        if let Some(hit) = self.memory.get(key).await {
            self.count(
                "memory",
                if hit == Cached::Missing {
                    "negative_hit"
                } else {
                    "hit"
                },
            );
            return Ok(hit);
        }
        self.count("memory", "miss");
        let epoch = self.invalidations.load(Ordering::SeqCst);
        if !self.faults.single_flight_enabled() {
            let value = self.load_shared(key, load).await?;
            if self.invalidations.load(Ordering::SeqCst) == epoch {
                self.memory.insert(key.to_string(), value.clone()).await;
            }
            return Ok(value);
        }
        let ran = AtomicBool::new(false);
        let result = self
            .memory
            .try_get_with(key.to_string(), async {
                ran.store(true, Ordering::Relaxed);
                self.load_shared(key, load).await
            })
            .await;
        if !ran.load(Ordering::Relaxed) {
            self.metrics
                .cache_coalesced
                .add(1, &[("cache.layer", "memory")]);
        }
        // Overtaken by an invalidation: the value may predate the write; answer it
        // (it was current when read) but do not keep it.
        if self.invalidations.load(Ordering::SeqCst) != epoch {
            self.memory.invalidate(key).await;
        }
        result.map_err(|e: Arc<StoreError>| Arc::try_unwrap(e).unwrap_or_else(StoreError::Shared))
    }

    /// Removes `key` from every layer, after the write that changed it committed.
    pub async fn invalidate(&self, key: &str) {
        self.invalidations.fetch_add(1, Ordering::SeqCst);
        if let Some(shared) = &self.shared {
            if let Err(e) = shared.invalidate(key).await {
                tracing::warn!(error = %e, key, "shared cache invalidation failed; the entry expires by TTL");
            }
        }
        self.memory.invalidate(key).await;
    }

    async fn load_shared<F, Fut>(&self, key: &str, load: F) -> Result<Cached, StoreError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<Bytes>, StoreError>>,
    {
        let Some(shared) = &self.shared else {
            return Ok(into_cached(load().await?));
        };
        match shared.get(key).await {
            Ok(Some(raw)) => match Envelope::decode(&raw) {
                Some(envelope) => {
                    let result = if envelope.value == Cached::Missing {
                        "negative_hit"
                    } else {
                        "hit"
                    };
                    self.count("redis", result);
                    if envelope.should_refresh_early(now_ms(), rand::rng().random()) {
                        return self
                            .refresh_early(shared.as_ref(), key, envelope, load)
                            .await;
                    }
                    return Ok(envelope.value);
                }
                None => tracing::warn!(key, "undecodable shared cache entry; rebuilding"),
            },
            Ok(None) => self.count("redis", "miss"),
            Err(e) => {
                tracing::warn!(error = %e, key, "shared cache unavailable; reading the database");
                return Ok(into_cached(load().await?));
            }
        }
        self.rebuild(shared.as_ref(), key, load).await
    }

    /// A miss in Redis: one caller across all replicas rebuilds; the rest wait for it.
    async fn rebuild<F, Fut>(
        &self,
        shared: &dyn SharedCache,
        key: &str,
        load: F,
    ) -> Result<Cached, StoreError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<Bytes>, StoreError>>,
    {
        let load = match self.under_lock(shared, key, load).await {
            Ok(result) => {
                self.metrics
                    .cache_locks
                    .add(1, &[("lock.result", "acquired")]);
                return result;
            }
            Err(load) => load,
        };
        self.metrics
            .cache_locks
            .add(1, &[("lock.result", "contended")]);
        self.metrics
            .cache_coalesced
            .add(1, &[("cache.layer", "redis")]);
        let deadline = Instant::now() + self.settings.lock_wait;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if let Ok(Some(raw)) = shared.get(key).await {
                if let Some(envelope) = Envelope::decode(&raw) {
                    return Ok(envelope.value);
                }
            }
        }
        // The holder is slow or gone: answer from the database rather than wait longer.
        self.load_and_store(shared, key, load).await
    }

    async fn refresh_early<F, Fut>(
        &self,
        shared: &dyn SharedCache,
        key: &str,
        current: Envelope,
        load: F,
    ) -> Result<Cached, StoreError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<Bytes>, StoreError>>,
    {
        let Ok(result) = self.under_lock(shared, key, load).await else {
            // Someone else is refreshing it; the current value is still valid.
            return Ok(current.value);
        };
        self.metrics.cache_early_refresh.add(1, &[]);
        match result {
            Ok(v) => Ok(v),
            // The old value has not expired yet: better than an error.
            Err(e) => {
                tracing::warn!(error = %e, key, "early refresh failed; serving the current value");
                Ok(current.value)
            }
        }
    }

    /// Loads and stores `key` while holding its rebuild lock (`SET NX PX`, released
    /// by compare-and-delete); hands `load` back when another caller holds the lock.
    async fn under_lock<F, Fut>(
        &self,
        shared: &dyn SharedCache,
        key: &str,
        load: F,
    ) -> Result<Result<Cached, StoreError>, F>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<Bytes>, StoreError>>,
    {
        let lock = format!("lock:{key}");
        let token = uuid::Uuid::new_v4().to_string();
        let held = shared
            .try_lock(&lock, &token, self.settings.lock_wait * 4)
            .await
            .unwrap_or(false);
        if !held {
            return Err(load);
        }
        let result = self.load_and_store(shared, key, load).await;
        if let Err(e) = shared.unlock(&lock, &token).await {
            tracing::warn!(error = %e, key, "rebuild lock release failed; it expires by itself");
        }
        Ok(result)
    }

    async fn load_and_store<F, Fut>(
        &self,
        shared: &dyn SharedCache,
        key: &str,
        load: F,
    ) -> Result<Cached, StoreError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<Bytes>, StoreError>>,
    {
        // Read before the load: if an invalidation raises it meanwhile, the loaded
        // value may predate the write and is not stored.
        let version = shared.version(key).await;
        let started = Instant::now();
        let value = into_cached(load().await?);
        let ttl = jittered(match value {
            Cached::Found(_) => self.settings.ttl,
            Cached::Missing => self.settings.negative_ttl,
        });
        let envelope = Envelope {
            value: value.clone(),
            delta_ms: started.elapsed().as_millis() as u64,
            expiry_ms: now_ms() + ttl.as_millis() as u64,
        };
        let stored = match version {
            Ok(version) => {
                shared
                    .set_if_version(key, envelope.encode(), ttl, version)
                    .await
            }
            Err(e) => Err(e),
        };
        match stored {
            Ok(true) => {}
            Ok(false) => tracing::debug!(key, "invalidated during the load; not stored"),
            Err(e) => tracing::warn!(error = %e, key, "shared cache write failed"),
        }
        Ok(value)
    }
}

fn into_cached(loaded: Option<Bytes>) -> Cached {
    loaded.map_or(Cached::Missing, Cached::Found)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
