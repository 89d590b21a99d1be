//! The response body of a traced call: passes every frame through and ends the
//! call when the trailers (the gRPC status) go by.

use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use http_body::{Body, Frame, SizeHint};

use super::{status_of, Pending, UNKNOWN};

pin_project_lite::pin_project! {
    /// A tonic response body whose trailers end the call's span.
    pub struct GrpcBody<B> {
        #[pin]
        inner: B,
        pending: Pending,
    }
}

impl<B> GrpcBody<B> {
    pub(super) fn new(inner: B, pending: Pending) -> GrpcBody<B> {
        GrpcBody { inner, pending }
    }
}

impl<B: Body> Body for GrpcBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        // A streaming handler produces its messages while the body is polled:
        // spans it starts there belong under the call.
        let polled = {
            let _current = this.pending.context().map(|c| c.enter());
            this.inner.poll_frame(cx)
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    match status_of(trailers) {
                        Some((code, message)) => this.pending.finish(code, message),
                        None => this.pending.finish(UNKNOWN, None),
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => this
                .pending
                .finish(UNKNOWN, Some("the response stream failed".into())),
            // The stream ended without trailers (so without a status).
            Poll::Ready(None) => this.pending.finish(UNKNOWN, None),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
