// The web client's script (web/index.html), served by the hub at
// /assets/web-page.js. All protocol work goes through the TypeScript SDK
// (clients/typescript, served at /assets/mcp-hub-client.js): registering,
// requests matched by their request_id, events, heartbeats, and reconnects
// that resume where the page left off (docs/protocol.md §12.1).
import { HubClient } from "/assets/mcp-hub-client.js";
import { contentNodes, contentText, revokeOnRemoval } from "/assets/content-view.js";

const $ = (id) => document.getElementById(id);
// The SDK's client of the current connection (Connect starts a new one).
let hub = null;
const clients = new Map();
// Sends held for a person's approval (APPROVAL_REQUIRED), by number.
const approvals = new Map();
// The last conversation, reloaded when a reconnect could not resume.
let lastContact = null;
// The token of the current connection, also sent when fetching media.
let authToken = "";
// Lines kept in the log; older ones (and their media) go.
const MAX_LOG_LINES = 1000;

// Delivery statuses (Cloud API): ✓ sent, ✓✓ delivered, read, failed with its reason.
function statusMark(status, reason) {
  switch (status) {
    case "sent": return "✓ sent";
    case "delivered": return "✓✓ delivered";
    case "read": return "✓✓ read";
    case "failed": return `✗ failed: ${reason || "unknown reason"}`;
    default: return String(status);
  }
}

function line(text, cls, extra = []) {
  const div = document.createElement("div");
  div.textContent = text;
  if (cls) div.className = cls;
  div.append(...extra);
  $("log").appendChild(div);
  while ($("log").childElementCount > MAX_LOG_LINES) $("log").firstElementChild.remove();
  $("log").scrollTop = $("log").scrollHeight;
}

// `→ John: hello (by t1)` / `← John: [image] …`, with what it carries below.
function messageLine(m, prefix, cls) {
  const body = contentText(m) ?? m.message;
  const text = m.direction === "outgoing"
    ? `→ ${m.contact}: ${body}${m.by ? ` (by ${nameOf(m.by)})` : ""}${m.status ? " " + statusMark(m.status, m.status_error && m.status_error.message) : ""}`
    : `← ${m.contact}: ${body}`;
  line(prefix + text, cls, contentNodes(m, authToken));
}
function renderClients() {
  $("clients").replaceChildren(...[...clients.values()].map((c) => {
    const li = document.createElement("li");
    li.textContent = `${c.client_name} (${c.instance})`;
    return li;
  }));
}
// A member's name where the page knows it (`decided_by` is a client id).
const nameOf = (id) => (clients.get(id) || {}).client_name || id;
function renderApprovals() {
  $("approvals").replaceChildren(...[...approvals.values()].map((a) => {
    const li = document.createElement("li");
    li.dataset.approval = a.id;
    const text = document.createElement("div");
    text.textContent = `#${a.id} ${a.requested_by} (${a.via === "ai" ? "AI" : "MCP"}) → ${a.contact}: ${a.text}`;
    const decide = (kind) => {
      const b = document.createElement("button");
      b.className = kind; b.textContent = kind === "approve" ? "Approve" : "Reject";
      b.onclick = () => send({ type: kind, id: a.id });
      return b;
    };
    li.append(text, decide("approve"), decide("reject"));
    return li;
  }));
}

// A request through the SDK (it adds the request_id and matches the
// answer); the answer or the error is shown when it comes.
function send(body) {
  hub.request(body).then(onAnswer, (err) => line(`error [${err.code}]: ${err.message}`, "err"));
}

