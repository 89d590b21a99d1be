//! The collector benchmark: an OTLP load generator ([`load`]), a discard ClickHouse
//! ([`sink`]) and the side-by-side runner ([`compare`]); the `bench` binary exposes
//! them as `bench load`, `bench sink` and `bench compare`.

pub mod compare;
pub mod load;
pub mod procfs;
pub mod sink;
