//! Wiring: connects the backends, builds the shared state, starts the HTTP server,
//! the outbox relay, the workers and the downstream simulators, and stops them in
//! order.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use agent::{Agent, AgentBuilder, AgentGuard};
use anyhow::{bail, Context as _};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::Verifier;
use crate::cache::redis::Redis;
use crate::cache::{CacheSettings, LayeredCache, SharedCache};
use crate::config::{Config, Role};
use crate::downstream::fanout::{Downstream, Fanout};
use crate::downstream::simulator;
use crate::faults::FaultSwitch;
use crate::idempotency::embedded::SledIdempotency;
use crate::idempotency::redis::RedisIdempotency;
use crate::idempotency::IdempotencyStore;
use crate::messaging::embedded::SledBroker;
use crate::messaging::rabbitmq::{self, RabbitMq};
use crate::messaging::relay::Relay;
use crate::messaging::worker::Workers;
use crate::messaging::Broker;
use crate::metrics::PatternMetrics;
use crate::protection::breaker::{self, Breaker};
use crate::protection::rate_limit::{LocalRateLimiter, Policy, RateLimiter, RedisRateLimiter};
use crate::protection::shed::Limits;
use crate::store::{Catalog, Embedded, Orders, Outbox, Postgres, SideEffects};

/// Everything a handler may need; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub agent: Agent,
    pub verifier: Arc<Verifier>,
    pub catalog: Arc<dyn Catalog>,
    pub orders: Arc<dyn Orders>,
    pub cache: Arc<LayeredCache>,
    pub idempotency: Arc<dyn IdempotencyStore>,
    pub idempotency_lease: Duration,
    pub idempotency_retention: Duration,
    pub rate_limiter: Arc<dyn RateLimiter>,
    pub rate_policy: Policy,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub limits: Limits,
    pub metrics: PatternMetrics,
    pub faults: Arc<FaultSwitch>,
    pub fanout: Arc<Fanout>,
    pub backends: Arc<Backends>,
}

/// The backends, for readiness and shutdown.
pub enum Backends {
    Networked {
        postgres: Arc<Postgres>,
        redis: Redis,
        broker: Arc<RabbitMq>,
    },
    Embedded {
        store: Arc<Embedded>,
    },
}

async fn within(f: impl std::future::Future<Output = Result<(), String>>) -> Result<(), String> {
    tokio::time::timeout(Duration::from_secs(1), f)
        .await
        .unwrap_or_else(|_| Err("no answer within 1 s".into()))
}

impl Backends {
    pub async fn check(&self) -> Vec<(&'static str, Result<(), String>)> {
        match self {
            Backends::Networked {
                postgres,
                redis,
                broker,
            } => {
                let (pg, redis, mq) = tokio::join!(
                    within(async { postgres.ping().await.map_err(|e| e.to_string()) }),
                    within(async { redis.ping().await.map_err(|e| e.to_string()) }),
                    within(async {
                        match broker.healthy().await {
                            true => Ok(()),
                            false => Err("not connected".to_string()),
                        }
                    }),
                );
                vec![("postgresql", pg), ("redis", redis), ("rabbitmq", mq)]
            }
            Backends::Embedded { store } => {
                let sled = within(async {
                    store
                        .db()
                        .get("readiness")
                        .map(drop)
                        .map_err(|e| e.to_string())
                })
                .await;
                vec![("sled", sled)]
            }
        }
    }

    async fn close(&self) {
        match self {
            Backends::Networked { postgres, .. } => postgres.close().await,
            Backends::Embedded { store } => {
                if let Err(e) = store.flush().await {
                    tracing::error!(error = %e, "flushing the embedded storage failed");
                }
            }
        }
    }
}

/// Where each kind of state lives in this process.
struct Storage {
    catalog: Arc<dyn Catalog>,
    orders: Arc<dyn Orders>,
    outbox: Arc<dyn Outbox>,
    effects: Arc<dyn SideEffects>,
    idempotency: Arc<dyn IdempotencyStore>,
    rate_limiter: Arc<dyn RateLimiter>,
    shared_cache: Option<Arc<dyn SharedCache>>,
    broker: Arc<dyn Broker>,
    backends: Backends,
}

