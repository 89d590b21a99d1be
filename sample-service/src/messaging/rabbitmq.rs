//! The broker on RabbitMQ (lapin).
//!
//! Topology, for prefix `p`:
//! - `p.work` (direct) → quorum queues `p.payment`, `p.email`, `p.sms`, with
//!   `x-delivery-limit` so a message that crashes its consumer again and again is
//!   dead-lettered by the broker itself;
//! - delay queues `p.<queue>.retry.<n>`: a message waits its TTL there, then is
//!   dead-lettered back to `p.work` for attempt n + 1 (one queue per delay, because a
//!   queue only expires messages at its head);
//! - `p.dead` (fanout) → `p.dead`: the dead-letter queue.
//!
//! Publishing uses publisher confirms and `mandatory`: a message the broker could not
//! route comes back and counts as a failure, not as sent.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::Mutex;

use super::{retry_delay, Broker, BrokerError, Deliveries, Delivery, Wire, ATTEMPT_HEADER};
use crate::store::{EventType, OutboxMessage};

const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct Settings {
    pub url: String,
    pub prefix: String,
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub prefetch: u16,
}

pub struct RabbitMq {
    settings: Settings,
    /// Host and port from the URL, for the spans.
    server: Option<(String, u16)>,
    connection: Mutex<Option<Connection>>,
    publisher: Mutex<Option<Channel>>,
}

fn broker(e: lapin::Error) -> BrokerError {
    BrokerError::Broker(e.to_string())
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.to_string()))
}

fn headers_of(properties: &BasicProperties) -> HashMap<String, String> {
    let mut out = HashMap::new();
    if let Some(t) = properties.headers() {
        for (k, v) in t.inner() {
            let value = match v {
                AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                AMQPValue::ShortString(s) => s.as_str().to_string(),
                AMQPValue::LongLongInt(i) => i.to_string(),
                AMQPValue::LongInt(i) => i.to_string(),
                _ => continue,
            };
            out.insert(k.as_str().to_string(), value);
        }
    }
    out
}

fn properties(message_id: &str, headers: &HashMap<String, String>) -> BasicProperties {
    let mut t = FieldTable::default();
    for (k, v) in headers {
        t.insert(ShortString::from(k.as_str()), long(v));
    }
    BasicProperties::default()
        .with_message_id(ShortString::from(message_id))
        .with_content_type(ShortString::from("application/json"))
        .with_delivery_mode(2)
        .with_headers(t)
}

impl RabbitMq {
    /// Connects and declares the topology (idempotent; every replica does it).
    pub async fn connect(settings: Settings) -> Result<RabbitMq, BrokerError> {
        // AMQP URLs parse as URLs; 5672 is AMQP's port when none is given.
        let server = reqwest::Url::parse(&settings.url).ok().and_then(|u| {
            let host = u.host_str()?.to_owned();
            Some((host, u.port().unwrap_or(5672)))
        });
        let rabbit = RabbitMq {
            settings,
            server,
            connection: Mutex::new(None),
            publisher: Mutex::new(None),
        };
        let channel = rabbit.channel().await?;
        rabbit.declare(&channel).await?;
        Ok(rabbit)
    }

