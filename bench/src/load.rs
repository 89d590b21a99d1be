//! OTLP trace load: C clients send pre-encoded requests back to back for a fixed time
//! and count what the collector acknowledged.
//!
//! Requests are built and encoded before the clock starts, so the generator spends its
//! core on sending, not on protobuf encoding. Every request sent is distinct: the
//! collector recognises a repeated request as a client's retry and stores it once,
//! so each send copies one of a few encoded templates and writes its own request
//! number into every span id (see [`Template`]). Only acknowledged spans count (a
//! `partial_success` rejection is subtracted); refusals (RESOURCE_EXHAUSTED,
//! UNAVAILABLE, HTTP 429/503), timeouts and other errors are counted apart.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use http::uri::PathAndQuery;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use serde::{Deserialize, Serialize};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Grpc,
    Http,
}

/// The span shape sent (`testkit::synthetic::Profile`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SpanProfile {
    /// Server spans of one route, ten short attributes (~500 B of RowBinary each).
    Basic,
    /// Semantic-convention traces: HTTP server/client, database, cache and messaging
    /// spans, a Kubernetes resource, high-cardinality values (~800 B each).
    Rich,
}

impl SpanProfile {
    pub fn name(self) -> &'static str {
        match self {
            SpanProfile::Basic => "basic",
            SpanProfile::Rich => "rich",
        }
    }

    pub fn synthetic(self) -> testkit::synthetic::Profile {
        match self {
            SpanProfile::Basic => testkit::synthetic::Profile::Basic,
            SpanProfile::Rich => testkit::synthetic::Profile::Rich,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// `http://127.0.0.1:4317` (gRPC) or `http://127.0.0.1:4318` (HTTP).
    #[arg(long, default_value = "http://127.0.0.1:4317")]
    pub endpoint: String,
    #[arg(long, value_enum, default_value_t = Protocol::Grpc)]
    pub protocol: Protocol,
    /// Concurrent clients, each on its own connection.
    #[arg(long, default_value_t = 8)]
    pub clients: u32,
    /// Spans per request.
    #[arg(long, default_value_t = 512)]
    pub spans: u16,
    #[arg(long, value_enum, default_value_t = SpanProfile::Basic)]
    pub profile: SpanProfile,
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// A request not answered within this is a timeout.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Distinct requests each client cycles through.
    #[arg(long, default_value_t = 8)]
    pub distinct: u32,
    /// Pause between a client's requests (0: back to back).
    #[arg(long, default_value_t = 0)]
    pub pause_ms: u64,
}

/// What one load run measured; printed as one JSON line.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoadReport {
    pub seconds: f64,
    pub requests_acknowledged: u64,
    pub spans_acknowledged: u64,
    pub spans_per_second: f64,
    pub refused: u64,
    pub timeouts: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Acknowledge latency of accepted requests.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// How long a refusal took to arrive (fast refusals are the point of refusing).
    pub refusal_p99_ms: f64,
}

const TRACE_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

pub async fn run(args: &LoadArgs) -> anyhow::Result<LoadReport> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64;
    let mut clients = Vec::new();
    for c in 0..args.clients {
        let bodies: Vec<Template> = (0..args.distinct.max(1))
            .map(|n| {
                let body = args
                    .profile
                    .synthetic()
                    .traces_request(c, n, args.spans, now)
                    .encode_to_vec();
                Template::new(body, c, n)
            })
            .collect();
        clients.push((Client::connect(args).await?, bodies));
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.seconds);
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|(client, bodies)| {
            let args = args.clone();
            tokio::spawn(async move { client.drive(&args, &bodies, deadline).await })
        })
        .collect();
    let mut total = Tally::new();
    for t in tasks {
        total.merge(t.await?);
    }
    Ok(total.report(started.elapsed().as_secs_f64()))
}

/// An encoded request whose span ids can be renumbered: the synthetic span ids are
/// `(client, request, index)` (`testkit::synthetic::span_id`), so every occurrence of
/// the request's 6-byte `(client, request)` prefix — span ids and parent span ids —
/// is found once, and each send rewrites the request number in place: a copy and a
/// few hundred 3-byte writes, instead of building and encoding a new request.
struct Template {
    body: Vec<u8>,
    /// Offsets of the request number (3 bytes) in the body.
    request_at: Vec<usize>,
}

