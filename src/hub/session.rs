//! A client's membership of a session: joining (`register`) and leaving
//! (the connection ended).
//!
//! The transport owns the socket; this module owns what a registration
//! means: validation, presence, the agent role, the first frames a client
//! gets, replacing an older connection with the same client id, and the
//! announcements to the rest of the session, and, with auth on, what the
//! connection's token allows (sessions, the agent role, client ids owned by
//! its `sub`). Resume (`since` offsets) plugs into [`Hub::join`].

use std::sync::Arc;

use super::Hub;
use super::registry::{ClientHandle, CloseReason};
use crate::auth::Identity;
use crate::protocol::{
    ClientInfo, ErrorCode, HubError, REGISTRATION_CLIENTS_MAX, Register, ServerEvent, now_millis,
};
use crate::store::AgentRef;

const MAX_ID_LEN: usize = 128;

/// A registered client's identity on one connection.
#[derive(Debug)]
pub struct Member {
    pub session: String,
    pub info: ClientInfo,
    /// Registered with the `whatsapp` capability (it may have been replaced
    /// as the session's agent since).
    pub is_agent: bool,
}

/// What a successful join gives the connection.
pub struct Joined {
    pub member: Arc<Member>,
    /// The connection's handle under the registered identity.
    pub handle: ClientHandle,
}

/// A validated `register`.
struct Admission {
    session: String,
    info: ClientInfo,
    is_agent: bool,
}

fn admit(hub: &Hub, reg: Register) -> Result<Admission, HubError> {
    let session = reg.session.unwrap_or_else(|| "default".to_string());
    let client_id = reg.client_id.unwrap_or_else(|| {
        format!(
            "client-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        )
    });
    for (field, value) in [("session", &session), ("client_id", &client_id)] {
        if value.trim().is_empty()
            || value.len() > MAX_ID_LEN
            || value.chars().any(char::is_control)
        {
            return Err(HubError::new(
                ErrorCode::InvalidField,
                format!("field `{field}` must be 1 to {MAX_ID_LEN} printable characters"),
            ));
        }
    }
    let client_name = reg
        .client_name
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| client_id.clone());
    let is_agent = reg.capabilities.iter().any(|c| c == "whatsapp");
    Ok(Admission {
        session,
        info: ClientInfo {
            client_id,
            client_name,
            instance: hub.instance().to_string(),
            capabilities: reg.capabilities,
            owner: None,
        },
        is_agent,
    })
}

impl Hub {
    /// Registers the client on connection `conn` (its handle from before
    /// registration). The steps run in this order, and the order is part of
    /// the protocol (docs/protocol.md):
    ///
    /// 1. validate the registration and, with a token, authorize it
    ///    (`forbidden`: nothing else happens, the connection stays open);
    ///    refuse it (`session_full`) when the session has no room;
    /// 2. seed the session's contacts, join presence, read contacts/members;
    /// 3. claim the agent role, before the confirmation: a client told
    ///    `agent: true` already receives `execute`;
    /// 4. queue `registration_confirmed` and the contact list *before* the
    ///    connection joins the registry, so no session event overtakes them;
    /// 5. join the registry, replacing (close 4001) an older connection with
    ///    the same client id: its agent role passes on, and the calls sent
    ///    to it fail with `agent_disconnected`;
    /// 6. announce `client_joined` (and `agent_changed` for an agent).
    pub async fn join(
        self: &Arc<Self>,
        conn: &ClientHandle,
        reg: Register,
        request_id: Option<&str>,
        identity: Option<&Identity>,
    ) -> Result<Joined, HubError> {
        // 1. Validate and authorize.
        let Admission {
            session,
            mut info,
            is_agent,
        } = admit(self, reg)?;
        if let Some(identity) = identity {
            self.authorize(identity, &session, &info, is_agent).await?;
            info.owner = Some(identity.sub.clone());
        }
        let client_id = info.client_id.as_str();
        self.check_room(&session, client_id).await?;

        // 2. Contacts and presence.
        self.store
            .seed_contacts(&session, &self.connector.initial_contacts())
            .await?;
        self.store.join(&session, &info).await?;
        let contacts = self.store.contacts(&session).await?;
        let members = self.store.members(&session).await?;

        // 3. The agent role, before anyone is told `agent: true`.
        if is_agent {
            let me = AgentRef {
                client_id: client_id.to_string(),
                instance: self.instance().to_string(),
            };
            self.store.claim_agent(&session, &me).await?;
        }

        // 4. The first frames, ahead of any session event.
        let handle = conn.with_info(info.clone());
        self.send_direct(
            &handle,
            &ServerEvent::RegistrationConfirmed {
                client_id,
                client_name: &info.client_name,
                session: &session,
                instance: self.instance(),
                agent: is_agent,
                clients: &members[..members.len().min(REGISTRATION_CLIENTS_MAX)],
                clients_total: members.len(),
                request_id,
            },
            "registration_confirmed",
        );
        self.send_direct(
            &handle,
            &ServerEvent::ContactListBroadcast {
                contacts: &contacts,
                total_count: contacts.len(),
                timestamp: now_millis(),
            },
            "contact_list_broadcast",
        );

        // 5. Join the registry; an older connection of this client id goes.
        if let Some(old) = self.registry.insert(&session, handle.clone())
            && old.conn_id != handle.conn_id
        {
            self.replaced(&session, &old, client_id, is_agent).await?;
        }

        // 6. Announce.
        self.publish_client_event(&session, &info, true);
        if is_agent {
            self.publish_agent_changed(&session, Some(client_id));
        }
        tracing::info!(session, client_id, is_agent, "client registered");
        Ok(Joined {
            member: Arc::new(Member {
                session,
                info,
                is_agent,
            }),
            handle,
        })
    }

