import type { WebSocketConstructor, WebSocketLike } from "./client.js";
import type { HubFrame } from "./frames.js";

/**
 * The admin monitoring feed (`/dashboard/feed`, docs/admin.md): the
 * cluster's instance stats, presence, agents and held sends, and the
 * events of one watched session. Admins only (a token of role `admin`
 * when the hub has authentication on). The client reconnects with
 * backoff and watches its session again after every reconnect; the feed
 * has no resume (its events are best effort: re-read the admin API on
 * `open`).
 */

/** `hello`: the first frame of every feed connection. */
export interface FeedHello {
  type: "hello";
  instance: string;
  stats_interval_ms: number;
}

/** One instance's numbers, from every instance every `stats_interval_ms`. */
export interface InstanceStats {
  type: "instance_stats";
  instance: string;
  version: string;
  started_at: number;
  uptime_ms: number;
  connections: number;
  clients: number;
  admin_feeds: number;
  ready: boolean;
  messages_in_per_sec: number;
  messages_out_per_sec: number;
  connections_per_sec: number;
  ai?: {
    provider: string;
    calls: number;
    cache_hits: number;
    singleflight_joins: number;
    rate_limited: number;
    breaker: "closed" | "open" | "half_open";
  };
  timestamp: number;
}

/** A client joined or left a session on any instance. */
export interface Presence {
  type: "presence";
  session: string;
  client: { client_id: string; client_name?: string; instance?: string; [field: string]: unknown };
  joined: boolean;
  timestamp: number;
}

/** A session's agent changed (`client_id` null: none). */
export interface AgentChange {
  type: "agent";
  session: string;
  client_id: string | null;
  timestamp: number;
}

/** A send held for approval, or its decision (`resolution`). */
export interface ApprovalChange {
  type: "approval";
  approval: { session: string; id: number; [field: string]: unknown };
  resolution?: { decision: string; decided_by?: string; decided_at?: number; reason?: string };
}

/** The answer to `watch` / `unwatch`. */
export interface Watching {
  type: "watching";
  session: string | null;
}

/** A feed request the hub did not understand. */
export interface FeedError {
  type: "error";
  code: string;
  message: string;
}

/** The feed's own frames, by `type`. */
export interface MonitorFrames {
  hello: FeedHello;
  instance_stats: InstanceStats;
  presence: Presence;
  agent: AgentChange;
  approval: ApprovalChange;
  watching: Watching;
  error: FeedError;
}

export interface FeedEvents extends MonitorFrames {
  /** An event of the watched session, exactly as its clients get it. */
  event: HubFrame;
  /** Every (re)connection; re-read whatever the feed may have missed. */
  open: { reconnect: boolean };
  disconnected: { code: number; reason: string; delayMs: number };
  closed: { code: number; reason: string };
}

export interface FeedOptions {
  /** `ws://host:8002/dashboard/feed` (or `wss://`). */
  url: string;
  /** A fixed admin token, sent as `?token=`. */
  token?: string;
  /** Called before every connection attempt (wins over `token`); `""`: none. */
  getToken?: () => string | Promise<string>;
  signal?: AbortSignal;
  /** Defaults to `globalThis.WebSocket`. */
  WebSocket?: WebSocketConstructor;
  reconnect?: { initialDelayMs?: number; maxDelayMs?: number; factor?: number };
}

const MONITOR_TYPES = new Set<string>(["hello", "instance_stats", "presence", "agent", "approval", "watching", "error"]);
const OPEN = 1;

/** Opens the feed; it connects (and reconnects) until closed. */
export function connectFeed(options: FeedOptions): FeedClient {
  return new FeedClient(options);
}

export class FeedClient {
  private readonly opts: FeedOptions;
  private readonly Ctor: WebSocketConstructor;
  private ws: WebSocketLike | undefined;
  private gen = 0;
  private opened = 0;
  private attempt = 0;
  private closed = false;
  private watched: string | null = null;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private readonly listeners = new Map<string, Set<(ev: any) => void>>();

