// The flow document on Automerge, in JavaScript: typed edits that write exactly what
// the Rust `FlowDoc` writes (crdt/src/edit.rs), and the same tolerant, deterministic
// read view (crdt/src/view.rs). Sans-IO: no sockets, no timers.
//
// Two rules keep JS replicas compatible with the hub's schema:
// - strings are written as Automerge *scalar* strings (`ImmutableString`), never as
//   collaborative text objects (the Automerge 3 default for JS strings);
// - coordinates are `f64` scalars written into a *new* position map per move.
//
// A replica starts from an empty document and never creates the root maps itself:
// the first sync from the hub brings the shared genesis change (crdt/src/genesis.rs).
//
// Remote changes can be applied without touching the JS view (`receiveChanges`):
// Automerge updates its immutable JS object by copying every object on the changed
// path, and the `nodes` map has a key per node, so an eager apply costs O(nodes) per
// remote edit. The view is brought up to date when it is read instead (`doc`,
// `snapshot`, the typed edits); `node(id)`, `heads()` and the sync functions read the
// Automerge backend and never need it.

import * as A from "@automerge/automerge"

/** Maximum lengths and depth of the schema (crdt/src/schema.rs, crdt/src/json.rs). */
export const MAX_KIND_LEN = 64
export const MAX_LABEL_LEN = 1000
export const MAX_ID_LEN = 128
export const MAX_CONFIG_DEPTH = 32

export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue }
export type JsonObject = { [key: string]: JsonValue }

export interface Position {
  x: number
  y: number
}

export interface Endpoint {
  node: string
  port: string
}

export interface FlowNode {
  id: string
  kind: string
  label: string
  position: Position
  config: JsonObject
}

export interface FlowEdge {
  id: string
  source: Endpoint
  target: Endpoint
}

export interface FlowSnapshot {
  name: string
  nodes: Record<string, FlowNode>
  edges: Record<string, FlowEdge>
}

export interface NewNode {
  /** Explicit id; generated (`n<actor>-<k>`) when omitted. */
  id?: string
  kind: string
  label: string
  position: Position
  config?: JsonObject
}

/**
 * One typed edit as data, the JSON shape of the Rust `Edit` (crdt/src/ops.rs):
 * tagged by `op`, snake_case. `FlowDocument.applyEdits` / `Flow.applyEdits` apply a
 * list as one change; diffs and undo speak the same vocabulary.
 */
export type Edit =
  | { op: "set_name"; name: string }
  | { op: "add_node"; id?: string; kind: string; label?: string; position: Position; config?: JsonObject }
  | { op: "move_node"; id: string; to: Position }
  | { op: "relabel_node"; id: string; label: string }
  | { op: "set_node_kind"; id: string; kind: string }
  | { op: "configure_node"; id: string; key: string; value: JsonValue }
  | { op: "unconfigure_node"; id: string; key: string }
  | { op: "delete_node"; id: string }
  | { op: "connect"; id?: string; source: Endpoint; target: Endpoint }
  | { op: "disconnect"; id: string }

/** The `op` names of `Edit`. */
export type EditOp = Edit["op"]

export type FlowEditErrorCode =
  | "not_loaded"
  | "invalid_edit"
  | "node_not_found"
  | "edge_not_found"
  | "duplicate_id"

/** A typed edit refused locally, before anything was written. */
export class FlowEditError extends Error {
  constructor(
    readonly code: FlowEditErrorCode,
    message: string,
  ) {
    super(message)
    this.name = "FlowEditError"
  }
}

// Loose view of the Automerge proxy: the schema is enforced by the typed edits.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnyDoc = any

/** `parent/key`, JSON-Pointer escaped like crdt/src/schema.rs `join`. */
function join(parent: string, key: string): string {
  const k = key.includes("/") || key.includes("~") ? key.replace(/~/g, "~0").replace(/\//g, "~1") : key
  return parent === "" ? k : `${parent}/${k}`
}

function charCount(s: string): number {
  let n = 0
  for (const _ of s) n++
  return n
}

function checkId(path: string, id: string) {
  const len = charCount(id)
  if (len === 0 || len > MAX_ID_LEN) throw new FlowEditError("invalid_edit", `${path}: id must be 1..=${MAX_ID_LEN} chars`)
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f-\u009f]/.test(id)) {
    throw new FlowEditError("invalid_edit", `${path}: id must not contain control characters`)
  }
}

