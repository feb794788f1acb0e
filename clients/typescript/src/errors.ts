import type { HubErrorFrame } from "./frames.js";

/**
 * A failed request. `code` is the hub's error code (docs/protocol.md §9)
 * when the hub answered with an `error` frame, or one of the SDK's own:
 *
 * - `timeout`: no answer within the request's timeout;
 * - `connection_lost`: the connection dropped after the request was sent
 *   (it may or may not have run: retry with an `idempotency_key`);
 * - `queue_full`: the bounded send queue is full (backpressure);
 * - `closed`: the client was closed (or its AbortSignal fired);
 * - `registration_failed`: the hub refused `register` (see `cause`).
 */
export class HubError extends Error {
  readonly code: string;
  /** The hub's `error` frame, when there was one. */
  readonly frame: HubErrorFrame | undefined;

  constructor(code: string, message: string, frame?: HubErrorFrame) {
    super(message);
    this.name = "HubError";
    this.code = code;
    this.frame = frame;
  }

  static fromFrame(frame: HubErrorFrame): HubError {
    return new HubError(frame.code, frame.message, frame);
  }
}
