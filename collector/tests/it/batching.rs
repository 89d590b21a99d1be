//! Under a steady stream of small requests, one INSERT carries many requests.

use crate::common;

use std::sync::Arc;

use collector::schema::TRACES;
use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use testkit::{test_config, unique_database, TestCollector};

const CLIENTS: u64 = 8;
const REQUESTS_PER_CLIENT: u64 = 50;
const SPANS_PER_REQUEST: u64 = 10;

fn request(client: u64, n: u64) -> Vec<u8> {
    let spans = (0..SPANS_PER_REQUEST)
        .map(|i| {
            let mut span_id = [0u8; 8];
            span_id[..2].copy_from_slice(&(client as u16 + 1).to_be_bytes());
            span_id[2..4].copy_from_slice(&(n as u16).to_be_bytes());
            span_id[7] = i as u8 + 1;
            Span {
                trace_id: TRACE.to_vec(),
                span_id: span_id.to_vec(),
                name: "small".into(),
                start_time_unix_nano: T0,
                end_time_unix_nano: T0 + 1,
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: resource("batching"),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_requests_share_inserts() {
    let mut config = test_config(&unique_database("batching"));
    config.batching.max_delay_ms = 1000;
    let c = Arc::new(TestCollector::start_with(config).await);
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            for n in 0..REQUESTS_PER_CLIENT {
                let resp = http
                    .post(format!("{}/v1/traces", c.http_endpoint()))
                    .header("content-type", "application/x-protobuf")
                    .body(request(client, n))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let requests = CLIENTS * REQUESTS_PER_CLIENT;
    let spans = requests * SPANS_PER_REQUEST;
    assert_eq!(c.wait_for_rows("otel_traces", "", spans).await, spans);
    let distinct: u64 = c
        .client
        .query("SELECT uniqExact(SpanId) FROM otel_traces")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(distinct, spans);

    // Rows are visible in the table before the INSERT (its views included) answers
    // and the exporter counts them.
    let counted = testkit::eventually(std::time::Duration::from_secs(30), || async {
        (c.collector.metrics().exported_rows(&TRACES) == spans).then_some(())
    })
    .await;
    assert!(counted.is_some(), "exported rows counted");
    let metrics = c.collector.metrics().render();
    let inserts = metrics
        .lines()
        .find_map(|l| l.strip_prefix("collector_batch_rows_count{table=\"otel_traces\"} "))
        .and_then(|v| v.parse::<u64>().ok())
        .expect("batch count");
    assert_eq!(c.collector.metrics().exported_rows(&TRACES), spans);
    println!(
        "{requests} requests ({spans} spans) in {inserts} INSERTs: {} rows, {} requests per INSERT",
        spans / inserts,
        requests / inserts
    );
    assert!(
        inserts * 10 <= requests,
        "{inserts} INSERTs for {requests} requests"
    );
    Arc::into_inner(c).expect("sole owner").stop().await;
}
