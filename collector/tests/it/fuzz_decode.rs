//! Property tests (bounded fuzzing) of what a receiver does to a body before the
//! pipeline: decode (protobuf or JSON) → limits → mapping → RowBinary encoding,
//! through `collector::receivers::decode_for_tests`. Random bytes and mutations of
//! valid requests of all three signals must never panic or overflow the stack, and
//! valid requests, however their strings and attributes are chosen, must still map.
//!
//! The case counts are fixed so CI time is bounded; each test prints how many
//! inputs it ran.

use crate::common;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use collector::otlp::Encoding;
use collector::receivers::ReceiversConfig;
use common::*;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value::Value, AnyValue, ArrayValue, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    exemplar, exponential_histogram_data_point::Buckets, metric::Data, number_data_point,
    summary_data_point::ValueAtQuantile, Exemplar, ExponentialHistogram,
    ExponentialHistogramDataPoint, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint,
};
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use prost::Message;
use testkit::decode_for_tests;

const SIGNALS: [&str; 3] = ["traces", "logs", "metrics"];
const ENCODINGS: [Encoding; 2] = [Encoding::Protobuf, Encoding::Json];
const RANDOM_CASES: u32 = 10_000;
const MUTATION_CASES: u32 = 10_000;
const VALID_CASES: u32 = 1_000;

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        // Regressions are reported in the failure message; no files in the tree.
        failure_persistence: None,
        ..Config::default()
    })
}

fn config() -> ReceiversConfig {
    ReceiversConfig {
        // Fixed fixture times: the window would reject before the mapping is fuzzed.
        timestamps: collector::mapping::TimestampWindow::OFF,
        ..ReceiversConfig::default()
    }
}

fn nested(levels: usize) -> Option<AnyValue> {
    let mut v = Value::StringValue("leaf".into());
    for i in 0..levels {
        v = if i % 2 == 0 {
            Value::KvlistValue(KeyValueList {
                values: vec![kv("k", Some(AnyValue { value: Some(v) }))],
            })
        } else {
            Value::ArrayValue(ArrayValue {
                values: vec![AnyValue { value: Some(v) }],
            })
        };
    }
    Some(AnyValue { value: Some(v) })
}

fn attributes() -> Vec<KeyValue> {
    vec![
        kv("s", s("text é")),
        kv("i", int(-7)),
        kv(
            "b",
            Some(AnyValue {
                value: Some(Value::BoolValue(true)),
            }),
        ),
        kv(
            "d",
            Some(AnyValue {
                value: Some(Value::DoubleValue(1.5)),
            }),
        ),
        kv(
            "bytes",
            Some(AnyValue {
                value: Some(Value::BytesValue(vec![0, 255, 7])),
            }),
        ),
        kv("nested", nested(4)),
    ]
}

