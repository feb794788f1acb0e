//! The clients connected to *this* instance, grouped by session, and the
//! fan-out of one serialized frame to them.
//!
//! Delivery never blocks, never awaits and never writes to a socket: each
//! recipient is handed the frame (complete WebSocket frame bytes, shared:
//! one clone per recipient is a reference count) through its
//! [`crate::outbox::Outbox`], bounded in bytes and frames, and its
//! connection's task is woken to write it. A client whose queue would
//! overflow is disconnected as a slow consumer instead of being buffered
//! without limit. The registry's locks are held only while frames are
//! handed over; the writes happen in the connections' own tasks, under no
//! shared lock, each writing everything queued for it in one `writev`.
//!
//! Logged session events go through [`Registry::deliver_logged`], which
//! keeps, per session, the position (epoch, offset) this instance last
//! delivered: an offset at or below it is dropped (never delivered twice),
//! one past a gap is refused so the caller fills the gap from the log first.
//! [`Registry::insert_at`] joins a client under the same lock, so a resumed
//! client's replay and its live events meet with no gap and no duplicate.
//! A presence event is not queued for a client whose member list already
//! reflects it (its version is at or below the list's, see
//! [`ClientHandle::wants`]).
//!
//! A large session's fan-out is handed off: its recipients are collected
//! under the locks, and a task of the session's own (`hub/fanout.rs`)
//! hands them to the outbox's flusher thread (`outbox/flusher.rs`), which
//! queues its frame and writes it, so neither joins, leaves and reads of
//! positions nor another session's events wait while thousands of frames
//! are queued, and the recipients' connection tasks do not write them. The
//! frame is queued for every recipient still in the session, as for any
//! event (the outbox's bounds hold as they do everywhere).
//!
//! A session may also have hidden watchers ([`Registry::watch`], the admin
//! dashboard's feed): they get its logged events like a client and count
//! as a local subscriber, but are no member (not in presence, not listed,
//! not counted as clients).
//!
//! The registry is also the instance's one notion of *local interest* in a
//! session: a session has it while it has at least one local subscriber,
//! client or watcher. The first one in and the last one out are reported to
//! the interest hook (the broker's [`crate::broker::Broker::interest`])
//! under the `sessions` write lock (watchers change under it too), so the
//! reports of one session arrive in the order they happened.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::fanout::{FANOUT_CHUNK, Fanouts, Forgotten, Job, Member};
pub use super::position::Position;
use super::recent::{KeptEvents, KeptForJoin, Recent};
use crate::metrics::Metrics;
use crate::outbox::{Outbound, Outbox};
use crate::protocol::{ClientInfo, CloseReason};

/// What every handle of one connection shares. One allocation per
/// connection.
struct Recipient {
    outbox: Outbox,
    /// The presence version the client's member list is as of: presence
    /// events of this version or an older one are not sent (it has them).
    presence_floor: AtomicU64,
    /// The registry's departure count when the connection last left a
    /// session, stopped watching it or was replaced in it (0: never): a
    /// large session's event collected before that skips it
    /// (`hub/fanout.rs`).
    left_at: AtomicU64,
}

impl AsRef<Outbox> for Recipient {
    fn as_ref(&self) -> &Outbox {
        &self.outbox
    }
}

impl Member for Recipient {
    fn left_at(&self) -> u64 {
        self.left_at.load(Ordering::Relaxed)
    }
}

/// The handle through which anything can send to, or disconnect, a client.
/// Cloning it is two reference-count bumps and a copy of the id.
#[derive(Clone)]
pub struct ClientHandle {
    pub info: Arc<ClientInfo>,
    pub conn_id: u64,
    shared: Arc<Recipient>,
}

impl ClientHandle {
    /// At most `max_queued_frames` frames and `max_queued_bytes` bytes of
    /// frames may wait to be written.
    pub fn new(
        info: ClientInfo,
        conn_id: u64,
        max_queued_frames: usize,
        max_queued_bytes: usize,
    ) -> Self {
        ClientHandle {
            info: Arc::new(info),
            conn_id,
            shared: Arc::new(Recipient {
                outbox: Outbox::new(max_queued_frames, max_queued_bytes),
                presence_floor: AtomicU64::new(0),
                left_at: AtomicU64::new(0),
            }),
        }
    }

    /// The connection's outbox, which its transport drains.
    pub fn outbox(&self) -> &Outbox {
        &self.shared.outbox
    }

