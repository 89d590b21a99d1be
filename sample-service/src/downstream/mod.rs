//! The summary's dependencies: simulators of three downstream services, and the
//! client that calls them in parallel, each behind its own timeout and breaker.

pub mod fanout;
pub mod simulator;
