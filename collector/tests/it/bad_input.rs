//! Bad input gets the right status and a message saying what is wrong; the next
//! valid request is still served and nothing valid is lost.

use crate::common;

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use testkit::{test_config, unique_database, TestCollector};

const LIMIT: usize = 64 * 1024;

fn span(name: &str, trace_id: Vec<u8>, span_id: Vec<u8>) -> Span {
    Span {
        trace_id,
        span_id,
        name: name.into(),
        kind: 2,
        start_time_unix_nano: T0,
        end_time_unix_nano: T0 + 10,
        ..Default::default()
    }
}

fn valid(service: &str) -> ExportTraceServiceRequest {
    traces_request(service, vec![span("ok", TRACE.to_vec(), SPAN.to_vec())])
}

async fn start() -> TestCollector {
    let mut config = test_config(&unique_database("bad_input"));
    config.receivers.max_request_bytes = LIMIT;
    TestCollector::start_with(config).await
}

/// The next valid request over HTTP is accepted and its span stored.
async fn still_serves(c: &TestCollector, case: &str) {
    let service = format!("after-{case}");
    let (status, _, body) = post(
        &c.http_endpoint(),
        "/v1/traces",
        "application/x-protobuf",
        valid(&service).encode_to_vec(),
        false,
    )
    .await;
    assert_eq!(status, 200, "{case}: {}", String::from_utf8_lossy(&body));
    let filter = format!("ServiceName = '{service}'");
    assert_eq!(
        c.wait_for_rows("otel_traces", &filter, 1).await,
        1,
        "{case}"
    );
}

