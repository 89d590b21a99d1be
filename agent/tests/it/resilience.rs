//! Without a working collector the service keeps answering, shutdown keeps to its
//! deadline and the agent counts what it dropped.

use crate::common;

use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;

use common::{builder, serve, Captured};
use testkit::eventually;

/// A deadline far below the export timeout: returning near the former proves
/// shutdown does not wait for the latter.
const DEADLINE: Duration = Duration::from_secs(1);
const EXPORT_TIMEOUT: Duration = Duration::from_secs(120);

async fn answers(addr: std::net::SocketAddr, n: usize) -> usize {
    let client = reqwest::Client::new();
    let mut ok = 0;
    for _ in 0..n {
        let response = client.get(format!("http://{addr}/ping")).send().await;
        if response.is_ok_and(|r| r.status() == 200) {
            ok += 1;
        }
    }
    ok
}

fn app(agent: &agent::Agent) -> Router {
    Router::new()
        .route(
            "/ping",
            get(|| async {
                tracing::info!("pong");
                "pong"
            }),
        )
        .layer(agent.http_layer())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_collector_the_service_answers_and_drop_counters_rise() {
    // A port nothing listens on: every export is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let lines = Captured::default();
    let guard = builder("lonely", &endpoint)
        // Refused connections are retried with backoff within the export
        // timeout; a short one makes the failures show while we serve.
        .export_timeout(Duration::from_secs(1))
        .shutdown_deadline(DEADLINE)
        .export_interval(Duration::from_millis(20))
        .metric_export_interval(Duration::from_millis(50))
        // Small queues so a burst also overflows them.
        .queue_capacity(8, 8)
        .log_writer(lines.clone())
        .start()
        .expect("agent starts without a collector");
    let agent = guard.agent().clone();
    let addr = serve(app(&agent)).await;

    assert_eq!(answers(addr, 200).await, 200);
    // Unsent spans accumulate as failed exports while we keep serving.
    let deadline = Instant::now() + Duration::from_secs(30);
    while agent.stats().spans.export_failed == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A burst faster than the exporter drains: the queue overflows.
    for _ in 0..1000 {
        drop(agent.start_span("burst", agent::SpanKind::Internal));
    }

    let started = Instant::now();
    let result = guard.shutdown_async().await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(60),
        "shutdown took {elapsed:?}"
    );
    assert!(
        result.is_ok() || result == Err(agent::ShutdownError::DeadlineExceeded(DEADLINE)),
        "{result:?}"
    );
    let stats = agent.stats();
    assert!(stats.spans.export_failed > 0, "{stats:?}");
    assert!(stats.spans.queue_full > 0, "{stats:?}");
    assert_eq!(stats.spans.exported, 0);
    assert!(stats.metric_points.export_failed > 0, "{stats:?}");
    assert!(agent.prometheus_text().contains(&format!(
        "agent_dropped_total{{service_name=\"lonely\",signal=\"spans\",reason=\"queue_full\"}} {}",
        stats.spans.queue_full
    )));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_cannot_hold_shutdown_past_its_deadline() {
    // Accepts connections and never speaks: exports hang until their (long)
    // timeout unless shutdown cuts them.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let guard = builder("stuck", &endpoint)
        .export_timeout(EXPORT_TIMEOUT)
        .shutdown_deadline(DEADLINE)
        .log_writer(Captured::default())
        .start()
        .expect("agent starts");
    let agent = guard.agent().clone();
    let addr = serve(app(&agent)).await;
    assert_eq!(answers(addr, 50).await, 50);
    // Let the exporter get stuck in its first exports.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    let result = guard.shutdown_async().await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(60),
        "shutdown took {elapsed:?}"
    );
    assert_eq!(
        result,
        Err(agent::ShutdownError::DeadlineExceeded(DEADLINE))
    );
    // The exporter thread counts the export it cut short just after the deadline.
    let stats = eventually(Duration::from_secs(5), || async {
        let stats = agent.stats();
        (stats.spans.export_failed > 0).then_some(stats)
    })
    .await
    .unwrap_or_else(|| agent.stats());
    assert_eq!(stats.spans.exported, 0);
    assert!(stats.spans.export_failed > 0, "{stats:?}");
}
