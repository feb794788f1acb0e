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
use std::collections::VecDeque;

use super::logged_outbound;
use super::registry::{ClientHandle, Position, Recent};
use crate::auth::Identity;
use crate::broker::{LogRead, ReadBudget};
use crate::metrics::Shed;
use crate::outbox::Outbound;
use crate::protocol::CloseReason;
use crate::protocol::{
    ClientInfo, Contact, ErrorCode, HubError, REGISTRATION_CLIENTS_MAX, Register, ServerEvent,
    Since, check_id, now_millis,
};
use crate::store::AgentRef;

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

/// How a joining client starts, decided under the registry lock.
enum Start {
    /// Confirm with `recovered` and `offset`, send `replay`, then live
    /// events.
    Go {
        recovered: bool,
        offset: u64,
        replay: Vec<Outbound>,
    },
    /// The read does not fit live delivery yet: read again (`wait`: after
    /// a pause, live delivery has to catch up with the client first).
    Retry { wait: bool },
    /// The log cannot replay what the resuming client missed: start it
    /// afresh, from the cut (read again from there).
    Unrecoverable,
}

/// Where a joining client's events start.
#[derive(Clone, Copy)]
enum StartAt<'a> {
    /// After the client's `since`: a resume, every event after it.
    Resume(&'a Since),
    /// After the cut, a log position read before the member list (see
    /// [`Hub::join`]): every event after it but the presence events the
    /// list already reflects (`floor`).
    Cut(&'a Position, u64),
}

/// `live`: the last offset this instance delivered (or, with no local
/// client yet, the head the join read); `recent`: the last events it
/// delivered. Live events after `live` reach the client anyway, so a
/// replay holds exactly `(from, live]`: from the read up to its head, the
/// rest from `recent`. Events not for `me` are left out, as live delivery
/// does: those about itself, and after a cut the presence events of a
/// version at or below its member list's.
fn plan_start(
    from: StartAt<'_>,
    read: &LogRead,
    live: &Position,
    recent: &VecDeque<Recent>,
    me: &ClientHandle,
) -> Start {
    if live.epoch != read.epoch {
        // Delivery is on another log than the read: read again.
        return Start::Retry { wait: false };
    }
    let (after, epoch) = match from {
        StartAt::Resume(s) => (s.offset, &s.epoch),
        StartAt::Cut(c, _) => (c.offset, &c.epoch),
    };
    let resume = matches!(from, StartAt::Resume(_));
    let from_live = Start::Go {
        recovered: false,
        offset: live.offset,
        replay: Vec::new(),
    };
    if *epoch != read.epoch {
        // A resume from another log; a cut from a log that is gone (its
        // events are not this log's).
        return if resume {
            Start::Unrecoverable
        } else {
            from_live
        };
    }
    if after > live.offset {
        return if !resume {
            // Delivery has yet to pass the cut: everything after `live`
            // arrives live.
            from_live
        } else if after <= read.head {
            // The client saw more than this instance delivered yet (it was
            // on another instance): wait for delivery to catch up with it.
            Start::Retry { wait: true }
        } else {
            Start::Unrecoverable
        };
    }
    let Some(events) = &read.events else {
        return if resume {
            Start::Unrecoverable
        } else {
            from_live
        };
    };
    let floor = match from {
        StartAt::Resume(_) => 0,
        StartAt::Cut(_, floor) => floor,
    };
    let wanted = |except: Option<&str>, presence: Option<u64>| {
        Some(me.info.client_id.as_str()) != except && presence.is_none_or(|v| v > floor)
    };
    let mut replay: Vec<Outbound> = Vec::new();
    let mut next = after + 1;
    for e in events.iter().filter(|e| e.offset <= live.offset) {
        if wanted(e.header.except.as_deref(), e.header.presence) {
            replay.push(logged_outbound(e));
        }
        next = e.offset + 1;
    }
    let start = next;
    for r in recent
        .iter()
        .filter(|r| r.offset >= start && r.offset <= live.offset)
    {
        if r.offset != next {
            break;
        }
        if wanted(r.except.as_deref(), r.presence) {
            replay.push(r.out.clone());
        }
        next += 1;
    }
    if next != live.offset + 1 {
        // Delivery passed the read by more than `recent` holds.
        return Start::Retry { wait: false };
    }
    if resume {
        Start::Go {
            recovered: true,
            offset: live.offset,
            replay,
        }
    } else {
        Start::Go {
            recovered: false,
            offset: after,
            replay,
        }
    }
}

/// What `registration_confirmed` tells a joining client.
struct Confirmation<'a> {
    session: &'a str,
    info: &'a ClientInfo,
    is_agent: bool,
    members: &'a [ClientInfo],
    contacts: &'a [Contact],
    request_id: Option<&'a str>,
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
    check_id("session", &session)?;
    check_id("client_id", &client_id)?;
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
            connected_at: Some(now_millis()),
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
    /// 2. seed the session's contacts, join presence, read the contacts,
    ///    a *cut* (a log position whose events are all logged), then the
    ///    members with their presence version;
    /// 3. claim the agent role, before the confirmation: a client told
    ///    `agent: true` already receives `execute`;
    /// 4. queue `registration_confirmed` and the contact list, then a
    ///    resumed client's replay, or else the events after the cut that
    ///    live delivery has passed, *as* the connection joins the registry,
    ///    under the lock live delivery takes, so no session event overtakes
    ///    them and none is missed or repeated. Presence events at or below
    ///    the list's version are left out (the list has them), so the
    ///    client learns of each member exactly once: every change after
    ///    the cut that the list lacks has a larger version and offset;
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
        let since = reg.since.clone();
        let Admission {
            session,
            mut info,
            is_agent,
        } = admit(self, reg)?;
        // One read of how many are there and who holds this id serves the
        // ownership and room checks (after the token's own checks, which
        // need no I/O); never the whole member list.
        if let Some(identity) = identity {
            authorize(identity, &session, is_agent)?;
        }
        let (present, held) = self.store.occupancy(&session, &info.client_id).await?;
        if let Some(identity) = identity {
            check_owner(identity, &info, held.as_ref())?;
            info.owner = Some(identity.sub.clone());
        }
        let client_id = info.client_id.as_str();
        check_room(
            &session,
            present,
            held.is_some(),
            self.config.max_clients_per_session,
        )?;

        // 2. Contacts and presence. The cut, a log position read before
        // the member list, and the list's presence version make the list
        // and the events exact together: every presence change after the
        // cut not reflected in the list is announced to the client, and
        // none that is.
        self.store
            .seed_contacts(&session, &self.connector.initial_contacts())
            .await?;
        let change = self.store.join(&session, &info).await?;
        let contacts = self.store.contacts(&session).await?;
        let cut = self.log_cut(&session).await?;
        let presence = self.store.presence(&session).await?;
        let members = presence.members;

        // 3. The agent role, before anyone is told `agent: true`.
        if is_agent {
            let me = AgentRef {
                client_id: client_id.to_string(),
                instance: self.instance().to_string(),
            };
            self.store.claim_agent(&session, &me).await?;
        }

        // 4 + 5. The first frames, the replay of a resume, and the join,
        // atomically with respect to live delivery.
        let handle = conn.with_info(info.clone());
        let confirm = Confirmation {
            session: &session,
            info: &info,
            is_agent,
            members: &members,
            contacts: &contacts,
            request_id,
        };
        let cut = StartAt::Cut(&cut, presence.version);
        if let Some(old) = self
            .join_at_log_position(&handle, since.as_ref(), cut, &confirm)
            .await?
            && old.conn_id != handle.conn_id
        {
            self.replaced(&session, &old, client_id, is_agent).await?;
        }

        // 6. Announce.
        self.publish_client_event(&session, &info, true, change.version);
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

    /// A log position of `session` no later than now: every event up to it
    /// is in the log already. This instance's delivered position while it
    /// has local subscribers of the session (no round trip), else the
    /// log's head.
    async fn log_cut(&self, session: &str) -> Result<Position, HubError> {
        if let Some(live) = self.registry.live_position(session) {
            return Ok(live);
        }
        let read = self.broker.log_head(session).await?;
        Ok(Position {
            epoch: read.epoch,
            offset: read.head,
        })
    }

    /// Steps 4 and 5 of [`Self::join`]: reads the session's log (outside any
    /// lock), then, under the registry lock live delivery takes, queues
    /// `registration_confirmed`, the contact list and every event after
    /// the client's start that live delivery has already passed — after a
    /// `since` the log can still serve, else after the `cut` — and joins
    /// the registry. Live delivery then goes on from exactly there: no
    /// gap, no duplicate. Returns the handle it replaced.
    async fn join_at_log_position(
        &self,
        handle: &ClientHandle,
        since: Option<&Since>,
        cut: StartAt<'_>,
        confirm: &Confirmation<'_>,
    ) -> Result<Option<ClientHandle>, HubError> {
        let session = confirm.session;
        // Live delivery may be ahead of a read (read again) or behind a
        // resuming client (wait for it); both are short-lived. Past these
        // attempts the client starts from live delivery.
        const ATTEMPTS: usize = 50;
        let mut from = since.map_or(cut, StartAt::Resume);
        let floor = match cut {
            StartAt::Cut(_, floor) => floor,
            StartAt::Resume(_) => 0,
        };
        let mut last_epoch: Option<String> = None;
        for attempt in 0..=ATTEMPTS {
            let give_up = attempt == ATTEMPTS;
            let after = match from {
                StartAt::Resume(s) => s.offset,
                StartAt::Cut(c, _) => c.offset,
            };
            // REPLAY_MAX_BYTES bounds what is read, not only what is sent:
            // a resume from far behind costs one budget, then the client
            // reloads (`recovered: false`).
            let read = self
                .broker
                .read_log(session, Some(after), self.replay_budget())
                .await?;
            // Two reads in a row saw this epoch: it is the log's, and what
            // this instance delivered belongs to a log that is gone. Its
            // offsets start again at 1.
            let adopt = last_epoch.as_deref() == Some(read.epoch.as_str());
            last_epoch = Some(read.epoch.clone());
            let at_read = Position {
                epoch: read.epoch.clone(),
                offset: read.head,
            };
            let mut wait = false;
            let mut unrecoverable = false;
            let joined =
                self.registry
                    .insert_at(session, handle.clone(), at_read, |live, recent, h| {
                        let live = if adopt && live.epoch != read.epoch {
                            Position {
                                epoch: read.epoch.clone(),
                                offset: 0,
                            }
                        } else {
                            live.clone()
                        };
                        let from_live = || (false, live.offset, Vec::new());
                        let over_budget = |replay: &[Outbound]| {
                            replay.iter().map(|o| o.frame.len()).sum::<usize>()
                                > self.config.limits.replay_max_bytes
                        };
                        // Past the byte budget (the read stopped short of
                        // the head, or the replay with what delivery added
                        // is larger), the client reloads instead
                        // (docs/protocol.md §12.1).
                        // Only a read of the very log the client and
                        // delivery are on is cut short for its size; any
                        // other goes through the plan (retry, cut).
                        let from_epoch = match from {
                            StartAt::Resume(s) => s.epoch.as_str(),
                            StartAt::Cut(c, _) => c.epoch.as_str(),
                        };
                        let too_long =
                            read.more && live.epoch == read.epoch && from_epoch == read.epoch;
                        let plan = (!too_long).then(|| plan_start(from, &read, &live, recent, h));
                        let (recovered, offset, replay) = match plan {
                            None => {
                                self.metrics.shed(Shed::ReplayBudget);
                                from_live()
                            }
                            Some(Start::Go { replay, .. }) if over_budget(&replay) => {
                                self.metrics.shed(Shed::ReplayBudget);
                                from_live()
                            }
                            Some(Start::Go {
                                recovered,
                                offset,
                                replay,
                            }) => (recovered, offset, replay),
                            Some(Start::Unrecoverable) if !give_up => {
                                unrecoverable = true;
                                return None;
                            }
                            Some(Start::Retry { wait: w }) if !give_up => {
                                wait = w;
                                return None;
                            }
                            Some(Start::Retry { .. } | Start::Unrecoverable) => from_live(),
                        };
                        // A replay that does not fit the connection's queue would
                        // disconnect it as a slow consumer half-way: the client
                        // reloads instead (docs/protocol.md §12.1).
                        let (recovered, offset, replay) = if replay.len() + 2 > h.room() {
                            from_live()
                        } else {
                            (recovered, offset, replay)
                        };
                        // A resumed client takes every presence event after
                        // its `since`; any other one those its list lacks.
                        h.set_presence_floor(if recovered { 0 } else { floor });
                        let at = Position {
                            epoch: live.epoch.clone(),
                            offset,
                        };
                        self.send_first_frames(h, confirm, recovered, &at);
                        for out in replay {
                            h.send(out, &self.metrics);
                        }
                        Some(live)
                    });
            match joined {
                Ok(replaced) => return Ok(replaced),
                Err(_) if unrecoverable => from = cut,
                Err(_) if wait => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
                Err(_) => tokio::task::yield_now().await,
            }
        }
        // Unreachable: the last attempt always joins.
        Err(HubError::internal("join: the session log kept moving"))
    }

    /// What a joining client's replay may read of the log (REPLAY_MAX_BYTES).
    fn replay_budget(&self) -> ReadBudget {
        ReadBudget {
            max_bytes: self.config.limits.replay_max_bytes,
            max_events: self.config.session_log_len,
        }
    }

    /// `registration_confirmed` and the contact list snapshot (replies:
    /// they carry no offset).
    fn send_first_frames(
        &self,
        handle: &ClientHandle,
        c: &Confirmation<'_>,
        recovered: bool,
        at: &Position,
    ) {
        self.send_to(
            handle,
            &ServerEvent::RegistrationConfirmed {
                client_id: &c.info.client_id,
                client_name: &c.info.client_name,
                session: c.session,
                instance: self.instance(),
                agent: c.is_agent,
                clients: &c.members[..c.members.len().min(REGISTRATION_CLIENTS_MAX)],
                clients_total: c.members.len(),
                recovered,
                offset: at.offset,
                epoch: &at.epoch,
                request_id: c.request_id,
            },
        );
        self.send_to(
            handle,
            &ServerEvent::ContactListBroadcast {
                contacts: c.contacts,
                total_count: c.contacts.len(),
                timestamp: now_millis(),
            },
        );
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
            Ok(left) if left.changed => {
                self.publish_client_event(session, &member.info, false, left.version)
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not remove presence"),
        }
        tracing::info!(session, client_id, "client left");
    }
}

/// `session_full` when the session holds `max` clients on every instance
/// together (`present`, counted by the store) and the joining id is not one
/// of them (`replaces`: registering again replaces, it does not add). Two
/// clients joining at the same moment on different instances may both
/// pass: the bound is tight to within the joins in flight, which is what
/// it is for (no session grows without limit).
fn check_room(session: &str, present: usize, replaces: bool, max: usize) -> Result<(), HubError> {
    if present >= max && !replaces {
        return Err(HubError::new(
            ErrorCode::SessionFull,
            format!("session `{session}` already has {max} clients (MAX_CLIENTS_PER_SESSION)"),
        ));
    }
    Ok(())
}

/// What the token allows (docs/security.md §3): the session must be in
/// `sessions` (admin: any), and the agent role needs role agent or admin.
fn authorize(identity: &Identity, session: &str, is_agent: bool) -> Result<(), HubError> {
    identity.require(crate::auth::Scope::Read)?;
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
    Ok(())
}

/// A client id present in the session (on any instance) must have been
/// registered by the same `sub`.
fn check_owner(
    identity: &Identity,
    info: &ClientInfo,
    held: Option<&ClientInfo>,
) -> Result<(), HubError> {
    if let Some(held) = held
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