    fn name(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.settings.prefix)
    }

    fn retry_queue(&self, queue: EventType, level: u32) -> String {
        self.name(&format!("{}.retry.{level}", queue.as_str()))
    }

    /// A new channel on the shared connection, reconnecting if it was lost.
    async fn channel(&self) -> Result<Channel, BrokerError> {
        let mut guard = self.connection.lock().await;
        if let Some(c) = guard.as_ref() {
            if c.status().connected() {
                return c.create_channel().await.map_err(broker);
            }
        }
        let properties = ConnectionProperties::default()
            .with_executor(tokio_executor_trait::Tokio::current())
            .with_reactor(tokio_reactor_trait::Tokio::current());
        let connection = tokio::time::timeout(
            Duration::from_secs(5),
            Connection::connect(&self.settings.url, properties),
        )
        .await
        .map_err(|_| BrokerError::Timeout(Duration::from_secs(5)))?
        .map_err(broker)?;
        let channel = connection.create_channel().await.map_err(broker)?;
        *guard = Some(connection);
        Ok(channel)
    }

    async fn declare(&self, ch: &Channel) -> Result<(), BrokerError> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let work = self.name("work");
        let dead = self.name("dead");
        for (exchange, kind) in [(&work, ExchangeKind::Direct), (&dead, ExchangeKind::Fanout)] {
            ch.exchange_declare(
                exchange,
                kind,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(broker)?;
        }
        ch.queue_declare(&dead, durable, table(&[("x-queue-type", long("quorum"))]))
            .await
            .map_err(broker)?;
        ch.queue_bind(
            &dead,
            &dead,
            "",
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(broker)?;
        let delivery_limit = (self.settings.max_attempts as i64 * 2).max(4);
        for queue in EventType::ALL {
            let name = self.name(queue.as_str());
            ch.queue_declare(
                &name,
                durable,
                table(&[
                    ("x-queue-type", long("quorum")),
                    ("x-delivery-limit", AMQPValue::LongLongInt(delivery_limit)),
                    ("x-dead-letter-exchange", long(&dead)),
                ]),
            )
            .await
            .map_err(broker)?;
            ch.queue_bind(
                &name,
                &work,
                queue.as_str(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(broker)?;
            for level in 1..self.settings.max_attempts {
                let ttl = retry_delay(self.settings.retry_base, level).as_millis() as i64;
                ch.queue_declare(
                    &self.retry_queue(queue, level),
                    durable,
                    table(&[
                        ("x-message-ttl", AMQPValue::LongLongInt(ttl)),
                        ("x-dead-letter-exchange", long(&work)),
                        ("x-dead-letter-routing-key", long(queue.as_str())),
                    ]),
                )
                .await
                .map_err(broker)?;
            }
        }
        Ok(())
    }

    /// Deletes every queue and exchange of this prefix (tests clean up with it).
    pub async fn delete_topology(&self) -> Result<(), BrokerError> {
        let ch = self.channel().await?;
        let mut queues = vec![self.name("dead")];
        for queue in EventType::ALL {
            queues.push(self.name(queue.as_str()));
            for level in 1..self.settings.max_attempts {
                queues.push(self.retry_queue(queue, level));
            }
        }
        for q in queues {
            ch.queue_delete(&q, QueueDeleteOptions::default())
                .await
                .map_err(broker)?;
        }
        for e in [self.name("work"), self.name("dead")] {
            ch.exchange_delete(&e, Default::default())
                .await
                .map_err(broker)?;
        }
        Ok(())
    }

    async fn dead_letters_waiting(&self) -> Result<u32, BrokerError> {
        let ch = self.channel().await?;
        let q = ch
            .queue_declare(
                &self.name("dead"),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(broker)?;
        Ok(q.message_count())
    }

    async fn publisher(&self) -> Result<Channel, BrokerError> {
        let mut guard = self.publisher.lock().await;
        if let Some(ch) = guard.as_ref() {
            if ch.status().connected() {
                return Ok(ch.clone());
            }
        }
        let ch = self.channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(broker)?;
        *guard = Some(ch.clone());
        Ok(ch)
    }

    /// Publishes and waits for the confirmation.
    async fn publish_confirmed(
        ch: &Channel,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), BrokerError> {
        let options = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let confirm = async {
            let confirmation = ch
                .basic_publish(exchange, routing_key, options, body, props)
                .await
                .map_err(broker)?
                .await
                .map_err(broker)?;
            match confirmation {
                Confirmation::Ack(None) => Ok(()),
                Confirmation::Ack(Some(returned)) => Err(BrokerError::Refused(format!(
                    "unroutable: {}",
                    returned.reply_text.as_str()
                ))),
                Confirmation::Nack(_) => Err(BrokerError::Refused("nacked".into())),
                Confirmation::NotRequested => Err(BrokerError::Broker("confirms are off".into())),
            }
        };
        tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
            .await
            .map_err(|_| BrokerError::Timeout(CONFIRM_TIMEOUT))?
    }
}

#[async_trait]
impl Broker for RabbitMq {
    async fn publish_batch(
        &self,
        batch: &[(OutboxMessage, HashMap<String, String>)],
    ) -> Vec<Result<(), BrokerError>> {
        let ch = match self.publisher().await {
            Ok(ch) => ch,
            Err(e) => {
                return batch
                    .iter()
                    .map(|_| Err(BrokerError::Broker(e.to_string())))
                    .collect()
            }
        };
        let work = self.name("work");
        // All in flight at once: one round trip of confirms for the batch.
        let publishes = batch.iter().map(|(m, headers)| {
            let mut headers = headers.clone();
            headers.insert(ATTEMPT_HEADER.into(), "1".into());
            let body = serde_json::to_vec(&Wire::of(m)).unwrap_or_default();
            let ch = ch.clone();
            let work = work.clone();
            let id = m.id.to_string();
            let key = m.event_type.as_str();
            async move {
                Self::publish_confirmed(&ch, &work, key, &body, properties(&id, &headers)).await
            }
        });
        futures::future::join_all(publishes).await
    }

    async fn consume(&self, queue: EventType) -> Result<Deliveries, BrokerError> {
        let ch = self.channel().await?;
        ch.basic_qos(self.settings.prefetch, BasicQosOptions::default())
            .await
            .map_err(broker)?;
        let name = self.name(queue.as_str());
        let consumer = ch
            .basic_consume(
                &name,
                &format!("{name}-{}", uuid::Uuid::new_v4()),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(broker)?;
        let publisher = self.publisher().await?;
        let retry_queues: Vec<String> = (1..self.settings.max_attempts)
            .map(|level| self.retry_queue(queue, level))
            .collect();
        let dead = self.name("dead");
        let stream = consumer.map(move |delivery| {
            let channel = ch.clone();
            let delivery = delivery.map_err(broker)?;
            let headers = headers_of(&delivery.properties);
            let attempt = headers
                .get(ATTEMPT_HEADER)
                .and_then(|a| a.parse().ok())
                .unwrap_or(1);
            let decoded = serde_json::from_slice::<Wire>(&delivery.data)
                .map(|w| w.into_message(headers.clone()))
                .map_err(|e| e.to_string());
            Ok(Box::new(RabbitDelivery {
                delivery,
                decoded,
                headers,
                attempt,
                channel,
                publisher: publisher.clone(),
                retry_queues: retry_queues.clone(),
                dead: dead.clone(),
            }) as Box<dyn Delivery>)
        });
        Ok(stream.boxed())
    }

    fn queue_name(&self, queue: EventType) -> String {
        self.name(queue.as_str())
    }

    fn server(&self) -> Option<(&str, u16)> {
        self.server.as_ref().map(|(h, p)| (h.as_str(), *p))
    }

    async fn healthy(&self) -> bool {
        let guard = self.connection.lock().await;
        guard.as_ref().is_some_and(|c| c.status().connected())
    }

    async fn dead_letter_count(&self) -> Result<u64, BrokerError> {
        self.dead_letters_waiting().await.map(u64::from)
    }
}

struct RabbitDelivery {
    delivery: lapin::message::Delivery,
    /// The decoded message, or why it could not be decoded (such a message is
    /// dead-lettered at once: retrying cannot fix it).
    decoded: Result<OutboxMessage, String>,
    headers: HashMap<String, String>,
    attempt: u32,
    /// The consumer's channel, closed when a delivery cannot even be handed back.
    channel: Channel,
    publisher: Channel,
    retry_queues: Vec<String>,
    dead: String,
}

impl RabbitDelivery {
    /// Back to the queue for redelivery (the queue's delivery limit still counts it).
    /// lapin does not nack a dropped delivery, so this is the only way back short of
    /// closing the channel — which is what happens when the nack fails: the broker
    /// then requeues everything the channel held, and the worker consumes anew.
    async fn give_back(&self) {
        let requeue = BasicNackOptions {
            requeue: true,
            ..Default::default()
        };
        if let Err(e) = self.delivery.nack(requeue).await {
            tracing::warn!(error = %e, "nack failed; closing the consumer's channel");
            if let Err(e) = self
                .channel
                .close(200, "a delivery could not be settled")
                .await
            {
                tracing::warn!(error = %e, "closing the consumer's channel failed");
            }
        }
    }

    /// Acknowledges, or hands the delivery back when the acknowledgement fails.
    async fn ack_or_give_back(&self) -> Result<(), BrokerError> {
        if let Err(e) = self.delivery.ack(BasicAckOptions::default()).await {
            self.give_back().await;
            return Err(broker(e));
        }
        Ok(())
    }

    async fn forward(
        self: Box<Self>,
        exchange: &str,
        routing_key: &str,
        attempt: u32,
        extra: &[(&str, String)],
    ) -> Result<(), BrokerError> {
        let mut headers = self.headers.clone();
        headers.insert(ATTEMPT_HEADER.into(), attempt.to_string());
        for (k, v) in extra {
            headers.insert((*k).into(), v.clone());
        }
        let id = self
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default();
        // Copy first, then ack: a crash between the two duplicates the message, which
        // the consumers' dedup absorbs; the other order could lose it.
        if let Err(e) = RabbitMq::publish_confirmed(
            &self.publisher,
            exchange,
            routing_key,
            &self.delivery.data,
            properties(&id, &headers),
        )
        .await
        {
            self.give_back().await;
            return Err(e);
        }
        self.ack_or_give_back().await
    }
}

#[async_trait]
impl Delivery for RabbitDelivery {
    fn message(&self) -> Result<&OutboxMessage, &str> {
        self.decoded.as_ref().map_err(String::as_str)
    }

    fn attempt(&self) -> u32 {
        self.attempt
    }

    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        self.ack_or_give_back().await
    }

    async fn abandon(self: Box<Self>) {
        self.give_back().await;
    }

    async fn retry(self: Box<Self>, level: u32) -> Result<(), BrokerError> {
        let index = (level.max(1) as usize - 1).min(self.retry_queues.len().saturating_sub(1));
        let Some(queue) = self.retry_queues.get(index).cloned() else {
            self.give_back().await;
            return Err(BrokerError::Broker(
                "no retry queues (max attempts is 1)".into(),
            ));
        };
        let next = self.attempt + 1;
        self.forward("", &queue, next, &[]).await
    }

    async fn dead_letter(self: Box<Self>, reason: &str) -> Result<(), BrokerError> {
        let dead = self.dead.clone();
        let attempt = self.attempt;
        self.forward(
            &dead,
            "",
            attempt,
            &[("x-shop-dead-reason", reason.to_string())],
        )
        .await
    }
}
