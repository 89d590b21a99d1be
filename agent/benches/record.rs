//! CPU per recorded request duration on the RED path: the series lookup, the
//! cumulative counters and buckets, the window's hdrhistogram and exponential
//! histogram, and the exemplar check against a sampled span.
//!
//! ```sh
//! cargo bench -p agent --bench record
//! ```

use std::hint::black_box;
use std::time::Duration;

use agent::metrics::RequestAttributes;
use agent::{AgentBuilder, Config, SpanKind};
use criterion::{criterion_group, criterion_main, Criterion};

fn record_one_duration(c: &mut Criterion) {
    // Spans are recorded (so a span can back an exemplar); the export goes to
    // a closed port and fails off the measured thread.
    let guard = AgentBuilder::from_config(Config::default())
        .service_name("bench")
        .endpoint("http://127.0.0.1:9")
        .json_logs(false)
        .start()
        .expect("agent starts");
    let agent = guard.agent().clone();
    let attributes = RequestAttributes::new("GET", "/items/{id}", 200);
    // Durations spread over 1 µs … 1 s, so the histograms are warm (grown to
    // the range) as in a running service.
    let durations: Vec<Duration> = (0..1024u64)
        .map(|i| Duration::from_micros(1 + (i * 7919) % 1_000_000))
        .collect();
    for d in &durations {
        agent.record_http_request(&attributes, *d, None);
    }
    let mut i = 0;
    c.bench_function("record one duration (no span)", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            agent.record_http_request(black_box(&attributes), durations[i], None);
        })
    });
    let span = agent.start_span("GET /items/{id}", SpanKind::Server);
    assert!(span.is_recording());
    c.bench_function("record one duration (sampled span: exemplar check)", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            agent.record_http_request(black_box(&attributes), durations[i], Some(&span));
        })
    });
    drop(span);
    guard.shutdown().expect("shut down");
}

criterion_group!(benches, record_one_duration);
criterion_main!(benches);
