//! Row structs and table definitions of the OpenTelemetry ClickHouse exporter's layout.

use super::rowbinary::{Map, RowBinary};
use super::{Column, Engine, Row, Table};

/// Declares a row struct and its columns in one place: field, column name, ClickHouse
/// type and codec. The struct's fields are encoded in declaration order, which is the
/// insert column order.
macro_rules! row {
    (
        $(#[$meta:meta])*
        pub struct $row:ident {
            $( $field:ident : $fty:ty => $col:literal : $cty:literal $(, $codec:literal)? ; )*
        }
    ) => {
        $(#[$meta])*
        /// Deserialize and `clickhouse::Row` let tests and tools read rows back.
        #[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, clickhouse::Row)]
        pub struct $row {
            $( #[serde(rename = $col)] pub $field: $fty, )*
        }

        impl Row for $row {
            const COLUMNS: &'static [Column] = &[
                $( Column { name: $col, ty: $cty, codec: row!(@codec $($codec)?) }, )*
            ];

            #[inline]
            fn encode(&self, out: &mut Vec<u8>) {
                $( RowBinary::write(&self.$field, out); )*
            }
        }

        impl $row {
            /// Columns whose Rust field type cannot hold the declared ClickHouse type.
            #[cfg(test)]
            pub fn mistyped_columns() -> Vec<&'static str> {
                let mut bad = Vec::new();
                $( if !<$fty as RowBinary>::fits($cty) { bad.push($col); } )*
                bad
            }
        }
    };
    (@codec) => { "ZSTD(1)" };
    (@codec $codec:literal) => { $codec };
}

/// Numbers the tables; the value is the index in [`ALL_TABLES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum TableId {
    Traces = 0,
    TraceIdTs = 1,
    Logs = 2,
    Gauge = 3,
    Sum = 4,
    Histogram = 5,
    ExponentialHistogram = 6,
    Summary = 7,
}

impl TableId {
    pub fn from_u8(v: u8) -> Option<TableId> {
        ALL_TABLES.get(v as usize).map(|t| t.id)
    }
}

pub const ALL_TABLES: [&Table; 8] = [
    &TRACES,
    &TRACE_ID_TS,
    &LOGS,
    &GAUGE,
    &SUM,
    &HISTOGRAM,
    &EXPONENTIAL_HISTOGRAM,
    &SUMMARY,
];

// ZSTD(6), not upstream's ZSTD(1), on the attribute maps and the scope strings:
// their values repeat (one resource per instance, a few attribute shapes per span
// name) in ways ZSTD below level 6 does not find within ClickHouse's blocks.
// Measured with `bench disk` (BENCHMARKS.md, "On-disk bytes per span"): a span takes
// 20 % (rich profile) to 43 % (basic) fewer bytes on disk; writing and merging cost
// up to 15 % more engine CPU, a full read 40 to 65 % less. Codecs are outside the layout's
// contract (names and types are upstream's; the probe compares only those), so
// Grafana and tables made by the upstream exporter are unaffected. Tables that
// exist keep their codecs: see BENCHMARKS.md for the ALTER.
row! {
    pub struct SpanRow {
        timestamp: i64 => "Timestamp": "DateTime64(9)", "Delta(8), ZSTD(1)";
        trace_id: String => "TraceId": "String";
        span_id: String => "SpanId": "String";
        parent_span_id: String => "ParentSpanId": "String";
        trace_state: String => "TraceState": "String";
        span_name: String => "SpanName": "LowCardinality(String)";
        span_kind: String => "SpanKind": "LowCardinality(String)";
        service_name: String => "ServiceName": "LowCardinality(String)";
        resource_attributes: Map => "ResourceAttributes": "Map(LowCardinality(String), String)", "ZSTD(6)";
        scope_name: String => "ScopeName": "String", "ZSTD(6)";
        scope_version: String => "ScopeVersion": "String", "ZSTD(6)";
        span_attributes: Map => "SpanAttributes": "Map(LowCardinality(String), String)", "ZSTD(6)";
        duration: u64 => "Duration": "UInt64", "T64, ZSTD(1)";
        status_code: String => "StatusCode": "LowCardinality(String)";
        status_message: String => "StatusMessage": "String";
        events_timestamp: Vec<i64> => "Events.Timestamp": "Array(DateTime64(9))";
        events_name: Vec<String> => "Events.Name": "Array(LowCardinality(String))";
        events_attributes: Vec<Map> => "Events.Attributes": "Array(Map(LowCardinality(String), String))";
        links_trace_id: Vec<String> => "Links.TraceId": "Array(String)";
        links_span_id: Vec<String> => "Links.SpanId": "Array(String)";
        links_trace_state: Vec<String> => "Links.TraceState": "Array(String)";
        links_attributes: Vec<Map> => "Links.Attributes": "Array(Map(LowCardinality(String), String))";
    }
}

