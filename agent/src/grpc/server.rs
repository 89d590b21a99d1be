//! The tonic server layer: a SERVER span per call, parented by the incoming
//! `traceparent` in the request metadata, current while the handler runs.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use http::{Request, Response};
use tower::{Layer, Service};

use super::{on_response, Call, GrpcBody, Pending, UNKNOWN};
use crate::context::WithContext;
use crate::metrics::RpcSide;
use crate::Agent;

#[derive(Clone)]
pub struct GrpcServerLayer {
    agent: Agent,
}

impl GrpcServerLayer {
    pub fn new(agent: Agent) -> GrpcServerLayer {
        GrpcServerLayer { agent }
    }
}

impl<S> Layer<S> for GrpcServerLayer {
    type Service = GrpcServerService<S>;

    fn layer(&self, inner: S) -> GrpcServerService<S> {
        GrpcServerService {
            inner,
            agent: self.agent.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcServerService<S> {
    inner: S,
    agent: Agent,
}

impl<S, B, RB> Service<Request<B>> for GrpcServerService<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<GrpcBody<RB>>;
    type Error = S::Error;
    type Future = ServerFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let parent = self.agent.extract(req.headers());
        let mut call = Call::start(
            &self.agent,
            RpcSide::Server,
            req.uri().path(),
            parent.as_ref(),
        );
        if call.span.is_recording() {
            server_attributes(&mut call.span, &req);
        }
        let context = call.span.context().clone();
        ServerFuture {
            inner: WithContext::new(self.inner.call(req), context),
            pending: Some(Pending(Some(call))),
        }
    }
}

fn server_attributes<B>(span: &mut crate::Span, req: &Request<B>) {
    let authority = req.uri().authority().map(|a| a.as_str()).or_else(|| {
        req.headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    });
    if let Some(authority) = authority {
        if let Ok(authority) = authority.parse::<http::uri::Authority>() {
            span.set_attribute("server.address", authority.host().to_string());
            if let Some(port) = authority.port_u16() {
                span.set_attribute("server.port", i64::from(port));
            }
        }
    }
    if let Some(addr) = req
        .extensions()
        .get::<tonic::transport::server::TcpConnectInfo>()
        .and_then(|info| info.remote_addr())
    {
        span.set_attribute("client.address", addr.ip().to_string());
        span.set_attribute("network.peer.address", addr.ip().to_string());
        span.set_attribute("network.peer.port", i64::from(addr.port()));
    }
}

pin_project_lite::pin_project! {
    pub struct ServerFuture<F> {
        #[pin]
        inner: WithContext<F>,
        pending: Option<Pending>,
    }
}

impl<F, RB, E> Future for ServerFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<GrpcBody<RB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        let Some(mut pending) = this.pending.take() else {
            // Polled after completion: tower services must not be.
            panic!("ServerFuture polled after it completed");
        };
        Poll::Ready(match result {
            Ok(response) => Ok(on_response(pending, response)),
            Err(e) => {
                pending.finish(UNKNOWN, Some(std::any::type_name::<E>().to_string()));
                Err(e)
            }
        })
    }
}