function onAnswer(m) {
  if (m.type !== "response") { line(JSON.stringify(m), "sys"); return; }
  const c = m.content || {};
  if (m.response_type === "approvals") { approvals.clear(); (c.approvals || []).forEach((a) => approvals.set(a.id, a)); renderApprovals(); }
  else if (m.response_type === "approval_decided") { /* approval_resolved says it */ }
  else if (m.response_type === "ai_response") line(`ai: ${c.text}`, "sys");
  else if (c.success === false) line(`failed: ${c.error || JSON.stringify(c)}${c.candidates ? " (candidates: " + c.candidates.join(", ") + ")" : ""}`, "err");
  else if (c.result && c.result.contacts) line(`contacts: ${c.result.contacts.map((x) => x.name || x).join(", ")}`, "sys");
  else if (c.contacts) line(`contacts: ${c.contacts.map((x) => x.name || x).join(", ")}`, "sys");
  else if ((c.result || c).messages) ((c.result || c).messages).forEach((h) => messageLine(h, "  ", "sys"));
}

// Every (re-)registration (the SDK's `registered`): who the page is now,
// and whether the hub replayed what was missed.
function onRegistered({ confirmation: m, reconnect, since, recovered }) {
  $("input").disabled = false;
  $("status").textContent = `${m.client_id} @ ${m.instance}`;
  clients.clear(); (m.clients || []).forEach((c) => clients.set(c.client_id, c)); renderClients();
  line(`${reconnect ? "reconnected" : "registered"} as ${m.client_id} in session ${m.session} on ${m.instance}`, "sys");
  if (recovered) {
    line(`(resumed: ${Math.max(0, m.offset - since.offset)} missed events)`, "sys");
  } else if (reconnect) {
    // Without the event log there is nothing to replay (the SDK's `resync`).
    line("(could not resume: history reloaded)", "sys");
    // The contacts come with every registration; reload the last conversation.
    if (lastContact) send({ type: "whatsapp_command", command: { action: "get_history", contact: lastContact } });
  }
  // Held sends announced before this registration.
  send({ type: "list_approvals" });
}

// A hub frame that is not the answer to one of the page's requests.
function onEvent(m) {
  switch (m.type) {
    case "contact_list_broadcast":
      $("contacts").replaceChildren(...m.contacts.map((c) => { const li = document.createElement("li"); li.textContent = c.name; return li; }));
      break;
    case "message_event":
      lastContact = m.contact;
      messageLine(m, "", m.direction === "outgoing" ? "out" : "in"); break;
    case "message_status": line(`${statusMark(m.status, m.error && m.error.message)} (message ${m.contact ? "to " + m.contact : m.message_id})`, m.status === "failed" ? "err" : "sys"); break;
    case "client_joined": clients.set(m.client_id, m); renderClients(); line(`+ ${m.client_name} joined (${m.instance})`, "sys"); break;
    case "client_left": clients.delete(m.client_id); renderClients(); line(`- ${m.client_name} left`, "sys"); break;
    case "broadcast": line(`[${m.from}] ${JSON.stringify(m.payload)}`, "sys"); break;
    case "agent_changed": line(m.client_id ? `agent is now ${m.client_id}` : "no agent: using the hub's connector", "sys"); break;
    case "approval_request":
      approvals.set(m.id, m); renderApprovals();
      line(`⏸ #${m.id} ${m.requested_by} wants to send ${m.contact}: ${m.text} (approve or reject on the right)`, "sys"); break;
    case "approval_resolved":
      approvals.delete(m.id); renderApprovals();
      line(m.decision === "expired" ? `✘ #${m.id} expired` : `${m.decision === "approved" ? "✔" : "✘"} #${m.id} ${m.decision} by ${nameOf(m.decided_by)}${m.reason ? ": " + m.reason : ""}`, m.decision === "approved" ? "sys" : "err"); break;
    case "error": line(`error [${m.code}]: ${m.message}`, "err"); break;
    default: line(JSON.stringify(m), "sys");
  }
}

// The token (docs/security.md): kept in sessionStorage (gone with the tab),
// sent as ?token= because a browser cannot set headers on a WebSocket.
$("token").value = sessionStorage.getItem("mcp-hub-token") || "";
$("token").onchange = () => sessionStorage.setItem("mcp-hub-token", $("token").value.trim());

