//! The cluster's event log and bus, on Redis streams and pub/sub.
//!
//! * One publisher task per instance drains a bounded queue onto a single
//!   connection, pipelining what is queued. Each event is one `EVALSHA` of
//!   [`APPEND_SCRIPT`]: it assigns the session's next offset (creating the
//!   epoch if the log is gone), appends to the session's stream and
//!   publishes — one round trip, so log order is publish order. A retried
//!   pipeline is harmless: the script skips events whose publisher sequence
//!   number it already logged.
//! * Each session has its own channel, and the script publishes there. One
//!   subscriber connection per instance listens on this instance's inbox,
//!   the admin monitor channel and the channels of the sessions it has
//!   local subscribers of ([`Broker::interest`]), so an instance receives
//!   nothing of the other sessions. Each event arrives once per interested
//!   instance (the
//!   publishing one included: local clients get events from the
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
//!   the publisher holds its queue (at most [`PROMOTION_HOLD`]): what the
//!   old master logged from then on would be missing from the new one, and
//!   its offsets given again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    Broker, EventEnvelope, Inbound, InstanceMessage, LogRead, LoggedEvent, Published, ReadBudget,
    replay_window,
};
use crate::protocol::{ErrorCode, HubError, now_millis};
use crate::redis::{COMMAND_TIMEOUT, DedicatedConnection, MasterEvent, RedisBackend, RedisError};

const PUBLISH_QUEUE: usize = 16 * 1024;
/// Longest wait for the new master once Sentinel started promoting one.
const PROMOTION_HOLD: Duration = Duration::from_secs(5);
const MAX_BATCH: usize = 256;

/// Assigns the next offset, logs and publishes one event.
/// KEYS: log stream, epoch, offset counter, seen hash, the session's
/// channel (declared like a key: on a Redis Cluster it is a shard channel
/// of the session's slot).
/// ARGV: candidate epoch, max len, TTL ms, publish command (`PUBLISH`, or
/// `SPUBLISH` on a Redis Cluster), publisher id, sequence number, header
/// rest (JSON object without `{`), frame rest (same).
/// The epoch candidate comes from the caller: scripts make no randomness.
/// Returns `{offset, epoch}`, or `{0, ''}` when this publisher's event was
/// already logged.
const APPEND_SCRIPT: &str = r#"
local seen = redis.call('HGET', KEYS[4], ARGV[5])
if seen and tonumber(seen) >= tonumber(ARGV[6]) then return {0, ''} end
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[1], KEYS[3])
end
local offset = redis.call('INCR', KEYS[3])
local head = '{"offset":' .. offset .. ',"epoch":"' .. epoch .. '",'
local payload = head .. ARGV[7] .. '\n' .. head .. ARGV[8]
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], offset .. '-0', 'e', payload)
redis.call('SET', KEYS[2], epoch, 'PX', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
redis.call('HSET', KEYS[4], ARGV[5], ARGV[6])
redis.call('PEXPIRE', KEYS[4], ARGV[3])
redis.call(ARGV[4], KEYS[5], payload)
return {offset, epoch}
"#;

/// Reads a session's log: `{epoch, head, entries from ARGV[3]...}`.
/// KEYS: log stream, epoch, offset counter. ARGV: candidate epoch, TTL ms,
/// first offset wanted ('' for none), max events, max frame bytes. A
/// missing epoch is created (and the stale stream and counter dropped),
/// exactly as the append script would. The entries are read in chunks and
/// stop one past the budget ([`ReadBudget::exceeded_by`], counted on the
/// frame after the header line, as the reader counts): that last entry
/// tells the reader more are left, and no read holds more than the budget
/// in Redis's memory or on the wire.
const READ_SCRIPT: &str = r#"
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[1], KEYS[3])
  redis.call('SET', KEYS[2], epoch, 'PX', ARGV[2])
