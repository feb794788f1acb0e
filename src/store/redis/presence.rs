//! Presence (who is in a session, and its version) and the reaping of
//! what a dead instance left in it: each client is tagged in its
//! instance's member set, so a reaper takes exactly that instance's
//! entries, once.

use super::scripts::{JOIN_PRESENCE, READ_PRESENCE, RELEASE_AGENT_IF, TAKE_PRESENCE};
use super::{RedisStore, decode, encode};
use crate::protocol::{ClientInfo, HubError, now_millis};
use crate::store::{JoinRefused, JoinRule, Presence, PresenceChange, Reaped, StoreResult};

fn member_tag(session: &str, client_id: &str) -> String {
    format!("{session}\t{client_id}")
}

impl RedisStore {
    pub(super) async fn join_presence(
        &self,
        session: &str,
        client: &ClientInfo,
        rule: JoinRule,
    ) -> StoreResult<Result<PresenceChange, JoinRefused>> {
        // Two slots (the instance's member set, the session's presence), so
        // two commands, in this order: a member tag without presence is
        // harmless to a reaper, presence without a tag would never be reaped.
        let tag_key = self.backend.keys.instance_members(&client.instance);
        let tag = member_tag(session, &client.client_id);
        let _: i64 = self
            .backend
            .query("join_member", ::redis::cmd("SADD").arg(&tag_key).arg(&tag))
            .await?;
        let mut invocation = JOIN_PRESENCE.prepare_invoke();
        invocation
            .key(self.backend.keys.presence(session))
            .key(self.backend.keys.session_stats(session))
            .arg(&client.client_id)
            .arg(encode(client)?)
            .arg(now_millis())
            .arg(rule.max_members)
            .arg(client.owner.as_deref().unwrap_or(""));
        // `{created, version}`: HSET answers how many fields it created, 1 =
        // the entry was missing; or `{-1}` (full) or `{-2}` (held by another
        // user), with nothing written.
        let answer: Vec<i64> = self.write_script("join", session, &invocation).await?;
        match answer.as_slice() {
            [-1] => {
                // The id is in no presence entry, so its tag guards nothing:
                // refused joins must not grow the instance's member set.
                let _: i64 = self
                    .backend
                    .query("join_member", ::redis::cmd("SREM").arg(&tag_key).arg(&tag))
                    .await?;
                Ok(Err(JoinRefused::Full))
            }
            // The id is held: by this instance maybe, whose tag it is too.
            [-2] => Ok(Err(JoinRefused::HeldByAnother)),
            &[created, version] => Ok(Ok(PresenceChange {
                changed: created == 1,
                version: u64::try_from(version).unwrap_or_default(),
            })),
            other => Err(HubError::store_unavailable(format!(
                "join: unexpected answer {other:?} from Redis"
            ))),
        }
    }

    pub(super) async fn leave_presence(
        &self,
        session: &str,
        client_id: &str,
    ) -> StoreResult<PresenceChange> {
        let mut invocation = TAKE_PRESENCE.prepare_invoke();
        invocation
            .key(self.backend.keys.presence(session))
            .key(self.backend.keys.session_stats(session))
            .arg(client_id)
            .arg(&self.instance)
            .arg(now_millis());
        let removed: Option<(String, u64)> = self.backend.script("leave", &invocation).await?;
        // After the take (another slot): a tag left behind by a failure here
        // only makes a reaper find nothing to take.
        let _: i64 = self
            .backend
            .query(
                "leave_member",
                ::redis::cmd("SREM")
                    .arg(self.backend.keys.instance_members(&self.instance))
                    .arg(member_tag(session, client_id)),
            )
            .await?;
        Ok(PresenceChange {
            changed: removed.is_some(),
            version: removed.map_or(0, |(_, v)| v),
        })
    }

    pub(super) async fn live_presence(&self, session: &str, limit: usize) -> StoreResult<Presence> {
        // Two slots (the session's, the membership's): two commands at once.
        let mut presence = READ_PRESENCE.prepare_invoke();
        presence
            .key(self.backend.keys.presence(session))
            .key(self.backend.keys.session_stats(session))
            .arg(limit);
        let ttl = std::time::Duration::from_millis(self.presence_ttl_ms);
        let (raw, alive): (Vec<String>, Vec<String>) = tokio::try_join!(
            self.backend.script("members", &presence),
            self.backend.instances_by_age("members_alive", ttl, true),
        )?;
        let number = |field: Option<&String>| field.and_then(|v| v.parse::<u64>().ok());
        let version = number(raw.first()).unwrap_or(0);
        let count = number(raw.get(1)).unwrap_or(0);
        let mut members: Vec<ClientInfo> = raw
            .iter()
            .skip(2)
            .filter_map(|r| decode::<ClientInfo>("presence", r).ok())
            // Clients of dead instances linger until reaped; hide them now.
            .filter(|c| c.instance == self.instance || alive.contains(&c.instance))
            .collect();
        let hidden = raw.len().saturating_sub(2) - members.len();
        // Join order, as the memory store keeps it.
        members.sort_by(|a, b| (a.connected_at, &a.client_id).cmp(&(b.connected_at, &b.client_id)));
        Ok(Presence {
            members,
            total: usize::try_from(count)
                .unwrap_or(usize::MAX)
                .saturating_sub(hidden),
            version,
        })
    }
}

impl RedisStore {
    /// Reaps `instance`, pushing what it takes onto `reaped` as it goes (so
    /// a failure part-way still reports what is already gone).
    pub(super) async fn reap_into(
        &self,
        instance: &str,
        reaped: &mut Vec<Reaped>,
    ) -> StoreResult<()> {
        let keys = &self.backend.keys;
        let tags: Vec<String> = self
            .backend
            .query(
                "reap_members",
                ::redis::cmd("SMEMBERS").arg(keys.instance_members(instance)),
            )
            .await?;
        for tag in &tags {
            let Some((session, client_id)) = tag.split_once('\t') else {
                continue;
            };
            // The member set goes as a whole once every tag is reaped.
            let mut take = TAKE_PRESENCE.prepare_invoke();
            take.key(keys.presence(session))
                .key(keys.session_stats(session))
                .arg(client_id)
                .arg(instance)
                .arg(now_millis());
            let taken: Option<(String, u64)> = self.backend.script("reap_take", &take).await?;
            if let Some((client, version)) =
                taken.and_then(|(t, v)| serde_json::from_str::<ClientInfo>(&t).ok().map(|c| (c, v)))
            {
                reaped.push(Reaped::ClientLeft {
                    session: session.to_string(),
                    client,
                    version,
                });
            }
            let mut release = RELEASE_AGENT_IF.prepare_invoke();
            release
                .key(keys.agent(session))
                .arg("instance")
                .arg(instance);
            let released: i64 = self.backend.script("reap_agent", &release).await?;
            if released == 1 {
                reaped.push(Reaped::AgentReleased {
                    session: session.to_string(),
                });
            }
        }
        let _: () = self
            .backend
            .query(
                "reap_done",
                ::redis::cmd("DEL").arg(keys.instance_members(instance)),
            )
            .await?;
        tracing::info!(dead = %instance, clients = tags.len(), "reaped a dead instance's sessions");
        Ok(())
    }
}
