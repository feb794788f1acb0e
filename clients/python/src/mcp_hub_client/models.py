"""Typed shapes of the frames this client exposes (docs/protocol.md §5).

Hub frames stay plain dicts (JSON objects) typed with ``TypedDict``: those
are generated from the hub's AsyncAPI document into protocol_generated.py
(by clients/codegen/generate.py; tests/asyncapi.rs fails when it differs)
and named here. The rest is hand-written: the client's own notices
(:class:`Reconnected`, :class:`Disconnected`), the registration it keeps
(dataclasses), and :data:`Response`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, TypedDict, Union

from .protocol_generated import (
    HubContactListBroadcastContactsItem,
    HubErrorFrame,
    HubMessageEvent,
    HubRegistrationConfirmed,
    HubRegistrationConfirmedClientsItem,
)


# The hub's frames, generated from its AsyncAPI document
# (protocol_generated.py), under this package's names.
Contact = HubContactListBroadcastContactsItem
ClientInfo = HubRegistrationConfirmedClientsItem
RegistrationConfirmed = HubRegistrationConfirmed
MessageEvent = HubMessageEvent
ErrorFrame = HubErrorFrame


# Hand-written from here on: what the schema cannot say.


class Response(TypedDict, total=False):
    """The answer to a request: a `response` (§5) or, to `ping`, a `pong`
    (one shape for both, which the schema has as two messages)."""

    type: str
    response_type: str
    content: Dict[str, Any]
    request_id: str
    timestamp: int


#: Any frame the hub sent: a JSON object with a ``type``.
Frame = Dict[str, Any]


@dataclass(frozen=True)
class Position:
    """Where a client is in its session's event log (§12.1)."""

    offset: int
    epoch: str

    @staticmethod
    def of(frame: Mapping[str, Any]) -> Optional["Position"]:
        """The frame's ``offset`` (a non-negative integer) and ``epoch``."""
        offset, epoch = frame.get("offset"), frame.get("epoch")
        if isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0 and isinstance(epoch, str):
            return Position(offset, epoch)
        return None


@dataclass
class Registration:
    """What the hub confirmed on the latest (re)registration."""

    client_id: str
    client_name: str
    session: str
    instance: str
    agent: bool
    clients: List[ClientInfo]
    clients_total: int
    recovered: bool
    offset: int
    epoch: str
    #: The session's contacts, from the `contact_list_broadcast` that
    #: follows every registration (and later `contacts_update`s).
    contacts: List[Contact] = field(default_factory=list)

    @staticmethod
    def of(frame: Frame) -> "Registration":
        return Registration(
            client_id=str(frame.get("client_id", "")),
            client_name=str(frame.get("client_name", "")),
            session=str(frame.get("session", "")),
            instance=str(frame.get("instance", "")),
            agent=bool(frame.get("agent", False)),
            clients=list(frame.get("clients", [])),
            clients_total=int(frame.get("clients_total", 0)),
            recovered=frame.get("recovered") is True,
            offset=int(frame.get("offset", 0)),
            epoch=str(frame.get("epoch", "")),
        )


@dataclass(frozen=True)
class Reconnected:
    """The client registered again after losing its connection.

    ``recovered`` is the hub's answer to the resume (§12.1): True means every
    event missed meanwhile follows, in order; False means they could not be
    replayed and the application must reload its state (contacts come with
    the registration, conversations with ``get_history``).
    """

    registration: Registration
    recovered: bool
    attempts: int


@dataclass(frozen=True)
class Disconnected:
    """The connection was lost; ``will_reconnect`` says whether the client
    tries again (False: it is closed for good, e.g. after close 4001/4002)."""

    code: Optional[int]
    reason: str
    will_reconnect: bool


#: What :meth:`HubClient.events` yields.
Event = Union[Frame, Reconnected, Disconnected]


class HubError(Exception):
    """An `error` frame (§9): ``code`` is stable, ``message`` is for people."""

    def __init__(self, code: str, message: str, request_id: Optional[str] = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id


class ConnectionLost(Exception):
    """The connection ended before the answer to a request that was sent:
    it may or may not have run (use an ``idempotency_key`` to retry safely)."""


class ClientClosed(Exception):
    """The client is closed (by :meth:`HubClient.close` or a final close)."""
