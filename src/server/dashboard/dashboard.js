// The admin dashboard's script (index.html beside it), served by the hub
// at /assets/dashboard.js. The monitoring feed goes through the TypeScript
// SDK's feed client (clients/typescript/src/feed.ts, served in
// /assets/mcp-hub-client.js); messages are shown with the content view the
// web page uses too (/assets/content-view.js).
import { connectFeed } from "/assets/mcp-hub-client.js";
import { contentNodes, contentText, revokeOnRemoval, str } from "/assets/content-view.js";

// ---- state
const instances = new Map();   // id -> latest stats / info
let sessions = [];             // listings, in name order
let nextCursor = null;
const details = new Map();     // session -> {clients, agent}
let watched = null;
let feed = null;               // the SDK's feed client
let statsIntervalMs = 2000;
const approvals = new Map();   // "session/id" -> a held send waiting for a decision
const MAX_EVENTS = 200;

const $ = (id) => document.getElementById(id);
const token = () => sessionStorage.getItem("mcp-hub-admin-token") || "";

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function say(text, isError) {
  $("message").textContent = text;
  $("message").className = "wide " + (isError ? "error" : "muted");
  $("message").hidden = !text;
}

async function api(method, path, body) {
  const headers = {};
  if (token()) headers["Authorization"] = "Bearer " + token();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await r.json().catch(() => null);
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${data && data.code ? data.code : ""}`);
  return data;
}

// ---- instances
function fmtUptime(ms) {
  const s = Math.floor(ms / 1000), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return h ? `${h}h ${m}m` : m ? `${m}m ${s % 60}s` : `${s}s`;
}
const rate = (x) => (x === undefined ? "–" : x.toFixed(1));

function renderInstances() {
  const now = Date.now();
  // An instance silent for three stats intervals is gone.
  for (const [id, i] of instances) {
    if (i.seen && now - i.seen > 3 * statsIntervalMs + 1000) instances.delete(id);
  }
  const rows = [...instances.values()].sort((a, b) => a.instance.localeCompare(b.instance));
  $("instances").replaceChildren(...rows.map((i) => el("tr", { "data-instance": i.instance },
    el("td", {}, i.instance), el("td", {}, i.version || "?"),
    el("td", {}, fmtUptime(i.uptime_ms || 0)),
    el("td", {}, i.connections ?? "–"), el("td", {}, i.clients ?? "–"),
    el("td", { class: i.ready ? "ready" : "not-ready" }, i.ready ? "ready" : "not ready"),
    el("td", {}, rate(i.messages_in_per_sec)), el("td", {}, rate(i.messages_out_per_sec)),
    el("td", {}, rate(i.connections_per_sec)))));
  const sum = (k) => rows.reduce((t, i) => t + (i[k] || 0), 0).toFixed(1);
  $("total-in").textContent = sum("messages_in_per_sec");
  $("total-out").textContent = sum("messages_out_per_sec");
  $("total-conn").textContent = sum("connections_per_sec");
  $("ai").replaceChildren(...rows.filter((i) => i.ai).map((i) => el("tr", {},
    el("td", {}, i.instance), el("td", {}, i.ai.provider), el("td", {}, i.ai.calls),
    el("td", {}, i.ai.cache_hits), el("td", {}, i.ai.singleflight_joins),
    el("td", {}, i.ai.rate_limited),
    el("td", { class: i.ai.breaker === "closed" ? "ready" : "not-ready" }, i.ai.breaker))));
}

async function loadInstances() {
  const r = await api("GET", "/api/v1/instances");
  for (const i of r.instances) instances.set(i.instance, { ...instances.get(i.instance), ...i, seen: Date.now() });
  renderInstances();
}

// ---- sessions
async function loadSessions() {
  const page = await api("GET", "/api/v1/sessions?limit=50");
  sessions = page.sessions;
  nextCursor = page.next_cursor;
  await Promise.all(sessions.map((s) => loadDetail(s.session)));
  renderSessions();
}

async function loadMore() {
  const page = await api("GET", "/api/v1/sessions?limit=50&cursor=" + encodeURIComponent(nextCursor));
  sessions = sessions.concat(page.sessions);
  nextCursor = page.next_cursor;
  await Promise.all(page.sessions.map((s) => loadDetail(s.session)));
  renderSessions();
}

async function loadDetail(session) {
  try {
    details.set(session, await api("GET", "/api/v1/sessions/" + encodeURIComponent(session)));
  } catch (e) {
    details.delete(session);
  }
}

function renderSessions() {
  $("session-count").textContent = `(${sessions.length}${nextCursor ? "+" : ""})`;
  $("more").hidden = !nextCursor;
  $("sessions").replaceChildren(...sessions.map((s) => {
    const d = details.get(s.session) || { clients: [], agent: null };
    const agentId = d.agent ? d.agent.client_id : null;
    const last = s.last_activity ? new Date(s.last_activity).toLocaleTimeString() : "–";
    // A session on a WhatsApp Cloud API number says which.
    const number = typeof s.phone_number_id === "string" && s.phone_number_id ? ` · number ${s.phone_number_id}` : "";
    return el("div", { class: "session", "data-session": s.session },
      el("h3", {}, s.session,
        el("button", { onclick: () => watch(s.session) }, watched === s.session ? "watching" : "watch")),
      el("div", { class: "meta" },
        `${d.clients.length} clients · agent ${agentId || "none"}${number} · messages in ${s.messages_in} / out ${s.messages_out} · last activity ${last}`),
      el("ul", {}, ...d.clients.map((c) => el("li", { "data-client": c.client_id, "data-session": s.session },
        c.client_id === agentId ? el("span", { class: "agent-mark", title: "the session's agent" }, "★ ") : "",
        `${c.client_name} (${c.client_id}) on ${c.instance}`,
        c.connected_at ? el("span", { class: "muted" }, ` since ${new Date(c.connected_at).toLocaleTimeString()}`) : "",
        c.capabilities && c.capabilities.length ? el("span", { class: "muted" }, ` [${c.capabilities.join(", ")}]`) : "",
        " ",
        el("button", { class: "disconnect", onclick: () => disconnect(s.session, c.client_id) }, "disconnect")))));
  }));
}

// Presence changes come in bursts: refresh once per burst.
let refreshTimer = null;
const dirty = new Set();
function sessionChanged(session) {
  dirty.add(session);
  if (refreshTimer) return;
  refreshTimer = setTimeout(async () => {
    refreshTimer = null;
    const changed = [...dirty];
    dirty.clear();
    try {
      const page = await api("GET", "/api/v1/sessions?limit=" + Math.max(50, sessions.length));
      sessions = page.sessions;
      nextCursor = page.next_cursor;
      await Promise.all(changed.map(loadDetail));
      renderSessions();
    } catch (e) { say(e.message, true); }
  }, 300);
}

async function disconnect(session, clientId) {
  try {
    await api("DELETE", `/api/v1/sessions/${encodeURIComponent(session)}/clients/${encodeURIComponent(clientId)}`);
    say(`disconnected ${clientId} from ${session} (close 4002)`);
  } catch (e) { say(e.message, true); }
}

// ---- sends held for a person's approval (APPROVAL_REQUIRED)
function renderApprovals() {
  const rows = [...approvals.values()].sort((a, b) => a.created_at - b.created_at);
  $("approval-count").textContent = `(${rows.length})`;
  $("approvals").replaceChildren(...rows.map((a) => el("tr", { "data-session": a.session, "data-approval": a.id },
    el("td", {}, a.session), el("td", {}, a.id), el("td", {}, a.requested_by), el("td", {}, a.via),
    el("td", {}, a.contact), el("td", {}, a.text),
    el("td", {}, new Date(a.expires_at).toLocaleTimeString()),
    el("td", {},
      el("button", { class: "approve", onclick: () => decide(a, "approve") }, "approve"), " ",
      el("button", { class: "reject", onclick: () => decide(a, "reject") }, "reject")))));
}

async function loadApprovals() {
  const lists = await Promise.all(sessions.map((s) =>
    api("GET", `/api/v1/sessions/${encodeURIComponent(s.session)}/approvals`).catch(() => null)));
  approvals.clear();
  for (const list of lists) for (const a of (list ? list.approvals : [])) approvals.set(`${a.session}/${a.id}`, a);
  renderApprovals();
}

async function decide(a, decision) {
  try {
    const r = await api("POST", `/api/v1/sessions/${encodeURIComponent(a.session)}/approvals/${a.id}`, { decision });
    say(`#${a.id} of ${a.session}: ${r.decision}${r.result && r.result.success === false ? " — the send failed: " + r.result.error : ""}`);
  } catch (e) { say(e.message, true); }
  approvals.delete(`${a.session}/${a.id}`);
  renderApprovals();
}