function checkKind(path: string, kind: string) {
  if (!/^[a-z0-9_.-]{1,64}$/.test(kind)) {
    throw new FlowEditError("invalid_edit", `${path}: kind must be 1..=${MAX_KIND_LEN} chars of [a-z0-9_.-]`)
  }
}

function checkLabel(path: string, label: string) {
  if (typeof label !== "string") throw new FlowEditError("invalid_edit", `${path}: expected string`)
  if (charCount(label) > MAX_LABEL_LEN) {
    throw new FlowEditError("invalid_edit", `${path}: must be at most ${MAX_LABEL_LEN} chars`)
  }
}

function checkPosition(nodePath: string, p: Position) {
  const path = join(nodePath, "position")
  for (const k of ["x", "y"] as const) {
    if (typeof p?.[k] !== "number" || !Number.isFinite(p[k])) {
      throw new FlowEditError("invalid_edit", `${join(path, k)}: must be a finite number`)
    }
  }
}

/** Container nesting depth of a JSON value (scalars 0, `{}` 1). */
function jsonDepth(value: JsonValue): number {
  let max = 0
  const stack: [JsonValue, number][] = [[value, 0]]
  while (stack.length > 0) {
    const [v, depth] = stack.pop()!
    if (Array.isArray(v)) {
      max = Math.max(max, depth + 1)
      for (const c of v) stack.push([c, depth + 1])
    } else if (v !== null && typeof v === "object") {
      max = Math.max(max, depth + 1)
      for (const c of Object.values(v)) stack.push([c, depth + 1])
    } else {
      if (typeof v === "number" && !Number.isFinite(v)) {
        throw new FlowEditError("invalid_edit", "config numbers must be finite")
      }
      max = Math.max(max, depth)
    }
  }
  return max
}

function checkConfigValue(path: string, value: JsonValue, base: number) {
  if (base + jsonDepth(value) > MAX_CONFIG_DEPTH) {
    throw new FlowEditError("invalid_edit", `${path}: nested deeper than ${MAX_CONFIG_DEPTH} levels`)
  }
}

/** A JSON scalar as the Automerge value the Rust side writes (json.rs `json_scalar`). */
function scalar(value: JsonValue): unknown {
  if (typeof value === "string") return new A.ImmutableString(value)
  // Numbers stay plain: Automerge stores integral numbers as `int` and the others as
  // `f64`, like the Rust side (json.rs `number_scalar`). (`A.Int`/`A.Float64` wrappers
  // are only honoured by direct map assignment, not by list inserts.)
  return value // boolean, null
}

/**
 * Puts `value` at `key` of the Automerge map proxy `obj`, creating nested maps and
 * lists the way crdt/src/json.rs `put_value` does. Containers are created empty and
 * filled key by key: typed scalars (`Float64`, `Int`) are only honoured by direct
 * assignment, not inside object literals.
 */
function putValue(obj: AnyDoc, key: string, value: JsonValue) {
  if (Array.isArray(value)) {
    obj[key] = []
    const list = obj[key]
    value.forEach((item, i) => insertItem(list, i, item))
  } else if (value !== null && typeof value === "object") {
    obj[key] = {}
    const child = obj[key]
    for (const [k, v] of Object.entries(value)) putValue(child, k, v)
  } else {
    obj[key] = scalar(value)
  }
}

function insertItem(list: AnyDoc, index: number, value: JsonValue) {
  if (Array.isArray(value)) {
    A.insertAt(list, index, [])
    const child = list[index]
    value.forEach((item, i) => insertItem(child, i, item))
  } else if (value !== null && typeof value === "object") {
    A.insertAt(list, index, {})
    const child = list[index]
    for (const [k, v] of Object.entries(value)) putValue(child, k, v)
  } else {
    A.insertAt(list, index, scalar(value))
  }
}

