//! The tonic layers around a real gRPC service (tonic-health's health server):
//! CLIENT and SERVER spans in one trace with the `rpc.*` attributes, the status
//! from the trailers, Error as the semantic conventions say, and the RED series.

use crate::common;

use std::collections::HashMap;

use agent::metrics::RpcSide;
use agent::{FutureExt, SpanKind};
use common::{spans, start_agent, SpanRow};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use testkit::TestCollector;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// tonic-health's server (`shop.Orders` serving) behind the server layer, and a
/// channel to it behind the client layer.
async fn traced_health_server(
    agent: &agent::Agent,
) -> agent::grpc::GrpcClientService<tonic::transport::Channel> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("shop.Orders", tonic_health::ServingStatus::Serving)
        .await;
    let (connections, addr) = common::incoming().await;
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(agent.grpc_server_layer())
            .add_service(health)
            .serve_with_incoming(connections),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connects");
    tower::ServiceBuilder::new()
        .layer(agent.grpc_client_layer())
        .service(channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tonic_call_is_a_client_and_a_server_span_in_one_trace() {
    let collector = TestCollector::start("agent_grpc").await;
    let (guard, _lines) = start_agent("grpc-app", &collector);
    let agent = guard.agent().clone();

    let traced = traced_health_server(&agent).await;

    let parent = agent.start_span("checkout", SpanKind::Internal);
    let trace_id = parent.trace_id().to_hex();
    let context = parent.context().clone();
    let mut health = HealthClient::new(traced.clone());
    let serving = health
        .check(HealthCheckRequest {
            service: "shop.Orders".into(),
        })
        .with_context(context.clone())
        .await
        .expect("a known service answers");
    assert_eq!(serving.into_inner().status, ServingStatus::Serving as i32);
    let missing = health
        .check(HealthCheckRequest {
            service: "shop.Missing".into(),
        })
        .with_context(context.clone())
        .await
        .expect_err("an unknown service is NOT_FOUND");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    // A service this server does not have: UNIMPLEMENTED, in a trailers-only answer.
    let unimplemented = TraceServiceClient::new(traced)
        .export(ExportTraceServiceRequest::default())
        .with_context(context)
        .await
        .expect_err("no such service here");
    assert_eq!(unimplemented.code(), tonic::Code::Unimplemented);
    drop(parent);

    let snapshot = agent.metrics_snapshot();
    guard.shutdown_async().await.expect("flushed");

    let rows = spans(&collector, &format!("TraceId = '{trace_id}'"), 7).await;
    assert_eq!(rows.len(), 7, "{rows:#?}");
    let root = rows
        .iter()
        .find(|r| r.span_name == "checkout")
        .expect("root");
    let by_id: HashMap<&str, &SpanRow> = rows.iter().map(|r| (r.span_id.as_str(), r)).collect();
    let clients: Vec<&SpanRow> = rows.iter().filter(|r| r.span_kind == "Client").collect();
    let servers: Vec<&SpanRow> = rows.iter().filter(|r| r.span_kind == "Server").collect();
    assert_eq!((clients.len(), servers.len()), (3, 3));
    for client in &clients {
        assert_eq!(client.parent_span_id, root.span_id);
        assert_eq!(client.attr("rpc.system"), Some("grpc"));
    }
    let mut seen = Vec::new();
    for server in &servers {
        let client = by_id[server.parent_span_id.as_str()];
        assert_eq!(client.span_kind, "Client", "the server span's parent");
        assert_eq!(client.span_name, server.span_name);
        for key in [
            "rpc.system",
            "rpc.service",
            "rpc.method",
            "rpc.grpc.status_code",
        ] {
            assert_eq!(client.attr(key), server.attr(key), "{key}");
        }
        assert_eq!(server.attr("server.address"), Some("127.0.0.1"));
        assert_eq!(server.attr("client.address"), Some("127.0.0.1"));
        assert!(server.duration > 0 && server.duration <= client.duration);
        seen.push((
            server.span_name.as_str(),
            server.attr("rpc.service").unwrap_or_default(),
            server.attr("rpc.method").unwrap_or_default(),
            server.attr("rpc.grpc.status_code").unwrap_or_default(),
            client.status_code.as_str(),
            server.status_code.as_str(),
            server.attr("error.type"),
        ));
    }
    seen.sort();
    let check = "grpc.health.v1.Health/Check";
    let export = "opentelemetry.proto.collector.trace.v1.TraceService/Export";
    let health_service = "grpc.health.v1.Health";
    let trace_service = "opentelemetry.proto.collector.trace.v1.TraceService";
    assert_eq!(
        seen,
        vec![
            // NOT_FOUND: the client's failure, not the server's.
            (check, health_service, "Check", "0", "Unset", "Unset", None),
            (check, health_service, "Check", "5", "Error", "Unset", None),
            (
                export,
                trace_service,
                "Export",
                "12",
                "Error",
                "Error",
                Some("UNIMPLEMENTED")
            ),
        ]
    );

    // RED per side, method and status code.
    let calls = |side: RpcSide, method: &str, code: i32| {
        snapshot
            .rpc
            .iter()
            .find(|s| s.side == side && &*s.method == method && s.code == code)
            .map(|s| (s.durations.requests, s.durations.errors))
    };
    assert_eq!(calls(RpcSide::Server, "Check", 0), Some((1, 0)));
    assert_eq!(calls(RpcSide::Server, "Check", 5), Some((1, 0)));
    assert_eq!(calls(RpcSide::Client, "Check", 5), Some((1, 1)));
    assert_eq!(calls(RpcSide::Server, "Export", 12), Some((1, 1)));
    let text = agent::metrics::prometheus::render(&snapshot);
    assert!(
        text.contains(
            "rpc_server_call_duration_seconds_count{service_name=\"grpc-app\",rpc_system=\"grpc\",\
             rpc_service=\"grpc.health.v1.Health\",rpc_method=\"Check\",rpc_grpc_status_code=\"5\"} 1\n"
        ),
        "{text}"
    );
    let n = collector
        .wait_for_rows(
            "otel_metrics_histogram",
            "ServiceName = 'grpc-app' AND MetricName = 'rpc.server.call.duration' \
             AND Attributes['rpc.method'] = 'Check' AND Attributes['rpc.grpc.status_code'] = '5'",
            1,
        )
        .await;
    assert!(n >= 1);
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_call_dropped_by_the_client_ends_as_cancelled_on_both_sides() {
    let collector = TestCollector::start("agent_grpc_stream").await;
    let (guard, _lines) = start_agent("grpc-stream", &collector);
    let agent = guard.agent().clone();
    let mut health = HealthClient::new(traced_health_server(&agent).await);
    let parent = agent.start_span("watcher", SpanKind::Internal);
    let trace_id = parent.trace_id().to_hex();
    let mut stream = health
        .watch(HealthCheckRequest {
            service: "shop.Orders".into(),
        })
        .with_context(parent.context().clone())
        .await
        .expect("watch starts")
        .into_inner();
    let first = stream
        .message()
        .await
        .expect("first update")
        .expect("a message");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    // The server would stream on forever; the client walks away.
    drop(stream);
    drop(parent);
    // The server learns of the reset and drops its response body.
    let server_done = testkit::eventually(std::time::Duration::from_secs(10), || {
        let snapshot = agent.metrics_snapshot();
        async move {
            snapshot
                .rpc
                .iter()
                .any(|s| s.side == RpcSide::Server && &*s.method == "Watch")
                .then_some(())
        }
    })
    .await;
    assert!(server_done.is_some(), "{:?}", agent.metrics_snapshot().rpc);
    guard.shutdown_async().await.expect("flushed");

    let rows = spans(&collector, &format!("TraceId = '{trace_id}'"), 3).await;
    assert_eq!(rows.len(), 3, "{rows:#?}");
    for (kind, status) in [("Client", "Error"), ("Server", "Unset")] {
        let span = rows
            .iter()
            .find(|r| r.span_kind == kind)
            .unwrap_or_else(|| panic!("{kind} span in {rows:#?}"));
        assert_eq!(span.span_name, "grpc.health.v1.Health/Watch");
        assert_eq!(span.attr("rpc.grpc.status_code"), Some("1"), "{kind}");
        assert_eq!(
            span.status_code, status,
            "{kind}: CANCELLED is the client's failure"
        );
    }
    collector.stop().await;
}
