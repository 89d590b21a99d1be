//! Accepting connections for both receivers: a cap on open connections per
//! listener, and for OTLP/HTTP a hyper server with a header read timeout and an
//! HTTP/2 stream cap (`axum::serve` sets neither, and has no timer for them).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

use crate::telemetry::Metrics;

/// The connection wrappers here act on reads only; writes go straight to `io`.
macro_rules! forward_async_write {
    ($wrapper:ident) => {
        impl<IO: AsyncWrite + Unpin> AsyncWrite for $wrapper<IO> {
            fn poll_write(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.io).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.io.is_write_vectored()
            }

            fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut self.io).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<io::Result<()>> {
                Pin::new(&mut self.io).poll_shutdown(cx)
            }
        }
    };
}

/// A connection that holds one of its listener's slots until it is dropped.
pub struct Slotted<IO> {
    io: IO,
    _slot: OwnedSemaphorePermit,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Slotted<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

forward_async_write!(Slotted);

impl tonic::transport::server::Connected for Slotted<TcpStream> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// A TCP listener that keeps at most `max` connections open: past it, a new
/// connection is closed as soon as it is accepted (the client sees a reset and
/// retries) instead of waiting unseen in the kernel's backlog.
pub struct LimitedListener {
    tcp: TcpListener,
    slots: Arc<Semaphore>,
    max: usize,
    name: &'static str,
    metrics: Arc<Metrics>,
}

impl LimitedListener {
    /// `max` 0: no limit. `name` labels the log lines and the metric.
    pub fn new(
        tcp: TcpListener,
        max: usize,
        name: &'static str,
        metrics: Arc<Metrics>,
    ) -> LimitedListener {
        let max = if max == 0 {
            Semaphore::MAX_PERMITS
        } else {
            max
        };
        LimitedListener {
            tcp,
            slots: Arc::new(Semaphore::new(max)),
            max,
            name,
            metrics,
        }
    }

    /// The next connection that got a slot.
    pub async fn next(&self) -> (Slotted<TcpStream>, SocketAddr) {
        loop {
            let (stream, peer) = match self.tcp.accept().await {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, as axum does.
                    tracing::warn!(listener = self.name, error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match self.slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    let _ = stream.set_nodelay(true);
                    return (
                        Slotted {
                            io: stream,
                            _slot: slot,
                        },
                        peer,
                    );
                }
                Err(_) => {
                    self.metrics.connection_refused(self.name);
                    tracing::warn!(
                        listener = self.name,
                        %peer,
                        limit = self.max,
                        "connection closed at once: the listener holds its limit of open \
                         connections (receivers.max_connections)"
                    );
                    drop(stream);
                }
            }
        }
    }

    /// Connections for tonic's `serve_with_incoming`.
    pub fn into_stream(
        self,
    ) -> impl futures::Stream<Item = io::Result<Slotted<TcpStream>>> + Send + 'static {
        futures::stream::unfold(self, |listener| async move {
            let (conn, _) = listener.next().await;
            Some((Ok(conn), listener))
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = Slotted<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        self.next().await
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// The HTTP server's protections; see `ReceiversConfig`.
#[derive(Debug, Clone, Copy)]
pub struct HttpServerLimits {
    pub header_timeout: Duration,
    pub max_concurrent_streams: u32,
}

/// Serves `app` on every connection `listener` yields until `shutdown`, then lets
/// open connections finish (each is bounded by the header and body timeouts).
pub async fn serve_http<L>(
    mut listener: L,
    app: Router,
    limits: HttpServerLimits,
    shutdown: CancellationToken,
) where
    L: axum::serve::Listener,
    L::Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Also closes keep-alive connections idle for this long.
        .header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(limits.header_timeout);
    let graceful = GracefulShutdown::new();
    loop {
        let (io, _) = tokio::select! {
            _ = shutdown.cancelled() => break,
            conn = listener.accept() => conn,
        };
        let io = FirstBytesDeadline::new(io, limits.header_timeout);
        let service = TowerToHyperService::new(app.clone());
        let conn = builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Bytes that tell HTTP/1 from HTTP/2 (the length of the HTTP/2 preface).
const VERSION_BYTES: usize = 24;

/// Fails reads that wait past a deadline until the first bytes have arrived.
/// hyper's header timer starts only after it has told HTTP/1 from HTTP/2, which
/// waits for the client's first bytes with no timeout of its own: without this, a
/// connection that never sends anything would hold its slot forever.
struct FirstBytesDeadline<IO> {
    io: IO,
    received: usize,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<IO> FirstBytesDeadline<IO> {
    fn new(io: IO, timeout: Duration) -> FirstBytesDeadline<IO> {
        FirstBytesDeadline {
            io,
            received: 0,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for FirstBytesDeadline<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.received += buf.filled().len() - before;
                if this.received >= VERSION_BYTES {
                    this.deadline = None;
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let expired = this
                    .deadline
                    .as_mut()
                    .is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if expired {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no request within the header timeout",
                    )))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

forward_async_write!(FirstBytesDeadline);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn listener(max: usize) -> (LimitedListener, SocketAddr, Arc<Metrics>) {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let metrics = Arc::new(Metrics::default());
        (
            LimitedListener::new(tcp, max, "http", metrics.clone()),
            addr,
            metrics,
        )
    }

    #[tokio::test]
    async fn past_the_limit_connections_are_closed_until_a_slot_frees() {
        let (l, addr, metrics) = listener(1).await;
        let _first_client = TcpStream::connect(addr).await.unwrap();
        let (first, _) = l.next().await;
        let mut second = TcpStream::connect(addr).await.unwrap();
        let accepting = tokio::spawn(async move {
            let conn = l.next().await;
            (l, conn)
        });
        // The second is accepted and closed: the client reads EOF (or a reset).
        let mut buf = [0u8; 1];
        let n = second.read(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0);
        assert!(metrics
            .render()
            .contains("collector_connections_refused_total{listener=\"http\"} 1"));
        drop(first);
        let mut third = TcpStream::connect(addr).await.unwrap();
        let (_l, (mut conn, _)) = accepting.await.unwrap();
        third.write_all(b"x").await.unwrap();
        conn.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"x");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_fails_its_first_read_at_the_deadline() {
        let (a, _b) = tokio::io::duplex(64);
        let mut io = FirstBytesDeadline::new(a, Duration::from_secs(5));
        let mut buf = [0u8; 8];
        let e = io.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_first_bytes_reads_may_wait() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut io = FirstBytesDeadline::new(a, Duration::from_secs(5));
        b.write_all(&[b'P'; VERSION_BYTES]).await.unwrap();
        let mut buf = [0u8; VERSION_BYTES];
        io.read_exact(&mut buf).await.unwrap();
        let reading = tokio::spawn(async move { io.read(&mut [0u8; 1]).await.map(|_| ()) });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!reading.is_finished());
        b.write_all(b"x").await.unwrap();
        reading.await.unwrap().unwrap();
    }
}
