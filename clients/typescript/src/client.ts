import { HubError } from "./errors.js";
import { afterClose, afterRegistration, answeredRequest, track } from "./protocol.js";
import type {
  ClientRequest,
  CommandResult,
  HubErrorFrame,
  HubFrame,
  HubFrames,
  Position,
  Register,
  RegistrationConfirmed,
  Response,
} from "./frames.js";

/** The part of the WebSocket API the client uses: the browser's and `ws`'s. */
export interface WebSocketLike {
  readonly readyState: number;
  readonly bufferedAmount: number;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  /** `ws` only: drop the socket without a closing handshake. */
  terminate?(): void;
  /** `ws` only: control-frame events (`ping`), counted as signs of life. */
  on?(event: string, listener: (...args: any[]) => void): unknown;
}

export type WebSocketConstructor = new (
  url: string,
  protocols?: string | string[],
  options?: any,
) => WebSocketLike;

export interface ConnectOptions {
  /** `ws://host:8002/` (or `wss://`). */
  url: string;
  /** A fixed JWT (hubs with authentication, docs/protocol.md §1.1). */
  token?: string;
  /** Called before every connection attempt: a fresh token each time. */
  getToken?: () => string | Promise<string>;
  /** `query` (default, works in browsers): `?token=`; `header`: `Authorization: Bearer` (Node `ws` only). */
  tokenTransport?: "query" | "header";
  /**
   * Reconnect this long before a JWT's `exp` with a fresh `getToken()`
   * (resuming, so nothing is missed). Default 30000; 0 turns it off (the hub
   * then closes with 4401 at `exp` and the client reconnects with a new token).
   */
  refreshBeforeExpiryMs?: number;
  session?: string;
  /** Stable id; without it the hub's generated id is reused on reconnects. */
  clientId?: string;
  name?: string;
  capabilities?: string[];
  /** Aborting closes the client: socket, timers, pending requests. */
  signal?: AbortSignal;
  /** Defaults to `globalThis.WebSocket`; in Node 20 pass `ws`'s `WebSocket`. */
  WebSocket?: WebSocketConstructor;
  /** Default timeout of `request()`, ms (default 30000). */
  requestTimeoutMs?: number;
  /** Bound on `register` being answered after the socket opens, ms (default 10000). */
  registerTimeoutMs?: number;
  heartbeat?: {
    /** Send an application `ping` after this long without a frame (default 20000). */
    intervalMs?: number;
    /** Declare the connection dead after this long without a frame (default 45000). */
    timeoutMs?: number;
  };
  /** `false`: no automatic reconnect. */
  reconnect?:
    | false
    | {
        initialDelayMs?: number;
        maxDelayMs?: number;
        factor?: number;
        /** 0..1: the share of each delay that is random (default 0.5). */
        jitter?: number;
      };
  /** Frames waiting to be sent (while disconnected or while the socket's buffer is full); default 256. */
  maxQueue?: number;
  /** Stop writing to the socket while `bufferedAmount` exceeds this many bytes (default 1 MiB). */
  highWaterMark?: number;
}

/** Every (re-)registration. */
export interface Registered {
  confirmation: RegistrationConfirmed;
  /** false for the first registration, true after a reconnect. */
  reconnect: boolean;
  /** The `since` sent (null: none). */
  since: Position | null;
  /** The hub replayed everything after `since` (§12.1). */
  recovered: boolean;
}

export interface Disconnected {
  code: number;
  reason: string;
  willReconnect: boolean;
  /** Delay before the next attempt, ms. */
  delayMs?: number;
}

export interface Closed {
  code: number;
  reason: string;
  /** Why the client stopped when it was not closed on purpose. */
  error?: HubError;
}

/** What `on()` can listen to: every hub frame by its `type`, and the client's own events. */
export interface ClientEvents extends HubFrames {
  /** Every frame the hub sends that is not the answer to a request. */
  frame: HubFrame;
  registered: Registered;
  /**
   * A reconnect that could not resume (`recovered: false`): events may have
   * been missed; reload state (contacts come with the registration,
   * `get_history` for conversations).
   */
  resync: Registered;
  disconnected: Disconnected;
  closed: Closed;
}

export interface RequestOptions {
  timeout?: number;
  signal?: AbortSignal;
}

