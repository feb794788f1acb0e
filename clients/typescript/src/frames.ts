// The hub's wire frames (docs/protocol.md §4 client → hub, §5 hub → client).
//
// The frames themselves are generated from the hub's AsyncAPI document
// (protocol.generated.ts, by clients/codegen/generate.py; tests/asyncapi.rs
// fails when it differs from the document). This file is hand-written: the
// SDK's names for those types, and what the schema cannot say (the fields
// of a command's `content`, `response_type`'s values, a position in the
// event log). A client must ignore fields it does not know.

import type * as G from "./protocol.generated.js";

export type * from "./protocol.generated.js";

/** Where a client is in its session's event log (§12). */
export interface Position {
  offset: number;
  epoch: string;
}

/** Fields every session event carries (§12 "Offsets"). */
export interface SessionEventFields {
  offset?: number;
  epoch?: string;
}

// ---------------------------------------------------------------- hub → client

/** A member of a session (`clients` of `registration_confirmed`, §5). */
export type ClientInfo = G.HubRegistrationConfirmed["clients"][number];
export type Contact = G.HubContactListBroadcast["contacts"][number];
export type RegistrationConfirmed = G.HubRegistrationConfirmed;
export type ContactListBroadcast = G.HubContactListBroadcast;
export type MessageEvent = G.HubMessageEvent;
/** A history entry: a `message_event` without `type` (§5 `get_history`). */
export type HistoryEntry = Omit<G.HubMessageEvent, "type" | "offset" | "epoch">;
export type MediaInfo = NonNullable<G.HubMessageEvent["media"]>;
export type MessageStatus = G.HubMessageStatus;
export type ClientJoined = G.HubClientJoined;
export type ClientLeft = G.HubClientLeft;
export type AgentChanged = G.HubAgentChanged;
export type BroadcastEvent = G.HubBroadcast;
export type Pong = G.HubPong;
export type ApprovalRequest = G.HubApprovalRequest;
export type Approval = Omit<G.HubApprovalRequest, "type" | "offset" | "epoch">;
export type ApprovalResolved = G.HubApprovalResolved;

/** `execute` (§5): the schema leaves `command` open; it is a `whatsapp_command`'s. */
export interface Execute extends Omit<G.HubExecute, "command"> {
  command: WhatsAppCommand;
}

export type ResponseType =
  | "whatsapp_command_result"
  | "whatsapp_ai_command_result"
  | "ai_response"
  | "broadcast_sent"
  | "ack"
  | "approval_decided"
  | "approvals";

/** `content` of a command result: `success` plus fields per action (§5, §6). */
export interface CommandResult {
  success: boolean;
  /** On `success: false`: a command-failure code (§6, §9). */
  code?: string;
  error?: string;
  candidates?: string[];
  contact?: string;
  message?: string;
  message_id?: string;
  timestamp?: number;
  executed_by?: string;
  contacts?: Contact[];
  total_count?: number;
  messages?: HistoryEntry[];
  count?: number;
  [field: string]: unknown;
}

/** `response` (§5), with its `content` typed by the caller. */
export interface Response<C = CommandResult> extends Omit<G.HubResponse, "content" | "response_type"> {
  response_type: ResponseType;
  content: C;
}

/** Every frame the hub sends, by `type`. */
export interface HubFrames extends Omit<G.HubMessagesByType, "response" | "execute"> {
  response: Response;
  execute: Execute;
}

export type HubFrame = HubFrames[keyof HubFrames];

// ---------------------------------------------------------------- client → hub

/** `whatsapp_command`'s `command`, one variant per action. */
export type WhatsAppCommand =
  | G.ClientWhatsappCommandSend["command"]
  | G.ClientWhatsappCommandListContacts["command"]
  | G.ClientWhatsappCommandGetHistory["command"]
  | G.ClientWhatsappCommandSendTemplate["command"]
  | G.ClientWhatsappCommandMarkRead["command"]
  | G.ClientWhatsappCommandListTemplates["command"];

/** A client message without the `request_id` that `request()` sets. */
type Body<M> = M extends unknown ? Omit<M, "request_id"> : never;

/** `whatsapp_command` with any action (the document has one message per action). */
export interface WhatsAppCommandRequest
  extends Omit<G.ClientWhatsappCommandSend, "command" | "request_id"> {
  command: WhatsAppCommand;
}

/** What `request()` sends: any client message but `register` (§4). */
export type ClientRequest =
  | Body<Exclude<G.ClientMessage, G.ClientRegister | { type: "whatsapp_command" }>>
  | WhatsAppCommandRequest;

export type Register = G.ClientRegister;