impl Storage {
    async fn networked(config: &Config, agent: &Agent) -> anyhow::Result<Storage> {
        let (Some(database_url), Some(redis_url), Some(amqp_url)) =
            (&config.database_url, &config.redis_url, &config.amqp_url)
        else {
            bail!("set all of DATABASE_URL, REDIS_URL and AMQP_URL, or none of them for embedded storage");
        };
        let postgres = Arc::new(
            Postgres::connect(
                database_url,
                config.db_max_connections,
                config.db_statement_timeout,
                agent.clone(),
            )
            .await
            .context("connecting to PostgreSQL and applying migrations")?,
        );
        let redis = Redis::connect(
            redis_url,
            &config.prefix,
            config.redis_timeout,
            agent.clone(),
        )
        .await
        .context("connecting to Redis")?;
        let broker = Arc::new(
            RabbitMq::connect(rabbitmq::Settings {
                url: amqp_url.clone(),
                prefix: config.prefix.clone(),
                max_attempts: config.max_attempts.max(1),
                retry_base: config.retry_base,
                prefetch: config.prefetch,
            })
            .await
            .context("connecting to RabbitMQ and declaring the queues")?,
        );
        Ok(Storage {
            catalog: postgres.clone(),
            orders: postgres.clone(),
            outbox: postgres.clone(),
            effects: postgres.clone(),
            idempotency: Arc::new(RedisIdempotency::new(redis.clone())),
            rate_limiter: Arc::new(RedisRateLimiter::new(redis.clone())),
            shared_cache: Some(Arc::new(redis.clone())),
            broker: broker.clone(),
            backends: Backends::Networked {
                postgres,
                redis,
                broker,
            },
        })
    }

    /// One process on local disk: sled for every durable thing, the in-process cache
    /// as the only cache layer, the rate limit in memory.
    fn embedded(config: &Config) -> anyhow::Result<Storage> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating {}", config.data_dir.display()))?;
        let store = Arc::new(Embedded::open(&config.data_dir).with_context(|| {
            format!(
                "opening the embedded storage in {} (is another shop using it?)",
                config.data_dir.display()
            )
        })?);
        let broker = Arc::new(SledBroker::open(
            store.db().clone(),
            &config.prefix,
            config.retry_base,
            config.prefetch,
        )?);
        Ok(Storage {
            catalog: store.clone(),
            orders: store.clone(),
            outbox: store.clone(),
            effects: store.clone(),
            idempotency: Arc::new(SledIdempotency::open(store.db())?),
            rate_limiter: Arc::new(LocalRateLimiter::new()),
            shared_cache: None,
            broker,
            backends: Backends::Embedded { store },
        })
    }
}

