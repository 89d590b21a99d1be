//! Idempotent order creation under concurrency, in one process and across two.

use crate::common;

use std::collections::HashMap;

use common::*;
use futures::future::join_all;

struct Tally {
    statuses: HashMap<u16, usize>,
    replayed: usize,
    order_ids: Vec<String>,
}

/// Sends `n` identical POST /orders at once, spread round-robin over `bases`.
async fn storm(
    bases: &[String],
    n: usize,
    key: &str,
    body: &serde_json::Value,
    token: &str,
) -> Tally {
    let client = client();
    let requests = (0..n).map(|i| {
        let req = client
            .post(format!("{}/orders", bases[i % bases.len()]))
            .bearer_auth(token)
            .header("Idempotency-Key", format!("\"{key}\""))
            .json(body);
        async move {
            let r = req.send().await.expect("request sent");
            let status = r.status().as_u16();
            let replayed = r
                .headers()
                .get("idempotent-replayed")
                .is_some_and(|v| v == "true");
            if status == 409 {
                assert!(
                    r.headers().get("retry-after").is_some(),
                    "409 without Retry-After"
                );
            }
            let location = r
                .headers()
                .get("location")
                .map(|v| v.to_str().unwrap().to_string());
            (status, replayed, location)
        }
    });
    let mut tally = Tally {
        statuses: HashMap::new(),
        replayed: 0,
        order_ids: Vec::new(),
    };
    for (status, replayed, location) in join_all(requests).await {
        *tally.statuses.entry(status).or_default() += 1;
        tally.replayed += replayed as usize;
        if let Some(l) = location {
            tally
                .order_ids
                .push(l.trim_start_matches("/orders/").to_string());
        }
    }
    tally
}

/// Checks the answers; the stored counts are checked by [`assert_stored`].
fn assert_answers(tally: &Tally, n: usize) {
    let accepted = tally.statuses.get(&202).copied().unwrap_or(0);
    let conflicts = tally.statuses.get(&409).copied().unwrap_or(0);
    assert_eq!(
        accepted + conflicts,
        n,
        "only 202 and 409 expected: {:?}",
        tally.statuses
    );
    // Every 202 but the first is a replay, and all name the same order.
    assert_eq!(tally.replayed, accepted - 1, "{:?}", tally.statuses);
    tally
        .order_ids
        .windows(2)
        .for_each(|w| assert_eq!(w[0], w[1]));

    eprintln!(
        "{n} concurrent requests: {:?}, {} replays",
        tally.statuses, tally.replayed
    );
}