    /// The client's member list is as of presence `version` (0: it takes
    /// every presence event, e.g. a resumed client).
    pub fn set_presence_floor(&self, version: u64) {
        self.shared.presence_floor.store(version, Ordering::Release);
    }

    /// Whether a session event is for this client: not one `except`s it,
    /// and not a presence event (of version `presence`) its member list
    /// already reflects.
    pub fn wants(&self, except: Option<&str>, presence: Option<u64>) -> bool {
        Some(self.info.client_id.as_str()) != except
            && presence.is_none_or(|v| v > self.shared.presence_floor.load(Ordering::Acquire))
    }

    /// The same connection under a new identity (after `register`).
    pub fn with_info(&self, info: ClientInfo) -> Self {
        ClientHandle {
            info: Arc::new(info),
            ..self.clone()
        }
    }

    /// Hands the client a frame and wakes its connection (which writes it).
    /// False if the client is gone, or was disconnected (1008) because the
    /// frame would overflow its queue; the eviction is counted once.
    pub fn send(&self, out: Outbound, metrics: &Metrics) -> bool {
        self.shared.outbox.send(out, metrics)
    }

    /// How many more frames the client's queue takes right now.
    pub fn room(&self) -> usize {
        self.shared.outbox.room()
    }

    /// Asks the connection to close; the first reason given wins. True if
    /// this call decided the reason.
    pub fn disconnect(&self, reason: CloseReason) -> bool {
        self.shared.outbox.disconnect(reason)
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        self.shared.outbox.close_reason()
    }
}

impl AsRef<Outbox> for ClientHandle {
    fn as_ref(&self) -> &Outbox {
        &self.shared.outbox
    }
}

/// Told `(session, true)` when a session gets its first local subscriber
/// and `(session, false)` when its last one leaves; must not block.
pub type InterestHook = Box<dyn Fn(&str, bool) + Send + Sync>;

#[derive(Default)]
pub struct Registry {
    sessions: RwLock<HashMap<String, HashMap<String, ClientHandle>>>,
    interest: Option<InterestHook>,
    /// Per session with local clients: the last delivered log position.
    /// Lock order: `positions`, then `sessions`.
    positions: Mutex<HashMap<String, Position>>,
    /// Per session a join is under way in: the events delivered since the
    /// join began (offset, frame, except), so a join whose log read live
    /// delivery then passed takes the difference from here. Kept only
    /// while a join needs them ([`Registry::keep_recent`]): an idle
    /// session holds no frames. Same lock order.
    recent: KeptEvents,
    /// Large sessions' events, handed by a task of the session's own to
    /// the flusher, which queues and writes them; notifies each logged
    /// delivery, for [`Registry::delivered`]. Lock order: after `watchers`.
    fanouts: Arc<Fanouts<Recipient>>,
    /// Hidden watchers per session (admin feeds, by connection id): they
    /// get the session's logged events like a client, are no member and
    /// not in presence. Lock order: after `recent`.
    watchers: RwLock<HashMap<String, HashMap<u64, ClientHandle>>>,
    /// Recipients that left a session, stopped watching one or were
    /// replaced in one, so far. Moves under the `sessions` write lock, so
    /// an event's recipients, collected under its read lock, are exactly
    /// those that had not left as of its value then.
    departures: AtomicU64,
}

/// [`Registry::insert_at`]'s `start` refused the join: read the log again.
#[derive(Debug)]
pub struct Refused;

/// What [`Registry::deliver_logged`] did with an event.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Queued for the session's local clients (maybe none but `except`).
    Delivered,
    /// At or below the last delivered offset: dropped.
    Duplicate,
    /// No local client: nothing to do, and no position kept.
    NoClients,
    /// Offsets after `after` are missing: fill them from the log first.
    Gap { after: u64 },
}

impl Registry {
    /// A registry that reports local interest in sessions to `hook`.
    pub fn with_interest(hook: InterestHook) -> Self {
        Registry {
            interest: Some(hook),
            ..Registry::default()
        }
    }

    /// Adds a client; returns the handle it replaced (same client id).
    pub fn insert(&self, session: &str, handle: ClientHandle) -> Option<ClientHandle> {
        let mut sessions = self.sessions.write().unwrap_or_else(|p| p.into_inner());
        self.add(&mut sessions, session, handle)
    }

