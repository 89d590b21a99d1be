//! Export as production needs it, against the real collector and ClickHouse: TLS
//! on both transports, OTLP/JSON, retries through a collector that first answers
//! "unavailable", per-signal `OTEL_<SIGNAL>_EXPORTER=none`, and the resource
//! identity of each agent.

use crate::common;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agent::{AgentBuilder, Config, Protocol, SpanKind, TlsConfig};
use common::{builder, spans, Captured};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use testkit::{test_config, unique_database, TestCollector};

/// A self-signed certificate for the loopback address, written to files.
struct TestCertificate {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

fn certificate() -> TestCertificate {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("certificate");
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, generated.cert.pem()).expect("write cert");
    std::fs::write(&key, generated.key_pair.serialize_pem()).expect("write key");
    TestCertificate {
        _dir: dir,
        cert,
        key,
    }
}

async fn emit_spans(guard: agent::AgentGuard, name: &'static str, n: usize) -> agent::Agent {
    let agent = guard.agent().clone();
    for _ in 0..n {
        agent.start_span(name, SpanKind::Internal).end();
    }
    guard.shutdown_async().await.expect("flushed");
    agent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_over_tls_with_grpc_http_protobuf_and_http_json() {
    let cert = certificate();
    let mut config = test_config(&unique_database("agent_tls"));
    config.receivers.tls_cert_file = cert.cert.display().to_string();
    config.receivers.tls_key_file = cert.key.display().to_string();
    let collector = TestCollector::start_with(config).await;
    let grpc = format!("https://127.0.0.1:{}", collector.collector.grpc_addr.port());
    let http = format!("https://127.0.0.1:{}", collector.collector.http_addr.port());
    let trust = |c: &mut Config| {
        for signal in agent::Signal::ALL {
            c.export_mut(signal).tls.certificate = Some(cert.cert.clone());
        }
    };

    for (service, endpoint, protocol) in [
        ("tls-grpc", &grpc, Protocol::Grpc),
        ("tls-http-protobuf", &http, Protocol::HttpProtobuf),
        ("tls-http-json", &http, Protocol::HttpJson),
    ] {
        let guard = builder(service, endpoint)
            .protocol(protocol)
            .configure(trust)
            .log_writer(Captured::default())
            .start()
            .expect("agent starts");
        let agent = emit_spans(guard, "over-tls", 3).await;
        let stats = agent.stats();
        assert_eq!(stats.spans.exported, 3, "{service}: {stats:?}");
        let rows = spans(&collector, &format!("ServiceName = '{service}'"), 3).await;
        assert_eq!(rows.len(), 3, "{service}");
    }

    // Without the CA the server is not trusted: nothing is sent, and it is counted.
    let guard = builder("tls-untrusted", &grpc)
        .export_timeout(Duration::from_secs(2))
        .log_writer(Captured::default())
        .start()
        .expect("agent starts");
    let agent = emit_spans(guard, "untrusted", 2).await;
    let stats = agent.stats();
    assert_eq!(stats.spans.exported, 0, "{stats:?}");
    assert_eq!(stats.spans.export_failed, 2, "{stats:?}");
    let stored: u64 = collector
        .client
        .query("SELECT count() FROM otel_traces WHERE ServiceName = 'tls-untrusted'")
        .fetch_one()
        .await
        .expect("count");
    assert_eq!(stored, 0);
    collector.stop().await;
}

#[tokio::test]
async fn a_missing_ca_file_fails_at_start() {
    let err = builder("no-ca", "https://127.0.0.1:4317")
        .configure(|c| {
            c.traces.tls = TlsConfig {
                certificate: Some("/nonexistent/ca.pem".into()),
                ..TlsConfig::default()
            }
        })
        .log_writer(Captured::default())
        .start()
        .err()
        .expect("start fails");
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate it signed.
struct MutualTls {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    server: rustls::ServerConfig,
}

fn mutual_tls() -> MutualTls {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let server_key = KeyPair::generate().expect("key");
    let server = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("params")
        .signed_by(&server_key, &ca, &ca_key)
        .expect("server certificate");
    let client_key = KeyPair::generate().expect("key");
    let client = CertificateParams::new(vec!["agent".to_string()])
        .expect("params")
        .signed_by(&client_key, &ca, &ca_key)
        .expect("client certificate");

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).expect("CA root");
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .expect("client verifier");
    let mut server = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(server.der().to_vec())],
            PrivateKeyDer::try_from(server_key.serialize_der()).expect("server key"),
        )
        .expect("server config");
    server.alpn_protocols = vec![b"h2".to_vec()];

    let dir = tempfile::tempdir().expect("temp dir");
    let write = |name: &str, pem: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).expect("write PEM");
        path
    };
    MutualTls {
        ca: write("ca.pem", ca.pem()),
        client_cert: write("client.pem", client.pem()),
        client_key: write("client-key.pem", client_key.serialize_pem()),
        server,
        _dir: dir,
    }
}

