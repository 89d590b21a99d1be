//! Hostile input against the real collector binary, a separate process with auth on
//! and the default limits (16 MiB requests, 100,000 items, 256 attributes, 64 KiB
//! values, depth 8): each attack gets the right status and message, the process
//! stays up, keeps serving and storing valid data, and its resident memory stays
//! under [`RSS_BOUND`].

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValueList};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use testkit::{clickhouse_url, unique_database, CollectorProcess};

const TOKEN: &str = "s3cret-token-for-tests";
const MAX_REQUEST: usize = 16 << 20;
/// Peak resident memory (VmHWM) the collector must stay under through every
/// attack. Measured in debug builds with the spool on: 45 MiB after start, peak
/// 102–136 MiB over five runs (the 100,001-span request is the high point; 80 MiB
/// before the spool existed). The bound leaves ~50 % for allocator slack and build
/// differences; the gzip bomb gets a tighter check of its own ([`BOMB_GROWTH`]).
const RSS_BOUND: u64 = 200 << 20;
/// How much the peak may grow while the 64 MiB bomb is refused: the 16 MiB
/// inflation buffer and slack, well short of inflating it.
const BOMB_GROWTH: u64 = 40 << 20;

fn span(name: &str, attributes: Vec<opentelemetry_proto::tonic::common::v1::KeyValue>) -> Span {
    Span {
        trace_id: TRACE.to_vec(),
        span_id: SPAN.to_vec(),
        name: name.into(),
        kind: 2,
        start_time_unix_nano: T0,
        end_time_unix_nano: T0 + 10,
        attributes,
        ..Default::default()
    }
}

/// `levels` kvlists around a string, as one attribute.
fn nested(levels: usize) -> Option<AnyValue> {
    let mut v = Value::StringValue("leaf".into());
    for _ in 0..levels {
        v = Value::KvlistValue(KeyValueList {
            values: vec![kv("k", Some(AnyValue { value: Some(v) }))],
        });
    }
    Some(AnyValue { value: Some(v) })
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `google.rpc.Status` message of a protobuf error body.
    fn status_message(&self) -> String {
        RpcStatus::decode(&self.body[..])
            .map(|s| s.message)
            .unwrap_or_else(|_| self.text())
    }

    fn partial_success(&self) -> (i64, String) {
        let r = ExportTraceServiceResponse::decode(&self.body[..]).expect("export response");
        r.partial_success
            .map(|p| (p.rejected_spans, p.error_message))
            .unwrap_or_default()
    }
}

struct Harness {
    process: CollectorProcess,
    client: clickhouse::Client,
    http: reqwest::Client,
    peak_rss: u64,
    served: Vec<String>,
}

impl Harness {
    async fn post(&self, token: Option<&str>, headers: &[(&str, &str)], body: Vec<u8>) -> Reply {
        let mut req = self
            .http
            .post(format!("{}/v1/traces", self.process.http_endpoint()));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        match req.body(body).send().await {
            Ok(resp) => Reply {
                status: resp.status().as_u16(),
                headers: resp.headers().clone(),
                body: resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default(),
            },
            Err(e) => panic!("HTTP request failed: {e}"),
        }
    }

    async fn post_protobuf(&self, body: Vec<u8>) -> Reply {
        self.post(
            Some(TOKEN),
            &[("content-type", "application/x-protobuf")],
            body,
        )
        .await
    }

    async fn post_json(&self, body: Vec<u8>) -> Reply {
        self.post(Some(TOKEN), &[("content-type", "application/json")], body)
            .await
    }

    async fn grpc(
        &self,
        token: Option<&str>,
        request: ExportTraceServiceRequest,
    ) -> Result<ExportTraceServiceResponse, tonic::Status> {
        let channel = tonic::transport::Endpoint::from_shared(self.process.grpc_endpoint())
            .unwrap()
            .connect()
            .await
            .expect("gRPC connect");
        let mut client = TraceServiceClient::new(channel)
            .max_encoding_message_size(usize::MAX)
            .max_decoding_message_size(usize::MAX);
        let mut req = tonic::Request::new(request);
        if let Some(t) = token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        client.export(req).await.map(|r| r.into_inner())
    }

