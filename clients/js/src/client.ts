// FlowhubClient: one WebSocket session with a flowhub hub (docs/PROTOCOL.md).
//
// - `FlowhubClient.connect({url, token})` opens the socket, waits for `welcome` and
//   says `hello`.
// - `client.subscribe(flowId)` joins a flow and returns a `Flow`: a local Automerge
//   replica kept in sync with the hub, typed edits whose promises settle with the
//   hub's verdict (`ack` resolves, a refusal rejects and rolls the replica back), and
//   presence. With change streaming (the default; `subscribe_flow.stream`), once the
//   sync protocol made the replica current the hub sends every new change as a change
//   frame (0x02) that needs no answer, and the flow sends its own edits the same way.
// - `client.watchRun(runId)` follows a run (`run_state`, then `run_event`s in order,
//   resubscribing after `resume_from` and after reconnects without gaps or repeats).
//
// The client reconnects by itself (backoff up to 5 s) unless the hub said not to
// (unsupported version, policy violation, expired token without a token provider).

import * as A from "@automerge/automerge"

import { Emitter } from "./emitter.js"
import { FlowDocument, type Edit, type EditOutcome, type EditsOutcome, type Endpoint, type FlowSnapshot, type JsonValue, type NewNode, type Position } from "./flow.js"
import {
  FRAME_FLOW_CHANGES,
  FRAME_FLOW_SYNC,
  PROTOCOL_VERSION,
  decodeFrame,
  encodeChangesFrame,
  encodeSyncFrame,
  type ClientMessage,
  type Cursor,
  type ErrorCode,
  type Limits,
  type PresenceEntry,
  type RequestId,
  type Role,
  type RunEvent,
  type RunSnapshot,
  type RunSummary,
  type ServerMessage,
} from "./protocol.js"
import { applyRunEvent } from "./runs.js"
import { UndoStack, type Skipped, type Undone } from "./undo.js"

/** The subset of the WHATWG WebSocket the client uses (browsers, `ws` in Node). */
export interface WebSocketLike {
  binaryType: string
  readyState: number
  send(data: string | Uint8Array | ArrayBuffer): void
  close(code?: number, reason?: string): void
  onopen: ((ev: unknown) => void) | null
  onclose: ((ev: { code: number; reason: string }) => void) | null
  onmessage: ((ev: { data: unknown }) => void) | null
  onerror: ((ev: unknown) => void) | null
}

export type WebSocketCtor = new (url: string) => WebSocketLike

export interface ConnectOptions {
  /** Hub base URL: `ws://host:port`, `wss://…`, `http://…` or `https://…`. */
  url: string
  /** A JWT, or a function returning a fresh one (called on every (re)connect). */
  token: string | (() => string | Promise<string>)
  /** WebSocket implementation; defaults to `globalThis.WebSocket`. */
  WebSocket?: WebSocketCtor
  /** Sent in `hello`. */
  client?: string
  /** Reconnect after an unexpected close (default true). */
  reconnect?: boolean
  /** How long a request waits for its reply (default 10 s). */
  requestTimeoutMs?: number
  /**
   * Ask the hub to stream changes (default true): once a flow's replica is current,
   * new changes travel as change frames both ways instead of sync-protocol rounds.
   * The hub decides (`flow_state.stream`); without it the sync protocol carries all.
   */
  stream?: boolean
}

/** An error from the hub (typed `code`) or from the connection. */
export class FlowhubError extends Error {
  constructor(
    readonly code: ErrorCode | "closed" | "timeout",
    message: string,
    readonly flowId?: string,
  ) {
    super(message)
    this.name = "FlowhubError"
  }
}

export interface Welcome {
  session_id: string
  user_id: string
  name: string
  node_id: string
  protocol: number
  limits: Limits
}

type ClientEvents = {
  /** Every welcome (first connect and reconnects). */
  welcome: (welcome: Welcome) => void
  /** The socket closed (the client may reconnect). */
  close: (code: number, reason: string) => void
  reconnecting: (attempt: number) => void
  /** An error not tied to a request or a flow. */
  error: (error: FlowhubError) => void
  /** `flow_run` from a `watchFlowRuns` subscription. */
  flow_run: (flowId: string, run: RunSummary) => void
}

interface PendingRequest {
  resolve: (msg: ServerMessage) => void
  reject: (err: FlowhubError) => void
  timer: ReturnType<typeof setTimeout>
}

const OPEN = 1
/** Close codes after which reconnecting cannot help (docs/PROTOCOL.md "Close codes"). */
const FATAL_CLOSE = new Set([1008, 1009, 4002])
const MAX_SYNC_MESSAGES_PER_ROUND = 64
/** How long the JS view of a flow may lag behind change frames nobody read (it is
 *  brought up to date on every read anyway; this bounds what piles up unread). */
const VIEW_REFRESH_MS = 5000
/** Most hashes one `subscribe_flow` may report in `pending` (the hub's limit). */
const MAX_PENDING_HASHES = 10_000

function wsUrl(base: string, token: string): string {
  const b = base.replace(/^http/, "ws").replace(/\/+$/, "")
  return `${b}/v1/ws?token=${encodeURIComponent(token)}`
}

function toBytes(data: unknown): Uint8Array | undefined {
  if (data instanceof ArrayBuffer) return new Uint8Array(data)
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
  if (Array.isArray(data)) {
    // `ws` may hand fragmented messages over as a list of buffers.
    const parts = data.map((d) => toBytes(d) ?? new Uint8Array())
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0))
    let off = 0
    for (const p of parts) {
      out.set(p, off)
      off += p.length
    }
    return out
  }
  return undefined
}

