//! Shared by the integration tests: a shop on the real PostgreSQL, Redis and
//! RabbitMQ of this machine, each test with its own database, key prefix and queues;
//! tokens signed with the development key; the shop as a child process.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agent::{AgentBuilder, AgentGuard};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use sample_service::messaging::rabbitmq;
use sample_service::{Config, Shop};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

pub const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const REDIS: &str = "redis://127.0.0.1:6379/";
pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

pub const DEV_PRIVATE_KEY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dev-keys/jwt-private.pem");
const PRIVATE_KEY: &str = DEV_PRIVATE_KEY;
const PUBLIC_KEY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dev-keys/jwt-public.pem");

/// One test's share of the backends: a fresh database (migrated by the shop), a
/// Redis key prefix and RabbitMQ names nobody else uses. Dropped with [`Env::cleanup`].
pub struct Env {
    pub name: String,
    pub database_url: String,
    /// Set in embedded mode: the sled directory instead of the three servers.
    pub data_dir: Option<tempfile::TempDir>,
}

/// Which storage a test runs the shop on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    Networked,
    Embedded,
}

impl Env {
    pub async fn of(mode: Mode, test: &str) -> Env {
        match mode {
            Mode::Networked => Env::new(test).await,
            Mode::Embedded => Env::embedded(test),
        }
    }

    /// Embedded defaults: sled in a temporary directory, no servers.
    pub fn embedded(test: &str) -> Env {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        Env {
            name: format!("shop_{test}_{}_{nanos}", std::process::id()),
            database_url: String::new(),
            data_dir: Some(tempfile::tempdir().expect("a temporary directory")),
        }
    }

    pub fn mode(&self) -> Mode {
        if self.data_dir.is_some() {
            Mode::Embedded
        } else {
            Mode::Networked
        }
    }

    pub async fn new(test: &str) -> Env {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("shop_{test}_{}_{nanos}", std::process::id());
        let admin = admin().await;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .expect("create the test database");
        admin.close().await;
        let database_url = format!("postgres://postgres@127.0.0.1:5432/{name}");
        // Migrated here (the shop would do it too) so that the statistics a test
        // takes as its baseline already include the schema's own table scans.
        let db = PgPoolOptions::new()
            .max_connections(1)
            .connect(&database_url)
            .await
            .unwrap();
        sqlx::migrate!("./migrations")
            .run(&db)
            .await
            .expect("migrations apply");
        db.close().await;
        Env {
            database_url,
            name,
            data_dir: None,
        }
    }

    pub fn config(&self) -> Config {
        let mut c = match &self.data_dir {
            Some(dir) => Config::embedded_in(dir.path(), &self.name),
            None => Config::for_backends(&self.database_url, REDIS, AMQP, &self.name),
        };
        // The tests' tokens are signed with the committed development key.
        c.dev = true;
        // Tests send bursts from one address: only the rate-limit tests limit.
        c.rate_limit_per_second = 1_000_000.0;
        c.rate_limit_burst = 1_000_000;
        c.max_concurrency = 2_000;
        c.db_max_connections = 8;
        c
    }

    /// A pool on the test's database, for assertions on what the shop wrote.
    pub async fn db(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.database_url)
            .await
            .expect("connect to the test database")
    }

    /// Drops the database, the Redis keys and the queues of this test.
    pub async fn cleanup(self) {
        if self.data_dir.is_some() {
            return; // the temporary directory goes with it
        }
        let config = self.config();
        let settings = rabbitmq::Settings {
            url: AMQP.into(),
            prefix: self.name.clone(),
            max_attempts: config.max_attempts,
            retry_base: config.retry_base,
            prefetch: 1,
        };
        if let Ok(broker) = rabbitmq::RabbitMq::connect(settings).await {
            let _ = broker.delete_topology().await;
        }
        delete_redis_keys(&self.name).await;
        let admin = admin().await;
        let _ = sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&admin)
        .await;
    }
}

