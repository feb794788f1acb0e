//! This instance's presence after the store lost it: what the cluster loop
//! (`cluster::driver`) asks of the hub once Redis is back (put the
//! local clients and agents back, telling each session what it had lost)
//! and after reaping dead instances (tell the sessions what was taken).

use super::Hub;
use crate::protocol::HubError;
use crate::store::{JoinRule, Reaped};

impl Hub {
    /// Puts this instance's clients and agents back into the store, and
    /// tells each session what it had lost (Redis restarted empty, or
    /// another instance reaped them while this one was cut off): only
    /// entries that were actually missing are announced, so a plain
    /// reconnection is silent.
    pub async fn restore_local_presence(&self) -> Result<(), HubError> {
        for (session, handle) in self.registry.all() {
            // Draining: this instance leaves the cluster next, and what it
            // wrote after that would belong to no live instance.
            if self.shutdown.is_cancelled() {
                break;
            }
            // In turn with the client's departures here; gone meanwhile, or
            // registered again (that registration wrote its own entry): not
            // put back.
            let _turn = self
                .registration_turn(&session, &handle.info.client_id)
                .await?;
            let current = self.registry.get(&session, &handle.info.client_id);
            if current.is_none_or(|c| c.conn_id != handle.conn_id) {
                continue;
            }
            // The id taken meanwhile by another user's client: that one is
            // the member now.
            let Ok(joined) = self
                .store
                .join(&session, &handle.info, JoinRule::UNBOUNDED)
                .await?
            else {
                continue;
            };
            if joined.changed {
                self.reannounce_client(&session, &handle.info, joined.version)
                    .await;
            }
            if handle.info.is_agent() {
                let me = self.agent_here(&handle.info.client_id);
                if self.store.claim_agent_if_vacant(&session, &me).await? {
                    self.reannounce_agent(&session, &me.client_id).await;
                }
            }
        }
        Ok(())
    }

    /// Tells the sessions what the reaper took from dead instances.
    pub fn announce_reaped(&self, reaped: &[Reaped]) {
        for event in reaped {
            match event {
                Reaped::ClientLeft {
                    session,
                    client,
                    version,
                } => self.publish_client_event(session, client, false, *version),
                Reaped::AgentReleased { session } => self.publish_agent_changed(session, None),
            }
        }
    }
}
