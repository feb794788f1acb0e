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
export { connectFeed, FeedClient } from "./feed.js";
export type {
  AgentChange,
  ApprovalChange,
  FeedError,
  FeedEvents,
  FeedHello,
  FeedOptions,
  InstanceStats,
  MonitorFrames,
  Presence,
  Watching,
} from "./feed.js";
export type * from "./frames.js";
