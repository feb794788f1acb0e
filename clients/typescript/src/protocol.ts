// The client's protocol decisions as pure functions: what to do after a
// close code, where a (re)registration leaves the client in the session's
// event log, how each frame moves that position, and which frames answer a
// request. The terminal client (src/terminal/protocol.rs) and the Python SDK
// make the same decisions: clients/cases/protocol-cases.json holds the cases
// all three must agree on (test/cases_test.mjs runs them here).

import type { Position } from "./frames.js";

/** What to do once the connection is gone. */
export type AfterClose = "reconnect" | "renew_token" | "stop";

/**
 * After the hub closed with `code` (null: the connection dropped without a
 * close frame): 4401 means a new token is needed; any other 4xxx is the hub
 * refusing this client (4001 replaced, 4002 removed by an admin, 4408 not
 * registered in time) and reconnecting would loop; anything else (1001
 * shutdown, 1012 restart, 1008 slow consumer, ...) is worth a reconnect.
 */
export function afterClose(code: number | null, canRenewToken: boolean): AfterClose {
  if (code === 4401 && canRenewToken) return "renew_token";
  if (code !== null && code >= 4000 && code <= 4999) return "stop";
  return "reconnect";
}

/** The frame's `offset` (a non-negative integer) and `epoch`; null unless it has both. */
export function positionOf(frame: unknown): Position | null {
  if (!frame || typeof frame !== "object") return null;
  const { offset, epoch } = frame as { offset?: unknown; epoch?: unknown };
  if (typeof offset !== "number" || !Number.isSafeInteger(offset) || offset < 0) return null;
  if (typeof epoch !== "string") return null;
  return { offset, epoch };
}

/**
 * Where `registration_confirmed` leaves a client that registered with
 * `since`: whether the missed events are replayed (never without `since`),
 * and the position to resume from next: `since` when recovered (the replay
 * moves it on), else the confirmation's (null without an event log).
 */
export function afterRegistration(
  since: Position | null,
  confirmed: unknown,
): { recovered: boolean; position: Position | null } {
  const recovered = since !== null && (confirmed as { recovered?: unknown })?.recovered === true;
  if (recovered) return { recovered, position: since };
  return { recovered: false, position: positionOf(confirmed) };
}

/**
 * How `frame` moves the position `known`: the new position, and whether the
 * frame is a duplicate (an offset at or before `known` in the same epoch,
 * e.g. delivered again across a reconnect), not to be emitted again.
 */
export function track(known: Position | null, frame: unknown): { position: Position | null; duplicate: boolean } {
  const p = positionOf(frame);
  if (p === null) return { position: known, duplicate: false };
  if (known !== null && known.epoch === p.epoch && p.offset <= known.offset) {
    return { position: known, duplicate: true };
  }
  return { position: p, duplicate: false };
}

const ANSWERS = new Set(["response", "error", "pong", "registration_confirmed"]);

/**
 * The request id `frame` answers: `response`, `error`, `pong` and
 * `registration_confirmed` carry the `request_id` (a string) of the request
 * they answer. Other frames answer nothing, even with a `request_id`
 * (`execute` carries the hub's own).
 */
export function answeredRequest(frame: unknown): string | null {
  if (!frame || typeof frame !== "object") return null;
  const { type, request_id } = frame as { type?: unknown; request_id?: unknown };
  if (typeof type !== "string" || !ANSWERS.has(type)) return null;
  return typeof request_id === "string" ? request_id : null;
}
