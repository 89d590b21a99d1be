//! Per-span cost of what a receiver does to a request before the spool: decoding,
//! attribute limits, mapping to RowBinary and LZ4 compression, for 512 realistic
//! spans (`testkit::synthetic`) in protobuf and in JSON, and for 512 rich spans (the
//! `rich` profile: semantic-convention traces with a Kubernetes resource).
//!
//! The last case adds what the spool does for deduplication before it writes: the
//! request's fingerprint and its check-and-insert into the index of recent ones
//! (kept at a million entries, each iteration a new one).
//!
//! `cargo bench -p collector --bench ingest` — compare before and after a change to
//! the hot path (see BENCHMARKS.md); criterion reports time per span.

use collector::otlp::Encoding;
use collector::receivers::ReceiversConfig;
use collector::spool::dedup::{fingerprint, unix_secs, Recent};
use collector::spool::Remembered;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use testkit::decode_for_tests;

const SPANS: u16 = 512;

fn request() -> ExportTraceServiceRequest {
    testkit::synthetic::traces_request(0, 1, SPANS, 1_700_000_000_000_000_000)
}

fn rich_request() -> ExportTraceServiceRequest {
    testkit::synthetic::rich_traces_request(0, 1, SPANS, 1_700_000_000_000_000_000)
}

fn ingest(c: &mut Criterion) {
    let body = request().encode_to_vec();
    let json = serde_json::to_vec(&request()).expect("serialisable");
    // The fixture's spans date from 2023: no time window.
    let config = ReceiversConfig {
        timestamps: collector::mapping::TimestampWindow::OFF,
        ..ReceiversConfig::default()
    };
    let mut g = c.benchmark_group("traces");
    g.throughput(Throughput::Elements(u64::from(SPANS)));
    g.bench_function("protobuf decode + map + compress", |b| {
        b.iter(|| decode_for_tests("traces", &body, Encoding::Protobuf, &config).expect("maps"))
    });
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut recent =
        Recent::open(dir.path(), 600, 1_000_000, Vec::new(), unix_secs()).expect("index");
    let mut n = 0u128;
    // What deduplication adds per request: a new fingerprint checked and remembered.
    let mut remember = |parts: &[collector::part::TablePart]| {
        n += 1;
        let r = Remembered {
            fingerprint: fingerprint(7, parts) ^ n,
            secs: unix_secs(),
        };
        if !recent.contains(r.fingerprint) {
            recent.insert(r, 1);
        }
    };
    g.bench_function(
        "protobuf decode + map + compress + fingerprint and remember",
        |b| {
            b.iter(|| {
                let mapped =
                    decode_for_tests("traces", &body, Encoding::Protobuf, &config).expect("maps");
                remember(&mapped.0.parts);
                mapped
            })
        },
    );
    let (mapped, _) = decode_for_tests("traces", &body, Encoding::Protobuf, &config).expect("maps");
    g.bench_function("fingerprint and remember alone", |b| {
        b.iter(|| remember(&mapped.parts))
    });
    g.sample_size(20);
    g.bench_function("json decode + map + compress", |b| {
        b.iter(|| decode_for_tests("traces", &json, Encoding::Json, &config).expect("maps"))
    });
    g.finish();

    let rich = rich_request().encode_to_vec();
    let mut g = c.benchmark_group("rich traces");
    g.throughput(Throughput::Elements(u64::from(SPANS)));
    g.bench_function("protobuf decode + map + compress", |b| {
        b.iter(|| decode_for_tests("traces", &rich, Encoding::Protobuf, &config).expect("maps"))
    });
    g.finish();
}

criterion_group!(benches, ingest);
criterion_main!(benches);
