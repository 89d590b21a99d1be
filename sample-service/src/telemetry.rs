//! Client spans around backend calls, so a trace shows where a request spent its time.

use std::future::Future;

use agent::{Agent, Context, FutureExt, Span, SpanKind, Status};

/// A CLIENT span for one call to a backend (`db.system.name` = postgresql, redis, …),
/// when the call is part of a trace. Background polls outside any request (the
/// relay looking for work) would otherwise make a one-span trace every second.
pub fn backend_span(agent: &Agent, name: &'static str, system: &'static str) -> Option<Span> {
    Context::current()?;
    let mut span = agent.start_span(name, SpanKind::Client);
    if span.is_recording() {
        span.set_attribute("db.system.name", system);
    }
    Some(span)
}

/// Runs `fut` inside `span` (if any) and ends it, marking it failed when `fut` fails.
pub async fn traced<T, E: std::fmt::Display>(
    span: Option<Span>,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let Some(mut span) = span else {
        return fut.await;
    };
    let result = fut.with_context(span.context().clone()).await;
    if let Err(e) = &result {
        span.set_status(Status::Error(e.to_string().into()));
    }
    span.end();
    result
}
