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
use super::recent::Recent;
use super::registry::{ClientHandle, Position};
use crate::auth::Identity;
use crate::broker::{LogRead, ReadBudget};
use crate::metrics::Shed;
use crate::outbox::Outbound;
use crate::protocol::CloseReason;
use crate::protocol::{
    ClientInfo, Contact, ErrorCode, HubError, REGISTRATION_CLIENTS_MAX, Register, ServerEvent,
    Since, check_id, now_millis,
};
use crate::store::{AgentRef, JoinRefused, JoinRule, Presence};

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

/// What [`Hub::join_at_log_position`] did.
enum Started {
    /// The client joined; the handle it replaced, if any.
    Joined(Option<ClientHandle>),
    /// Its start could not be served from this cut: read a fresh one (and
    /// the member list with it).
    ReadAgain,
}

/// What a join attempt that did not join does next.
#[derive(Clone, Copy)]
enum Next {
    /// Live delivery has to catch up with the client first: pause.
    Wait,
    /// Live delivery moved past the read: read again now.
    Yield,
    /// The start cannot be served from here (a resume the log lost, or a
    /// window past the replay budget or the queue's room).
    Unservable,
    /// Nothing decided (the attempts ran out): read a fresh cut.
    ReadAgain,
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
/// client yet, the head the join read); `recent`: the events it delivered
/// since the join began (at most 1 024, `hub::recent`). Live events after
/// `live` reach the client anyway, so a replay holds exactly `(from,
/// live]`: from the read up to its head, the rest from `recent`. Events not for `me` are left out, as live delivery
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
    /// At most [`REGISTRATION_CLIENTS_MAX`] members, and how many there are.
    presence: &'a Presence,
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
        if let Some(identity) = identity {
            authorize(identity, &session, is_agent)?;
            info.owner = Some(identity.sub.clone());
        }
        let client_id = info.client_id.as_str();

        // 2. Presence, with the room and the id's owner checked in the same
        // atomic step (two brand-new registrations of one id by different
        // users, or of the last place, cannot both pass), then contacts.
        // The cut, a log position read before the member list, and the
        // list's presence version make the list and the events exact
        // together: every presence change after the cut not reflected in
        // the list is announced to the client, and none that is.
        let rule = JoinRule {
            max_members: self.config.max_clients_per_session,
        };
        // In turn with this client's departures here: one due (its earlier
        // connection's, which the store did not take) is carried out
        // first, and one that starts meanwhile waits until this connection
        // is in the registry, then leaves its entry alone.
        let turn = self.registration_turn(&session, client_id).await?;
        let change = match self.store.join(&session, &info, rule).await {
            Ok(joined) => joined.map_err(|refused| refusal(refused, &session, &info, rule))?,
            Err(e) => {
                // The write may have run in Redis all the same: undone as
                // a failed registration's.
                self.depart(Some(turn), &session, &info, false, true).await;
                return Err(e);
            }
        };
        let joined = self
            .start_session_delivery(conn, &session, &info, is_agent, since.as_ref(), request_id)
            .await;
        let handle = match joined {
            Ok(handle) => handle,
            Err(e) => {
                // Nothing of this registration may outlive its failure: a
                // presence entry or agent role it took would belong to no
                // connection. Those who read the list meanwhile are told. (A
                // registration that replaced an id leaves it to the
                // connection still holding it.)
                if change.changed {
                    self.depart(Some(turn), &session, &info, is_agent, true)
                        .await;
                }
                return Err(e);
            }
        };
        drop(turn);

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