export class FlowhubClient extends Emitter<ClientEvents> {
  readonly options: Required<Omit<ConnectOptions, "WebSocket" | "client">> & Pick<ConnectOptions, "client">
  #WebSocket: WebSocketCtor
  #ws: WebSocketLike | undefined
  #nextId = 1
  #requests = new Map<RequestId, PendingRequest>()
  #flows = new Map<string, Flow>()
  #runs = new Map<string, RunWatch>()
  #flowRuns = new Map<string, Set<(run: RunSummary) => void>>()
  #closedByUser = false
  #attempt = 0
  #welcome: Welcome | undefined
  #connected = false
  #connecting: Promise<void> | undefined
  /** Change frames' contents not sent yet, per flow, in order (see `queueChanges`). */
  #outbox = new Map<string, { flow: Flow; changes: Uint8Array[]; bytes: number }>()
  #outboxScheduled = false

  private constructor(options: ConnectOptions) {
    super()
    const Ctor = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketCtor }).WebSocket
    if (!Ctor) throw new Error("no WebSocket implementation: pass `WebSocket` (e.g. from the `ws` package)")
    this.#WebSocket = Ctor
    this.options = {
      url: options.url,
      token: options.token,
      client: options.client,
      reconnect: options.reconnect ?? true,
      requestTimeoutMs: options.requestTimeoutMs ?? 10_000,
      stream: options.stream ?? true,
    }
  }

  /** Opens a session: resolves once the hub welcomed it and answered `hello`. */
  static async connect(options: ConnectOptions): Promise<FlowhubClient> {
    const client = new FlowhubClient(options)
    await client.#open()
    return client
  }

  /** The last `welcome` (session id, user, name, limits). */
  get welcome(): Welcome {
    if (!this.#welcome) throw new Error("not connected yet")
    return this.#welcome
  }

  get sessionId(): string {
    return this.welcome.session_id
  }

  get connected(): boolean {
    return this.#connected
  }

  /** Joins a flow; resolves once the local replica holds the hub's heads. */
  async subscribe(flowId: string): Promise<Flow> {
    let flow = this.#flows.get(flowId)
    if (flow) {
      await flow.ready
      return flow
    }
    flow = new Flow(this, flowId)
    this.#flows.set(flowId, flow)
    try {
      await this.#subscribeFlow(flow)
    } catch (e) {
      this.#flows.delete(flowId)
      throw e
    }
    await flow.ready
    return flow
  }

  /** Follows a run: `run_state`, then every event after `sinceSeq`, then live events. */
  async watchRun(
    runId: string,
    options: {
      sinceSeq?: number
      /** Attached before subscribing, so no replayed event is missed. */
      onEvent?: (event: RunEvent, run: RunSnapshot) => void
      onState?: (run: RunSnapshot) => void
    } = {},
  ): Promise<RunWatch> {
    const existing = this.#runs.get(runId)
    if (existing) return existing
    const watch = new RunWatch(this, runId, options.sinceSeq ?? 0)
    if (options.onEvent) watch.on("event", options.onEvent)
    if (options.onState) watch.on("state", options.onState)
    this.#runs.set(runId, watch)
    try {
      await this.#subscribeRun(watch)
    } catch (e) {
      this.#runs.delete(runId)
      throw e
    }
    return watch
  }

  /** Receives `flow_run` summaries (run started / finished) of one flow. */
  async watchFlowRuns(flowId: string, onRun: (run: RunSummary) => void): Promise<() => Promise<void>> {
    let set = this.#flowRuns.get(flowId)
    const first = !set
    if (!set) {
      set = new Set()
      this.#flowRuns.set(flowId, set)
    }
    set.add(onRun)
    if (first) {
      try {
        await this.request({ type: "subscribe_flow_runs", flow_id: flowId })
      } catch (e) {
        this.#flowRuns.delete(flowId)
        throw e
      }
    }
    return async () => {
      const s = this.#flowRuns.get(flowId)
      s?.delete(onRun)
      if (s && s.size === 0) {
        this.#flowRuns.delete(flowId)
        if (this.#connected) await this.request({ type: "unsubscribe_flow_runs", flow_id: flowId }).catch(() => {})
      }
    }
  }

  /** Application-level round trip. */
  async ping(): Promise<number> {
    const t0 = Date.now()
    await this.request({ type: "ping" })
    return Date.now() - t0
  }

  /** Closes the session for good (no reconnect). */
  close(): void {
    this.#closedByUser = true
    this.#ws?.close(1000, "")
    this.#teardown(1000, "closed by the client")
  }

  // ---- internals shared with Flow and RunWatch -----------------------------------

  /** Sends a request with a fresh `id`; resolves with the reply, rejects on `error`. */
  request(msg: ClientMessage): Promise<ServerMessage> {
    const id = this.#nextId++
    const withId = { ...msg, id } as ClientMessage
    return new Promise((resolve, reject) => {
      if (!this.#connected || !this.#ws || this.#ws.readyState !== OPEN) {
        reject(new FlowhubError("closed", "not connected"))
        return
      }
      const timer = setTimeout(() => {
        this.#requests.delete(id)
        reject(new FlowhubError("timeout", `no reply to ${msg.type} within ${this.options.requestTimeoutMs} ms`))
      }, this.options.requestTimeoutMs)
      this.#requests.set(id, { resolve, reject, timer })
      this.flushChanges()
      this.#ws.send(JSON.stringify(withId))
    })
  }

  /** Sends a message that has no reply (presence). Dropped while disconnected. */
  sendMessage(msg: ClientMessage): boolean {
    if (!this.#connected || !this.#ws || this.#ws.readyState !== OPEN) return false
    this.flushChanges()
    this.#ws.send(JSON.stringify(msg))
    return true
  }

  sendBinary(bytes: Uint8Array): boolean {
    if (!this.#connected || !this.#ws || this.#ws.readyState !== OPEN) return false
    this.flushChanges()
    this.#ws.send(bytes)
    return true
  }

  /**
   * Queues one local change of a flow for a change frame. The changes queued in one
   * task go out together, in order, as one frame per flow (at most the hub's frame
   * limit) at the end of the task, or before anything else this client sends, so the
   * socket's order is the order of the calls: a burst of edits costs the hub one
   * frame, one apply and one store write instead of one each. False while
   * disconnected (the change stays pending; the next subscribe resends it).
   */
  queueChanges(flow: Flow, change: Uint8Array): boolean {
    if (!this.#connected || !this.#ws || this.#ws.readyState !== OPEN) return false
    let box = this.#outbox.get(flow.flowId)
    // Room for the frame header (2 bytes + the flow id) under the hub's limit.
    const limit = (this.#welcome?.limits.max_frame_bytes ?? 1 << 20) - 2 - flow.flowId.length
    if (box && box.bytes + change.length > limit) {
      this.flushChanges()
      box = undefined
    }
    if (!box) {
      box = { flow, changes: [], bytes: 0 }
      this.#outbox.set(flow.flowId, box)
    }
    box.changes.push(change)
    box.bytes += change.length
    if (!this.#outboxScheduled) {
      this.#outboxScheduled = true
      queueMicrotask(() => this.flushChanges())
    }
    return true
  }

  /** Sends the queued changes now (see `queueChanges`). */
  flushChanges(): void {
    this.#outboxScheduled = false
    if (this.#outbox.size === 0) return
    const boxes = [...this.#outbox.values()]
    this.#outbox.clear()
    if (!this.#connected || !this.#ws || this.#ws.readyState !== OPEN) return
    for (const box of boxes) {
      this.#ws.send(encodeChangesFrame(box.flow.flowId, box.changes))
      box.flow.countChangesSent(box.changes.length)
    }
  }

  forgetFlow(flowId: string) {
    this.#flows.delete(flowId)
  }

  forgetRun(runId: string) {
    this.#runs.delete(runId)
  }

  // ---- connection ----------------------------------------------------------------

  async #open(): Promise<void> {
    if (this.#connecting) return this.#connecting
    this.#connecting = this.#openOnce().finally(() => (this.#connecting = undefined))
    return this.#connecting
  }

  async #openOnce(): Promise<void> {
    const tok = typeof this.options.token === "function" ? await this.options.token() : this.options.token
    const ws = new this.#WebSocket(wsUrl(this.options.url, tok))
    ws.binaryType = "arraybuffer"
    this.#ws = ws
    await new Promise<void>((resolve, reject) => {
      let settled = false
      const fail = (err: FlowhubError) => {
        if (!settled) {
          settled = true
          reject(err)
        }
      }
      ws.onerror = () => fail(new FlowhubError("closed", "connection failed (refused, or 401 for a bad token)"))
      ws.onclose = (ev) => {
        fail(new FlowhubError("closed", `connection closed (${ev.code} ${ev.reason})`))
        this.#onClose(ws, ev.code, ev.reason)
      }
      ws.onmessage = (ev) => {
        if (!settled && typeof ev.data === "string") {
          const msg = JSON.parse(ev.data) as ServerMessage
          if (msg.type === "welcome") {
            settled = true
            this.#welcome = msg
            this.#connected = true
            resolve()
            return
          }
        }
        this.#onMessage(ev.data)
      }
    })
    this.#attempt = 0
    // The hub welcomes unprompted; `hello` checks the protocol version explicitly. When
    // the unprompted welcome already names our version, the check cannot fail: send
    // hello (it names this client) without waiting a round trip for its answer.
    const hello = this.request({ type: "hello", protocol: PROTOCOL_VERSION, client: this.options.client ?? "flowhub-js/0.1" })
    if (this.#welcome?.protocol === PROTOCOL_VERSION) {
      hello.then((reply) => reply.type === "welcome" && (this.#welcome = reply)).catch(() => {})
    } else {
      const reply = await hello
      if (reply.type === "welcome") this.#welcome = reply
    }
    this.emit("welcome", this.welcome)
    await this.#resubscribeAll()
  }

  async #resubscribeAll() {
    const flows = [...this.#flows.values()].filter((f) => !f.subscribed)
    const runs = [...this.#runs.values()]
    const feeds = [...this.#flowRuns.keys()]
    await Promise.all([
      ...flows.map((f) => this.#subscribeFlow(f).catch((e) => f.failSubscription(e))),
      ...runs.map((r) => this.#subscribeRun(r).catch((e) => this.emit("error", e))),
      ...feeds.map((flowId) =>
        this.request({ type: "subscribe_flow_runs", flow_id: flowId }).catch((e) => this.emit("error", e)),
      ),
    ])
  }

  async #subscribeFlow(flow: Flow) {
    flow.beforeSubscribe()
    // Edits whose ack may have been lost with an earlier connection (or a flow the hub
    // closed): the hub acks those it stores; the fresh sync resends the others.
    const pending = flow.pendingChanges().slice(0, MAX_PENDING_HASHES)
    const msg: ClientMessage = { type: "subscribe_flow", flow_id: flow.flowId }
    if (pending.length > 0) msg.pending = pending
    if (this.options.stream) msg.stream = true
    const reply = await this.request(msg)
    if (reply.type !== "flow_state") throw new FlowhubError("bad_request", `unexpected reply ${reply.type}`)
    flow.onFlowState(reply.role, reply.heads, reply.stream === true)
  }

  async #subscribeRun(watch: RunWatch) {
    const reply = await this.request({ type: "subscribe_run", run_id: watch.runId, since_seq: watch.lastSeq })
    if (reply.type !== "run_state") throw new FlowhubError("bad_request", `unexpected reply ${reply.type}`)
    watch.onRunState(reply.run)
  }

  /**
   * After an `internal` error naming a flow the hub closed (or reset) the flow for this
   * session: subscribe again, once at a time per flow, with backoff. Without this every
   * later sync frame would be answered `internal` too.
   */
  #resubscribeSoon(flow: Flow, attempt = 0) {
    if (flow.resubscribing && attempt === 0) return
    flow.resubscribing = true
    const delay = Math.min(5000, 100 * 2 ** attempt)
    setTimeout(() => {
      if (this.#flows.get(flow.flowId) !== flow || !this.#connected) {
        // Forgotten, or disconnected: the reconnect resubscribes every flow itself.
        flow.resubscribing = false
        return
      }
      flow.subscribed = false
      this.#subscribeFlow(flow).then(
        () => (flow.resubscribing = false),
        (e: FlowhubError) => {
          if (e.code === "internal" || e.code === "timeout" || e.code === "rate_limited") this.#resubscribeSoon(flow, attempt + 1)
          else {
            flow.resubscribing = false
            flow.failSubscription(e)
          }
        },
      )
    }, delay)
  }

  /** Resubscribes a run after `resume_from` (no gap: continues after `lastSeq`). */
  resumeRun(watch: RunWatch) {
    this.#subscribeRun(watch).catch((e) => this.emit("error", e))
  }

  #onClose(ws: WebSocketLike, code: number, reason: string) {
    if (ws !== this.#ws) return
    const wasConnected = this.#connected
    this.#teardown(code, reason)
    // A connect attempt that failed is handled by whoever awaited it (connect() rejects,
    // or the reconnect loop schedules the next attempt).
    if (!wasConnected) return
    const tokenIsStatic = typeof this.options.token === "string"
    if (this.#closedByUser || !this.options.reconnect || FATAL_CLOSE.has(code) || (code === 4001 && tokenIsStatic)) {
      return
    }
    this.#scheduleReconnect()
  }

  #teardown(code: number, reason: string) {
    const was = this.#connected
    this.#connected = false
    // Unsent changes stay pending: the next subscribe reports them and resyncs.
    this.#outbox.clear()
    for (const [, req] of this.#requests) {
      clearTimeout(req.timer)
      req.reject(new FlowhubError("closed", `connection closed (${code} ${reason})`))
    }
    this.#requests.clear()
    for (const flow of this.#flows.values()) flow.onDisconnect()
    if (was) this.emit("close", code, reason)
  }

  #scheduleReconnect() {
    this.#attempt += 1
    const delay = Math.min(5000, 100 * 2 ** Math.min(this.#attempt, 6)) * (0.5 + Math.random() / 2)
    this.emit("reconnecting", this.#attempt)
    setTimeout(() => {
      if (this.#closedByUser) return
      this.#open().catch(() => {
        if (!this.#closedByUser && !this.#connected) this.#scheduleReconnect()
      })
    }, delay)
  }

  #onMessage(data: unknown) {
    if (typeof data === "string") {
      let msg: ServerMessage
      try {
        msg = JSON.parse(data) as ServerMessage
      } catch {
        return
      }
      this.#onText(msg)
      return
    }
    const bytes = toBytes(data)
    if (!bytes) return
    let frame
    try {
      frame = decodeFrame(bytes)
    } catch {
      return
    }
    const flow = this.#flows.get(frame.flowId)
    if (!flow) return
    if (frame.kind === FRAME_FLOW_CHANGES) flow.onChanges(frame.payload)
    else if (frame.kind === FRAME_FLOW_SYNC) flow.onSyncMessage(frame.payload)
  }

  #onText(msg: ServerMessage) {
    const id = "id" in msg ? msg.id : undefined
    if (id !== undefined && id !== null) {
      const req = this.#requests.get(id)
      if (req) {
        this.#requests.delete(id)
        clearTimeout(req.timer)
        if (msg.type === "error") req.reject(new FlowhubError(msg.code, msg.message, msg.flow_id))
        else req.resolve(msg)
        return
      }
    }
    switch (msg.type) {
      case "welcome":
        this.#welcome = msg
        break
      case "ack":
        if (msg.flow_id && msg.changes) this.#flows.get(msg.flow_id)?.onAck(msg.changes)
        break
      case "presence_state":
        this.#flows.get(msg.flow_id)?.onPresenceState(msg.peers)
        break
      case "presence_diff":
        this.#flows.get(msg.flow_id)?.onPresenceDiff(msg.joined ?? [], msg.updated ?? [], msg.left ?? [])
        break
      case "run_event":
        this.#runs.get(msg.run_id)?.onEvent(msg.event)
        break
      case "resume_from":
        this.#runs.get(msg.run_id)?.onResumeFrom(msg.seq)
        break
      case "flow_run": {
        const set = this.#flowRuns.get(msg.flow_id)
        if (set) for (const cb of set) cb(msg.run)
        this.emit("flow_run", msg.flow_id, msg.run)
        break
      }
      case "error": {
        const err = new FlowhubError(msg.code, msg.message, msg.flow_id)
        const flow = msg.flow_id ? this.#flows.get(msg.flow_id) : undefined
        if (flow) {
          flow.onRefused(err)
          if (msg.code === "internal") this.#resubscribeSoon(flow)
        } else this.emit("error", err)
        break
      }
      default:
        break
    }
  }
}

/** A pending typed edit: a promise settled by the hub's verdict, plus what it did. */
export type PendingEdit<T extends EditOutcome = EditOutcome> = Promise<T> & T

type FlowEvents = {
  /** The document changed (`local`: by an edit of this client). */
  change: (info: { local: boolean }) => void
  /** Presence of the others changed. */
  presence: (others: PresenceEntry[]) => void
  /** The hub stored these changes of this client. */
  ack: (hashes: string[]) => void
  /** The hub refused a sync frame: pending edits were rejected and rolled back. */
  refused: (error: FlowhubError) => void
  /** An undo (or redo) ran; `skipped`: the parts others changed since, left alone. */
  undo: (info: { redo: boolean; skipped: Skipped[] }) => void
}

interface PendingChange {
  outcome: EditOutcome
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  resolve: (o: any) => void
  reject: (e: FlowhubError) => void
}

/** Binary frames one flow exchanged with the hub, by kind (counted since the Flow was made). */
export interface FlowFrameStats {
  /** Sync frames (0x01) received. */
  syncIn: number
  /** Change frames (0x02) received. */
  changesIn: number
  /** Sync frames (0x01) sent. */
  syncOut: number
  /** Change frames (0x02) sent (the local edits of one task share one frame). */
  changesOut: number
  /** Local changes sent in change frames (one per local edit while streaming). */
  changesSent: number
  /** Change frames whose changes lacked dependencies: the flow fell back to a sync round. */
  fallbacks: number
}

/** One subscribed flow: the local replica, typed edits, presence. */
export class Flow extends Emitter<FlowEvents> {
  readonly document = new FlowDocument()
  role: Role | undefined
  subscribed = false
  /** A resubscribe after an `internal` error is under way. */
  resubscribing = false
  /** Resolves once the replica holds the heads the hub announced in `flow_state`. */
  ready: Promise<void>
  #readyResolve!: () => void
  #readyReject!: (e: unknown) => void
  #isReady = false
  #target: string[] = []
  #sync: A.SyncState = A.initSyncState()
  /** The hub agreed to stream (this subscription's `flow_state.stream`). */
  #streaming = false
  /** The replica holds every head `flow_state` named: from then on everything it has
   *  was either sent to the hub already or is the hub's, so edits may be streamed. */
  #caughtUp = false
  #stats: FlowFrameStats = { syncIn: 0, changesIn: 0, syncOut: 0, changesOut: 0, changesSent: 0, fallbacks: 0 }
  #refreshTimer: ReturnType<typeof setTimeout> | undefined
  #pending = new Map<string, PendingChange>()
  #presence = new Map<string, PresenceEntry>()
  #own: { cursor?: Cursor; selection?: string[]; color?: string } = {}
  /** This user's undo/redo history (local typed edits only; kept across reconnects). */
  readonly undoStack = new UndoStack()

  constructor(
    private readonly client: FlowhubClient,
    readonly flowId: string,
  ) {
    super()
    this.ready = this.#newReady()
  }

  #newReady(): Promise<void> {
    const p = new Promise<void>((resolve, reject) => {
      this.#readyResolve = resolve
      this.#readyReject = reject
    })
    p.catch(() => {})
    return p
  }

  /** The flow as plain data (dangling edges omitted). */
  snapshot(): FlowSnapshot {
    return this.document.snapshot()
  }

  /** The ids of the flow's nodes (`FlowDocument.nodeIds`: no view needed). */
  nodeIds(): string[] {
    return this.document.nodeIds()
  }

  /** The Automerge document (read-only: edit through the typed methods). */
  get doc(): A.Doc<unknown> {
    return this.document.doc
  }

  heads(): string[] {
    return this.document.heads()
  }

  /** Whether the hub streams changes to this subscription (`flow_state.stream`). */
  get streaming(): boolean {
    return this.#streaming
  }

  /** Whether the replica caught up with the heads of this subscription's `flow_state`. */
  get caughtUp(): boolean {
    return this.#caughtUp
  }

  /** Binary frames exchanged with the hub so far, by kind. */
  frameStats(): FlowFrameStats {
    return { ...this.#stats }
  }

  /** Hashes of this client's changes the hub has not acknowledged yet. */
  pendingChanges(): string[] {
    return [...this.#pending.keys()]
  }

  /**
   * Waits at most `timeoutMs` for an edit's verdict: `"acked"` once the hub stored it,
   * `"unknown"` when the time runs out. Unknown is not a failure: the edit stays
   * pending (it may well be stored already), the sync keeps offering it, every
   * (re)subscribe asks the hub about it, and its promise still settles later. Rejects
   * only when the hub refused it.
   */
  async waitAcked(edit: PendingEdit, timeoutMs: number): Promise<"acked" | "unknown"> {
    let timer: ReturnType<typeof setTimeout> | undefined
    const timeout = new Promise<"unknown">((resolve) => (timer = setTimeout(() => resolve("unknown"), timeoutMs)))
    try {
      return await Promise.race([edit.then(() => "acked" as const), timeout])
    } finally {
      clearTimeout(timer)
    }
  }

  // ---- typed edits (mirroring the Rust FlowDoc API) -------------------------------
  // Each applies locally at once and returns a promise that resolves when the hub
  // stored the change and rejects (after a rollback) when the hub refuses it. An edit
  // that is invalid locally throws a FlowEditError synchronously.

  setName(name: string): PendingEdit {
    return this.#edits([{ op: "set_name", name }], (o) => ({ hash: o.hash }))
  }

  addNode(node: NewNode): PendingEdit {
    return this.#edits([{ op: "add_node", ...node }], (o) => ({ id: o.ids[0], hash: o.hash }))
  }

  moveNode(id: string, to: Position): PendingEdit {
    return this.#edits([{ op: "move_node", id, to }], (o) => ({ id, hash: o.hash }))
  }

  relabelNode(id: string, label: string): PendingEdit {
    return this.#edits([{ op: "relabel_node", id, label }], (o) => ({ id, hash: o.hash }))
  }

  setNodeKind(id: string, kind: string): PendingEdit {
    return this.#edits([{ op: "set_node_kind", id, kind }], (o) => ({ id, hash: o.hash }))
  }

  configureNode(id: string, key: string, value: JsonValue): PendingEdit {
    return this.#edits([{ op: "configure_node", id, key, value }], (o) => ({ id, hash: o.hash }))
  }

  unconfigureNode(id: string, key: string): PendingEdit {
    return this.#edits([{ op: "unconfigure_node", id, key }], (o) => ({ id, hash: o.hash }))
  }

  deleteNode(id: string): PendingEdit {
    return this.#edits([{ op: "delete_node", id }], (o) => ({ id, hash: o.hash }))
  }

  connect(source: Endpoint, target: Endpoint, id?: string): PendingEdit {
    return this.#edits([{ op: "connect", id, source, target }], (o) => ({ id: o.ids[0], hash: o.hash }))
  }

  disconnect(edgeId: string): PendingEdit {
    return this.#edits([{ op: "disconnect", id: edgeId }], (o) => ({ id: edgeId, hash: o.hash }))
  }

  /**
   * Applies typed edits given as data (the JSON shape of the Rust `Edit`) as ONE
   * change: all or nothing, sent, acked, refused and rolled back like any edit, and
   * one undo step. `ids[i]`: the id an `add_node`/`connect` used.
   */
  applyEdits(edits: Edit[]): PendingEdit<EditsOutcome> {
    return this.#edits(edits, (o) => o)
  }

  // ---- undo / redo (crdt/src/undo.rs semantics) ---------------------------------------
  // Every typed edit above is recorded, with its inverse computed against the flow
  // before it. Undo applies the inverse as a new change and reverts only what still
  // holds the value this user's edit left: what someone else changed since stays and
  // is reported in `skipped`. Remote edits are never recorded, so never undone.

  /** Whether there is a step of this user's to undo. */
  canUndo(): boolean {
    return this.undoStack.canUndo()
  }

  /** Whether there is an undone step to redo. */
  canRedo(): boolean {
    return this.undoStack.canRedo()
  }

  /**
   * Reverts this user's most recent step as one new change (sent and acked like any
   * edit; `change` is its pending edit, absent if every part was skipped). Undefined
   * when there is nothing to undo.
   */
  undo(): Undone<PendingEdit<EditsOutcome>> | undefined {
    const undone = this.undoStack.undo(this.#undoTarget)
    if (undone) this.emit("undo", { redo: false, skipped: undone.skipped })
    return undone
  }

  /** Reverts the most recent undo, with the same rules. */
  redo(): Undone<PendingEdit<EditsOutcome>> | undefined {
    const undone = this.undoStack.redo(this.#undoTarget)
    if (undone) this.emit("undo", { redo: true, skipped: undone.skipped })
    return undone
  }

  /**
   * Groups the edits made until `endUndoGroup` into one undo step (a drag's many
   * moves: one Ctrl+Z puts the node back where the drag started).
   */
  beginUndoGroup(): void {
    this.undoStack.beginGroup()
  }

  endUndoGroup(): void {
    this.undoStack.endGroup()
  }

  #undoTarget = {
    snapshot: () => this.document.snapshot(),
    applyEdits: (edits: Edit[]) => this.#edits(edits, (o) => o, false),
  }

  /**
   * A raw Automerge change, bypassing the typed edits' checks (the hub still validates
   * it). For tools and tests; the schema is in docs/PROTOCOL.md.
   */
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  unsafeChange(fn: (doc: any) => void): PendingEdit {
    return this.#apply((d) => {
      const before = new Set(A.getHeads(d.doc))
      d.doc = A.change(d.doc, fn)
      const hash = A.getHeads(d.doc).find((h) => !before.has(h))
      if (!hash) throw new Error("the change made no ops")
      return { hash }
    })
  }

  /**
   * A typed edit (`edits` as one change). Recorded for undo from what the edits
   * touched (`FlowDocument.applyEditsRecorded`), not from two whole snapshots.
   */
  #edits<T extends EditOutcome>(edits: readonly Edit[], shape: (o: EditsOutcome) => T, record = true): PendingEdit<T> {
    const { diff, ...outcome } = this.document.applyEditsRecorded(edits, record)
    if (diff) this.undoStack.push(diff, [outcome.hash])
    return this.#track(shape(outcome))
  }

  #apply<T extends EditOutcome>(edit: (d: FlowDocument) => T): PendingEdit<T> {
    return this.#track(edit(this.document))
  }

  /** Sends a local change and returns its pending edit (settled by the hub's verdict). */
  #track<T extends EditOutcome>(outcome: T): PendingEdit<T> {
    let entry!: PendingChange
    const p = new Promise<T>((resolve, reject) => {
      entry = { outcome, resolve, reject }
    })
    // The verdict is also reported by the `refused` event; a caller that ignores the
    // promise must not cause an unhandled rejection.
    p.catch(() => {})
    this.#pending.set(outcome.hash, entry)
    this.#sendEdit(outcome.hash)
    this.#armRefresh()
    this.emit("change", { local: true })
    return Object.assign(p, outcome)
  }

  // ---- presence ------------------------------------------------------------------

  /** Everyone else present in the flow (this session excluded). */
  others(): PresenceEntry[] {
    const me = this.client.connected ? this.client.sessionId : undefined
    return [...this.#presence.values()].filter((e) => e.session_id !== me)
  }

  /** Everyone present, this session included. */
  presence(): PresenceEntry[] {
    return [...this.#presence.values()]
  }

  /** Sends own cursor, selection and/or colour (fields left out keep their value). */
  setPresence(p: { cursor?: Cursor; selection?: string[]; color?: string }): void {
    this.#own = { ...this.#own, ...p }
    if (this.subscribed) this.client.sendMessage({ type: "presence", flow_id: this.flowId, ...p })
    // The hub never echoes a session's own presence back, so keep our own entry
    // current here: `presence()` (a people list, a colour) must show what we set.
    const me = this.client.connected ? this.client.sessionId : undefined
    const entry = me === undefined ? undefined : this.#presence.get(me)
    if (me !== undefined && entry) {
      this.#presence.set(me, { ...entry, ...p, selection: p.selection ?? entry.selection })
      if (p.color !== undefined) this.emit("presence", this.others())
    }
  }

  /** Leaves the flow. Pending edits stay in the hub's hands but are no longer tracked. */
  async close(): Promise<void> {
    this.client.forgetFlow(this.flowId)
    const wasSubscribed = this.subscribed
    this.subscribed = false
    clearTimeout(this.#refreshTimer)
    this.#refreshTimer = undefined
    for (const p of this.#pending.values()) p.reject(new FlowhubError("closed", "flow closed before the ack", this.flowId))
    this.#pending.clear()
    if (wasSubscribed) await this.client.request({ type: "unsubscribe_flow", flow_id: this.flowId }).catch(() => {})
  }

  // ---- protocol handlers (called by the client) ----------------------------------

  beforeSubscribe() {
    // One sync state per subscription, fresh on every subscribe (the hub's is too);
    // no streaming until this subscription's `flow_state` says so.
    this.#sync = A.initSyncState()
    this.#streaming = false
    this.#caughtUp = false
  }

  /** The hub's answer to `subscribe_flow`; `stream`: it agreed to stream changes. */
  onFlowState(role: Role, heads: string[], stream = false) {
    this.role = role
    this.subscribed = true
    this.#target = heads
    this.#streaming = stream
    this.#caughtUp = false
    this.#checkCaughtUp()
    this.#flush()
    this.#checkReady()
    if (this.#own.cursor || this.#own.selection || this.#own.color) {
      this.client.sendMessage({ type: "presence", flow_id: this.flowId, ...this.#own })
    }
  }

  failSubscription(e: unknown) {
    this.subscribed = false
    if (!this.#isReady) this.#readyReject(e)
  }

  onDisconnect() {
    this.subscribed = false
    this.#presence.clear()
  }

  /** A sync frame (0x01) from the hub: apply it and answer as the protocol says. */
  onSyncMessage(payload: Uint8Array) {
    if (!this.subscribed) return
    this.#stats.syncIn++
    const before = this.document.heads()
    this.#sync = this.document.receiveSyncMessage(this.#sync, payload)
    this.#flush()
    const changed = !sameHeads(before, this.document.heads())
    this.#checkCaughtUp()
    if (changed) this.emit("change", { local: false })
    this.#checkReady()
  }

  /**
   * A change frame (0x02) from the hub: new changes, applied as they are, with no
   * answer. The JS view is left to the next read (see `FlowDocument.receiveChanges`).
   * Should the changes lack dependencies (an ordered hub never causes that) or not
   * decode, the flow falls back to a fresh sync round, which fetches what is missing.
   */
  onChanges(payload: Uint8Array) {
    if (!this.subscribed) return
    this.#stats.changesIn++
    let changed = false
    let fallBack = false
    try {
      changed = this.document.receiveChanges(payload)
      fallBack = this.document.queued
    } catch {
      fallBack = true
    }
    if (fallBack) {
      this.#stats.fallbacks++
      this.#sync = A.initSyncState()
      this.#flush()
    }
    if (changed) {
      this.#armRefresh()
      this.#checkCaughtUp()
      this.emit("change", { local: false })
      this.#checkReady()
    }
  }

  /** A change frame of `n` local changes left (see `FlowhubClient.queueChanges`). */
  countChangesSent(n: number) {
    this.#stats.changesOut++
    this.#stats.changesSent += n
  }

  onAck(hashes: string[]) {
    const done: string[] = []
    for (const h of hashes) {
      const p = this.#pending.get(h)
      if (p) {
        this.#pending.delete(h)
        p.resolve(p.outcome)
        done.push(h)
      }
    }
    if (done.length > 0) this.emit("ack", done)
  }

  /**
   * The hub refused a sync frame: it stored nothing from it and reset its sync state.
   * Every pending edit is rejected, the replica is rebuilt without them (and without
   * anything built on them), and a fresh sync starts so the hub resends what we lack.
   */
  onRefused(err: FlowhubError) {
    const pending = [...this.#pending.values()]
    this.#pending.clear()
    if (pending.length > 0) {
      const drop = new Set(pending.map((p) => p.outcome.hash))
      const keep: A.Change[] = []
      for (const change of A.getAllChanges(this.document.doc)) {
        const decoded = A.decodeChange(change)
        if (drop.has(decoded.hash!) || decoded.deps.some((d) => drop.has(d))) {
          drop.add(decoded.hash!)
          continue
        }
        keep.push(change)
      }
      // A fresh actor: the dropped changes used sequence numbers of the old one.
      const [rebuilt] = A.applyChanges(A.init<unknown>(), keep)
      this.document.doc = rebuilt
      // Undo steps made of rolled-back changes describe edits that never happened.
      this.undoStack.forget(drop)
      for (const p of pending) p.reject(err)
    }
    this.#sync = A.initSyncState()
    this.emit("refused", err)
    if (pending.length > 0) this.emit("change", { local: false })
    this.#flush()
  }

  onPresenceState(peers: PresenceEntry[]) {
    this.#presence.clear()
    for (const p of peers) this.#presence.set(p.session_id, p)
    this.emit("presence", this.others())
  }

  onPresenceDiff(joined: PresenceEntry[], updated: PresenceEntry[], left: string[]) {
    for (const p of [...joined, ...updated]) this.#presence.set(p.session_id, p)
    for (const id of left) this.#presence.delete(id)
    this.emit("presence", this.others())
  }

  /** Sends whatever the sync protocol says the hub still needs. */
  #flush() {
    if (!this.subscribed) return
    for (let i = 0; i < MAX_SYNC_MESSAGES_PER_ROUND; i++) {
      const [sync, msg] = this.document.generateSyncMessage(this.#sync)
      this.#sync = sync
      if (!msg) break
      if (!this.client.sendBinary(encodeSyncFrame(this.flowId, msg))) break
      this.#stats.syncOut++
    }
  }

  /**
   * Sends a local edit (its one change, `hash`): as a change frame once the hub
   * streams and the replica caught up, through the sync protocol before.
   */
  #sendEdit(hash: string) {
    if (!this.subscribed) return
    if (this.#streaming && this.#caughtUp) {
      const change = this.document.changeBytes(hash)
      if (change) {
        this.client.queueChanges(this, change)
        return
      }
    }
    this.#flush()
  }

  #checkCaughtUp() {
    if (!this.#caughtUp && this.subscribed && this.document.hasHeads(this.#target)) this.#caughtUp = true
  }

  /** Brings the JS view up to date within VIEW_REFRESH_MS if nobody reads it before. */
  #armRefresh() {
    if (this.#refreshTimer !== undefined) return
    const timer = setTimeout(() => {
      this.#refreshTimer = undefined
      this.document.refresh()
    }, VIEW_REFRESH_MS)
    ;(timer as { unref?: () => void }).unref?.()
    this.#refreshTimer = timer
  }

  #checkReady() {
    if (this.#isReady || !this.subscribed) return
    if (this.document.hasHeads(this.#target) && this.document.isLoaded()) {
      this.#isReady = true
      this.#readyResolve()
    }
  }
}

function sameHeads(a: string[], b: string[]): boolean {
  return a.length === b.length && a.every((h, i) => h === b[i])
}

type RunEvents = {
  /** `run_state` (first subscribe and every resubscribe). */
  state: (run: RunSnapshot) => void
  /** A new event, in sequence order, never repeated. */
  event: (event: RunEvent, run: RunSnapshot) => void
  /** The hub asked to resume after `seq` (the watcher fell behind). */
  resume: (seq: number) => void
}

/** A watched run: the folded state and the event stream. */
export class RunWatch extends Emitter<RunEvents> {
  /** The last event seq received (events are delivered after it, never twice). */
  lastSeq: number
  /** The run's state: the last `run_state` with every later event folded in. */
  run: RunSnapshot | undefined

  constructor(
    private readonly client: FlowhubClient,
    readonly runId: string,
    sinceSeq: number,
  ) {
    super()
    this.lastSeq = sinceSeq
  }

  onRunState(run: RunSnapshot) {
    this.run = run
    this.emit("state", run)
  }

  onEvent(event: RunEvent) {
    if (event.seq <= this.lastSeq) return
    this.lastSeq = event.seq
    if (this.run && event.seq > this.run.lastSeq) applyRunEvent(this.run, event)
    this.emit("event", event, this.run!)
  }

  onResumeFrom(seq: number) {
    this.emit("resume", seq)
    // Everything up to `seq` was queued to us before this message and has arrived, so
    // `lastSeq` is `seq`; resubscribing after `lastSeq` leaves no gap either way.
    this.client.resumeRun(this)
  }

  /** Stops watching. */
  async close(): Promise<void> {
    this.client.forgetRun(this.runId)
    await this.client.request({ type: "unsubscribe_run", run_id: this.runId }).catch(() => {})
  }
}
