//! Receivers: OTLP over gRPC and HTTP, into the [`Pipeline`](crate::pipeline::Pipeline).

pub(crate) mod auth;
mod budget;
mod grpc;
mod http;
mod ingest;
mod rate_limit;
mod serve;
mod status;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::mapping::limits::Limits;
use crate::mapping::{Logs, Metrics, Traces};

use crate::pipeline::Pipeline;
use auth::Auth;
use budget::RequestBudget;
use ingest::Ingest;
use rate_limit::RateLimiter;
use serve::{serve_http, HttpServerLimits, LimitedListener};
use tls::TlsFiles;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ReceiversConfig {
    pub grpc_addr: String,
    pub http_addr: String,
    /// Largest request body, before and after decompression.
    pub max_request_bytes: usize,
    /// Spans, log records or data points in one request; more is refused whole
    /// (413 / RESOURCE_EXHAUSTED). 0: no limit.
    pub max_items_per_request: u64,
    /// Attributes kept per list (an item's, resource's, scope's, event's, link's, and
    /// the entries of a kvlist or array); the rest are dropped and reported. 0: no limit.
    pub max_attributes_per_item: usize,
    /// Strings and bytes values (and keys) are cut to this many bytes, at a UTF-8
    /// boundary, and reported. 0: no limit.
    pub max_attribute_value_bytes: usize,
    /// Levels of nested kvlists/arrays kept in a value; deeper ones become a marker
    /// string. 0: no limit (the decoders still stop at their recursion limits).
    pub max_attribute_depth: usize,
    /// Items per second per token (one bucket for all when auth is off); over it,
    /// 429 with Retry-After / RESOURCE_EXHAUSTED. 0: off.
    pub rate_limit_items_per_second: u64,
    /// Items a token may send at once; 0: one second's worth.
    pub rate_limit_burst: u64,
    /// Bearer tokens, one per line, `#` comments. Empty: no authentication.
    pub auth_tokens_file: String,
    /// PEM certificate chain and private key; both set: TLS on both receivers.
    pub tls_cert_file: String,
    pub tls_key_file: String,
    /// Request bytes held at once by both receivers together: bodies as they
    /// arrive, plus what gzip inflates them to, until the answer is ready. Must be
    /// at least twice `max_request_bytes` (a largest gzipped request). 0: no limit.
    pub max_inflight_request_bytes: usize,
    /// How long a request waits for room in that budget, in all, before it is refused
    /// (429 / RESOURCE_EXHAUSTED with a retry delay).
    pub inflight_wait_ms: u64,
    /// OTLP/HTTP: time to send the request line and headers (and for a keep-alive
    /// connection, to start its next request) before the connection is closed.
    pub header_timeout_ms: u64,
    /// Time to send a whole request body, from its headers on (both receivers);
    /// past it the request is refused with 408 / DEADLINE_EXCEEDED, and an HTTP/1
    /// connection is closed.
    pub request_body_timeout_ms: u64,
    /// Open connections per listener (gRPC and HTTP each); a connection past it
    /// is closed as soon as it is accepted. 0: no limit.
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams (requests) per connection, on both listeners.
    pub max_concurrent_streams: u32,
    /// The window of item times accepted around now (see `mapping::time_window`).
    pub timestamps: crate::mapping::TimestampWindow,
}

impl Default for ReceiversConfig {
    fn default() -> Self {
        ReceiversConfig {
            grpc_addr: "0.0.0.0:4317".into(),
            http_addr: "0.0.0.0:4318".into(),
            max_request_bytes: 16 << 20,
            max_items_per_request: 100_000,
            max_attributes_per_item: 256,
            max_attribute_value_bytes: 64 << 10,
            max_attribute_depth: 8,
            rate_limit_items_per_second: 0,
            rate_limit_burst: 0,
            auth_tokens_file: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            max_inflight_request_bytes: 128 << 20,
            inflight_wait_ms: 1000,
            header_timeout_ms: 30_000,
            request_body_timeout_ms: 30_000,
            max_connections: 1024,
            max_concurrent_streams: 100,
            timestamps: Default::default(),
        }
    }
}

impl ReceiversConfig {
    /// Settings that cannot work together, found before anything listens.
    pub fn check(&self) -> Result<(), String> {
        let budget = self.max_inflight_request_bytes;
        if budget != 0 && budget < self.max_request_bytes.saturating_mul(2) {
            return Err(format!(
                "receivers.max_inflight_request_bytes ({budget}) must be 0 or at least twice \
                 receivers.max_request_bytes ({}): a largest gzipped request holds its body \
                 and what it inflates to",
                self.max_request_bytes
            ));
        }
        for (key, ms) in [
            ("header_timeout_ms", self.header_timeout_ms),
            ("request_body_timeout_ms", self.request_body_timeout_ms),
        ] {
            if ms == 0 {
                return Err(format!("receivers.{key} must be more than 0"));
            }
        }
        if self.max_concurrent_streams == 0 {
            return Err("receivers.max_concurrent_streams must be more than 0".into());
        }
        Ok(())
    }