// A refused upgrade is invisible to a WebSocket (close 1006, never opened):
// ask the REST API with the same token whether the hub answers 401.
async function explainRefusal(token) {
  try {
    const r = await fetch(`/api/v1/sessions/${encodeURIComponent($("session").value)}`,
      token ? { headers: { Authorization: `Bearer ${token}` } } : {});
    if (r.status !== 401) { line(`the hub refused the connection (HTTP ${r.status} on the REST check)`, "err"); return; }
    const body = await r.json().catch(() => ({}));
    line(`the hub needs a valid token (401: ${body.message || "unauthorized"})`, "err");
    askToken();
  } catch (err) { line(`cannot reach the hub: ${err}`, "err"); }
}
function askToken(why) {
  const t = window.prompt(why || "This hub needs a token (mcp-hub token --sub NAME --session SESSION):", "");
  if (t && t.trim()) {
    $("token").value = t.trim();
    sessionStorage.setItem("mcp-hub-token", t.trim());
    $("connect").click();
  } else {
    $("token").focus();
  }
}

// A fresh client (maybe another session or name): nothing to resume.
function connect() {
  const token = $("token").value.trim();
  authToken = token;
  sessionStorage.setItem("mcp-hub-token", token);
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
  const client = new HubClient({
    url,
    token: token || undefined,
    session: $("session").value,
    name: $("name").value,
    // Capped exponential backoff with jitter, as the page always had.
    reconnect: { initialDelayMs: 200, maxDelayMs: 5000 },
  });
  hub = client;
  let registered = false;
  client.on("registered", (ev) => { registered = true; onRegistered(ev); });
  client.on("frame", onEvent);
  client.on("disconnected", ({ code, reason, willReconnect, delayMs }) => {
    const why = `${code}${reason ? " " + reason : ""}`;
    $("input").disabled = true;
    // Never registered: the upgrade was refused (a 401 is invisible here).
    if (!registered && code === 1006) {
      client.close();
      $("status").textContent = `closed (${why})`;
      explainRefusal(token);
      return;
    }
    if (!willReconnect) return; // `closed` follows
    $("status").textContent = `reconnecting in ${delayMs} ms (closed ${why})`;
    line(`connection lost (${why}); reconnecting`, "err");
  });
  client.on("closed", ({ code, reason, error }) => {
    if (client !== hub) return; // replaced by Connect
    $("input").disabled = true;
    if (code === 4401) { line("token expired: enter a new one", "err"); askToken("The token expired. A new token:"); return; }
    $("status").textContent = `closed (${code}${reason ? " " + reason : ""})`;
    if (error && error.code === "registration_failed") line(`error: ${error.message}`, "err");
  });
}

$("connect").onclick = () => {
  lastContact = null;
  const old = hub;
  hub = null;
  if (old) old.close();
  connect();
};

$("form").onsubmit = (e) => {
  e.preventDefault();
  const text = $("input").value.trim();
  if (!text) return;
  // While reconnecting the line stays in the box, to be sent once back.
  if (!hub || !hub.connected) { line("not sent: still reconnecting (the line is kept)", "err"); return; }
  $("input").value = "";
  const [cmd, ...rest] = text.split(/\s+/);
  if (cmd === "/send" && rest.length >= 2) send({ type: "whatsapp_command", command: { action: "send", contact: rest[0], message: rest.slice(1).join(" ") } });
  else if (cmd === "/contacts") send({ type: "whatsapp_command", command: { action: "list_contacts" } });
  else if (cmd === "/history" && rest.length >= 1) send({ type: "whatsapp_command", command: { action: "get_history", contact: rest[0] } });
  else if (cmd === "/ai") send({ type: "ai_request", prompt: rest.join(" ") });
  else send({ type: "whatsapp_ai_command", command: text });
};

// For the browser console (and the browser tests): the page's handler of
// hub frames, and its SDK client.
window.mcpHubPage = { onEvent, get client() { return hub; } };
revokeOnRemoval($("log"));
$("connect").click();
