// @mcp-hub/client for browsers, built from clients/typescript/src by
// clients/typescript/scripts/bundle.mjs (esbuild). Do not edit: rebuild.

// src/errors.ts
var HubError = class _HubError extends Error {
  code;
  /** The hub's `error` frame, when there was one. */
  frame;
  constructor(code, message, frame) {
    super(message);
    this.name = "HubError";
    this.code = code;
    this.frame = frame;
  }
  static fromFrame(frame) {
    return new _HubError(frame.code, frame.message, frame);
  }
};

// src/protocol.ts
function afterClose(code, canRenewToken) {
  if (code === 4401 && canRenewToken) return "renew_token";
  if (code !== null && code >= 4e3 && code <= 4999) return "stop";
  return "reconnect";
}
function positionOf(frame) {
  if (!frame || typeof frame !== "object") return null;
  const { offset, epoch } = frame;
  if (typeof offset !== "number" || !Number.isSafeInteger(offset) || offset < 0) return null;
  if (typeof epoch !== "string") return null;
  return { offset, epoch };
}
function afterRegistration(since, confirmed) {
  const recovered = since !== null && confirmed?.recovered === true;
  if (recovered) return { recovered, position: since };
  return { recovered: false, position: positionOf(confirmed) };
}
function track(known, frame) {
  const p = positionOf(frame);
  if (p === null) return { position: known, duplicate: false };
  if (known !== null && known.epoch === p.epoch && p.offset <= known.offset) {
    return { position: known, duplicate: true };
  }
  return { position: p, duplicate: false };
}
var ANSWERS = /* @__PURE__ */ new Set(["response", "error", "pong", "registration_confirmed"]);
function answeredRequest(frame) {
  if (!frame || typeof frame !== "object") return null;
  const { type, request_id } = frame;
  if (typeof type !== "string" || !ANSWERS.has(type)) return null;
  return typeof request_id === "string" ? request_id : null;
}

