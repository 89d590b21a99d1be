//! The bytes of requests in flight, bounded across both receivers, and the deadline
//! for reading one request body.
//!
//! A request pays for its body as the bytes arrive (and again for what gzip inflates
//! them to), not for what its `Content-Length` announces: a client that announces
//! 15 MB and trickles holds only what it has sent, until the body deadline closes it.
//! What a request paid is held until its answer is ready (decoding and mapping work
//! on those bytes) and then released. When the budget is spent a request waits at
//! most `wait` for bytes to come free, then is refused with 429 /
//! RESOURCE_EXHAUSTED and a `Retry-After`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures::FutureExt;
use http_body::{Body, Frame, SizeHint};
use thiserror::Error;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

use crate::otlp::IngestError;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Paying = Pin<Box<dyn Future<Output = Result<(), BodyError>> + Send>>;

/// The shared budget of request bytes in flight.
pub struct RequestBudget {
    permits: Arc<Semaphore>,
    total: usize,
    wait: Duration,
}

impl RequestBudget {
    pub fn new(total: usize, wait: Duration) -> RequestBudget {
        let total = total.min(Semaphore::MAX_PERMITS);
        RequestBudget {
            permits: Arc::new(Semaphore::new(total)),
            total,
            wait,
        }
    }

    /// Bytes paid for by requests not yet answered.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.total - self.permits.available_permits()
    }
}

/// Why reading a body stopped short; what the receivers turn into an answer.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum BodyError {
    #[error(
        "the request body was not received within {}s (receivers.request_body_timeout_ms)",
        .0.as_secs_f64()
    )]
    TimedOut(Duration),
    #[error(
        "the collector is holding its budget of {budget} bytes of requests in flight \
         (receivers.max_inflight_request_bytes) and none came free within {wait_ms} ms; \
         retry later"
    )]
    OverBudget { budget: usize, wait_ms: u64 },
    #[error("could not read the request body: {0}")]
    Read(String),
}

impl From<BodyError> for IngestError {
    fn from(e: BodyError) -> IngestError {
        match e {
            BodyError::TimedOut(_) => IngestError::TimedOut(e.to_string()),
            BodyError::OverBudget { .. } => IngestError::Overloaded {
                message: e.to_string(),
                retry_after: Duration::from_secs(1),
            },
            BodyError::Read(_) => IngestError::Malformed(e.to_string()),
        }
    }
}

/// What one request has paid; released when the last clone is dropped. The body
/// reader holds one clone, the handler another until the answer is ready.
#[derive(Clone)]
pub struct Charge {
    budget: Arc<RequestBudget>,
    state: Arc<Mutex<ChargeState>>,
}

#[derive(Default)]
struct ChargeState {
    paid: Option<OwnedSemaphorePermit>,
    /// Why the body reader gave up, for the receiver that counts refusals.
    stopped: Option<BodyError>,
    /// Time spent waiting for room so far: the budget's `wait` bounds the sum over
    /// the whole request, not each wait.
    waited: Duration,
}

impl Charge {
    pub fn new(budget: Arc<RequestBudget>) -> Charge {
        Charge {
            budget,
            state: Arc::default(),
        }
    }

    #[cfg(test)]
    pub fn paid(&self) -> usize {
        self.lock().paid.as_ref().map_or(0, |p| p.num_permits())
    }

