//! Idempotent order creation under concurrency, in one process and across two.

mod common;

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