/// Deletes the Redis keys under `prefix` (and nothing else: the server is shared);
/// returns how many there were.
pub async fn delete_redis_keys(prefix: &str) -> usize {
    let Ok(client) = redis::Client::open(REDIS) else {
        return 0;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return 0;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<(), _> = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await;
    }
    keys.len()
}

async fn admin() -> PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .connect(PG_ADMIN)
        .await
        .expect("PostgreSQL at 127.0.0.1:5432 (scripts/test.sh starts it)")
}

/// An agent that ignores the environment: disabled, or exporting to `endpoint`.
pub fn agent_builder(service: &str, endpoint: Option<&str>) -> AgentBuilder {
    let b = AgentBuilder::from_config(agent::Config::default())
        .service_name(service)
        .json_logs(false)
        .export_interval(Duration::from_millis(100))
        .metric_export_interval(Duration::from_millis(500));
    match endpoint {
        Some(e) => b.endpoint(e),
        None => b.disabled(true),
    }
}

pub struct RunningShop {
    pub shop: Shop,
    pub agent: AgentGuard,
    pub base: String,
}

impl RunningShop {
    pub async fn start(config: Config, endpoint: Option<&str>) -> RunningShop {
        let guard = agent_builder("shop", endpoint)
            .start()
            .expect("agent starts");
        let endpoint = endpoint.map(str::to_string);
        let factory: sample_service::AgentFactory =
            Arc::new(move |name| agent_builder(name, endpoint.as_deref()));
        let shop = Shop::start(config, guard.agent().clone(), factory)
            .await
            .expect("the shop starts on the local backends");
        let base = format!("http://{}", shop.addr);
        RunningShop {
            shop,
            agent: guard,
            base,
        }
    }

    pub async fn stop(self) {
        self.shop.shutdown().await;
        let _ = self.agent.shutdown_async().await;
    }
}

/// A token signed with the development key (RS256, kid dev-1).
pub fn token(subject: &str, scope: &str) -> String {
    token_with(subject, scope, "shop-api", 3600)
}

pub fn token_with(subject: &str, scope: &str, audience: &str, expires_in: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = json!({
        "iss": "shop-dev", "aud": audience, "sub": subject, "scope": scope,
        "iat": now, "nbf": now - 5, "exp": now + expires_in,
    });
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("dev-1".into());
    let key = EncodingKey::from_rsa_pem(&std::fs::read(PRIVATE_KEY).unwrap()).unwrap();
    encode(&header, &claims, &key).unwrap()
}

pub const ROTATED_PRIVATE_KEY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/keys/rotated-private.pem"
);
/// The public keys `dev-1` and `dev-2` as a JWKS.
pub const JWKS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/jwks.json");

/// Claims the shop accepts, to change one at a time.
pub fn good_claims(subject: &str, scope: &str) -> serde_json::Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    json!({
        "iss": "shop-dev", "aud": "shop-api", "sub": subject, "scope": scope,
        "iat": now, "nbf": now - 5, "exp": now + 3600,
    })
}

/// `claims` signed RS256 with `private_key` under `kid`.
pub fn sign(claims: &serde_json::Value, kid: &str, private_key: &str) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.into());
    let key = EncodingKey::from_rsa_pem(&std::fs::read(private_key).unwrap()).unwrap();
    encode(&header, claims, &key).unwrap()
}

/// An unsigned token (`alg: none`) with valid claims.
pub fn unsigned(claims: &serde_json::Value) -> String {
    use base64::Engine;
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT", "kid": "dev-1"})),
        b64(claims)
    )
}

