//! Client spans around backend calls, so a trace shows where a request spent its time.

use std::future::Future;

use agent::{Agent, FutureExt, Span, SpanKind, Status};

/// A CLIENT span for one call to a backend (`db.system.name` = postgresql, redis, …).
pub fn backend_span(agent: &Agent, name: &'static str, system: &'static str) -> Span {
    let mut span = agent.start_span(name, SpanKind::Client);
    if span.is_recording() {
        span.set_attribute("db.system.name", system);
    }
    span
}

/// Runs `fut` inside `span` and ends it, marking it failed when `fut` fails.
pub async fn traced<T, E: std::fmt::Display>(
    mut span: Span,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let result = fut.with_context(span.context().clone()).await;
    if let Err(e) = &result {
        span.set_status(Status::Error(e.to_string().into()));
    }
    span.end();
    result
}