    /// Why the body reader stopped, if it did.
    pub fn stopped(&self) -> Option<BodyError> {
        self.lock().stopped.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ChargeState> {
        // The state is a few fields set in one step: a panic elsewhere cannot leave
        // it half-written, so a poisoned lock is still right to use.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, permit: OwnedSemaphorePermit) {
        let mut state = self.lock();
        match state.paid.as_mut() {
            Some(paid) => paid.merge(permit),
            None => state.paid = Some(permit),
        }
    }

    fn stop(&self, why: BodyError) -> BodyError {
        self.lock().stopped = Some(why.clone());
        why
    }

    fn over_budget(&self) -> BodyError {
        self.stop(BodyError::OverBudget {
            budget: self.budget.total,
            wait_ms: self.budget.wait.as_millis() as u64,
        })
    }

    /// Pays for `bytes` more without waiting; false when the budget has no room or
    /// others are already waiting for it (first come, first served: a stream of
    /// small frames must not starve a request that waits).
    fn try_pay(&self, bytes: usize) -> Result<bool, BodyError> {
        let Ok(n) = u32::try_from(bytes) else {
            return Err(self.over_budget());
        };
        // Polled once, an acquire takes its place in the queue; dropped, it leaves.
        match self
            .budget
            .permits
            .clone()
            .acquire_many_owned(n)
            .now_or_never()
        {
            Some(Ok(p)) => {
                self.add(p);
                Ok(true)
            }
            None => Ok(false),
            Some(Err(_)) => Err(self.over_budget()),
        }
    }

    /// Pays for `bytes` more, waiting at most the budget's `wait` for room.
    pub async fn pay(&self, bytes: usize) -> Result<(), BodyError> {
        if bytes == 0 || self.try_pay(bytes)? {
            return Ok(());
        }
        let left = self.budget.wait.saturating_sub(self.lock().waited);
        if bytes > self.budget.total || left.is_zero() {
            // Could never fit, or waited enough: waiting would only delay the answer.
            return Err(self.over_budget());
        }
        let started = tokio::time::Instant::now();
        let acquire = self.budget.permits.clone().acquire_many_owned(bytes as u32);
        let acquired = tokio::time::timeout(left, acquire).await;
        self.lock().waited += started.elapsed();
        match acquired {
            Ok(Ok(p)) => {
                self.add(p);
                Ok(())
            }
            _ => Err(self.over_budget()),
        }
    }
}

/// A request body that pays for its bytes as they arrive and must be complete
/// before its deadline.
pub struct GuardedBody<B> {
    inner: Pin<Box<B>>,
    charge: Charge,
    deadline: Pin<Box<Sleep>>,
    timeout: Duration,
    /// A data frame waiting for the budget before it is handed on.
    paying: Option<(Bytes, Paying)>,
    failed: bool,
}

impl<B> GuardedBody<B> {
    pub fn new(inner: B, charge: Charge, timeout: Duration) -> GuardedBody<B> {
        GuardedBody {
            inner: Box::pin(inner),
            charge,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            timeout,
            paying: None,
            failed: false,
        }
    }