  constructor(options: FeedOptions) {
    this.opts = options;
    const Ctor = options.WebSocket ?? (globalThis as any).WebSocket;
    if (typeof Ctor !== "function") throw new TypeError("no WebSocket implementation: pass `WebSocket`");
    this.Ctor = Ctor;
    options.signal?.addEventListener("abort", () => this.close(), { once: true });
    // Listeners are added after the constructor returns: dial on the next tick.
    this.timer = setTimeout(() => void this.dial(), 0);
  }

  /** Whether the feed is connected now. */
  get connected(): boolean {
    return this.ws?.readyState === OPEN;
  }

  on<K extends keyof FeedEvents>(type: K, listener: (ev: FeedEvents[K]) => void): () => void {
    let set = this.listeners.get(type);
    if (!set) this.listeners.set(type, (set = new Set()));
    set.add(listener);
    return () => set.delete(listener);
  }

  /** Receive this session's events (replaces the previous one; kept across reconnects). */
  watch(session: string): void {
    this.watched = session;
    this.send({ type: "watch", session });
  }

  unwatch(): void {
    this.watched = null;
    this.send({ type: "unwatch" });
  }

  /** Closes the feed for good. */
  close(code = 1000, reason = "closed"): void {
    if (this.closed) return;
    this.closed = true;
    this.gen += 1;
    clearTimeout(this.timer);
    this.drop(code, reason);
    this.emit("closed", { code, reason });
  }

  private send(frame: object): void {
    if (this.ws?.readyState === OPEN) this.ws.send(JSON.stringify(frame));
  }

  private emit<K extends keyof FeedEvents>(type: K, ev: FeedEvents[K]): void {
    for (const listener of [...(this.listeners.get(type) ?? [])]) {
      try {
        listener(ev);
      } catch (e) {
        // A listener's bug must not break the feed: rethrown outside.
        setTimeout(() => {
          throw e;
        });
      }
    }
  }

  private async dial(): Promise<void> {
    const gen = ++this.gen;
    let token: string | undefined;
    try {
      token = this.opts.getToken ? await this.opts.getToken() : this.opts.token;
    } catch (e) {
      this.lost(gen, 1006, `getToken failed: ${String(e)}`);
      return;
    }
    if (gen !== this.gen || this.closed) return;
    const url = new URL(this.opts.url);
    if (token) url.searchParams.set("token", token);
    let ws: WebSocketLike;
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
      let frame: { type?: unknown };
      try {
        frame = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (!frame || typeof frame !== "object" || typeof frame.type !== "string") return;
      if (MONITOR_TYPES.has(frame.type)) this.emit(frame.type as keyof MonitorFrames, frame as never);
      else this.emit("event", frame as HubFrame);
    };
    ws.onclose = (ev) => this.lost(gen, ev.code, ev.reason);
    ws.onerror = () => undefined; // a close follows
  }

  /** The connection `gen` is gone: reconnect after a backoff. */
  private lost(gen: number, code: number, reason: string): void {
    if (gen !== this.gen || this.closed) return;
    this.gen += 1;
    this.drop(1000, reason);
    const cfg = this.opts.reconnect ?? {};
    const delayMs = Math.min(cfg.maxDelayMs ?? 30_000, (cfg.initialDelayMs ?? 1000) * (cfg.factor ?? 2) ** this.attempt);
    this.attempt += 1;
    this.emit("disconnected", { code, reason, delayMs });
    this.timer = setTimeout(() => void this.dial(), delayMs);
  }

  private drop(code: number, reason: string): void {
    const ws = this.ws;
    this.ws = undefined;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = null;
    ws.onerror = () => undefined;
    try {
      if (ws.readyState === OPEN || ws.readyState === 0) ws.close(code, reason.slice(0, 120));
    } catch {
      // already closing
    }
  }
}
