//! The cluster loop of one instance: heartbeat, re-announce the local
//! clients after a Redis outage or reconnection, or after being reaped by
//! mistake (telling the sessions what was missing: `client_joined`,
//! `agent_changed`), reap dead instances and
//! announce what was reaped. It sits above the hub and calls its
//! operations ([`Hub::restore_local_presence`], [`Hub::announce_reaped`]);
//! membership and store stay hub-free.

use std::sync::Arc;

use crate::hub::Hub;
use crate::membership::Membership;
use crate::membership::redis::RedisMembership;
use crate::redis::Beat;

/// Runs the loop until the hub shuts down, then leaves the cluster.
pub fn spawn(membership: Arc<RedisMembership>, hub: Arc<Hub>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(membership.heartbeat_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_healthy = false;
        // Set by an outage (and at start), cleared once the clients are back.
        let mut need_resync = true;
        // The broker epoch this instance was subscribed on at the last tick.
        let mut subscribed_on: Option<u64> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = hub.shutdown().cancelled() => break,
            }
            let ok = match membership
                .beat(hub.local_client_count(), hub.is_ready())
                .await
            {
                Ok(Beat::Continued) => true,
                // Not in the cluster's set: another instance took this
                // one for dead (a heartbeat later than the TTL) and reaped
                // its clients, though they are still connected here.
                Ok(Beat::Entered) => {
                    need_resync = true;
                    true
                }
                Err(e) => {
                    if was_healthy {
                        tracing::warn!(error = %e, "redis heartbeat failed: not ready until it recovers");
                    }
                    need_resync = true;
                    false
                }
            };
            // After an outage or a reconnection (Redis may have restarted
            // empty), put this instance's clients back.
            let epoch = hub.broker_epoch();
            // Announce once this instance has been subscribed again for a
            // whole heartbeat: the other instances lost Redis at the same
            // moment and reconnect on the same schedule, so by then they
            // are listening too (the event log closes what is left of the
            // race). With no local client there is nothing to announce.
            let subscribed = hub.broker_healthy();
            let settled =
                subscribed && (subscribed_on == Some(epoch) || hub.local_client_count() == 0);
            subscribed_on = subscribed.then_some(epoch);
            if ok && settled && (need_resync || epoch != membership.synced_epoch()) {
                tracing::info!("redis reachable: re-announcing local clients");
                match hub.restore_local_presence().await {
                    Ok(()) => {
                        membership.mark_synced(epoch);
                        need_resync = false;
                    }
                    Err(e) => tracing::warn!(error = %e, "re-announcing local clients failed"),
                }
            }
            membership.set_healthy(ok);
            hub.metrics().store_up.set(i64::from(ok));
            was_healthy = ok;
            if ok {
                match membership.reap().await {
                    Ok(reaped) => hub.announce_reaped(&reaped),
                    Err(partial) => {
                        hub.announce_reaped(&partial.reaped);
                        tracing::warn!(error = %partial.error, "reaping dead instances failed");
                    }
                }
            }
        }
        if let Err(e) = membership.leave().await {
            tracing::debug!(error = %e, "leaving the cluster failed; others reap after the TTL");
        }
    });
}