pub const TRACES: Table = Table {
    id: TableId::Traces,
    name: "otel_traces",
    columns: SpanRow::COLUMNS,
    indexes: &[
        "idx_trace_id TraceId TYPE bloom_filter(0.001) GRANULARITY 1",
        "idx_res_attr_key mapKeys(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1",
        "idx_res_attr_value mapValues(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1",
        "idx_span_attr_key mapKeys(SpanAttributes) TYPE bloom_filter(0.01) GRANULARITY 1",
        "idx_span_attr_value mapValues(SpanAttributes) TYPE bloom_filter(0.01) GRANULARITY 1",
        "idx_duration Duration TYPE minmax GRANULARITY 1",
        "idx_lower_span_name lower(SpanName) TYPE tokenbf_v1(32768, 3, 0) GRANULARITY 8",
    ],
    derived_columns: &[
        "`ResourceAttributeItems` Array(String) ALIAS arrayMap(kv -> concat(kv.1, '=', kv.2), CAST(ResourceAttributes, 'Array(Tuple(String, String))'))",
        "`SpanAttributeItems` Array(String) ALIAS arrayMap(kv -> concat(kv.1, '=', kv.2), CAST(SpanAttributes, 'Array(Tuple(String, String))'))",
    ],
    nested_after: &[],
    partition_by: "toDate(Timestamp)",
    primary_key: "(ServiceName, SpanName, toDateTime(Timestamp))",
    order_by: "(ServiceName, SpanName, toDateTime(Timestamp), Timestamp)",
    ttl_from: "toDateTime(Timestamp)",
    engine: Engine::MergeTree,
    shard_by: "cityHash64(TraceId)",
};

/// Not inserted into by the collector: the materialized view fills it.
pub const TRACE_ID_TS: Table = Table {
    id: TableId::TraceIdTs,
    name: "otel_traces_trace_id_ts",
    columns: &[
        Column {
            name: "TraceId",
            ty: "String",
            codec: "ZSTD(1)",
        },
        Column {
            name: "Start",
            ty: "SimpleAggregateFunction(min, DateTime)",
            codec: "ZSTD(1)",
        },
        Column {
            name: "End",
            ty: "SimpleAggregateFunction(max, DateTime)",
            codec: "ZSTD(1)",
        },
    ],
    indexes: &[],
    derived_columns: &[],
    nested_after: &[],
    partition_by: "toStartOfWeek(Start)",
    primary_key: "",
    order_by: "(TraceId)",
    ttl_from: "Start",
    engine: Engine::TraceIdLookup,
    // The view runs where the span rows land, so the lookup rows of a trace stay on
    // the shard holding its spans.
    shard_by: "cityHash64(TraceId)",
};

row! {
    pub struct LogRow {
        timestamp: i64 => "Timestamp": "DateTime64(9)", "Delta(8), ZSTD(1)";
        trace_id: String => "TraceId": "String";
        span_id: String => "SpanId": "String";
        trace_flags: u8 => "TraceFlags": "UInt8", "";
        severity_text: String => "SeverityText": "LowCardinality(String)";
        severity_number: u8 => "SeverityNumber": "UInt8", "";
        service_name: String => "ServiceName": "LowCardinality(String)";
        body: String => "Body": "String";
        resource_schema_url: String => "ResourceSchemaUrl": "LowCardinality(String)";
        resource_attributes: Map => "ResourceAttributes": "Map(LowCardinality(String), String)";
        scope_schema_url: String => "ScopeSchemaUrl": "LowCardinality(String)";
        scope_name: String => "ScopeName": "String";
        scope_version: String => "ScopeVersion": "LowCardinality(String)";
        scope_attributes: Map => "ScopeAttributes": "Map(LowCardinality(String), String)";
        log_attributes: Map => "LogAttributes": "Map(LowCardinality(String), String)";
        event_name: String => "EventName": "String";
    }
}

/// Resource attributes the upstream layout copies into columns of their own, so a
/// filter on them reads one small column instead of the whole map.
macro_rules! materialized_resource_attributes {
    ($($key:literal),*) => {
        &[$(concat!(
            "`__otel_materialized_", $key, "` LowCardinality(String) MATERIALIZED ResourceAttributes['",
            $key, "'] CODEC(ZSTD(1))"
        )),*]
    };
}

