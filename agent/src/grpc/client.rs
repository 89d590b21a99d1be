//! The tonic client layer: a CLIENT span per call under the current context,
//! injected into the request metadata so the server continues the trace.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use http::{Request, Response};
use tower::{Layer, Service};

use super::{on_response, Call, GrpcBody, Pending, UNAVAILABLE};
use crate::context::Context;
use crate::metrics::RpcSide;
use crate::Agent;

#[derive(Clone)]
pub struct GrpcClientLayer {
    agent: Agent,
}

impl GrpcClientLayer {
    pub fn new(agent: Agent) -> GrpcClientLayer {
        GrpcClientLayer { agent }
    }
}

impl<S> Layer<S> for GrpcClientLayer {
    type Service = GrpcClientService<S>;

    fn layer(&self, inner: S) -> GrpcClientService<S> {
        GrpcClientService {
            inner,
            agent: self.agent.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcClientService<S> {
    inner: S,
    agent: Agent,
}

impl<S, B, RB> Service<Request<B>> for GrpcClientService<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: std::fmt::Display,
{
    type Response = Response<GrpcBody<RB>>;
    type Error = S::Error;
    type Future = ClientFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let parent = Context::current();
        let mut call = Call::start(
            &self.agent,
            RpcSide::Client,
            req.uri().path(),
            parent.as_ref(),
        );
        if call.span.is_recording() {
            // A Channel adds its origin below this layer; a full URI names it here.
            if let Some(host) = req.uri().host() {
                call.span.set_attribute("server.address", host.to_string());
            }
            if let Some(port) = req.uri().port_u16() {
                call.span.set_attribute("server.port", i64::from(port));
            }
        }
        self.agent.inject(call.span.context(), req.headers_mut());
        ClientFuture {
            inner: self.inner.call(req),
            pending: Some(Pending(Some(call))),
        }
    }
}

pin_project_lite::pin_project! {
    pub struct ClientFuture<F> {
        #[pin]
        inner: F,
        pending: Option<Pending>,
    }
}

impl<F, RB, E> Future for ClientFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
    E: std::fmt::Display,
{
    type Output = Result<Response<GrpcBody<RB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        let Some(mut pending) = this.pending.take() else {
            panic!("ClientFuture polled after it completed");
        };
        Poll::Ready(match result {
            Ok(response) => Ok(on_response(pending, response)),
            // The channel could not deliver the call: tonic reports UNAVAILABLE.
            Err(e) => {
                pending.finish(UNAVAILABLE, Some(e.to_string()));
                Err(e)
            }
        })
    }
}
