//! Rate limiting, load shedding, the request deadline, circuit breakers and JWT
//! authentication, each answering with the right status and headers.

use crate::common;

use std::time::Duration;

use common::*;
use futures::future::join_all;
use serde_json::json;

async fn set_faults(client: &reqwest::Client, base: &str, faults: serde_json::Value) {
    let r = client
        .put(format!("{base}/admin/faults"))
        .bearer_auth(token("operator", "admin"))
        .json(&faults)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

async fn new_order(client: &reqwest::Client, base: &str, token: &str) -> String {
    let r = client
        .post(format!("{base}/orders"))
        .bearer_auth(token)
        .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
        .json(&order_body(1, 1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    r.headers()["location"].to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rate_limit_answers_429_with_retry_after_and_ratelimit_headers() {
    rate_limit(Mode::Networked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rate_limit_answers_429_with_retry_after_and_ratelimit_headers_embedded() {
    rate_limit(Mode::Embedded).await;
}

async fn rate_limit(mode: Mode) {
    let env = Env::of(mode, "ratelimit").await;
    let mut config = env.config();
    // One request back every 5 s: the eight below cannot earn one back in between,
    // however slowly the machine runs them.
    config.rate_limit_per_second = 0.2;
    config.rate_limit_burst = 5;
    let shop = RunningShop::start(config, None).await;
    let client = client();
    let alice = token("alice", "orders:write");

    let mut statuses = Vec::new();
    let mut retry_after = 0;
    for _ in 0..8 {
        let r = client
            .get(format!("{}/categories", shop.base))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["ratelimit-policy"], "\"default\";q=5;w=25");
        assert!(r.headers()["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"default\";r="));
        if r.status() == 429 {
            let retry: u64 = r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(
                (1..=5).contains(&retry),
                "the next slot opens within 5 s: {retry}"
            );
            retry_after = retry;
            assert_eq!(r.headers()["content-type"], "application/problem+json");
        }
        statuses.push(r.status().as_u16());
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 200, 429, 429, 429],
        "the burst, then refusals"
    );

    // Another token has its own bucket; requests without one are keyed by address.
    let bob = token("bob", "orders:write");
    assert_eq!(
        client
            .get(format!("{}/categories", shop.base))
            .bearer_auth(&bob)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client
            .get(format!("{}/categories", shop.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // After the Retry-After the last refusal named, alice may send again.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(
        client
            .get(format!("{}/categories", shop.base))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        counter(
            shop.agent.agent(),
            "shop.rate_limited",
            &[("limit.key", "token")]
        ),
        3
    );
    shop.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_service_sheds_with_503_and_slow_requests_hit_the_deadline() {
    shedding(Mode::Networked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_service_sheds_with_503_and_slow_requests_hit_the_deadline_embedded() {
    shedding(Mode::Embedded).await;
}

async fn shedding(mode: Mode) {
    let env = Env::of(mode, "shed").await;
    let mut config = env.config();
    config.max_concurrency = 2;
    config.request_timeout = Duration::from_millis(1500);
    config.downstream_timeout = Duration::from_millis(3000);
    let shop = RunningShop::start(config, None).await;
    let client = client();
    let token = token("carol", "orders:write");
    let order = new_order(&client, &shop.base, &token).await;
    set_faults(
        &client,
        &shop.base,
        json!({"inventory": {"latency_ms": 700}}),
    )
    .await;

    let calls = (0..6).map(|_| {
        client
            .get(format!("{}{order}/summary", shop.base))
            .bearer_auth(&token)
            .send()
    });
    let answers = join_all(calls).await;
    let mut ok = 0;
    let mut shed = 0;
    for r in answers {
        let r = r.unwrap();
        match r.status().as_u16() {
            200 => ok += 1,
            503 => {
                assert_eq!(r.headers()["retry-after"], "1");
                assert!(r.text().await.unwrap().contains("concurrency limit"));
                shed += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((ok, shed), (2, 4), "two run, the rest are refused at once");
    assert_eq!(counter(shop.agent.agent(), "shop.shed", &[]), 4);

    // Slower than the request deadline: 503 from the deadline, not a hung request.
    set_faults(
        &client,
        &shop.base,
        json!({"inventory": {"latency_ms": 2500}}),
    )
    .await;
    let r = client
        .get(format!("{}{order}/summary", shop.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("longer than 1500 ms"));
    shop.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_breaker_opens_while_its_downstream_fails_and_closes_after_recovery() {
    let env = Env::new("breaker").await;
    let mut config = env.config();
    config.breaker_open = Duration::from_millis(400);
    let shop = RunningShop::start(config, None).await;
    let client = client();
    let token = token("dave", "orders:write");
    let order = new_order(&client, &shop.base, &token).await;
    let summary = || async {
        let r = client
            .get(format!("{}{order}/summary", shop.base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "a failing part degrades the summary, it does not fail it"
        );
        r.json::<serde_json::Value>().await.unwrap()
    };
    let state = |dep: &str| {
        shop.agent
            .agent()
            .metrics_snapshot()
            .gauges
            .iter()
            .filter(|g| &*g.name == "shop.breaker.state")
            .flat_map(|g| g.series.iter())
            .find(|s| s.attributes.iter().any(|(_, v)| &**v == dep))
            .map(|s| s.value)
    };

    set_faults(
        &client,
        &shop.base,
        json!({"inventory": {"error_rate": 1.0}}),
    )
    .await;
    for _ in 0..10 {
        let s = summary().await;
        assert_eq!(s["degraded"], json!(["inventory"]));
    }
    assert_eq!(state("inventory"), Some(2.0), "open after 10 failures");
    assert_eq!(state("shipping"), Some(0.0));
    let s = summary().await;
    assert!(s["inventory"]["error"]
        .as_str()
        .unwrap()
        .contains("circuit breaker for inventory is open"));
    assert!(
        counter(
            shop.agent.agent(),
            "shop.breaker.rejections",
            &[("dependency", "inventory")]
        ) >= 1
    );

    // Recovered: after the open period one probe goes through and closes it.
    set_faults(&client, &shop.base, json!({})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = summary().await;
    assert_eq!(s["degraded"], json!([]));
    assert_eq!(s["inventory"]["reserved"], true);
    assert_eq!(state("inventory"), Some(0.0));
    shop.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_valid_rs256_tokens_pass() {
    let env = Env::new("jwt").await;
    let shop = RunningShop::start(env.config(), None).await;
    let client = client();
    let url = format!("{}/orders", shop.base);
    let post = |token: String| {
        client
            .post(&url)
            .bearer_auth(token)
            .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
            .json(&order_body(2, 1))
            .send()
    };

    assert_eq!(
        post(token("erin", "orders:write")).await.unwrap().status(),
        202
    );
    for (what, bad, says) in [
        (
            "HS256 signed with the public key",
            hs256_with_public_key("erin"),
            "RS256 only",
        ),
        (
            "expired",
            token_with("erin", "orders:write", "shop-api", -120),
            "expired",
        ),
        (
            "wrong audience",
            token_with("erin", "orders:write", "another-api", 3600),
            "audience",
        ),
        ("garbage", "not.a.jwt".to_string(), "malformed"),
        (
            "alg none",
            unsigned(&good_claims("erin", "admin")),
            "malformed",
        ),
        (
            "wrong issuer",
            {
                let mut c = good_claims("erin", "orders:write");
                c["iss"] = "someone-else".into();
                sign(&c, "dev-1", DEV_PRIVATE_KEY)
            },
            "issuer",
        ),
        (
            "nbf in the future",
            {
                let mut c = good_claims("erin", "orders:write");
                c["nbf"] = (c["iat"].as_i64().unwrap() + 600).into();
                sign(&c, "dev-1", DEV_PRIVATE_KEY)
            },
            "not valid yet",
        ),
        (
            "no exp",
            {
                let mut c = good_claims("erin", "orders:write");
                c.as_object_mut().unwrap().remove("exp");
                sign(&c, "dev-1", DEV_PRIVATE_KEY)
            },
            "exp",
        ),
        (
            "unknown kid",
            sign(
                &good_claims("erin", "orders:write"),
                "dev-9",
                DEV_PRIVATE_KEY,
            ),
            "unknown key id",
        ),
        (
            "right kid, another key",
            sign(
                &good_claims("erin", "orders:write"),
                "dev-1",
                ROTATED_PRIVATE_KEY,
            ),
            "InvalidSignature",
        ),
    ] {
        let r = post(bad).await.unwrap();
        assert_eq!(r.status(), 401, "{what}");
        assert!(
            r.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer"),
            "{what}"
        );
        let body = r.text().await.unwrap();
        assert!(body.contains(says), "{what}: {body}");
    }
    let r = client
        .post(&url)
        .json(&order_body(2, 1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "no token");
    let r = post(token("erin", "catalog:read")).await.unwrap();
    assert_eq!(r.status(), 403, "valid token without the scope");
    shop.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fresh_random_token_per_request_does_not_escape_the_limit() {
    random_tokens(Mode::Networked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fresh_random_token_per_request_does_not_escape_the_limit_embedded() {
    random_tokens(Mode::Embedded).await;
}

/// Tokens that do not verify are not principals: their requests share the client
/// address's bucket, however many different strings they carry.
async fn random_tokens(mode: Mode) {
    let env = Env::of(mode, "rl_random").await;
    let mut config = env.config();
    config.rate_limit_per_second = 0.5;
    config.rate_limit_burst = 5;
    let shop = RunningShop::start(config, None).await;
    let client = client();
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let r = client
            .get(format!("{}/categories", shop.base))
            .bearer_auth(uuid::Uuid::new_v4().to_string())
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert!(
        limited >= 2,
        "random bearer strings from one address share its bucket: {statuses:?}"
    );
    // A verified principal has its own bucket, apart from the address's.
    let r = client
        .get(format!("{}/categories", shop.base))
        .bearer_auth(token("frank", "orders:write"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        counter(
            shop.agent.agent(),
            "shop.rate_limited",
            &[("limit.key", "ip")]
        ),
        limited as u64
    );
    shop.stop().await;
    env.cleanup().await;
}

/// `X-Forwarded-For` names the client only when the peer is a configured proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forwarded_addresses_count_only_from_trusted_proxies() {
    let env = Env::new("rl_proxy").await;
    let limits = [
        ("SHOP_RATE_LIMIT_PER_SECOND", "0.5".to_string()),
        ("SHOP_RATE_LIMIT_BURST", "3".to_string()),
    ];
    let mut trusted_env = limits.to_vec();
    trusted_env.push(("SHOP_TRUSTED_PROXIES", "127.0.0.1/32".to_string()));
    let trusted = ShopProcess::spawn(&env, &trusted_env).await;
    let untrusted = ShopProcess::spawn(&env, &limits).await;
    let client = client();
    let statuses = |base: String| {
        let client = client.clone();
        async move {
            let mut out = Vec::new();
            for i in 0..6 {
                let r = client
                    .get(format!("{base}/categories"))
                    .header("X-Forwarded-For", format!("203.0.113.{i}, 127.0.0.1"))
                    .send()
                    .await
                    .unwrap();
                out.push(r.status().as_u16());
            }
            out
        }
    };
    // Behind a trusted proxy six clients have six buckets.
    assert_eq!(statuses(trusted.base.clone()).await, [200; 6]);
    // From an untrusted peer the header is the client's claim: one bucket.
    let seen = statuses(untrusted.base.clone()).await;
    assert_eq!(seen[..3], [200; 3]);
    assert!(seen[3..].iter().all(|s| *s == 429), "{seen:?}");
    drop((trusted, untrusted));
    env.cleanup().await;
}

/// Without a configured key the shop refuses to start, unless in `--dev` mode: the
/// committed development key must never verify tokens in a deployment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_verifying_key_outside_dev_mode() {
    let env = Env::embedded("nokey");
    let mut shop = ShopProcess::launch(&env, &[("SHOP_DEV", "false".into())]);
    let status = shop.wait_exit(Duration::from_secs(20)).await;
    assert!(
        status.is_some_and(|s| !s.success()),
        "the shop started without a verifying key"
    );
}

/// During a rotation the JWKS holds the old and the new key: tokens of both verify,
/// each by its `kid`; a token naming a key the set lacks does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_keys_verify_during_a_rotation() {
    let env = Env::embedded("rotation");
    let shop = ShopProcess::spawn(
        &env,
        &[("SHOP_DEV", "false".into()), ("JWT_JWKS_FILE", JWKS.into())],
    )
    .await;
    let client = client();
    let get = |token: String| {
        client
            .get(format!("{}/orders/{}", shop.base, uuid::Uuid::new_v4()))
            .bearer_auth(token)
            .send()
    };
    let claims = good_claims("gina", "orders:write");
    for (kid, key) in [("dev-1", DEV_PRIVATE_KEY), ("dev-2", ROTATED_PRIVATE_KEY)] {
        let r = get(sign(&claims, kid, key)).await.unwrap();
        assert_eq!(r.status(), 404, "a token signed by {kid} verifies");
    }
    let r = get(sign(&claims, "dev-2", DEV_PRIVATE_KEY)).await.unwrap();
    assert_eq!(r.status(), 401, "dev-1's signature under dev-2's kid");
    let r = get(sign(&claims, "dev-3", ROTATED_PRIVATE_KEY))
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("unknown key id"));
}

/// A key rotated into the JWKS after the start verifies without a restart: a token
/// naming an unknown `kid` re-reads the file, at most once per cooldown.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_added_to_the_jwks_is_picked_up() {
    let env = Env::embedded("jwks_reread");
    let dir = tempfile::tempdir().unwrap();
    let jwks_path = dir.path().join("jwks.json");
    let both: serde_json::Value = serde_json::from_slice(&std::fs::read(JWKS).unwrap()).unwrap();
    let mut only_first = both.clone();
    only_first["keys"].as_array_mut().unwrap().truncate(1);
    std::fs::write(&jwks_path, only_first.to_string()).unwrap();
    let shop = ShopProcess::spawn(
        &env,
        &[
            ("SHOP_DEV", "false".into()),
            ("JWT_JWKS_FILE", jwks_path.display().to_string()),
            ("JWT_JWKS_REFRESH_MS", "300".into()),
        ],
    )
    .await;
    let client = client();
    let claims = good_claims("hana", "orders:write");
    let new_key = sign(&claims, "dev-2", ROTATED_PRIVATE_KEY);
    let get = || {
        client
            .get(format!("{}/orders/{}", shop.base, uuid::Uuid::new_v4()))
            .bearer_auth(&new_key)
            .send()
    };
    assert_eq!(
        get().await.unwrap().status(),
        401,
        "dev-2 is not in the set yet"
    );
    std::fs::write(&jwks_path, both.to_string()).unwrap();
    let accepted = eventually(Duration::from_secs(10), || async {
        (get().await.ok()?.status() == 404).then_some(())
    })
    .await;
    assert!(accepted.is_some(), "the rotated-in key was never read");
}