/// A token signed HS256 with the public key's PEM as the secret: the classic
/// algorithm-confusion attack on RS256 verifiers.
pub fn hs256_with_public_key(subject: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = json!({"iss": "shop-dev", "aud": "shop-api", "sub": subject, "scope": "orders:write", "exp": now + 3600});
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("dev-1".into());
    let secret = std::fs::read(PUBLIC_KEY).unwrap();
    encode(
        &header,
        &claims,
        &EncodingKey::from_secret(&secret).unwrap(),
    )
    .unwrap()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

pub fn order_body(product: i64, quantity: i32) -> serde_json::Value {
    json!({
        "items": [{"product_id": product, "quantity": quantity}],
        "email": "ada@example.com",
        "phone": "+31 20 555 0100",
        "payment_method": "card",
    })
}

pub use testkit::{eventually, free_port};

/// The shop binary as a child process with `env` on top of the test's config.
pub struct ShopProcess {
    pub child: Child,
    pub base: String,
}

impl ShopProcess {
    pub async fn spawn(env: &Env, extra: &[(&str, String)]) -> ShopProcess {
        let process = Self::launch(env, extra);
        let base = process.base.clone();
        let ready = eventually(Duration::from_secs(30), || async {
            let r = reqwest::get(format!("{base}/health/ready")).await.ok()?;
            r.status().is_success().then_some(())
        })
        .await;
        assert!(
            ready.is_some(),
            "the shop process at {base} did not become ready"
        );
        process
    }

    /// Starts the process without waiting for it (it may not live long enough).
    pub fn launch(env: &Env, extra: &[(&str, String)]) -> ShopProcess {
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sample-service"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("SHOP_LISTEN", format!("127.0.0.1:{port}"))
            .env("SHOP_PREFIX", &env.name)
            .env("SHOP_RATE_LIMIT_PER_SECOND", "1000000")
            .env("SHOP_RATE_LIMIT_BURST", "1000000")
            .env("SHOP_MAX_CONCURRENCY", "2000")
            // The committed development key verifies the tests' tokens.
            .env("SHOP_DEV", "true")
            .env("OTEL_SDK_DISABLED", "true")
            .env("RUST_LOG", "warn")
            // SHOP_TEST_LOGS=1 shows the child's JSON log lines.
            .stdout(if std::env::var_os("SHOP_TEST_LOGS").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::inherit());
        match &env.data_dir {
            Some(dir) => {
                cmd.env("SHOP_DATA_DIR", dir.path());
            }
            None => {
                cmd.env("DATABASE_URL", &env.database_url)
                    .env("REDIS_URL", REDIS)
                    .env("AMQP_URL", AMQP);
            }
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn the shop");
        let base = format!("http://127.0.0.1:{port}");
        ShopProcess { child, base }
    }

    /// Stops the process the way an operator would (SIGTERM): it finishes what it
    /// holds, flushes and exits.
    pub async fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let exited = self.wait_exit(Duration::from_secs(20)).await;
        assert!(exited.is_some(), "the shop did not stop on SIGTERM");
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to end by itself (an injected abort).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        eventually(timeout, || {
            let status = self.child.try_wait().ok().flatten();
            async move { status }
        })
        .await
    }
}

impl Drop for ShopProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The value of a pattern counter in the shop's agent, summed over the series that
/// carry all of `attributes`.
pub fn counter(agent: &agent::Agent, name: &str, attributes: &[(&str, &str)]) -> u64 {
    agent
        .metrics_snapshot()
        .counters
        .iter()
        .filter(|c| &*c.name == name)
        .flat_map(|c| c.series.iter())
        .filter(|s| {
            attributes
                .iter()
                .all(|(k, v)| s.attributes.iter().any(|(sk, sv)| sk == k && &**sv == *v))
        })
        .map(|s| s.value)
        .sum()
}

/// Reads of the `products` table as PostgreSQL counted them (sequential plus index
/// scans). Statistics reach the shared view when a backend flushes them, at the
/// latest when it exits: stop the shop (closing its pool) before reading.
pub async fn product_reads_seen_by_postgres(env: &Env, at_least: i64) -> i64 {
    let db = env.db().await;
    let read = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT (coalesce(seq_scan, 0) + coalesce(idx_scan, 0))::bigint FROM pg_stat_user_tables \
             WHERE relname = 'products'",
        )
        .fetch_optional(&db)
        .await
        .unwrap()
        // Before the shop migrated the database there is no table, and no read.
        .unwrap_or(0)
    };
    let reached = eventually(Duration::from_secs(15), || async {
        let n = read().await;
        (n >= at_least).then_some(n)
    })
    .await;
    // Wait a little longer: a late flush would show a second read.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let n = read().await;
    db.close().await;
    assert!(
        reached.is_some(),
        "PostgreSQL never counted {at_least} product reads (saw {n})"
    );
    n
}