pub const LOGS: Table = Table {
    id: TableId::Logs,
    name: "otel_logs",
    columns: LogRow::COLUMNS,
    indexes: &[
        "idx_trace_id TraceId TYPE bloom_filter(0.001) GRANULARITY 1",
        "idx_res_attr_key mapKeys(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1",
        "idx_res_attr_value mapValues(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1",
        "idx_scope_attr_key mapKeys(ScopeAttributes) TYPE bloom_filter(0.01) GRANULARITY 1",
        "idx_scope_attr_value mapValues(ScopeAttributes) TYPE bloom_filter(0.01) GRANULARITY 1",
        "idx_log_attr_key mapKeys(LogAttributes) TYPE bloom_filter(0.01) GRANULARITY 1",
        "idx_log_attr_value mapValues(LogAttributes) TYPE bloom_filter(0.01) GRANULARITY 1",
        "idx_lower_body lower(Body) TYPE tokenbf_v1(32768, 3, 0) GRANULARITY 8",
    ],
    derived_columns: materialized_resource_attributes!(
        "k8s.cluster.name",
        "k8s.container.name",
        "k8s.deployment.name",
        "k8s.namespace.name",
        "k8s.node.name",
        "k8s.pod.name",
        "k8s.pod.uid",
        "deployment.environment.name"
    ),
    nested_after: &[],
    partition_by: "toDate(Timestamp)",
    primary_key: "",
    order_by: "(toStartOfFiveMinutes(Timestamp), ServiceName, Timestamp)",
    ttl_from: "toDateTime(Timestamp)",
    engine: Engine::MergeTree,
    // A trace's logs on the shard of its spans; logs without a trace spread evenly.
    // Deterministic (never rand()): a retried insert through a Distributed table must
    // split into the same per-shard blocks for their deduplication to drop it.
    shard_by: "if(TraceId != '', cityHash64(TraceId), cityHash64(ServiceName, Timestamp))",
};

/// The columns every metric table starts with, in the exporter's order.
macro_rules! metric_row {
    (
        pub struct $row:ident with exemplars {
            $( $field:ident : $fty:ty => $col:literal : $cty:literal $(, $codec:literal)? ; )*
        }
    ) => {
        metric_row! {
            pub struct $row {
                $( $field: $fty => $col: $cty $(, $codec)?; )*
                exemplars_filtered_attributes: Vec<Map> => "Exemplars.FilteredAttributes": "Array(Map(LowCardinality(String), String))";
                exemplars_time_unix: Vec<u32> => "Exemplars.TimeUnix": "Array(DateTime)";
                exemplars_value: Vec<f64> => "Exemplars.Value": "Array(Float64)";
                exemplars_span_id: Vec<String> => "Exemplars.SpanId": "Array(String)";
                exemplars_trace_id: Vec<String> => "Exemplars.TraceId": "Array(String)";
            }
        }
    };
    (
        pub struct $row:ident {
            $( $field:ident : $fty:ty => $col:literal : $cty:literal $(, $codec:literal)? ; )*
        }
    ) => {
        row! {
            pub struct $row {
                resource_attributes: Map => "ResourceAttributes": "Map(LowCardinality(String), String)";
                resource_schema_url: String => "ResourceSchemaUrl": "String";
                scope_name: String => "ScopeName": "String";
                scope_version: String => "ScopeVersion": "String";
                scope_attributes: Map => "ScopeAttributes": "Map(LowCardinality(String), String)";
                scope_dropped_attr_count: u32 => "ScopeDroppedAttrCount": "UInt32";
                scope_schema_url: String => "ScopeSchemaUrl": "String";
                service_name: String => "ServiceName": "LowCardinality(String)";
                metric_name: String => "MetricName": "LowCardinality(String)";
                metric_description: String => "MetricDescription": "String";
                metric_unit: String => "MetricUnit": "String";
                attributes: Map => "Attributes": "Map(LowCardinality(String), String)";
                start_time_unix: u32 => "StartTimeUnix": "DateTime", "Delta, ZSTD(1)";
                time_unix: u32 => "TimeUnix": "DateTime", "Delta, ZSTD(1)";
                $( $field: $fty => $col: $cty $(, $codec)?; )*
            }
        }
    };
}

metric_row! {
    pub struct GaugeRow with exemplars {
        value: f64 => "Value": "Float64";
        flags: u32 => "Flags": "UInt32";
    }
}

metric_row! {
    pub struct SumRow with exemplars {
        value: f64 => "Value": "Float64";
        flags: u32 => "Flags": "UInt32";
        aggregation_temporality: i32 => "AggregationTemporality": "Int32";
        is_monotonic: bool => "IsMonotonic": "Bool", "Delta, ZSTD(1)";
    }
}

metric_row! {
    pub struct HistogramRow with exemplars {
        count: u64 => "Count": "UInt64", "Delta, ZSTD(1)";
        sum: f64 => "Sum": "Float64";
        bucket_counts: Vec<u64> => "BucketCounts": "Array(UInt64)";
        explicit_bounds: Vec<f64> => "ExplicitBounds": "Array(Float64)";
        flags: u32 => "Flags": "UInt32";
        min: f64 => "Min": "Float64";
        max: f64 => "Max": "Float64";
        aggregation_temporality: i32 => "AggregationTemporality": "Int32";
    }
}

