// The hub's flow HTTP API (docs/PROTOCOL.md, "HTTP"), for clients without a WebSocket
// or an Automerge runtime (scripts, CI jobs, dashboards, the demo page's history view):
// read a flow, apply typed edits as one change, diff two versions, restore one, read
// the history and manage named versions. Only `fetch` is needed.
//
// Every non-2xx answer becomes a `FlowhubHttpError`: a `FlowhubError` with the hub's
// JSON error `code` (`forbidden`, `not_found`, …), the HTTP `status` and the `field` to
// blame when the hub names one.

import { FlowhubError } from "./client.js"
import type { Edit, FlowEdge, FlowNode } from "./flow.js"
import type { ErrorCode } from "./protocol.js"
import type { FlowDiff } from "./undo.js"

/**
 * A version of a flow: its heads (an array of hex change hashes, or them joined by
 * commas), `version:NAME` (a named version, see `versionRef`) or `run:RUN_ID` (the
 * graph a run executed, see `runRef`).
 */
export type VersionRef = string | readonly string[]

/** `version:NAME`, a named version wherever a version is expected. */
export const versionRef = (name: string): string => `version:${name}`
/** `run:RUN_ID`, the heads a run recorded when it started. */
export const runRef = (runId: string): string => `run:${runId}`

function refParam(v: VersionRef): string {
  return typeof v === "string" ? v : v.join(",")
}

/** `GET /v1/flows/{id}`: the flow as JSON, with its heads. */
export interface FlowJson {
  id: string
  name: string
  heads: string[]
  nodes: Record<string, FlowNode>
  edges: Record<string, FlowEdge>
}

/** The answer of `edits` and `restore`: the change made (or replayed) and the heads. */
export interface EditsResult {
  change: string
  heads: string[]
  /** True when the idempotency key was already used: nothing was applied this time. */
  replayed: boolean
}

export interface ConfigKey {
  node: string
  key: string
}

/** What a change (or an editing session) did, by id (crdt/src/summary.rs). */
export interface EditSummary {
  renamed: boolean
  nodes_added: string[]
  nodes_removed: string[]
  nodes_moved: string[]
  nodes_relabelled: string[]
  nodes_retyped: string[]
  config_changed: ConfigKey[]
  edges_added: string[]
  edges_removed: string[]
  edges_changed: string[]
}

/** Consecutive changes by one verified user, close in time. */
export interface HistorySession {
  /** The verified user ("" for the genesis change and changes before attribution). */
  user_id: string
  name: string
  /** Earliest and latest change time, ms since the Unix epoch. */
  start: number
  end: number
  /** The flow as of the session's newest change: usable as a `VersionRef`. */
  heads_after: string[]
  /** The session's changes, newest first. */
  changes: string[]
  summary: EditSummary
}

export interface HistoryPage {
  /** Newest first. */
  sessions: HistorySession[]
  /** Pass as `before` for the next, older page; absent on the last page. */
  next_before?: string
}

export interface HistoryOptions {
  /** Changes (not sessions) per page: default 100, at most 500. */
  limit?: number
  /** `next_before` of the previous page. */
  before?: string
  /** Longest pause within one session, ms (default 300,000). */
  gapMs?: number
}

export interface NamedVersion {
  name: string
  heads: string[]
  user_id: string
  created_at_ms: number
}

/** A refused request: the hub's JSON error (`{"error": {"code", "message", "field"}}`). */
export class FlowhubHttpError extends FlowhubError {
  constructor(
    code: ErrorCode,
    message: string,
    readonly status: number,
    readonly field?: string,
    flowId?: string,
  ) {
    super(code, message, flowId)
    this.name = "FlowhubHttpError"
  }
}

export interface HttpOptions {
  /** The hub's HTTP base URL, e.g. `http://127.0.0.1:7878` (a `ws://` URL is accepted). */
  baseUrl: string
  /** A JWT, or a function returning the current one (called per request). */
  token: string | (() => string | Promise<string>)
  /** `fetch` to use (default: the global one). */
  fetch?: typeof fetch
}

const STATUS_CODES: Record<number, ErrorCode> = {
  400: "bad_request",
  401: "unauthorized",
  403: "forbidden",
  404: "not_found",
  409: "bad_request",
  413: "too_large",
  429: "rate_limited",
}

/** Typed access to a hub's flow HTTP API. */
export class FlowhubHttp {
  readonly baseUrl: string
  private readonly tokenOf: () => string | Promise<string>
  private readonly fetchFn: typeof fetch

