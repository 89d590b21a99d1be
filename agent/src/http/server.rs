//! A tower layer for axum: one SERVER span per request named `{method} {route}`
//! with the stable HTTP semantic-convention attributes, parented by the incoming
//! W3C context, plus a RED record.
//!
//! Add it with `Router::layer` so the matched route template (`MatchedPath`) is
//! known when the request reaches it.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath};
use http::{Request, Response};
use tower::{Layer, Service};

use crate::agent::Agent;
use crate::context::{replace_current, WithContext};
use crate::metrics::RequestAttributes;
use crate::span::{Span, SpanKind, Status, Str};

impl Agent {
    /// The tower layer instrumenting an axum router.
    pub fn http_layer(&self) -> HttpLayer {
        HttpLayer::new(self.clone())
    }
}

#[derive(Clone)]
pub struct HttpLayer {
    agent: Agent,
}

impl HttpLayer {
    pub fn new(agent: Agent) -> HttpLayer {
        HttpLayer { agent }
    }
}

impl<S> Layer<S> for HttpLayer {
    type Service = HttpService<S>;

    fn layer(&self, inner: S) -> HttpService<S> {
        HttpService {
            inner,
            agent: self.agent.clone(),
        }
    }
}

#[derive(Clone)]
pub struct HttpService<S> {
    inner: S,
    agent: Agent,
}

/// Known methods keep their name; anything else is `_OTHER`, as the
/// conventions ask (it also bounds the metric series).
pub(crate) fn method_name(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::CONNECT => "CONNECT",
        http::Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

fn split_host_port(authority: &str) -> (&str, Option<i64>) {
    // "[::1]:8080", "example.com:80", "example.com"
    if let Some(rest) = authority.strip_prefix('[') {
        if let Some((host, port)) = rest.split_once(']') {
            return (host, port.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, port.parse().ok()),
        _ => (authority, None),
    }
}

fn protocol_version(version: http::Version) -> Option<&'static str> {
    match version {
        http::Version::HTTP_09 => Some("0.9"),
        http::Version::HTTP_10 => Some("1.0"),
        http::Version::HTTP_11 => Some("1.1"),
        http::Version::HTTP_2 => Some("2"),
        http::Version::HTTP_3 => Some("3"),
        _ => None,
    }
}

fn request_attributes<B>(span: &mut Span, req: &Request<B>, method: &'static str) {
    let uri = req.uri();
    span.push_attribute("http.request.method", method);
    if method == "_OTHER" {
        span.push_attribute(
            "http.request.method_original",
            req.method().as_str().to_string(),
        );
    }
    span.push_attribute("url.path", uri.path().to_string());
    if let Some(query) = uri.query() {
        span.push_attribute("url.query", query.to_string());
    }
    let scheme = match uri.scheme_str() {
        None | Some("http") => Str::Static("http"),
        Some("https") => Str::Static("https"),
        Some(other) => Str::Owned(other.to_string()),
    };
    span.push_attribute("url.scheme", scheme);
    let authority = uri.authority().map(|a| a.as_str()).or_else(|| {
        req.headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    });
    if let Some(authority) = authority {
        let (host, port) = split_host_port(authority);
        span.push_attribute("server.address", host.to_string());
        if let Some(port) = port {
            span.push_attribute("server.port", port);
        }
    }
    // The original client when a proxy says so, else the peer.
    let forwarded = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|h| h.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|v| v.trim().to_string());
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    if let Some(client) = forwarded.or_else(|| peer.map(|p| p.ip().to_string())) {
        span.push_attribute("client.address", client);
    }
    if let Some(peer) = peer {
        span.push_attribute("network.peer.address", peer.ip().to_string());
        span.push_attribute("network.peer.port", i64::from(peer.port()));
    }
    if let Some(agent) = req
        .headers()
        .get(http::header::USER_AGENT)
        .and_then(|h| h.to_str().ok())
    {
        span.push_attribute("user_agent.original", agent.to_string());
    }
    if let Some(v) = protocol_version(req.version()) {
        span.push_attribute("network.protocol.version", v);
    }
}

impl<S, B, RB> Service<Request<B>> for HttpService<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let started = Instant::now();
        let method = method_name(req.method());
        let scheme = match req.uri().scheme_str() {
            Some("https") => "https",
            _ => "http",
        };
        let protocol_version = protocol_version(req.version()).unwrap_or("_OTHER");
        let route = req.extensions().get::<MatchedPath>().cloned();
        let parent = self.agent.extract(req.headers());
        let names = &self.agent.shared.names;
        let name = match &route {
            Some(r) => names.get(format_args!("{method} {}", r.as_str())),
            None => Str::Static(method),
        };
        let mut span = self
            .agent
            .start_span_with_parent(name, SpanKind::Server, parent.as_ref());
        if span.is_recording() {
            request_attributes(&mut span, &req, method);
            if let Some(r) = &route {
                span.push_attribute("http.route", names.get(format_args!("{}", r.as_str())));
            }
        }
        // RED and the span time the very same interval.
        let started = span.start_instant().unwrap_or(started);
        // Inner layers may start spans in `call` itself (tower-http's
        // TraceLayer does): the request's context is current there too.
        let previous = replace_current(Some(span.context().clone()));
        let inner = self.inner.call(req);
        let context = replace_current(previous).unwrap_or_default();
        ResponseFuture {
            inner: WithContext::new(inner, context),
            state: Armed(Some(Pending {
                span,
                started,
                method,
                scheme,
                protocol_version,
                route,
                agent: self.agent.clone(),
            })),
        }
    }
}