    /// Steps 2 (after presence) to 5 of [`Self::join`]: seeds and reads
    /// the contacts, reads a cut and the member list, claims the agent
    /// role, then sends the first frames and the replay and joins the
    /// registry ([`Self::join_at_log_position`]). When the client's start
    /// cannot be served exactly from that cut (the events since it
    /// outgrew the replay budget or the connection's queue, or live
    /// delivery kept moving past the reads), the contacts, the cut and the
    /// members are read again: a client never starts from live delivery
    /// with a member list that lacks what happened in between. Returns the
    /// connection's handle under the registered identity.
    async fn start_session_delivery(
        self: &Arc<Self>,
        conn: &ClientHandle,
        session: &str,
        info: &ClientInfo,
        is_agent: bool,
        since: Option<&Since>,
        request_id: Option<&str>,
    ) -> Result<ClientHandle, HubError> {
        // Each round reads a fresh cut, whose replay is what arrived during
        // one round trip: more rounds mean a log moving faster than it can
        // be read, and the client is better told to come back.
        const ROUNDS: usize = 8;
        let client_id = info.client_id.as_str();
        self.store
            .seed_contacts(session, &self.connector.initial_contacts())
            .await?;
        // 3. The agent role, before anyone is told `agent: true`.
        if is_agent {
            self.store
                .claim_agent(session, &self.agent_here(client_id))
                .await?;
        }
        let handle = conn.with_info(info.clone());
        let mut since = since;
        for _ in 0..ROUNDS {
            let contacts = self.store.contacts(session).await?;
            let cut = self.log_cut(session).await?;
            let presence = self
                .store
                .presence(session, REGISTRATION_CLIENTS_MAX)
                .await?;
            // 4 + 5. The first frames, the replay of a resume, and the
            // join, atomically with respect to live delivery.
            let confirm = Confirmation {
                session,
                info,
                is_agent,
                presence: &presence,
                contacts: &contacts,
                request_id,
            };
            let cut = StartAt::Cut(&cut, presence.version);
            match self
                .join_at_log_position(&handle, since, cut, &confirm)
                .await?
            {
                Started::Joined(Some(old)) if old.conn_id != handle.conn_id => {
                    self.replaced(session, &old, client_id, is_agent).await?;
                    return Ok(handle);
                }
                Started::Joined(_) => return Ok(handle),
                // A resume that could not be served starts afresh from the
                // next cut, like any new client.
                Started::ReadAgain => since = None,
            }
        }
        Err(HubError::store_unavailable(format!(
            "session `{session}`'s log moved on faster than registration could read it; register again"
        )))
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
    /// gap, no duplicate. Returns the handle it replaced, or
    /// [`Started::ReadAgain`] when the events after the cut cannot be
    /// served exactly (past the replay budget or the connection's queue,
    /// or live delivery kept moving): the caller reads a fresh cut.
    async fn join_at_log_position(
        &self,
        handle: &ClientHandle,
        since: Option<&Since>,
        cut: StartAt<'_>,
        confirm: &Confirmation<'_>,
    ) -> Result<Started, HubError> {
        let session = confirm.session;
        // Live delivery may be ahead of a read (read again) or behind a
        // resuming client (wait for it); both are short-lived. Past these
        // attempts the caller reads a fresh cut.
        const ATTEMPTS: usize = 50;
        let mut from = since.map_or(cut, StartAt::Resume);
        let floor = match cut {
            StartAt::Cut(_, floor) => floor,
            StartAt::Resume(_) => 0,
        };
        let mut last_epoch: Option<String> = None;
        // Before the first read: what live delivery passes from here on is
        // kept for `insert_at`, what it passed before is in the read.
        let _kept = self.registry.keep_recent(session);
        for attempt in 0..=ATTEMPTS {
            let give_up = attempt == ATTEMPTS;
            let after = match from {
                StartAt::Resume(s) => s.offset,
                StartAt::Cut(c, _) => c.offset,
            };
            // The budget bounds what is read, not only what is sent: a
            // resume from far behind costs one budget, then the client
            // reloads (`recovered: false`).
            let budget = self.replay_budget(from);
            let read = self.broker.read_log(session, Some(after), budget).await?;
            // Two reads in a row saw this epoch: it is the log's, and what
            // this instance delivered belongs to a log that is gone. Its
            // offsets start again at 1.
            let adopt = last_epoch.as_deref() == Some(read.epoch.as_str());
            last_epoch = Some(read.epoch.clone());
            let at_read = Position {
                epoch: read.epoch.clone(),
                offset: read.head,
            };
            let mut next = Next::ReadAgain;
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
                        let fits = |replay: &[Outbound]| {
                            replay.iter().map(|o| o.frame.len()).sum::<usize>() <= budget.max_bytes
                                // A replay that does not fit the connection's
                                // queue would disconnect it as a slow
                                // consumer half-way.
                                && replay.len() + 2 <= h.room()
                        };
                        // Past the byte budget (the read stopped short of
                        // the head, or the replay with what delivery added
                        // is larger) a resume cannot be served: the client
                        // reloads (docs/protocol.md §12.1). Only a read of
                        // the very log the client and delivery are on is
                        // cut short for its size; any other goes through
                        // the plan (retry, cut).
                        let from_epoch = match from {
                            StartAt::Resume(s) => s.epoch.as_str(),
                            StartAt::Cut(c, _) => c.epoch.as_str(),
                        };
                        let too_long =
                            read.more && live.epoch == read.epoch && from_epoch == read.epoch;
                        let plan = (!too_long).then(|| plan_start(from, &read, &live, recent, h));
                        let (recovered, offset, replay) = match plan {
                            Some(Start::Go {
                                recovered,
                                offset,
                                replay,
                            }) if fits(&replay) => (recovered, offset, replay),
                            Some(Start::Retry { wait }) if !give_up => {
                                next = if wait { Next::Wait } else { Next::Yield };
                                return None;
                            }
                            None | Some(Start::Go { .. }) => {
                                self.metrics.shed(Shed::ReplayBudget);
                                next = Next::Unservable;
                                return None;
                            }
                            Some(Start::Unrecoverable | Start::Retry { .. }) => {
                                next = Next::Unservable;
                                return None;
                            }
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
            match (joined, next) {
                (Ok(replaced), _) => return Ok(Started::Joined(replaced)),
                // A resume the log cannot serve starts afresh, from the cut.
                (Err(_), Next::Unservable) if matches!(from, StartAt::Resume(_)) => from = cut,
                (Err(_), Next::Unservable | Next::ReadAgain) => return Ok(Started::ReadAgain),
                (Err(_), Next::Wait) => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await
                }
                (Err(_), Next::Yield) => tokio::task::yield_now().await,
            }
        }
        Ok(Started::ReadAgain)
    }

    /// What a joining client's replay may read of the log. A resume's
    /// backlog can be anything up to the whole log: REPLAY_MAX_BYTES, past
    /// which the client reloads instead. A start from a cut replays only
    /// what arrived while the join read its snapshot (a few round trips
    /// of traffic), whatever REPLAY_MAX_BYTES is: it is bounded by the
    /// connection's queue (half of it, as a default replay budget), and
    /// past that the join reads a fresh cut.
    fn replay_budget(&self, from: StartAt<'_>) -> ReadBudget {
        let max_bytes = match from {
            StartAt::Resume(_) => self.config.limits.replay_max_bytes,
            StartAt::Cut(..) => self.config.outbound_queue_bytes / 2,
        };
        ReadBudget {
            max_bytes,
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
                clients: &c.presence.members,
                clients_total: c.presence.total,
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
        let was_agent = old.info.is_agent();
        if was_agent {
            self.agent_gone(session, client_id).await;
        }
        if was_agent
            && !is_agent
            && let Err(e) = self.give_up_agent(session, client_id).await
        {
            // This registration stands (it is in the registry, confirmed):
            // the release is retried.
            tracing::warn!(error = %e, "could not release the replaced agent's role; retrying");
            self.agent_release_due(session, &old.info);
        }
        Ok(())
    }

    /// `client_id` as an agent connected to this instance: what it claims,
    /// and the only role its connection may give up (the same id may hold
    /// it on another instance by the time this one notices a dead socket).
    pub(super) fn agent_here(&self, client_id: &str) -> AgentRef {
        AgentRef {
            client_id: client_id.to_string(),
            instance: self.instance().to_string(),
        }
    }

    /// Gives up the agent role `client_id` holds through this instance, if
    /// it still does, and tells the session there is no agent now; whether
    /// it did.
    pub(super) async fn give_up_agent(
        &self,
        session: &str,
        client_id: &str,
    ) -> Result<bool, HubError> {
        let released = self
            .store
            .release_agent(session, &self.agent_here(client_id))
            .await?;
        if released {
            self.publish_agent_changed(session, None);
        }
        Ok(released)
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
        // The departure is polled first: it takes its key before anything
        // else can run, so the same client registering here again waits
        // for it. The calls sent to the agent fail meanwhile.
        tokio::join!(
            self.depart(None, session, &member.info, member.is_agent, true),
            async {
                if member.is_agent {
                    self.agent_gone(session, client_id).await;
                }
            }
        );
        tracing::info!(session, client_id, "client left");
    }
}

/// The error a refused join answers: `session_full` when the session
/// holds its `MAX_CLIENTS_PER_SESSION` clients on every instance together
/// and the joining id is not one of them (registering again replaces, it
/// does not add); `forbidden` when the id is held in the session by a
/// client another user (`sub`) registered.
fn refusal(refused: JoinRefused, session: &str, info: &ClientInfo, rule: JoinRule) -> HubError {
    match refused {
        JoinRefused::Full => HubError::new(
            ErrorCode::SessionFull,
            format!(
                "session `{session}` already has {} clients (MAX_CLIENTS_PER_SESSION)",
                rule.max_members
            ),
        ),
        JoinRefused::HeldByAnother => HubError::new(
            ErrorCode::Forbidden,
            format!(
                "client_id `{}` is held by another user in this session",
                info.client_id
            ),
        ),
    }
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
