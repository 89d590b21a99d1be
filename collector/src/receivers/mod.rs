//! Receivers: OTLP over gRPC and HTTP, into the [`Pipeline`](crate::pipeline::Pipeline).

mod decode;
mod error;
mod grpc;
mod http;
mod status;

use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use decode::Encoding;
pub use error::IngestError;

use crate::mapping::{Logs, Metrics, Traces};
use crate::pipeline::Pipeline;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ReceiversConfig {
    pub grpc_addr: String,
    pub http_addr: String,
    /// Largest request body, before and after decompression.
    pub max_request_bytes: usize,
}

impl Default for ReceiversConfig {
    fn default() -> Self {
        ReceiversConfig {
            grpc_addr: "0.0.0.0:4317".into(),
            http_addr: "0.0.0.0:4318".into(),
            max_request_bytes: 16 << 20,
        }
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
        let grpc = bind(&config.grpc_addr).await?;
        let http = bind(&config.http_addr).await?;
        let grpc_addr = grpc.local_addr()?;
        let http_addr = http.local_addr()?;
        let max = config.max_request_bytes;

        let grpc_server = tonic::transport::Server::builder()
            .add_service(grpc::ExportService::<Traces>::new(pipeline.clone(), max))
            .add_service(grpc::ExportService::<Logs>::new(pipeline.clone(), max))
            .add_service(grpc::ExportService::<Metrics>::new(pipeline.clone(), max));
        let stop = shutdown.clone();
        let grpc_task = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc);
            if let Err(e) = grpc_server
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "gRPC receiver stopped");
            }
        });

        let app = http::router(pipeline, max);
        let http_task = tokio::spawn(async move {
            if let Err(e) = axum::serve(http, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "HTTP receiver stopped");
            }
        });
        tracing::info!(%grpc_addr, %http_addr, "OTLP receivers listening");
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