    /// `session_full` when the session holds `MAX_CLIENTS_PER_SESSION`
    /// clients on every instance together (presence in the store) and
    /// `client_id` is not one of them (registering again replaces, it does
    /// not add). Two clients joining at the same moment on different
    /// instances may both pass: the bound is tight to within the joins in
    /// flight, which is what it is for (no session grows without limit).
    async fn check_room(&self, session: &str, client_id: &str) -> Result<(), HubError> {
        let max = self.config.max_clients_per_session;
        let members = self.store.members(session).await?;
        if members.len() >= max && !members.iter().any(|m| m.client_id == client_id) {
            return Err(HubError::new(
                ErrorCode::SessionFull,
                format!("session `{session}` already has {max} clients (MAX_CLIENTS_PER_SESSION)"),
            ));
        }
        Ok(())
    }

    /// What the token allows (docs/security.md §3): the session must be in
    /// `sessions` (admin: any), the agent role needs role agent or admin,
    /// and a client id present in the session (on any instance) must have
    /// been registered by the same `sub`.
    async fn authorize(
        &self,
        identity: &Identity,
        session: &str,
        info: &ClientInfo,
        is_agent: bool,
    ) -> Result<(), HubError> {
        if !identity.may_use_session(session) {
            return Err(HubError::new(
                ErrorCode::Forbidden,
                format!("the token does not allow session `{session}`"),
            ));
        }
        if is_agent && !identity.may_be_agent() {
            return Err(HubError::new(
                ErrorCode::Forbidden,
                "the `whatsapp` capability (the agent role) needs a token with role agent or admin",
            ));
        }
        let members = self.store.members(session).await?;
        if let Some(held) = members.iter().find(|m| m.client_id == info.client_id)
            && held.owner.as_deref() != Some(identity.sub.as_str())
        {
            return Err(HubError::new(
                ErrorCode::Forbidden,
                format!(
                    "client_id `{}` is held by another user in this session",
                    info.client_id
                ),
            ));
        }
        Ok(())
    }

    /// `old` was registered with the same client id as the joining client.
    async fn replaced(
        self: &Arc<Self>,
        session: &str,
        old: &ClientHandle,
        client_id: &str,
        is_agent: bool,
    ) -> Result<(), HubError> {
        old.disconnect(CloseReason::Replaced);
        // The old connection's cleanup will see it was replaced and do
        // nothing, so an agent role it held must be given up here, and the
        // calls sent to it fail as if it had disconnected (the new
        // connection never saw them).
        let was_agent = old.info.capabilities.iter().any(|c| c == "whatsapp");
        if was_agent {
            self.agent_gone(session, client_id).await;
        }
        if was_agent && !is_agent && self.store.release_agent(session, client_id).await? {
            self.publish_agent_changed(session, None);
        }
        Ok(())
    }

    /// The connection `conn_id` of `member` ended: give up the agent role
    /// and presence and tell the session, unless a newer connection with the
    /// same client id replaced it (that one is the member now).
    pub async fn leave(self: &Arc<Self>, member: &Member, conn_id: u64) {
        let session = &member.session;
        let client_id = &member.info.client_id;
        if !self.registry.remove(session, client_id, conn_id) {
            return;
        }
        if member.is_agent {
            self.agent_gone(session, client_id).await;
            match self.store.release_agent(session, client_id).await {
                Ok(true) => self.publish_agent_changed(session, None),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "could not release the agent"),
            }
        }
        match self.store.leave(session, client_id).await {
            Ok(true) => self.publish_client_event(session, &member.info, false),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "could not remove presence"),
        }
        tracing::info!(session, client_id, "client left");
    }
}