function putPosition(node: AnyDoc, p: Position) {
  // A fresh map per move: concurrent moves conflict on the one `position` key and
  // every replica settles on one writer's whole (x, y) pair.
  node.position = {}
  node.position.x = new A.Float64(p.x)
  node.position.y = new A.Float64(p.y)
}

// ---- reading -------------------------------------------------------------------

function strOf(v: unknown): string | undefined {
  return A.isImmutableString(v) ? (v as A.ImmutableString).val : undefined
}

function numberOf(v: unknown): number | undefined {
  return typeof v === "number" && Number.isFinite(v) ? v : undefined
}

function isMap(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === "object" && !Array.isArray(v) && !(v instanceof Uint8Array) &&
    !A.isImmutableString(v) && !A.isCounter(v) && !(v instanceof Date)
}

/** Tolerant read of a config value (json.rs `read_value`). */
function readValue(v: unknown, depth: number): JsonValue | undefined {
  if (v === null) return null
  if (typeof v === "boolean") return v
  if (typeof v === "number") return Number.isFinite(v) ? v : undefined
  if (typeof v === "string") return v // a text object
  if (A.isImmutableString(v)) return (v as A.ImmutableString).val
  if (A.isCounter(v)) return (v as A.Counter).value
  if (v instanceof Date) return v.getTime()
  if (v instanceof Uint8Array) return undefined
  if (depth >= MAX_CONFIG_DEPTH) return undefined
  if (Array.isArray(v)) return v.map((item) => readValue(item, depth + 1) ?? null)
  if (isMap(v)) return readMap(v, depth + 1)
  return undefined
}

function readMap(obj: Record<string, unknown>, depth: number): JsonObject {
  const out: JsonObject = {}
  for (const key of Object.keys(obj).sort()) {
    const v = readValue(obj[key], depth)
    if (v !== undefined) out[key] = v
  }
  return out
}

function readNode(id: string, obj: Record<string, unknown>): FlowNode | undefined {
  const kind = strOf(obj.kind)
  const label = strOf(obj.label)
  const pos = obj.position
  const config = obj.config
  if (kind === undefined || label === undefined || !isMap(pos) || !isMap(config)) return undefined
  const x = numberOf(pos.x)
  const y = numberOf(pos.y)
  if (x === undefined || y === undefined) return undefined
  return { id, kind, label, position: { x, y }, config: readMap(config, 1) }
}

function readEdge(id: string, obj: Record<string, unknown>): FlowEdge | undefined {
  const source = strOf(obj.source)
  const sourcePort = strOf(obj.source_port)
  const target = strOf(obj.target)
  const targetPort = strOf(obj.target_port)
  if (source === undefined || sourcePort === undefined || target === undefined || targetPort === undefined) {
    return undefined
  }
  return { id, source: { node: source, port: sourcePort }, target: { node: target, port: targetPort } }
}

type Backend = ReturnType<typeof A.getBackend>
type FullValue = ReturnType<Backend["getWithType"]>

/** Containers deeper than this are not read from the backend (`readValue` drops them). */
const MAX_BACKEND_DEPTH = MAX_CONFIG_DEPTH + 4

/**
 * A value read from the Automerge backend, in the shape the JS view gives it (scalar
 * strings as `ImmutableString`, text as a string, counters as `Counter`). For reads
 * while the view lags: unlike `materialize`, these reads leave the patches the view
 * still has to apply alone.
 */
function valueOf(backend: Backend, full: FullValue, depth: number): unknown {
  if (!full) return undefined
  const [type, value] = full as [string, unknown]
  switch (type) {
    case "map": {
      if (depth >= MAX_BACKEND_DEPTH) return undefined
      const obj = value as string
      const out: Record<string, unknown> = {}
      for (const key of backend.keys(obj)) out[key] = valueOf(backend, backend.getWithType(obj, key), depth + 1)
      return out
    }
    case "list": {
      if (depth >= MAX_BACKEND_DEPTH) return undefined
      const obj = value as string
      const n = backend.length(obj)
      const out: unknown[] = []
      for (let i = 0; i < n; i++) out.push(valueOf(backend, backend.getWithType(obj, i), depth + 1))
      return out
    }
    case "text":
      return backend.text(value as string)
    case "str":
      return new A.ImmutableString(value as string)
    case "counter":
      return new A.Counter(value as number)
    case "unknown":
      return undefined
    default:
      // int, uint, f64, boolean, null, timestamp, bytes: as they are.
      return value
  }
}