/// (orders, outbox rows) the shop stored, from PostgreSQL or, in embedded mode, from
/// the sled files once the stopped shop has released them.
pub async fn orders_and_outbox(env: &Env) -> (i64, i64) {
    match &env.data_dir {
        None => {
            let db = env.db().await;
            let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
                .fetch_one(&db)
                .await
                .unwrap();
            let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
                .fetch_one(&db)
                .await
                .unwrap();
            db.close().await;
            (orders, outbox)
        }
        Some(dir) => {
            let store = eventually(Duration::from_secs(10), || async {
                sample_service::store::Embedded::open(dir.path()).ok()
            })
            .await
            .expect("the stopped shop released its storage");
            let count = |tree: &str| store.db().open_tree(tree).unwrap().len() as i64;
            (count("orders"), count("outbox"))
        }
    }
}

/// A connection to the local RabbitMQ, on the test's tokio runtime.
pub async fn amqp_connection() -> lapin::Result<lapin::Connection> {
    lapin::Connection::connect(
        AMQP,
        lapin::ConnectionProperties::default()
            .with_executor(tokio_executor_trait::Tokio::current())
            .with_reactor(tokio_reactor_trait::Tokio::current()),
    )
    .await
}

/// Messages waiting in the test's work and retry queues, once no consumer holds any:
/// `None` while a consumer is still attached (its unacknowledged deliveries are not
/// counted by the broker until it lets them go).
pub async fn queued_without_consumers(env: &Env) -> Option<u32> {
    let amqp = amqp_connection().await.ok()?;
    let ch = amqp.create_channel().await.ok()?;
    let config = env.config();
    let mut queues = Vec::new();
    for q in ["payment", "email", "sms"] {
        queues.push(format!("{}.{q}", env.name));
        for level in 1..config.max_attempts {
            queues.push(format!("{}.{q}.retry.{level}", env.name));
        }
    }
    let mut waiting = 0;
    for q in queues {
        let passive = lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let q = ch
            .queue_declare(&q, passive, lapin::types::FieldTable::default())
            .await
            .ok()?;
        if q.consumer_count() > 0 {
            return None;
        }
        waiting += q.message_count();
    }
    let _ = amqp.close(200, "counted").await;
    Some(waiting)
}

/// A counter from the shop's Prometheus text, summed over the series whose labels
/// contain `label` (e.g. `result="duplicate"`).
pub async fn scraped_counter(base: &str, name: &str, label: &str) -> u64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Runs the `loadgen` binary against `base` for `requests` requests (8 workers, 4
/// principals, a burst every second) and returns its JSON report.
pub async fn run_loadgen(base: &str, requests: u32, seed: u64) -> serde_json::Value {
    let report = tempfile::NamedTempFile::new().unwrap();
    let path = report.path().to_path_buf();
    let (base, requests, seed) = (base.to_string(), requests.to_string(), seed.to_string());
    let status = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .args([
                "--base-url",
                &base,
                "--requests",
                &requests,
                "--duration",
                "60s",
                "--concurrency",
                "8",
            ])
            .args([
                "--principals",
                "4",
                "--seed",
                &seed,
                "--burst-every",
                "1s",
                "--no-progress",
                "--json",
            ])
            .arg(&path)
            .arg("--jwt-private-key")
            .arg(PRIVATE_KEY)
            .status()
            .expect("run loadgen")
    })
    .await
    .unwrap();
    assert!(status.success(), "loadgen failed");
    serde_json::from_slice(&std::fs::read(report.path()).unwrap()).unwrap()
}
