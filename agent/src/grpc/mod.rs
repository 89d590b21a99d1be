//! gRPC over tonic: a tower layer for servers ([`Agent::grpc_server_layer`]) and
//! one for `tonic::transport::Channel` clients ([`Agent::grpc_client_layer`]).
//!
//! Each call is a span named `package.Service/Method` with `rpc.system=grpc`,
//! `rpc.service`, `rpc.method` and `rpc.grpc.status_code`. gRPC answers HTTP 200
//! and sends its status in the trailers at the end of the response stream, so
//! the span and the RED duration end there: when the trailers pass through the
//! response body, or at the headers for a trailers-only answer (an error before
//! any message). A response dropped before its status (the peer went away)
//! ends as `CANCELLED`.

mod body;
pub mod client;
pub mod server;

use std::borrow::Cow;
use std::time::Instant;

use crate::metrics::RpcSide;
use crate::span::{Span, SpanKind, Status, Str};
use crate::Agent;

pub use body::GrpcBody;
pub use client::{GrpcClientLayer, GrpcClientService};
pub use server::{GrpcServerLayer, GrpcServerService};

impl Agent {
    /// The tower layer for a tonic server:
    /// `Server::builder().layer(agent.grpc_server_layer())`. SERVER spans parented
    /// by the incoming `traceparent`, and the server side of the gRPC RED.
    pub fn grpc_server_layer(&self) -> GrpcServerLayer {
        GrpcServerLayer::new(self.clone())
    }

    /// The tower layer for a tonic client channel:
    /// `ServiceBuilder::new().layer(agent.grpc_client_layer()).service(channel)`.
    /// CLIENT spans under the current context, which is injected into the
    /// request metadata.
    pub fn grpc_client_layer(&self) -> GrpcClientLayer {
        GrpcClientLayer::new(self.clone())
    }
}

/// `CANCELLED`: the call's response went away before its status arrived.
const CANCELLED: i32 = 1;
/// `UNKNOWN`: a stream that ended without any status.
const UNKNOWN: i32 = 2;
/// `UNAVAILABLE`: the channel could not deliver the call.
const UNAVAILABLE: i32 = 14;

/// The canonical names of the gRPC status codes (`error.type`).
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "_OTHER",
    }
}

/// Whether the semantic conventions make this code an Error on this side: any
/// non-OK for a client; for a server only the codes that mean the server
/// failed (a NOT_FOUND or INVALID_ARGUMENT is the caller's doing).
pub fn is_error(side: RpcSide, code: i32) -> bool {
    match side {
        RpcSide::Client => code != 0,
        RpcSide::Server => matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
    }
}

/// `/package.Service/Method` → (`package.Service`, `Method`).
fn split_path(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

/// The status of a finished call: from `grpc-status` (and `grpc-message`) in
/// the trailers, or in the headers of a trailers-only response.
fn status_of(headers: &http::HeaderMap) -> Option<(i32, Option<String>)> {
    let code = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .filter(|m| !m.is_empty())
        .map(crate::baggage::decode_component);
    Some((code, message))
}

/// A call in flight: its span, and what its RED record needs.
struct Call {
    span: Span,
    started: Instant,
    side: RpcSide,
    service: Str,
    method: Str,
    agent: Agent,
}

impl Call {
    fn start(agent: &Agent, side: RpcSide, path: &str, parent: Option<&crate::Context>) -> Call {
        let names = &agent.shared.names;
        let (name, service, method) = match split_path(path) {
            Some((service, method)) => (
                names.get(format_args!("{service}/{method}")),
                names.get(format_args!("{service}")),
                names.get(format_args!("{method}")),
            ),
            // Not a gRPC path: still traced, under the path itself.
            None => (
                names.get(format_args!("{path}")),
                Str::Static(""),
                Str::Static(""),
            ),
        };
        let kind = match side {
            RpcSide::Server => SpanKind::Server,
            RpcSide::Client => SpanKind::Client,
        };
        let mut span = agent.start_span_with_parent(name, kind, parent);
        if span.is_recording() {
            span.set_attribute("rpc.system", "grpc");
            span.set_attribute("rpc.service", service.clone());
            span.set_attribute("rpc.method", method.clone());
        }
        let started = span.start_instant().unwrap_or_else(Instant::now);
        Call {
            span,
            started,
            side,
            service,
            method,
            agent: agent.clone(),
        }
    }

    fn finish(mut self, code: i32, message: Option<String>) {
        let end = Instant::now();
        let error = is_error(self.side, code);
        self.span
            .set_attribute("rpc.grpc.status_code", i64::from(code));
        if error {
            self.span.set_attribute("error.type", code_name(code));
            let description = message.map_or(Cow::Borrowed(""), Cow::Owned);
            self.span.set_status(Status::Error(description));
        }
        self.agent.shared.rpc.record(
            self.side,
            self.service.as_str(),
            self.method.as_str(),
            code,
            error,
            end.saturating_duration_since(self.started),
        );
        self.span.end_at(end);
    }
}

/// Ends the call exactly once: with its status, or as CANCELLED when dropped
/// before one arrived.
struct Pending(Option<Call>);

impl Pending {
    fn finish(&mut self, code: i32, message: Option<String>) {
        if let Some(call) = self.0.take() {
            call.finish(code, message);
        }
    }

    fn context(&self) -> Option<&crate::Context> {
        self.0.as_ref().map(|c| c.span.context())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.finish(CANCELLED, None);
    }
}

/// What the response future resolves into, shared by both sides.
fn on_response<B>(
    mut pending: Pending,
    response: http::Response<B>,
) -> http::Response<GrpcBody<B>> {
    // Trailers-only: the status is already here and no body follows.
    if let Some((code, message)) = status_of(response.headers()) {
        pending.finish(code, message);
    } else if response.status() != http::StatusCode::OK {
        // Not a gRPC answer at all (a proxy's 502, …): the gRPC mapping of
        // HTTP statuses says UNKNOWN for anything without a closer code.
        pending.finish(http_to_grpc(response.status()), None);
    }
    response.map(|inner| GrpcBody::new(inner, pending))
}

/// The gRPC spec's mapping of HTTP statuses to codes for non-gRPC answers.
fn http_to_grpc(status: http::StatusCode) -> i32 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => UNKNOWN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            split_path("/grpc.health.v1.Health/Check"),
            Some(("grpc.health.v1.Health", "Check"))
        );
        assert_eq!(split_path("/Health/Check/extra"), None);
        assert_eq!(split_path("/nomethod"), None);
    }

    #[test]
    fn error_codes_follow_the_semantic_conventions() {
        for code in [2, 4, 12, 13, 14, 15] {
            assert!(is_error(RpcSide::Server, code), "{code}");
        }
        for code in [0, 1, 3, 5, 6, 7, 8, 9, 10, 11, 16] {
            assert!(!is_error(RpcSide::Server, code), "{code}");
        }
        assert!(!is_error(RpcSide::Client, 0));
        assert!((1..=16).all(|c| is_error(RpcSide::Client, c)));
    }

    #[test]
    fn status_comes_from_grpc_status_and_message() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(status_of(&headers), None);
        headers.insert("grpc-status", http::HeaderValue::from_static("5"));
        headers.insert(
            "grpc-message",
            http::HeaderValue::from_static("no%20such%20service"),
        );
        assert_eq!(
            status_of(&headers),
            Some((5, Some("no such service".into())))
        );
    }
}