metric_row! {
    pub struct ExponentialHistogramRow with exemplars {
        count: u64 => "Count": "UInt64", "Delta, ZSTD(1)";
        sum: f64 => "Sum": "Float64";
        scale: i32 => "Scale": "Int32";
        zero_count: u64 => "ZeroCount": "UInt64";
        positive_offset: i32 => "PositiveOffset": "Int32";
        positive_bucket_counts: Vec<u64> => "PositiveBucketCounts": "Array(UInt64)";
        negative_offset: i32 => "NegativeOffset": "Int32";
        negative_bucket_counts: Vec<u64> => "NegativeBucketCounts": "Array(UInt64)";
        flags: u32 => "Flags": "UInt32";
        min: f64 => "Min": "Float64";
        max: f64 => "Max": "Float64";
        aggregation_temporality: i32 => "AggregationTemporality": "Int32";
    }
}

metric_row! {
    pub struct SummaryRow {
        count: u64 => "Count": "UInt64", "Delta, ZSTD(1)";
        sum: f64 => "Sum": "Float64";
        quantiles: Vec<f64> => "ValueAtQuantiles.Quantile": "Array(Float64)";
        quantile_values: Vec<f64> => "ValueAtQuantiles.Value": "Array(Float64)";
        flags: u32 => "Flags": "UInt32";
    }
}

const METRIC_INDEXES: &[&str] = &[
    "idx_res_attr_key mapKeys(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1",
    "idx_res_attr_value mapValues(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1",
    "idx_scope_attr_key mapKeys(ScopeAttributes) TYPE bloom_filter(0.01) GRANULARITY 1",
    "idx_scope_attr_value mapValues(ScopeAttributes) TYPE bloom_filter(0.01) GRANULARITY 1",
    "idx_attr_key mapKeys(Attributes) TYPE bloom_filter(0.01) GRANULARITY 1",
    "idx_attr_value mapValues(Attributes) TYPE bloom_filter(0.01) GRANULARITY 1",
    "idx_time_minmax TimeUnix TYPE minmax GRANULARITY 1",
];

/// `nested_after`: where the upstream DDL declares the `Exemplars` group (the
/// insert order keeps it last: spooled batches are encoded in that order).
const fn metric_table(
    id: TableId,
    name: &'static str,
    columns: &'static [Column],
    nested_after: &'static [(&'static str, &'static str)],
) -> Table {
    Table {
        id,
        name,
        columns,
        indexes: METRIC_INDEXES,
        derived_columns: &[],
        nested_after,
        partition_by: "toDate(TimeUnix)",
        primary_key: "",
        order_by:
            "(ServiceName, MetricName, toStartOfHour(TimeUnix), cityHash64(Attributes), TimeUnix)",
        ttl_from: "TimeUnix",
        engine: Engine::MergeTree,
        // A series (same service, metric and attributes) stays on one shard, so
        // per-series functions (rate, deltas) need no cross-shard merge.
        shard_by: "cityHash64(ServiceName, MetricName, Attributes)",
    }
}

pub const GAUGE: Table = metric_table(
    TableId::Gauge,
    "otel_metrics_gauge",
    GaugeRow::COLUMNS,
    &[("Exemplars", "Flags")],
);
pub const SUM: Table = metric_table(
    TableId::Sum,
    "otel_metrics_sum",
    SumRow::COLUMNS,
    &[("Exemplars", "Flags")],
);
pub const HISTOGRAM: Table = metric_table(
    TableId::Histogram,
    "otel_metrics_histogram",
    HistogramRow::COLUMNS,
    &[("Exemplars", "ExplicitBounds")],
);
pub const EXPONENTIAL_HISTOGRAM: Table = metric_table(
    TableId::ExponentialHistogram,
    "otel_metrics_exponential_histogram",
    ExponentialHistogramRow::COLUMNS,
    &[("Exemplars", "NegativeBucketCounts")],
);
pub const SUMMARY: Table = metric_table(
    TableId::Summary,
    "otel_metrics_summary",
    SummaryRow::COLUMNS,
    &[],
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_fits_its_column_type() {
        for (table, bad) in [
            ("traces", SpanRow::mistyped_columns()),
            ("logs", LogRow::mistyped_columns()),
            ("gauge", GaugeRow::mistyped_columns()),
            ("sum", SumRow::mistyped_columns()),
            ("histogram", HistogramRow::mistyped_columns()),
            ("exp", ExponentialHistogramRow::mistyped_columns()),
            ("summary", SummaryRow::mistyped_columns()),
        ] {
            assert!(bad.is_empty(), "{table}: {bad:?}");
        }
    }
}