  constructor(opts: HttpOptions) {
    this.baseUrl = opts.baseUrl.replace(/^ws(s?):/, "http$1:").replace(/\/+$/, "")
    const t = opts.token
    this.tokenOf = typeof t === "function" ? t : () => t
    this.fetchFn = opts.fetch ?? ((input, init) => fetch(input, init))
  }

  /** `GET /v1/flows/{id}`, or the flow as it was at `heads`. */
  getFlow(flowId: string, opts: { heads?: readonly string[] } = {}): Promise<FlowJson> {
    const q: Record<string, string> = opts.heads ? { heads: opts.heads.join(",") } : {}
    return this.request<FlowJson>(flowId, "GET", this.flowPath(flowId, "", q))
  }

  /**
   * `POST /v1/flows/{id}/edits`: the edits, in order, as one change by the caller (all
   * or nothing). A retry with the same `idempotencyKey` applies nothing and answers
   * with the first change (`replayed: true`).
   */
  applyEdits(flowId: string, edits: readonly Edit[], opts: { idempotencyKey?: string } = {}): Promise<EditsResult> {
    const body: Record<string, unknown> = { edits }
    if (opts.idempotencyKey !== undefined) body.idempotency_key = opts.idempotencyKey
    return this.request<EditsResult>(flowId, "POST", this.flowPath(flowId, "/edits"), body)
  }

  /** `GET /v1/flows/{id}/diff`: what differs from `from` to `to` (default: now). */
  diff(flowId: string, from: VersionRef, to?: VersionRef): Promise<FlowDiff> {
    const q: Record<string, string> = { from: refParam(from) }
    if (to !== undefined) q.to = refParam(to)
    return this.request<FlowDiff>(flowId, "GET", this.flowPath(flowId, "/diff", q))
  }

  /** `POST /v1/flows/{id}/restore`: the flow made equal to `to`, as one new change. */
  restore(flowId: string, to: VersionRef, opts: { idempotencyKey?: string } = {}): Promise<EditsResult> {
    const body: Record<string, unknown> = { to: refParam(to) }
    if (opts.idempotencyKey !== undefined) body.idempotency_key = opts.idempotencyKey
    return this.request<EditsResult>(flowId, "POST", this.flowPath(flowId, "/restore"), body)
  }

  /** `GET /v1/flows/{id}/history`: one page of editing sessions, newest first. */
  history(flowId: string, opts: HistoryOptions = {}): Promise<HistoryPage> {
    const q: Record<string, string> = {}
    if (opts.limit !== undefined) q.limit = String(opts.limit)
    if (opts.before !== undefined) q.before = opts.before
    if (opts.gapMs !== undefined) q.gap_ms = String(opts.gapMs)
    return this.request<HistoryPage>(flowId, "GET", this.flowPath(flowId, "/history", q))
  }

  /**
   * Every page of the history, newest first, one page per iteration. A session that
   * spans a page boundary comes in two parts (one per page).
   */
  async *historyPages(flowId: string, opts: Omit<HistoryOptions, "before"> = {}): AsyncGenerator<HistoryPage> {
    let before: string | undefined
    for (;;) {
      const page = await this.history(flowId, { ...opts, before })
      yield page
      if (!page.next_before) return
      before = page.next_before
    }
  }

  /** `POST /v1/flows/{id}/versions`: pins the current heads under `name` (editor role). */
  createVersion(flowId: string, name: string): Promise<NamedVersion> {
    return this.request<NamedVersion>(flowId, "POST", this.flowPath(flowId, "/versions"), { name })
  }

  /** `GET /v1/flows/{id}/versions`: the named versions, oldest first. */
  async listVersions(flowId: string): Promise<NamedVersion[]> {
    const r = await this.request<{ versions: NamedVersion[] }>(flowId, "GET", this.flowPath(flowId, "/versions"))
    return r.versions
  }

  /** `DELETE /v1/flows/{id}/versions/{name}` (editor role). */
  async deleteVersion(flowId: string, name: string): Promise<void> {
    await this.request<void>(flowId, "DELETE", this.flowPath(flowId, `/versions/${encodeURIComponent(name)}`))
  }

