// Driven by tests/sdk_typescript.rs: runs the built SDK (dist/) in Node
// with the `ws` package against a hub, printing one JSON object per line
// on stdout (what happened), reading nothing. Modes:
//
//   basic URL                 register, send to John, see the message_event;
//                             a HubError; backpressure (queue_full); abort.
//   resume URL N M            print the registration, then count the
//                             message_events "away i" (N) and "after i" (M)
//                             across the hub's restart; report once all came.
//   token URL FILE MODE       getToken() reads FILE on every connection;
//                             MODE `refresh` (before exp) or `expire` (4401).
//   heartbeat URL             through a TCP relay that goes silent (no
//                             close, no FIN: a half-open link): the client
//                             notices, reconnects and resumes.
import { WebSocket } from "ws";
import { readFileSync } from "node:fs";
import { createServer, connect as tcpConnect } from "node:net";
import { connect, HubError, HubClient } from "../dist/index.js";

const [mode, url, ...rest] = process.argv.slice(2);
const say = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const fail = (e) => {
  process.stderr.write(`sdk_test ${mode}: ${e?.stack ?? e}\n`);
  process.exit(1);
};
const until = (client, type, pred) =>
  new Promise((resolve) => {
    const off = client.on(type, (ev) => {
      if (pred(ev)) {
        off();
        resolve(ev);
      }
    });
  });

async function basic() {
  const client = await connect({ url, WebSocket, session: "sdk-basic", clientId: "sdk-1", name: "SDK test" });
  const seen = until(client, "message_event", (e) => e.message === "hello from the SDK");
  const result = await client.sendMessage("John", "hello from the SDK");
  const event = await seen;
  let error = null;
  try {
    await client.request({ type: "whatsapp_command", command: { action: "dance" } });
  } catch (e) {
    error = { isHubError: e instanceof HubError, code: e.code, message: e.message };
  }
  const pong = await client.request({ type: "ping" });
  client.close();

  // Backpressure: nothing listens there, so requests wait in the queue
  // (bound 2); the third is refused at once; aborting rejects the rest.
  const abort = new AbortController();
  const offline = new HubClient({
    url: "ws://127.0.0.254:9/",
    WebSocket,
    signal: abort.signal,
    maxQueue: 2,
    reconnect: { initialDelayMs: 50, maxDelayMs: 100 },
  });
  const queued = [1, 2].map(() => offline.request({ type: "ping" }).catch((e) => e.code));
  const third = await offline.request({ type: "ping" }).catch((e) => e.code);
  const queuedBefore = offline.queued;
  abort.abort();
  const afterAbort = await Promise.all(queued);
  const ready = await offline.ready.catch((e) => e.code);
  say({ registered: client.confirmation, result, event, error, pong, third, queuedBefore, afterAbort, ready });
}

async function resume() {
  const [away, after] = rest.map(Number);
  const client = await connect({
    url,
    WebSocket,
    session: "sdk-resume",
    clientId: "sdk-resume",
    reconnect: { initialDelayMs: 100, maxDelayMs: 400 },
  });
  const received = [];
  const registrations = [];
  const disconnects = [];
  let replayed = 0;
  let head = client.confirmation.offset;
  client.on("disconnected", (d) => disconnects.push(d.code));
  client.on("registered", (r) => {
    registrations.push({ reconnect: r.reconnect, recovered: r.recovered, since: r.since, offset: r.confirmation.offset });
    head = r.confirmation.offset;
    if (r.reconnect) say({ resumed: r.recovered, since: r.since });
  });
  client.on("resync", () => say({ resync: true }));
  const done = new Promise((resolve) => {
    client.on("message_event", (e) => {
      received.push(e.message);
      // Events at or below the confirmation's offset were replayed.
      if (e.offset <= head) replayed += 1;
      if (received.length === away + after) resolve();
    });
  });
  const { offset, epoch, instance } = client.confirmation;
  say({ registered: offset, epoch, instance });
  await done;
  client.close();
  say({ received, replayed, registrations, disconnects });
}

async function token() {
  const [file, how] = rest;
  const tokens = [];
  const client = await connect({
    url,
    WebSocket,
    session: "sdk-token",
    clientId: "sdk-token",
    getToken: () => {
      const t = readFileSync(file, "utf8").trim();
      tokens.push(t.slice(-12));
      return t;
    },
    refreshBeforeExpiryMs: how === "refresh" ? 1500 : 0,
    reconnect: { initialDelayMs: 100, maxDelayMs: 400 },
  });
  const disconnects = [];
  client.on("disconnected", (d) => disconnects.push({ code: d.code, reason: d.reason }));
  const again = until(client, "registered", (r) => r.reconnect);
  say({ registered: 1 });
  const r = await again;
  say({ registered: 2, recovered: r.recovered });
  const event = await until(client, "message_event", (e) => e.message === "after the refresh");
  client.close();
  say({ event: event.message, tokens: new Set(tokens).size, calls: tokens.length, disconnects });
}

async function heartbeat() {
  // A relay to the hub whose links can be frozen: bytes dropped both ways.
  const hub = new URL(url);
  const links = [];
  const relay = createServer((down) => {
    const link = { frozen: false };
    const up = tcpConnect(Number(hub.port), hub.hostname);
    down.on("data", (d) => link.frozen || up.write(d));
    up.on("data", (d) => link.frozen || down.write(d));
    for (const [a, b] of [[down, up], [up, down]]) {
      a.on("error", () => undefined);
      a.on("close", () => b.destroy());
    }
    links.push(link);
  });
  await new Promise((r) => relay.listen(0, "127.0.0.1", r));
  const client = await connect({
    url: `ws://127.0.0.1:${relay.address().port}/`,
    WebSocket,
    session: "sdk-heartbeat",
    clientId: "sdk-heartbeat",
    heartbeat: { intervalMs: 300, timeoutMs: 1200 },
    reconnect: { initialDelayMs: 50, maxDelayMs: 200 },
  });
  const sender = await connect({ url, WebSocket, session: "sdk-heartbeat", clientId: "sender" });
  const received = [];
  const all = new Promise((resolve) =>
    client.on("message_event", (e) => {
      received.push(e.message);
      if (received.length === 3) resolve();
    }),
  );
  const disconnected = until(client, "disconnected", () => true);
  const resumed = until(client, "registered", (r) => r.reconnect);
  for (const link of links) link.frozen = true;
  const frozenAt = Date.now();
  for (let n = 0; n < 3; n++) await sender.sendMessage("John", `while frozen ${n}`);
  const lost = await disconnected;
  const detectedMs = Date.now() - frozenAt;
  const again = await resumed;
  await all;
  client.close();
  sender.close();
  relay.close();
  say({ received, detectedMs, code: lost.code, reason: lost.reason, recovered: again.recovered });
}

const modes = { basic, resume, token, heartbeat };
if (!modes[mode]) fail(`unknown mode ${mode}`);
modes[mode]().then(() => process.exit(0), fail);
