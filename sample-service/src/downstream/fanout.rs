//! Calls the three downstream services at once: the summary takes as long as the
//! slowest call, not the sum. Each call has its own timeout and circuit breaker, and
//! a failed part degrades the summary instead of failing it.

use std::time::Duration;

use agent::{Agent, SendTraced};
use serde_json::{json, Value};

use crate::protection::breaker::Breaker;

pub struct Downstream {
    pub name: &'static str,
    pub base_url: String,
    pub breaker: Breaker,
}

pub struct Fanout {
    client: reqwest::Client,
    timeout: Duration,
    pub services: Vec<Downstream>,
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Open(#[from] crate::protection::breaker::Open),
    #[error("{0} did not answer within {1} ms")]
    Timeout(&'static str, u128),
    #[error("{0}: {1}")]
    Failed(&'static str, String),
}

impl Fanout {
    pub fn new(services: Vec<Downstream>, timeout: Duration) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(timeout)
            .pool_max_idle_per_host(64)
            .build()
            .expect("reqwest client with default TLS settings");
        Fanout {
            client,
            timeout,
            services,
        }
    }

    async fn call(
        &self,
        agent: &Agent,
        d: &Downstream,
        order_id: &str,
    ) -> Result<Value, CallError> {
        let permit = d.breaker.try_acquire()?;
        let url = format!("{}/{}/{order_id}", d.base_url.trim_end_matches('/'), d.name);
        let request = self
            .client
            .get(url)
            .timeout(self.timeout)
            .send_traced_to(agent, d.name);
        let result = match tokio::time::timeout(self.timeout, request).await {
            Err(_) => Err(CallError::Timeout(d.name, self.timeout.as_millis())),
            Ok(Err(e)) if e.is_timeout() => {
                Err(CallError::Timeout(d.name, self.timeout.as_millis()))
            }
            Ok(Err(e)) => Err(CallError::Failed(d.name, e.to_string())),
            Ok(Ok(r)) if !r.status().is_success() => Err(CallError::Failed(
                d.name,
                format!("answered {}", r.status()),
            )),
            Ok(Ok(r)) => r
                .json::<Value>()
                .await
                .map_err(|e| CallError::Failed(d.name, e.to_string())),
        };
        permit.record(result.is_ok());
        result
    }

    /// `{"inventory": …, "shipping": …, "recommendations": …, "degraded": [names]}`.
    pub async fn summary(&self, agent: &Agent, order_id: &str) -> Value {
        let calls = self.services.iter().map(|d| self.call(agent, d, order_id));
        let results = futures::future::join_all(calls).await;
        let mut out = serde_json::Map::new();
        let mut degraded = Vec::new();
        for (d, result) in self.services.iter().zip(results) {
            match result {
                Ok(v) => {
                    out.insert(d.name.to_string(), v);
                }
                Err(e) => {
                    tracing::warn!(dependency = d.name, error = %e, "summary part unavailable");
                    out.insert(d.name.to_string(), json!({"error": e.to_string()}));
                    degraded.push(d.name);
                }
            }
        }
        out.insert("degraded".into(), json!(degraded));
        Value::Object(out)
    }
}