/// Makes the agent of each downstream simulator (its own service name in traces).
pub type AgentFactory = Arc<dyn Fn(&'static str) -> AgentBuilder + Send + Sync>;

/// A running shop.
pub struct Shop {
    pub addr: SocketAddr,
    pub faults: Arc<FaultSwitch>,
    pub broker: Arc<dyn Broker>,
    backends: Arc<Backends>,
    stop: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
    background: Vec<JoinHandle<()>>,
    downstream_agents: Vec<AgentGuard>,
}

impl Shop {
    pub async fn start(
        config: Config,
        agent: Agent,
        downstream_agent: AgentFactory,
    ) -> anyhow::Result<Shop> {
        let metrics = PatternMetrics::new(&agent);
        let faults = Arc::new(FaultSwitch::default());
        let verifier = Verifier::from_config(&config)?;
        let storage = if config.embedded() {
            tracing::info!(data_dir = %config.data_dir.display(), "no backend URLs: running on embedded storage");
            Storage::embedded(&config)?
        } else {
            Storage::networked(&config, &agent).await?
        };
        let backends = Arc::new(storage.backends);

        let stop = CancellationToken::new();
        let mut background = Vec::new();
        let mut downstream_agents = Vec::new();
        let mut services = Vec::new();
        for (name, url) in simulator::NAMES.into_iter().zip([
            &config.inventory_url,
            &config.shipping_url,
            &config.recommendations_url,
        ]) {
            let base_url = match url {
                Some(url) => url.clone(),
                None => {
                    let listener = TcpListener::bind("127.0.0.1:0").await?;
                    let url = format!("http://{}", listener.local_addr()?);
                    let guard = downstream_agent(name)
                        .start()
                        .context("starting a simulator's agent")?;
                    let (faults, agent, stop) =
                        (faults.clone(), guard.agent().clone(), stop.clone());
                    background.push(tokio::spawn(async move {
                        if let Err(e) = simulator::serve(name, listener, faults, agent, async move { stop.cancelled().await }).await {
                            tracing::error!(error = %e, service = name, "downstream simulator failed");
                        }
                    }));
                    downstream_agents.push(guard);
                    url
                }
            };
            services.push(Downstream {
                name,
                base_url,
                breaker: Breaker::new(
                    name,
                    breaker::Settings::with_open_for(config.breaker_open),
                    metrics.breaker_state.clone(),
                    metrics.breaker_rejections.clone(),
                ),
            });
        }

        let cache = Arc::new(LayeredCache::new(
            CacheSettings {
                ttl: config.cache_ttl,
                negative_ttl: config.negative_ttl,
                capacity: config.cache_capacity,
                lock_wait: Duration::from_millis(500),
            },
            storage.shared_cache,
            faults.clone(),
            metrics.clone(),
        ));
        let state = AppState {
            agent: agent.clone(),
            verifier: Arc::new(verifier),
            catalog: storage.catalog,
            orders: storage.orders,
            cache,
            idempotency: storage.idempotency,
            // A handler cannot outlive the request deadline, so its claim cannot
            // expire while it still runs.
            idempotency_lease: config.request_timeout + Duration::from_secs(5),
            idempotency_retention: config.idempotency_retention,
            rate_limiter: storage.rate_limiter,
            rate_policy: Policy {
                per_second: config.rate_limit_per_second,
                burst: config.rate_limit_burst.max(1),
            },
            trusted_proxies: config.trusted_proxies.clone(),
            limits: Limits {
                in_flight: Arc::new(Semaphore::new(config.max_concurrency.max(1))),
                request_timeout: config.request_timeout,
            },
            metrics: metrics.clone(),
            faults: faults.clone(),
            fanout: Arc::new(Fanout::new(services, config.downstream_timeout)),
            backends: backends.clone(),
        };

        if config.runs(Role::Relay) {
            let relay = Relay {
                outbox: storage.outbox,
                broker: storage.broker.clone(),
                agent: agent.clone(),
                metrics: metrics.clone(),
                poll: config.outbox_poll,
                max_attempts: config.outbox_max_attempts.max(1),
            };
            background.push(tokio::spawn(relay.run(stop.clone())));
        }
        if config.runs(Role::Worker) {
            let workers = Workers {
                broker: storage.broker.clone(),
                effects: storage.effects,
                agent: agent.clone(),
                metrics: metrics.clone(),
                max_attempts: config.max_attempts.max(1),
                concurrency: config.prefetch.max(1) as usize,
                abort_after_commits: config.abort_after_commits,
                commits: Arc::new(AtomicU64::new(0)),
            };
            background.push(tokio::spawn(workers.run(stop.clone())));
        }

        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        let app = crate::api::router(state, config.runs(Role::Api));
        let server_stop = stop.clone();
        let server = tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move { server_stop.cancelled().await })
            .await
        });
        tracing::info!(%addr, roles = ?config.roles, "shop started");
        Ok(Shop {
            addr,
            faults,
            broker: storage.broker,
            backends,
            stop,
            server,
            background,
            downstream_agents,
        })
    }

    /// Stops taking requests, lets those in flight finish, stops the relay and the
    /// workers (unacknowledged messages go back to the broker), closes the pool.
    pub async fn shutdown(self) {
        self.stop.cancel();
        match tokio::time::timeout(Duration::from_secs(10), self.server).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP server ended with an error"),
            Err(_) => tracing::warn!("requests still running after 10 s; leaving them"),
            _ => {}
        }
        for task in self.background {
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                tracing::warn!("a background task did not stop within 5 s");
            }
        }
        self.backends.close().await;
        for guard in self.downstream_agents {
            let _ = guard.shutdown_async().await;
        }
        tracing::info!("shop stopped");
    }
}
