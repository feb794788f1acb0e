//! The cluster loop of one instance: heartbeat, re-announce the local
//! clients after a Redis outage or reconnection, or after being reaped by
//! mistake (telling the sessions what was missing: `client_joined`,
//! `agent_changed`), reap dead instances and announce what was reaped. It
//! sits above the hub and calls its operations
//! ([`Hub::restore_local_presence`], [`Hub::announce_reaped`]); membership
//! and store stay hub-free.
//!
//! Two tasks: the heartbeat, which never waits for anything but its own
//! command, and the upkeep (re-announcing, reaping), woken after each
//! heartbeat. Re-announcing 20 000 clients, or reaping a big dead
//! instance, takes longer than the presence TTL; were the heartbeat to
//! wait for it, the others would reap this instance meanwhile, and it
//! would re-announce again, and so on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

use crate::hub::Hub;
use crate::membership::Membership;
use crate::membership::redis::RedisMembership;
use crate::redis::Beat;

/// What the heartbeat tells the upkeep.
struct Pulse {
    /// The last heartbeat reached Redis.
    reachable: AtomicBool,
    /// An outage, a reap of this instance (and the start) happened since
    /// the local clients were last re-announced.
    need_resync: AtomicBool,
    /// A heartbeat ended.
    beaten: Notify,
}

/// Runs both tasks: the upkeep until the hub shuts down, the heartbeat
/// until the hub leaves the cluster ([`Hub::leave_cluster`]).
pub fn spawn(membership: Arc<RedisMembership>, hub: Arc<Hub>) {
    let pulse = Arc::new(Pulse {
        reachable: AtomicBool::new(false),
        need_resync: AtomicBool::new(true),
        beaten: Notify::new(),
    });
    tokio::spawn(heartbeat(membership.clone(), hub.clone(), pulse.clone()));
    tokio::spawn(upkeep(membership, hub, pulse));
}

async fn heartbeat(membership: Arc<RedisMembership>, hub: Arc<Hub>, pulse: Arc<Pulse>) {
    let mut tick = tokio::time::interval(membership.heartbeat_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_healthy = false;
    // Beating on through the drain (ready: false), until the server leaves
    // the cluster once its connections are closed; past the drain's bound
    // (a hub shut down but not served), this task leaves itself.
    let drained = async {
        hub.shutdown().cancelled().await;
        tokio::time::sleep(hub.config().shutdown_timeout + membership.heartbeat_interval()).await;
    };
    tokio::pin!(drained);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut drained => break,
        }
        if membership.has_left() {
            return;
        }
        let ok = match membership
            .beat(hub.local_client_count(), hub.is_ready())
            .await
        {
            Ok(Beat::Continued) => true,
            // Not in the cluster's set: another instance took this one for
            // dead (a heartbeat later than the TTL) and reaped its clients,
            // though they are still connected here.
            Ok(Beat::Entered) => {
                pulse.need_resync.store(true, Ordering::Release);
                true
            }
            Err(e) => {
                if was_healthy {
                    tracing::warn!(error = %e, "redis heartbeat failed: not ready until it recovers");
                }
                pulse.need_resync.store(true, Ordering::Release);
                // Unhealthy at once; healthy again once the upkeep has put
                // the clients back.
                membership.set_healthy(false);
                hub.metrics().store_up.set(0);
                false
            }
        };
        was_healthy = ok;
        pulse.reachable.store(ok, Ordering::Release);
        pulse.beaten.notify_one();
    }
    membership.leave().await;
}

async fn upkeep(membership: Arc<RedisMembership>, hub: Arc<Hub>, pulse: Arc<Pulse>) {
    // The broker epoch this instance was subscribed on at the last round.
    let mut subscribed_on: Option<u64> = None;
    loop {
        tokio::select! {
            _ = pulse.beaten.notified() => {}
            _ = hub.shutdown().cancelled() => break,
        }
        let ok = pulse.reachable.load(Ordering::Acquire);
        // After an outage, a reconnection (Redis may have restarted empty)
        // or a reap of this instance, put this instance's clients back.
        let epoch = hub.broker_epoch();
        // Announce once this instance has been subscribed again for a
        // whole heartbeat: the other instances lost Redis at the same
        // moment and reconnect on the same schedule, so by then they are
        // listening too (the event log closes what is left of the race).
        // With no local client there is nothing to announce.
        let subscribed = hub.broker_healthy();
        let settled = subscribed && (subscribed_on == Some(epoch) || hub.local_client_count() == 0);
        subscribed_on = subscribed.then_some(epoch);
        let need_resync = pulse.need_resync.load(Ordering::Acquire);
        if ok && settled && (need_resync || epoch != membership.synced_epoch()) {
            tracing::info!("redis reachable: re-announcing local clients");
            // Cleared first: a reap or an outage during the re-announcing
            // sets it again, for another round.
            pulse.need_resync.store(false, Ordering::Release);
            match hub.restore_local_presence().await {
                Ok(()) => membership.mark_synced(epoch),
                Err(e) => {
                    pulse.need_resync.store(true, Ordering::Release);
                    tracing::warn!(error = %e, "re-announcing local clients failed");
                }
            }
        }
        // Read again: a heartbeat may have failed during the re-announcing.
        if !ok || !pulse.reachable.load(Ordering::Acquire) {
            continue;
        }
        membership.set_healthy(true);
        hub.metrics().store_up.set(1);
        match membership.reap().await {
            Ok(reaped) => hub.announce_reaped(&reaped),
            Err(partial) => {
                hub.announce_reaped(&partial.reaped);
                tracing::warn!(error = %partial.error, "reaping dead instances failed");
            }
        }
    }
}