struct Pending {
    span: Span,
    started: Instant,
    method: &'static str,
    /// `url.scheme` and `network.protocol.version` for RED.
    scheme: &'static str,
    protocol_version: &'static str,
    route: Option<MatchedPath>,
    agent: Agent,
}

/// How a request ended.
enum Outcome<'a> {
    Response(u16),
    /// The inner service returned an error (no response).
    Failed(&'static str),
    /// The handler panicked; the panic goes on after the span ends.
    Panicked(&'a (dyn std::any::Any + Send)),
    /// The future was dropped unfinished: the client went away, or a timeout
    /// outside this layer gave up.
    Cancelled,
}

/// Status recorded in RED for a request dropped before it answered, as
/// proxies log it ("client closed request"): it counts, in the 4xx class.
const CANCELLED_STATUS: u16 = 499;

impl Pending {
    fn finish(mut self, outcome: Outcome<'_>) {
        let end = Instant::now();
        let elapsed = end.saturating_duration_since(self.started);
        // RED's `error.type` when no response came (for a 5xx it is the code).
        let red_error_type = match &outcome {
            Outcome::Response(_) => None,
            Outcome::Failed(type_name) => Some(*type_name),
            Outcome::Panicked(_) => Some("panic"),
            Outcome::Cancelled => Some("cancelled"),
        };
        let (status, error_type) = match outcome {
            Outcome::Response(code) => {
                self.span
                    .push_attribute("http.response.status_code", i64::from(code));
                // Only 5xx is a server-side error; 4xx is the client's.
                (code, (code >= 500).then(|| Str::Owned(code.to_string())))
            }
            Outcome::Failed(type_name) => (500, Some(Str::Static(type_name))),
            Outcome::Panicked(payload) => {
                let message = panic_message(payload);
                self.span.add_event(
                    "exception",
                    vec![
                        ("exception.type".into(), "panic".into()),
                        ("exception.message".into(), message.into()),
                    ],
                );
                (500, Some(Str::Static("panic")))
            }
            Outcome::Cancelled => (CANCELLED_STATUS, Some(Str::Static("cancelled"))),
        };
        if let Some(error_type) = error_type {
            self.span.push_attribute("error.type", error_type);
            self.span
                .set_status(Status::Error(std::borrow::Cow::Borrowed("")));
        }
        let route = self.route.as_ref().map_or("", |r| r.as_str());
        // Only a span that is exported can back an exemplar.
        let sampled = self
            .span
            .is_recording()
            .then(|| (self.span.trace_id(), self.span.span_id()));
        self.agent.shared.red.record(
            &RequestAttributes {
                method: self.method,
                route,
                status_code: status,
                error_type: red_error_type,
                scheme: self.scheme,
                protocol_version: self.protocol_version,
            },
            elapsed,
            sampled,
        );
        self.span.end_at(end);
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_string()
    }
}

/// The request's span and RED record until the response is ready; dropped
/// before that (request cancelled), it still ends them.
struct Armed(Option<Pending>);

impl Drop for Armed {
    fn drop(&mut self) {
        if let Some(pending) = self.0.take() {
            pending.finish(Outcome::Cancelled);
        }
    }
}

pin_project_lite::pin_project! {
    pub struct ResponseFuture<F> {
        #[pin]
        inner: WithContext<F>,
        state: Armed,
    }
}

impl<F, RB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // Catching costs nothing unless a panic happens; the panic is resumed
        // once the span says what happened.
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            this.inner.as_mut().poll(cx)
        }));
        let result = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(result)) => result,
            Err(payload) => {
                if let Some(pending) = this.state.0.take() {
                    pending.finish(Outcome::Panicked(&*payload));
                }
                std::panic::resume_unwind(payload);
            }
        };
        if let Some(pending) = this.state.0.take() {
            match &result {
                Ok(response) => pending.finish(Outcome::Response(response.status().as_u16())),
                Err(_) => pending.finish(Outcome::Failed(std::any::type_name::<E>())),
            }
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_are_split() {
        assert_eq!(
            split_host_port("example.com:8080"),
            ("example.com", Some(8080))
        );
        assert_eq!(split_host_port("example.com"), ("example.com", None));
        assert_eq!(split_host_port("[::1]:3000"), ("::1", Some(3000)));
    }

    #[test]
    fn unknown_methods_become_other() {
        let m = http::Method::from_bytes(b"PURGE").expect("method");
        assert_eq!(method_name(&m), "_OTHER");
        assert_eq!(method_name(&http::Method::GET), "GET");
    }
}
