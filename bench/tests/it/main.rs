//! Every integration test of the `bench` crate, one module per area, linked into one
//! test binary (one link instead of one per file). Run one area with
//! `cargo test -p bench --test it <module>::`.

mod sink;
