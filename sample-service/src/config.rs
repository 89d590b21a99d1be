//! Settings: every flag can also come from the environment variable beside it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

fn millis(s: &str) -> Result<Duration, String> {
    s.parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| format!("{s:?} is not a whole number of milliseconds"))
}

#[derive(Args, Clone, Debug)]
pub struct Config {
    /// Address the API listens on.
    #[arg(long, env = "SHOP_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// PostgreSQL URL (orders, outbox, catalog).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Redis URL (shared cache, idempotency records, rate limits).
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,
    /// RabbitMQ URL (work queues).
    #[arg(long, env = "AMQP_URL")]
    pub amqp_url: Option<String>,
    /// Where the embedded storage (sled) lives when no backend URL is set.
    #[arg(long, env = "SHOP_DATA_DIR", default_value = ".local/shop-data")]
    pub data_dir: PathBuf,
    /// Prefix of Redis keys and RabbitMQ exchanges and queues, so several shops share a server.
    #[arg(long, env = "SHOP_PREFIX", default_value = "shop")]
    pub prefix: String,

    /// Which parts run in this process: api, relay, worker (comma-separated).
    #[arg(
        long,
        env = "SHOP_ROLES",
        default_value = "api,relay,worker",
        value_delimiter = ','
    )]
    pub roles: Vec<Role>,

    /// Development mode: with no key configured, verify tokens with the committed
    /// development key (`dev-keys/`), which anyone can sign with. Never in a deployment.
    #[arg(long, env = "SHOP_DEV")]
    pub dev: bool,
    /// An RSA public key (PEM) that verifies tokens with the key id `--jwt-key-id`.
    #[arg(long, env = "JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,
    #[arg(long, env = "JWT_KEY_ID", default_value = "dev-1")]
    pub jwt_key_id: String,
    /// A JWKS file: every RSA key in it verifies the tokens naming its `kid` (hold the
    /// old and the new key during a rotation).
    #[arg(long, env = "JWT_JWKS_FILE")]
    pub jwt_jwks_file: Option<PathBuf>,
    /// A token naming a key id the JWKS lacks re-reads the file, at most this often
    /// (ms): a rotated-in key works without a restart.
    #[arg(long, env = "JWT_JWKS_REFRESH_MS", default_value = "30000", value_parser = millis)]
    pub jwt_jwks_refresh: Duration,
    #[arg(long, env = "JWT_ISSUER", default_value = "shop-dev")]
    pub jwt_issuer: String,
    #[arg(long, env = "JWT_AUDIENCE", default_value = "shop-api")]
    pub jwt_audience: String,

    /// Requests per second each principal (else client IP) may make, sustained.
    #[arg(long, env = "SHOP_RATE_LIMIT_PER_SECOND", default_value_t = 50.0)]
    pub rate_limit_per_second: f64,
    /// Proxies (CIDR, comma-separated) whose `X-Forwarded-For` names the client for
    /// the rate limit of requests without a valid token; from any other peer the
    /// header is ignored.
    #[arg(long, env = "SHOP_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Requests a client may send at once above the sustained rate.
    #[arg(long, env = "SHOP_RATE_LIMIT_BURST", default_value_t = 100)]
    pub rate_limit_burst: u32,
    /// Requests handled at once; past it requests are shed with 503.
    #[arg(long, env = "SHOP_MAX_CONCURRENCY", default_value_t = 256)]
    pub max_concurrency: usize,
    /// Whole-request budget (ms).
    #[arg(long, env = "SHOP_REQUEST_TIMEOUT_MS", default_value = "5000", value_parser = millis)]
    pub request_timeout: Duration,
    /// Statement timeout of every database query (ms).
    #[arg(long, env = "SHOP_DB_STATEMENT_TIMEOUT_MS", default_value = "2000", value_parser = millis)]
    pub db_statement_timeout: Duration,
    #[arg(long, env = "SHOP_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,
    /// Timeout of each Redis command (ms).
    #[arg(long, env = "SHOP_REDIS_TIMEOUT_MS", default_value = "500", value_parser = millis)]
    pub redis_timeout: Duration,

    /// Time to live of cached entities (ms); Redis entries get ±10 % jitter.
    #[arg(long, env = "SHOP_CACHE_TTL_MS", default_value = "60000", value_parser = millis)]
    pub cache_ttl: Duration,
    /// Time to live of "does not exist" entries (ms).
    #[arg(long, env = "SHOP_NEGATIVE_TTL_MS", default_value = "30000", value_parser = millis)]
    pub negative_ttl: Duration,
    /// Entities kept in the in-process cache.
    #[arg(long, env = "SHOP_CACHE_CAPACITY", default_value_t = 10_000)]
    pub cache_capacity: u64,

    /// How long a completed idempotency record is kept (ms); published in the README.
    #[arg(long, env = "SHOP_IDEMPOTENCY_RETENTION_MS", default_value = "86400000", value_parser = millis)]
    pub idempotency_retention: Duration,

    /// Attempts of a message before it goes to the dead-letter queue.
    #[arg(long, env = "SHOP_MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: u32,
    /// Delay before the first retry (ms); each further retry waits 4× longer.
    #[arg(long, env = "SHOP_RETRY_BASE_MS", default_value = "1000", value_parser = millis)]
    pub retry_base: Duration,
    /// Unacknowledged messages each consumer may hold.
    #[arg(long, env = "SHOP_PREFETCH", default_value_t = 16)]
    pub prefetch: u16,
    /// Times the broker may refuse an outbox row (unroutable, nacked) before the relay
    /// parks it in `outbox_parked`.
    #[arg(long, env = "SHOP_OUTBOX_MAX_ATTEMPTS", default_value_t = 10)]
    pub outbox_max_attempts: u32,
    /// Outbox polling interval when no notification arrives (ms).
    #[arg(long, env = "SHOP_OUTBOX_POLL_MS", default_value = "1000", value_parser = millis)]
    pub outbox_poll: Duration,

    /// Timeout of each downstream call of the summary (ms).
    #[arg(long, env = "SHOP_DOWNSTREAM_TIMEOUT_MS", default_value = "300", value_parser = millis)]
    pub downstream_timeout: Duration,
    /// How long a breaker stays open before letting a probe through (ms).
    #[arg(long, env = "SHOP_BREAKER_OPEN_MS", default_value = "5000", value_parser = millis)]
    pub breaker_open: Duration,
    #[arg(long, env = "SHOP_DOWNSTREAM_INVENTORY_URL")]
    pub inventory_url: Option<String>,
    #[arg(long, env = "SHOP_DOWNSTREAM_SHIPPING_URL")]
    pub shipping_url: Option<String>,
    #[arg(long, env = "SHOP_DOWNSTREAM_RECOMMENDATIONS_URL")]
    pub recommendations_url: Option<String>,

    /// Test hook: abort the process after this many committed messages, before their
    /// ack, to show that redelivered messages take effect once.
    #[arg(long, env = "SHOP_FAULT_ABORT_AFTER_COMMITS", hide = true)]
    pub abort_after_commits: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    Api,
    Relay,
    Worker,
}

impl Config {
    /// Embedded defaults (sled, in-process cache and limits) when no backend is set.
    pub fn embedded(&self) -> bool {
        self.database_url.is_none() && self.redis_url.is_none() && self.amqp_url.is_none()
    }

    /// The defaults on embedded storage in `data_dir`, for tests and tools.
    pub fn embedded_in(data_dir: &std::path::Path, prefix: &str) -> Self {
        let mut config = Self::for_backends("", "", "", prefix);
        config.database_url = None;
        config.redis_url = None;
        config.amqp_url = None;
        config.data_dir = data_dir.to_path_buf();
        config
    }

    pub fn runs(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// The defaults with the given backends, for tests and tools.
    pub fn for_backends(database_url: &str, redis_url: &str, amqp_url: &str, prefix: &str) -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: Config,
        }
        let mut config = Wrapper::parse_from(["shop"]).config;
        config.database_url = Some(database_url.into());
        config.redis_url = Some(redis_url.into());
        config.amqp_url = Some(amqp_url.into());
        config.prefix = prefix.into();
        config.listen = "127.0.0.1:0".parse().expect("literal address");
        config
    }
}