  /**
   * `GET /v1/flows/{id}/stream`: the flow as JSON, then a new version each time it
   * changed (the hub's JSON Patches applied here), with the users whose changes each
   * version brought. Pass the last `heads` as `since` (and its `flow` as `flow`) to
   * resume after a disconnect with one patch. Ends when `signal` aborts or the hub
   * ends the stream (a node draining: resume elsewhere).
   */
  async *watchJson(
    flowId: string,
    opts: { since?: readonly string[]; flow?: FlowJson; signal?: AbortSignal } = {},
  ): AsyncGenerator<FlowVersion> {
    const headers: Record<string, string> = { authorization: `Bearer ${await this.tokenOf()}` }
    if (opts.since && opts.since.length > 0) headers["last-event-id"] = opts.since.join(",")
    const path = this.flowPath(flowId, "/stream")
    const r = await this.fetchFn(`${this.baseUrl}${path}`, { headers, signal: opts.signal })
    if (!r.ok || !r.body) {
      const code = STATUS_CODES[r.status] ?? "internal"
      throw new FlowhubHttpError(code, `GET ${path}: HTTP ${r.status}`, r.status, undefined, flowId)
    }
    let flow: FlowJson | undefined = opts.flow ? structuredClone(opts.flow) : undefined
    const reader = r.body.getReader()
    const decoder = new TextDecoder()
    let buf = ""
    try {
      for (;;) {
        const end = buf.indexOf("\n\n")
        if (end < 0) {
          const { value, done } = await reader.read()
          if (done) return
          buf += decoder.decode(value, { stream: true })
          continue
        }
        const block = buf.slice(0, end)
        buf = buf.slice(end + 2)
        let event = ""
        let id = ""
        let data = ""
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) event = line.slice(6).trim()
          else if (line.startsWith("id:")) id = line.slice(3).trim()
          else if (line.startsWith("data:")) data += line.slice(5).replace(/^ /, "")
        }
        if (event === "flow") {
          flow = JSON.parse(data) as FlowJson
          yield { heads: id.split(","), flow, authors: [] }
        } else if (event === "patch") {
          const p = JSON.parse(data) as { heads: string[]; patch: JsonPatchOp[]; authors?: string[] }
          if (!flow) throw new FlowhubHttpError("bad_request", "a patch arrived before the flow", 0, undefined, flowId)
          applyJsonPatch(flow as unknown as Record<string, unknown>, p.patch)
          yield { heads: p.heads, flow, authors: p.authors ?? [] }
        } else if (event === "error") {
          const e = JSON.parse(data) as { code: ErrorCode; message: string }
          throw new FlowhubHttpError(e.code, e.message, 0, undefined, flowId)
        }
      }
    } finally {
      reader.releaseLock()
    }
  }

  private flowPath(flowId: string, rest: string, query: Record<string, string> = {}): string {
    const q = new URLSearchParams(query).toString()
    return `/v1/flows/${encodeURIComponent(flowId)}${rest}${q ? `?${q}` : ""}`
  }

  private async request<T>(flowId: string, method: string, path: string, body?: unknown): Promise<T> {
    const headers: Record<string, string> = { authorization: `Bearer ${await this.tokenOf()}` }
    if (body !== undefined) headers["content-type"] = "application/json"
    const r = await this.fetchFn(`${this.baseUrl}${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    })
    const text = await r.text()
    if (!r.ok) {
      let err: { code?: string; message?: string; field?: string } | undefined
      try {
        err = (JSON.parse(text) as { error?: typeof err }).error
      } catch {
        // not JSON: fall back to the status
      }
      const code = (err?.code as ErrorCode | undefined) ?? STATUS_CODES[r.status] ?? "internal"
      throw new FlowhubHttpError(code, err?.message ?? `${method} ${path}: HTTP ${r.status}`, r.status, err?.field, flowId)
    }
    return (text ? JSON.parse(text) : undefined) as T
  }
}

/** One version of a flow from {@link FlowhubHttp.watchJson}. */
export interface FlowVersion {
  /** The flow's heads: pass as `since` to resume. */
  heads: string[]
  /** The flow (the same object, patched in place, across versions). */
  flow: FlowJson
  /** Verified user ids whose changes this version brought (empty for the first). */
  authors: string[]
}

/** One JSON Patch (RFC 6902) operation, as the hub sends them. */
export type JsonPatchOp =
  | { op: "add"; path: string; value: unknown }
  | { op: "replace"; path: string; value: unknown }
  | { op: "remove"; path: string }

/** Applies `ops` to `doc` in place (object paths; the hub replaces arrays whole). */
export function applyJsonPatch(doc: Record<string, unknown>, ops: readonly JsonPatchOp[]): void {
  for (const op of ops) {
    const keys = op.path
      .split("/")
      .slice(1)
      .map((k) => k.replace(/~1/g, "/").replace(/~0/g, "~"))
    const last = keys.pop()
    if (last === undefined) throw new Error("a patch on the whole document")
    let parent: Record<string, unknown> = doc
    for (const k of keys) {
      const next = parent[k]
      if (typeof next !== "object" || next === null) throw new Error(`${op.path}: no such path`)
      parent = next as Record<string, unknown>
    }
    if (op.op === "remove") delete parent[last]
    else parent[last] = structuredClone(op.value)
  }
}
