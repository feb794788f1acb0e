#!/usr/bin/env python3
"""Interop with the official Python MCP SDK, driven by tests/mcp.rs.

  mcp_interop.py URL CONTACT MESSAGE [TOKEN]
  mcp_interop.py --stdio BINARY URL CONTACT MESSAGE [TOKEN]
      connects to the hub's /mcp with Streamable HTTP (sending
      `Authorization: Bearer TOKEN` when given) or, with --stdio, over
      stdio through `BINARY mcp-stdio --url URL` (the token in
      MCP_HUB_TOKEN), initializes, lists the
      tools, calls send_message {contact, message}, get_history
      {contact}, then get_history of a contact no one has, and prints one
      JSON object:
      {"server": name, "tools": [names], "titles": {name: title},
       "annotations": {name: {...}}, "send": {...}, "history": {...},
       "unknown": {...}, "validated": n}
      where each call is {"is_error", "structured", "text"}. Every
      structured result, errors included, is validated against its tool's
      outputSchema with the jsonschema package (the SDK's own dependency),
      besides the SDK's own check of successful results. Exit 1 (with the
      error on stderr) if the SDK or a validation fails.

  mcp_interop.py --elicit accept|decline URL CONTACT MESSAGE [TOKEN]
      declares elicitation, calls send_message {contact, message} on a
      hub that holds MCP sends for approval (APPROVAL_REQUIRED), answers
      the hub's question with approve=true (accept) or declines it, and
      prints {"asked": [{"message", "schema"}], "send": {...}}.
"""
import asyncio
import json
import sys

import jsonschema
from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client


def outcome(result):
    return {
        "is_error": bool(result.is_error),
        "structured": result.structured_content,
        "text": [c.text for c in result.content if hasattr(c, "text")],
    }


async def elicited(url, contact, message, token, answer):
    """send_message, answering the hub's elicitation with `answer`."""
    asked = []

    async def on_elicit(context, params):
        asked.append({"message": params.message, "schema": params.requested_schema})
        if answer == "accept":
            return types.ElicitResult(action="accept", content={"approve": True})
        return types.ElicitResult(action="decline")

    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with create_mcp_http_client(headers=headers) as http:
        async with streamable_http_client(url, http_client=http) as streams:
            async with ClientSession(
                streams[0], streams[1], elicitation_callback=on_elicit
            ) as session:
                await session.initialize()
                result = await session.call_tool(
                    "send_message", {"contact": contact, "message": message}
                )
                return {"asked": asked, "send": outcome(result)}


async def run(url, contact, message, token, bridge=None):
    if bridge:
        env = {"PATH": "/usr/bin:/bin"}
        if token:
            env["MCP_HUB_TOKEN"] = token
        params = StdioServerParameters(
            command=bridge, args=["mcp-stdio", "--url", url], env=env
        )
        async with stdio_client(params) as streams:
            return await exercise(streams, contact, message)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with create_mcp_http_client(headers=headers) as http:
        async with streamable_http_client(url, http_client=http) as streams:
            return await exercise(streams, contact, message)


async def exercise(streams, contact, message):
    async with ClientSession(streams[0], streams[1]) as session:
        init = await session.initialize()
        tools = {t.name: t for t in (await session.list_tools()).tools}
        calls = [
            ("send_message", {"contact": contact, "message": message}),
            ("get_history", {"contact": contact, "limit": 5}),
            ("get_history", {"contact": "zzzz-nobody-qqqq"}),
        ]
        results = []
        for name, args in calls:
            result = await session.call_tool(name, args)
            jsonschema.Draft202012Validator(
                tools[name].output_schema
            ).validate(result.structured_content)
            results.append(outcome(result))
        return {
            "server": init.server_info.name,
            "tools": list(tools),
            "titles": {n: t.title for n, t in tools.items()},
            "annotations": {
                n: t.annotations.model_dump(by_alias=True, exclude_none=True)
                for n, t in tools.items()
                if t.annotations
            },
            "send": results[0],
            "history": results[1],
            "unknown": results[2],
            "validated": len(results),
        }


def main(argv):
    if len(argv) > 2 and argv[1] == "--elicit":
        answer, argv = argv[2], argv[:1] + argv[3:]
        url, contact, message = argv[1:4]
        token = argv[4] if len(argv) == 5 else None
        print(json.dumps(asyncio.run(elicited(url, contact, message, token, answer))))
        return 0
    bridge = None
    if len(argv) > 2 and argv[1] == "--stdio":
        bridge = argv[2]
        argv = argv[:1] + argv[3:]
    if len(argv) not in (4, 5):
        print(__doc__, file=sys.stderr)
        return 2
    url, contact, message = argv[1:4]
    token = argv[4] if len(argv) == 5 else None
    print(json.dumps(asyncio.run(run(url, contact, message, token, bridge))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
