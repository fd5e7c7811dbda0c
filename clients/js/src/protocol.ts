// Wire protocol types of flowhub (docs/PROTOCOL.md): JSON control frames and binary
// frames (sync messages and change frames). Mirrors protocol/src/*.rs.

export const PROTOCOL_VERSION = 1

export type RequestId = number | string
export type Role = "viewer" | "editor" | "owner"

export type ErrorCode =
  | "bad_request"
  | "unauthorized"
  | "forbidden"
  | "not_found"
  | "too_large"
  | "rate_limited"
  | "schema_violation"
  | "unsupported_version"
  | "internal"

export interface Cursor {
  x: number
  y: number
}

export interface PresenceEntry {
  session_id: string
  user_id: string
  name: string
  color: string
  cursor?: Cursor
  selection: string[]
  node_id: string
  updated_at: number
}

export type RunEventKind =
  | "run.started"
  | "step.started"
  | "step.succeeded"
  | "step.failed"
  | "step.retrying"
  | "log"
  | "run.finished"

export type RunStatus = "queued" | "running" | "succeeded" | "failed" | "cancelled"
export type StepStatus = "running" | "succeeded" | "failed" | "retrying"
export type LogLevel = "trace" | "debug" | "info" | "warn" | "error"

/** One event as an engine reports it (`POST /v1/runs/{run_id}/events`). */
export interface RunEventInput {
  event_id: string
  type: RunEventKind
  flow_id: string
  node_id?: string
  ts: number
  duration_ms?: number
  error?: string
  level?: LogLevel
  message?: string
  attempt?: number
  status?: RunStatus
  flow_heads?: string[]
}

/** A stored, sequenced event as watchers receive it. */
export interface RunEvent extends RunEventInput {
  seq: number
}

export interface StepState {
  nodeId: string
  status: StepStatus
  attempt: number
  startedAt: number | null
  finishedAt: number | null
  durationMs: number | null
  error: string | null
}

export interface LogLine {
  seq: number
  ts: number
  level: LogLevel
  msg: string
  nodeId: string | null
}

export interface RunSnapshot {
  id: string
  flowId: string
  status: RunStatus
  startedAt: number | null
  finishedAt: number | null
  flowHeads: string[]
  lastSeq: number
  steps: StepState[]
  logs: LogLine[]
}

export interface RunSummary {
  id: string
  flowId: string
  status: RunStatus
  startedAt: number | null
  finishedAt: number | null
  lastSeq: number
}

export interface Limits {
  max_frame_bytes: number
  max_subscriptions: number
}

export type ClientMessage =
  | { type: "hello"; id?: RequestId; protocol: number; client?: string }
  | {
      type: "subscribe_flow"
      id?: RequestId
      flow_id: string
      /** Hashes of this client's edits not acknowledged yet: the hub acks, right after
       *  `flow_state`, those it already stores (their ack may have died with a connection). */
      pending?: string[]
      /** This client takes change frames (kind `0x02`): once the sync protocol made it
       *  current, the hub sends new changes as they are, and the client may send its
       *  own the same way. */
      stream?: boolean
    }
  | { type: "unsubscribe_flow"; id?: RequestId; flow_id: string }
  | { type: "ping"; id?: RequestId }
  | {
      type: "presence"
      flow_id: string
      cursor?: Cursor
      selection?: string[]
      color?: string
    }
  | { type: "subscribe_run"; id?: RequestId; run_id: string; since_seq?: number }
  | { type: "unsubscribe_run"; id?: RequestId; run_id: string }
  | { type: "subscribe_flow_runs"; id?: RequestId; flow_id: string }
  | { type: "unsubscribe_flow_runs"; id?: RequestId; flow_id: string }
  | { type: "reauth"; id?: RequestId; token: string }