    /// Adds under the write lock, reporting a session's first subscriber.
    fn add(
        &self,
        sessions: &mut HashMap<String, HashMap<String, ClientHandle>>,
        session: &str,
        handle: ClientHandle,
    ) -> Option<ClientHandle> {
        let clients = sessions.entry(session.to_string()).or_default();
        if clients.is_empty()
            && !self.is_watched(session)
            && let Some(hook) = &self.interest
        {
            hook(session, true);
        }
        let replaced = clients.insert(handle.info.client_id.clone(), handle);
        if let Some(old) = &replaced {
            self.departed(old);
        }
        replaced
    }

    /// `left` left a session, stopped watching it or was replaced in it.
    /// Called with the `sessions` write lock held.
    fn departed(&self, left: &ClientHandle) {
        let at = self.departures.fetch_add(1, Ordering::Relaxed) + 1;
        left.shared.left_at.store(at, Ordering::Relaxed);
    }

    /// Whether `session` has a hidden watcher (lock order: after `sessions`).
    fn is_watched(&self, session: &str) -> bool {
        self.watchers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(session)
    }

    /// Removes a client if it is still this connection. The session's last
    /// local subscriber also takes its delivery position and recent events
    /// along: the instance unsubscribes, so no later event would (the
    /// soak found every abandoned session left them behind).
    pub fn remove(&self, session: &str, client_id: &str, conn_id: u64) -> bool {
        let mut positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
        let mut sessions = self.sessions.write().unwrap_or_else(|p| p.into_inner());
        let Some(clients) = sessions.get_mut(session) else {
            return false;
        };
        if clients.get(client_id).is_none_or(|h| h.conn_id != conn_id) {
            return false;
        }
        if let Some(left) = clients.remove(client_id) {
            self.departed(&left);
        }
        if clients.is_empty() {
            sessions.remove(session);
            if !self.is_watched(session) {
                let forgotten = self.forget_delivery(&mut positions, session);
                if let Some(hook) = &self.interest {
                    hook(session, false);
                }
                drop((sessions, positions));
                drop(forgotten);
            }
        }
        true
    }

    /// Drops what live delivery kept of a session nobody here subscribes
    /// to any more. Called with `positions` and `sessions` held, and not
    /// `watchers` (lock order); the events its task had yet to queue are
    /// returned, to be let go of after those.
    fn forget_delivery(
        &self,
        positions: &mut HashMap<String, Position>,
        session: &str,
    ) -> Forgotten<Recipient> {
        positions.remove(session);
        if let Some(kept) = self.recent.lock().get_mut(session) {
            kept.events.clear();
        }
        self.fanouts.forget(session)
    }