async fn http_refusal(
    c: &TestCollector,
    case: &str,
    content_type: &str,
    body: Vec<u8>,
    gzip: bool,
) -> (u16, String) {
    let (status, ct, resp) = post(&c.http_endpoint(), "/v1/traces", content_type, body, gzip).await;
    let message = if ct == "application/x-protobuf" {
        RpcStatus::decode(&resp[..])
            .expect("google.rpc.Status body")
            .message
    } else {
        let v: serde_json::Value = serde_json::from_slice(&resp).expect("JSON Status body");
        v["message"].as_str().expect("message").to_string()
    };
    still_serves(c, case).await;
    (status, message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_bad_input() {
    let c = start().await;

    let (status, msg) = http_refusal(
        &c,
        "truncated-protobuf",
        "application/x-protobuf",
        {
            let mut b = valid("x").encode_to_vec();
            b.truncate(b.len() - 3);
            b
        },
        false,
    )
    .await;
    assert_eq!(status, 400);
    assert!(msg.starts_with("invalid protobuf message"), "{msg}");

    let (status, msg) = http_refusal(
        &c,
        "bad-json",
        "application/json",
        br#"{"resourceSpans": ["#.to_vec(),
        false,
    )
    .await;
    assert_eq!(status, 400);
    assert!(msg.starts_with("invalid OTLP JSON"), "{msg}");

    let bad_hex = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz","spanId":"1111111111111111","name":"x"}]}]}]}"#;
    let (status, msg) =
        http_refusal(&c, "bad-hex", "application/json", bad_hex.to_vec(), false).await;
    assert_eq!(status, 400);
    assert!(msg.contains("invalid OTLP JSON"), "{msg}");

    let (status, msg) =
        http_refusal(&c, "text-plain", "text/plain", b"hello".to_vec(), false).await;
    assert_eq!(status, 415);
    assert!(msg.contains("text/plain"), "{msg}");

    let big = traces_request(
        "big",
        vec![Span {
            name: "x".repeat(LIMIT + 1),
            ..span("big", TRACE.to_vec(), SPAN.to_vec())
        }],
    );
    let (status, msg) = http_refusal(
        &c,
        "oversized",
        "application/x-protobuf",
        big.encode_to_vec(),
        false,
    )
    .await;
    assert_eq!(status, 413);
    assert!(
        msg.contains(&format!("request body exceeds the limit of {LIMIT} bytes")),
        "{msg}"
    );

    // Compresses to about 1 KiB, inflates to 16 times the limit.
    let bomb = traces_request(
        "bomb",
        vec![Span {
            name: "0".repeat(LIMIT * 16),
            ..span("bomb", TRACE.to_vec(), SPAN.to_vec())
        }],
    );
    let (status, msg) = http_refusal(
        &c,
        "gzip-bomb",
        "application/x-protobuf",
        bomb.encode_to_vec(),
        true,
    )
    .await;
    assert_eq!(status, 413);
    assert!(msg.contains("decompressed body exceeds"), "{msg}");

    let (status, _, body) = post(
        &c.http_endpoint(),
        "/v1/traces",
        "application/x-protobuf",
        b"garbage".to_vec(),
        true,
    )
    .await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    still_serves(&c, "bad-gzip").await;

    // Invalid ids: those spans are rejected and counted, the valid one is stored.
    let mixed = traces_request(
        "mixed-http",
        vec![
            span("short-trace", vec![1; 8], SPAN.to_vec()),
            span("short-span", TRACE.to_vec(), vec![1; 4]),
            span("zero-trace", vec![0; 16], SPAN.to_vec()),
            span("good", TRACE.to_vec(), SPAN.to_vec()),
        ],
    );
    let (status, _, body) = post(
        &c.http_endpoint(),
        "/v1/traces",
        "application/x-protobuf",
        mixed.encode_to_vec(),
        false,
    )
    .await;
    assert_eq!(status, 200);
    let resp = ExportTraceServiceResponse::decode(&body[..]).unwrap();
    let partial = resp.partial_success.expect("partial_success");
    assert_eq!(partial.rejected_spans, 3);
    assert!(partial.error_message.contains("3 spans rejected; first: span \"short-trace\": trace_id must be 16 non-zero bytes, got 8"), "{}", partial.error_message);
    assert_eq!(
        c.wait_for_rows(
            "otel_traces",
            "ServiceName = 'mixed-http' AND SpanName = 'good'",
            1
        )
        .await,
        1
    );

    // The same in JSON: the partial success comes back as JSON.
    let json = serde_json::to_vec(&traces_request(
        "mixed-json",
        vec![
            span("short-span", TRACE.to_vec(), vec![1; 4]),
            span("good", TRACE.to_vec(), SPAN.to_vec()),
        ],
    ))
    .unwrap();
    let (status, ct, body) = post(
        &c.http_endpoint(),
        "/v1/traces",
        "application/json",
        json,
        false,
    )
    .await;
    assert_eq!((status, ct.as_str()), (200, "application/json"));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    // ProtoJSON readers take int64 as a number or a string.
    let rejected = &v["partialSuccess"]["rejectedSpans"];
    assert!(rejected == 1 || rejected == "1", "{v}");

    let metrics = reqwest::get(format!("{}/metrics", c.admin_endpoint()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "collector_requests_total{signal=\"traces\",outcome=\"malformed\"} 4",
        "collector_requests_total{signal=\"traces\",outcome=\"unsupported\"} 1",
        "collector_requests_total{signal=\"traces\",outcome=\"too_large\"} 2",
        "collector_requests_total{signal=\"traces\",outcome=\"partial\"} 2",
        "collector_items_rejected_total{signal=\"traces\"} 4",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_bad_input() {
    let c = start().await;
    let ep = c.grpc_endpoint();

    let mut truncated = valid("x").encode_to_vec();
    truncated.truncate(truncated.len() - 3);
    let e = raw_grpc::export_traces(&ep, truncated, false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("invalid protobuf message"), "{e:?}");
    still_serves(&c, "grpc-truncated").await;

    // Invalid UTF-8 in a string field.
    let mut bad_utf8 = valid("x").encode_to_vec();
    let pos = bad_utf8
        .windows(2)
        .position(|w| w == b"ok")
        .expect("span name");
    bad_utf8[pos] = 0xff;
    let e = raw_grpc::export_traces(&ep, bad_utf8, false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    still_serves(&c, "grpc-utf8").await;

    let big = traces_request(
        "big",
        vec![Span {
            name: "x".repeat(LIMIT + 1),
            ..span("big", TRACE.to_vec(), SPAN.to_vec())
        }],
    );
    let e = raw_grpc::export_traces(&ep, big.encode_to_vec(), false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    still_serves(&c, "grpc-oversized").await;

    let bomb = traces_request(
        "bomb",
        vec![Span {
            name: "0".repeat(LIMIT * 16),
            ..span("bomb", TRACE.to_vec(), SPAN.to_vec())
        }],
    );
    let e = raw_grpc::export_traces(&ep, bomb.encode_to_vec(), true)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    still_serves(&c, "grpc-bomb").await;

    let mixed = traces_request(
        "mixed-grpc",
        vec![
            span("short-parent", TRACE.to_vec(), SPAN.to_vec()),
            span("good", TRACE.to_vec(), SPAN.to_vec()),
        ],
    );
    let mut mixed = mixed;
    mixed.resource_spans[0].scope_spans[0].spans[0].parent_span_id = vec![1; 3];
    let resp = raw_grpc::export_traces(&ep, mixed.encode_to_vec(), false)
        .await
        .expect("accepted");
    let partial = resp.partial_success.expect("partial_success");
    assert_eq!(partial.rejected_spans, 1);
    assert!(
        partial
            .error_message
            .contains("parent_span_id must be empty or 8 bytes, got 3"),
        "{}",
        partial.error_message
    );
    assert_eq!(
        c.wait_for_rows("otel_traces", "ServiceName = 'mixed-grpc'", 1)
            .await,
        1
    );
    c.stop().await;
}

/// OTLP JSON as people write it by hand: 64-bit integers as numbers or strings,
/// enums as integers, hex ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_written_json_is_accepted() {
    let c = start().await;
    let body = format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"json-hand"}}}}]}},
        "scopeSpans":[{{"scope":{{"name":"s"}},"spans":[
          {{"traceId":"{TRACE_HEX}","spanId":"{SPAN_HEX}","name":"as-strings","kind":2,
            "startTimeUnixNano":"{T0}","endTimeUnixNano":"{}","attributes":[{{"key":"n","value":{{"intValue":"7"}}}}]}},
          {{"traceId":"{TRACE_HEX}","spanId":"2222222222222222","parentSpanId":"{SPAN_HEX}","name":"as-numbers","kind":3,
            "startTimeUnixNano":{T0},"endTimeUnixNano":{},"attributes":[{{"key":"n","value":{{"intValue":8}}}}],
            "status":{{"code":2,"message":"bad"}}}}
        ]}}]}}]}}"#,
        T0 + 5,
        T0 + 9
    );
    let (status, _, resp) = post(
        &c.http_endpoint(),
        "/v1/traces",
        "application/json",
        body.into_bytes(),
        false,
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp));
    assert_eq!(
        c.wait_for_rows("otel_traces", "ServiceName = 'json-hand'", 2)
            .await,
        2
    );
    let rows: Vec<(String, String, String, u64, String, String)> = c
        .client
        .query("SELECT SpanName, SpanKind, ParentSpanId, Duration, SpanAttributes['n'], StatusCode FROM otel_traces WHERE ServiceName = 'json-hand' ORDER BY SpanName")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(
        rows,
        [
            (
                "as-numbers".into(),
                "Client".into(),
                SPAN_HEX.into(),
                9,
                "8".into(),
                "Error".into()
            ),
            (
                "as-strings".into(),
                "Server".into(),
                String::new(),
                5,
                "7".into(),
                "Unset".into()
            ),
        ]
    );
    c.stop().await;
}