// ---- the watched session's events
function watch(session) {
  watched = session;
  $("watched").textContent = session;
  $("events").replaceChildren();
  $("broadcast-form").hidden = false;
  feed.watch(session);
  renderSessions();
}

function showEvent(frame) {
  const line = el("div", {}, `${new Date().toLocaleTimeString()} ${frame.type} `);
  // A message reads as one, with its image, voice note, options, ...
  if (frame.type === "message_event") {
    const said = `${frame.direction === "outgoing" ? "→" : "←"} ${str(frame.contact)}: ${contentText(frame) ?? str(frame.message)}`;
    line.append(el("span", { class: "said" }, said), " ");
  }
  line.append(JSON.stringify(frame));
  if (frame.type === "message_event") line.append(...contentNodes(frame, token()));
  $("events").prepend(line);
  while ($("events").childElementCount > MAX_EVENTS) $("events").lastChild.remove();
}

$("broadcast-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    await api("POST", `/api/v1/sessions/${encodeURIComponent(watched)}/broadcast`,
      { payload: { text: $("broadcast-text").value } });
    $("broadcast-text").value = "";
  } catch (err) { say(err.message, true); }
});

// ---- the monitoring feed (the SDK reconnects it and watches again)
function openFeed() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const f = connectFeed({
    url: `${proto}//${location.host}/dashboard/feed`,
    getToken: token,
    // Backoff from 5 s: the page never retries faster than that.
    reconnect: { initialDelayMs: 5000, maxDelayMs: 30000 },
  });
  f.on("open", () => {
    $("feed-status").textContent = "live";
    $("feed-status").className = "live";
    // Whatever changed while the feed was down.
    refreshAll();
  });
  f.on("event", showEvent); // the watched session's event
  f.on("hello", (frame) => { statsIntervalMs = frame.stats_interval_ms; });
  f.on("instance_stats", (frame) => {
    instances.set(frame.instance, { ...frame, seen: Date.now() });
    renderInstances();
  });
  f.on("presence", (frame) => sessionChanged(frame.session));
  f.on("agent", (frame) => sessionChanged(frame.session));
  f.on("approval", (frame) => {
    const key = `${frame.approval.session}/${frame.approval.id}`;
    if (frame.resolution) approvals.delete(key); else approvals.set(key, frame.approval);
    renderApprovals();
  });
  f.on("error", (frame) => say(`feed: ${frame.code} ${frame.message}`, true));
  f.on("disconnected", ({ code }) => {
    $("feed-status").textContent = `disconnected (${code}); retrying`;
    $("feed-status").className = "";
    if (code === 4401) say("the admin token expired — give a new one above", true);
  });
  if (watched) f.watch(watched);
  return f;
}

async function refreshAll() {
  try {
    await Promise.all([loadInstances(), loadSessions()]);
    await loadApprovals();
    say("");
  } catch (e) { say(e.message + (token() ? "" : " — give an admin token above"), true); }
}

$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem("mcp-hub-admin-token", $("token").value.trim());
  // A new feed with the new token, now.
  feed.close();
  feed = openFeed();
});
$("more").addEventListener("click", () => loadMore().catch((e) => say(e.message, true)));
// Drops instances that stopped reporting (a local clock, no request).
setInterval(renderInstances, 5000);
revokeOnRemoval($("events"));
feed = openFeed();
// For the browser console (and the browser tests): how an event of the
// watched session is shown.
window.mcpHubDashboard = { showEvent };