fn traces(attrs: Vec<KeyValue>, name: String) -> ExportTraceServiceRequest {
    let span = Span {
        trace_id: TRACE.to_vec(),
        span_id: SPAN.to_vec(),
        parent_span_id: PARENT.to_vec(),
        name,
        kind: 2,
        start_time_unix_nano: T0,
        end_time_unix_nano: T0 + 10,
        attributes: attrs.clone(),
        events: vec![span::Event {
            time_unix_nano: T0 + 1,
            name: "ev".into(),
            attributes: attrs.clone(),
            ..Default::default()
        }],
        links: vec![span::Link {
            trace_id: TRACE.to_vec(),
            span_id: PARENT.to_vec(),
            attributes: attrs,
            ..Default::default()
        }],
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: resource("fuzz"),
            scope_spans: vec![ScopeSpans {
                scope: scope(),
                spans: vec![span.clone(), span],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn logs(attrs: Vec<KeyValue>, body: String) -> ExportLogsServiceRequest {
    let record = LogRecord {
        time_unix_nano: T0,
        severity_number: 9,
        severity_text: "INFO".into(),
        body: s(&body),
        attributes: attrs.clone(),
        trace_id: TRACE.to_vec(),
        span_id: SPAN.to_vec(),
        ..Default::default()
    };
    let structured = LogRecord {
        observed_time_unix_nano: T0,
        body: nested(3),
        attributes: attrs,
        ..Default::default()
    };
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: resource("fuzz"),
            scope_logs: vec![ScopeLogs {
                scope: scope(),
                log_records: vec![record, structured],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn metrics(attrs: Vec<KeyValue>, name: String) -> ExportMetricsServiceRequest {
    let ex = vec![Exemplar {
        filtered_attributes: attrs.clone(),
        time_unix_nano: T0,
        span_id: SPAN.to_vec(),
        trace_id: TRACE.to_vec(),
        value: Some(exemplar::Value::AsInt(3)),
    }];
    let number = |v| NumberDataPoint {
        attributes: attrs.clone(),
        start_time_unix_nano: T0 - 10,
        time_unix_nano: T0,
        exemplars: ex.clone(),
        value: Some(v),
        ..Default::default()
    };
    let metric = |n: &str, data| Metric {
        name: format!("{name}{n}"),
        unit: "1".into(),
        data: Some(data),
        ..Default::default()
    };
    let metrics = vec![
        metric(
            "gauge",
            Data::Gauge(Gauge {
                data_points: vec![number(number_data_point::Value::AsDouble(1.5))],
            }),
        ),
        metric(
            "sum",
            Data::Sum(Sum {
                data_points: vec![number(number_data_point::Value::AsInt(2))],
                aggregation_temporality: 2,
                is_monotonic: true,
            }),
        ),
        metric(
            "hist",
            Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    attributes: attrs.clone(),
                    time_unix_nano: T0,
                    count: 2,
                    sum: Some(3.0),
                    bucket_counts: vec![1, 1],
                    explicit_bounds: vec![1.0],
                    exemplars: ex.clone(),
                    ..Default::default()
                }],
                aggregation_temporality: 2,
            }),
        ),
        metric(
            "exp",
            Data::ExponentialHistogram(ExponentialHistogram {
                data_points: vec![ExponentialHistogramDataPoint {
                    attributes: attrs.clone(),
                    time_unix_nano: T0,
                    count: 3,
                    scale: 1,
                    positive: Some(Buckets {
                        offset: 0,
                        bucket_counts: vec![1, 2],
                    }),
                    exemplars: ex,
                    ..Default::default()
                }],
                aggregation_temporality: 1,
            }),
        ),
        metric(
            "summary",
            Data::Summary(Summary {
                data_points: vec![SummaryDataPoint {
                    attributes: attrs,
                    time_unix_nano: T0,
                    count: 1,
                    sum: 2.0,
                    quantile_values: vec![ValueAtQuantile {
                        quantile: 0.5,
                        value: 2.0,
                    }],
                    ..Default::default()
                }],
            }),
        ),
    ];
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource("fuzz"),
            scope_metrics: vec![ScopeMetrics {
                scope: scope(),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Items each fixture holds: 2 spans, 2 log records, 5 data points.
const ITEMS: [u64; 3] = [2, 2, 5];

fn encode<M: Message + serde::Serialize>(m: &M, e: Encoding) -> Vec<u8> {
    match e {
        Encoding::Protobuf => m.encode_to_vec(),
        Encoding::Json => serde_json::to_vec(m).unwrap(),
    }
}

/// A request of `signal` (index into SIGNALS), encoded.
fn valid(signal: usize, attrs: Vec<KeyValue>, text: String, e: Encoding) -> Vec<u8> {
    match signal {
        0 => encode(&traces(attrs, text), e),
        1 => encode(&logs(attrs, text), e),
        _ => encode(&metrics(attrs, text), e),
    }
}

/// The seeds the mutation test starts from: every signal in both encodings.
fn seeds() -> Vec<(usize, Encoding, Vec<u8>)> {
    let mut out = Vec::new();
    for signal in 0..3 {
        for e in ENCODINGS {
            out.push((signal, e, valid(signal, attributes(), "name".into(), e)));
        }
    }
    out
}

/// Runs the whole path; a panic fails the property. Returns whether it mapped.
fn run(signal: &str, body: &[u8], e: Encoding) -> bool {
    match decode_for_tests(signal, body, e, &config()) {
        Ok((mapped, _note)) => {
            let rows: u64 = mapped.parts.iter().map(|p| p.rows as u64).sum();
            let bytes: usize = mapped.parts.iter().map(|p| p.data.len()).sum();
            assert_eq!(rows, mapped.accepted, "every accepted item is a row");
            assert!(rows == 0 || bytes > 0, "rows are encoded");
            true
        }
        Err(err) => {
            let status = err.http_status().as_u16();
            assert!(
                matches!(status, 400 | 413),
                "decode errors are the client's: {status} {err}"
            );
            false
        }
    }
}

#[test]
fn seeds_map_whole() {
    for (signal, e, body) in seeds() {
        let (mapped, note) =
            decode_for_tests(SIGNALS[signal], &body, e, &config()).expect("a valid seed maps");
        assert_eq!(mapped.accepted, ITEMS[signal], "{} {e:?}", SIGNALS[signal]);
        assert_eq!(mapped.rejected, 0, "{}", mapped.error_message);
        assert_eq!(note, "");
    }
}

#[test]
fn random_bytes_never_panic() {
    let ran = AtomicU64::new(0);
    let decoded = AtomicU64::new(0);
    runner(RANDOM_CASES)
        .run(&prop::collection::vec(any::<u8>(), 0..512), |bytes| {
            for signal in SIGNALS {
                for e in ENCODINGS {
                    ran.fetch_add(1, Relaxed);
                    if run(signal, &bytes, e) {
                        decoded.fetch_add(1, Relaxed);
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    println!(
        "random bytes: {RANDOM_CASES} byte strings, {} decodes (signal × encoding), {} decoded",
        ran.load(Relaxed),
        decoded.load(Relaxed)
    );
}

/// One edit of a byte string.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
    Duplicate(usize, usize),
}

/// JSON fragments that confuse a deserializer more than random bytes do.
const JSON_SNIPPETS: [&str; 14] = [
    "{}",
    "[]",
    "null",
    "\"\"",
    "1e400",
    "-1",
    "\"intValue\"",
    "{\"kvlistValue\":",
    "{\"arrayValue\":{\"values\":[",
    "\"\\ud800\"",
    "18446744073709551616",
    ",",
    ":",
    "\"AAAA\"",
];

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<usize>(), 0..JSON_SNIPPETS.len())
            .prop_map(|(i, s)| Mutation::Insert(i, JSON_SNIPPETS[s].as_bytes().to_vec())),
        (any::<usize>(), 1..64usize).prop_map(|(i, n)| Mutation::Delete(i, n)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 1..256usize).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
    ]
}

fn mutate(mut body: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = body.len().max(1);
        match m {
            Mutation::Flip(i, b) => {
                if !body.is_empty() {
                    body[i % len] ^= b | 1;
                }
            }
            Mutation::Insert(i, bytes) => {
                let at = i % (body.len() + 1);
                body.splice(at..at, bytes.iter().copied());
            }
            Mutation::Delete(i, n) => {
                let at = i % len;
                let end = (at + n).min(body.len());
                body.drain(at.min(end)..end);
            }
            Mutation::Truncate(i) => body.truncate(i % len),
            Mutation::Duplicate(i, n) => {
                let at = i % len;
                let end = (at + n).min(body.len());
                let copy = body[at.min(end)..end].to_vec();
                body.splice(end..end, copy);
            }
        }
    }
    body
}

#[test]
fn mutated_requests_never_panic() {
    let seeds = seeds();
    let ran = AtomicU64::new(0);
    let decoded = AtomicU64::new(0);
    let strategy = (0..seeds.len(), prop::collection::vec(mutation(), 1..6));
    runner(MUTATION_CASES)
        .run(&strategy, |(seed, mutations)| {
            let (signal, e, body) = &seeds[seed];
            let body = mutate(body.clone(), &mutations);
            // Its own signal, and one other: a request sent to the wrong path.
            for s in [*signal, (*signal + 1) % 3] {
                ran.fetch_add(1, Relaxed);
                if run(SIGNALS[s], &body, *e) {
                    decoded.fetch_add(1, Relaxed);
                }
            }
            Ok(())
        })
        .unwrap();
    println!(
        "mutations: {MUTATION_CASES} mutated requests, {} decodes, {} still decoded",
        ran.load(Relaxed),
        decoded.load(Relaxed)
    );
}

fn any_text() -> impl Strategy<Value = String> {
    // Mostly short, sometimes past the 64 KiB value limit (odd lengths cut 'é').
    prop_oneof![
        10 => ".{0,40}",
        5 => "\\PC{0,10}",
        2 => Just(String::new()),
        1 => (1..100_000usize).prop_map(|n| format!("a{}", "é".repeat(n / 2))),
    ]
}

fn any_value() -> impl Strategy<Value = Option<AnyValue>> {
    let leaf = prop_oneof![
        any_text().prop_map(Value::StringValue),
        any::<i64>().prop_map(Value::IntValue),
        any::<bool>().prop_map(Value::BoolValue),
        // JSON has no NaN or infinity; finite doubles are what both encodings carry.
        (-1e300f64..1e300).prop_map(Value::DoubleValue),
        prop::collection::vec(any::<u8>(), 0..32).prop_map(Value::BytesValue),
    ];
    let value = leaf.prop_recursive(6, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| {
                Value::ArrayValue(ArrayValue {
                    values: v.into_iter().map(|v| AnyValue { value: Some(v) }).collect(),
                })
            }),
            prop::collection::vec(("[a-z.]{0,8}", inner), 0..4).prop_map(|v| {
                Value::KvlistValue(KeyValueList {
                    values: v
                        .into_iter()
                        .map(|(k, v)| kv(&k, Some(AnyValue { value: Some(v) })))
                        .collect(),
                })
            }),
        ]
    });
    prop::option::weighted(0.95, value).prop_map(|v| Some(AnyValue { value: v }))
}

#[test]
fn valid_requests_always_map() {
    let ran = AtomicU64::new(0);
    let too_deep = AtomicU64::new(0);
    let strategy = (
        0..3usize,
        0..2usize,
        prop::collection::vec((any_text(), any_value()), 0..8),
        // Plain attributes besides, sometimes more than the 256 kept.
        prop_oneof![3 => 0..20usize, 1 => 250..400usize],
        any_text(),
        1..40usize,
    );
    runner(VALID_CASES)
        .run(&strategy, |(signal, e, attrs, plain, text, depth)| {
            ran.fetch_add(1, Relaxed);
            let mut attrs: Vec<KeyValue> = attrs.iter().map(|(k, v)| kv(k, v.clone())).collect();
            attrs.extend((0..plain).map(|i| kv(&format!("plain.{i}"), int(i as i64))));
            // First, so it is among the attributes kept.
            attrs.insert(0, kv("deep", nested(depth)));
            let e = ENCODINGS[e];
            let body = valid(signal, attrs.clone(), text, e);
            let result = decode_for_tests(SIGNALS[signal], &body, e, &config());
            // Past the decoders' recursion limits a request is refused whole (400);
            // everything else must map with every item accepted.
            let (mapped, note) = match result {
                Err(err) if err.to_string().contains("recursion limit") => {
                    too_deep.fetch_add(1, Relaxed);
                    return Ok(());
                }
                other => other.unwrap_or_else(|err| panic!("a valid request must map: {err}")),
            };
            prop_assert_eq!(mapped.accepted, ITEMS[signal], "{}", mapped.error_message);
            prop_assert_eq!(mapped.rejected, 0);
            let limits = config();
            if depth >= limits.max_attribute_depth {
                prop_assert!(note.contains("nested too deep"), "{}", note);
            }
            if attrs.len() > limits.max_attributes_per_item {
                prop_assert!(note.contains("attributes dropped"), "{}", note);
            }
            Ok(())
        })
        .unwrap();
    println!(
        "valid requests: {} generated, {} refused past a decoder's recursion limit, the rest mapped",
        ran.load(Relaxed),
        too_deep.load(Relaxed)
    );
}
