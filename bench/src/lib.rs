//! The collector benchmark: an OTLP load generator ([`load`]), a discard ClickHouse
//! ([`sink`]), the side-by-side runner ([`compare`]) and the on-disk bytes per span
//! ([`disk`]); the `bench` binary exposes them as `bench load`, `bench sink`,
//! `bench compare` and `bench disk`. [`engine`] and [`process`] are the child
//! processes they start.

pub mod compare;
pub mod disk;
pub mod engine;
pub mod load;
pub mod process;
pub mod procfs;
pub mod sink;
