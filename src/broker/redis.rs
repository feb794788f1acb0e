//! The cluster bus on Redis pub/sub.
//!
//! * One publisher task per instance drains a bounded queue onto a single
//!   connection, pipelining what is queued: events leave in the order they
//!   were produced, and one Redis operation carries many events.
//! * One subscriber connection per instance listens on the events channel
//!   and this instance's inbox; each event arrives once per instance and is
//!   fanned out locally from its already-serialized text.
//! * Both reconnect by themselves with capped exponential backoff
//!   (`backon`, 100 ms doubling to 5 s), cut short by shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Broker, EventEnvelope, Inbound, InstanceMessage};
use crate::protocol::{ErrorCode, HubError};
use crate::redis::{RedisBackend, RedisError};

const PUBLISH_QUEUE: usize = 16 * 1024;
const MAX_BATCH: usize = 256;
/// Events still unpublished after this long are dropped: they are live
/// notifications, and state (history, presence) is in Redis anyway.
const STALE_AFTER: Duration = Duration::from_secs(5);

type Queued = (std::time::Instant, String);

pub struct RedisBroker {
    backend: RedisBackend,
    publish_tx: mpsc::Sender<Queued>,
    subscribed: Arc<AtomicBool>,
    publisher_ok: Arc<AtomicBool>,
    epoch: Arc<std::sync::atomic::AtomicU64>,
    stop: CancellationToken,
    publisher: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Delays between reconnection attempts: 100 ms doubling up to 5 s, for as
/// long as it takes (reset after each successful connection).
fn reconnect_delays() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_factor(2.0)
        .with_max_delay(Duration::from_secs(5))
        .without_max_times()
        .build()
}

/// Sleeps for the next reconnect delay, returning early on shutdown.
async fn wait_to_reconnect(delays: &mut ExponentialBackoff, shutdown: &CancellationToken) {
    // Unbounded, so there is always a next delay; the cap is a safe fallback.
    let delay = delays.next().unwrap_or(Duration::from_secs(5));
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = shutdown.cancelled() => {}
    }
}

impl RedisBroker {
    pub fn start(backend: RedisBackend, instance: String, inbound: mpsc::Sender<Inbound>) -> Self {
        let stop = CancellationToken::new();
        let (publish_tx, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        let subscribed = Arc::new(AtomicBool::new(false));
        let publisher_ok = Arc::new(AtomicBool::new(true));
        let epoch = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let publisher = tokio::spawn(publisher_loop(
            backend.clone(),
            publish_rx,
            publisher_ok.clone(),
            stop.clone(),
        ));
        tokio::spawn(subscriber_loop(
            backend.clone(),
            instance,
            inbound,
            subscribed.clone(),
            epoch.clone(),
            stop.clone(),
        ));
        RedisBroker {
            backend,
            publish_tx,
            subscribed,
            publisher_ok,
            epoch,
            stop,
            publisher: std::sync::Mutex::new(Some(publisher)),
        }
    }
}

#[async_trait]
impl Broker for RedisBroker {
    fn publish_event(&self, envelope: EventEnvelope) {
        let Ok(payload) = serde_json::to_string(&envelope) else {
            return;
        };
        if self
            .publish_tx
            .try_send((std::time::Instant::now(), payload))
            .is_err()
        {
            // Redis is down or far behind; local clients still got the event.
            self.backend
                .metrics
                .redis_errors
                .with_label_values(&["publish_dropped"])
                .inc();
        }
    }

    async fn send_to_instance(
        &self,
        instance: &str,
        message: InstanceMessage,
    ) -> Result<(), HubError> {
        let payload = serde_json::to_string(&message).map_err(HubError::internal)?;
        let receivers: i64 = self
            .backend
            .query(
                "publish_inbox",
                ::redis::cmd("PUBLISH")
                    .arg(self.backend.keys.inbox_channel(instance))
                    .arg(payload),
            )
            .await?;
        if receivers == 0 {
            return Err(HubError::new(
                ErrorCode::AgentUnavailable,
                format!("instance `{instance}` is not connected to the cluster"),
            ));
        }
        Ok(())
    }

    fn is_healthy(&self) -> bool {
        self.subscribed.load(Ordering::Acquire) && self.publisher_ok.load(Ordering::Acquire)
    }

