//! One connection's side of the session, between the transport and the
//! hub: it holds the connection's handle and, once registered, its
//! [`Member`] identity, and turns each message into a join, a pong or a
//! [`Request`].

use std::sync::Arc;

use super::registry::ClientHandle;
use super::requests::Request;
use super::session::Member;
use super::{Hub, SessionUse};
use crate::auth::{Identity, Scope};
use crate::protocol::{ClientMessage, ErrorCode, HubError, ServerEvent, now_millis};

/// One connection's side of the session: the transport feeds it messages,
/// it decides what they mean.
pub struct ClientSession {
    hub: Arc<Hub>,
    /// This connection's handle; carries the identity once registered.
    handle: ClientHandle,
    member: Option<Arc<Member>>,
    /// The connection's verified token (None with auth off).
    identity: Option<Arc<Identity>>,
}

impl ClientSession {
    pub fn new(hub: Arc<Hub>, handle: ClientHandle, identity: Option<Arc<Identity>>) -> Self {
        ClientSession {
            hub,
            handle,
            member: None,
            identity,
        }
    }

    pub fn reply_error(&self, err: &HubError, request_id: Option<&str>) {
        self.hub.reply_error(&self.handle, err, request_id);
    }

    /// Whether a `register` of this connection succeeded.
    pub fn is_registered(&self) -> bool {
        self.member.is_some()
    }

    /// `ping` and `register` (see [`crate::protocol::Execution::Immediate`]).
    pub async fn immediate(
        &mut self,
        msg: ClientMessage,
        request_id: Option<&str>,
    ) -> Result<(), HubError> {
        match msg {
            ClientMessage::Ping => {
                self.hub.send_to(
                    &self.handle,
                    &ServerEvent::Pong {
                        timestamp: now_millis(),
                        request_id,
                    },
                );
                Ok(())
            }
            ClientMessage::Register(reg) => {
                if self.member.is_some() {
                    return Err(HubError::new(
                        ErrorCode::AlreadyRegistered,
                        "this connection is already registered",
                    ));
                }
                let joined = self
                    .hub
                    .join(&self.handle, reg, request_id, self.identity.as_deref())
                    .await?;
                self.handle = joined.handle;
                self.member = Some(joined.member);
                Ok(())
            }
            // Not immediate: handled as a request of a registered client.
            other => {
                self.request(other)?.answer(request_id).await;
                Ok(())
            }
        }
    }

    /// Any other message: a request that needs a registered client. The
    /// returned [`Request`] owns what it needs, so it can run in a task.
    pub fn request(&self, msg: ClientMessage) -> Result<Request, HubError> {
        let Some(member) = self.member.clone() else {
            return Err(HubError::new(
                ErrorCode::NotRegistered,
                "send `register` before any other request",
            ));
        };
        if let Some(identity) = &self.identity {
            identity.require(needed_scope(&msg))?;
        }
        Ok(Request {
            hub: self.hub.clone(),
            handle: self.handle.clone(),
            member,
            msg,
        })
    }

    /// The connection ended.
    pub async fn leave(&mut self) {
        if let Some(member) = self.member.take() {
            self.hub.leave(&member, self.handle.conn_id).await;
        }
    }
}

/// What a registered client's message needs of its token: reading for
/// reads, sending for anything that sends or writes into the session.
fn needed_scope(msg: &ClientMessage) -> Scope {
    match msg {
        ClientMessage::WhatsAppCommand { command, .. } => match SessionUse::of(command) {
            SessionUse::Read => Scope::Read,
            SessionUse::Write => Scope::Send,
        },
        ClientMessage::Register(_)
        | ClientMessage::Ping
        | ClientMessage::AiRequest { .. }
        | ClientMessage::ListApprovals => Scope::Read,
        ClientMessage::WhatsAppAiCommand { .. }
        | ClientMessage::Broadcast { .. }
        | ClientMessage::ExecuteResult { .. }
        | ClientMessage::ContactsUpdate { .. }
        | ClientMessage::IncomingMessage { .. }
        | ClientMessage::Approve { .. }
        | ClientMessage::Reject { .. } => Scope::Send,
    }
}