end
local head = redis.call('GET', KEYS[3]) or '0'
local out = {epoch, head}
if ARGV[3] ~= '' then
  local max_events = tonumber(ARGV[4])
  local max_bytes = tonumber(ARGV[5])
  local n, bytes = 0, 0
  local start = ARGV[3] .. '-0'
  while true do
    local chunk = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', 64)
    if #chunk == 0 then return out end
    for _, e in ipairs(chunk) do
      local payload = e[2][2]
      local nl = string.find(payload, '\n', 1, true) or 0
      local frame = #payload - nl
      out[#out + 1] = payload
      if n >= max_events or (n > 0 and bytes + frame > max_bytes) then
        return out
      end
      n = n + 1
      bytes = bytes + frame
      start = '(' .. e[1]
    end
  end
end
return out
"#;

/// A random epoch candidate (16 hex digits).
fn epoch_candidate() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_string()
}

/// One event waiting for the append script.
struct Queued {
    session: String,
    seq: u64,
    header: String,
    frame: String,
    done: Option<tokio::sync::oneshot::Sender<(String, u64)>>,
}

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
        #[derive(serde::Serialize)]
        struct Header<'a> {
            session: &'a str,
            origin: &'a str,
            kind: &'a str,
            produced_at: u64,
            #[serde(skip_serializing_if = "Option::is_none")]
            except: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            presence: Option<u64>,
        }
        let header = serde_json::to_string(&Header {
            session: &envelope.session,
            origin: &envelope.origin,
            kind: &envelope.kind,
            produced_at: envelope.produced_at,
            except: envelope.except.as_deref(),
            presence: envelope.presence,
        })
        .map_err(HubError::internal)?;
        let rest = |s: &str| s.strip_prefix('{').unwrap_or(s).to_string();
        let (done, published) = tokio::sync::oneshot::channel();
        let queued = Queued {
            done: Some(done),
            header: rest(&header),
            frame: rest(&envelope.frame),
            session: envelope.session,
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

/// Logs and publishes a batch in one round trip: one pipeline of append
/// scripts, in queue order. On a Redis Cluster a pipeline must stay in one
/// slot, so the batch goes as one pipeline per session (each in queue
/// order), all at once. Returns `(offset, epoch)` per event, in batch order.
async fn append_batch(
    backend: &RedisBackend,
    settings: &LogSettings,
    script: &::redis::Script,
    batch: &[Queued],
    conn: &mut DedicatedConnection,
) -> ::redis::RedisResult<Vec<(u64, String)>> {
    let keys = &backend.keys;
    let publish = publish_command(backend);
    let invocation = |q: &Queued| {
        let mut invocation = script.prepare_invoke();
        invocation
            .key(keys.session_log(&q.session))
            .key(keys.session_log_epoch(&q.session))
            .key(keys.session_log_offset(&q.session))
            .key(keys.session_log_seen(&q.session))
            .key(keys.session_channel(&q.session))
            .arg(epoch_candidate())
            .arg(settings.len)
            .arg(settings.ttl_ms)
            .arg(publish)
            .arg(&settings.publisher)
            .arg(q.seq)
            .arg(&q.header)
            .arg(&q.frame);
        invocation
    };
    if !backend.is_cluster() {
        let mut pipe = ::redis::pipe();
        for q in batch {
            pipe.invoke_script(&invocation(q));
        }
        return pipe.query_async(conn).await;
    }
    // Per session, the positions of its events in the batch.
    let mut sessions: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, q) in batch.iter().enumerate() {
        sessions.entry(q.session.as_str()).or_default().push(i);
    }
    let pipes = sessions.into_values().map(|positions| {
        let mut pipe = ::redis::pipe();
        for &i in &positions {
            pipe.invoke_script(&invocation(&batch[i]));
        }
        // The connection is multiplexed: each pipeline gets its own handle.
        let mut handle = conn.clone();
        async move {
            let logged: Vec<(u64, String)> = pipe.query_async(&mut handle).await?;
            Ok::<_, ::redis::RedisError>((positions, logged))
        }
    });
    let mut out = vec![(0, String::new()); batch.len()];
    for (positions, logged) in futures_util::future::try_join_all(pipes).await? {
        for (i, result) in positions.into_iter().zip(logged) {
            out[i] = result;
        }
    }
    Ok(out)
}

