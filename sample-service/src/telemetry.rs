//! CLIENT spans around backend calls, one per statement or command, so a trace
//! shows where a request spent its time.

use std::borrow::Cow;
use std::future::Future;

use agent::{Agent, Context, FutureExt, Span, SpanKind, Status};

/// A backend the shop calls (PostgreSQL, Redis): what every span of its calls
/// says about it, per the database semantic conventions.
#[derive(Clone)]
pub struct Backend {
    agent: Agent,
    /// `db.system.name`: `postgresql`, `redis`.
    system: &'static str,
    /// `db.namespace`: the database name, or Redis's database index.
    namespace: Option<String>,
    address: Option<String>,
    port: Option<u16>,
    /// SQL names the table a statement works on (`db.collection.name`); a
    /// Redis command's second word is not a collection.
    has_collections: bool,
}

impl Backend {
    pub fn postgres(agent: Agent, options: &sqlx::postgres::PgConnectOptions) -> Backend {
        Backend {
            agent,
            system: "postgresql",
            namespace: options.get_database().map(str::to_string),
            address: Some(options.get_host().to_string()),
            port: Some(options.get_port()),
            has_collections: true,
        }
    }

    pub fn redis(agent: Agent, info: &redis::ConnectionInfo) -> Backend {
        let (address, port) = match info.addr() {
            redis::ConnectionAddr::Tcp(host, port)
            | redis::ConnectionAddr::TcpTls { host, port, .. } => (Some(host.clone()), Some(*port)),
            _ => (None, None),
        };
        Backend {
            agent,
            system: "redis",
            namespace: Some(info.redis_settings().db().to_string()),
            address,
            port,
            has_collections: false,
        }
    }

    /// A CLIENT span for one call, named by its low-cardinality summary
    /// (`SELECT products`, `GET`, `EVALSHA gcra`): the first word is the
    /// operation, the second (SQL) the table. Only inside a trace: background
    /// polls outside any request (the relay looking for work) would otherwise
    /// make a one-span trace every second.
    pub fn span(&self, summary: &'static str) -> Option<Span> {
        let table = summary.split(' ').nth(1).filter(|_| self.has_collections);
        self.statement(summary, table)
    }

    /// [`Backend::span`] naming the table (or none, for a function call such
    /// as `SELECT pg_notify`) explicitly.
    pub fn statement(&self, summary: &'static str, table: Option<&'static str>) -> Option<Span> {
        Context::current()?;
        let mut span = self.agent.start_span(summary, SpanKind::Client);
        if span.is_recording() {
            let operation = summary.split(' ').next().unwrap_or(summary);
            span.set_attribute("db.system.name", self.system);
            span.set_attribute("db.operation.name", operation);
            if let Some(table) = table {
                span.set_attribute("db.collection.name", table);
            }
            span.set_attribute("db.query.summary", summary);
            if let Some(namespace) = &self.namespace {
                span.set_attribute("db.namespace", namespace.clone());
            }
            if let Some(address) = &self.address {
                span.set_attribute("server.address", address.clone());
            }
            if let Some(port) = self.port {
                span.set_attribute("server.port", i64::from(port));
            }
        }
        Some(span)
    }
}

/// What a failed call says on its span: `error.type`, and the backend's own
/// status code when it has one (`db.response.status_code`).
pub trait CallError: std::fmt::Display {
    fn error_type(&self) -> Cow<'static, str>;

    fn status_code(&self) -> Option<String> {
        None
    }
}

impl CallError for sqlx::Error {
    fn error_type(&self) -> Cow<'static, str> {
        match self {
            // The conventions use the SQLSTATE as the error type.
            sqlx::Error::Database(d) => d
                .code()
                .map_or(Cow::Borrowed("database"), |c| Cow::Owned(c.into_owned())),
            sqlx::Error::PoolTimedOut => Cow::Borrowed("pool_timeout"),
            sqlx::Error::PoolClosed => Cow::Borrowed("pool_closed"),
            sqlx::Error::Io(_) => Cow::Borrowed("io"),
            sqlx::Error::RowNotFound => Cow::Borrowed("row_not_found"),
            _ => Cow::Borrowed("_OTHER"),
        }
    }

    fn status_code(&self) -> Option<String> {
        match self {
            sqlx::Error::Database(d) => d.code().map(Cow::into_owned),
            _ => None,
        }
    }
}

impl CallError for redis::RedisError {
    fn error_type(&self) -> Cow<'static, str> {
        match self.code() {
            Some(code) => Cow::Owned(code.to_string()),
            None if self.is_timeout() => Cow::Borrowed("timeout"),
            None if self.is_io_error() => Cow::Borrowed("io"),
            None => Cow::Borrowed("_OTHER"),
        }
    }

    fn status_code(&self) -> Option<String> {
        self.code().map(str::to_string)
    }
}

/// Runs `fut` inside `span` (if any) and ends it; a failure marks it Error.
pub async fn traced<T, E: CallError>(
    span: Option<Span>,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    traced_expecting(span, fut, |_| false).await
}

/// [`traced`], where a failure `expected` says is an anticipated answer (a
/// unique violation the caller resolves) is recorded without failing the span.
pub async fn traced_expecting<T, E: CallError>(
    span: Option<Span>,
    fut: impl Future<Output = Result<T, E>>,
    expected: impl Fn(&E) -> bool,
) -> Result<T, E> {
    let Some(mut span) = span else {
        return fut.await;
    };
    let result = fut.with_context(span.context().clone()).await;
    if let Err(e) = &result {
        if let Some(code) = e.status_code() {
            span.set_attribute("db.response.status_code", code);
        }
        if !expected(e) {
            span.set_attribute("error.type", e.error_type().into_owned());
            span.set_status(Status::Error(e.to_string().into()));
        }
    }
    span.end();
    result
}
