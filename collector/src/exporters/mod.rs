//! Exporters: where batches leave the collector.

pub mod clickhouse;