async fn publisher_loop(
    backend: RedisBackend,
    settings: LogSettings,
    mut rx: mpsc::Receiver<Queued>,
    healthy: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let script = ::redis::Script::new(APPEND_SCRIPT);
    let mut backoff = reconnect_delays();
    let mut batch: Vec<Queued> = Vec::with_capacity(MAX_BATCH);
    let mut seq: u64 = 0;
    let mut master_changes = backend.master_changes();
    'connect: loop {
        // A new connection each time: with Sentinel, to the current master.
        let connected = backend
            .timed("publisher_connect", async {
                let mut conn = backend
                    .dedicated()
                    .await
                    .map_err(|e| RedisError::from_client("publisher_connect", &e))?;
                // Loaded once per connection (on every master of a Redis
                // Cluster), so the pipeline's EVALSHAs find it (a restarted
                // Redis, or a promoted replica, may not have it).
                script
                    .prepare_invoke()
                    .load_async(&mut conn)
                    .await
                    .map_err(|e| RedisError::from_client("publisher_connect", &e))?;
                Ok(conn)
            })
            .await;
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
                    biased;
                    // The old master may still accept writes until Sentinel
                    // demotes it; they would be lost then.
                    event = master_changes.next() => {
                        if event == MasterEvent::Promoting {
                            tokio::select! {
                                _ = master_changes.switched() => {}
                                _ = tokio::time::sleep(PROMOTION_HOLD) => {}
                                _ = shutdown.cancelled() => {}
                            }
                        }
                        continue 'connect;
                    }
                    n = rx.recv_many(&mut batch, MAX_BATCH) => if n == 0 { return },
                    _ = shutdown.cancelled() => {
                        // Final flush of whatever is still queued.
                        while let Ok(queued) = rx.try_recv() {
                            batch.push(queued);
                        }
                        if batch.is_empty() {
                            return;
                        }
                        last = true;
                    }
                }
            }
            // Sequence numbers follow the queue order, which is the log
            // order: numbering at `publish_event` would race between
            // producers, and the script would then skip a later-queued
            // smaller number as already logged. A retried batch keeps its
            // numbers.
            for q in batch.iter_mut().filter(|q| q.seq == 0) {
                seq += 1;
                q.seq = seq;
            }
            let sent = backend
                .timed("publish_events", async {
                    append_batch(&backend, &settings, &script, &batch, &mut conn)
                        .await
                        .map_err(|e| RedisError::from_client("publish_events", &e))
                })
                .await;
            match sent {
                Ok(logged) => {
                    for (q, (offset, epoch)) in batch.iter_mut().zip(logged) {
                        if let Some(done) = q.done.take()
                            && offset > 0
                        {
                            let _ = done.send((epoch, offset));
                        }
                    }
                    if last {
                        return;
                    }
                    batch.clear();
                }
                Err(error) => {
                    // READONLY (a demoted master) included: the reconnection
                    // asks Sentinel for the master again.
                    tracing::warn!(%error, pending = batch.len(), "redis publish failed; reconnecting");
                    // The batch is kept and sent first on the new connection,
                    // so order holds; the script skips what was already
                    // logged, so nothing is logged twice and nothing dropped.
                    healthy.store(false, Ordering::Release);
                    wait_to_reconnect(&mut backoff, &shutdown).await;
                    if last || shutdown.is_cancelled() {
                        return;
                    }
                    continue 'connect;
                }
            }
        }
    }
}

/// The sessions this instance wants the events of: changed by the hub's
/// registry ([`Broker::interest`]), followed by the subscriber task.
#[derive(Default)]
struct Interest {
    state: std::sync::Mutex<InterestState>,
    changed: tokio::sync::Notify,
}

