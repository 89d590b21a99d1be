//! Every integration test of the `collector` crate, one module per area, linked into one
//! test binary (one link instead of one per file). Run one area with
//! `cargo test -p collector --test it <module>::`.

mod bad_input;
mod batching;
mod common;
mod crash;
mod dashboards;
mod dedup;
mod fuzz_decode;
mod hostile_input;
mod outage;
mod roundtrip;
mod schema;
mod sdk_exporter;
mod spool_lock;
mod tls;
mod ui;
mod ui_bench;
mod ui_browser;
mod ui_fixture;

mod cluster_schema;
mod crash_loop;
mod dashboards_safety;
mod dedup_window;
mod poison;
mod red_migration;
mod retrying_load;
mod scale_out;
mod slow_clients;
mod upstream_schema;
