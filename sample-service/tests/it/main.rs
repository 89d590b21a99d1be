//! Every integration test of the `sample-service` crate, one module per area, linked into one
//! test binary (one link instead of one per file). Run one area with
//! `cargo test -p sample-service --test it <module>::`.

mod async_work;
mod cache;
mod common;
mod dashboards;
mod demo;
mod idempotency;
mod loadgen_cli;
mod loadgen_e2e;
mod protection;
mod traces;
