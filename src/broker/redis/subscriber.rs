//! The subscriber: one task per instance keeps one subscription to this
//! instance's inbox, the monitor channel and the channels of the sessions
//! with local interest, follows that interest as the hub changes it, and
//! hands what arrives to the hub; after each (re)connection it tells the
//! hub to read what it missed from the log.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::subscription::{Incoming, Subscription, bounded};
use super::{Inbound, LoggedEvent, reconnect_delays, wait_to_reconnect};
use crate::metrics::PUBSUB_CHANNELS;
use crate::redis::{MasterEvent, RedisBackend};

/// The sessions this instance wants the events of: changed by the hub's
/// registry ([`crate::broker::Broker::interest`]), followed by the subscriber task.
#[derive(Default)]
pub(super) struct Interest {
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
    pub(super) fn set(&self, session: &str, interested: bool) {
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

pub(super) async fn subscriber_loop(
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
    // The counters of each channel kind, looked up once.
    let [session_received, inbox_received, monitor_received] =
        PUBSUB_CHANNELS.map(|kind| backend.metrics.pubsub_received.with_label_values(&[kind]));
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
            if channel == monitor {
                monitor_received.inc();
            } else if channel == inbox {
                inbox_received.inc();
            } else {
                session_received.inc();
            }
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
