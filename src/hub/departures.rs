//! Departures: giving up a client's presence entry and agent role when its
//! connection ends (or its registration fails), and keeping what the store
//! did not take. A client whose connection ends while Redis is unreachable,
//! or answers too late (the leaves of a mass disconnect wait for the
//! pool), would otherwise stay in its session's presence, listed to every
//! joiner, its `client_left` never sent, and an agent would keep the role,
//! for as long as this instance lives.
//!
//! Everything about one client of one session on this instance runs in
//! turn, under its (session, client id) key: a registration holds the key
//! from before its presence write until its connection is in the registry,
//! and a departure holds it while it runs. So a departure never takes the
//! entry of a registration under way, and one that runs after it finds the
//! new connection in the registry and leaves its entry and role alone.
//! What the store did not take stays under the key, due, retried every
//! [`RETRY`] until the store takes it; a registration of that client here
//! first carries it out, so its `client_left` comes before the new
//! `client_joined`.
//!
//! A retry cannot tell whether the failed call ran after all (Redis ran it
//! after the hub stopped waiting). So a retry that finds nothing to take
//! asks what is there: no entry means the failed call took it and nobody
//! announced it, so the retry does, at the session's current presence
//! version (a member that joined in between, and never listed the client,
//! is told too; after a reap of this instance by mistake the reaper had
//! announced it already); another registration's entry (the client came
//! back through another instance) is that one's, and nothing is announced.
//! Likewise a vacant agent role is announced vacant (again, if another
//! departure announced it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use prometheus::IntGauge;
use tokio::sync::watch;

use super::Hub;
use crate::protocol::{ClientInfo, HubError};

/// Between two retries of the due departures.
const RETRY: Duration = Duration::from_secs(1);

/// Due departures retried at once: a mass disconnect's leftovers drain
/// several at a time, and most of the Redis pool (32 connections, 8 on a
/// Redis Cluster, each multiplexed) stays free for everything else.
const RETRY_CONCURRENCY: usize = 4;

type Key = (String, String);

/// This instance's keys in use and departures due, by (session, client id).
pub(super) struct Departures {
    inner: Mutex<Inner>,
    /// How many are due (`hub_departures_pending`).
    gauge: IntGauge,
}

#[derive(Default)]
struct Inner {
    keys: HashMap<Key, Pending>,
    /// How many of `keys` are due (the gauge), kept as they change.
    due: usize,
    /// The last turn's number.
    turns: u64,
}

enum Pending {
    /// The store did not take it: waiting for the next retry.
    Due(Departure),
    /// Turn `.0` holds the key; the receiver turns `true` when it lets go.
    Held(u64, watch::Receiver<bool>),
}

/// What is left to undo of one connection's registration.
struct Departure {
    info: ClientInfo,
    /// Its agent role is still to be released.
    agent: bool,
    /// Its presence entry is still to be removed.
    presence: bool,
    /// An attempt failed: it may have run in Redis all the same.
    retried: bool,
}

impl Inner {
    fn put(&mut self, key: Key, pending: Pending) -> Option<Pending> {
        let is_due = matches!(pending, Pending::Due(_));
        let old = self.keys.insert(key, pending);
        self.due += usize::from(is_due);
        self.due -= usize::from(matches!(old, Some(Pending::Due(_))));
        old
    }

    fn take(&mut self, key: &Key) -> Option<Pending> {
        let old = self.keys.remove(key);
        self.due -= usize::from(matches!(old, Some(Pending::Due(_))));
        old
    }
}

/// A key held: let go (its waiters woken) when dropped, also when the
/// holder's future is dropped part-way.
pub(super) struct Turn<'a> {
    departures: &'a Departures,
    key: Key,
    number: u64,
    done: watch::Sender<bool>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut inner = self.departures.lock();
        // Still this turn's (not left due by it).
        if matches!(inner.keys.get(&self.key), Some(Pending::Held(n, _)) if *n == self.number) {
            inner.take(&self.key);
        }
        drop(inner);
        let _ = self.done.send(true);
    }
}

