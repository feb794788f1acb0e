//! What the admin dashboard watches, cluster-wide: every instance publishes
//! monitor events — presence changes as they happen, and its own
//! [`InstanceStats`] every [`STATS_INTERVAL`] — on the broker's monitor
//! channel, and every instance relays what the channel carries to its
//! local admin feeds ([`MonitorFeeds`]). So a dashboard connected to any
//! one instance sees the whole cluster.
//!
//! Presence and agent events are published only while a dashboard is open
//! somewhere in the cluster (each instance's stats say how many feeds it
//! has), so a cluster nobody watches pays no extra Redis round trip per
//! join or leave; the stats themselves always go out (every 2 s).
//!
//! A feed is an ordinary [`ClientHandle`]: its queue is bounded in bytes
//! like a client's, and a feed that does not keep up is closed as a slow
//! consumer (1008). Admin feeds are the only recipients of monitor events;
//! session clients never get one. A feed may also watch one session
//! ([`Hub::watch_session`]): it then gets that session's events as its
//! clients do, without being a member or in presence.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus::core::Collector;
use serde::{Deserialize, Serialize};

use super::Hub;
use super::registry::{ClientHandle, Position};
use crate::broker::InstanceMessage;
use crate::outbox::Outbound;
use crate::protocol::CloseReason;
use crate::protocol::{ClientInfo, ErrorCode, HubError, now_millis};

/// How often each instance publishes its [`InstanceStats`]; the dashboard
/// forgets an instance silent for three intervals.
pub const STATS_INTERVAL: Duration = Duration::from_secs(2);

/// One instance's live numbers, as the dashboard shows them.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceStats {
    pub instance: String,
    pub version: String,
    /// When the instance started (ms since epoch).
    pub started_at: u64,
    pub uptime_ms: u64,
    /// Open WebSocket connections (registered or not, admin feeds included).
    pub connections: i64,
    /// Registered clients.
    pub clients: usize,
    /// Admin feeds (dashboards) connected to this instance.
    pub admin_feeds: usize,
    pub ready: bool,
    /// Client messages received, frames sent and connections opened per
    /// second, over the last interval.
    pub messages_in_per_sec: f64,
    pub messages_out_per_sec: f64,
    pub connections_per_sec: f64,
    pub ai: AiStats,
    pub timestamp: u64,
}

/// What the AI coordinator counted on this instance (totals since start).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AiStats {
    pub provider: String,
    /// Upstream calls, every outcome.
    pub calls: u64,
    pub cache_hits: u64,
    pub singleflight_joins: u64,
    pub rate_limited: u64,
    /// `closed`, `open` or `half_open`.
    pub breaker: String,
}

/// A monitor event on the wire (`type` tells which).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MonitorEvent<'a> {
    InstanceStats(&'a InstanceStats),
    /// A client joined or left a session (on `client.instance`).
    Presence {
        session: &'a str,
        client: &'a ClientInfo,
        joined: bool,
        timestamp: u64,
    },
    /// The session's agent changed (None: no client agent).
    Agent {
        session: &'a str,
        client_id: Option<&'a str>,
        timestamp: u64,
    },
    /// A send was held for approval (no `resolution`) or decided.
    Approval {
        approval: &'a crate::protocol::Approval,
        #[serde(skip_serializing_if = "Option::is_none")]
        resolution: Option<&'a crate::protocol::Resolution>,
    },
}

/// This instance's admin feeds, by connection id, and whether any
/// instance of the cluster has one.
#[derive(Default)]
pub struct MonitorFeeds {
    feeds: RwLock<HashMap<u64, ClientHandle>>,
    /// Until when (ms since epoch) some instance is known to have a feed:
    /// three stats intervals after its last stats said so.
    watched_until: AtomicU64,
    /// Publishes this instance's stats at once (a feed just connected).
    wake: tokio::sync::Notify,
}

/// The part of a monitor event [`MonitorFeeds::relay`] looks at.
#[derive(Deserialize)]
struct Peek {
    #[serde(default)]
    admin_feeds: usize,
}