impl Template {
    fn new(body: Vec<u8>, client: u32, request: u32) -> Template {
        let prefix = &testkit::synthetic::span_id(client, request, 0)[..6];
        let request_at = body
            .windows(prefix.len())
            .enumerate()
            .filter(|(_, w)| *w == prefix)
            .map(|(at, _)| at + 3)
            .collect();
        Template { body, request_at }
    }

    /// The template with request number `n` (mod 2^24) in its span ids.
    fn instance(&self, n: u32) -> Bytes {
        let mut body = self.body.clone();
        let number = &n.to_be_bytes()[1..];
        for &at in &self.request_at {
            body[at..at + 3].copy_from_slice(number);
        }
        body.into()
    }
}

/// One client's counts.
struct Tally {
    requests: u64,
    spans: u64,
    refused: u64,
    timeouts: u64,
    errors: u64,
    first_error: Option<String>,
    latency_us: Histogram<u64>,
    refusal_us: Histogram<u64>,
}

impl Tally {
    fn new() -> Tally {
        let h = || Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds");
        Tally {
            requests: 0,
            spans: 0,
            refused: 0,
            timeouts: 0,
            errors: 0,
            first_error: None,
            latency_us: h(),
            refusal_us: h(),
        }
    }

    fn merge(&mut self, o: Tally) {
        self.requests += o.requests;
        self.spans += o.spans;
        self.refused += o.refused;
        self.timeouts += o.timeouts;
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
        let _ = self.latency_us.add(&o.latency_us);
        let _ = self.refusal_us.add(&o.refusal_us);
    }