/// Terminates TLS that requires a client certificate and passes the bytes on
/// to the collector's cleartext gRPC port.
async fn mutual_tls_front(server: rustls::ServerConfig, upstream: std::net::SocketAddr) -> String {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client without an accepted certificate ends here.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if let Ok(mut collector) = tokio::net::TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut collector).await;
                }
            });
        }
    });
    format!("https://127.0.0.1:{}", addr.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_presents_the_client_certificate() {
    let collector = TestCollector::start("agent_mtls").await;
    let tls = mutual_tls();
    let front = mutual_tls_front(tls.server.clone(), collector.collector.grpc_addr).await;
    let with_client_cert = TlsConfig {
        certificate: Some(tls.ca.clone()),
        client_certificate: Some(tls.client_cert.clone()),
        client_key: Some(tls.client_key.clone()),
        insecure: false,
    };
    for (service, config) in [
        ("mtls-with-cert", with_client_cert.clone()),
        (
            "mtls-without-cert",
            TlsConfig {
                certificate: Some(tls.ca.clone()),
                ..TlsConfig::default()
            },
        ),
    ] {
        let guard = builder(service, &front)
            .export_timeout(Duration::from_secs(2))
            .configure(|c| {
                for signal in agent::Signal::ALL {
                    c.export_mut(signal).tls = config.clone();
                }
            })
            .log_writer(Captured::default())
            .start()
            .expect("agent starts");
        let agent = emit_spans(guard, "mutual", 2).await;
        let stats = agent.stats();
        if service == "mtls-with-cert" {
            assert_eq!(stats.spans.exported, 2, "{stats:?}");
            assert_eq!(
                spans(&collector, "ServiceName = 'mtls-with-cert'", 2)
                    .await
                    .len(),
                2
            );
        } else {
            // The server refuses the handshake: nothing goes through.
            assert_eq!((stats.spans.exported, stats.spans.export_failed), (0, 2));
        }
    }
    let refused: u64 = collector
        .client
        .query("SELECT count() FROM otel_traces WHERE ServiceName = 'mtls-without-cert'")
        .fetch_one()
        .await
        .expect("count");
    assert_eq!(refused, 0);
    collector.stop().await;
}

/// In front of the real collector: answers UNAVAILABLE to the first `fail`
/// exports, then forwards each one.
struct FlakyFront {
    calls: Arc<AtomicUsize>,
    fail: usize,
    upstream: TraceServiceClient<tonic::transport::Channel>,
}

#[tonic::async_trait]
impl TraceService for FlakyFront {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        if self.calls.fetch_add(1, Ordering::SeqCst) < self.fail {
            return Err(tonic::Status::unavailable("warming up"));
        }
        self.upstream.clone().export(request.into_inner()).await
    }
}

