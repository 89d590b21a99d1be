//! Poison batches (issue 14): rows ClickHouse will never take — spans on 101
//! days (one INSERT block may touch at most 100 partitions) and spans a table
//! constraint refuses — batched together with good spans. The batch is split
//! until the bad requests are isolated; those go to the dead-letter store with
//! their error (and can be re-inserted from it), the good spans land, and logs
//! and metrics flow meanwhile through their own lanes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use testkit::synthetic::traces_request;
use testkit::{eventually, scrape, test_config, unique_database, TestCollector};

const DAY_NANOS: u64 = 86_400 * 1_000_000_000;
const GOOD_REQUESTS: u32 = 4;
const GOOD_SPANS: u16 = 50;
const REFUSED_SPANS: u16 = 20;
const CALENDAR_DAYS: u16 = 101;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn service(name: &str) -> Option<Resource> {
    Some(Resource {
        attributes: vec![KeyValue {
            key: "service.name".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(name.into())),
            }),
            ..Default::default()
        }],
        ..Default::default()
    })
}

fn traces_of(service_name: &str, client: u32, spans: u16) -> ExportTraceServiceRequest {
    let mut r = traces_request(client, 0, spans, now());
    r.resource_spans[0].resource = service(service_name);
    r
}

/// One span per day over `CALENDAR_DAYS` days back from now.
fn across_days() -> ExportTraceServiceRequest {
    let mut r = traces_of("calendar", 11, CALENDAR_DAYS);
    let now = now();
    for (i, span) in r.resource_spans[0].scope_spans[0]
        .spans
        .iter_mut()
        .enumerate()
    {
        span.start_time_unix_nano = now - i as u64 * DAY_NANOS;
        span.end_time_unix_nano = span.start_time_unix_nano + 1_000_000;
    }
    r
}

