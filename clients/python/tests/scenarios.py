"""Scenarios of the SDK against a real hub, driven by tests/sdk_python.rs.

    python3 scenarios.py send URL
    python3 scenarios.py resume URL COUNT [--backoff S]
    python3 scenarios.py refresh URL TOKEN_FILE COUNT [--refresh-margin S]

Run with PYTHONPATH=clients/python/src. Every line on stdout is one JSON
object: progress ({"ready": ...}, {"disconnected": ...}, ...) as it happens,
then {"report": ...}. `resume` and `refresh` count the `message_event`s sent
by the client `producer` until COUNT have arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any, AsyncIterator, Dict, List, Optional

from mcp_hub_client import (
    Disconnected,
    Event,
    HubClient,
    HubError,
    Options,
    Reconnected,
    connect,
)


def say(**obj: Any) -> None:
    print(json.dumps(obj), flush=True)


async def first(events: AsyncIterator[Event], kind: str, timeout: float = 10.0) -> Dict[str, Any]:
    """The next hub frame of type `kind` (others are skipped)."""

    async def find() -> Dict[str, Any]:
        async for event in events:
            if isinstance(event, dict) and event.get("type") == kind:
                return event
        raise RuntimeError(f"events ended before a {kind}")

    return await asyncio.wait_for(find(), timeout)


async def send(url: str) -> None:
    client = await connect(url, session="sdk-send", client_id="py-send", name="Python SDK")
    reg = client.registration
    events = client.events()
    contacts = await first(events, "contact_list_broadcast")
    response = await client.send_message("John", "hello from python")
    event = await first(events, "message_event")
    error: Optional[Dict[str, Any]] = None
    try:
        await client.request({"type": "whatsapp_command", "command": {"action": "fly"}})
    except HubError as e:
        error = {"code": e.code, "message": e.message, "request_id": e.request_id}
    pong = await client.ping()
    await client.close()
    rest: List[Any] = [e if isinstance(e, dict) else repr(e) async for e in events]
    say(
        report={
            "registration": {
                "client_id": reg.client_id,
                "client_name": reg.client_name,
                "session": reg.session,
                "recovered": reg.recovered,
                "offset": reg.offset,
                "epoch": reg.epoch,
                "clients": [c.get("client_id") for c in reg.clients],
                "contacts": [c.get("name") for c in reg.contacts],
            },
            "contact_event": contacts,
            "response": response,
            "event": event,
            "error": error,
            "pong": pong,
            "after_close": rest,
            "closed": client.closed,
        }
    )


async def count_messages(client: HubClient, count: int) -> Dict[str, Any]:
    """Reads events until `count` messages from `producer` arrived."""
    messages: List[str] = []
    offsets: List[int] = []
    disconnects: List[Dict[str, Any]] = []
    reconnects: List[Dict[str, Any]] = []
    replayed = 0
    resumed_at: Optional[int] = None
    async for event in client.events():
        if isinstance(event, Disconnected):
            note = {"code": event.code, "reason": event.reason, "will_reconnect": event.will_reconnect}
            disconnects.append(note)
            say(disconnected=note)
        elif isinstance(event, Reconnected):
            resumed_at = event.registration.offset
            note = {"recovered": event.recovered, "offset": resumed_at, "attempts": event.attempts}
            reconnects.append(note)
            say(reconnected=note)
        elif event.get("type") == "message_event" and event.get("by") == "producer":
            messages.append(str(event.get("message")))
            offsets.append(int(event["offset"]))
            # At or below the resumed registration's offset: logged while
            # this client was away, so replayed.
            if resumed_at is not None and event["offset"] <= resumed_at:
                replayed += 1
            say(received=len(messages))
            if len(messages) >= count:
                break
    return {
        "messages": messages,
        "offsets": offsets,
        "disconnects": disconnects,
        "reconnects": reconnects,
        "replayed": replayed,
        "registrations": client.registrations,
    }


async def resume(url: str, count: int, backoff: float) -> None:
    options = Options(backoff_min=backoff, backoff_max=backoff)
    client = await connect(url, session="sdk-resume", client_id="py-resume", options=options)
    say(ready={"offset": client.registration.offset, "epoch": client.registration.epoch})
    report = await asyncio.wait_for(count_messages(client, count), 90)
    await client.close()
    say(report=report)


async def refresh(url: str, token_file: str, count: int, margin: float) -> None:
    used: List[str] = []

    async def get_token() -> str:
        with open(token_file, encoding="utf-8") as f:
            token = f.read().strip()
        used.append(token)
        return token

    options = Options(refresh_margin=margin, backoff_min=0.2, backoff_max=1.0)
    client = await connect(url, get_token=get_token, session="sdk-token", client_id="py-token", options=options)
    say(ready={"offset": client.registration.offset})
    report = await asyncio.wait_for(count_messages(client, count), 60)
    # The connection in use now works (a request needs a live registration).
    report["pong"] = await client.ping()
    report["tokens"] = used
    await client.close()
    say(report=report)


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("send")
    p.add_argument("url")
    p = sub.add_parser("resume")
    p.add_argument("url")
    p.add_argument("count", type=int)
    p.add_argument("--backoff", type=float, default=0.2)
    p = sub.add_parser("refresh")
    p.add_argument("url")
    p.add_argument("token_file")
    p.add_argument("count", type=int)
    p.add_argument("--refresh-margin", type=float, default=30.0)
    args = parser.parse_args()
    if args.mode == "send":
        asyncio.run(send(args.url))
    elif args.mode == "resume":
        asyncio.run(resume(args.url, args.count, args.backoff))
    else:
        asyncio.run(refresh(args.url, args.token_file, args.count, args.refresh_margin))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