async fn assert_stored(env: &Env, orders: i64) {
    let stored = orders_and_outbox(env).await;
    assert_eq!(
        stored,
        (orders, 3 * orders),
        "each order once, with its payment, email and sms events"
    );
    eprintln!(
        "{:?} mode: {} orders, {} outbox rows stored",
        env.mode(),
        stored.0,
        stored.1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicates_create_one_order() {
    concurrent_duplicates(Mode::Networked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicates_create_one_order_embedded() {
    concurrent_duplicates(Mode::Embedded).await;
}

async fn concurrent_duplicates(mode: Mode) {
    let env = Env::of(mode, "idem").await;
    let shop = RunningShop::start(env.config(), None).await;
    let token = token("user-1", "orders:write");
    let body = order_body(7, 2);

    let tally = storm(
        std::slice::from_ref(&shop.base),
        200,
        "order-key-1",
        &body,
        &token,
    )
    .await;
    assert_answers(&tally, 200);

    let client = client();
    // Same key, another payload: 422, and still one order.
    let r = client
        .post(format!("{}/orders", shop.base))
        .bearer_auth(&token)
        .header("Idempotency-Key", "\"order-key-1\"")
        .json(&order_body(7, 3))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("different request payload"));

    // No key: 400 with a problem saying what is missing.
    let r = client
        .post(format!("{}/orders", shop.base))
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("Idempotency-Key"));

    // The same key of another principal is another key.
    let other = client
        .post(format!("{}/orders", shop.base))
        .bearer_auth(token_for_other())
        .header("Idempotency-Key", "\"order-key-1\"")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 202);
    assert!(other.headers().get("idempotent-replayed").is_none());

    // A request refused before the handler (invalid body) leaves the key unused.
    let bad = client
        .post(format!("{}/orders", shop.base))
        .bearer_auth(&token)
        .header("Idempotency-Key", "fresh-key")
        .json(&serde_json::json!({"items": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let good = client
        .post(format!("{}/orders", shop.base))
        .bearer_auth(&token)
        .header("Idempotency-Key", "fresh-key")
        .json(&order_body(8, 1))
        .send()
        .await
        .unwrap();
    assert_eq!(good.status(), 202);
    assert!(good.headers().get("idempotent-replayed").is_none());

    shop.stop().await;
    // The storm's order, the other principal's and the corrected retry's.
    assert_stored(&env, 3).await;
    env.cleanup().await;
}

fn token_for_other() -> String {
    token("user-2", "orders:write")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicates_split_across_two_processes_create_one_order() {
    let env = Env::new("idem2").await;
    let mut a = ShopProcess::spawn(&env, &[]).await;
    let mut b = ShopProcess::spawn(&env, &[]).await;
    let token = token("user-9", "orders:write");

    let tally = storm(
        &[a.base.clone(), b.base.clone()],
        200,
        "split-key",
        &order_body(3, 1),
        &token,
    )
    .await;
    assert_answers(&tally, 200);
    assert_stored(&env, 1).await;

    a.kill();
    b.kill();
    env.cleanup().await;
}

async fn post_order(
    base: &str,
    token: &str,
    key: &str,
    body: &serde_json::Value,
) -> (u16, bool, String, serde_json::Value) {
    let r = client()
        .post(format!("{base}/orders"))
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let replayed = r.headers().get("idempotent-replayed").is_some();
    let location = r
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, replayed, location, r.json().await.unwrap())
}

async fn set_price(base: &str, product: i64, price_cents: i64) {
    let r = client()
        .put(format!("{base}/products/{product}"))
        .bearer_auth(token("catalog-admin", "catalog:write"))
        .json(&serde_json::json!({ "price_cents": price_cents }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_database_backstop_replays_the_stored_order_and_refuses_another_body() {
    backstop(Mode::Networked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_database_backstop_replays_the_stored_order_and_refuses_another_body_embedded() {
    backstop(Mode::Embedded).await;
}

/// Records kept 1 ms: every retry finds no record and reaches the UNIQUE back-stop
/// in the orders table, as after the retention or a lost Redis.
async fn backstop(mode: Mode) {
    let env = Env::of(mode, "backstop").await;
    let mut config = env.config();
    config.idempotency_retention = std::time::Duration::from_millis(1);
    let shop = RunningShop::start(config, None).await;
    let token = token("user-5", "orders:write");
    let first = post_order(&shop.base, &token, "bs-1", &order_body(7, 2)).await;
    assert_eq!((first.0, first.1), (202, false));

    // The price changes before the retry: the retry still gets the order as placed.
    set_price(&shop.base, 7, 9999).await;
    let retry = post_order(&shop.base, &token, "bs-1", &order_body(7, 2)).await;
    assert_eq!(retry.0, 202);
    assert!(retry.1, "the back-stop's answer is a replay");
    assert_eq!(retry.2, first.2, "the same order");
    assert_eq!(
        retry.3, first.3,
        "the stored answer, not the retry's items at today's prices"
    );

    // The same key with another body: 422, no order placed.
    let other = post_order(&shop.base, &token, "bs-1", &order_body(8, 1)).await;
    assert_eq!(other.0, 422, "another body under a used key: {:?}", other.3);
    assert!(other.3["detail"]
        .as_str()
        .unwrap()
        .contains("different request payload"));

    // Scopes cannot collide: ("a:b", "c") and ("a", "b:c") are two keys.
    let (ab, a) = (token_of("a:b"), token_of("a"));
    assert_eq!(
        post_order(&shop.base, &ab, "c", &order_body(3, 1)).await.0,
        202
    );
    let b = post_order(&shop.base, &a, "b:c", &order_body(3, 1)).await;
    assert_eq!(
        (b.0, b.1),
        (202, false),
        "another principal's key: {:?}",
        b.3
    );

    shop.stop().await;
    assert_stored(&env, 3).await;
    env.cleanup().await;
}

fn token_of(subject: &str) -> String {
    token(subject, "orders:write")
}

/// Redis loses every key of this shop (its prefix only: the server is shared) while
/// retries keep coming: the database back-stop alone keeps one order per key, and
/// answers each retry with the order as placed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_losing_its_keys_mid_run_leaves_only_the_backstop() {
    let env = Env::new("redisloss").await;
    let shop = RunningShop::start(env.config(), None).await;
    let token = token("user-6", "orders:write");
    let first = post_order(&shop.base, &token, "loss-1", &order_body(9, 1)).await;
    assert_eq!(first.0, 202);
    let tally = storm(
        std::slice::from_ref(&shop.base),
        50,
        "loss-1",
        &order_body(9, 1),
        &token,
    )
    .await;
    assert_eq!(tally.statuses.get(&202), Some(&50), "{:?}", tally.statuses);
    assert_eq!(tally.replayed, 50);

    let deleted = delete_redis_keys(&env.name).await;
    assert!(deleted > 0, "the shop's keys were in Redis");
    let tally = storm(
        std::slice::from_ref(&shop.base),
        50,
        "loss-1",
        &order_body(9, 1),
        &token,
    )
    .await;
    // The first to claim the key again meets the back-stop; the rest replay it or
    // find it in flight.
    let accepted = tally.statuses.get(&202).copied().unwrap_or(0);
    let conflicts = tally.statuses.get(&409).copied().unwrap_or(0);
    assert_eq!(accepted + conflicts, 50, "{:?}", tally.statuses);
    assert_eq!(
        tally.replayed, accepted,
        "every 202 is a replay of the first order"
    );
    let location = first.2.trim_start_matches("/orders/").to_string();
    assert!(tally.order_ids.iter().all(|id| *id == location));
    let again = post_order(&shop.base, &token, "loss-1", &order_body(9, 1)).await;
    assert_eq!((again.0, again.1, &again.3), (202, true, &first.3));
    let other = post_order(&shop.base, &token, "loss-1", &order_body(9, 2)).await;
    assert_eq!(other.0, 422);

    shop.stop().await;
    assert_stored(&env, 1).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_lease_is_taken_over_and_the_late_owner_loses() {
    let prefix = Env::embedded("lease").name;
    let guard = agent_builder("idem", None).start().unwrap();
    let redis = sample_service::cache::redis::Redis::connect(
        REDIS,
        &prefix,
        std::time::Duration::from_millis(500),
        guard.agent().clone(),
    )
    .await
    .unwrap();
    lease_takeover(&sample_service::idempotency::redis::RedisIdempotency::new(
        redis,
    ))
    .await;
    delete_redis_keys(&prefix).await;
    let _ = guard.shutdown_async().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_lease_is_taken_over_and_the_late_owner_loses_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::Config::new().path(dir.path()).open().unwrap();
    lease_takeover(&sample_service::idempotency::embedded::SledIdempotency::open(&db).unwrap())
        .await;
}

/// Owner A claims and stalls past its lease (a crashed or paused handler); B takes the
/// key over. A's late completion and release lose the owner check: B's answer is the
/// one replayed.
async fn lease_takeover(store: &dyn sample_service::idempotency::IdempotencyStore) {
    use sample_service::idempotency::{Claim, StoredResponse};
    use std::time::Duration;
    let answer = |body: &str| StoredResponse {
        status: 202,
        content_type: "application/json".into(),
        location: "/orders/x".into(),
        body: body.as_bytes().to_vec(),
    };
    let (key, fp) = ("7:user-42:k1", "fingerprint");
    assert_eq!(
        store
            .claim(key, "a", fp, Duration::from_millis(400))
            .await
            .unwrap(),
        Claim::Acquired
    );
    assert!(matches!(
        store
            .claim(key, "b", fp, Duration::from_secs(30))
            .await
            .unwrap(),
        Claim::InFlight(_)
    ));
    let taken = eventually(Duration::from_secs(10), || async {
        let claim = store
            .claim(key, "b", fp, Duration::from_secs(30))
            .await
            .ok()?;
        (claim == Claim::Acquired).then_some(())
    })
    .await;
    assert!(taken.is_some(), "B took the key over after A's lease");
    assert!(
        !store
            .complete(key, "a", &answer("a"), Duration::from_secs(60))
            .await
            .unwrap(),
        "A's late completion lost the owner check"
    );
    store.release(key, "a").await.unwrap();
    assert!(
        matches!(
            store
                .claim(key, "c", fp, Duration::from_secs(30))
                .await
                .unwrap(),
            Claim::InFlight(_)
        ),
        "A's late release left B's claim alone"
    );
    assert!(store
        .complete(key, "b", &answer("b"), Duration::from_secs(60))
        .await
        .unwrap());
    assert_eq!(
        store
            .claim(key, "c", fp, Duration::from_secs(30))
            .await
            .unwrap(),
        Claim::Completed(answer("b"))
    );
}
