//! Cache-aside with stampede protection, negative caching and invalidation, with
//! the reads counted by PostgreSQL itself.

use crate::common;

use std::time::Duration;

use common::*;
use futures::future::join_all;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stampede_on_a_cold_product_reads_the_database_once() {
    let env = Env::new("stampede").await;
    let baseline = product_reads_seen_by_postgres(&env, 0).await;
    let shop = RunningShop::start(env.config(), None).await;
    let client = client();
    // Open the 500 connections first, so the requests below arrive together.
    join_all((0..500).map(|_| client.get(format!("{}/health/live", shop.base)).send())).await;

    let requests = (0..500).map(|_| {
        let req = client.get(format!("{}/products/42", shop.base));
        async move {
            let r = req.send().await.expect("request sent");
            (r.status().as_u16(), r.text().await.unwrap())
        }
    });
    let answers = join_all(requests).await;
    assert!(answers.iter().all(|(s, _)| *s == 200), "all 200");
    assert!(
        answers.windows(2).all(|w| w[0].1 == w[1].1),
        "all the same product"
    );
    assert!(answers[0].1.contains("\"id\":42"));

    let agent = shop.agent.agent().clone();
    let coalesced = counter(&agent, "shop.cache.coalesced", &[("cache.layer", "memory")]);
    let memory = |result| {
        counter(
            &agent,
            "shop.cache.requests",
            &[("cache.layer", "memory"), ("cache.result", result)],
        )
    };
    let (hits, misses) = (memory("hit"), memory("miss"));
    let app_reads = counter(&agent, "shop.db.reads", &[("entity", "product")]);
    shop.stop().await;
    let reads = product_reads_seen_by_postgres(&env, baseline + 1).await - baseline;
    eprintln!(
        "500 concurrent cold requests: {reads} database read(s) counted by PostgreSQL, {app_reads} by the shop; \
         in-process: {misses} misses of which {coalesced} waited for the one load, {hits} hits after it"
    );
    assert_eq!(reads, 1);
    assert_eq!(app_reads, 1);
    assert_eq!(hits + misses, 500);
    assert_eq!(
        coalesced,
        misses - 1,
        "every miss but the loader's waited for it"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_products_are_cached_briefly_and_writes_invalidate() {
    let env = Env::new("negative").await;
    let mut config = env.config();
    config.negative_ttl = Duration::from_millis(1500);
    let baseline = product_reads_seen_by_postgres(&env, 0).await;

    // Twenty misses for a product that does not exist: one read.
    let shop = RunningShop::start(config.clone(), None).await;
    let client = client();
    for _ in 0..20 {
        let r = client
            .get(format!("{}/products/100000", shop.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        assert_eq!(r.headers()["content-type"], "application/problem+json");
    }
    // Invalid ids never reach a cache layer or the database.
    for bad in ["abc", "0", "-4", "99999999999999999999"] {
        let r = client
            .get(format!("{}/products/{bad}", shop.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
    shop.stop().await;
    assert_eq!(
        product_reads_seen_by_postgres(&env, baseline + 1).await,
        baseline + 1
    );

    // Once the negative entry expired (TTL + 10 % jitter), the next miss reads the
    // database again — counted by PostgreSQL, not just answered 404.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let shop = RunningShop::start(config.clone(), None).await;
    let r = client
        .get(format!("{}/products/100000", shop.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    shop.stop().await;
    assert_eq!(
        product_reads_seen_by_postgres(&env, baseline + 2).await,
        baseline + 2,
        "the expired negative entry was not served: one more read"
    );

    let shop = RunningShop::start(config, None).await;
    writes_invalidate(&client, &shop.base, 5).await;
    shop.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_mode_caches_misses_coalesces_and_invalidates() {
    let env = Env::embedded("negative");
    let mut config = env.config();
    config.negative_ttl = Duration::from_millis(1500);
    let shop = RunningShop::start(config, None).await;
    let agent = shop.agent.agent().clone();
    let reads = || counter(&agent, "shop.db.reads", &[("entity", "product")]);
    let client = client();
    join_all((0..500).map(|_| client.get(format!("{}/health/live", shop.base)).send())).await;

    // A stampede on a cold product: one read of the store.
    let answers =
        join_all((0..500).map(|_| client.get(format!("{}/products/42", shop.base)).send())).await;
    assert!(answers.iter().all(|r| r.as_ref().unwrap().status() == 200));
    assert_eq!(reads(), 1);

    // Misses are cached until the negative entry expires.
    for _ in 0..20 {
        let r = client
            .get(format!("{}/products/100000", shop.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }
    assert_eq!(reads(), 2);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(
        client
            .get(format!("{}/products/100000", shop.base))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(reads(), 3);

    writes_invalidate(&client, &shop.base, 42).await;
    shop.stop().await;
}

/// An update invalidates (the next read shows it, not the cached copy), creating a
/// product removes its cached "does not exist", an unknown category is 422, and
/// writing needs the scope.
async fn writes_invalidate(client: &reqwest::Client, base: &str, product: i64) {
    let writer = token("catalog-admin", "catalog:write");
    let read =
        |path: String| async move { client.get(format!("{base}{path}")).send().await.unwrap() };
    let before: serde_json::Value = read(format!("/products/{product}"))
        .await
        .json()
        .await
        .unwrap();
    let r = client
        .put(format!("{base}/products/{product}"))
        .bearer_auth(&writer)
        .json(&serde_json::json!({"price_cents": 4242}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let after: serde_json::Value = read(format!("/products/{product}"))
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(before["price_cents"], 4242);
    assert_eq!(after["price_cents"], 4242);

    assert_eq!(read("/products/201".into()).await.status(), 404);
    let create = |category: i64| {
        client
            .post(format!("{base}/products"))
            .bearer_auth(&writer)
            .json(&serde_json::json!({"category_id": category, "name": "new", "price_cents": 100, "stock": 1}))
            .send()
    };
    let created = create(1).await.unwrap();
    assert_eq!(created.status(), 201);
    assert_eq!(created.headers()["location"], "/products/201");
    assert_eq!(read("/products/201".into()).await.status(), 200);
    assert_eq!(
        create(99).await.unwrap().status(),
        422,
        "an unknown category"
    );

    let r = client
        .put(format!("{base}/products/{product}"))
        .bearer_auth(token("shopper", "orders:write"))
        .json(&serde_json::json!({"price_cents": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_load_overtaken_by_an_invalidation_is_not_cached() {
    overtaken_load(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_load_overtaken_by_an_invalidation_is_not_cached_embedded() {
    overtaken_load(false).await;
}

/// A reader loads v1; before it stores it, a writer commits v2 and invalidates the
/// key. The reader's v1 must not land in a cache layer after the invalidation (it
/// would be served until its TTL): the next read, here and on another replica, is v2.
async fn overtaken_load(shared: bool) {
    use bytes::Bytes;
    use sample_service::cache::{CacheSettings, Cached, LayeredCache, SharedCache};
    use std::sync::Arc;

    let prefix = Env::embedded("overtaken").name;
    let guard = agent_builder("cache", None).start().unwrap();
    let agent = guard.agent().clone();
    let redis: Option<Arc<dyn SharedCache>> = if shared {
        let r = sample_service::cache::redis::Redis::connect(
            REDIS,
            &prefix,
            Duration::from_millis(500),
            agent.clone(),
        )
        .await
        .unwrap();
        Some(Arc::new(r))
    } else {
        None
    };
    let replica = || {
        Arc::new(LayeredCache::new(
            CacheSettings {
                ttl: Duration::from_secs(60),
                negative_ttl: Duration::from_secs(30),
                capacity: 100,
                lock_wait: Duration::from_millis(500),
            },
            redis.clone(),
            Arc::new(sample_service::faults::FaultSwitch::default()),
            sample_service::metrics::PatternMetrics::new(&agent),
        ))
    };
    let key = "product:1";
    let a = replica();
    let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
    let (release, gate) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn({
        let a = a.clone();
        async move {
            a.get_or_load(key, || async move {
                let _ = started_tx.send(());
                let _ = gate.await;
                Ok(Some(Bytes::from_static(b"v1")))
            })
            .await
        }
    });
    started.await.unwrap();
    // The writer has committed v2; it invalidates while the reader still holds v1.
    a.invalidate(key).await;
    release.send(()).unwrap();
    assert_eq!(
        reader.await.unwrap().unwrap(),
        Cached::Found(Bytes::from_static(b"v1")),
        "the reader answers what it read"
    );
    let v2 = || async { Ok(Some(Bytes::from_static(b"v2"))) };
    assert_eq!(
        a.get_or_load(key, v2).await.unwrap(),
        Cached::Found(Bytes::from_static(b"v2")),
        "this replica served the overtaken v1 after the invalidation"
    );
    if shared {
        assert_eq!(
            replica().get_or_load(key, v2).await.unwrap(),
            Cached::Found(Bytes::from_static(b"v2")),
            "another replica served the overtaken v1 (from Redis)"
        );
    }
    delete_redis_keys(&prefix).await;
    let _ = guard.shutdown_async().await;
}