function backendNumber(full: FullValue): number | undefined {
  if (!full || (full[0] !== "f64" && full[0] !== "int" && full[0] !== "uint")) return undefined
  return numberOf(full[1])
}

/** `readNode` on the backend (what `node(id)` gives while the view lags). */
function backendNode(backend: Backend, id: string): FlowNode | undefined {
  const nodes = backend.getWithType("_root", "nodes")
  if (nodes?.[0] !== "map") return undefined
  const node = backend.getWithType(nodes[1] as string, id)
  if (node?.[0] !== "map") return undefined
  const obj = node[1] as string
  const kind = backend.getWithType(obj, "kind")
  const label = backend.getWithType(obj, "label")
  const pos = backend.getWithType(obj, "position")
  const config = backend.getWithType(obj, "config")
  if (kind?.[0] !== "str" || label?.[0] !== "str" || pos?.[0] !== "map" || config?.[0] !== "map") return undefined
  const x = backendNumber(backend.getWithType(pos[1] as string, "x"))
  const y = backendNumber(backend.getWithType(pos[1] as string, "y"))
  if (x === undefined || y === undefined) return undefined
  const configObj = valueOf(backend, config, 1) as Record<string, unknown>
  return { id, kind: kind[1] as string, label: label[1] as string, position: { x, y }, config: readMap(configObj, 1) }
}

function sameHeads(a: string[], b: string[]): boolean {
  return a.length === b.length && a.every((h, i) => h === b[i])
}

/** The read view of a flow document: malformed entries skipped, dangling edges omitted. */
export function snapshotOf(doc: A.Doc<unknown>): FlowSnapshot {
  const d = doc as AnyDoc
  const name = strOf(d?.name) ?? ""
  const nodes: Record<string, FlowNode> = {}
  if (isMap(d?.nodes)) {
    for (const id of Object.keys(d.nodes).sort()) {
      const obj = d.nodes[id]
      if (!isMap(obj)) continue
      const node = readNode(id, obj)
      if (node) nodes[id] = node
    }
  }
  const edges: Record<string, FlowEdge> = {}
  if (isMap(d?.edges)) {
    for (const id of Object.keys(d.edges).sort()) {
      const obj = d.edges[id]
      if (!isMap(obj)) continue
      const edge = readEdge(id, obj)
      if (edge && nodes[edge.source.node] && nodes[edge.target.node]) edges[id] = edge
    }
  }
  return { name, nodes, edges }
}

function requireLoaded(d: AnyDoc) {
  if (!(isMap(d?.nodes) && isMap(d?.edges))) {
    throw new FlowEditError("not_loaded", "the flow has not been loaded from the hub yet (root maps missing)")
  }
}

function requireNode(d: AnyDoc, id: string): AnyDoc {
  requireLoaded(d)
  const obj = typeof id === "string" ? d.nodes[id] : undefined
  if (!isMap(obj)) throw new FlowEditError("node_not_found", `node not found: ${id}`)
  return obj
}

// ---- the replica -----------------------------------------------------------------

/** What one typed edit did. */
export interface EditOutcome {
  /** The id of the node or edge the edit created or concerns (absent for setName). */
  id?: string
  /** Hex hash of the one Automerge change the edit made. */
  hash: string
}

/** What `applyEdits` did: its one change and, per edit, the id an `add_node` or
 *  `connect` used (undefined for the other edits). */
export interface EditsOutcome extends EditOutcome {
  ids: (string | undefined)[]
}

/**
 * A flow's Automerge document with the typed edits of the Rust `FlowDoc`. Every edit
 * validates its input first and commits exactly one change (an empty change when the
 * edit changes nothing, like the Rust side), returning its hash.
 */
export class FlowDocument {
  #doc: A.Doc<unknown>
  /** The backend holds changes (from `receiveChanges`) that `#doc`'s JS view lacks. */
  #stale = false
  #nextId = 0

