"""The client's protocol decisions as pure functions: what to do after a
close code, where a (re)registration leaves the client in the session's
event log, how each frame moves that position, and which frames answer a
request. The terminal client (src/terminal/protocol.rs) and the TypeScript
SDK make the same decisions: clients/cases/protocol-cases.json holds the
cases all three must agree on (tests/cases.py runs them here).
"""

from __future__ import annotations

from typing import Any, Literal, Mapping, Optional, Tuple

from .models import Position

#: What to do once the connection is gone.
AfterClose = Literal["reconnect", "renew_token", "stop"]

#: Frames that carry the ``request_id`` of the request they answer.
ANSWERS = frozenset({"response", "error", "pong", "registration_confirmed"})


def after_close(code: Optional[int], can_renew_token: bool) -> AfterClose:
    """After the hub closed with ``code`` (None: the connection dropped
    without a close frame): 4401 means a new token is needed; any other 4xxx
    is the hub refusing this client (4001 replaced, 4002 removed by an
    admin, 4408 not registered in time) and reconnecting would loop;
    anything else (1001 shutdown, 1012 restart, ...) is worth a reconnect."""
    if code == 4401 and can_renew_token:
        return "renew_token"
    if code is not None and 4000 <= code <= 4999:
        return "stop"
    return "reconnect"


def after_registration(since: Optional[Position], confirmed: Mapping[str, Any]) -> Tuple[bool, Optional[Position]]:
    """Whether the missed events are replayed (never without ``since``),
    and the position to resume from next: ``since`` when recovered (the
    replay moves it on), else the confirmation's (None without an event log)."""
    if since is not None and confirmed.get("recovered") is True:
        return True, since
    return False, Position.of(confirmed)


def track(known: Optional[Position], frame: Mapping[str, Any]) -> Tuple[Optional[Position], bool]:
    """How ``frame`` moves the position ``known``: the new position, and
    whether the frame is a duplicate (an offset at or before ``known`` in the
    same epoch, e.g. delivered again across a reconnect)."""
    position = Position.of(frame)
    if position is None:
        return known, False
    if known is not None and known.epoch == position.epoch and position.offset <= known.offset:
        return known, True
    return position, False


def answered_request(frame: Mapping[str, Any]) -> Optional[str]:
    """The request id ``frame`` answers (a string), if it is an answer;
    other frames answer nothing, even with a ``request_id`` (``execute``
    carries the hub's own)."""
    rid = frame.get("request_id")
    if frame.get("type") in ANSWERS and isinstance(rid, str):
        return rid
    return None