// src/client.ts
var OPEN = 1;
var RETRY_REGISTER = /* @__PURE__ */ new Set(["session_full", "store_unavailable", "shutting_down", "rate_limited", "internal_error"]);
async function connect(options) {
  const client = new HubClient(options);
  await client.ready;
  return client;
}
var HubClient = class {
  /** Resolves at the first registration; rejects if the client stops before. */
  ready;
  /** The last registration's confirmation. */
  confirmation;
  opts;
  Ctor;
  ws;
  /** Bumped on every new socket and on every loss: stale callbacks check it. */
  gen = 0;
  state = "connecting";
  position = null;
  clientId;
  registrations = 0;
  attempt = 0;
  seq = 0;
  prefix = `sdk${Math.random().toString(36).slice(2, 8)}-`;
  registerRid;
  heartbeatRid = `${this.prefix}hb`;
  registerSince = null;
  token;
  lastSeen = 0;
  pending = /* @__PURE__ */ new Map();
  queue = [];
  listeners = /* @__PURE__ */ new Map();
  heartbeatTimer;
  registerTimer;
  reconnectTimer;
  refreshTimer;
  drainTimer;
  readyResolve;
  readyReject;
  readySettled = false;
  constructor(options) {
    this.opts = options;
    const Ctor = options.WebSocket ?? globalThis.WebSocket;
    if (typeof Ctor !== "function") {
      throw new TypeError("no WebSocket implementation: pass `WebSocket` (e.g. from the `ws` package in Node)");
    }
    this.Ctor = Ctor;
    this.clientId = options.clientId;
    this.ready = new Promise((resolve, reject) => {
      this.readyResolve = resolve;
      this.readyReject = reject;
    });
    this.ready.catch(() => void 0);
    const signal = options.signal;
    if (signal) {
      if (signal.aborted) {
        this.finish(1e3, "aborted", new HubError("closed", "aborted before connecting"));
        return;
      }
      signal.addEventListener("abort", () => this.close(1e3, "aborted"), { once: true });
    }
    void this.dial();
  }
  /** The `offset`/`epoch` of the last session event seen: the next `since`. */
  get lastPosition() {
    return this.position;
  }
  isClosed() {
    return this.state === "closed";
  }
  get connected() {
    return this.state === "open";
  }
  /** Frames waiting in the send queue. */
  get queued() {
    return this.queue.length;
  }
  // ------------------------------------------------------------ events
  /** Listens to a hub frame type or a client event; returns the unsubscribe function. */
  on(type, listener) {
    let set = this.listeners.get(type);
    if (!set) {
      set = /* @__PURE__ */ new Set();
      this.listeners.set(type, set);
    }
    set.add(listener);
    return () => this.off(type, listener);
  }
  off(type, listener) {
    this.listeners.get(type)?.delete(listener);
  }
  /**
   * The hub's frames of the given types (all events when none is given) as
   * an async iterator, ending when the client closes. Unbounded: read it.
   */
  events(...types) {
    const buffer = [];
    let wake;
    let done = this.state === "closed";
    const offFrame = this.on("frame", (f) => {
      if (types.length === 0 || types.includes(f.type)) {
        buffer.push(f);
        wake?.();
      }
    });
    const offClosed = this.on("closed", () => {
      done = true;
      wake?.();
    });
    const stop = () => {
      done = true;
      offFrame();
      offClosed();
      wake?.();
    };
    const iterator = {
      async next() {
        while (buffer.length === 0 && !done) {
          await new Promise((r) => wake = r);
          wake = void 0;
        }
        if (buffer.length > 0) return { value: buffer.shift(), done: false };
        stop();
        return { value: void 0, done: true };
      },
      async return() {
        stop();
        buffer.length = 0;
        return { value: void 0, done: true };
      },
      [Symbol.asyncIterator]() {
        return iterator;
      }
    };
    return iterator;
  }
  emit(type, ev) {
    const set = this.listeners.get(type);
    if (!set) return;
    for (const listener of [...set]) {
      try {
        listener(ev);
      } catch (e) {
        setTimeout(() => {
          throw e;
        });
      }
    }
  }
  // ------------------------------------------------------------ requests
  /**
   * Sends `body` with a fresh `request_id` and resolves with the hub's
   * answer carrying it (a `response`, a `pong`, ...). Rejects with a
   * `HubError`: the hub's `error` frame, or `timeout`, `connection_lost`,
   * `queue_full`, `closed`. While disconnected the request waits in the
   * bounded queue and is sent after the next registration.
   */
  request(body, options = {}) {
    if (this.state === "closed") {
      return Promise.reject(new HubError("closed", "the client is closed"));
    }
    const rid = `${this.prefix}${++this.seq}`;
    const frame = JSON.stringify({ ...body, request_id: rid });
    const timeout = options.timeout ?? this.opts.requestTimeoutMs ?? 3e4;
    return new Promise((resolve, reject) => {
      const done = () => {
        clearTimeout(pending.timer);
        this.pending.delete(rid);
        this.queue = this.queue.filter((q) => q.rid !== rid);
        options.signal?.removeEventListener("abort", onAbort);
      };
      const onAbort = () => {
        done();
        reject(new HubError("closed", "the request was aborted"));
      };
      const pending = {
        resolve: (f) => {
          done();
          resolve(f);
        },
        reject: (e) => {
          done();
          reject(e);
        },
        timer: setTimeout(() => {
          pending.reject(new HubError("timeout", `no answer to ${body.type} within ${timeout} ms`));
        }, timeout),
        sent: false
      };
      if (options.signal?.aborted) {
        clearTimeout(pending.timer);
        reject(new HubError("closed", "the request was aborted"));
        return;
      }
      options.signal?.addEventListener("abort", onAbort, { once: true });
      this.pending.set(rid, pending);
      try {
        this.submit(rid, frame);
      } catch (e) {
        pending.reject(e);
      }
    });
  }
  /** A `whatsapp_command`; resolves with its result content (`success` may be false, §6). */
  async command(command, options = {}) {
    const body = { type: "whatsapp_command", command };
    if (options.idempotencyKey !== void 0) body.idempotency_key = options.idempotencyKey;
    const answer = await this.request(body, options);
    return answer.content;
  }
  /** Sends a WhatsApp text to a contact (by name). */
  sendMessage(contact, message, options = {}) {
    return this.command({ action: "send", contact, message }, options);
  }
  /** Closes the connection for good; pending requests reject with `closed`. */
  close(code = 1e3, reason = "client closed") {
    this.finish(code, reason);
  }
  // ------------------------------------------------------------ sending
  /** Writes now when registered and the socket's buffer has room, else queues (bounded). */
  submit(rid, frame) {
    if (this.state === "open" && this.queue.length === 0 && this.writable()) {
      this.write(rid, frame);
      return;
    }
    const max = this.opts.maxQueue ?? 256;
    if (this.queue.length >= max) {
      throw new HubError("queue_full", `the send queue holds ${max} frames already`);
    }
    this.queue.push({ rid, frame });
    this.scheduleDrain();
  }
  writable() {
    const ws = this.ws;
    return !!ws && ws.readyState === OPEN && ws.bufferedAmount <= (this.opts.highWaterMark ?? 1 << 20);
  }
  write(rid, frame) {
    const pending = this.pending.get(rid);
    if (pending) pending.sent = true;
    this.ws.send(frame);
  }
  scheduleDrain() {
    if (this.drainTimer !== void 0 || this.state !== "open") return;
    this.drainTimer = setTimeout(() => {
      this.drainTimer = void 0;
      this.drain();
    }, 10);
  }
  drain() {
    while (this.state === "open" && this.queue.length > 0 && this.writable()) {
      const next = this.queue.shift();
      if (this.pending.has(next.rid)) this.write(next.rid, next.frame);
    }
    if (this.queue.length > 0) this.scheduleDrain();
  }
  // ------------------------------------------------------------ connection
  async dial() {
    if (this.state === "closed") return;
    const gen = ++this.gen;
    this.state = "connecting";
    let token;
    try {
      token = this.opts.getToken ? await this.opts.getToken() : this.opts.token;
    } catch (e) {
      if (gen === this.gen) this.lost(gen, 1006, `getToken failed: ${String(e)}`);
      return;
    }
    if (gen !== this.gen || this.isClosed()) return;
    this.token = token;
    let url = this.opts.url;
    let wsOptions = void 0;
    if (token !== void 0) {
      if (this.opts.tokenTransport === "header") {
        wsOptions = { headers: { Authorization: `Bearer ${token}` } };
      } else {
        const u = new URL(url);
        u.searchParams.set("token", token);
        url = u.toString();
      }
    }
    let ws;
    try {
      ws = wsOptions === void 0 ? new this.Ctor(url) : new this.Ctor(url, void 0, wsOptions);
    } catch (e) {
      this.lost(gen, 1006, String(e));
      return;
    }
    this.ws = ws;
    this.state = "registering";
    this.lastSeen = Date.now();
    ws.onopen = () => {
      if (gen !== this.gen) return;
      this.lastSeen = Date.now();
      this.sendRegister(gen);
    };
    ws.onmessage = (ev) => {
      if (gen !== this.gen) return;
      this.lastSeen = Date.now();
      this.onFrame(gen, ev.data);
    };
    ws.onclose = (ev) => {
      if (gen === this.gen) this.lost(gen, ev.code, ev.reason);
    };
    ws.onerror = () => void 0;
    if (typeof ws.on === "function") {
      ws.on("ping", () => {
        if (gen === this.gen) this.lastSeen = Date.now();
      });
    }
    this.registerTimer = setTimeout(() => {
      if (gen === this.gen && this.state !== "open") this.lost(gen, 1006, "registration not confirmed in time");
    }, this.opts.registerTimeoutMs ?? 1e4);
    this.startHeartbeat(gen);
  }
  sendRegister(gen) {
    const rid = `${this.prefix}reg${++this.seq}`;
    this.registerRid = rid;
    this.registerSince = this.position;
    const body = { type: "register", request_id: rid };
    if (this.opts.session !== void 0) body.session = this.opts.session;
    if (this.clientId !== void 0) body.client_id = this.clientId;
    if (this.opts.name !== void 0) body.client_name = this.opts.name;
    if (this.opts.capabilities) body.capabilities = this.opts.capabilities;
    if (this.position) body.since = this.position;
    try {
      this.ws.send(JSON.stringify(body));
    } catch (e) {
      this.lost(gen, 1006, String(e));
    }
  }
  onFrame(gen, data) {
    if (typeof data !== "string") return;
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    if (!frame || typeof frame !== "object" || typeof frame.type !== "string") return;
    const rid = answeredRequest(frame);
    if (rid !== null && rid === this.registerRid) {
      this.onRegisterAnswer(gen, frame);
      return;
    }
    if (rid !== null) {
      if (rid === this.heartbeatRid) return;
      const pending = this.pending.get(rid);
      if (pending) {
        if (frame.type === "error") pending.reject(HubError.fromFrame(frame));
        else pending.resolve(frame);
        return;
      }
    }
    const { position, duplicate } = track(this.position, frame);
    if (duplicate) return;
    this.position = position;
    this.emit(frame.type, frame);
    this.emit("frame", frame);
  }
  onRegisterAnswer(gen, frame) {
    clearTimeout(this.registerTimer);
    this.registerRid = void 0;
    if (frame.type === "error") {
      const err = new HubError("registration_failed", `register refused: ${frame.code}: ${frame.message}`, frame);
      if (RETRY_REGISTER.has(frame.code)) {
        this.lost(gen, 1e3, `register refused: ${frame.code}`);
      } else {
        this.finish(1e3, `register refused: ${frame.code}`, err);
      }
      return;
    }
    if (frame.type !== "registration_confirmed") return;
    const conf = frame;
    this.confirmation = conf;
    this.clientId = conf.client_id;
    this.state = "open";
    this.attempt = 0;
    const since = this.registerSince;
    const resumed = afterRegistration(since, conf);
    const recovered = resumed.recovered;
    if (!recovered) {
      this.position = resumed.position;
    }
    const reconnect = this.registrations > 0;
    this.registrations += 1;
    const ev = { confirmation: conf, reconnect, since, recovered };
    if (!this.readySettled) {
      this.readySettled = true;
      this.readyResolve(conf);
    }
    this.emit("registered", ev);
    if (reconnect && !recovered) this.emit("resync", ev);
    this.scheduleRefresh(gen);
    this.drain();
  }
  startHeartbeat(gen) {
    clearInterval(this.heartbeatTimer);
    const interval = this.opts.heartbeat?.intervalMs ?? 2e4;
    const timeout = this.opts.heartbeat?.timeoutMs ?? 45e3;
    const tick = Math.max(50, Math.min(interval, timeout) / 4);
    this.heartbeatTimer = setInterval(() => {
      if (gen !== this.gen) return;
      const idle = Date.now() - this.lastSeen;
      if (idle >= timeout) {
        this.lost(gen, 1006, `no frame for ${idle} ms`);
      } else if (idle >= interval && this.state === "open" && this.writable()) {
        this.ws.send(JSON.stringify({ type: "ping", request_id: this.heartbeatRid }));
      }
    }, tick);
  }
  /** Reconnects with a fresh token before the current one (a JWT) expires. */
  scheduleRefresh(gen) {
    clearTimeout(this.refreshTimer);
    const before = this.opts.refreshBeforeExpiryMs ?? 3e4;
    if (!this.opts.getToken || before <= 0 || !this.token) return;
    const exp = jwtExpiry(this.token);
    if (exp === void 0) return;
    const left = exp * 1e3 - Date.now();
    const delay = Math.max(left - before, left / 2, 1e3);
    const fire = () => {
      if (gen !== this.gen || this.state !== "open") return;
      const inFlight = [...this.pending.values()].some((p) => p.sent);
      if (inFlight && exp * 1e3 - Date.now() > 500) {
        this.refreshTimer = setTimeout(fire, 100);
        return;
      }
      this.lost(gen, 1e3, "token refresh", 0);
    };
    this.refreshTimer = setTimeout(fire, delay);
  }
  /** The connection `gen` is gone: clean up and (maybe) reconnect. */
  lost(gen, code, reason, delayOverride) {
    if (gen !== this.gen || this.state === "closed") return;
    this.gen += 1;
    this.dropSocket(code === 1e3 ? 1e3 : 4e3, reason);
    for (const p of [...this.pending.values()]) {
      if (p.sent) p.reject(new HubError("connection_lost", `the connection closed (${code} ${reason}) before the answer`));
    }
    const reconnect = this.opts.reconnect;
    const action = afterClose(code, this.opts.getToken !== void 0);
    let fatal;
    if (action === "stop" && code === 4401) {
      fatal = new HubError("closed", "the token expired (4401) and there is no getToken to renew it");
    } else if (action === "stop") {
      fatal = new HubError("closed", `the hub closed the connection for good: ${code} ${reason}`);
    } else if (reconnect === false) {
      fatal = new HubError("connection_lost", `the connection closed: ${code} ${reason}`);
    }
    if (fatal) {
      this.emit("disconnected", { code, reason, willReconnect: false });
      this.finish(code, reason, fatal);
      return;
    }
    const cfg = reconnect || {};
    const initial = cfg.initialDelayMs ?? 250;
    const max = cfg.maxDelayMs ?? 3e4;
    const factor = cfg.factor ?? 2;
    const jitter = Math.min(1, Math.max(0, cfg.jitter ?? 0.5));
    let delay;
    if (delayOverride !== void 0) {
      delay = delayOverride;
    } else if (action === "renew_token") {
      delay = 0;
    } else {
      const base = Math.min(max, initial * factor ** this.attempt);
      delay = Math.round(base * (1 - jitter * Math.random()));
      this.attempt += 1;
    }
    this.state = "connecting";
    this.emit("disconnected", { code, reason, willReconnect: true, delayMs: delay });
    this.reconnectTimer = setTimeout(() => void this.dial(), delay);
  }
  dropSocket(code, reason) {
    clearInterval(this.heartbeatTimer);
    clearTimeout(this.registerTimer);
    clearTimeout(this.refreshTimer);
    clearTimeout(this.drainTimer);
    this.drainTimer = void 0;
    this.registerRid = void 0;
    const ws = this.ws;
    this.ws = void 0;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = null;
    ws.onerror = () => void 0;
    try {
      if (ws.readyState === OPEN || ws.readyState === 0) {
        if (code === 4e3 && typeof ws.terminate === "function") ws.terminate();
        else ws.close(code, reason.slice(0, 120));
      }
    } catch {
    }
  }
  finish(code, reason, error) {
    if (this.state === "closed") return;
    this.gen += 1;
    this.state = "closed";
    clearTimeout(this.reconnectTimer);
    this.dropSocket(1e3, reason);
    const err = error ?? new HubError("closed", `the client is closed: ${reason}`);
    for (const p of [...this.pending.values()]) p.reject(err);
    this.queue = [];
    if (!this.readySettled) {
      this.readySettled = true;
      this.readyReject(err);
    }
    const ev = { code, reason };
    if (error) ev.error = error;
    this.emit("closed", ev);
  }
};
function jwtExpiry(token) {
  const part = token.split(".")[1];
  if (!part) return void 0;
  try {
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "=");
    const claims = JSON.parse(atob(b64));
    return typeof claims.exp === "number" ? claims.exp : void 0;
  } catch {
    return void 0;
  }
}

