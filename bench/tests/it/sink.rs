//! Our collector runs against the discard sink: the sink's answers to the schema
//! set-up and probe make it ready, and the INSERTs it counts are the spans sent.

use std::time::{Duration, Instant};

use bench::sink::Sink;
use collector::{Collector, Config};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use testkit::eventually;

#[tokio::test]
async fn the_collector_becomes_ready_and_writes_into_the_sink() {
    let sink = Sink::new(false);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let served = tokio::spawn(sink.clone().serve(listener));

    let spool = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.clickhouse.url = url;
    config.spool.dir = spool.path().display().to_string();
    config.batching.max_delay_ms = 50;
    for addr in [
        &mut config.receivers.grpc_addr,
        &mut config.receivers.http_addr,
        &mut config.admin.addr,
    ] {
        *addr = "127.0.0.1:0".into();
    }
    let collector = Collector::start(config).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !collector.is_ready() {
        assert!(Instant::now() < deadline, "never ready against the sink");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut client = TraceServiceClient::connect(format!("http://{}", collector.grpc_addr))
        .await
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    for n in 0..3 {
        let request = testkit::synthetic::traces_request(0, n, 100, now);
        let response = client.export(request).await.unwrap().into_inner();
        assert_eq!(response.partial_success, None);
    }
    // The three requests may leave in more than one INSERT; the counts add up.
    let traces = || sink.stats().get("otel_traces").copied().unwrap_or_default();
    let traces = eventually(Duration::from_secs(20), || async {
        Some(traces()).filter(|t| t.raw_bytes > 300 * 300)
    })
    .await
    .unwrap_or_else(traces);
    assert!(traces.inserts >= 1, "{traces:?}");
    // 300 spans of about 500 RowBinary bytes each, LZ4-compressed on the wire.
    assert!(traces.raw_bytes > 300 * 300, "{traces:?}");
    assert!(traces.wire_bytes < traces.raw_bytes / 4, "{traces:?}");
    collector.shutdown(Duration::from_secs(5)).await;
    served.abort();
}
