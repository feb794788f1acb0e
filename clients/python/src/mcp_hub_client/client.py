"""The asyncio client: register, requests matched by ``request_id``, events,
heartbeats, and reconnection that resumes from the last event seen
(docs/protocol.md §1-§5, §11, §12.1)."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from .protocol import after_close, after_registration, answered_request, track
from .models import (
    ClientClosed,
    ConnectionLost,
    Disconnected,
    Event,
    Frame,
    HubError,
    Position,
    Reconnected,
    Registration,
    Response,
)

#: An async callable returning a fresh token; called before every connection.
TokenSource = Callable[[], Awaitable[str]]

#: Registration refusals worth retrying (anything else is final).
RETRYABLE_CODES = frozenset({"rate_limited", "store_unavailable", "shutting_down", "session_full"})


class _Lost(Exception):
    """One connection ended: its close code (None without a close frame)."""

    def __init__(self, code: Optional[int], reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class _Final(Exception):
    """A reconnection failure not worth retrying."""


@dataclass
class _Pending:
    future: "asyncio.Future[Response]"
    sent: bool = False


@dataclass
class _Outgoing:
    text: str
    request_id: Optional[str] = None


@dataclass
class Options:
    """Tuning; the defaults suit the hub's (25 s pings, 60 s idle timeout)."""

    #: Reconnection delays: ``backoff_min`` doubling up to ``backoff_max``,
    #: each multiplied by a random factor in [0.5, 1] (jitter).
    backoff_min: float = 0.2
    backoff_max: float = 10.0
    #: None: reconnect forever.
    max_attempts: Optional[int] = None
    #: An application `ping` every ``heartbeat`` s; a connection on which
    #: nothing arrives for ``receive_timeout`` s is dead and replaced.
    heartbeat: float = 20.0
    receive_timeout: float = 45.0
    open_timeout: float = 10.0
    #: Events buffered for :meth:`HubClient.events`; when full the client
    #: stops reading (the hub's outbound queue absorbs, then it closes with
    #: 1008 and the client resumes).
    max_events: int = 1000
    #: Frames waiting to be written; :meth:`HubClient.send` waits beyond.
    max_outgoing: int = 64
    #: With ``get_token``: reconnect this long (at most a fifth of the
    #: token's life) before the token's ``exp``. 0: only after close 4401.
    refresh_margin: float = 30.0


def _jitter(delay: float) -> float:
    return delay * random.uniform(0.5, 1.0)


