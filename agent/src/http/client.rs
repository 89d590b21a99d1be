//! Outgoing reqwest calls as CLIENT spans, with the context injected into the
//! request headers so the callee continues the trace.

use std::future::Future;

use crate::span::{SpanKind, Status};
use crate::Agent;

use super::server::method_name;

/// `client.get(url).send_traced(&agent).await` instead of `.send().await`.
pub trait SendTraced {
    fn send_traced(
        self,
        agent: &Agent,
    ) -> impl Future<Output = Result<reqwest::Response, reqwest::Error>> + Send;

    /// [`SendTraced::send_traced`] with `peer.service` on the span: the logical
    /// name of the service called, which the host name alone may not tell
    /// (service maps draw the edge to it).
    fn send_traced_to(
        self,
        agent: &Agent,
        peer_service: &'static str,
    ) -> impl Future<Output = Result<reqwest::Response, reqwest::Error>> + Send;
}

fn error_type(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_request() {
        "request"
    } else {
        "_OTHER"
    }
}

impl SendTraced for reqwest::RequestBuilder {
    fn send_traced(
        self,
        agent: &Agent,
    ) -> impl Future<Output = Result<reqwest::Response, reqwest::Error>> + Send {
        send(self, agent.clone(), None)
    }

    fn send_traced_to(
        self,
        agent: &Agent,
        peer_service: &'static str,
    ) -> impl Future<Output = Result<reqwest::Response, reqwest::Error>> + Send {
        send(self, agent.clone(), Some(peer_service))
    }
}

async fn send(
    builder: reqwest::RequestBuilder,
    agent: Agent,
    peer_service: Option<&'static str>,
) -> Result<reqwest::Response, reqwest::Error> {
    let (client, request) = builder.build_split();
    let mut request = request?;
    let method = method_name(request.method());
    // Client spans are named by method alone: the URL template is unknown.
    let mut span = agent.start_span(method, SpanKind::Client);
    if span.is_recording() {
        let url = request.url();
        span.set_attribute("http.request.method", method);
        if let Some(peer) = peer_service {
            span.set_attribute("peer.service", peer);
        }
        if let Some(host) = url.host_str() {
            span.set_attribute("server.address", host.to_string());
        }
        if let Some(port) = url.port_or_known_default() {
            span.set_attribute("server.port", i64::from(port));
        }
        let mut full = url.clone();
        // Credentials never go into telemetry.
        let _ = full.set_username("");
        let _ = full.set_password(None);
        span.set_attribute("url.full", full.to_string());
    }
    agent.inject(span.context(), request.headers_mut());
    match client.execute(request).await {
        Ok(response) => {
            let code = response.status().as_u16();
            span.set_attribute("http.response.status_code", i64::from(code));
            // For a client every 4xx and 5xx is a failed call.
            if code >= 400 {
                span.set_attribute("error.type", code.to_string());
                span.set_status(Status::Error("".into()));
            }
            Ok(response)
        }
        Err(e) => {
            span.set_attribute("error.type", error_type(&e));
            span.set_status(Status::Error(e.to_string().into()));
            Err(e)
        }
    }
}