// src/feed.ts
var MONITOR_TYPES = /* @__PURE__ */ new Set(["hello", "instance_stats", "presence", "agent", "approval", "watching", "error"]);
var OPEN2 = 1;
function connectFeed(options) {
  return new FeedClient(options);
}
var FeedClient = class {
  opts;
  Ctor;
  ws;
  gen = 0;
  opened = 0;
  attempt = 0;
  closed = false;
  watched = null;
  timer;
  listeners = /* @__PURE__ */ new Map();
  constructor(options) {
    this.opts = options;
    const Ctor = options.WebSocket ?? globalThis.WebSocket;
    if (typeof Ctor !== "function") throw new TypeError("no WebSocket implementation: pass `WebSocket`");
    this.Ctor = Ctor;
    options.signal?.addEventListener("abort", () => this.close(), { once: true });
    this.timer = setTimeout(() => void this.dial(), 0);
  }
  /** Whether the feed is connected now. */
  get connected() {
    return this.ws?.readyState === OPEN2;
  }
  on(type, listener) {
    let set = this.listeners.get(type);
    if (!set) this.listeners.set(type, set = /* @__PURE__ */ new Set());
    set.add(listener);
    return () => set.delete(listener);
  }
  /** Receive this session's events (replaces the previous one; kept across reconnects). */
  watch(session) {
    this.watched = session;
    this.send({ type: "watch", session });
  }
  unwatch() {
    this.watched = null;
    this.send({ type: "unwatch" });
  }
  /** Closes the feed for good. */
  close(code = 1e3, reason = "closed") {
    if (this.closed) return;
    this.closed = true;
    this.gen += 1;
    clearTimeout(this.timer);
    this.drop(code, reason);
    this.emit("closed", { code, reason });
  }
  send(frame) {
    if (this.ws?.readyState === OPEN2) this.ws.send(JSON.stringify(frame));
  }
  emit(type, ev) {
    for (const listener of [...this.listeners.get(type) ?? []]) {
      try {
        listener(ev);
      } catch (e) {
        setTimeout(() => {
          throw e;
        });
      }
    }
  }
  async dial() {
    const gen = ++this.gen;
    let token;
    try {
      token = this.opts.getToken ? await this.opts.getToken() : this.opts.token;
    } catch (e) {
      this.lost(gen, 1006, `getToken failed: ${String(e)}`);
      return;
    }
    if (gen !== this.gen || this.closed) return;
    const url = new URL(this.opts.url);
    if (token) url.searchParams.set("token", token);
    let ws;
    try {
      ws = new this.Ctor(url.toString());
    } catch (e) {
      this.lost(gen, 1006, String(e));
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      if (gen !== this.gen) return;
      this.attempt = 0;
      if (this.watched !== null) this.send({ type: "watch", session: this.watched });
      this.emit("open", { reconnect: this.opened++ > 0 });
    };
    ws.onmessage = (ev) => {
      if (gen !== this.gen || typeof ev.data !== "string") return;
      let frame;
      try {
        frame = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (!frame || typeof frame !== "object" || typeof frame.type !== "string") return;
      if (MONITOR_TYPES.has(frame.type)) this.emit(frame.type, frame);
      else this.emit("event", frame);
    };
    ws.onclose = (ev) => this.lost(gen, ev.code, ev.reason);
    ws.onerror = () => void 0;
  }
  /** The connection `gen` is gone: reconnect after a backoff. */
  lost(gen, code, reason) {
    if (gen !== this.gen || this.closed) return;
    this.gen += 1;
    this.drop(1e3, reason);
    const cfg = this.opts.reconnect ?? {};
    const delayMs = Math.min(cfg.maxDelayMs ?? 3e4, (cfg.initialDelayMs ?? 1e3) * (cfg.factor ?? 2) ** this.attempt);
    this.attempt += 1;
    this.emit("disconnected", { code, reason, delayMs });
    this.timer = setTimeout(() => void this.dial(), delayMs);
  }
  drop(code, reason) {
    const ws = this.ws;
    this.ws = void 0;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = null;
    ws.onerror = () => void 0;
    try {
      if (ws.readyState === OPEN2 || ws.readyState === 0) ws.close(code, reason.slice(0, 120));
    } catch {
    }
  }
};
export {
  FeedClient,
  HubClient,
  HubError,
  connect,
  connectFeed,
  jwtExpiry
};
