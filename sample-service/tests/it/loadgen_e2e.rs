//! The load generator against the real shop on the real backends, bounded by count.

use crate::common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bounded_load_run_gets_answers_from_every_route() {
    let env = Env::new("loadgen").await;
    let mut config = env.config();
    // The real rate limit, so the bursts meet it.
    config.rate_limit_per_second = 50.0;
    config.rate_limit_burst = 100;
    config.max_attempts = 2;
    config.retry_base = std::time::Duration::from_millis(100);
    let shop = RunningShop::start(config, None).await;
    let report = run_loadgen(&shop.base, 800, 7).await;
    let total = &report["total"];
    assert_eq!(total["requests"], 800, "{report:#}");
    assert_eq!(total["outcomes"]["server_error"], 0, "no 5xx: {report:#}");
    assert_eq!(total["outcomes"]["transport_error"], 0, "{report:#}");
    assert_eq!(total["outcomes"]["unexpected_status"], 0, "{report:#}");
    let routes: Vec<&str> = report["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["route"].as_str().unwrap())
        .collect();
    for route in [
        "GET /categories",
        "GET /products/{id}",
        "POST /orders",
        "GET /orders/{id}",
        "GET /orders/{id}/summary",
    ] {
        assert!(routes.contains(&route), "{route} in {routes:?}");
    }
    // Every replay the load generator saw is one the shop counted, and the other way
    // round (no transport errors, so no answer was lost in between).
    let agent = shop.agent.agent().clone();
    let replays = ["replayed", "backstop_replayed"]
        .iter()
        .map(|o| {
            counter(
                &agent,
                "shop.idempotency.requests",
                &[("idempotency.outcome", o)],
            )
        })
        .sum::<u64>();
    assert!(replays > 0, "duplicate orders were replayed");
    assert_eq!(total["replayed"].as_u64(), Some(replays), "{report:#}");
    shop.stop().await;
    env.cleanup().await;
}
