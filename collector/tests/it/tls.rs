//! TLS on both receivers: the real binary with a self-signed certificate made here,
//! clients that trust it export over OTLP/HTTP and gRPC and the rows are stored;
//! cleartext and clients that do not trust the certificate get nowhere.

use crate::common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use testkit::{clickhouse_url, unique_database, CollectorProcess};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

fn traces(service: &str) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: resource(service),
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: TRACE.to_vec(),
                    span_id: SPAN.to_vec(),
                    name: "tls".into(),
                    start_time_unix_nano: T0,
                    end_time_unix_nano: T0 + 1,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_receivers_serve_otlp_over_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_pem = cert.cert.pem();
    let dir = tempfile::tempdir().unwrap();
    let cert_file = dir.path().join("cert.pem");
    let key_file = dir.path().join("key.pem");
    std::fs::write(&cert_file, &cert_pem).unwrap();
    std::fs::write(&key_file, cert.key_pair.serialize_pem()).unwrap();

    let database = unique_database("tls");
    let sets = [
        ("clickhouse.url", clickhouse_url()),
        ("clickhouse.database", database.clone()),
        ("receivers.tls_cert_file", cert_file.display().to_string()),
        ("receivers.tls_key_file", key_file.display().to_string()),
        ("batching.max_delay_ms", "100".to_string()),
        // Its own spool: a spool directory is locked by its process.
        ("spool.dir", dir.path().join("spool").display().to_string()),
    ];
    let process = tokio::task::block_in_place(|| {
        CollectorProcess::spawn(env!("CARGO_BIN_EXE_collector"), &sets, &[])
    });

    // OTLP/HTTP over TLS, the name resolved to the loopback port the collector uses.
    let http_addr = SocketAddr::from(([127, 0, 0, 1], process.http_port));
    let trusting = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .resolve("localhost", http_addr)
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/v1/traces", process.http_port);
    let resp = trusting
        .post(&url)
        .header("content-type", "application/x-protobuf")
        .body(traces("tls-http").encode_to_vec())
        .send()
        .await
        .expect("HTTPS request");
    assert_eq!(resp.status(), 200);

    // Not trusting the certificate, or speaking cleartext: no export.
    let untrusting = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .resolve("localhost", http_addr)
        .build()
        .unwrap();
    let refused = untrusting
        .post(&url)
        .header("content-type", "application/x-protobuf")
        .body(traces("tls-untrusted").encode_to_vec())
        .send()
        .await;
    assert!(refused.is_err(), "{refused:?}");
    let cleartext = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/v1/traces", process.http_port))
        .header("content-type", "application/x-protobuf")
        .body(traces("tls-cleartext").encode_to_vec())
        .send()
        .await;
    assert!(
        cleartext.is_err() || !cleartext.as_ref().unwrap().status().is_success(),
        "{cleartext:?}"
    );

    // OTLP/gRPC over TLS.
    let channel = Endpoint::from_shared(format!("https://127.0.0.1:{}", process.grpc_port))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&cert_pem))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .expect("gRPC over TLS connects");
    let resp = TraceServiceClient::new(channel)
        .export(traces("tls-grpc"))
        .await
        .expect("gRPC export over TLS")
        .into_inner();
    assert!(resp.partial_success.is_none());
    let plain = Endpoint::from_shared(format!("http://127.0.0.1:{}", process.grpc_port))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plain {
        let e = TraceServiceClient::new(channel)
            .export(traces("tls-cleartext"))
            .await;
        assert!(e.is_err(), "cleartext gRPC must not be served");
    }

    // Both TLS exports were stored, nothing else.
    let client = clickhouse::Client::default()
        .with_url(clickhouse_url())
        .with_database(&database);
    let deadline = Instant::now() + Duration::from_secs(30);
    let sql = "SELECT count() FROM otel_traces WHERE ServiceName IN ('tls-http', 'tls-grpc')";
    let mut n: u64 = 0;
    while n < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        n = client.query(sql).fetch_one().await.unwrap_or(0);
    }
    assert_eq!(n, 2);
    let others: u64 = client
        .query("SELECT count() FROM otel_traces WHERE ServiceName NOT IN ('tls-http', 'tls-grpc')")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(others, 0);
}