#[derive(Default)]
struct InterestState {
    wanted: HashSet<String>,
    /// Sessions whose interest changed since the subscriber last looked.
    dirty: HashSet<String>,
}

impl Interest {
    fn set(&self, session: &str, interested: bool) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let changed = if interested {
            state.wanted.insert(session.to_string())
        } else {
            state.wanted.remove(session)
        };
        if changed {
            state.dirty.insert(session.to_string());
            self.changed.notify_one();
        }
    }

    /// Every wanted session (for a new connection); nothing is dirty then.
    fn all(&self) -> Vec<String> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.dirty.clear();
        state.wanted.iter().cloned().collect()
    }

    /// The sessions whose interest changed, split into (wanted, unwanted).
    fn changes(&self) -> (Vec<String>, Vec<String>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let dirty = std::mem::take(&mut state.dirty);
        dirty
            .into_iter()
            .partition(|session| state.wanted.contains(session))
    }
}

/// What the subscription connection reports, whatever the topology.
enum Incoming {
    Message {
        channel: String,
        payload: Vec<u8>,
    },
    /// Sharded: a subscription confirmed by a node (ours, or the client
    /// library's own after it reconnected to a node).
    Subscribed(String),
    /// Sharded: a node dropped a subscription (its slot moved away), or
    /// confirmed our own unsubscription.
    Unsubscribed(String),
    /// Sharded: the connection to one node was lost.
    Disconnected,
}

/// The subscription connection: RESP2 pub/sub on one server, or sharded
/// pub/sub (RESP3 pushes) over a Redis Cluster connection, which sends
/// each `SSUBSCRIBE` to the node owning the channel's slot.
enum Subscription {
    Plain {
        sink: ::redis::aio::PubSubSink,
        stream: ::redis::aio::PubSubStream,
    },
    Sharded {
        conn: ::redis::cluster_async::ClusterConnection,
        pushes: mpsc::UnboundedReceiver<::redis::PushInfo>,
    },
}

impl Subscription {
    async fn connect(backend: &RedisBackend) -> ::redis::RedisResult<Self> {
        if backend.is_cluster() {
            let (tx, pushes) = mpsc::unbounded_channel();
            let conn = backend.sharded_pubsub(tx).await?;
            Ok(Subscription::Sharded { conn, pushes })
        } else {
            let (sink, stream) = backend.pubsub().await?.split();
            Ok(Subscription::Plain { sink, stream })
        }
    }

    fn is_sharded(&self) -> bool {
        matches!(self, Subscription::Sharded { .. })
    }

    async fn subscribe(&mut self, channels: &[String]) -> ::redis::RedisResult<()> {
        match self {
            Subscription::Plain { sink, .. } => sink.subscribe(channels).await,
            // One SSUBSCRIBE per channel: channels of one command must
            // share a slot.
            Subscription::Sharded { conn, .. } => {
                futures_util::future::try_join_all(channels.iter().map(|c| {
                    let mut conn = conn.clone();
                    async move { conn.ssubscribe(c).await }
                }))
                .await
                .map(drop)
            }
        }
    }

    async fn unsubscribe(&mut self, channels: &[String]) -> ::redis::RedisResult<()> {
        match self {
            Subscription::Plain { sink, .. } => sink.unsubscribe(channels).await,
            Subscription::Sharded { conn, .. } => {
                futures_util::future::try_join_all(channels.iter().map(|c| {
                    let mut conn = conn.clone();
                    async move { conn.sunsubscribe(c).await }
                }))
                .await
                .map(drop)
            }
        }
    }