    fn connection_epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    async fn close(&self) {
        self.stop.cancel();
        let publisher = self
            .publisher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(publisher) = publisher {
            let _ = tokio::time::timeout(Duration::from_secs(2), publisher).await;
        }
    }
}

async fn publisher_loop(
    backend: RedisBackend,
    mut rx: mpsc::Receiver<Queued>,
    healthy: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let channel = backend.keys.events_channel();
    let mut backoff = reconnect_delays();
    let mut batch: Vec<Queued> = Vec::with_capacity(MAX_BATCH);
    'connect: loop {
        let connected = match backend.client() {
            Ok(client) => client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| RedisError::from_client("publisher_connect", &e)),
            Err(e) => Err(e),
        };
        let mut conn = match connected {
            Ok(c) => c,
            Err(e) => {
                healthy.store(false, Ordering::Release);
                tracing::warn!(error = %e, "redis publisher cannot connect; retrying");
                wait_to_reconnect(&mut backoff, &shutdown).await;
                if shutdown.is_cancelled() {
                    return;
                }
                continue;
            }
        };
        healthy.store(true, Ordering::Release);
        backoff = reconnect_delays();
        loop {
            let mut last = false;
            if batch.is_empty() {
                tokio::select! {
                    n = rx.recv_many(&mut batch, MAX_BATCH) => if n == 0 { return },
                    _ = shutdown.cancelled() => {
                        // Final flush of whatever is still queued.
                        while let Ok(payload) = rx.try_recv() {
                            batch.push(payload);
                        }
                        if batch.is_empty() {
                            return;
                        }
                        last = true;
                    }
                }
            }
            let before = batch.len();
            batch.retain(|(queued_at, _)| queued_at.elapsed() < STALE_AFTER);
            if batch.len() < before {
                backend
                    .metrics
                    .redis_errors
                    .with_label_values(&["publish_stale_dropped"])
                    .inc_by((before - batch.len()) as u64);
            }
            if batch.is_empty() {
                continue;
            }
            let mut pipe = ::redis::pipe();
            for (_, payload) in &batch {
                pipe.cmd("PUBLISH").arg(&channel).arg(payload).ignore();
            }
            let sent = backend
                .timed("publish_events", async {
                    pipe.query_async::<()>(&mut conn)
                        .await
                        .map_err(|e| RedisError::from_client("publish_events", &e))
                })
                .await;
            match sent {
                Ok(()) if last => return,
                Ok(()) => batch.clear(),
                Err(error) => {
                    tracing::warn!(%error, pending = batch.len(), "redis publish failed; reconnecting");
                    // The batch is kept and sent first on the new
                    // connection, so order holds; stale events are dropped.
                    healthy.store(false, Ordering::Release);
                    wait_to_reconnect(&mut backoff, &shutdown).await;
                    if shutdown.is_cancelled() {
                        return;
                    }
                    continue 'connect;
                }
            }
        }
    }
}

async fn subscriber_loop(
    backend: RedisBackend,
    instance: String,
    inbound: mpsc::Sender<Inbound>,
    subscribed: Arc<AtomicBool>,
    epoch: Arc<std::sync::atomic::AtomicU64>,
    shutdown: CancellationToken,
) {
    let events = backend.keys.events_channel();
    let inbox = backend.keys.inbox_channel(&instance);
    let mut backoff = reconnect_delays();
    let mut announced_down = false;
    while !shutdown.is_cancelled() {
        let connected = async {
            let mut pubsub = backend
                .client()
                .map_err(|e| {
                    ::redis::RedisError::from((::redis::ErrorKind::Io, "pub/sub", e.to_string()))
                })?
                .get_async_pubsub()
                .await?;
            pubsub.subscribe(&events).await?;
            pubsub.subscribe(&inbox).await?;
            Ok::<_, ::redis::RedisError>(pubsub)
        };
        let pubsub = match tokio::time::timeout(Duration::from_secs(3), connected).await {
            Ok(Ok(p)) => p,
            failed => {
                let error = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_string(),
                };
                if !announced_down {
                    tracing::warn!(%error, "redis unavailable: not ready; retrying with backoff");
                    announced_down = true;
                }
                subscribed.store(false, Ordering::Release);
                wait_to_reconnect(&mut backoff, &shutdown).await;
                continue;
            }
        };
        tracing::info!(channel = %events, inbox = %inbox, "subscribed to redis pub/sub");
        announced_down = false;
        epoch.fetch_add(1, Ordering::AcqRel);
        subscribed.store(true, Ordering::Release);
        backoff = reconnect_delays();
        let mut stream = pubsub.into_on_message();
        loop {
            let msg = tokio::select! {
                m = stream.next() => m,
                _ = shutdown.cancelled() => return,
            };
            let Some(msg) = msg else { break };
            backend.metrics.pubsub_received.inc();
            let Ok(payload) = std::str::from_utf8(msg.get_payload_bytes()) else {
                continue;
            };
            let parsed = if msg.get_channel_name() == events {
                serde_json::from_str(payload).map(Inbound::Event)
            } else {
                serde_json::from_str(payload).map(Inbound::Instance)
            };
            match parsed {
                Ok(item) => {
                    if inbound.send(item).await.is_err() {
                        return;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "ignoring a malformed pub/sub message"),
            }
        }
        subscribed.store(false, Ordering::Release);
        tracing::warn!("redis pub/sub connection lost; resubscribing");
        wait_to_reconnect(&mut backoff, &shutdown).await;
    }
}
