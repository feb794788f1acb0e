//! The cluster's event log and bus, on Redis streams and pub/sub.
//!
//! * One publisher task per instance drains a bounded queue onto a single
//!   connection, pipelining what is queued. Each event is one `EVALSHA` of
//!   [`event_log::APPEND_SCRIPT`]: it assigns the session's next offset
//!   (creating the epoch if the log is gone), appends to the session's
//!   stream and publishes — one round trip, so log order is publish order.
//!   A retried pipeline is harmless: the script skips events whose
//!   publisher sequence number it already logged.
//! * Each session has its own channel, and the script publishes there. One
//!   subscriber connection per instance listens on this instance's inbox,
//!   the admin monitor channel and the channels of the sessions it has
//!   local subscribers of ([`Broker::interest`]), so an instance receives
//!   nothing of the other sessions. Each event arrives once per interested
//!   instance (the publishing one included: local clients get events from the
//!   subscription too, in offset order) and is fanned out locally from its
//!   already-serialized text. Events published before a SUBSCRIBE was
//!   confirmed were not received: after each confirmed session channel the
//!   hub is told ([`Inbound::Subscribed`]), after each reconnection
//!   ([`Inbound::Resubscribed`]), and reads what it missed from the log.
//! * On a Redis Cluster every key of a session shares its slot, the
//!   channels are shard channels (`SPUBLISH` in the script, `SSUBSCRIBE`
//!   sent to the node that owns the slot), the publisher sends one pipeline
//!   per session, and a subscription a node drops (slot moved) or a lost
//!   node (failover) makes the subscriber subscribe everything again where
//!   it lives now, then the hub reads every session from the log.
//! * Both reconnect by themselves with capped exponential backoff
//!   (`backon`, 100 ms doubling to 5 s), cut short by shutdown, and at once
//!   when Redis Sentinel announces a new master
//!   ([`RedisBackend::master_changes`]). While Sentinel promotes a replica
//!   the publisher holds its queue (at most [`publisher::PROMOTION_HOLD`]):
//!   what the old master logged from then on would be missing from the new
//!   one, and its offsets given again.
//!
//! Modules: `event_log` (the log's Lua scripts), `publisher` (the queue
//! and its task), `subscriber` (interest and the subscriber task) over
//! `subscription` (one connection, plain or sharded).

mod event_log;
mod publisher;
mod subscriber;
mod subscription;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    Broker, EventEnvelope, Inbound, InstanceMessage, LogRead, LoggedEvent, Published, ReadBudget,
    replay_window,
};
use crate::protocol::{ErrorCode, HubError, now_millis};
use crate::redis::RedisBackend;
use event_log::{READ_SCRIPT, epoch_candidate};
use publisher::{PUBLISH_QUEUE, Queued, publisher_loop};
use subscriber::{Interest, subscriber_loop};

/// Log settings the scripts need.
#[derive(Clone)]
struct LogSettings {
    len: u64,
    ttl_ms: u64,
    /// This process's publisher id (instance id + a per-start nonce, so a
    /// restarted instance's sequence numbers never look already logged).
    publisher: String,
}