fn logs(n: usize) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: service("bystander"),
            scope_logs: vec![ScopeLogs {
                log_records: (0..n)
                    .map(|i| LogRecord {
                        time_unix_nano: now(),
                        severity_text: "INFO".into(),
                        body: Some(AnyValue {
                            value: Some(any_value::Value::StringValue(format!("line {i}"))),
                        }),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn gauge(n: usize) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: service("bystander"),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "queue.depth".into(),
                    data: Some(metric::Data::Gauge(Gauge {
                        data_points: (0..n)
                            .map(|i| NumberDataPoint {
                                time_unix_nano: now(),
                                value: Some(number_data_point::Value::AsInt(i as i64)),
                                ..Default::default()
                            })
                            .collect(),
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_batches_go_to_the_dead_letter_store_and_the_rest_flows() {
    let database = unique_database("poison");
    let mut config = test_config(&database);
    // Long enough that the good and the bad requests share one batch.
    config.batching.max_delay_ms = 1000;
    config.clickhouse.retry_max_ms = 200;
    config.receivers.timestamps.max_past_secs = 0;
    let spool_dir = std::path::PathBuf::from(&config.spool.dir);
    let c = TestCollector::start_with(config).await;
    // A constraint, as an operator might add: ClickHouse refuses such rows.
    c.client
        .query("ALTER TABLE otel_traces ADD CONSTRAINT no_poison CHECK ServiceName != 'poison'")
        .execute()
        .await
        .unwrap();

    let mut traces = TraceServiceClient::connect(c.grpc_endpoint())
        .await
        .unwrap();
    let mut sends = Vec::new();
    for client in 0..GOOD_REQUESTS {
        sends.push(traces_of("orders", client, GOOD_SPANS));
        if client == 1 {
            sends.push(traces_of("poison", 10, REFUSED_SPANS));
            sends.push(across_days());
        }
    }
    for request in sends {
        let response = traces.export(request).await.expect("accepted").into_inner();
        assert!(response.partial_success.is_none(), "{response:?}");
    }
    // Logs and metrics sent after the poison, while the traces lane deals with it.
    let mut log_client = LogsServiceClient::connect(c.grpc_endpoint()).await.unwrap();
    let mut metric_client = MetricsServiceClient::connect(c.grpc_endpoint())
        .await
        .unwrap();
    log_client.export(logs(30)).await.unwrap();
    metric_client.export(gauge(40)).await.unwrap();

    assert_eq!(c.wait_for_rows("otel_logs", "", 30).await, 30);
    assert_eq!(c.wait_for_rows("otel_metrics_gauge", "", 40).await, 40);
    let good = u64::from(GOOD_REQUESTS) * u64::from(GOOD_SPANS);
    assert_eq!(
        c.wait_for_rows("otel_traces", "ServiceName = 'orders'", good)
            .await,
        good,
        "the good spans batched with the poison land"
    );
    let bad = u64::from(REFUSED_SPANS) + u64::from(CALENDAR_DAYS);
    let series = "collector_dead_letter_rows_total{table=\"otel_traces\"}";
    let dead = eventually(Duration::from_secs(60), || async {
        scrape(&c.admin_endpoint(), series)
            .await
            .filter(|n| *n >= bad)
    })
    .await;
    assert_eq!(dead, Some(bad), "{series}");
    let drained = eventually(Duration::from_secs(30), || async {
        (c.collector.spool().used_bytes() == 0).then_some(())
    })
    .await;
    assert!(drained.is_some(), "every batch left the spool");
    let (traces_stored, others): (u64, u64) = c
        .client
        .query("SELECT count(), countIf(ServiceName != 'orders') FROM otel_traces")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!((traces_stored, others), (good, 0));

    // Each bad request is one letter: its rows as sent and the error.
    let mut letters = Vec::new();
    for entry in std::fs::read_dir(spool_dir.join("dead-letter")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension() == Some("json".as_ref()) {
            let meta: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            letters.push(meta);
        }
    }
    letters.sort_by_key(|m| m["rows"].as_u64());
    let summary: Vec<(u64, &str)> = letters
        .iter()
        .map(|m| (m["rows"].as_u64().unwrap(), m["table"].as_str().unwrap()))
        .collect();
    assert_eq!(
        summary,
        [
            (u64::from(REFUSED_SPANS), "otel_traces"),
            (u64::from(CALENDAR_DAYS), "otel_traces")
        ]
    );
    let errors: Vec<&str> = letters
        .iter()
        .map(|m| m["error"].as_str().unwrap())
        .collect();
    assert!(errors[0].contains("Code: 469"), "{}", errors[0]);
    assert!(errors[1].contains("Code: 252"), "{}", errors[1]);
    println!(
        "dead letters: {summary:?}; errors: {:?}",
        errors
            .iter()
            .map(|e| &e[..e.len().min(120)])
            .collect::<Vec<_>>()
    );

    let (status, body) = c.admin_get("/health/ready").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("lane otel_traces: exporting") && body.contains("batches dead-lettered"),
        "{body}"
    );
    assert!(body.contains("lane otel_logs: exporting"), "{body}");

    // The letter holds the rows as sent: once the constraint is gone, they go in.
    c.client
        .query("ALTER TABLE otel_traces DROP CONSTRAINT no_poison")
        .execute()
        .await
        .unwrap();
    let refused = &letters[0];
    let rows = std::fs::read(
        spool_dir
            .join("dead-letter")
            .join(refused["data"].as_str().unwrap()),
    )
    .unwrap();
    let response = reqwest::Client::new()
        .post(c.collector.clickhouse_url())
        .query(&[
            ("decompress", "1"),
            ("query", refused["insert"].as_str().unwrap()),
        ])
        .body(rows)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{}",
        response.text().await.unwrap()
    );
    assert_eq!(
        c.wait_for_rows("otel_traces", "ServiceName = 'poison'", 20)
            .await,
        u64::from(REFUSED_SPANS)
    );
    c.stop().await;
}