impl Departures {
    pub(super) fn new(gauge: IntGauge) -> Self {
        Departures {
            inner: Mutex::default(),
            gauge,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Leaves `departure` due under the key (the turn holding it lets go
    /// next).
    fn leave_due(&self, key: &Key, departure: Departure) {
        let mut inner = self.lock();
        inner.put(key.clone(), Pending::Due(departure));
        self.gauge.set(inner.due as i64);
    }

    /// Takes the key, with its due departure if any; or the receiver to
    /// wait on when it is held.
    fn try_take(&self, key: &Key) -> Result<(Turn<'_>, Option<Departure>), watch::Receiver<bool>> {
        let mut inner = self.lock();
        if let Some(Pending::Held(_, held)) = inner.keys.get(key) {
            return Err(held.clone());
        }
        inner.turns += 1;
        let number = inner.turns;
        let (done, held) = watch::channel(false);
        let due = match inner.put(key.clone(), Pending::Held(number, held)) {
            Some(Pending::Due(departure)) => Some(departure),
            _ => None,
        };
        self.gauge.set(inner.due as i64);
        let turn = Turn {
            departures: self,
            key: key.clone(),
            number,
            done,
        };
        Ok((turn, due))
    }

    /// Takes the key once no one holds it.
    async fn take_turn(&self, key: &Key) -> (Turn<'_>, Option<Departure>) {
        loop {
            match self.try_take(key) {
                Ok(taken) => return taken,
                // Until the holder lets go (a closed channel: it let go too).
                Err(mut held) => {
                    let _ = held.wait_for(|done| *done).await;
                }
            }
        }
    }
}

impl Hub {
    /// Takes `client_id`'s key in `session` for a registration (or a
    /// re-announcement of it), first carrying out the departure due under
    /// it (an error if the store still does not take it). Held until the
    /// registration is done.
    pub(super) async fn registration_turn(
        &self,
        session: &str,
        client_id: &str,
    ) -> Result<Turn<'_>, HubError> {
        let key = (session.to_string(), client_id.to_string());
        let (turn, due) = self.departures.take_turn(&key).await;
        match due {
            Some(due) => self.run_departure(turn, due).await,
            None => Ok(turn),
        }
    }

    /// Leaves the release of the agent role `info`'s client held through
    /// this instance due, for the retries (the registration replacing it
    /// could not release it, and holds the key).
    pub(super) fn agent_release_due(&self, session: &str, info: &ClientInfo) {
        let key = (session.to_string(), info.client_id.clone());
        let departure = Departure {
            info: info.clone(),
            agent: true,
            presence: false,
            retried: true,
        };
        self.departures.leave_due(&key, departure);
    }

    /// Gives up what `info`'s registration holds in `session` (`agent`:
    /// the agent role; `presence`: its entry) and tells the session, now,
    /// in turn with the other registrations and departures of the client
    /// here (`turn`: the key, held already by a failed registration); what
    /// the store does not take is kept for the retries.
    pub(super) async fn depart(
        &self,
        turn: Option<Turn<'_>>,
        session: &str,
        info: &ClientInfo,
        agent: bool,
        presence: bool,
    ) {
        let (turn, due) = match turn {
            Some(turn) => (turn, None),
            None => {
                let key = (session.to_string(), info.client_id.clone());
                self.departures.take_turn(&key).await
            }
        };
        let mut departure = Departure {
            info: info.clone(),
            agent,
            presence,
            retried: false,
        };
        // An earlier connection's departure still due (the registration of
        // this one could not run it?): this one covers it.
        if let Some(due) = due {
            departure.agent |= due.agent;
            departure.presence |= due.presence;
            departure.retried = due.retried;
        }
        if let Err(error) = self.run_departure(turn, departure).await {
            tracing::warn!(session, client_id = %info.client_id, %error, "departure not taken by the store; retrying every second");
        }
    }

    /// Runs `departure` under `turn`. Taken: the turn is handed back.
    /// Not: the rest is left due, for the retries, and the turn let go.
    async fn run_departure<'a>(
        &self,
        turn: Turn<'a>,
        mut departure: Departure,
    ) -> Result<Turn<'a>, HubError> {
        match self.give_up(&turn.key.0, &mut departure).await {
            Ok(()) => Ok(turn),
            Err(error) => {
                departure.retried = true;
                self.departures.leave_due(&turn.key, departure);
                Err(error)
            }
        }
    }