def jwt_exp(token: str) -> Optional[float]:
    """The ``exp`` claim of a JWT (not verified: only to plan a refresh)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = claims.get("exp")
        return float(exp) if isinstance(exp, (int, float)) else None
    except (IndexError, ValueError, AttributeError):
        return None


class HubClient:
    """A registered connection to mcp-hub that survives reconnections.

    Create it with :func:`connect`. Every frame the hub sends that is not
    the answer to a request goes to :meth:`events`, together with
    :class:`Reconnected` and :class:`Disconnected` notices.
    """

    registration: Registration

    def __init__(
        self,
        url: str,
        *,
        token: Optional[str],
        get_token: Optional[TokenSource],
        session: str,
        client_id: Optional[str],
        name: Optional[str],
        capabilities: Sequence[str],
        since: Optional[Position],
        options: Options,
    ) -> None:
        self.url = url
        self.session = session
        self.client_id = client_id
        self.name = name
        self.capabilities = list(capabilities)
        self.options = options
        self._static_token = token
        self._get_token = get_token
        self._token_exp: Optional[float] = None
        self._position = since
        self._ids = itertools.count(1)
        self._pending: Dict[str, _Pending] = {}
        self._outgoing: "asyncio.Queue[_Outgoing]" = asyncio.Queue(options.max_outgoing)
        self._events: "asyncio.Queue[Optional[Event]]" = asyncio.Queue()
        self._drained = asyncio.Event()
        self._ws: Optional[ClientConnection] = None
        self._runner: Optional["asyncio.Task[None]"] = None
        self._closed = False
        self._ended = False
        self._refreshing = False
        #: Successful registrations so far (1 after :func:`connect`).
        self.registrations = 0

    # ------------------------------------------------------------ public

    @property
    def position(self) -> Optional[Position]:
        """The offset/epoch of the last session event received."""
        return self._position

    @property
    def closed(self) -> bool:
        return self._closed

    async def request(self, body: Mapping[str, Any], timeout: Optional[float] = 30.0) -> Response:
        """Sends ``body`` with a fresh ``request_id`` and returns its answer
        (`response`, `pong`). Raises :class:`HubError` on an `error` frame,
        :class:`ConnectionLost` if the connection ended after it was sent,
        ``asyncio.TimeoutError`` after ``timeout``. A request not yet written
        when the connection drops is sent after the reconnection."""
        self._check_open()
        rid = f"py-{next(self._ids)}"
        frame = dict(body)
        frame["request_id"] = rid
        future: "asyncio.Future[Response]" = asyncio.get_running_loop().create_future()
        self._pending[rid] = _Pending(future)
        try:
            return await asyncio.wait_for(self._request(frame, rid, future), timeout)
        finally:
            self._pending.pop(rid, None)

    async def send(self, body: Mapping[str, Any]) -> None:
        """Queues a frame that expects no answer (waits while the outgoing
        queue is full)."""
        self._check_open()
        await self._outgoing.put(_Outgoing(json.dumps(body)))

    async def send_message(self, contact: str, message: str, idempotency_key: Optional[str] = None) -> Response:
        """`whatsapp_command` `send`; the answer's ``content`` says whether
        it was sent (``success``, or ``code`` for a command failure, §6)."""
        body: Dict[str, Any] = {
            "type": "whatsapp_command",
            "command": {"action": "send", "contact": contact, "message": message},
        }
        if idempotency_key is not None:
            body["idempotency_key"] = idempotency_key
        return await self.request(body)

    async def ping(self, timeout: Optional[float] = 10.0) -> Response:
        return await self.request({"type": "ping"}, timeout)

    async def events(self) -> AsyncIterator[Event]:
        """Hub frames (dicts: `message_event`, `client_joined`, the contact
        list after each registration, ...) and :class:`Reconnected` /
        :class:`Disconnected` notices, in order; ends when the client closes."""
        while True:
            event = await self._events.get()
            self._drained.set()
            if event is None:
                self._events.put_nowait(None)  # other iterators end too
                return
            yield event

    async def close(self) -> None:
        """Closes the connection (1000) and stops reconnecting; pending
        requests fail with :class:`ClientClosed`, :meth:`events` ends."""
        if self._closed and self._runner is None:
            return
        self._closed = True
        ws = self._ws
        if ws is not None:
            try:
                await asyncio.wait_for(ws.close(), 2.0)
            except (asyncio.TimeoutError, OSError):
                pass
        runner, self._runner = self._runner, None
        if runner is not None and not runner.done():
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        self._finish()

    async def __aenter__(self) -> "HubClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ----------------------------------------------------------- running

    async def _start(self) -> None:
        ws, extra = await self._open(resuming=self._position is not None)
        for frame in extra:
            await self._emit(frame)
        self._runner = asyncio.create_task(self._run(ws))

    async def _run(self, ws: ClientConnection) -> None:
        try:
            while True:
                lost = await self._serve(ws)
                self._ws = None
                self._fail_sent(ConnectionLost(f"connection lost: {lost.reason}"))
                # Which closes end the client, and which need a new token:
                # protocol.after_close (clients/cases/protocol-cases.json).
                action = after_close(lost.code, self._get_token is not None)
                final = self._closed or action == "stop"
                await self._emit(Disconnected(lost.code, lost.reason, not final))
                if final:
                    return
                # A token being replaced: no reason to wait.
                immediate = self._refreshing or action == "renew_token"
                self._refreshing = False
                try:
                    ws = await self._reconnect(immediate)
                except _Final as e:
                    await self._emit(Disconnected(None, str(e), False))
                    return
        finally:
            self._closed = True
            self._finish()

    async def _reconnect(self, immediate: bool) -> ClientConnection:
        attempt = 0
        while self.options.max_attempts is None or attempt < self.options.max_attempts:
            if attempt > 0 or not immediate:
                step = min(self.options.backoff_max, self.options.backoff_min * 2 ** min(attempt, 30))
                await asyncio.sleep(_jitter(step))
            attempt += 1
            try:
                ws, extra = await self._open(resuming=True)
            except InvalidStatus as e:
                if e.response.status_code == 401 and self._get_token is None:
                    raise _Final(f"the hub refused the token: {e}") from e
                continue
            except HubError as e:
                if e.code not in RETRYABLE_CODES:
                    raise _Final(f"registration refused: {e}") from e
                continue
            except (OSError, asyncio.TimeoutError, InvalidHandshake, ConnectionClosed):
                continue
            except Exception:  # get_token failed (its auth server, say): retry
                continue
            await self._emit(Reconnected(self.registration, self.registration.recovered, attempt))
            for frame in extra:
                await self._emit(frame)
            return ws
        raise _Final(f"gave up after {attempt} reconnection attempts")

    async def _token(self) -> Optional[str]:
        token = await self._get_token() if self._get_token is not None else self._static_token
        self._token_exp = jwt_exp(token) if token else None
        return token

    async def _open(self, resuming: bool) -> Tuple[ClientConnection, List[Frame]]:
        """Connects and registers: the connection, and the frames that
        followed the confirmation (the contact list)."""
        token = await self._token()
        headers = {"Authorization": f"Bearer {token}"} if token else None
        ws = await ws_connect(
            self.url,
            additional_headers=headers,
            open_timeout=self.options.open_timeout,
            ping_interval=None,  # the hub pings; we send application pings
            close_timeout=2.0,
        )
        try:
            extra = await asyncio.wait_for(self._register(ws, resuming), self.options.open_timeout)
        except BaseException:
            _abort(ws)
            raise
        self._ws = ws
        self.registrations += 1
        return ws, extra

    async def _register(self, ws: ClientConnection, resuming: bool) -> List[Frame]:
        rid = f"register-{next(self._ids)}"
        body: Dict[str, Any] = {"type": "register", "session": self.session, "request_id": rid}
        if self.client_id is not None:
            body["client_id"] = self.client_id
        if self.name is not None:
            body["client_name"] = self.name
        if self.capabilities:
            body["capabilities"] = self.capabilities
        since = self._position if resuming else None
        if since is not None:
            body["since"] = {"offset": since.offset, "epoch": since.epoch}
        await ws.send(json.dumps(body))
        while True:
            frame = _parse(await ws.recv())
            if frame.get("type") == "error" and frame.get("request_id") == rid:
                raise HubError(str(frame.get("code")), str(frame.get("message")), rid)
            if frame.get("type") == "registration_confirmed":
                break
        registration = Registration.of(frame)
        recovered, position = after_registration(since, frame)
        registration.recovered = recovered
        # The hub's id (generated when we gave none) is kept for resuming.
        self.client_id = registration.client_id
        if not recovered:
            self._position = position
        self.registration = registration
        # The contact list follows every confirmation (§3).
        contacts = _parse(await ws.recv())
        if contacts.get("type") == "contact_list_broadcast":
            registration.contacts = list(contacts.get("contacts", []))
        return [contacts]

    async def _serve(self, ws: ClientConnection) -> _Lost:
        """Reads, writes and heartbeats on one connection until it ends."""
        tasks = [
            asyncio.create_task(self._read(ws)),
            asyncio.create_task(self._write(ws)),
            asyncio.create_task(self._heartbeat(ws)),
        ]
        refresh_in = self._refresh_in()
        if refresh_in is not None:
            tasks.append(asyncio.create_task(self._refresh(ws, refresh_in)))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            _abort(ws)
        for t in done:
            exc = t.exception()
            if isinstance(exc, _Lost):
                return exc
            if exc is not None:
                return _Lost(None, f"{type(exc).__name__}: {exc}")
        return _Lost(None, "connection ended")

    def _refresh_in(self) -> Optional[float]:
        """Seconds until the token should be replaced, if it should."""
        if self._get_token is None or self._token_exp is None or self.options.refresh_margin <= 0:
            return None
        left = self._token_exp - time.time()
        wait = left - min(self.options.refresh_margin, left / 5)
        # A token that is (nearly) expired already: the hub's 4401 decides.
        return wait if wait > 0.5 else None

    async def _refresh(self, ws: ClientConnection, delay: float) -> None:
        await asyncio.sleep(delay)
        self._refreshing = True
        await ws.close(1000, "token refresh")
        raise _Lost(1000, "token refresh")

    async def _read(self, ws: ClientConnection) -> None:
        while True:
            try:
                data = await asyncio.wait_for(ws.recv(), self.options.receive_timeout)
            except asyncio.TimeoutError:
                raise _Lost(None, f"nothing received for {self.options.receive_timeout:g} s") from None
            except ConnectionClosed as e:
                raise _closed(e) from None
            if isinstance(data, str):
                await self._dispatch(_parse(data))

    async def _write(self, ws: ClientConnection) -> None:
        try:
            while True:
                item = await self._outgoing.get()
                if item.request_id is not None:
                    pending = self._pending.get(item.request_id)
                    if pending is None:
                        continue  # given up on (timeout, cancelled) before it left
                    pending.sent = True
                await ws.send(item.text)
        except ConnectionClosed as e:
            raise _closed(e) from None

    async def _heartbeat(self, ws: ClientConnection) -> None:
        try:
            while True:
                await asyncio.sleep(self.options.heartbeat)
                await ws.send(json.dumps({"type": "ping", "request_id": f"hb-{next(self._ids)}"}))
        except ConnectionClosed as e:
            raise _closed(e) from None

    async def _dispatch(self, frame: Frame) -> None:
        kind = frame.get("type")
        rid = answered_request(frame)
        if rid is not None:
            pending = self._pending.get(rid)
            if pending is not None:
                if not pending.future.done():
                    if kind == "error":
                        code, message = str(frame.get("code")), str(frame.get("message"))
                        pending.future.set_exception(HubError(code, message, rid))
                    else:
                        pending.future.set_result(frame)  # type: ignore[arg-type]
                return
            if kind == "pong":
                return  # a heartbeat's
        position, duplicate = track(self._position, frame)
        if duplicate:
            return  # delivered already (on an earlier connection)
        self._position = position
        if kind == "contact_list_broadcast":
            self.registration.contacts = list(frame.get("contacts", []))
        await self._emit(frame)

    async def _request(self, frame: Frame, rid: str, future: "asyncio.Future[Response]") -> Response:
        await self._outgoing.put(_Outgoing(json.dumps(frame), rid))
        return await future

    async def _emit(self, event: Event) -> None:
        while self._events.qsize() >= self.options.max_events:
            self._drained.clear()
            await self._drained.wait()
        self._events.put_nowait(event)

    def _fail_sent(self, exc: Exception) -> None:
        for pending in self._pending.values():
            if pending.sent and not pending.future.done():
                pending.future.set_exception(exc)

    def _finish(self) -> None:
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(ClientClosed("the client is closed"))
        if not self._ended:
            self._ended = True
            self._events.put_nowait(None)

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosed("the client is closed")


def _parse(data: Any) -> Frame:
    try:
        frame = json.loads(data)
    except (TypeError, ValueError):
        return {}
    return frame if isinstance(frame, dict) else {}


def _closed(e: ConnectionClosed) -> _Lost:
    if e.rcvd is not None:
        return _Lost(e.rcvd.code, e.rcvd.reason or f"closed with {e.rcvd.code}")
    return _Lost(None, "the connection ended without a close frame")


def _abort(ws: ClientConnection) -> None:
    transport = getattr(ws, "transport", None)
    if transport is not None:
        transport.abort()


async def connect(
    url: str,
    *,
    token: Optional[str] = None,
    get_token: Optional[TokenSource] = None,
    session: str = "default",
    client_id: Optional[str] = None,
    name: Optional[str] = None,
    capabilities: Sequence[str] = (),
    since: Optional[Position] = None,
    options: Optional[Options] = None,
) -> HubClient:
    """Connects to ``url`` (``ws://host:8002/``) and registers.

    ``token`` is sent as ``Authorization: Bearer``; ``get_token`` instead is
    awaited before every connection (and the client reconnects before the
    token expires). ``since`` resumes a position saved earlier. Raises the
    first connection's failure (``OSError``, ``InvalidStatus`` for an HTTP
    refusal such as 401, :class:`HubError` for a refused registration).
    """
    if token is not None and get_token is not None:
        raise ValueError("give token or get_token, not both")
    client = HubClient(
        url,
        token=token,
        get_token=get_token,
        session=session,
        client_id=client_id,
        name=name,
        capabilities=capabilities,
        since=since,
        options=options or Options(),
    )
    await client._start()
    return client