    fn budget(&self) -> RequestBudget {
        let total = match self.max_inflight_request_bytes {
            0 => usize::MAX,
            n => n,
        };
        RequestBudget::new(total, Duration::from_millis(self.inflight_wait_ms))
    }

    /// The attribute and item limits the mapping applies (0: no limit).
    pub fn limits(&self) -> Limits {
        Limits::new(
            self.max_items_per_request,
            self.max_attributes_per_item,
            self.max_attribute_value_bytes,
            self.max_attribute_depth,
            self.timestamps,
        )
    }
}

/// Both receivers, bound and serving.
pub struct Receivers {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Receivers {
    /// Binds both ports first, so start-up fails at once on a taken port.
    pub async fn start(
        config: &ReceiversConfig,
        pipeline: Arc<Pipeline>,
        shutdown: CancellationToken,
    ) -> std::io::Result<Receivers> {
        tls::install_crypto_provider();
        config.check().map_err(std::io::Error::other)?;
        let metrics = pipeline.metrics_arc();
        let ingest = Arc::new(ingest(config, pipeline)?);
        let tls = TlsFiles::load(&config.tls_cert_file, &config.tls_key_file)
            .map_err(std::io::Error::other)?;
        let grpc = bind(&config.grpc_addr).await?;
        let http = bind(&config.http_addr).await?;
        let grpc_addr = grpc.local_addr()?;
        let http_addr = http.local_addr()?;
        let grpc = LimitedListener::new(grpc, config.max_connections, "grpc", metrics.clone());
        let http = LimitedListener::new(http, config.max_connections, "http", metrics);

        // Everything that can fail is done before the first server task starts.
        let http_acceptor = tls
            .as_ref()
            .map(TlsFiles::http_acceptor)
            .transpose()
            .map_err(std::io::Error::other)?;
        let header_timeout = Duration::from_millis(config.header_timeout_ms);
        // OTLP requests are hundreds of KiB: with HTTP/2's default 64 KiB windows each
        // one waits for window updates, round trips that cap a client's throughput.
        // The windows also bound what a connection can push before its bytes are
        // read (and paid for in the request budget).
        let mut builder = tonic::transport::Server::builder()
            .initial_stream_window_size(Some(4 << 20))
            .initial_connection_window_size(Some(16 << 20))
            .max_concurrent_streams(Some(config.max_concurrent_streams))
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(header_timeout));
        if let Some(files) = &tls {
            builder = builder
                .tls_config(files.grpc_config())
                .map_err(std::io::Error::other)?;
        }
        let grpc_server = builder
            .add_service(grpc::ExportService::<Traces>::new(ingest.clone()))
            .add_service(grpc::ExportService::<Logs>::new(ingest.clone()))
            .add_service(grpc::ExportService::<Metrics>::new(ingest.clone()));
        let stop = shutdown.clone();
        let grpc_task = tokio::spawn(async move {
            if let Err(e) = grpc_server
                .serve_with_incoming_shutdown(grpc.into_stream(), stop.cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "gRPC receiver stopped");
            }
        });

        let app = http::router(ingest);
        let limits = HttpServerLimits {
            header_timeout,
            max_concurrent_streams: config.max_concurrent_streams,
        };
        let http_task = match http_acceptor {
            None => tokio::spawn(serve_http(http, app, limits, shutdown)),
            Some(acceptor) => {
                let listener = tls::TlsListener::new(http, acceptor, shutdown.clone())?;
                tokio::spawn(serve_http(listener, app, limits, shutdown))
            }
        };
        tracing::info!(
            %grpc_addr,
            %http_addr,
            tls = tls.is_some(),
            auth = !config.auth_tokens_file.is_empty(),
            "OTLP receivers listening"
        );
        Ok(Receivers {
            grpc_addr,
            http_addr,
            tasks: vec![grpc_task, http_task],
        })
    }

    /// Waits until both servers have stopped (after the shutdown token fired).
    pub async fn stopped(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// The shared gate of both receivers, from the config (reads the tokens file).
fn ingest(config: &ReceiversConfig, pipeline: Arc<Pipeline>) -> std::io::Result<Ingest> {
    let auth = match config.auth_tokens_file.as_str() {
        "" => None,
        path => Some(Auth::load(std::path::Path::new(path)).map_err(std::io::Error::other)?),
    };
    let rate = (config.rate_limit_items_per_second > 0)
        .then(|| RateLimiter::new(config.rate_limit_items_per_second, config.rate_limit_burst));
    Ok(Ingest::new(
        pipeline,
        auth,
        rate,
        config.limits(),
        config.max_request_bytes,
        Arc::new(config.budget()),
        Duration::from_millis(config.request_body_timeout_ms),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_in_the_config_is_no_limit() {
        let c = ReceiversConfig {
            max_items_per_request: 0,
            max_attributes_per_item: 0,
            ..ReceiversConfig::default()
        };
        let l = c.limits();
        assert_eq!(l.max_items, u64::MAX);
        assert_eq!(l.max_attributes, usize::MAX);
        assert_eq!(l.max_depth, 8);
    }
}