interface Pending {
  resolve(frame: HubFrame): void;
  reject(err: HubError): void;
  timer: ReturnType<typeof setTimeout>;
  sent: boolean;
}

const OPEN = 1;
/** Refusals of `register` worth retrying (the others are final). */
const RETRY_REGISTER = new Set(["session_full", "store_unavailable", "shutting_down", "rate_limited", "internal_error"]);

/**
 * Connects, registers, and resolves with the client once the hub confirmed
 * the registration. Connection attempts are retried (with backoff) until
 * then; `signal` bounds the wait.
 */
export async function connect(options: ConnectOptions): Promise<HubClient> {
  const client = new HubClient(options);
  await client.ready;
  return client;
}

export class HubClient {
  /** Resolves at the first registration; rejects if the client stops before. */
  readonly ready: Promise<RegistrationConfirmed>;
  /** The last registration's confirmation. */
  confirmation: RegistrationConfirmed | undefined;

  private readonly opts: ConnectOptions;
  private readonly Ctor: WebSocketConstructor;
  private ws: WebSocketLike | undefined;
  /** Bumped on every new socket and on every loss: stale callbacks check it. */
  private gen = 0;
  private state: "connecting" | "registering" | "open" | "closed" = "connecting";
  private position: Position | null = null;
  private clientId: string | undefined;
  private registrations = 0;
  private attempt = 0;
  private seq = 0;
  private readonly prefix = `sdk${Math.random().toString(36).slice(2, 8)}-`;
  private registerRid: string | undefined;
  private readonly heartbeatRid = `${this.prefix}hb`;
  private registerSince: Position | null = null;
  private token: string | undefined;
  private lastSeen = 0;
  private readonly pending = new Map<string, Pending>();
  private queue: { rid: string; frame: string }[] = [];
  private readonly listeners = new Map<string, Set<(ev: any) => void>>();
  private heartbeatTimer: ReturnType<typeof setInterval> | undefined;
  private registerTimer: ReturnType<typeof setTimeout> | undefined;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private refreshTimer: ReturnType<typeof setTimeout> | undefined;
  private drainTimer: ReturnType<typeof setTimeout> | undefined;
  private readyResolve!: (c: RegistrationConfirmed) => void;
  private readyReject!: (e: HubError) => void;
  private readySettled = false;

  constructor(options: ConnectOptions) {
    this.opts = options;
    const Ctor = options.WebSocket ?? (globalThis as any).WebSocket;
    if (typeof Ctor !== "function") {
      throw new TypeError("no WebSocket implementation: pass `WebSocket` (e.g. from the `ws` package in Node)");
    }
    this.Ctor = Ctor;
    this.clientId = options.clientId;
    this.ready = new Promise((resolve, reject) => {
      this.readyResolve = resolve;
      this.readyReject = reject;
    });
    // A rejection nobody awaits must not crash Node.
    this.ready.catch(() => undefined);
    const signal = options.signal;
    if (signal) {
      if (signal.aborted) {
        this.finish(1000, "aborted", new HubError("closed", "aborted before connecting"));
        return;
      }
      signal.addEventListener("abort", () => this.close(1000, "aborted"), { once: true });
    }
    void this.dial();
  }

  /** The `offset`/`epoch` of the last session event seen: the next `since`. */
  get lastPosition(): Position | null {
    return this.position;
  }

  private isClosed(): boolean {
    return this.state === "closed";
  }

  get connected(): boolean {
    return this.state === "open";
  }

  /** Frames waiting in the send queue. */
  get queued(): number {
    return this.queue.length;
  }

  // ------------------------------------------------------------ events

  /** Listens to a hub frame type or a client event; returns the unsubscribe function. */
  on<K extends keyof ClientEvents>(type: K, listener: (ev: ClientEvents[K]) => void): () => void {
    let set = this.listeners.get(type);
    if (!set) {
      set = new Set();
      this.listeners.set(type, set);
    }
    set.add(listener);
    return () => this.off(type, listener);
  }

  off<K extends keyof ClientEvents>(type: K, listener: (ev: ClientEvents[K]) => void): void {
    this.listeners.get(type)?.delete(listener);
  }