    /// The next report; None when the connection is gone.
    async fn next(&mut self) -> Option<Incoming> {
        match self {
            Subscription::Plain { stream, .. } => {
                let msg = stream.next().await?;
                Some(Incoming::Message {
                    channel: msg.get_channel_name().to_string(),
                    payload: msg.get_payload_bytes().to_vec(),
                })
            }
            Subscription::Sharded { pushes, .. } => loop {
                let push = pushes.recv().await?;
                let text = |i: usize| match push.data.get(i) {
                    Some(::redis::Value::BulkString(b)) => Some(b.clone()),
                    _ => None,
                };
                let channel = || text(0).map(|c| String::from_utf8_lossy(&c).into_owned());
                let incoming = match push.kind {
                    ::redis::PushKind::SMessage => channel()
                        .zip(text(1))
                        .map(|(channel, payload)| Incoming::Message { channel, payload }),
                    ::redis::PushKind::SSubscribe => channel().map(Incoming::Subscribed),
                    ::redis::PushKind::SUnsubscribe => channel().map(Incoming::Unsubscribed),
                    ::redis::PushKind::Disconnection => Some(Incoming::Disconnected),
                    _ => None,
                };
                if let Some(incoming) = incoming {
                    return Some(incoming);
                }
            },
        }
    }
}

/// A subscription command under the shared timeout.
async fn bounded(
    what: &str,
    command: impl Future<Output = ::redis::RedisResult<()>>,
) -> Result<(), String> {
    match tokio::time::timeout(COMMAND_TIMEOUT, command).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: timed out")),
    }
}

/// How many channels one SUBSCRIBE / UNSUBSCRIBE names at most.
const SUBSCRIBE_BATCH: usize = 256;

/// Brings the connection's session channels in line with the wanted ones
/// (`add`, `remove`): unsubscribes first, then subscribes (telling the hub
/// of each confirmed one when `tell`; sharded subscriptions are told by
/// their confirmation pushes instead), so an interest confirmed after a
/// loss of interest also confirms the leaving. `subscribed` maps each
/// subscribed channel to its session.
async fn follow_interest(
    sub: &mut Subscription,
    backend: &RedisBackend,
    (add, remove): (Vec<String>, Vec<String>),
    subscribed: &mut HashMap<String, String>,
    inbound: &mpsc::Sender<Inbound>,
    tell: bool,
) -> Result<(), String> {
    let keys = &backend.keys;
    let tell = tell && !sub.is_sharded();
    let remove: Vec<String> = remove
        .iter()
        .map(|s| keys.session_channel(s))
        .filter(|c| subscribed.contains_key(c))
        .collect();
    for channels in remove.chunks(SUBSCRIBE_BATCH) {
        bounded("unsubscribe", sub.unsubscribe(channels)).await?;
        for channel in channels {
            subscribed.remove(channel);
        }
    }
    let add: Vec<(String, String)> = add
        .into_iter()
        .map(|s| (keys.session_channel(&s), s))
        .filter(|(c, _)| !subscribed.contains_key(c))
        .collect();
    for batch in add.chunks(SUBSCRIBE_BATCH) {
        let channels: Vec<String> = batch.iter().map(|(c, _)| c.clone()).collect();
        bounded("subscribe", sub.subscribe(&channels)).await?;
        for (channel, session) in batch {
            subscribed.insert(channel.clone(), session.clone());
            if tell
                && inbound
                    .send(Inbound::Subscribed(session.clone()))
                    .await
                    .is_err()
            {
                return Err("hub gone".into());
            }
        }
    }
    Ok(())
}