  constructor(doc?: A.Doc<unknown>) {
    this.#doc = doc ?? A.init()
  }

  /** The Automerge document, its JS view brought up to date first if it lags. */
  get doc(): A.Doc<unknown> {
    if (this.#stale) this.refresh()
    return this.#doc
  }

  set doc(doc: A.Doc<unknown>) {
    this.#doc = doc
    this.#stale = false
  }

  /** Whether the JS view lags behind the changes applied (until the next read). */
  get stale(): boolean {
    return this.#stale
  }

  /**
   * Brings the JS view up to date with every change applied so far, in one pass
   * however many changes arrived since the last read.
   */
  refresh(): void {
    if (!this.#stale) return
    // No new changes: Automerge just patches the view up to the backend's state.
    ;[this.#doc] = A.applyChanges(this.#doc, [])
    this.#stale = false
  }

  heads(): string[] {
    return A.getHeads(this.#doc)
  }

  /** Whether the document holds every one of these changes. */
  hasHeads(heads: string[]): boolean {
    return A.hasHeads(this.#doc, heads)
  }

  actorId(): string {
    return A.getActorId(this.#doc)
  }

  /**
   * Applies raw changes (one or more change chunks, concatenated, as in a change
   * frame) to the backend, leaving the JS view to the next read: the cost is the
   * changes', not the document's. Changes whose dependencies are missing are queued
   * (see `missingDeps`). Returns whether the heads moved. Throws on undecodable bytes.
   */
  receiveChanges(bytes: Uint8Array): boolean {
    const backend = A.getBackend(this.#doc)
    const before = backend.getHeads()
    backend.loadIncremental(bytes)
    const changed = !sameHeads(before, backend.getHeads())
    if (changed) this.#stale = true
    return changed
  }

  /** Hashes of changes that queued changes depend on and the document lacks. */
  missingDeps(): string[] {
    return A.getMissingDeps(this.#doc, [])
  }

  /** The raw bytes of one change of the document, by hash. */
  changeBytes(hash: string): Uint8Array | undefined {
    return A.getBackend(this.#doc).getChangeByHash(hash) ?? undefined
  }

  /** Applies an Automerge sync message; returns the new sync state. */
  receiveSyncMessage(sync: A.SyncState, message: Uint8Array): A.SyncState {
    // On the possibly stale document: Automerge patches the view once for both.
    const [doc, next] = A.receiveSyncMessage(this.#doc, sync, message)
    this.doc = doc
    return next
  }

  /** The next sync message for the peer of `sync`, if the protocol has one. */
  generateSyncMessage(sync: A.SyncState): [A.SyncState, Uint8Array | null] {
    return A.generateSyncMessage(this.#doc, sync)
  }

  /** Whether the genesis (root maps) has arrived from the hub. */
  isLoaded(): boolean {
    if (this.#stale) {
      const backend = A.getBackend(this.#doc)
      return backend.getWithType("_root", "nodes")?.[0] === "map" && backend.getWithType("_root", "edges")?.[0] === "map"
    }
    const d = this.#doc as AnyDoc
    return isMap(d.nodes) && isMap(d.edges)
  }

  snapshot(): FlowSnapshot {
    return snapshotOf(this.doc)
  }

  /** One node (read from the backend while the view lags: O(node), not O(flow)). */
  node(id: string): FlowNode | undefined {
    if (this.#stale) return backendNode(A.getBackend(this.#doc), id)
    const d = this.#doc as AnyDoc
    const obj = isMap(d.nodes) ? d.nodes[id] : undefined
    return isMap(obj) ? readNode(id, obj) : undefined
  }

  setName(name: string): EditOutcome {
    return { hash: this.applyEdits([{ op: "set_name", name }]).hash }
  }

  addNode(node: NewNode): EditOutcome {
    const { ids, hash } = this.applyEdits([{ op: "add_node", ...node }])
    return { id: ids[0], hash }
  }

  moveNode(id: string, to: Position): EditOutcome {
    return this.#one({ op: "move_node", id, to })
  }

  relabelNode(id: string, label: string): EditOutcome {
    return this.#one({ op: "relabel_node", id, label })
  }

  /** Changes a node's kind in place, keeping its label, position, config and edges. */
  setNodeKind(id: string, kind: string): EditOutcome {
    return this.#one({ op: "set_node_kind", id, kind })
  }

  /** Sets one key of a node's config to a (possibly nested) JSON value. */
  configureNode(id: string, key: string, value: JsonValue): EditOutcome {
    return this.#one({ op: "configure_node", id, key, value })
  }

  /** Removes one key of a node's config (a no-op if the key is absent). */
  unconfigureNode(id: string, key: string): EditOutcome {
    return this.#one({ op: "unconfigure_node", id, key })
  }

  /** Deletes a node and, in the same change, every edge touching it. */
  deleteNode(id: string): EditOutcome {
    return this.#one({ op: "delete_node", id })
  }

  connect(source: Endpoint, target: Endpoint, id?: string): EditOutcome {
    const { ids, hash } = this.applyEdits([{ op: "connect", id, source, target }])
    return { id: ids[0], hash }
  }

  disconnect(edgeId: string): EditOutcome {
    return this.#one({ op: "disconnect", id: edgeId })
  }

  /**
   * Applies `edits` in order as **one** change (the Rust `FlowDoc::apply_edits`): all
   * or nothing, each edit checked and refused exactly as the typed edit of the same
   * name. An empty list still commits one (empty) change, as every typed edit does.
   * `ids[i]`: the id an `add_node` or `connect` used (given or generated), else
   * undefined.
   */
  applyEdits(edits: readonly Edit[]): EditsOutcome {
    if (!Array.isArray(edits)) throw new FlowEditError("invalid_edit", "edits must be a list")
    let ids: (string | undefined)[] = []
    const hash = this.#edit((d) => {
      ids = edits.map((edit) => this.#applyOne(d, edit))
    })
    return { hash, ids }
  }

  #one(edit: Edit & { id: string }): EditOutcome {
    return { id: edit.id, hash: this.applyEdits([edit]).hash }
  }

  /** One edit inside a change (`d` the change's proxy: it sees the earlier edits). */
  #applyOne(d: AnyDoc, edit: Edit): string | undefined {
    switch (edit?.op) {
      case "set_name":
        checkLabel("name", edit.name)
        requireLoaded(d)
        d.name = new A.ImmutableString(edit.name)
        return undefined
      case "add_node": {
        requireLoaded(d)
        const nodes = d.nodes
        let id: string
        if (edit.id !== undefined && edit.id !== null) {
          id = edit.id
          checkId(join("nodes", id), id)
          if (nodes[id] !== undefined) throw new FlowEditError("duplicate_id", `duplicate id: ${id}`)
        } else {
          id = this.#freshId("n", nodes)
        }
        const path = join("nodes", id)
        const label = edit.label ?? ""
        checkKind(join(path, "kind"), edit.kind)
        checkLabel(join(path, "label"), label)
        checkPosition(path, edit.position)
        const config = edit.config ?? {}
        if (config === null || typeof config !== "object" || Array.isArray(config)) {
          throw new FlowEditError("invalid_edit", "config must be an object")
        }
        checkConfigValue(join(path, "config"), config, 0)
        nodes[id] = {}
        const obj = nodes[id]
        obj.kind = new A.ImmutableString(edit.kind)
        obj.label = new A.ImmutableString(label)
        putPosition(obj, edit.position)
        putValue(obj, "config", config)
        return id
      }
      case "move_node": {
        const node = requireNode(d, edit.id)
        checkPosition(join("nodes", edit.id), edit.to)
        putPosition(node, edit.to)
        return undefined
      }
      case "relabel_node": {
        const node = requireNode(d, edit.id)
        checkLabel(join(join("nodes", edit.id), "label"), edit.label)
        node.label = new A.ImmutableString(edit.label)
        return undefined
      }
      case "set_node_kind": {
        const node = requireNode(d, edit.id)
        checkKind(join(join("nodes", edit.id), "kind"), edit.kind)
        node.kind = new A.ImmutableString(edit.kind)
        return undefined
      }
      case "configure_node": {
        const node = requireNode(d, edit.id)
        const path = join(join("nodes", edit.id), "config")
        if (!isMap(node.config)) throw new FlowEditError("invalid_edit", `${path}: not a map`)
        checkConfigValue(join(path, edit.key), edit.value, 1)
        putValue(node.config, edit.key, edit.value)
        return undefined
      }
      case "unconfigure_node": {
        const node = requireNode(d, edit.id)
        if (!isMap(node.config)) throw new FlowEditError("invalid_edit", `${join(join("nodes", edit.id), "config")}: not a map`)
        // Deleting an absent key would still write a delete op: a no-op stays one.
        if (node.config[edit.key] !== undefined) delete node.config[edit.key]
        return undefined
      }
      case "delete_node": {
        requireNode(d, edit.id)
        const edges = d.edges
        for (const e of Object.keys(edges)) {
          const obj = edges[e]
          if (isMap(obj) && (strOf(obj.source) === edit.id || strOf(obj.target) === edit.id)) delete edges[e]
        }
        delete d.nodes[edit.id]
        return undefined
      }
      case "connect": {
        requireNode(d, edit.source?.node)
        requireNode(d, edit.target?.node)
        const edges = d.edges
        let edgeId: string
        if (edit.id !== undefined && edit.id !== null) {
          edgeId = edit.id
          checkId(join("edges", edgeId), edgeId)
          if (edges[edgeId] !== undefined) throw new FlowEditError("duplicate_id", `duplicate id: ${edgeId}`)
        } else {
          edgeId = this.#freshId("e", edges)
        }
        edges[edgeId] = {}
        const obj = edges[edgeId]
        obj.source = new A.ImmutableString(edit.source.node)
        obj.source_port = new A.ImmutableString(edit.source.port)
        obj.target = new A.ImmutableString(edit.target.node)
        obj.target_port = new A.ImmutableString(edit.target.port)
        return edgeId
      }
      case "disconnect": {
        requireLoaded(d)
        if (!isMap(d.edges[edit.id])) throw new FlowEditError("edge_not_found", `edge not found: ${edit.id}`)
        delete d.edges[edit.id]
        return undefined
      }
      default:
        throw new FlowEditError("invalid_edit", `unknown edit op: ${String((edit as { op?: unknown })?.op)}`)
    }
  }

  /** Ids of edges whose source or target node no longer exists. */
  danglingEdges(): string[] {
    if (!this.isLoaded()) return []
    const d = this.doc as AnyDoc
    const has = (n: string | undefined) => n !== undefined && d.nodes[n] !== undefined
    return Object.keys(d.edges).filter((e) => {
      const obj = d.edges[e]
      if (!isMap(obj)) return false
      const s = strOf(obj.source)
      const t = strOf(obj.target)
      return (s !== undefined && !has(s)) || (t !== undefined && !has(t))
    })
  }

  /** Deletes every dangling edge in one change; `undefined` when there is none. */
  repair(): EditOutcome | undefined {
    const dangling = this.danglingEdges()
    if (dangling.length === 0) return undefined
    return {
      hash: this.#edit((d) => {
        for (const e of dangling) delete d.edges[e]
      }),
    }
  }

  #freshId(prefix: string, map: Record<string, unknown>): string {
    const actor = this.actorId().slice(0, 12)
    for (;;) {
      this.#nextId += 1
      const id = `${prefix}${actor}-${this.#nextId}`
      if (map[id] === undefined) return id
    }
  }

  /** Runs `f` as exactly one change and returns its hash. */
  #edit(f: (d: AnyDoc) => void): string {
    const before = new Set(A.getHeads(this.doc))
    // Milliseconds, as the hub and the Rust client write (Automerge's default is
    // seconds): the flow's history groups changes into sessions by time.
    const time = Date.now()
    let next = A.change(this.doc, { time }, (d) => f(d as AnyDoc))
    if (A.getHeads(next).every((h) => before.has(h))) {
      // Automerge drops puts of the value already there; commit an empty change
      // anyway so that every typed edit yields exactly one change (to ack).
      next = A.emptyChange(next, { time })
    }
    this.doc = next
    const added = A.getHeads(next).filter((h) => !before.has(h))
    return added[0]
  }
}
