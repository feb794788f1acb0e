"""mcp-hub-client: an asyncio client for mcp-hub's WebSocket protocol."""

from .client import HubClient, Options, TokenSource, connect
from .models import (
    ClientClosed,
    ClientInfo,
    ConnectionLost,
    Contact,
    Disconnected,
    ErrorFrame,
    Event,
    Frame,
    HubError,
    MessageEvent,
    Position,
    Reconnected,
    Registration,
    RegistrationConfirmed,
    Response,
)

__all__ = [
    "ClientClosed",
    "ClientInfo",
    "ConnectionLost",
    "Contact",
    "Disconnected",
    "ErrorFrame",
    "Event",
    "Frame",
    "HubClient",
    "HubError",
    "MessageEvent",
    "Options",
    "Position",
    "Reconnected",
    "Registration",
    "RegistrationConfirmed",
    "Response",
    "TokenSource",
    "connect",
]
