//! Outbox → RabbitMQ → workers: effects happen exactly once even when a worker dies
//! between committing and acknowledging; a poison message is dead-lettered.

mod common;

use std::time::Duration;

use common::*;
use sqlx::Row;

async fn place_orders(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    n: usize,
    payment: &str,
) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let mut body = order_body(1 + i as i64, 1);
        body["payment_method"] = payment.into();
        let r = client
            .post(format!("{base}/orders"))
            .bearer_auth(token)
            .header("Idempotency-Key", format!("async-{payment}-{i}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let location = r.headers()["location"].to_str().unwrap().to_string();
        ids.push(location.trim_start_matches("/orders/").to_string());
    }
    ids
}

/// (payments, emails, sms) per order, from the database.
async fn effects(env: &Env) -> Vec<(i64, i64, i64)> {
    let db = env.db().await;
    let rows = sqlx::query(
        "SELECT (SELECT count(*) FROM payments p WHERE p.order_id = o.id) AS p, \
                (SELECT count(*) FROM notifications n WHERE n.order_id = o.id AND channel = 'email') AS e, \
                (SELECT count(*) FROM notifications n WHERE n.order_id = o.id AND channel = 'sms') AS s \
         FROM orders o ORDER BY o.id",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    db.close().await;
    rows.iter()
        .map(|r| (r.get("p"), r.get("e"), r.get("s")))
        .collect()
}

/// Checks that every order got each effect exactly once, and returns how many
/// redelivered messages the surviving worker recognised as already done.
async fn exactly_once_with_duplicates(done: &[(i64, i64, i64)], survivor: &str) -> u64 {
    assert!(
        done.iter().all(|x| *x == (1, 1, 1)),
        "each effect exactly once: {done:?}"
    );
    scraped_counter(
        survivor,
        "shop_queue_processed_total",
        "result=\"duplicate\"",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn effects_happen_once_when_a_worker_dies_before_acknowledging() {
    let env = Env::new("exactly_once").await;
    let api = ShopProcess::spawn(&env, &[("SHOP_ROLES", "api,relay".into())]).await;
    // This worker aborts after its third commit, before acknowledging: with a
    // prefetch of 16 it holds several committed but unacknowledged messages then.
    let mut doomed = ShopProcess::spawn(
        &env,
        &[
            ("SHOP_ROLES", "worker".into()),
            ("SHOP_FAULT_ABORT_AFTER_COMMITS", "3".into()),
        ],
    )
    .await;
    let client = client();
    let token = token("buyer", "orders:write");
    let orders = place_orders(&client, &api.base, &token, 10, "card").await;

    let status = doomed
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("the worker aborted");
    assert!(!status.success());
    let before = effects(&env).await;
    let applied: i64 = before.iter().map(|(p, e, s)| p + e + s).sum();
    assert!(
        applied >= 3,
        "the doomed worker committed {applied} effects"
    );

    // Its unacknowledged messages are redelivered to the next worker.
    let survivor = ShopProcess::spawn(&env, &[("SHOP_ROLES", "worker".into())]).await;
    let done = eventually(Duration::from_secs(60), || async {
        let e = effects(&env).await;
        (e.len() == orders.len()
            && e.iter()
                .all(|x| *x != (0, 0, 0) && x.0 >= 1 && x.1 >= 1 && x.2 >= 1))
        .then_some(e)
    })
    .await
    .expect("every order's effects were applied");
    let duplicates = exactly_once_with_duplicates(&done, &survivor.base).await;
    eprintln!(
        "10 orders: the first worker committed {applied} effects and aborted before acking; \
         the second skipped {duplicates} redelivered duplicates; every order has payment, email, sms exactly once"
    );
    assert!(
        duplicates >= 1,
        "a committed message was redelivered and recognised"
    );
    drop((api, survivor));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_message_reaches_the_dead_letter_queue_after_its_attempts() {
    poison(Mode::Networked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_message_reaches_the_dead_letter_queue_after_its_attempts_embedded() {
    poison(Mode::Embedded).await;
}

async fn poison(mode: Mode) {
    let env = Env::of(mode, "poison").await;
    let mut config = env.config();
    config.max_attempts = 3;
    config.retry_base = Duration::from_millis(100);
    let shop = RunningShop::start(config, None).await;
    let client = client();
    let token = token("buyer", "orders:write");
    let order = place_orders(&client, &shop.base, &token, 1, "poison")
        .await
        .remove(0);

    let order: serde_json::Value = eventually(Duration::from_secs(30), || async {
        let r = client
            .get(format!("{}/orders/{order}", shop.base))
            .bearer_auth(&token)
            .send()
            .await
            .ok()?;
        let v: serde_json::Value = r.json().await.ok()?;
        (v["status"] == "payment_failed" && v["effects"]["emails"] == 1 && v["effects"]["sms"] == 1)
            .then_some(v)
    })
    .await
    .expect("the poison payment was dead-lettered and the notifications went out");
    assert_eq!(order["effects"]["payments"], 0);
    assert_eq!(order["effects"]["dead_letters"], 1);

    if mode == Mode::Networked {
        let db = env.db().await;
        let (attempts, reason): (i32, String) =
            sqlx::query_as("SELECT attempts, reason FROM dead_letters")
                .fetch_one(&db)
                .await
                .unwrap();
        db.close().await;
        assert_eq!(attempts, 3);
        assert!(reason.contains("poison"), "{reason}");
    }
    let parked = eventually(Duration::from_secs(10), || async {
        let n = shop.shop.broker.dead_letter_count().await.ok()?;
        (n == 1).then_some(n)
    })
    .await;
    assert_eq!(parked, Some(1), "one message in the dead-letter queue");
    let agent = shop.agent.agent().clone();
    assert_eq!(counter(&agent, "shop.queue.retries", &[]), 2);
    assert_eq!(counter(&agent, "shop.queue.dead_letters", &[]), 1);
    eprintln!("{mode:?} mode, poison payment: attempts 1 and 2 retried after their delays, attempt 3 dead-lettered");
    shop.stop().await;
    env.cleanup().await;
}

/// Embedded storage belongs to one process: the API and relay run, then a worker that
/// aborts after its third commit, then a worker that finishes, each on the same files.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn effects_happen_once_when_a_worker_dies_before_acknowledging_embedded() {
    let env = Env::embedded("exactly_once");
    let client = client();
    let token = token("buyer", "orders:write");
    let mut api = ShopProcess::spawn(&env, &[("SHOP_ROLES", "api,relay".into())]).await;
    let orders = place_orders(&client, &api.base, &token, 10, "card").await;
    // Published by the relay: nothing left in the outbox to wait for.
    let published = eventually(Duration::from_secs(20), || async {
        let m = client
            .get(format!("{}/metrics", api.base))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        m.lines()
            .any(|l| l.starts_with("shop_outbox_published_total") && l.ends_with(" 30"))
            .then_some(())
    })
    .await;
    assert!(published.is_some(), "the relay published all 30 events");
    api.kill();

    let mut doomed = ShopProcess::launch(
        &env,
        &[
            ("SHOP_ROLES", "worker".into()),
            ("SHOP_FAULT_ABORT_AFTER_COMMITS", "3".into()),
            ("RUST_LOG", "info".into()),
        ],
    );
    let status = doomed
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("the worker aborted");
    assert!(!status.success());

    let survivor = ShopProcess::spawn(&env, &[("SHOP_ROLES", "api,worker".into())]).await;
    let effects = |id: String| {
        let (client, base, token) = (client.clone(), survivor.base.clone(), token.clone());
        async move {
            let r = client
                .get(format!("{base}/orders/{id}"))
                .bearer_auth(&token)
                .send()
                .await
                .ok()?;
            let v: serde_json::Value = r.json().await.ok()?;
            let e = &v["effects"];
            Some((
                e["payments"].as_i64()?,
                e["emails"].as_i64()?,
                e["sms"].as_i64()?,
            ))
        }
    };
    let done = eventually(Duration::from_secs(60), || async {
        let mut all = Vec::new();
        for id in &orders {
            let e = effects(id.clone()).await?;
            if e.0 < 1 || e.1 < 1 || e.2 < 1 {
                return None;
            }
            all.push(e);
        }
        Some(all)
    })
    .await
    .expect("every order's effects were applied");
    let duplicates = exactly_once_with_duplicates(&done, &survivor.base).await;
    eprintln!("embedded: the aborted worker's unacknowledged messages came back; {duplicates} recognised as done, every effect once");
    assert!(duplicates >= 1);
    drop(survivor);
}
