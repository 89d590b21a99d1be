//! The pattern metrics, exported through the agent beside the RED metrics. The names
//! and attributes are what the Grafana "patterns" dashboard reads.

use agent::metrics::{Counter, Gauge};
use agent::Agent;

#[derive(Clone)]
pub struct PatternMetrics {
    pub cache_requests: Counter,
    pub cache_coalesced: Counter,
    pub cache_locks: Counter,
    pub cache_early_refresh: Counter,
    pub db_reads: Counter,
    pub idempotency: Counter,
    pub outbox_lag: Gauge,
    pub outbox_published: Counter,
    pub queue_processed: Counter,
    pub queue_retries: Counter,
    pub queue_dead_letters: Counter,
    pub rate_limited: Counter,
    pub shed: Counter,
    pub breaker_state: Gauge,
    pub breaker_rejections: Counter,
}

impl PatternMetrics {
    pub fn new(agent: &Agent) -> Self {
        let metrics = PatternMetrics {
            cache_requests: agent
                .counter("shop.cache.requests")
                .with_description("Cache lookups by layer (memory, redis) and result")
                .with_unit("{request}"),
            cache_coalesced: agent
                .counter("shop.cache.coalesced")
                .with_description(
                    "Lookups that waited for another caller's load instead of loading",
                )
                .with_unit("{request}"),
            cache_locks: agent
                .counter("shop.cache.locks")
                .with_description("Redis rebuild locks acquired or found taken")
                .with_unit("{lock}"),
            cache_early_refresh: agent
                .counter("shop.cache.early_refresh")
                .with_description("Entries recomputed before expiry (probabilistic early refresh)")
                .with_unit("{refresh}"),
            db_reads: agent
                .counter("shop.db.reads")
                .with_description("Catalog reads that reached PostgreSQL")
                .with_unit("{read}"),
            idempotency: agent
                .counter("shop.idempotency.requests")
                .with_description("Idempotent requests by outcome")
                .with_unit("{request}"),
            outbox_lag: agent
                .gauge("shop.outbox.lag")
                .with_description("Age of the oldest unpublished outbox row")
                .with_unit("s"),
            outbox_published: agent
                .counter("shop.outbox.published")
                .with_description("Outbox rows published and confirmed by the broker")
                .with_unit("{message}"),
            queue_processed: agent
                .counter("shop.queue.processed")
                .with_description(
                    "Messages whose handling committed (ok) or was already done (duplicate)",
                )
                .with_unit("{message}"),
            queue_retries: agent
                .counter("shop.queue.retries")
                .with_description("Messages sent to a delay queue for another attempt")
                .with_unit("{message}"),
            queue_dead_letters: agent
                .counter("shop.queue.dead_letters")
                .with_description("Messages moved to the dead-letter queue")
                .with_unit("{message}"),
            rate_limited: agent
                .counter("shop.rate_limited")
                .with_description("Requests refused by the rate limit")
                .with_unit("{request}"),
            shed: agent
                .counter("shop.shed")
                .with_description("Requests shed because the concurrency limit was full")
                .with_unit("{request}"),
            breaker_state: agent
                .gauge("shop.breaker.state")
                .with_description("Circuit breaker state: 0 closed, 1 half-open, 2 open")
                .with_unit("1"),
            breaker_rejections: agent
                .counter("shop.breaker.rejections")
                .with_description("Calls refused at once because the breaker was open")
                .with_unit("{call}"),
        };
        // Series appear once recorded: start the attribute-less ones at zero so a
        // dashboard shows 0 rather than "no data".
        for counter in [
            &metrics.cache_early_refresh,
            &metrics.outbox_published,
            &metrics.shed,
        ] {
            counter.add(0, &[]);
        }
        metrics
    }
}