    /// Sends arbitrary bytes as the trace request message, with the token.
    async fn grpc_raw(
        &self,
        body: Vec<u8>,
        gzip: bool,
    ) -> Result<ExportTraceServiceResponse, tonic::Status> {
        let channel = tonic::transport::Endpoint::from_shared(self.process.grpc_endpoint())
            .unwrap()
            .connect()
            .await
            .expect("gRPC connect");
        let mut grpc = tonic::client::Grpc::new(channel).max_encoding_message_size(usize::MAX);
        if gzip {
            grpc = grpc.send_compressed(tonic::codec::CompressionEncoding::Gzip);
        }
        grpc.ready().await.expect("ready");
        let path = http::uri::PathAndQuery::from_static(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        );
        let mut req = tonic::Request::new(body);
        req.metadata_mut()
            .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        grpc.unary(req, path, raw_grpc::RawCodec)
            .await
            .map(|r| r.into_inner())
    }

    /// After each case: the process is alive, under the bound, and a valid request
    /// is accepted (its row is checked at the end).
    async fn still_up(&mut self, case: &str) {
        assert!(
            self.process.child.try_wait().expect("wait").is_none(),
            "{case}: the collector exited"
        );
        let rss = self.process.rss_bytes();
        // The high-water mark also catches a peak in the middle of a request.
        let peak = high_water_mark(&self.process);
        self.peak_rss = self.peak_rss.max(peak);
        assert!(
            peak < RSS_BOUND,
            "{case}: peak RSS {} MiB over the bound",
            peak >> 20
        );
        let service = format!("after-{case}");
        let reply = self
            .post_protobuf(traces_request(&service, vec![span("ok", vec![])]).encode_to_vec())
            .await;
        assert_eq!(reply.status, 200, "{case}: {}", reply.text());
        self.served.push(service);
        println!("{case}: ok, RSS {} MiB, peak {} MiB", rss >> 20, peak >> 20);
    }

    /// Polls until `sql` (a count) reaches `want`, for up to 30 s.
    async fn count(&self, sql: &str, want: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let n: u64 = self.client.query(sql).fetch_one().await.unwrap_or(0);
            if n >= want || Instant::now() > deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The process's peak resident memory so far (`VmHWM`).
fn high_water_mark(p: &CollectorProcess) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", p.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmHWM in /proc/<pid>/status")
}