pub struct RedisBroker {
    backend: RedisBackend,
    settings: LogSettings,
    read_script: ::redis::Script,
    publish_tx: mpsc::Sender<Queued>,
    subscribed: Arc<AtomicBool>,
    publisher_ok: Arc<AtomicBool>,
    epoch: Arc<std::sync::atomic::AtomicU64>,
    interest: Arc<Interest>,
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
    pub fn start(
        backend: RedisBackend,
        instance: String,
        inbound: mpsc::Sender<Inbound>,
        log_len: usize,
        log_ttl: Duration,
    ) -> Self {
        let settings = LogSettings {
            len: log_len.max(1) as u64,
            ttl_ms: (log_ttl.as_millis() as u64).max(1),
            publisher: format!("{instance}:{}", epoch_candidate()),
        };
        let stop = CancellationToken::new();
        let (publish_tx, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        let subscribed = Arc::new(AtomicBool::new(false));
        let publisher_ok = Arc::new(AtomicBool::new(true));
        let epoch = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let publisher = tokio::spawn(publisher_loop(
            backend.clone(),
            settings.clone(),
            publish_rx,
            publisher_ok.clone(),
            stop.clone(),
        ));
        let interest = Arc::new(Interest::default());
        tokio::spawn(subscriber_loop(
            backend.clone(),
            instance,
            interest.clone(),
            inbound,
            subscribed.clone(),
            epoch.clone(),
            stop.clone(),
        ));
        RedisBroker {
            backend,
            settings,
            read_script: ::redis::Script::new(READ_SCRIPT),
            publish_tx,
            subscribed,
            publisher_ok,
            epoch,
            interest,
            stop,
            publisher: std::sync::Mutex::new(Some(publisher)),
        }
    }
}

#[async_trait]
impl Broker for RedisBroker {
    fn publish_event(&self, envelope: EventEnvelope) -> Result<Published, HubError> {
        let unavailable = || {
            self.backend
                .metrics
                .redis_errors
                .with_label_values(&["publish_dropped"])
                .inc();
            HubError::new(
                ErrorCode::StoreUnavailable,
                "the session event log is unreachable; the event was not delivered",
            )
        };
        // While the publisher cannot reach Redis nothing can be logged, so
        // the producer is told at once instead of the event waiting.
        if !self.publisher_ok.load(Ordering::Acquire) {
            return Err(unavailable());
        }
        let session = envelope.header.session.clone();
        let (header, frame) = envelope
            .entry_without_position()
            .ok_or_else(|| HubError::internal("a log entry without its position in front"))?;
        let (done, published) = tokio::sync::oneshot::channel();
        let queued = Queued {
            done: Some(done),
            header,
            frame,
            session,
            // Numbered by the publisher task, in queue order (see there).
            seq: 0,
        };
        self.publish_tx
            .try_send(queued)
            .map_err(|_| unavailable())?;
        Ok(published)
    }

    async fn read_log(
        &self,
        session: &str,
        after: Option<u64>,
        budget: ReadBudget,
    ) -> Result<LogRead, HubError> {
        let keys = &self.backend.keys;
        let mut invocation = self.read_script.prepare_invoke();
        invocation
            .key(keys.session_log(session))
            .key(keys.session_log_epoch(session))
            .key(keys.session_log_offset(session))
            .arg(epoch_candidate())
            .arg(self.settings.ttl_ms)
            .arg(after.map(|a| (a + 1).to_string()).unwrap_or_default())
            .arg(budget.max_events)
            .arg(budget.max_bytes);
        let reply: Vec<String> = self.backend.script("read_log", &invocation).await?;
        let mut reply = reply.into_iter();
        let (Some(epoch), Some(head)) = (reply.next(), reply.next()) else {
            return Err(HubError::internal("read_log: short reply"));
        };
        let head: u64 = head.parse().map_err(HubError::internal)?;
        let kept = reply.filter_map(|e| LoggedEvent::parse(&e));
        let window = after.map_or(Some((Vec::new(), false)), |after| {
            replay_window(
                kept,
                head,
                after,
                (self.settings.len, self.settings.ttl_ms),
                budget,
                now_millis(),
            )
        });
        Ok(LogRead::new(epoch, head, window))
    }

    async fn send_to_instance(
        &self,
        instance: &str,
        message: InstanceMessage,
    ) -> Result<(), HubError> {
        let payload = serde_json::to_string(&message).map_err(HubError::internal)?;
        // On a Redis Cluster the inbox is a shard channel: SPUBLISH counts
        // its subscribers on the shard (PUBLISH would count only those on
        // the node that ran it).
        let receivers: i64 = self
            .backend
            .query(
                "publish_inbox",
                ::redis::cmd(publish_command(&self.backend))
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

    fn interest(&self, session: &str, interested: bool) {
        self.interest.set(session, interested);
    }

    async fn publish_monitor(&self, payload: String) -> Result<(), HubError> {
        // Like the inbox, a shard channel on a Redis Cluster (its own slot,
        // `{monitor}`): every instance subscribes it on that one shard.
        let _: i64 = self
            .backend
            .query(
                "publish_monitor",
                ::redis::cmd(publish_command(&self.backend))
                    .arg(self.backend.keys.monitor_channel())
                    .arg(payload),
            )
            .await?;
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

/// `SPUBLISH` on a Redis Cluster (every channel is a shard channel there),
/// else `PUBLISH`.
fn publish_command(backend: &RedisBackend) -> &'static str {
    if backend.is_cluster() {
        "SPUBLISH"
    } else {
        "PUBLISH"
    }
}