    fn fail(&mut self, why: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.failed = true;
        self.paying = None;
        Poll::Ready(Some(Err(self.charge.stop(why))))
    }
}

impl<B> Body for GuardedBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        // Every field is Unpin (the inner body and the timer are boxed).
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(None);
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            return this.fail(BodyError::TimedOut(this.timeout));
        }
        if let Some((_, paying)) = this.paying.as_mut() {
            return match paying.as_mut().poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(e)) => this.fail(e),
                Poll::Ready(Ok(())) => {
                    let (data, _) = this.paying.take().expect("a frame being paid for");
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
            };
        }
        let frame = match this.inner.as_mut().poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => return this.fail(BodyError::Read(e.into().to_string())),
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        let mut data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                return Poll::Ready(frame.into_trailers().ok().map(|t| Ok(Frame::trailers(t))))
            }
        };
        let data = data.copy_to_bytes(data.remaining());
        match this.charge.try_pay(data.len()) {
            Err(e) => this.fail(e),
            Ok(true) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Ok(false) => {
                let charge = this.charge.clone();
                let n = data.len();
                this.paying = Some((data, Box::pin(async move { charge.pay(n).await })));
                // Polls the wait once so it registers for a wake-up.
                Pin::new(this).poll_frame(cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        !self.failed && self.paying.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn chunks(sizes: &[usize]) -> impl Body<Data = Bytes, Error = std::io::Error> {
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = sizes
            .iter()
            .map(|n| Ok(Frame::data(Bytes::from(vec![7u8; *n]))))
            .collect();
        StreamBody::new(futures::stream::iter(frames))
    }

    #[tokio::test]
    async fn a_body_pays_for_what_it_read_until_the_charge_is_dropped() {
        let budget = Arc::new(RequestBudget::new(1000, Duration::from_millis(10)));
        let charge = Charge::new(budget.clone());
        let body = GuardedBody::new(chunks(&[100, 200]), charge.clone(), Duration::from_secs(5));
        let read = body.collect().await.unwrap().to_bytes();
        assert_eq!(read.len(), 300);
        assert_eq!(charge.paid(), 300);
        assert_eq!(budget.in_flight(), 300);
        drop(charge);
        assert_eq!(budget.in_flight(), 0);
    }

    #[tokio::test]
    async fn past_the_budget_a_body_waits_then_is_refused() {
        let budget = Arc::new(RequestBudget::new(1000, Duration::from_millis(50)));
        let holder = Charge::new(budget.clone());
        holder.pay(900).await.unwrap();
        let charge = Charge::new(budget.clone());
        let body = GuardedBody::new(chunks(&[50, 200]), charge.clone(), Duration::from_secs(5));
        let e = body.collect().await.unwrap_err();
        assert!(
            matches!(e, BodyError::OverBudget { budget: 1000, .. }),
            "{e}"
        );
        assert_eq!(charge.stopped(), Some(e.clone()));
        assert!(e
            .to_string()
            .contains("receivers.max_inflight_request_bytes"));
        let refusal = IngestError::from(e);
        assert_eq!(refusal.http_status(), 429);
        assert_eq!(refusal.grpc_code(), tonic::Code::ResourceExhausted);
        // What the refused body had paid is released with it.
        drop(charge);
        assert_eq!(budget.in_flight(), 900);
    }

    #[tokio::test]
    async fn a_waiting_body_goes_on_when_bytes_come_free() {
        let budget = Arc::new(RequestBudget::new(1000, Duration::from_secs(10)));
        let holder = Charge::new(budget.clone());
        holder.pay(900).await.unwrap();
        let charge = Charge::new(budget.clone());
        let body = GuardedBody::new(chunks(&[500]), charge.clone(), Duration::from_secs(10));
        let reader = tokio::spawn(async move { body.collect().await.map(|c| c.to_bytes().len()) });
        // The reader is parked on the budget until the holder lets go.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!reader.is_finished());
        drop(holder);
        assert_eq!(reader.await.unwrap().unwrap(), 500);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_does_not_finish_in_time_is_cut() {
        let budget = Arc::new(RequestBudget::new(1000, Duration::from_millis(10)));
        let charge = Charge::new(budget.clone());
        let (mut tx, rx) =
            futures::channel::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
        tx.try_send(Ok(Frame::data(Bytes::from_static(b"abc"))))
            .unwrap();
        let body = GuardedBody::new(StreamBody::new(rx), charge.clone(), Duration::from_secs(3));
        let e = body.collect().await.unwrap_err();
        assert_eq!(e, BodyError::TimedOut(Duration::from_secs(3)));
        assert_eq!(IngestError::from(e).http_status(), 408);
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_is_bounded_over_the_whole_request() {
        let budget = Arc::new(RequestBudget::new(100, Duration::from_secs(1)));
        let holder = Charge::new(budget.clone());
        holder.pay(90).await.unwrap();
        let charge = Charge::new(budget.clone());
        // Room comes free after 0.6 s of waiting, used by this request...
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(600)).await;
            drop(holder);
        });
        charge.pay(50).await.unwrap();
        release.await.unwrap();
        let other = Charge::new(budget.clone());
        other.pay(50).await.unwrap();
        // ...so the next wait has only 0.4 s left, not a fresh second.
        let started = tokio::time::Instant::now();
        assert!(charge.pay(10).await.is_err());
        assert_eq!(started.elapsed(), Duration::from_millis(400));
    }

    #[tokio::test]
    async fn a_waiting_request_is_not_overtaken() {
        let budget = Arc::new(RequestBudget::new(100, Duration::from_secs(10)));
        let holder = Charge::new(budget.clone());
        holder.pay(60).await.unwrap();
        let big = Charge::new(budget.clone());
        let waiting = tokio::spawn({
            let big = big.clone();
            async move { big.pay(50).await }
        });
        while budget.permits.available_permits() == 40 && !waiting.is_finished() {
            tokio::task::yield_now().await;
            // Room for a small one, but the big one came first.
            if !Charge::new(budget.clone()).try_pay(10).unwrap() {
                break;
            }
        }
        assert!(!Charge::new(budget.clone()).try_pay(10).unwrap());
        drop(holder);
        waiting.await.unwrap().unwrap();
        assert_eq!(budget.in_flight(), 50);
    }

    #[tokio::test]
    async fn more_than_the_whole_budget_is_refused_without_waiting() {
        let budget = Arc::new(RequestBudget::new(100, Duration::from_secs(60)));
        let charge = Charge::new(budget);
        let started = std::time::Instant::now();
        assert!(charge.pay(101).await.is_err());
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