/// One HTTP/1.1 request over a plain socket, for bodies a client library would not
/// send the way an attacker does; returns the whole response as text. A write error
/// after the server answered early is expected and ignored.
fn raw_http(port: u16, extra_headers: &str, body: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/x-protobuf\r\nConnection: close\r\n{extra_headers}\r\n"
    );
    s.write_all(head.as_bytes()).expect("write head");
    let _ = s.write_all(body);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn start(extra: &[(&str, String)]) -> (Harness, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("# test clients\n{TOKEN}\nanother-token\n")).unwrap();
    let database = unique_database("hostile");
    let mut sets = vec![
        ("clickhouse.url", clickhouse_url()),
        ("clickhouse.database", database.clone()),
        ("receivers.auth_tokens_file", tokens.display().to_string()),
        ("receivers.max_request_bytes", MAX_REQUEST.to_string()),
        ("batching.max_delay_ms", "100".to_string()),
        // Each process its own spool: a spool directory is locked by its process.
        ("spool.dir", dir.path().join("spool").display().to_string()),
    ];
    sets.extend(extra.iter().cloned());
    let process = CollectorProcess::spawn(env!("CARGO_BIN_EXE_collector"), &sets, &[]);
    let client = clickhouse::Client::default()
        .with_url(clickhouse_url())
        .with_database(&database);
    let harness = Harness {
        process,
        client,
        http: reqwest::Client::new(),
        peak_rss: 0,
        served: Vec::new(),
    };
    (harness, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_is_refused_or_repaired_and_the_process_stays_up() {
    let (mut h, _dir) = tokio::task::block_in_place(|| start(&[]));
    let valid = || traces_request("valid", vec![span("ok", vec![])]).encode_to_vec();

    // Missing and wrong tokens: 401 with a challenge, before the body is looked at.
    let r = h
        .post(None, &[("content-type", "application/x-protobuf")], valid())
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.headers["www-authenticate"], "Bearer");
    assert!(
        r.status_message().contains("missing bearer token"),
        "{}",
        r.text()
    );
    let r = h
        .post(
            Some("s3cret-token-for-test"),
            &[("content-type", "application/x-protobuf")],
            valid(),
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.status_message(), "invalid bearer token");
    // Even a body that would be refused otherwise gets 401 first.
    let r = h
        .post(
            Some("wrong"),
            &[("content-type", "text/plain")],
            b"x".to_vec(),
        )
        .await;
    assert_eq!(r.status, 401);
    let e = h
        .grpc(None, traces_request("no-token", vec![span("x", vec![])]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let e = h
        .grpc(
            Some("wrong"),
            traces_request("bad-token", vec![span("x", vec![])]),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert_eq!(e.message(), "invalid bearer token");
    let ok = h
        .grpc(
            Some("another-token"),
            traces_request("grpc-ok", vec![span("x", vec![])]),
        )
        .await;
    assert!(ok.is_ok(), "{ok:?}");
    h.still_up("tokens").await;

    // Gzip bomb: 64 MiB of zeros in about 64 KiB, four times the limit once inflated.
    let bomb = gzip(&vec![0u8; 4 * MAX_REQUEST]);
    assert!(bomb.len() < 1 << 20);
    let before = high_water_mark(&h.process);
    let r = h
        .post(
            Some(TOKEN),
            &[
                ("content-type", "application/x-protobuf"),
                ("content-encoding", "gzip"),
            ],
            bomb.clone(),
        )
        .await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r
        .status_message()
        .contains("decompressed body exceeds the limit of 16777216 bytes"));
    let e = h
        .grpc_raw(vec![0u8; 4 * MAX_REQUEST], true)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    let growth = high_water_mark(&h.process).saturating_sub(before);
    println!("gzip bomb: peak grew by {} MiB", growth >> 20);
    assert!(
        growth < BOMB_GROWTH,
        "the bomb grew the peak by {} MiB",
        growth >> 20
    );
    h.still_up("gzip-bomb").await;

    // Oversized body, declared (refused before any of it is read) and streamed
    // without a length (refused once the limit is crossed).
    let port = h.process.http_port;
    let declared = format!("Content-Length: {}\r\n", MAX_REQUEST + 1);
    let reply = tokio::task::spawn_blocking(move || raw_http(port, &declared, &[]))
        .await
        .unwrap();
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(
        reply.contains("request body exceeds the limit of 16777216 bytes"),
        "{reply}"
    );
    let mut chunked = Vec::new();
    for _ in 0..17 {
        chunked.extend_from_slice(format!("{:x}\r\n", 1 << 20).as_bytes());
        chunked.extend(std::iter::repeat_n(0u8, 1 << 20));
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let reply = tokio::task::spawn_blocking(move || {
        raw_http(port, "Transfer-Encoding: chunked\r\n", &chunked)
    })
    .await
    .unwrap();
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(
        reply.contains("request body exceeds the limit of 16777216 bytes"),
        "{reply}"
    );
    let big = traces_request("big", vec![span(&"x".repeat(MAX_REQUEST + 10), vec![])]);
    let e = h.grpc(Some(TOKEN), big).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    h.still_up("oversized").await;

    // Too many items: refused whole, the message names the limit.
    let many: Vec<Span> = (0..100_001).map(|_| span("s", vec![])).collect();
    let r = h
        .post_protobuf(traces_request("many", many.clone()).encode_to_vec())
        .await;
    assert_eq!(r.status, 413, "{}", r.text());
    let msg = r.status_message();
    assert!(
        msg.contains("100001 spans") && msg.contains("receivers.max_items_per_request"),
        "{msg}"
    );
    let e = h
        .grpc(Some(TOKEN), traces_request("many", many))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    assert!(e.message().contains("100001 spans"));
    h.still_up("too-many-items").await;

    // 100,000 attributes on one span: the first 256 are kept, the rest reported.
    let wide: Vec<_> = (0..100_000)
        .map(|i| kv(&format!("attr.{i:06}"), s("v")))
        .collect();
    let r = h
        .post_protobuf(traces_request("wide", vec![span("wide", wide.clone())]).encode_to_vec())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (rejected, note) = r.partial_success();
    assert_eq!(rejected, 0);
    assert!(
        note.starts_with("99744 attributes dropped (limit 256"),
        "{note}"
    );
    let g = h
        .grpc(
            Some(TOKEN),
            traces_request("wide-grpc", vec![span("wide", wide)]),
        )
        .await
        .expect("accepted over gRPC");
    let p = g.partial_success.expect("a note");
    assert_eq!(p.rejected_spans, 0);
    assert!(p.error_message.starts_with("99744 attributes dropped"));
    h.still_up("many-attributes").await;

    // A 1 MB attribute value: cut to 64 KiB at a character boundary ('é' is 2 bytes,
    // and 65,536 is even, so 'a' + 'é's ends mid-character there).
    let long = format!("a{}", "é".repeat(500_000));
    let r = h
        .post_protobuf(
            traces_request("long", vec![span("long", vec![kv("big", s(&long))])]).encode_to_vec(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (_, note) = r.partial_success();
    assert!(
        note.starts_with("1 value truncated (limit 65536 bytes"),
        "{note}"
    );
    h.still_up("long-value").await;

    // Invalid UTF-8 in a string, in protobuf and in JSON.
    let mut bad = traces_request("utf8", vec![span("MARKER", vec![])]).encode_to_vec();
    let at = bad.windows(6).position(|w| w == b"MARKER").unwrap();
    bad[at..at + 2].copy_from_slice(&[0xff, 0xfe]);
    let r = h.post_protobuf(bad).await;
    assert_eq!(r.status, 400);
    assert!(
        r.status_message().contains("invalid protobuf message"),
        "{}",
        r.text()
    );
    let mut bad =
        serde_json::to_vec(&traces_request("utf8", vec![span("MARKER", vec![])])).unwrap();
    let at = bad.windows(6).position(|w| w == b"MARKER").unwrap();
    bad[at..at + 2].copy_from_slice(&[0xff, 0xfe]);
    let r = h.post_json(bad).await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("invalid OTLP JSON"), "{}", r.text());
    h.still_up("invalid-utf8").await;

    // Truncated protobuf, over HTTP and gRPC.
    let whole = traces_request(
        "cut",
        (0..50).map(|i| span(&format!("s{i}"), vec![])).collect(),
    )
    .encode_to_vec();
    let r = h.post_protobuf(whole[..whole.len() / 2].to_vec()).await;
    assert_eq!(r.status, 400);
    assert!(r.status_message().contains("invalid protobuf message"));
    let e = h
        .grpc_raw(whole[..whole.len() / 2].to_vec(), false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    h.still_up("truncated-protobuf").await;

    // Nested kvlists. Depth 20 decodes and is cut to depth 8 with a marker; depth 50
    // is past the decoders' recursion limits (prost 100 messages, serde_json 128
    // levels) and is a 400, not a crash.
    for (encoding, encode) in [
        (
            "protobuf",
            (|r: &ExportTraceServiceRequest| r.encode_to_vec()) as fn(&_) -> Vec<u8>,
        ),
        ("json", |r: &ExportTraceServiceRequest| {
            serde_json::to_vec(r).unwrap()
        }),
    ] {
        let send = |body: Vec<u8>| async {
            if encoding == "json" {
                h.post_json(body).await
            } else {
                h.post_protobuf(body).await
            }
        };
        let service = format!("deep-{encoding}");
        let req = traces_request(&service, vec![span("deep", vec![kv("deep", nested(20))])]);
        let r = send(encode(&req)).await;
        assert_eq!(r.status, 200, "{encoding}: {}", r.text());
        let note = if encoding == "json" {
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            v["partialSuccess"]["errorMessage"]
                .as_str()
                .unwrap_or("")
                .to_string()
        } else {
            r.partial_success().1
        };
        assert!(
            note.starts_with("1 value nested too deep"),
            "{encoding}: {note}"
        );
        let req = traces_request("deeper", vec![span("deep", vec![kv("deep", nested(50))])]);
        let r = send(encode(&req)).await;
        assert_eq!(r.status, 400, "{encoding}: {}", r.text());
        assert!(
            r.text().contains("recursion limit"),
            "{encoding}: {}",
            r.text()
        );
    }
    h.still_up("deep-nesting").await;

    // Wrong content types and encodings.
    for (headers, status, says) in [
        (vec![("content-type", "text/plain")], 415, "text/plain"),
        (vec![], 415, "missing Content-Type"),
        (
            vec![
                ("content-type", "application/x-protobuf"),
                ("content-encoding", "br"),
            ],
            415,
            "Content-Encoding",
        ),
        (
            vec![
                ("content-type", "application/x-protobuf"),
                ("content-encoding", "gzip"),
            ],
            400,
            "invalid gzip body",
        ),
    ] {
        let r = h.post(Some(TOKEN), &headers, valid()).await;
        assert_eq!(r.status, status, "{headers:?}: {}", r.text());
        assert!(r.text().contains(says), "{headers:?}: {}", r.text());
    }
    h.still_up("content-types").await;

    // Everything valid sent in between was stored, and what the limits changed is
    // stored changed.
    let wanted = h.served.len() as u64;
    let list = h
        .served
        .iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(",");
    let n = h
        .count(
            &format!("SELECT count() FROM otel_traces WHERE ServiceName IN ({list})"),
            wanted,
        )
        .await;
    assert_eq!(n, wanted);
    let sql = "SELECT count() FROM otel_traces WHERE ServiceName IN ('wide', 'wide-grpc') \
               AND length(SpanAttributes) = 256 AND SpanAttributes['attr.000255'] = 'v'";
    assert_eq!(h.count(sql, 2).await, 2);
    let sql = "SELECT count() FROM otel_traces WHERE ServiceName = 'long' \
               AND length(SpanAttributes['big']) = 65535";
    assert_eq!(h.count(sql, 1).await, 1);
    let sql =
        "SELECT count() FROM otel_traces WHERE ServiceName IN ('deep-protobuf', 'deep-json') \
               AND position(SpanAttributes['deep'], 'nested deeper than 8 levels') > 0";
    assert_eq!(h.count(sql, 2).await, 2);
    for refused in ["many", "deeper", "no-token", "bad-token", "utf8", "cut"] {
        let sql = format!("SELECT count() FROM otel_traces WHERE ServiceName = '{refused}'");
        let n: u64 = h.client.query(&sql).fetch_one().await.unwrap();
        assert_eq!(n, 0, "{refused} was refused, nothing of it may be stored");
    }

    // The refusals and repairs are counted.
    let metrics = h
        .http
        .get(format!("{}/metrics", h.process.admin_endpoint()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "collector_unauthenticated_requests_total{signal=\"traces\"} 5",
        "collector_attributes_dropped_total{signal=\"traces\"} 199488",
        "collector_values_truncated_total{signal=\"traces\"} 1",
        "collector_values_too_deep_total{signal=\"traces\"} 2",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
    println!(
        "hostile input: peak RSS {} MiB (bound {} MiB)",
        h.peak_rss >> 20,
        RSS_BOUND >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_answers_429_with_retry_after() {
    // 1 item/s with a burst of 10: after 10 spans a token must wait ~10 s for 10 more,
    // far longer than this test takes between two requests.
    let (mut h, _dir) = tokio::task::block_in_place(|| {
        start(&[
            ("receivers.rate_limit_items_per_second", "1".into()),
            ("receivers.rate_limit_burst", "10".into()),
        ])
    });
    let ten = |service: &str| traces_request(service, (0..10).map(|_| span("s", vec![])).collect());
    let r = h.post_protobuf(ten("rate-1").encode_to_vec()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = h.post_protobuf(ten("rate-2").encode_to_vec()).await;
    assert_eq!(r.status, 429, "{}", r.text());
    let after: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=10).contains(&after), "Retry-After {after}");
    assert!(r.status_message().contains("rate limit of 1 items/s"));
    let e = h.grpc(Some(TOKEN), ten("rate-3")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    // Another token has its own bucket.
    let ok = h.grpc(Some("another-token"), ten("rate-4")).await;
    assert!(ok.is_ok(), "{ok:?}");
    assert!(h.process.child.try_wait().unwrap().is_none());
    let n = h
        .count(
            "SELECT count() FROM otel_traces WHERE ServiceName IN ('rate-1', 'rate-4')",
            20,
        )
        .await;
    assert_eq!(n, 20);
    let n: u64 = h
        .client
        .query("SELECT count() FROM otel_traces WHERE ServiceName IN ('rate-2', 'rate-3')")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(n, 0);
}

/// Neither `--print-config` nor the logs (at debug level, while ClickHouse cannot
/// be reached and every attempt is logged) show the ClickHouse password, whether
/// it is set on its own or inside the URL.
#[test]
fn clickhouse_credentials_are_never_logged() {
    use std::io::Read;
    use std::process::{Command, Stdio};

    let bin = env!("CARGO_BIN_EXE_collector");
    let dead = format!("127.0.0.1:{}", testkit::free_port());
    let spool = tempfile::tempdir().unwrap();
    let sets = [
        format!("clickhouse.url=http://writer:url-secret-1@{dead}"),
        "clickhouse.password=password-secret-2".to_string(),
        format!("spool.dir={}", spool.path().join("spool").display()),
    ];
    let args = |cmd: &mut Command| {
        for s in &sets {
            cmd.args(["--set", s]);
        }
        for (flag, port) in [
            ("--grpc-addr", testkit::free_port()),
            ("--http-addr", testkit::free_port()),
            ("--admin-addr", testkit::free_port()),
            ("--ui-addr", testkit::free_port()),
        ] {
            cmd.args([flag, &format!("127.0.0.1:{port}")]);
        }
    };

    let mut print = Command::new(bin);
    args(&mut print);
    let out = print
        .arg("--print-config")
        .output()
        .expect("--print-config runs");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("[clickhouse]"), "{shown}");
    assert!(!shown.contains("secret"), "{shown}");

    let mut run = Command::new(bin);
    args(&mut run);
    let mut child = run
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("collector starts");
    // Logs are read as they come, so a slow start-up only makes the test wait longer:
    // it stops once start-up and, past 4 s, several failed attempts are logged.
    let captured = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = {
        let captured = captured.clone();
        let mut stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n @ 1..) = stderr.read(&mut buf) {
                captured.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let started = Instant::now();
    loop {
        let logged = {
            let logs = captured.lock().unwrap();
            let logs = String::from_utf8_lossy(&logs);
            logs.contains("starting") && logs.matches(&dead).count() >= 2
        };
        let waited = started.elapsed();
        if (logged && waited >= Duration::from_secs(4)) || waited > Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    reader.join().unwrap();
    let mut logs = String::from_utf8_lossy(&captured.lock().unwrap()).into_owned();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(logs.contains("starting"), "no logs captured:\n{logs}");
    assert!(
        logs.contains(&dead),
        "the (redacted) ClickHouse URL is logged:\n{logs}"
    );
    assert!(!logs.contains("secret"), "a credential was logged:\n{logs}");
}
