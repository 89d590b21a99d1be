//! Trace identity and the "current context" of the running code.
//!
//! The current context lives in a thread-local that [`WithContext`] sets around
//! every poll of the future it wraps (and [`ContextGuard`] around synchronous
//! code). That is how log events and child spans find their parent without going
//! through `tracing` span machinery, which costs about a microsecond per span.

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use crate::baggage::Baggage;

/// A 16-byte W3C trace id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte W3C span id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    pub fn is_valid(&self) -> bool {
        self.0 != [0; 16]
    }

    pub(crate) fn random() -> TraceId {
        loop {
            let id = TraceId(rand::random::<u128>().to_be_bytes());
            if id.is_valid() {
                return id;
            }
        }
    }

    /// Lowercase hex, as in `traceparent` and in the stored rows.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

impl SpanId {
    pub fn is_valid(&self) -> bool {
        self.0 != [0; 8]
    }

    pub(crate) fn random() -> SpanId {
        loop {
            let id = SpanId(rand::random::<u64>().to_be_bytes());
            if id.is_valid() {
                return id;
            }
        }
    }

    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

/// The identity of one span, as carried in `traceparent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// W3C trace flags; bit 0 is "sampled".
    pub flags: u8,
    /// True when it came from another process (extracted from headers).
    pub remote: bool,
}

impl SpanContext {
    pub fn is_sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// What propagates with a request: the span context (if any), `tracestate` and
/// baggage. Cloning is cheap (two reference counts at most).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Context {
    pub span: Option<SpanContext>,
    pub trace_state: Option<Arc<str>>,
    pub baggage: Option<Arc<Baggage>>,
}

impl Context {
    /// The context of the code running now on this thread, if any.
    pub fn current() -> Option<Context> {
        let raw = current_raw();
        // With the OpenTelemetry API bridge, a span the API made current counts too.
        #[cfg(feature = "otel-api")]
        let raw = match FOREIGN.get() {
            Some(foreign) => (foreign.context)(raw),
            None => raw,
        };
        raw
    }

    pub fn trace_id(&self) -> Option<TraceId> {
        self.span.map(|s| s.trace_id)
    }

    pub fn span_id(&self) -> Option<SpanId> {
        self.span.map(|s| s.span_id)
    }

    /// Makes this the current context until the guard drops (synchronous code).
    pub fn enter(&self) -> ContextGuard {
        let previous = CURRENT.with(|c| c.replace(Some(self.clone())));
        ContextGuard {
            previous,
            _not_send: std::marker::PhantomData,
        }
    }
}

/// How to read a current context kept outside the agent: the OpenTelemetry API
/// bridge registers it (`otel_api`), so a span the API made current counts too,
/// while `context` depends on nothing above it.
#[cfg(feature = "otel-api")]
pub(crate) struct ForeignCurrent {
    pub context: fn(Option<Context>) -> Option<Context>,
    pub span: fn(Option<SpanContext>) -> Option<SpanContext>,
}

#[cfg(feature = "otel-api")]
static FOREIGN: std::sync::OnceLock<ForeignCurrent> = std::sync::OnceLock::new();

/// Registers the foreign current context; the first registration stays.
#[cfg(feature = "otel-api")]
pub(crate) fn set_foreign_current(foreign: ForeignCurrent) {
    let _ = FOREIGN.set(foreign);
}

thread_local! {
    static CURRENT: RefCell<Option<Context>> = const { RefCell::new(None) };
}

/// Swaps the current context, returning the one it replaces: for entering and
/// leaving `tracing` spans, whose guards the subscriber does not own.
pub(crate) fn replace_current(context: Option<Context>) -> Option<Context> {
    CURRENT.with(|c| c.replace(context))
}

/// Reads only the ids, without cloning the context: the log hot path.
pub(crate) fn current_span_context() -> Option<SpanContext> {
    let raw = CURRENT.with(|c| c.borrow().as_ref().and_then(|c| c.span));
    #[cfg(feature = "otel-api")]
    let raw = match FOREIGN.get() {
        Some(foreign) => (foreign.span)(raw),
        None => raw,
    };
    raw
}

/// The agent's own current context, whatever the OpenTelemetry API has.
pub(crate) fn current_raw() -> Option<Context> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Restores the previous current context when dropped.
pub struct ContextGuard {
    previous: Option<Context>,
    // The context belongs to this thread: moving the guard elsewhere would
    // restore the wrong thread's slot.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for ContextGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

pin_project_lite::pin_project! {
    /// A future that runs with `context` as the current context on every poll.
    pub struct WithContext<F> {
        #[pin]
        inner: F,
        context: Option<Context>,
    }
}

impl<F> WithContext<F> {
    pub fn new(inner: F, context: Context) -> WithContext<F> {
        WithContext {
            inner,
            context: Some(context),
        }
    }
}

/// Puts the context back into the future when the poll ends, also on panic.
struct Swap<'a> {
    slot: &'a mut Option<Context>,
    previous: Option<Context>,
}

impl Drop for Swap<'_> {
    fn drop(&mut self) {
        let previous = self.previous.take();
        *self.slot = CURRENT.with(|c| c.replace(previous));
    }
}

impl<F: Future> Future for WithContext<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        let this = self.project();
        // Moving the context in and out of the thread-local avoids a clone per poll.
        let previous = CURRENT.with(|c| c.replace(this.context.take()));
        let _swap = Swap {
            slot: this.context,
            previous,
        };
        this.inner.poll(cx)
    }
}

/// `future.with_context(ctx)`: run a future (e.g. a spawned task) inside a context.
pub trait FutureExt: Future + Sized {
    fn with_context(self, context: Context) -> WithContext<Self> {
        WithContext::new(self, context)
    }

    /// Carries the caller's current context into the future, if there is one.
    fn with_current_context(self) -> WithContext<Self> {
        WithContext::new(self, Context::current().unwrap_or_default())
    }
}

impl<F: Future> FutureExt for F {}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(n: u8) -> Context {
        Context {
            span: Some(SpanContext {
                trace_id: TraceId([n; 16]),
                span_id: SpanId([n; 8]),
                flags: 1,
                remote: false,
            }),
            ..Context::default()
        }
    }

    #[test]
    fn guard_restores_the_outer_context() {
        let _outer = ctx(1).enter();
        {
            let _inner = ctx(2).enter();
            assert_eq!(
                current_span_context().map(|s| s.span_id),
                Some(SpanId([2; 8]))
            );
        }
        assert_eq!(
            current_span_context().map(|s| s.span_id),
            Some(SpanId([1; 8]))
        );
    }

    #[tokio::test]
    async fn with_context_is_current_only_inside_the_future() {
        let seen = async { current_span_context().map(|s| s.trace_id) }
            .with_context(ctx(7))
            .await;
        assert_eq!(seen, Some(TraceId([7; 16])));
        assert_eq!(current_span_context(), None);
    }

    #[test]
    fn ids_render_as_lowercase_hex() {
        let mut id = [0u8; 16];
        id[15] = 0xab;
        assert_eq!(TraceId(id).to_hex(), "000000000000000000000000000000ab");
    }
}
