//! What keeps the service up under more load than it can take: rate limits per
//! client, a global concurrency limit that sheds instead of queueing, a request
//! deadline, and circuit breakers around dependencies.

pub mod breaker;
pub mod rate_limit;
pub mod shed;