impl MonitorFeeds {
    fn local_count(&self) -> usize {
        self.feeds.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether a dashboard is open on any instance: presence and agent
    /// events are worth publishing.
    pub fn watched(&self) -> bool {
        self.local_count() > 0 || self.watched_until.load(Ordering::Acquire) > now_millis()
    }

    /// Queues a monitor event (already serialized) for every local feed,
    /// noting whether its instance has feeds of its own.
    pub fn relay(&self, text: &str, metrics: &crate::metrics::Metrics) {
        if let Ok(peek) = serde_json::from_str::<Peek>(text)
            && peek.admin_feeds > 0
        {
            let until = now_millis() + 3 * STATS_INTERVAL.as_millis() as u64;
            self.watched_until.fetch_max(until, Ordering::AcqRel);
        }
        let feeds = self.feeds.read().unwrap_or_else(|p| p.into_inner());
        if feeds.is_empty() {
            return;
        }
        let out = Outbound::reply(text.into(), "other");
        for feed in feeds.values() {
            feed.send(out.clone(), metrics);
        }
    }
}

/// Removes an admin feed when dropped.
pub struct FeedGuard {
    hub: Arc<Hub>,
    conn_id: u64,
}

impl Drop for FeedGuard {
    fn drop(&mut self) {
        self.hub
            .monitor
            .feeds
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.conn_id);
    }
}

/// Stops a hidden watch of a session when dropped.
pub struct WatchGuard {
    hub: Arc<Hub>,
    session: String,
    conn_id: u64,
}

impl WatchGuard {
    pub fn session(&self) -> &str {
        &self.session
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.hub.registry.unwatch(&self.session, self.conn_id);
    }
}

/// Counter totals at the last stats tick, for per-second rates.
struct Totals {
    at: std::time::Instant,
    messages_in: u64,
    messages_out: u64,
    connections: u64,
}

