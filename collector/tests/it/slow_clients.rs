//! Hostile concurrency against the real collector process: 64 clients that
//! announce 15 MB bodies (Content-Length) and trickle them, silent connections and
//! clients that trickle their headers, then 64 clients that push part of their body
//! at once and stall. Throughout, a well-behaved client keeps getting answers, the
//! collector closes every slow connection itself, and its peak resident memory
//! (VmHWM, from /proc) stays under [`RSS_BOUND`].

use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use testkit::{clickhouse_url, unique_database, CollectorProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SLOW_CLIENTS: usize = 64;
/// What each slow client announces in its Content-Length.
const ANNOUNCED: usize = 15 << 20;
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
const BODY_TIMEOUT: Duration = Duration::from_secs(3);
const INFLIGHT_BUDGET: usize = 64 << 20;
const INFLIGHT_WAIT: Duration = Duration::from_millis(500);
/// Bytes each stalling client sends at once in the second phase: 64 of them want
/// 128 MiB, twice the budget.
const STALL_BURST: usize = 2 << 20;
/// Peak resident memory (VmHWM) of the collector through both phases. Measured in
/// a debug build: see README "Receivers under load" for the figures. The bound is
/// the start-up footprint (~45 MiB) plus the 64 MiB request budget plus slack for
/// the connections' buffers and the allocator; without the budget, 64 clients
/// announcing 15 MB could make it hold 960 MB.
const RSS_BOUND: u64 = 160 << 20;

/// How a slow connection ended, seen from the client (which never closes it).
#[derive(Debug)]
struct Ended {
    /// The status line's code, when the collector answered before closing.
    status: Option<u16>,
    text: String,
    after: Duration,
    /// False when the client gave up waiting: the collector kept it open.
    closed_by_collector: bool,
}

/// Sends `head`, then `burst` body bytes at once, then `chunk` bytes every
/// `every` until the collector closes the connection or `give_up` passes.
async fn slow_client(
    port: u16,
    head: String,
    burst: usize,
    chunk: &'static [u8],
    every: Duration,
    give_up: Duration,
) -> Ended {
    let started = Instant::now();
    let stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        if wr.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        if burst > 0 && wr.write_all(&vec![0u8; burst]).await.is_err() {
            return;
        }
        loop {
            tokio::time::sleep(every).await;
            if chunk.is_empty() {
                continue;
            }
            if wr.write_all(chunk).await.is_err() {
                return;
            }
        }
    });
    let mut out = Vec::new();
    let read = tokio::time::timeout(give_up, async {
        // EOF or a reset: either way the collector ended the connection.
        let _ = rd.read_to_end(&mut out).await;
    })
    .await;
    writer.abort();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|c| c.parse().ok());
    Ended {
        status,
        text,
        after: started.elapsed(),
        closed_by_collector: read.is_ok(),
    }
}

fn body_head(announce: usize) -> String {
    format!(
        "POST /v1/traces HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-protobuf\r\n\
         Content-Length: {announce}\r\n\r\n"
    )
}

