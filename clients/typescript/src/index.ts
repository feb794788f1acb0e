export { connect, HubClient, jwtExpiry } from "./client.js";
export type {
  ClientEvents,
  Closed,
  ConnectOptions,
  Disconnected,
  Registered,
  RequestOptions,
  WebSocketConstructor,
  WebSocketLike,
} from "./client.js";
export { HubError } from "./errors.js";
export type * from "./frames.js";