    /// The store steps of a departure, each cleared once done (so a retry
    /// after a failure part-way does only the rest), with what they tell
    /// the session. A connection of the client registered here since owns
    /// the entry, and the role if it is an agent: those are left alone.
    async fn give_up(&self, session: &str, departure: &mut Departure) -> Result<(), HubError> {
        let client_id = departure.info.client_id.as_str();
        if let Some(live) = self.registry.get(session, client_id) {
            departure.presence = false;
            if live.info.is_agent() {
                departure.agent = false;
            }
        }
        if departure.agent {
            let released = self.give_up_agent(session, client_id).await?;
            if !released && departure.retried && self.store.agent(session).await?.is_none() {
                self.publish_agent_changed(session, None);
            }
            departure.agent = false;
        }
        if departure.presence {
            let left = self.store.leave(session, client_id).await?;
            if left.changed {
                self.publish_client_event(session, &departure.info, false, left.version);
            } else if departure.retried {
                // The version first: a registration through another
                // instance after it shows in the entry read next.
                let version = self.store.presence(session, 0).await?.version;
                if self.store.member(session, client_id).await?.is_none() {
                    self.publish_client_event(session, &departure.info, false, version);
                }
            }
            departure.presence = false;
        }
        if departure.retried {
            tracing::info!(session, client_id, "departure taken on a retry");
        }
        Ok(())
    }

    /// Leaves the cluster at the end of a clean stop, once the connections
    /// are closed (or the drain's bound passed) and the departures under
    /// way are done, waiting for those one heartbeat at most: what is still
    /// due is left to the next reap of another instance.
    pub async fn leave_cluster(&self) {
        let held: Vec<watch::Receiver<bool>> = self
            .departures
            .lock()
            .keys
            .values()
            .filter_map(|p| match p {
                Pending::Held(_, held) => Some(held.clone()),
                Pending::Due(_) => None,
            })
            .collect();
        let under_way =
            futures_util::future::join_all(held.into_iter().map(|mut held| async move {
                let _ = held.wait_for(|done| *done).await;
            }));
        let _ = tokio::time::timeout(self.config.heartbeat, under_way).await;
        self.membership.leave().await;
    }

    /// Retries the due departures every [`RETRY`] until shutdown, up to
    /// [`RETRY_CONCURRENCY`] at a time.
    pub(super) fn spawn_departure_retries(self: &Arc<Self>) {
        self.every(RETRY, |hub| async move {
            let due: Vec<Key> = hub
                .departures
                .lock()
                .keys
                .iter()
                .filter(|(_, p)| matches!(p, Pending::Due(_)))
                .map(|(key, _)| key.clone())
                .collect();
            // The store is still out: the rest waits for the next round
            // rather than a timeout each.
            let failed = AtomicBool::new(false);
            futures_util::stream::iter(due)
                .for_each_concurrent(RETRY_CONCURRENCY, |key| {
                    let (hub, failed) = (&hub, &failed);
                    // What is still due at shutdown is left to the reapers.
                    let stop = move || failed.load(Ordering::Relaxed) || hub.shutdown.is_cancelled();
                    async move {
                        if stop() {
                            return;
                        }
                        let (turn, due) = hub.departures.take_turn(&key).await;
                        let Some(due) = due else { return };
                        // Either may have come while waiting for the turn:
                        // after the stop began, nothing may be half-done.
                        if stop() {
                            hub.departures.leave_due(&key, due);
                            return;
                        }
                        if let Err(error) = hub.run_departure(turn, due).await {
                            tracing::debug!(session = %key.0, client_id = %key.1, %error, "departure not taken yet");
                            failed.store(true, Ordering::Relaxed);
                        }
                    }
                })
                .await;
        });
    }
}