/// (peak, current) resident memory of the process, from /proc.
fn rss(p: &CollectorProcess) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{}/status", p.child.id())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or_else(|| panic!("{name} in /proc/<pid>/status"))
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn good_request(i: usize) -> Vec<u8> {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![opentelemetry_proto::tonic::common::v1::KeyValue {
                    key: "service.name".into(),
                    value: Some(opentelemetry_proto::tonic::common::v1::AnyValue {
                        value: Some(
                            opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                                "well-behaved".into(),
                            ),
                        ),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: [7u8; 16].to_vec(),
                    span_id: (i as u64 + 1).to_be_bytes().to_vec(),
                    name: format!("good-{i}"),
                    start_time_unix_nano: 1_700_000_000_000_000_000,
                    end_time_unix_nano: 1_700_000_000_100_000_000,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

/// Sends valid requests one after another until `stop`; returns each answer's
/// status and how long it took.
async fn well_behaved(
    endpoint: String,
    first: usize,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<(u16, Instant)> {
    let client = reqwest::Client::new();
    let mut answers = Vec::new();
    let mut i = first;
    while !*stop.borrow() {
        let status = client
            .post(format!("{endpoint}/v1/traces"))
            .header("content-type", "application/x-protobuf")
            .body(good_request(i))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        // Status 0: no answer within the request's own 10 s timeout.
        answers.push((status, Instant::now()));
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    answers
}

/// The two tests measure time and memory: run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_memory_stays_bounded_and_good_clients_are_served() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let database = unique_database("slow_clients");
    let sets = [
        ("clickhouse.url", clickhouse_url()),
        ("clickhouse.database", database.clone()),
        ("spool.dir", dir.path().join("spool").display().to_string()),
        ("batching.max_delay_ms", "100".to_string()),
        (
            "receivers.header_timeout_ms",
            HEADER_TIMEOUT.as_millis().to_string(),
        ),
        (
            "receivers.request_body_timeout_ms",
            BODY_TIMEOUT.as_millis().to_string(),
        ),
        (
            "receivers.max_inflight_request_bytes",
            INFLIGHT_BUDGET.to_string(),
        ),
        (
            "receivers.inflight_wait_ms",
            INFLIGHT_WAIT.as_millis().to_string(),
        ),
    ];
    let process = tokio::task::block_in_place(|| {
        CollectorProcess::spawn(env!("CARGO_BIN_EXE_collector"), &sets, &[])
    });
    let port = process.http_port;
    let (start_peak, _) = rss(&process);
    println!("after start: peak RSS {} MiB", start_peak >> 20);

    // Phase 1: 64 clients announce 15 MB and trickle 1 KiB every 100 ms; 8 connect
    // and say nothing; 8 trickle their headers a byte at a time.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let phase1_start = Instant::now();
    let good = tokio::spawn(well_behaved(process.http_endpoint(), 0, stop_rx));
    let give_up = BODY_TIMEOUT + Duration::from_secs(10);
    let mut slow = Vec::new();
    for _ in 0..SLOW_CLIENTS {
        slow.push(tokio::spawn(slow_client(
            port,
            body_head(ANNOUNCED),
            0,
            &[0u8; 1024],
            Duration::from_millis(100),
            give_up,
        )));
    }
    let mut silent = Vec::new();
    for _ in 0..8 {
        silent.push(tokio::spawn(slow_client(
            port,
            String::new(),
            0,
            b"",
            Duration::from_millis(100),
            give_up,
        )));
        silent.push(tokio::spawn(slow_client(
            port,
            "POST /v1/traces HTTP/1.1\r\nHost: localhost\r\n".into(),
            0,
            b"X",
            Duration::from_millis(200),
            give_up,
        )));
    }
    let mut peak = 0;
    let (mut slow_closed, mut header_closed) = (Vec::new(), Vec::new());
    for (i, s) in slow.into_iter().enumerate() {
        let ended = s.await.unwrap();
        assert!(
            ended.closed_by_collector,
            "slow client {i}: still open after {:?}",
            ended.after
        );
        assert_eq!(ended.status, Some(408), "slow client {i}: {}", ended.text);
        assert!(
            ended.text.contains("receivers.request_body_timeout_ms"),
            "{}",
            ended.text
        );
        assert!(
            ended.after >= BODY_TIMEOUT && ended.after < BODY_TIMEOUT + Duration::from_secs(5),
            "slow client {i} closed after {:?}",
            ended.after
        );
        slow_closed.push(ended.after);
        peak = peak.max(rss(&process).0);
    }
    for (i, s) in silent.into_iter().enumerate() {
        let ended = s.await.unwrap();
        assert!(
            ended.closed_by_collector,
            "header client {i}: still open after {:?}",
            ended.after
        );
        assert!(
            ended.after < HEADER_TIMEOUT + Duration::from_secs(5),
            "header client {i} closed after {:?}",
            ended.after
        );
        header_closed.push(ended.after);
    }
    stop_tx.send(true).unwrap();
    let answers = good.await.unwrap();
    let (phase1_peak, now) = rss(&process);
    // The slow bodies were all held until the first was cut at the body timeout.
    let first_cut = phase1_start + slow_closed.iter().min().copied().unwrap_or_default();
    let answered_while_held = answers.iter().filter(|(_, at)| *at < first_cut).count();
    let span = |v: &[Duration]| {
        let min = v.iter().min().copied().unwrap_or_default();
        let max = v.iter().max().copied().unwrap_or_default();
        format!("{:.1}–{:.1} s", min.as_secs_f64(), max.as_secs_f64())
    };
    println!(
        "phase 1 (64 trickling 15 MB bodies, 16 slow headers): bodies closed after {}, \
         headers after {}; {} good answers, {} of them while every slow body was held; \
         peak RSS {} MiB, RSS now {} MiB",
        span(&slow_closed),
        span(&header_closed),
        answers.len(),
        answered_while_held,
        phase1_peak >> 20,
        now >> 20
    );
    assert!(
        answers.iter().all(|(s, _)| *s == 200),
        "the well-behaved client was not served: {answers:?}"
    );
    assert!(
        answered_while_held >= 10,
        "only {answered_while_held} answers while the slow bodies were held"
    );
    assert!(
        phase1_peak < RSS_BOUND,
        "peak RSS {} MiB",
        phase1_peak >> 20
    );
    let served = answers.len();

    // Phase 2: 64 clients push 2 MiB each at once (twice the budget in all) and
    // stall. Those the budget cannot hold are refused at once (429, after the
    // bounded wait); the rest are cut at the body timeout. The well-behaved client
    // gets an answer every time: 200, or 429 while the budget is held.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let phase2_start = Instant::now();
    let good = tokio::spawn(well_behaved(process.http_endpoint(), served, stop_rx));
    let mut stallers = Vec::new();
    for _ in 0..SLOW_CLIENTS {
        stallers.push(tokio::spawn(slow_client(
            port,
            body_head(ANNOUNCED),
            STALL_BURST,
            b"",
            Duration::from_millis(100),
            give_up,
        )));
    }
    let (mut over_budget, mut timed_out) = (0, 0);
    let mut last_cut = Duration::ZERO;
    for (i, s) in stallers.into_iter().enumerate() {
        let ended = s.await.unwrap();
        assert!(
            ended.closed_by_collector,
            "staller {i}: still open after {:?}",
            ended.after
        );
        match ended.status {
            Some(429) => {
                assert!(
                    ended.text.contains("receivers.max_inflight_request_bytes"),
                    "{}",
                    ended.text
                );
                assert!(ended.text.to_ascii_lowercase().contains("retry-after: 1"));
                assert!(ended.after < BODY_TIMEOUT, "429 after {:?}", ended.after);
                over_budget += 1;
            }
            Some(408) => {
                timed_out += 1;
                last_cut = last_cut.max(ended.after);
            }
            _ => panic!("staller {i}: {ended:?}"),
        }
        peak = peak.max(rss(&process).0);
    }
    stop_tx.send(true).unwrap();
    let answers = good.await.unwrap();
    // Once the stallers are gone, good requests are accepted again.
    let last = served + answers.len();
    let status = reqwest::Client::new()
        .post(format!("{}/v1/traces", process.http_endpoint()))
        .header("content-type", "application/x-protobuf")
        .body(good_request(last))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    let (phase2_peak, now) = rss(&process);
    println!(
        "phase 2 (64 clients pushing 2 MiB and stalling): {over_budget} refused over budget, \
         {timed_out} cut at the body timeout; well-behaved: {} answers ({} 200, {} 429); \
         peak RSS {} MiB, RSS now {} MiB",
        answers.len(),
        answers.iter().filter(|a| a.0 == 200).count(),
        answers.iter().filter(|a| a.0 == 429).count(),
        phase2_peak >> 20,
        now >> 20
    );
    assert!(
        over_budget > 0 && timed_out > 0,
        "{over_budget} {timed_out}"
    );
    assert!(
        answers.iter().all(|(s, _)| *s == 200 || *s == 429),
        "{answers:?}"
    );
    // Answered while stalled bodies held the budget, not only once they were cut.
    let stalled_until = phase2_start + last_cut;
    assert!(
        answers.iter().any(|(_, at)| *at < stalled_until),
        "no answer while the stallers held the budget: {answers:?}"
    );
    assert!(
        phase2_peak < RSS_BOUND,
        "peak RSS {} MiB",
        phase2_peak >> 20
    );
    assert!(peak <= phase2_peak);

    // Every accepted request is stored.
    let accepted = answers.iter().filter(|a| a.0 == 200).count() + served + 1;
    let client = clickhouse::Client::default()
        .with_url(clickhouse_url())
        .with_database(&database);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n: u64 = client
            .query("SELECT count() FROM otel_traces WHERE ServiceName = 'well-behaved'")
            .fetch_one()
            .await
            .unwrap_or(0);
        if n as usize >= accepted {
            assert_eq!(n as usize, accepted);
            break;
        }
        assert!(Instant::now() < deadline, "{n} of {accepted} spans stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Over gRPC: the server announces the stream limit, and a message announced as
/// 3 MiB and trickled is answered DEADLINE_EXCEEDED at the body timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_streams_are_capped_and_trickled_messages_cut() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let database = unique_database("slow_grpc");
    let sets = [
        ("clickhouse.url", clickhouse_url()),
        ("clickhouse.database", database),
        ("spool.dir", dir.path().join("spool").display().to_string()),
        (
            "receivers.request_body_timeout_ms",
            BODY_TIMEOUT.as_millis().to_string(),
        ),
        ("receivers.max_request_bytes", (4 << 20).to_string()),
        (
            "receivers.max_inflight_request_bytes",
            (8 << 20).to_string(),
        ),
        (
            "receivers.inflight_wait_ms",
            INFLIGHT_WAIT.as_millis().to_string(),
        ),
        ("receivers.max_concurrent_streams", "7".to_string()),
    ];
    let process = tokio::task::block_in_place(|| {
        CollectorProcess::spawn(env!("CARGO_BIN_EXE_collector"), &sets, &[])
    });
    let tcp = TcpStream::connect(("127.0.0.1", process.grpc_port))
        .await
        .unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();

    let export = || {
        http::Request::post(format!(
            "http://127.0.0.1:{}/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            process.grpc_port
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
    };
    // (grpc-status, grpc-message, when) of one call whose message is announced as
    // `announced` bytes, of which `sent` are sent at once, then the end of the
    // request if `end`, else nothing.
    async fn call(
        client: &mut h2::client::SendRequest<bytes::Bytes>,
        request: http::Request<()>,
        announced: u32,
        sent: usize,
        end: bool,
    ) -> (String, String, Duration, h2::SendStream<bytes::Bytes>) {
        let started = Instant::now();
        let (response, mut stream) = client.send_request(request, false).unwrap();
        let mut frame = vec![0u8];
        frame.extend_from_slice(&announced.to_be_bytes());
        frame.extend(std::iter::repeat_n(0u8, sent));
        stream.reserve_capacity(frame.len());
        stream.send_data(frame.into(), end).unwrap();
        let response = response.await.unwrap();
        let mut headers = response.headers().clone();
        let mut body = response.into_body();
        while let Some(chunk) = body.data().await {
            let _ = chunk;
        }
        if let Ok(Some(trailers)) = body.trailers().await {
            headers.extend(trailers);
        }
        let get = |k: &str| {
            headers
                .get(k)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        (
            get("grpc-status"),
            get("grpc-message"),
            started.elapsed(),
            stream,
        )
    }

    // Announced 3 MiB, 1 KiB sent, then silence: cut at the body timeout.
    let (status, message, after, _open) = call(&mut client, export(), 3 << 20, 1024, false).await;
    assert_eq!(status, "4", "{message}"); // DEADLINE_EXCEEDED
    assert!(
        message.contains("receivers.request_body_timeout_ms"),
        "{message}"
    );
    assert!(
        after >= BODY_TIMEOUT && after < BODY_TIMEOUT + Duration::from_secs(5),
        "{after:?}"
    );
    // The server's SETTINGS have long arrived: its stream limit is the configured one.
    assert_eq!(client.current_max_send_streams(), 7);

    // The shared budget is the same code on both receivers (a body paying per
    // frame: `receivers::budget`); its refusal over HTTP is checked above.
}