fn counter_sum(vec: &prometheus::IntCounterVec) -> u64 {
    vec.collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

impl Hub {
    /// Registers `handle` as an admin feed of this instance until the
    /// guard drops.
    pub fn add_monitor_feed(self: &Arc<Self>, handle: ClientHandle) -> FeedGuard {
        let conn_id = handle.conn_id;
        self.monitor
            .feeds
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(conn_id, handle);
        // Tell every instance now, not at the next tick, that a dashboard
        // watches (so it gets presence events from the start).
        self.monitor.wake.notify_one();
        FeedGuard {
            hub: self.clone(),
            conn_id,
        }
    }

    /// Makes `handle` a hidden local watcher of `session` until the guard
    /// drops: it receives the session's events exactly as the session's
    /// clients do, is no member and never in presence. This is the one way
    /// anything but a client subscribes to a session on this instance.
    pub async fn watch_session(
        self: &Arc<Self>,
        session: &str,
        handle: ClientHandle,
    ) -> WatchGuard {
        let conn_id = handle.conn_id;
        // Where the watch starts if it is the session's first local
        // subscriber (its channel is subscribed only now).
        let read = match self.broker.log_head(session).await {
            Ok(read) => Some(Position {
                epoch: read.epoch,
                offset: read.head,
            }),
            Err(error) => {
                tracing::warn!(session, %error, "cannot read the log to start a watch");
                None
            }
        };
        self.registry.watch(session, handle, read);
        WatchGuard {
            hub: self.clone(),
            session: session.to_string(),
            conn_id,
        }
    }

    /// Publishes a monitor event to every instance's admin feeds (in the
    /// background: monitoring never delays the session's own work).
    /// Presence and agent events only while a dashboard is open somewhere.
    pub fn publish_monitor(&self, event: &MonitorEvent<'_>) {
        if !matches!(event, MonitorEvent::InstanceStats(_)) && !self.monitor.watched() {
            return;
        }
        let Ok(text) = serde_json::to_string(event) else {
            return;
        };
        let broker = self.broker.clone();
        tokio::spawn(async move {
            if let Err(error) = broker.publish_monitor(text).await {
                tracing::debug!(%error, "monitor event not published");
            }
        });
    }

    /// This instance's numbers right now.
    fn instance_stats(&self, last: &mut Totals) -> InstanceStats {
        let m = &self.metrics;
        let now = std::time::Instant::now();
        let totals = Totals {
            at: now,
            messages_in: counter_sum(&m.messages_received),
            messages_out: counter_sum(&m.messages_sent),
            connections: m.connections_opened.get(),
        };
        let secs = now.duration_since(last.at).as_secs_f64().max(0.001);
        let rate = |new: u64, old: u64| new.saturating_sub(old) as f64 / secs;
        let started_at = self.started_at;
        let stats = InstanceStats {
            instance: self.instance().to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at,
            uptime_ms: now_millis().saturating_sub(started_at),
            connections: m.connections.get(),
            clients: self.registry.client_count(),
            admin_feeds: self.monitor.local_count(),
            ready: self.is_ready(),
            messages_in_per_sec: rate(totals.messages_in, last.messages_in),
            messages_out_per_sec: rate(totals.messages_out, last.messages_out),
            connections_per_sec: rate(totals.connections, last.connections),
            ai: AiStats {
                provider: self.ai.provider_name().to_string(),
                calls: counter_sum(&m.ai_requests),
                cache_hits: m.ai_cache_hits.get(),
                singleflight_joins: m.ai_singleflight_joins.get(),
                rate_limited: m.ai_rate_limited.get(),
                breaker: match self.ai.breaker_state() {
                    crate::ai::breaker::BreakerState::Closed => "closed",
                    crate::ai::breaker::BreakerState::Open => "open",
                    crate::ai::breaker::BreakerState::HalfOpen => "half_open",
                }
                .to_string(),
            },
            timestamp: now_millis(),
        };
        *last = totals;
        stats
    }

    /// Publishes this instance's stats every [`STATS_INTERVAL`] until
    /// shutdown.
    pub(super) fn spawn_monitor(self: &Arc<Self>) {
        let hub = self.clone();
        tokio::spawn(async move {
            let mut last = Totals {
                at: std::time::Instant::now(),
                messages_in: 0,
                messages_out: 0,
                connections: 0,
            };
            let mut tick = tokio::time::interval(STATS_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = hub.monitor.wake.notified() => {}
                    _ = hub.shutdown.cancelled() => return,
                }
                let stats = hub.instance_stats(&mut last);
                hub.publish_monitor(&MonitorEvent::InstanceStats(&stats));
            }
        });
    }

    /// Disconnects `client_id` of `session` (close 4002) on whichever
    /// instance holds it; the session then sees `client_left` as for any
    /// departure. Returns the client as presence knew it.
    pub async fn disconnect_client(
        &self,
        session: &str,
        client_id: &str,
    ) -> Result<ClientInfo, HubError> {
        let members = self.store.members(session).await?;
        let Some(client) = members.into_iter().find(|m| m.client_id == client_id) else {
            return Err(HubError::new(
                ErrorCode::ClientNotFound,
                format!("no client `{client_id}` in session `{session}`"),
            ));
        };
        if client.instance == self.instance() {
            self.disconnect_local(session, client_id);
        } else {
            self.broker
                .send_to_instance(
                    &client.instance,
                    InstanceMessage::DisconnectClient {
                        session: session.to_string(),
                        client_id: client_id.to_string(),
                    },
                )
                .await?;
        }
        Ok(client)
    }

    /// The local half of [`Self::disconnect_client`].
    pub(super) fn disconnect_local(&self, session: &str, client_id: &str) {
        match self.registry.get(session, client_id) {
            Some(handle) => {
                handle.disconnect(CloseReason::AdminDisconnect);
                tracing::info!(session, client_id, "client disconnected by an admin");
            }
            None => tracing::debug!(session, client_id, "admin disconnect: client already gone"),
        }
    }
}