    fn record(&mut self, outcome: Outcome, spans: u64, took: Duration) {
        let us = (took.as_micros() as u64).max(1);
        match outcome {
            Outcome::Acknowledged { rejected } => {
                self.requests += 1;
                self.spans += spans.saturating_sub(rejected);
                let _ = self.latency_us.record(us);
            }
            Outcome::Refused => {
                self.refused += 1;
                let _ = self.refusal_us.record(us);
            }
            Outcome::TimedOut => self.timeouts += 1,
            Outcome::Failed(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    fn report(&self, seconds: f64) -> LoadReport {
        let ms = |h: &Histogram<u64>, q: f64| {
            if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(q) as f64 / 1000.0
            }
        };
        LoadReport {
            seconds,
            requests_acknowledged: self.requests,
            spans_acknowledged: self.spans,
            spans_per_second: (self.spans as f64 / seconds).round(),
            refused: self.refused,
            timeouts: self.timeouts,
            errors: self.errors,
            first_error: self.first_error.clone(),
            p50_ms: ms(&self.latency_us, 0.5),
            p99_ms: ms(&self.latency_us, 0.99),
            max_ms: ms(&self.latency_us, 1.0),
            refusal_p99_ms: ms(&self.refusal_us, 0.99),
        }
    }
}

enum Outcome {
    Acknowledged { rejected: u64 },
    Refused,
    TimedOut,
    Failed(String),
}

enum Client {
    Grpc(tonic::client::Grpc<tonic::transport::Channel>),
    Http {
        client: reqwest::Client,
        url: String,
    },
}

impl Client {
    async fn connect(args: &LoadArgs) -> anyhow::Result<Client> {
        Ok(match args.protocol {
            Protocol::Grpc => {
                let channel = tonic::transport::Endpoint::from_shared(args.endpoint.clone())?
                    .connect()
                    .await?;
                Client::Grpc(tonic::client::Grpc::new(channel))
            }
            Protocol::Http => Client::Http {
                // One client per task keeps one kept-alive connection per task.
                client: reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .build()?,
                url: format!("{}/v1/traces", args.endpoint.trim_end_matches('/')),
            },
        })
    }

    async fn drive(mut self, args: &LoadArgs, bodies: &[Template], deadline: Instant) -> Tally {
        let mut tally = Tally::new();
        let timeout = Duration::from_millis(args.timeout_ms);
        let pause = Duration::from_millis(args.pause_ms);
        let spans = u64::from(args.spans);
        let mut n = 0usize;
        while Instant::now() < deadline {
            let body = bodies[n % bodies.len()].instance(n as u32);
            n += 1;
            let sent = Instant::now();
            let outcome = match tokio::time::timeout(timeout, self.export(body)).await {
                Ok(o) => o,
                Err(_) => Outcome::TimedOut,
            };
            tally.record(outcome, spans, sent.elapsed());
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
        tally
    }

    async fn export(&mut self, body: Bytes) -> Outcome {
        match self {
            Client::Grpc(grpc) => {
                if let Err(e) = grpc.ready().await {
                    return Outcome::Failed(format!("gRPC connection: {e}"));
                }
                let path = PathAndQuery::from_static(TRACE_EXPORT);
                match grpc.unary(tonic::Request::new(body), path, RawCodec).await {
                    Ok(r) => Outcome::Acknowledged {
                        rejected: rejected(r.get_ref()),
                    },
                    Err(s) if matches!(s.code(), Code::ResourceExhausted | Code::Unavailable) => {
                        Outcome::Refused
                    }
                    Err(s) => Outcome::Failed(format!("{:?}: {}", s.code(), s.message())),
                }
            }
            Client::Http { client, url } => {
                let sent = client
                    .post(url.as_str())
                    .header("content-type", "application/x-protobuf")
                    .body(body)
                    .send()
                    .await;
                let response = match sent {
                    Ok(r) => r,
                    Err(e) => return Outcome::Failed(format!("HTTP: {e}")),
                };
                let status = response.status().as_u16();
                let bytes = response.bytes().await.unwrap_or_default();
                match status {
                    200 => match ExportTraceServiceResponse::decode(bytes) {
                        Ok(r) => Outcome::Acknowledged {
                            rejected: rejected(&r),
                        },
                        Err(e) => Outcome::Failed(format!("response body: {e}")),
                    },
                    429 | 503 => Outcome::Refused,
                    other => Outcome::Failed(format!(
                        "HTTP {other}: {}",
                        String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                    )),
                }
            }
        }
    }
}

fn rejected(r: &ExportTraceServiceResponse) -> u64 {
    r.partial_success
        .as_ref()
        .map_or(0, |p| p.rejected_spans.max(0) as u64)
}

/// Sends already-encoded request bytes; decodes the OTLP response.
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = RawEncoder;
    type Decoder = ResponseDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder
    }
}

struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

struct ResponseDecoder;

impl Decoder for ResponseDecoder {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        let r = ExportTraceServiceResponse::decode(src.copy_to_bytes(src.remaining()))
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Some(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use testkit::synthetic::{span_id, Profile};

    fn span_ids(body: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        ExportTraceServiceRequest::decode(body)
            .expect("a valid request")
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans)
            .map(|s| (s.span_id, s.parent_span_id))
            .collect()
    }

    #[test]
    fn each_instance_carries_its_own_request_number_in_every_span_id() {
        for profile in [Profile::Basic, Profile::Rich] {
            let (client, template_number) = (2, 5);
            let body = profile
                .traces_request(client, template_number, 64, 1_700_000_000_000_000_000)
                .encode_to_vec();
            let template = Template::new(body.clone(), client, template_number);
            let original = span_ids(&body);
            for n in [0, 5, 77_777] {
                let instance = span_ids(&template.instance(n));
                assert_eq!(instance.len(), original.len());
                for ((id, parent), (original_id, original_parent)) in instance.iter().zip(&original)
                {
                    let index = u16::from_be_bytes([original_id[6], original_id[7]]);
                    assert_eq!(id[..], span_id(client, n, index)[..], "{profile:?}");
                    // Parents inside the request move with it; remote parents stay.
                    let local =
                        original_parent.starts_with(&span_id(client, template_number, 0)[..6]);
                    if local {
                        assert_eq!(parent[..6], span_id(client, n, 0)[..6], "{profile:?}");
                    } else {
                        assert_eq!(parent, original_parent, "{profile:?}");
                    }
                }
            }
        }
    }
}
