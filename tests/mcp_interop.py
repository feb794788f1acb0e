#!/usr/bin/env python3
"""Interop with the official Python MCP SDK, driven by tests/mcp.rs.

  mcp_interop.py URL CONTACT MESSAGE [TOKEN]
      connects to the hub's /mcp with Streamable HTTP (sending
      `Authorization: Bearer TOKEN` when given), initializes, lists the
      tools, calls send_message {contact, message}, then get_history
      {contact}, and prints one JSON object:
      {"server": name, "tools": [names], "send": {...}, "history": {...}}
      where each call is {"is_error", "structured", "text"}. Exit 1 (with
      the error on stderr) if the SDK fails.
"""
import asyncio
import json
import sys

from mcp import ClientSession
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client


def outcome(result):
    return {
        "is_error": bool(result.is_error),
        "structured": result.structured_content,
        "text": [c.text for c in result.content if hasattr(c, "text")],
    }


async def run(url, contact, message, token):
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with create_mcp_http_client(headers=headers) as http:
        async with streamable_http_client(url, http_client=http) as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                init = await session.initialize()
                tools = (await session.list_tools()).tools
                sent = await session.call_tool(
                    "send_message", {"contact": contact, "message": message}
                )
                history = await session.call_tool(
                    "get_history", {"contact": contact, "limit": 5}
                )
                return {
                    "server": init.server_info.name,
                    "tools": [t.name for t in tools],
                    "send": outcome(sent),
                    "history": outcome(history),
                }


def main(argv):
    if len(argv) not in (4, 5):
        print(__doc__, file=sys.stderr)
        return 2
    url, contact, message = argv[1:4]
    token = argv[4] if len(argv) == 5 else None
    print(json.dumps(asyncio.run(run(url, contact, message, token))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
