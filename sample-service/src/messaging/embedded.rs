//! Work queues on sled, for one process without RabbitMQ: the same contract as the
//! broker — a message stays stored until acknowledged (a crash redelivers it after
//! the restart), a retry waits its delay, the last failure parks it in a dead-letter
//! tree.
//!
//! Each queue is a tree keyed by `ready_at_ms ‖ sequence`, so the next due message is
//! the first key; messages being handled are kept out of other deliveries in memory.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, Transactional};
use sled::{IVec, Tree};
use tokio::sync::Notify;

use super::{retry_delay, Broker, BrokerError, Deliveries, Delivery, Wire};
use crate::store::{EventType, OutboxMessage};

#[derive(Serialize, Deserialize)]
struct Stored {
    wire: Wire,
    headers: HashMap<String, String>,
    attempt: u32,
}

struct Queue {
    tree: Tree,
    ready: Notify,
    in_flight: Mutex<HashSet<IVec>>,
}

pub struct SledBroker {
    db: sled::Db,
    prefix: String,
    queues: HashMap<EventType, Arc<Queue>>,
    dead: Tree,
    retry_base: Duration,
    prefetch: usize,
}

fn broker(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Broker(e.to_string())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl SledBroker {
    pub fn open(
        db: sled::Db,
        prefix: &str,
        retry_base: Duration,
        prefetch: u16,
    ) -> Result<SledBroker, BrokerError> {
        let mut queues = HashMap::new();
        for q in EventType::ALL {
            let tree = db
                .open_tree(format!("queue.{}", q.as_str()))
                .map_err(broker)?;
            queues.insert(
                q,
                Arc::new(Queue {
                    tree,
                    ready: Notify::new(),
                    in_flight: Mutex::new(HashSet::new()),
                }),
            );
        }
        Ok(SledBroker {
            dead: db.open_tree("queue.dead").map_err(broker)?,
            db,
            prefix: prefix.to_string(),
            queues,
            retry_base,
            prefetch: prefetch.max(1) as usize,
        })
    }

    fn key(&self, ready_at_ms: u64) -> Result<Vec<u8>, BrokerError> {
        let seq = self.db.generate_id().map_err(broker)?;
        Ok([ready_at_ms.to_be_bytes(), seq.to_be_bytes()].concat())
    }
}

/// The next due message not already being handled, or how long until one is due.
fn next_due(queue: &Queue) -> Result<Result<(IVec, IVec), Option<u64>>, BrokerError> {
    let now = now_ms();
    let mut in_flight = queue.in_flight.lock().unwrap_or_else(|e| e.into_inner());
    for entry in queue.tree.iter() {
        let (k, v) = entry.map_err(broker)?;
        let ready_at = u64::from_be_bytes(k[..8].try_into().map_err(broker)?);
        if ready_at > now {
            return Ok(Err(Some(ready_at - now)));
        }
        if in_flight.insert(k.clone()) {
            return Ok(Ok((k, v)));
        }
    }
    Ok(Err(None))
}

#[async_trait]
impl Broker for SledBroker {
    async fn publish_batch(
        &self,
        batch: &[(OutboxMessage, HashMap<String, String>)],
    ) -> Vec<Result<(), BrokerError>> {
        let now = now_ms();
        let results: Vec<_> = batch
            .iter()
            .map(|(m, headers)| {
                let stored = Stored {
                    wire: Wire::of(m),
                    headers: headers.clone(),
                    attempt: 1,
                };
                let queue = &self.queues[&m.event_type];
                let key = self.key(now)?;
                let value = serde_json::to_vec(&stored).map_err(broker)?;
                queue.tree.insert(key, value).map_err(broker).map(drop)
            })
            .collect();
        // Stored for good before the relay marks the rows published.
        if let Err(e) = crate::store::flush(&self.db).await {
            return batch.iter().map(|_| Err(broker(&e))).collect();
        }
        for q in self.queues.values() {
            q.ready.notify_waiters();
        }
        results
    }

    async fn consume(&self, queue: EventType) -> Result<Deliveries, BrokerError> {
        let q = self.queues[&queue].clone();
        let (tx, rx) =
            tokio::sync::mpsc::channel::<Result<Box<dyn Delivery>, BrokerError>>(self.prefetch);
        let dead = self.dead.clone();
        let retry_base = self.retry_base;
        let db = self.db.clone();
        tokio::spawn(async move {
            loop {
                // At most `prefetch` unsettled deliveries, like a broker's QoS.
                let permit = match tx.clone().reserve_owned().await {
                    Ok(p) => p,
                    Err(_) => return, // the consumer is gone
                };
                let found = loop {
                    let notified = q.ready.notified();
                    match next_due(&q) {
                        Ok(Ok(found)) => break Ok(found),
                        Ok(Err(wait)) => {
                            let wait = Duration::from_millis(wait.unwrap_or(200).clamp(5, 200));
                            let _ = tokio::time::timeout(wait, notified).await;
                        }
                        Err(e) => break Err(e),
                    }
                    if tx.is_closed() {
                        return;
                    }
                };
                let delivery = found.map(|(key, value)| {
                    let stored: Result<Stored, String> =
                        serde_json::from_slice(&value).map_err(|e| e.to_string());
                    let (decoded, attempt, headers) = match stored {
                        Ok(s) => {
                            let headers = s.headers.clone();
                            (Ok(s.wire.into_message(s.headers)), s.attempt, headers)
                        }
                        Err(e) => (Err(e), 1, HashMap::new()),
                    };
                    Box::new(SledDelivery {
                        queue: q.clone(),
                        queue_kind: queue,
                        key,
                        raw: value,
                        decoded,
                        headers,
                        attempt,
                        dead: dead.clone(),
                        db: db.clone(),
                        retry_base,
                        settled: false,
                    }) as Box<dyn Delivery>
                });
                permit.send(delivery);
            }
        });
        Ok(tokio_stream_from(rx))
    }

    fn queue_name(&self, queue: EventType) -> String {
        format!("{}.{}", self.prefix, queue.as_str())
    }

    async fn healthy(&self) -> bool {
        true
    }

    async fn dead_letter_count(&self) -> Result<u64, BrokerError> {
        Ok(self.dead.len() as u64)
    }
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Box<dyn Delivery>, BrokerError>>,
) -> Deliveries {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

struct SledDelivery {
    queue: Arc<Queue>,
    queue_kind: EventType,
    key: IVec,
    raw: IVec,
    decoded: Result<OutboxMessage, String>,
    headers: HashMap<String, String>,
    attempt: u32,
    dead: Tree,
    db: sled::Db,
    retry_base: Duration,
    settled: bool,
}

impl SledDelivery {
    /// Removes the message and, in the same transaction, stores what replaces it.
    fn settle(
        &mut self,
        replacement: Option<(&Tree, Vec<u8>, Vec<u8>)>,
    ) -> Result<(), BrokerError> {
        match replacement {
            None => {
                self.queue.tree.remove(&self.key).map_err(broker)?;
            }
            Some((target, key, value)) => {
                (&self.queue.tree, target)
                    .transaction(|(from, to)| {
                        from.remove(&self.key)?;
                        to.insert(key.as_slice(), value.as_slice())?;
                        Ok::<_, ConflictableTransactionError<()>>(())
                    })
                    .map_err(|e| broker(format!("{e:?}")))?;
            }
        }
        self.settled = true;
        self.queue
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
        Ok(())
    }

    fn copy(&self, attempt: u32, extra: Option<(&str, &str)>) -> Result<Vec<u8>, BrokerError> {
        let mut headers = self.headers.clone();
        if let Some((k, v)) = extra {
            headers.insert(k.into(), v.into());
        }
        match &self.decoded {
            Ok(m) => serde_json::to_vec(&Stored {
                wire: Wire::of(m),
                headers,
                attempt,
            })
            .map_err(broker),
            // Undecodable: park the bytes as they came.
            Err(_) => Ok(self.raw.to_vec()),
        }
    }
}

impl Drop for SledDelivery {
    /// Dropped unsettled (its worker stopped): deliverable again at once.
    fn drop(&mut self) {
        if !self.settled {
            self.queue
                .in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&self.key);
            self.queue.ready.notify_waiters();
        }
    }
}

#[async_trait]
impl Delivery for SledDelivery {
    fn message(&self) -> Result<&OutboxMessage, &str> {
        self.decoded.as_ref().map_err(String::as_str)
    }

    fn attempt(&self) -> u32 {
        self.attempt
    }

    async fn ack(mut self: Box<Self>) -> Result<(), BrokerError> {
        self.settle(None)
    }

    async fn retry(mut self: Box<Self>, level: u32) -> Result<(), BrokerError> {
        let ready_at = now_ms() + retry_delay(self.retry_base, level.max(1)).as_millis() as u64;
        let seq = self.db.generate_id().map_err(broker)?;
        let key = [ready_at.to_be_bytes(), seq.to_be_bytes()].concat();
        let value = self.copy(self.attempt + 1, None)?;
        let tree = self.queue.tree.clone();
        self.settle(Some((&tree, key, value)))?;
        crate::store::flush(&self.db).await.map_err(broker)
    }

    async fn abandon(self: Box<Self>) {
        // Dropped unsettled: deliverable again at once (see Drop).
    }

    async fn dead_letter(mut self: Box<Self>, reason: &str) -> Result<(), BrokerError> {
        let seq = self.db.generate_id().map_err(broker)?;
        let key = [
            self.queue_kind.as_str().as_bytes(),
            &[0],
            &seq.to_be_bytes(),
        ]
        .concat();
        let value = self.copy(self.attempt, Some(("x-shop-dead-reason", reason)))?;
        let dead = self.dead.clone();
        self.settle(Some((&dead, key, value)))?;
        crate::store::flush(&self.db).await.map_err(broker)
    }
}
