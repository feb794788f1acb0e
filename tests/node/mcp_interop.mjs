// Interop with the official TypeScript MCP SDK, driven by tests/mcp.rs:
//
//   node mcp_interop.mjs URL CONTACT MESSAGE [TOKEN]
//
// connects to the hub's /mcp with Streamable HTTP (sending
// `Authorization: Bearer TOKEN` when given), initializes, lists the tools,
// calls send_message {contact, message} and get_history {contact}, reads
// the conversation resource and lists the prompts, and prints one JSON
// object: {"server", "protocol", "tools", "send", "history", "resource",
// "prompts"}. The SDK validates each result against the tool's
// outputSchema itself. Exit 1 (with the error on stderr) if anything fails.
//   node mcp_interop.mjs --subscribe URL URI [TOKEN]
//
// subscribes to the resource URI, prints {"subscribed": URI}, waits (at
// most 10 s) for notifications/resources/updated, prints {"updated": URI},
// unsubscribes and closes the session.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { ResourceUpdatedNotificationSchema } from "@modelcontextprotocol/sdk/types.js";

const connect = async (url, token) => {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const transport = new StreamableHTTPClientTransport(new URL(url), {
    requestInit: { headers },
  });
  const client = new Client({ name: "mcp-hub-ts-interop", version: "1.0.0" });
  await client.connect(transport);
  return { client, transport };
};

if (process.argv[2] === "--subscribe") {
  const [url, uri, token] = process.argv.slice(3);
  try {
    const { client } = await connect(url, token);
    const updated = new Promise((resolve, reject) => {
      client.setNotificationHandler(ResourceUpdatedNotificationSchema, (n) => {
        if (n.params.uri === uri) resolve(n.params.uri);
      });
      setTimeout(() => reject(new Error("no update within 10 s")), 10_000);
    });
    await client.subscribeResource({ uri });
    console.log(JSON.stringify({ subscribed: uri }));
    console.log(JSON.stringify({ updated: await updated }));
    await client.unsubscribeResource({ uri });
    await client.close();
    process.exit(0);
  } catch (e) {
    console.error(e?.stack ?? String(e));
    process.exit(1);
  }
}

const [url, contact, message, token] = process.argv.slice(2);
if (!url || !contact || !message) {
  console.error("usage: node mcp_interop.mjs URL CONTACT MESSAGE [TOKEN]");
  process.exit(2);
}

const outcome = (r) => ({
  is_error: Boolean(r.isError),
  structured: r.structuredContent ?? null,
  text: (r.content ?? []).filter((c) => c.type === "text").map((c) => c.text),
});

try {
  const { client, transport } = await connect(url, token);
  const tools = (await client.listTools()).tools.map((t) => t.name);
  const send = await client.callTool({
    name: "send_message",
    arguments: { contact, message },
  });
  const history = await client.callTool({
    name: "get_history",
    arguments: { contact, limit: 5 },
  });
  const name = send.structuredContent?.contact ?? contact;
  const uri = `whatsapp://sessions/default/conversations/${encodeURIComponent(name)}`;
  const resource = await client.readResource({ uri });
  const prompts = (await client.listPrompts()).prompts.map((p) => p.name);
  console.log(
    JSON.stringify({
      server: client.getServerVersion()?.name,
      protocol: transport.protocolVersion ?? null,
      tools,
      send: outcome(send),
      history: outcome(history),
      resource: JSON.parse(resource.contents[0].text),
      prompts,
    }),
  );
  await client.close();
} catch (e) {
  console.error(e?.stack ?? String(e));
  process.exit(1);
}