  /**
   * The hub's frames of the given types (all events when none is given) as
   * an async iterator, ending when the client closes. Unbounded: read it.
   */
  events<K extends keyof HubFrames>(...types: K[]): AsyncIterableIterator<HubFrames[K]> {
    const buffer: HubFrames[K][] = [];
    let wake: (() => void) | undefined;
    let done = this.state === "closed";
    const offFrame = this.on("frame", (f) => {
      if (types.length === 0 || types.includes(f.type as K)) {
        buffer.push(f as HubFrames[K]);
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
    const iterator: AsyncIterableIterator<HubFrames[K]> = {
      async next() {
        while (buffer.length === 0 && !done) {
          await new Promise<void>((r) => (wake = r));
          wake = undefined;
        }
        if (buffer.length > 0) return { value: buffer.shift()!, done: false };
        stop();
        return { value: undefined, done: true };
      },
      async return() {
        stop();
        buffer.length = 0;
        return { value: undefined, done: true };
      },
      [Symbol.asyncIterator]() {
        return iterator;
      },
    };
    return iterator;
  }

  private emit<K extends keyof ClientEvents>(type: K, ev: ClientEvents[K]): void {
    const set = this.listeners.get(type);
    if (!set) return;
    for (const listener of [...set]) {
      try {
        listener(ev);
      } catch (e) {
        // A listener's bug must not break the client: rethrown outside.
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
  request<T extends HubFrame = Response>(body: ClientRequest, options: RequestOptions = {}): Promise<T> {
    if (this.state === "closed") {
      return Promise.reject(new HubError("closed", "the client is closed"));
    }
    const rid = `${this.prefix}${++this.seq}`;
    const frame = JSON.stringify({ ...body, request_id: rid });
    const timeout = options.timeout ?? this.opts.requestTimeoutMs ?? 30_000;
    return new Promise<T>((resolve, reject) => {
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
      const pending: Pending = {
        resolve: (f) => {
          done();
          resolve(f as T);
        },
        reject: (e) => {
          done();
          reject(e);
        },
        timer: setTimeout(() => {
          pending.reject(new HubError("timeout", `no answer to ${body.type} within ${timeout} ms`));
        }, timeout),
        sent: false,
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
        pending.reject(e as HubError);
      }
    });
  }

  /** A `whatsapp_command`; resolves with its result content (`success` may be false, §6). */
  async command(command: Extract<ClientRequest, { type: "whatsapp_command" }>["command"], options: RequestOptions & { idempotencyKey?: string } = {}): Promise<CommandResult> {
    const body: ClientRequest = { type: "whatsapp_command", command };
    if (options.idempotencyKey !== undefined) body.idempotency_key = options.idempotencyKey;
    const answer = await this.request<Response>(body, options);
    return answer.content;
  }

  /** Sends a WhatsApp text to a contact (by name). */
  sendMessage(contact: string, message: string, options: RequestOptions & { idempotencyKey?: string } = {}): Promise<CommandResult> {
    return this.command({ action: "send", contact, message }, options);
  }

  /** Closes the connection for good; pending requests reject with `closed`. */
  close(code = 1000, reason = "client closed"): void {
    this.finish(code, reason);
  }

  // ------------------------------------------------------------ sending

  /** Writes now when registered and the socket's buffer has room, else queues (bounded). */
  private submit(rid: string, frame: string): void {
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

  private writable(): boolean {
    const ws = this.ws;
    return !!ws && ws.readyState === OPEN && ws.bufferedAmount <= (this.opts.highWaterMark ?? 1 << 20);
  }

  private write(rid: string, frame: string): void {
    const pending = this.pending.get(rid);
    if (pending) pending.sent = true;
    this.ws!.send(frame);
  }

  private scheduleDrain(): void {
    if (this.drainTimer !== undefined || this.state !== "open") return;
    this.drainTimer = setTimeout(() => {
      this.drainTimer = undefined;
      this.drain();
    }, 10);
  }

  private drain(): void {
    while (this.state === "open" && this.queue.length > 0 && this.writable()) {
      const next = this.queue.shift()!;
      if (this.pending.has(next.rid)) this.write(next.rid, next.frame);
    }
    if (this.queue.length > 0) this.scheduleDrain();
  }

  // ------------------------------------------------------------ connection

  private async dial(): Promise<void> {
    if (this.state === "closed") return;
    const gen = ++this.gen;
    this.state = "connecting";
    let token: string | undefined;
    try {
      token = this.opts.getToken ? await this.opts.getToken() : this.opts.token;
    } catch (e) {
      if (gen === this.gen) this.lost(gen, 1006, `getToken failed: ${String(e)}`);
      return;
    }
    if (gen !== this.gen || this.isClosed()) return;
    this.token = token;
    let url = this.opts.url;
    let wsOptions: unknown = undefined;
    if (token !== undefined) {
      if (this.opts.tokenTransport === "header") {
        wsOptions = { headers: { Authorization: `Bearer ${token}` } };
      } else {
        const u = new URL(url);
        u.searchParams.set("token", token);
        url = u.toString();
      }
    }
    let ws: WebSocketLike;
    try {
      ws = wsOptions === undefined ? new this.Ctor(url) : new this.Ctor(url, undefined, wsOptions);
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
    ws.onerror = () => undefined; // a close follows
    if (typeof ws.on === "function") {
      ws.on("ping", () => {
        if (gen === this.gen) this.lastSeen = Date.now();
      });
    }
    this.registerTimer = setTimeout(() => {
      if (gen === this.gen && this.state !== "open") this.lost(gen, 1006, "registration not confirmed in time");
    }, this.opts.registerTimeoutMs ?? 10_000);
    this.startHeartbeat(gen);
  }

  private sendRegister(gen: number): void {
    const rid = `${this.prefix}reg${++this.seq}`;
    this.registerRid = rid;
    this.registerSince = this.position;
    const body: Register = { type: "register", request_id: rid };
    if (this.opts.session !== undefined) body.session = this.opts.session;
    if (this.clientId !== undefined) body.client_id = this.clientId;
    if (this.opts.name !== undefined) body.client_name = this.opts.name;
    if (this.opts.capabilities) body.capabilities = this.opts.capabilities;
    if (this.position) body.since = this.position;
    try {
      this.ws!.send(JSON.stringify(body));
    } catch (e) {
      this.lost(gen, 1006, String(e));
    }
  }

  private onFrame(gen: number, data: unknown): void {
    if (typeof data !== "string") return;
    let frame: HubFrame;
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
      if (rid === this.heartbeatRid) return; // the heartbeat's own pong
      const pending = this.pending.get(rid);
      if (pending) {
        if (frame.type === "error") pending.reject(HubError.fromFrame(frame));
        else pending.resolve(frame);
        return;
      }
    }
    // The hub never delivers an offset twice to a connection; across
    // reconnects this keeps it so.
    const { position, duplicate } = track(this.position, frame);
    if (duplicate) return;
    this.position = position;
    this.emit(frame.type as keyof HubFrames, frame as never);
    this.emit("frame", frame);
  }

  private onRegisterAnswer(gen: number, frame: HubFrame): void {
    clearTimeout(this.registerTimer);
    this.registerRid = undefined;
    if (frame.type === "error") {
      const err = new HubError("registration_failed", `register refused: ${frame.code}: ${frame.message}`, frame as HubErrorFrame);
      if (RETRY_REGISTER.has(frame.code)) {
        this.lost(gen, 1000, `register refused: ${frame.code}`);
      } else {
        this.finish(1000, `register refused: ${frame.code}`, err);
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
      // Start from the confirmation: the next event has a larger offset.
      this.position = resumed.position;
    }
    const reconnect = this.registrations > 0;
    this.registrations += 1;
    const ev: Registered = { confirmation: conf, reconnect, since, recovered };
    if (!this.readySettled) {
      this.readySettled = true;
      this.readyResolve(conf);
    }
    this.emit("registered", ev);
    if (reconnect && !recovered) this.emit("resync", ev);
    this.scheduleRefresh(gen);
    this.drain();
  }

  private startHeartbeat(gen: number): void {
    clearInterval(this.heartbeatTimer);
    const interval = this.opts.heartbeat?.intervalMs ?? 20_000;
    const timeout = this.opts.heartbeat?.timeoutMs ?? 45_000;
    const tick = Math.max(50, Math.min(interval, timeout) / 4);
    this.heartbeatTimer = setInterval(() => {
      if (gen !== this.gen) return;
      const idle = Date.now() - this.lastSeen;
      if (idle >= timeout) {
        this.lost(gen, 1006, `no frame for ${idle} ms`);
      } else if (idle >= interval && this.state === "open" && this.writable()) {
        // Browsers cannot send ping control frames: the hub answers `pong`.
        this.ws!.send(JSON.stringify({ type: "ping", request_id: this.heartbeatRid }));
      }
    }, tick);
  }

  /** Reconnects with a fresh token before the current one (a JWT) expires. */
  private scheduleRefresh(gen: number): void {
    clearTimeout(this.refreshTimer);
    const before = this.opts.refreshBeforeExpiryMs ?? 30_000;
    if (!this.opts.getToken || before <= 0 || !this.token) return;
    const exp = jwtExpiry(this.token);
    if (exp === undefined) return;
    const left = exp * 1000 - Date.now();
    // At least half the remaining lifetime (and 1 s): no reconnect loop
    // with tokens shorter than `before`.
    const delay = Math.max(left - before, left / 2, 1000);
    const fire = () => {
      if (gen !== this.gen || this.state !== "open") return;
      // Let answers in flight arrive first, if time allows.
      const inFlight = [...this.pending.values()].some((p) => p.sent);
      if (inFlight && exp * 1000 - Date.now() > 500) {
        this.refreshTimer = setTimeout(fire, 100);
        return;
      }
      this.lost(gen, 1000, "token refresh", 0);
    };
    this.refreshTimer = setTimeout(fire, delay);
  }

  /** The connection `gen` is gone: clean up and (maybe) reconnect. */
  private lost(gen: number, code: number, reason: string, delayOverride?: number): void {
    if (gen !== this.gen || this.state === "closed") return;
    this.gen += 1;
    this.dropSocket(code === 1000 ? 1000 : 4000, reason);
    for (const p of [...this.pending.values()]) {
      if (p.sent) p.reject(new HubError("connection_lost", `the connection closed (${code} ${reason}) before the answer`));
    }
    const reconnect = this.opts.reconnect;
    const action = afterClose(code, this.opts.getToken !== undefined);
    let fatal: HubError | undefined;
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
    const max = cfg.maxDelayMs ?? 30_000;
    const factor = cfg.factor ?? 2;
    const jitter = Math.min(1, Math.max(0, cfg.jitter ?? 0.5));
    let delay: number;
    if (delayOverride !== undefined) {
      delay = delayOverride;
    } else if (action === "renew_token") {
      delay = 0; // a new token is all it takes
    } else {
      const base = Math.min(max, initial * factor ** this.attempt);
      delay = Math.round(base * (1 - jitter * Math.random()));
      this.attempt += 1;
    }
    this.state = "connecting";
    this.emit("disconnected", { code, reason, willReconnect: true, delayMs: delay });
    this.reconnectTimer = setTimeout(() => void this.dial(), delay);
  }

  private dropSocket(code: number, reason: string): void {
    clearInterval(this.heartbeatTimer);
    clearTimeout(this.registerTimer);
    clearTimeout(this.refreshTimer);
    clearTimeout(this.drainTimer);
    this.drainTimer = undefined;
    this.registerRid = undefined;
    const ws = this.ws;
    this.ws = undefined;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = null;
    ws.onerror = () => undefined;
    try {
      if (ws.readyState === OPEN || ws.readyState === 0) {
        if (code === 4000 && typeof ws.terminate === "function") ws.terminate();
        else ws.close(code, reason.slice(0, 120));
      }
    } catch {
      // already closing
    }
  }

  private finish(code: number, reason: string, error?: HubError): void {
    if (this.state === "closed") return;
    this.gen += 1;
    this.state = "closed";
    clearTimeout(this.reconnectTimer);
    this.dropSocket(1000, reason);
    const err = error ?? new HubError("closed", `the client is closed: ${reason}`);
    for (const p of [...this.pending.values()]) p.reject(err);
    this.queue = [];
    if (!this.readySettled) {
      this.readySettled = true;
      this.readyReject(err);
    }
    const ev: Closed = { code, reason };
    if (error) ev.error = error;
    this.emit("closed", ev);
  }
}

/** A JWT's `exp` (seconds), if `token` is a JWT with one. */
export function jwtExpiry(token: string): number | undefined {
  const part = token.split(".")[1];
  if (!part) return undefined;
  try {
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "=");
    const claims = JSON.parse(atob(b64));
    return typeof claims.exp === "number" ? claims.exp : undefined;
  } catch {
    return undefined;
  }
}