async fn subscriber_loop(
    backend: RedisBackend,
    instance: String,
    interest: Arc<Interest>,
    inbound: mpsc::Sender<Inbound>,
    subscribed: Arc<AtomicBool>,
    epoch: Arc<std::sync::atomic::AtomicU64>,
    shutdown: CancellationToken,
) {
    let inbox = backend.keys.inbox_channel(&instance);
    let monitor = backend.keys.monitor_channel();
    let mut backoff = reconnect_delays();
    let mut announced_down = false;
    let mut master_changes = backend.master_changes();
    while !shutdown.is_cancelled() {
        // The inbox and every session channel wanted now; sessions wanted
        // later are subscribed as they come (`follow_interest`).
        let mut sessions = HashMap::new();
        let connected = async {
            // With Sentinel, the current master (pub/sub follows failovers).
            let mut sub = Subscription::connect(&backend)
                .await
                .map_err(|e| e.to_string())?;
            sub.subscribe(&[inbox.clone(), monitor.clone()])
                .await
                .map_err(|e| e.to_string())?;
            let all = (interest.all(), Vec::new());
            follow_interest(&mut sub, &backend, all, &mut sessions, &inbound, false).await?;
            Ok::<_, String>(sub)
        };
        let mut sub = match tokio::time::timeout(Duration::from_secs(3), connected).await {
            Ok(Ok(sub)) => sub,
            failed => {
                let error = match failed {
                    Ok(Err(e)) => e,
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
        tracing::info!(inbox = %inbox, sessions = sessions.len(), sharded = sub.is_sharded(), "subscribed to redis pub/sub");
        announced_down = false;
        let now = epoch.fetch_add(1, Ordering::AcqRel) + 1;
        // Anything published from here on arrives on the subscription; what
        // was published while unsubscribed is read from the log first.
        if inbound.send(Inbound::Resubscribed(now)).await.is_err() {
            return;
        }
        subscribed.store(true, Ordering::Release);
        backoff = reconnect_delays();
        loop {
            let incoming = tokio::select! {
                m = sub.next() => m,
                _ = interest.changed.notified() => {
                    let changes = interest.changes();
                    match follow_interest(&mut sub, &backend, changes, &mut sessions, &inbound, true).await {
                        Ok(()) => continue,
                        Err(error) => {
                            tracing::warn!(%error, "redis pub/sub subscription failed");
                            break;
                        }
                    }
                }
                _ = shutdown.cancelled() => return,
                // Publishes go to the new master: subscribe there.
                event = master_changes.next() => match event {
                    MasterEvent::Switched => None,
                    MasterEvent::Promoting => continue,
                },
            };
            let (channel, payload) = match incoming {
                None => break,
                Some(Incoming::Message { channel, payload }) => (channel, payload),
                Some(Incoming::Subscribed(channel)) => {
                    // A (re)subscription a node confirmed: what the channel
                    // carried before is read from the log.
                    if let Some(session) = sessions.get(&channel)
                        && inbound
                            .send(Inbound::Subscribed(session.clone()))
                            .await
                            .is_err()
                    {
                        return;
                    }
                    continue;
                }
                Some(Incoming::Unsubscribed(channel)) => {
                    let ours =
                        channel == inbox || channel == monitor || sessions.contains_key(&channel);
                    if !ours {
                        continue;
                    }
                    // A node dropped a channel still wanted (its slot moved):
                    // subscribe everything again where it lives now.
                    tracing::warn!(%channel, "redis dropped a shard channel subscription; resubscribing");
                    break;
                }
                Some(Incoming::Disconnected) => {
                    // The library reconnects the node, but a failed master's
                    // slots move to its replica: subscribe everything again
                    // on the topology as it is now.
                    break;
                }
            };
            backend.metrics.pubsub_received.inc();
            let Ok(payload) = std::str::from_utf8(&payload) else {
                continue;
            };
            let parsed = if channel == monitor {
                Ok(Inbound::Monitor(payload.to_string()))
            } else if channel == inbox {
                serde_json::from_str(payload)
                    .map(Inbound::Instance)
                    .map_err(|e| e.to_string())
            } else {
                LoggedEvent::parse(payload)
                    .map(Inbound::Event)
                    .ok_or_else(|| "not a logged event".to_string())
            };
            match parsed {
                Ok(item) => {
                    if inbound.send(item).await.is_err() {
                        return;
                    }
                }
                Err(error) => tracing::warn!(%error, "ignoring a malformed pub/sub message"),
            }
        }
        subscribed.store(false, Ordering::Release);
        tracing::warn!("redis pub/sub connection lost; resubscribing");
        wait_to_reconnect(&mut backoff, &shutdown).await;
    }
}