    /// From now until the guard is dropped, live delivery keeps the
    /// session's events for [`Self::insert_at`]'s `start`. A join takes it
    /// before it reads the log: an event delivered before that was logged
    /// before the read (the read has it), one delivered after is kept.
    pub fn keep_recent(&self, session: &str) -> KeptForJoin<'_> {
        self.recent.keep(session)
    }

    /// How many sessions this instance keeps a delivery position of (each
    /// should have local subscribers), and how many events it keeps for
    /// joins under way.
    #[cfg(test)]
    fn delivery_state_len(&self) -> (usize, usize) {
        let positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
        let recent = self.recent.lock();
        (
            positions.len(),
            recent.values().map(|k| k.events.len()).sum(),
        )
    }

    pub fn get(&self, session: &str, client_id: &str) -> Option<ClientHandle> {
        let sessions = self.sessions.read().unwrap_or_else(|p| p.into_inner());
        sessions.get(session)?.get(client_id).cloned()
    }

    /// Queues `out` for every local client of the session but `except`;
    /// returns how many got it.
    pub fn deliver(
        &self,
        session: &str,
        out: &Outbound,
        except: Option<&str>,
        metrics: &Metrics,
    ) -> usize {
        let sessions = self.sessions.read().unwrap_or_else(|p| p.into_inner());
        let Some(clients) = sessions.get(session) else {
            return 0;
        };
        clients
            .values()
            .filter(|h| Some(h.info.client_id.as_str()) != except)
            .filter(|h| h.send(out.clone(), metrics))
            .count()
    }

    /// Delivers one logged event in offset order (see the module docs).
    /// `force` accepts it past a gap the log could not fill.
    pub fn deliver_logged(
        &self,
        event: &crate::broker::LoggedEvent,
        out: &Outbound,
        force: bool,
        metrics: &Arc<Metrics>,
    ) -> Delivery {
        let mut positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
        let sessions = self.sessions.read().unwrap_or_else(|p| p.into_inner());
        let mut recent = self.recent.lock();
        let watchers = self.watchers.read().unwrap_or_else(|p| p.into_inner());
        let watching = watchers.get(&event.header.session);
        let no_clients = HashMap::new();
        let clients = sessions.get(&event.header.session).unwrap_or(&no_clients);
        let mut kept = recent.get_mut(&event.header.session);
        if clients.is_empty() && watching.is_none() {
            positions.remove(&event.header.session);
            if let Some(kept) = kept {
                kept.events.clear();
            }
            return Delivery::NoClients;
        };
        let position = positions
            .entry(event.header.session.clone())
            .or_insert_with(|| Position {
                epoch: event.epoch.clone(),
                offset: event.offset.saturating_sub(1),
            });
        if position.epoch != event.epoch {
            // The log was lost and began again: its offsets restart at 1.
            *position = Position {
                epoch: event.epoch.clone(),
                offset: 0,
            };
            if let Some(kept) = kept.as_mut() {
                kept.events.clear();
            }
        }
        if event.offset <= position.offset {
            return Delivery::Duplicate;
        }
        if event.offset > position.offset + 1 && !force {
            return Delivery::Gap {
                after: position.offset,
            };
        }
        position.offset = event.offset;
        if let Some(kept) = kept {
            kept.push(Recent {
                offset: event.offset,
                out: out.clone(),
                except: event.header.except.clone(),
                presence: event.header.presence,
            });
        }
        drop(recent);
        let except = event.header.except.as_deref();
        let recipients = clients
            .values()
            .filter(|h| h.wants(except, event.header.presence))
            .chain(watching.into_iter().flat_map(HashMap::values));
        let large = clients.len() + watching.map_or(0, HashMap::len) > FANOUT_CHUNK;
        let mut task = None;
        // A session with jobs waiting has its next events queued after them.
        if large || self.fanouts.busy(&event.header.session) {
            let job = Job {
                position: position.clone(),
                out: out.clone(),
                departures: self.departures.load(Ordering::Relaxed),
                recipients: recipients.map(|h| h.shared.clone()).collect(),
            };
            task = self.fanouts.push(&event.header.session, job);
        } else {
            for h in recipients {
                h.send(out.clone(), metrics);
            }
        }
        drop((watchers, sessions, positions));
        if let Some(task) = task {
            self.fanouts.start(task, metrics);
        }
        self.fanouts.progress().notify_waiters();
        Delivery::Delivered
    }

    /// Waits until the session's events handed to its fan-out task are
    /// few enough for the next (see `hub/fanout.rs`).
    pub async fn fanout_room(&self, session: &str) {
        self.fanouts.room(session).await
    }

    /// Waits until every event delivered so far is queued for its local
    /// recipients (a large session's by its task).
    pub async fn settled(&self) {
        self.fanouts.settled().await
    }

    /// Waits until the session's local clients were handed `offset` of `epoch` (or
    /// it has none, or its log moved to another epoch).
    pub async fn delivered(&self, session: &str, epoch: &str, offset: u64) {
        self.fanouts
            .wait_until(|| {
                // A large session's position moves when its event is
                // handed to its task, before the frame is queued.
                let behind = self
                    .position(session)
                    .is_some_and(|p| p.epoch == epoch && p.offset < offset)
                    || self.fanouts.pending(session, epoch, offset);
                !behind
            })
            .await
    }

    /// The last delivered position of a session that has local
    /// subscribers now (clients or watchers): every event up to it was
    /// logged before this call (and handed over: a large session's task
    /// may still be queueing it, see [`Self::delivered`]).
    pub fn live_position(&self, session: &str) -> Option<Position> {
        let positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
        let sessions = self.sessions.read().unwrap_or_else(|p| p.into_inner());
        let subscribed = sessions.get(session).is_some_and(|c| !c.is_empty())
            || self
                .watchers
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(session);
        positions.get(session).filter(|_| subscribed).cloned()
    }

    /// The last delivered (handed over) position of a session with local
    /// clients.
    pub fn position(&self, session: &str) -> Option<Position> {
        let positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
        positions.get(session).cloned()
    }

    /// Sessions that have local subscribers (clients or watchers).
    pub fn sessions(&self) -> Vec<String> {
        let sessions = self.sessions.read().unwrap_or_else(|p| p.into_inner());
        let watchers = self.watchers.read().unwrap_or_else(|p| p.into_inner());
        let watched_only = watchers.keys().filter(|s| !sessions.contains_key(*s));
        sessions.keys().chain(watched_only).cloned().collect()
    }

    /// Joins `handle` to the session atomically with respect to live
    /// delivery. `read` is the log's position as the join read it. `start`
    /// gets the position live delivery continues from (the last delivered
    /// one; with no local client yet, `read`) and the events delivered
    /// since the join took its [`Self::keep_recent`] guard, queues what the
    /// client gets
    /// first (confirmation, replay) and returns the position to keep — or
    /// None to refuse (read the log again). Returns the replaced handle.
    pub fn insert_at(
        &self,
        session: &str,
        handle: ClientHandle,
        read: Position,
        start: impl FnOnce(&Position, &VecDeque<Recent>, &ClientHandle) -> Option<Position>,
    ) -> Result<Option<ClientHandle>, Refused> {
        let mut positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
        let mut sessions = self.sessions.write().unwrap_or_else(|p| p.into_inner());
        let recent = self.recent.lock();
        // A hidden watcher keeps live delivery (and `recent`) going too.
        let has_clients = sessions.get(session).is_some_and(|c| !c.is_empty())
            || self
                .watchers
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(session);
        let live = match positions.get(session) {
            Some(p) if has_clients => p.clone(),
            _ => read,
        };
        let none = VecDeque::new();
        let kept = match recent.get(session) {
            Some(k) if has_clients => &k.events,
            _ => &none,
        };
        let keep = start(&live, kept, &handle).ok_or(Refused)?;
        positions.insert(session.to_string(), keep);
        Ok(self.add(&mut sessions, session, handle))
    }

    /// Adds a hidden watcher of `session` (see `watchers`); the first
    /// local subscriber of a session without clients reports interest.
    /// `read` is the log's position as the watch read it: with no local
    /// subscriber yet, live delivery (and catching up once the channel is
    /// subscribed) continues from there, so the watcher misses nothing
    /// published after it.
    pub fn watch(&self, session: &str, handle: ClientHandle, read: Option<Position>) {
        let mut positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
        // Held so interest changes of clients and watchers are ordered.
        let sessions = self.sessions.write().unwrap_or_else(|p| p.into_inner());
        let mut watchers = self.watchers.write().unwrap_or_else(|p| p.into_inner());
        let watching = watchers.entry(session.to_string()).or_default();
        if watching.is_empty() && !sessions.contains_key(session) {
            match read {
                Some(read) => positions.insert(session.to_string(), read),
                None => positions.remove(session),
            };
            if let Some(hook) = &self.interest {
                hook(session, true);
            }
        }
        watching.insert(handle.conn_id, handle);
    }

    /// Removes the watcher `conn_id` of `session`; the last local
    /// subscriber out reports the end of interest.
    pub fn unwatch(&self, session: &str, conn_id: u64) {
        let mut positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
        let sessions = self.sessions.write().unwrap_or_else(|p| p.into_inner());
        let mut watchers = self.watchers.write().unwrap_or_else(|p| p.into_inner());
        let Some(w) = watchers.get_mut(session) else {
            return;
        };
        let Some(left) = w.remove(&conn_id) else {
            return;
        };
        self.departed(&left);
        if w.is_empty() {
            watchers.remove(session);
            drop(watchers);
            if !sessions.contains_key(session) {
                let forgotten = self.forget_delivery(&mut positions, session);
                if let Some(hook) = &self.interest {
                    hook(session, false);
                }
                drop((sessions, positions));
                drop(forgotten);
            }
        }
    }

    pub fn client_count(&self) -> usize {
        let sessions = self.sessions.read().unwrap_or_else(|p| p.into_inner());
        sessions.values().map(HashMap::len).sum()
    }

    pub fn all(&self) -> Vec<(String, ClientHandle)> {
        let sessions = self.sessions.read().unwrap_or_else(|p| p.into_inner());
        sessions
            .iter()
            .flat_map(|(s, clients)| clients.values().map(move |h| (s.clone(), h.clone())))
            .collect()
    }
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
