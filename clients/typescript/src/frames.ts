// The hub's wire frames (docs/protocol.md §4 client → hub, §5 hub → client).
//
// Hand-written from docs/protocol.md: the hub publishes JSON Schemas only for
// its MCP tools, not for the WebSocket frames, so there is nothing to
// generate these from yet. Fields the hub may add later are allowed by the
// index signatures; a client must ignore what it does not know.

/** Where a client is in its session's event log (§12). */
export interface Position {
  offset: number;
  epoch: string;
}

/** A member of a session (`clients` of `registration_confirmed`, §5). */
export interface ClientInfo {
  client_id: string;
  client_name: string;
  instance: string;
  capabilities: string[];
  connected_at?: number;
  /** With authentication on: the token's `sub` that registered it. */
  owner?: string;
}

export interface Contact {
  name: string;
  phone?: string;
}

/** Fields every session event carries (§12 "Offsets"). */
export interface SessionEventFields {
  offset?: number;
  epoch?: string;
}

// ---------------------------------------------------------------- hub → client

export interface RegistrationConfirmed {
  type: "registration_confirmed";
  client_id: string;
  client_name: string;
  session: string;
  instance: string;
  agent: boolean;
  clients: ClientInfo[];
  clients_total: number;
  /** True when `since` was given and every event after it is replayed (§12.1). */
  recovered: boolean;
  offset: number;
  epoch: string;
  request_id?: string;
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

export interface Response<C = CommandResult> {
  type: "response";
  response_type: ResponseType;
  content: C;
  request_id?: string;
}

export interface ContactListBroadcast extends SessionEventFields {
  type: "contact_list_broadcast";
  contacts: Contact[];
  total_count: number;
  timestamp: number;
}

export interface MediaInfo {
  kind: "image" | "audio" | "video" | "document" | "sticker";
  id: string;
  url: string;
  mime_type?: string;
  sha256?: string;
  size?: number;
  caption?: string;
  filename?: string;
  voice?: boolean;
}

/** A history entry: a `message_event` without `type` (§5 `get_history`). */
export interface HistoryEntry {
  direction: "outgoing" | "incoming";
  contact: string;
  message: string;
  message_id: string;
  timestamp: number;
  by: string;
  executed_by?: "agent" | "cloud_api" | "simulated" | string;
  status?: "sent" | "delivered" | "read" | "failed";
  status_error?: { code: string; message: string; upstream_code?: number };
  media?: MediaInfo;
  reply?: {
    source: "button" | "list" | "template_button";
    id: string;
    title: string;
    description?: string;
    context_message_id?: string;
  };
  reaction?: { message_id: string; emoji: string };
  location?: { latitude: number; longitude: number; name?: string; address?: string; url?: string };
  contacts?: { name: string; phones: string[] }[];
  interactive?: Record<string, unknown>;
  unsupported?: string;
}

export interface MessageEvent extends HistoryEntry, SessionEventFields {
  type: "message_event";
}

export interface MessageStatus extends SessionEventFields {
  type: "message_status";
  message_id: string;
  status: "sent" | "delivered" | "read" | "failed";
  contact?: string;
  error?: { code: string; message: string; upstream_code?: number };
  timestamp: number;
}

export interface ClientJoined extends SessionEventFields {
  type: "client_joined";
  client_id: string;
  client_name: string;
  instance: string;
  capabilities: string[];
  connected_at?: number;
  owner?: string;
  timestamp: number;
}

export interface ClientLeft extends Omit<ClientJoined, "type"> {
  type: "client_left";
}

export interface AgentChanged extends SessionEventFields {
  type: "agent_changed";
  client_id: string | null;
  instance: string | null;
  timestamp: number;
}

export interface BroadcastEvent extends SessionEventFields {
  type: "broadcast";
  from: string;
  payload: unknown;
  timestamp: number;
}

export interface Pong {
  type: "pong";
  timestamp: number;
  request_id?: string;
}

export interface Execute {
  type: "execute";
  request_id: string;
  command: WhatsAppCommand;
}

export interface Approval {
  id: number;
  session: string;
  requested_by: string;
  via: "mcp" | "ai";
  action: "send" | "send_template";
  contact: string;
  text: string;
  created_at: number;
  expires_at: number;
}

export interface ApprovalRequest extends Approval, SessionEventFields {
  type: "approval_request";
}

export interface ApprovalResolved extends SessionEventFields {
  type: "approval_resolved";
  id: number;
  decision: "approved" | "rejected" | "expired";
  decided_by: string;
  decided_at: number;
  reason?: string;
  result?: CommandResult;
}

/** A top-level `error` frame (§5 `error`, codes in §9). */
export interface HubErrorFrame {
  type: "error";
  code: string;
  message: string;
  request_id?: string;
}

/** Every frame the hub sends, by `type`. */
export interface HubFrames {
  registration_confirmed: RegistrationConfirmed;
  response: Response;
  contact_list_broadcast: ContactListBroadcast;
  message_event: MessageEvent;
  message_status: MessageStatus;
  client_joined: ClientJoined;
  client_left: ClientLeft;
  agent_changed: AgentChanged;
  broadcast: BroadcastEvent;
  pong: Pong;
  execute: Execute;
  approval_request: ApprovalRequest;
  approval_resolved: ApprovalResolved;
  error: HubErrorFrame;
}

export type HubFrame = HubFrames[keyof HubFrames];

// ---------------------------------------------------------------- client → hub

export type WhatsAppCommand =
  | {
      action: "send";
      contact: string;
      message?: string;
      media?: Record<string, unknown>;
      interactive?: Record<string, unknown>;
      reaction?: { message_id: string; emoji: string };
      location?: { latitude: number; longitude: number; name?: string; address?: string };
    }
  | { action: "list_contacts" }
  | { action: "get_history"; contact: string; limit?: number }
  | {
      action: "send_template";
      contact: string;
      template: string;
      language: string;
      components?: unknown[];
    }
  | { action: "mark_read"; contact: string; typing?: boolean }
  | { action: "list_templates" };

/** What `request()` sends: any client message but `register` (§4). */
export type ClientRequest =
  | { type: "ping" }
  | { type: "whatsapp_command"; command: WhatsAppCommand; idempotency_key?: string }
  | {
      type: "whatsapp_ai_command";
      command: string;
      context?: Record<string, unknown>;
      idempotency_key?: string;
    }
  | { type: "ai_request"; prompt: string; context?: unknown }
  | { type: "broadcast"; payload: unknown }
  | { type: "execute_result"; request_id: string; content: unknown }
  | { type: "contacts_update"; contacts: (string | Contact)[] }
  | { type: "incoming_message"; contact: string; message: string }
  | { type: "approve"; id: number; reason?: string }
  | { type: "reject"; id: number; reason?: string }
  | { type: "list_approvals" };

export interface Register {
  type: "register";
  client_id?: string;
  client_name?: string;
  session?: string;
  capabilities?: string[];
  since?: Position;
  request_id?: string;
}