async fn flaky_grpc_front(collector: &TestCollector, fail: usize) -> (String, Arc<AtomicUsize>) {
    let upstream = TraceServiceClient::connect(collector.grpc_endpoint())
        .await
        .expect("collector reachable");
    let calls = Arc::new(AtomicUsize::new(0));
    let front = FlakyFront {
        calls: calls.clone(),
        fail,
        upstream,
    };
    let (connections, addr) = common::incoming().await;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(front))
            .serve_with_incoming(connections),
    );
    (format!("http://{addr}"), calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_collector_answering_unavailable_then_ok_gets_the_batch_once() {
    let collector = TestCollector::start("agent_retry_grpc").await;
    let (front, calls) = flaky_grpc_front(&collector, 2).await;
    let guard = builder("retry-grpc", &front)
        // One batch: nothing is exported before the shutdown flush.
        .export_interval(Duration::from_secs(600))
        .log_writer(Captured::default())
        .start()
        .expect("agent starts");
    let agent = emit_spans(guard, "retried", 5).await;
    let stats = agent.stats();
    assert_eq!(stats.spans.exported, 5, "{stats:?}");
    assert_eq!(stats.spans.export_failed, 0, "{stats:?}");
    // Two refusals, then the delivery.
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let rows = spans(&collector, "ServiceName = 'retry-grpc'", 5).await;
    assert_eq!(rows.len(), 5);
    let ids: HashSet<&str> = rows.iter().map(|r| r.span_id.as_str()).collect();
    assert_eq!(ids.len(), 5, "no duplicates");
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_collector_answering_503_with_retry_after_gets_the_json_batch_once() {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;

    let collector = TestCollector::start("agent_retry_http").await;
    let upstream = format!("{}/v1/traces", collector.http_endpoint());
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let calls = seen.clone();
            let upstream = upstream.clone();
            async move {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    return (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "1")], "")
                        .into_response();
                }
                let forwarded = reqwest::Client::new()
                    .post(upstream)
                    .header("content-type", headers["content-type"].clone())
                    .body(body)
                    .send()
                    .await
                    .expect("collector answers");
                let status = StatusCode::from_u16(forwarded.status().as_u16()).expect("status");
                (status, forwarded.bytes().await.expect("body")).into_response()
            }
        }),
    );
    let front = common::serve(app).await;
    let guard = builder("retry-http", &format!("http://{front}"))
        .protocol(Protocol::HttpJson)
        .export_interval(Duration::from_secs(600))
        .configure(|c| {
            c.logs.enabled = false;
            c.metrics.enabled = false;
        })
        .log_writer(Captured::default())
        .start()
        .expect("agent starts");
    let started = std::time::Instant::now();
    let agent = emit_spans(guard, "retried", 4).await;
    // Retry-After: 1 was honoured rather than a short backoff.
    assert!(started.elapsed() >= Duration::from_secs(1));
    let stats = agent.stats();
    assert_eq!(stats.spans.exported, 4, "{stats:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let rows = spans(&collector, "ServiceName = 'retry-http'", 4).await;
    let ids: HashSet<&str> = rows.iter().map(|r| r.span_id.as_str()).collect();
    assert_eq!((rows.len(), ids.len()), (4, 4));
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_at_the_export_timeout() {
    let collector = TestCollector::start("agent_retry_bounded").await;
    // Never recovers within the test.
    let (front, calls) = flaky_grpc_front(&collector, usize::MAX).await;
    let guard = builder("retry-bounded", &front)
        .export_timeout(Duration::from_millis(1500))
        .export_interval(Duration::from_millis(50))
        .shutdown_deadline(Duration::from_secs(5))
        .log_writer(Captured::default())
        .start()
        .expect("agent starts");
    let agent = guard.agent().clone();
    agent.start_span("lost", SpanKind::Internal).end();
    let failed = testkit::eventually(Duration::from_secs(20), || async {
        (agent.stats().spans.export_failed == 1).then_some(())
    })
    .await;
    assert!(failed.is_some(), "{:?}", agent.stats());
    let attempts = calls.load(Ordering::SeqCst);
    // Backoff from 200 ms within 1.5 s: more than one attempt, far from many.
    assert!((2..=12).contains(&attempts), "{attempts} attempts");
    guard.shutdown_async().await.expect("flushed");
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_exporter_set_to_none_exports_nothing_for_that_signal() {
    let collector = TestCollector::start("agent_exporter_none").await;
    let endpoint = collector.grpc_endpoint();
    let env = |pairs: &[(&str, &str)]| {
        let mut map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        map.insert("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.clone());
        map.insert("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into());
        map.insert("OTEL_BLRP_SCHEDULE_DELAY".into(), "100".into());
        Config::from_lookup(|k| map.get(k).cloned()).expect("valid environment")
    };
    let run = |service: &'static str, config: Config| async move {
        let guard = AgentBuilder::from_config(config)
            .service_name(service)
            .log_writer(Captured::default())
            .start()
            .expect("agent starts");
        let agent = guard.agent().clone();
        agent.counter("none.test.calls").add(1, &[]);
        {
            let span = agent.start_span("work", SpanKind::Internal);
            let _inside = span.enter();
            tracing::subscriber::with_default(
                tracing_subscriber::layer::SubscriberExt::with(
                    tracing_subscriber::registry(),
                    agent.log_layer(),
                ),
                || tracing::info!("inside"),
            );
        }
        guard.shutdown_async().await.expect("flushed");
        agent.stats()
    };

    let no_traces = run(
        "exporter-no-traces",
        env(&[("OTEL_TRACES_EXPORTER", "none")]),
    )
    .await;
    let only_traces = run(
        "exporter-only-traces",
        env(&[
            ("OTEL_LOGS_EXPORTER", "none"),
            ("OTEL_METRICS_EXPORTER", "none"),
        ]),
    )
    .await;

    // What each agent did send arrived…
    assert_eq!(no_traces.logs.exported, 1, "{no_traces:?}");
    assert!(no_traces.metric_points.exported > 0, "{no_traces:?}");
    assert_eq!(only_traces.spans.exported, 1, "{only_traces:?}");
    let count = |table: &'static str, service: &'static str| {
        let client = collector.client.clone();
        async move {
            client
                .query(&format!(
                    "SELECT count() FROM {table} WHERE ServiceName = '{service}'"
                ))
                .fetch_one::<u64>()
                .await
                .expect("count")
        }
    };
    assert_eq!(
        collector
            .wait_for_rows("otel_logs", "ServiceName = 'exporter-no-traces'", 1)
            .await,
        1
    );
    assert!(
        collector
            .wait_for_rows("otel_metrics_sum", "ServiceName = 'exporter-no-traces'", 1)
            .await
            > 0
    );
    assert_eq!(
        spans(&collector, "ServiceName = 'exporter-only-traces'", 1)
            .await
            .len(),
        1
    );
    // …and the switched-off signals were never sent.
    assert_eq!(
        (no_traces.spans.exported, no_traces.spans.export_failed),
        (0, 0)
    );
    assert_eq!(
        only_traces.logs.exported + only_traces.logs.export_failed,
        0
    );
    assert_eq!(
        only_traces.metric_points.exported + only_traces.metric_points.export_failed,
        0
    );
    assert_eq!(count("otel_traces", "exporter-no-traces").await, 0);
    assert_eq!(count("otel_logs", "exporter-only-traces").await, 0);
    assert_eq!(count("otel_metrics_sum", "exporter-only-traces").await, 0);
    collector.stop().await;
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct ResourceRow {
    #[serde(rename = "ResourceAttributes")]
    attributes: Vec<(String, String)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_agent_stores_its_own_resource_identity() {
    let collector = TestCollector::start("agent_resource").await;
    for _ in 0..2 {
        let guard = builder("replicated", &collector.grpc_endpoint())
            .resource_attribute("deployment.environment.name", "test")
            .log_writer(Captured::default())
            .start()
            .expect("agent starts");
        emit_spans(guard, "identity", 1).await;
    }
    spans(&collector, "ServiceName = 'replicated'", 2).await;
    let rows = collector
        .client
        .query("SELECT ResourceAttributes FROM otel_traces WHERE ServiceName = 'replicated'")
        .fetch_all::<ResourceRow>()
        .await
        .expect("resource rows");
    assert_eq!(rows.len(), 2);
    let maps: Vec<HashMap<String, String>> = rows
        .into_iter()
        .map(|r| r.attributes.into_iter().collect())
        .collect();
    for attrs in &maps {
        let pid = std::process::id().to_string();
        assert_eq!(attrs.get("process.pid"), Some(&pid), "{attrs:?}");
        assert_eq!(
            attrs.get("deployment.environment.name").map(String::as_str),
            Some("test")
        );
        assert_eq!(
            attrs.get("telemetry.sdk.language").map(String::as_str),
            Some("rust")
        );
        assert_eq!(
            attrs.get("telemetry.sdk.name").map(String::as_str),
            Some("agent")
        );
        assert_eq!(
            attrs.get("process.runtime.name").map(String::as_str),
            Some("rustc")
        );
        for key in [
            "host.name",
            "process.runtime.version",
            "telemetry.sdk.version",
        ] {
            assert!(
                attrs.get(key).is_some_and(|v| !v.is_empty()),
                "{key}: {attrs:?}"
            );
        }
        let id = &attrs["service.instance.id"];
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    }
    assert_ne!(
        maps[0]["service.instance.id"], maps[1]["service.instance.id"],
        "two agents, two instances"
    );
    collector.stop().await;
}