export type ServerMessage =
  | {
      type: "welcome"
      id?: RequestId
      protocol: number
      session_id: string
      user_id: string
      name: string
      node_id: string
      limits: Limits
    }
  | {
      type: "flow_state"
      id?: RequestId
      flow_id: string
      role: Role
      heads: string[]
      /** The hub agreed to `subscribe_flow.stream`: change frames may follow. */
      stream?: boolean
    }
  | { type: "ack"; id?: RequestId; flow_id?: string; changes?: string[] }
  | { type: "pong"; id?: RequestId }
  | { type: "presence_state"; flow_id: string; peers: PresenceEntry[] }
  | {
      type: "presence_diff"
      flow_id: string
      joined?: PresenceEntry[]
      updated?: PresenceEntry[]
      left?: string[]
    }
  | { type: "run_state"; id?: RequestId; run: RunSnapshot }
  | { type: "run_event"; run_id: string; event: RunEvent }
  | { type: "resume_from"; run_id: string; seq: number }
  | { type: "flow_run"; flow_id: string; run: RunSummary }
  | {
      type: "error"
      id?: RequestId
      flow_id?: string
      code: ErrorCode
      message: string
    }

/** Binary frame kind: an Automerge sync message for one flow. */
export const FRAME_FLOW_SYNC = 0x01
/** Binary frame kind: new Automerge changes of one flow (change chunks, concatenated,
 *  in causal order), for a session that subscribed with `stream`, in either direction. */
export const FRAME_FLOW_CHANGES = 0x02

export type FrameKind = typeof FRAME_FLOW_SYNC | typeof FRAME_FLOW_CHANGES

const FLOW_ID_RE = /^[A-Za-z0-9_.:-]{1,128}$/
const encoder = new TextEncoder()
const decoder = new TextDecoder()

export function isValidFlowId(flowId: string): boolean {
  return FLOW_ID_RE.test(flowId)
}

/** `kind L flow_id payload` (docs/PROTOCOL.md, "Binary frames"). */
export function encodeFrame(kind: FrameKind, flowId: string, payload: Uint8Array): Uint8Array {
  if (!isValidFlowId(flowId)) throw new Error(`invalid flow id ${JSON.stringify(flowId)}`)
  const id = encoder.encode(flowId)
  const out = new Uint8Array(2 + id.length + payload.length)
  out[0] = kind
  out[1] = id.length
  out.set(id, 2)
  out.set(payload, 2 + id.length)
  return out
}

/** `01 L flow_id payload` (docs/PROTOCOL.md, "Binary: flow sync"). */
export function encodeSyncFrame(flowId: string, payload: Uint8Array): Uint8Array {
  return encodeFrame(FRAME_FLOW_SYNC, flowId, payload)
}

/** `02 L flow_id changes`: change chunks, concatenated, in causal order. */
export function encodeChangesFrame(flowId: string, changes: Uint8Array | Uint8Array[]): Uint8Array {
  return encodeFrame(FRAME_FLOW_CHANGES, flowId, Array.isArray(changes) ? concatBytes(changes) : changes)
}

/** Decodes a binary frame of any known kind (the payload is a view, not a copy). */
export function decodeFrame(bytes: Uint8Array): { kind: FrameKind; flowId: string; payload: Uint8Array } {
  if (bytes.length < 2) throw new Error("truncated frame")
  const kind = bytes[0]
  if (kind !== FRAME_FLOW_SYNC && kind !== FRAME_FLOW_CHANGES) throw new Error(`unknown frame kind ${kind}`)
  const len = bytes[1]
  if (bytes.length < 2 + len) throw new Error("truncated frame")
  const flowId = decoder.decode(bytes.subarray(2, 2 + len))
  const payload = bytes.subarray(2 + len)
  if (payload.length === 0) throw new Error("empty payload")
  return { kind, flowId, payload }
}

/** Decodes a sync frame (kind `0x01` only; see `decodeFrame` for every kind). */
export function decodeSyncFrame(bytes: Uint8Array): { flowId: string; payload: Uint8Array } {
  if (bytes.length >= 1 && bytes[0] !== FRAME_FLOW_SYNC) throw new Error(`unknown frame kind ${bytes[0]}`)
  const { flowId, payload } = decodeFrame(bytes)
  return { flowId, payload }
}

/** The byte arrays one after the other (the one array itself when there is one). */
export function concatBytes(parts: Uint8Array[]): Uint8Array {
  if (parts.length === 1) return parts[0]
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0))
  let off = 0
  for (const p of parts) {
    out.set(p, off)
    off += p.length
  }
  return out
}
