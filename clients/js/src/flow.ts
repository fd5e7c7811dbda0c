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

import { diffSnapshots, type FlowDiff } from "./undo.js"

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

type Backend = ReturnType<typeof A.getBackend>
type FullValue = ReturnType<Backend["getWithType"]>
type ObjId = string

/**
 * A JSON scalar as the Automerge value and datatype the Rust side writes (json.rs
 * `json_scalar`): strings as scalar strings, integral numbers as `int` and the others
 * as `f64` (json.rs `number_scalar`), booleans and null as they are. The same choice
 * Automerge's proxies make for a plain JS number.
 */
function scalarOf(value: JsonValue): [unknown, "str" | "int" | "f64" | "boolean" | "null"] {
  if (typeof value === "string") return [value, "str"]
  if (typeof value === "number") return [value, Number.isInteger(value) ? "int" : "f64"]
  if (typeof value === "boolean") return [value, "boolean"]
  return [null, "null"]
}

/** A JSON scalar as a list item (`A.insertAt` in a change: a scalar string, numbers
 *  plain, so integral ones become `int` and the others `f64`). */
function listScalar(value: JsonValue): unknown {
  if (typeof value === "string") return new A.ImmutableString(value)
  return value // number, boolean, null
}

/**
 * Puts `value` at `key` of the map `obj`, creating nested maps and lists the way
 * crdt/src/json.rs `put_value` does: containers are created empty and filled key by
 * key. Writes through the Automerge backend (no JS proxies, no view update): the ops
 * are those the proxies wrote for the same assignments.
 */
function putValue(b: Backend, obj: ObjId, key: string, value: JsonValue) {
  if (Array.isArray(value)) {
    const list = b.putObject(obj, key, [])
    value.forEach((item, i) => insertItem(b, list, i, item))
  } else if (value !== null && typeof value === "object") {
    const child = b.putObject(obj, key, {})
    for (const [k, v] of Object.entries(value)) putValue(b, child, k, v)
  } else {
    const [v, datatype] = scalarOf(value)
    b.put(obj, key, v as never, datatype)
  }
}

function insertItem(b: Backend, list: ObjId, index: number, value: JsonValue) {
  if (Array.isArray(value)) {
    const child = b.insertObject(list, index, [])
    value.forEach((item, i) => insertItem(b, child, i, item))
  } else if (value !== null && typeof value === "object") {
    const child = b.insertObject(list, index, {})
    for (const [k, v] of Object.entries(value)) putValue(b, child, k, v)
  } else {
    // What `A.insertAt(list, i, scalar)` does in a change (a one-value splice).
    b.spliceFromHydrate(list, index, 0, [listScalar(value)])
  }
}

function putPosition(b: Backend, node: ObjId, p: Position): ObjId {
  // A fresh map per move: concurrent moves conflict on the one `position` key and
  // every replica settles on one writer's whole (x, y) pair.
  const pos = b.putObject(node, "position", {})
  // `|| 0` as `new A.Float64(v)` does (-0 is written as 0, as it always was here).
  b.put(pos, "x", p.x || 0, "f64")
  b.put(pos, "y", p.y || 0, "f64")
  return pos
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

/** Containers deeper than this are not read from the backend (`readValue` drops them). */
const MAX_BACKEND_DEPTH = MAX_CONFIG_DEPTH + 4

/**
 * A value read from the Automerge backend, in the shape the JS view gives it (scalar
 * strings as `ImmutableString`, text as a string, counters as `Counter`). For reads
 * while the view lags: unlike `materialize`, these reads leave the patches the view
 * still has to apply alone.
 */
function valueOf(backend: Backend, full: FullValue, depth: number, objs?: ObjId[]): unknown {
  if (!full) return undefined
  const [type, value] = full as [string, unknown]
  switch (type) {
    case "map": {
      if (depth >= MAX_BACKEND_DEPTH) return undefined
      const obj = value as string
      objs?.push(obj)
      const out: Record<string, unknown> = {}
      for (const key of backend.keys(obj)) out[key] = valueOf(backend, backend.getWithType(obj, key), depth + 1, objs)
      return out
    }
    case "list": {
      if (depth >= MAX_BACKEND_DEPTH) return undefined
      const obj = value as string
      objs?.push(obj)
      const n = backend.length(obj)
      const out: unknown[] = []
      for (let i = 0; i < n; i++) out.push(valueOf(backend, backend.getWithType(obj, i), depth + 1, objs))
      return out
    }
    case "text":
      objs?.push(value as string)
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

/**
 * `readNode` on the backend (what `node(id)` gives while the view lags). `objs`
 * collects the objects the read looked into (the node's map, its position, its config
 * and everything nested), `nodes` is the root's nodes map if known.
 */
function backendNode(backend: Backend, id: string, objs?: ObjId[], nodes?: ObjId): FlowNode | undefined {
  if (nodes === undefined) {
    const n = backend.getWithType("_root", "nodes")
    if (n?.[0] !== "map") return undefined
    nodes = n[1] as ObjId
  }
  const node = backend.getWithType(nodes, id)
  if (node?.[0] !== "map") return undefined
  const obj = node[1] as string
  objs?.push(obj)
  const kind = backend.getWithType(obj, "kind")
  const label = backend.getWithType(obj, "label")
  const pos = backend.getWithType(obj, "position")
  const config = backend.getWithType(obj, "config")
  if (pos?.[0] === "map") objs?.push(pos[1] as string)
  if (kind?.[0] !== "str" || label?.[0] !== "str" || pos?.[0] !== "map" || config?.[0] !== "map") return undefined
  const x = backendNumber(backend.getWithType(pos[1] as string, "x"))
  const y = backendNumber(backend.getWithType(pos[1] as string, "y"))
  if (x === undefined || y === undefined) return undefined
  const configObj = valueOf(backend, config, 1, objs) as Record<string, unknown>
  return { id, kind: kind[1] as string, label: label[1] as string, position: { x, y }, config: readMap(configObj, 1) }
}

function copyJson(v: JsonValue): JsonValue {
  if (Array.isArray(v)) return v.map(copyJson)
  if (v !== null && typeof v === "object") {
    const out: JsonObject = {}
    for (const k in v) out[k] = copyJson(v[k])
    return out
  }
  return v
}

function copyNode(n: FlowNode): FlowNode {
  return { id: n.id, kind: n.kind, label: n.label, position: { x: n.position.x, y: n.position.y }, config: copyJson(n.config) as JsonObject }
}

/** Automerge's binary chunk header: magic bytes, then a checksum, a type and a length. */
const MAGIC = [0x85, 0x6f, 0x4a, 0x83]

/** The chunks of concatenated Automerge data (undefined if it does not parse). */
function splitChunks(bytes: Uint8Array): Uint8Array[] | undefined {
  const out: Uint8Array[] = []
  let off = 0
  while (off < bytes.length) {
    if (bytes.length < off + 9 || MAGIC.some((m, i) => bytes[off + i] !== m)) return undefined
    let len = 0
    let shift = 0
    let p = off + 9
    for (;;) {
      if (p >= bytes.length || shift > 35) return undefined
      const byte = bytes[p++]
      len += (byte & 0x7f) * 2 ** shift
      shift += 7
      if ((byte & 0x80) === 0) break
    }
    const end = p + len
    if (end > bytes.length) return undefined
    // Only changes (1) and compressed changes (2) say which objects they touch.
    if (bytes[off + 8] !== 1 && bytes[off + 8] !== 2) return undefined
    out.push(bytes.subarray(off, end))
    off = end
  }
  return out
}

/**
 * Nodes read from the backend while the view lags, kept until a change touches one of
 * the objects the read looked into (or the nodes map's entry for the id). A change
 * frame says which objects its ops touch, so a remote move costs one decode and the
 * next read of the other nodes costs nothing; reading a node from the backend is
 * some ten Automerge calls.
 */
class NodeCache {
  #nodes = new Map<string, FlowNode | undefined>()
  /** Object → the cached node whose read looked into it. */
  #owner = new Map<ObjId, string>()
  #objs = new Map<string, ObjId[]>()
  #nodesObj: ObjId | undefined

  read(b: Backend, id: string): FlowNode | undefined {
    if (this.#nodes.has(id)) return this.#nodes.get(id)
    if (this.#nodesObj === undefined) {
      const n = b.getWithType("_root", "nodes")
      if (n?.[0] !== "map") return undefined // not loaded: nothing to cache
      this.#nodesObj = n[1] as ObjId
    }
    const objs: ObjId[] = []
    const node = backendNode(b, id, objs, this.#nodesObj)
    this.#nodes.set(id, node)
    this.#objs.set(id, objs)
    for (const o of objs) this.#owner.set(o, id)
    return node
  }

  /**
   * A local `move_node` of a node read before as `before` wrote a new position map
   * `pos`: the node is `before` at the new position (nothing else of it changed, and
   * the local put superseded every value the key had), so it stays cached.
   */
  moved(id: string, before: FlowNode, to: Position, pos: ObjId) {
    const objs = this.#objs.get(id)
    if (this.#nodes.get(id) !== before || !objs || objs.length < 2) return this.forget(id)
    // objs[0] is the node's map, objs[1] its position map (see `backendNode`).
    this.#owner.delete(objs[1])
    objs[1] = pos
    this.#owner.set(pos, id)
    this.#nodes.set(id, { ...before, position: { x: to.x || 0, y: to.y || 0 } })
  }

  /**
   * A remote change that is exactly a move (a new `position` map on a cached node, then
   * its `x` and `y`, as `move_node` writes them) keeps the node cached at the new
   * position, so an editor that reads the node on every remote move does not pay for a
   * read from the backend (some ten Automerge calls) each time. One call checks that the
   * new map is the position the backend now shows: a concurrent move may win instead.
   * Its `x` and `y` are the change's (the map is new: no other change can have written
   * it, and changes queued for missing dependencies clear the whole cache). Anything
   * else: `false`, and the caller forgets what the ops touch.
   */
  #remoteMove(b: Backend, change: A.DecodedChange): boolean {
    const ops = change.ops
    if (ops.length !== 3) return false
    const [make, ...sets] = ops
    if (make.action !== "makeMap" || make.key !== "position") return false
    const id = this.#owner.get(make.obj)
    const node = id === undefined ? undefined : this.#nodes.get(id)
    const objs = id === undefined ? undefined : this.#objs.get(id)
    if (id === undefined || !node || !objs || objs[0] !== make.obj) return false
    const pos = `${change.startOp}@${change.actor}`
    const at: { x?: number; y?: number } = {}
    for (const op of sets) {
      const v = opNumber(op)
      if (v === undefined || op.obj !== pos || (op.key !== "x" && op.key !== "y") || at[op.key] !== undefined) return false
      at[op.key] = v
    }
    // `moved` writes -0 as 0, as local moves store it; a raw -0 is read from the backend.
    if (at.x === undefined || at.y === undefined || Object.is(at.x, -0) || Object.is(at.y, -0)) return false
    const shown = b.getWithType(make.obj, "position")
    if (shown?.[0] !== "map" || shown[1] !== pos) return false
    this.moved(id, node, { x: at.x, y: at.y }, pos)
    return true
  }

  forget(id: string) {
    if (!this.#nodes.delete(id)) return
    for (const o of this.#objs.get(id) ?? []) if (this.#owner.get(o) === id) this.#owner.delete(o)
    this.#objs.delete(id)
  }

  clear() {
    this.#nodes.clear()
    this.#owner.clear()
    this.#objs.clear()
    this.#nodesObj = undefined
  }

  /**
   * Forgets what the changes in `bytes` (change chunks, now applied to `b`) may have
   * changed; a lone remote move updates its node's entry instead (see `#remoteMove`).
   */
  changed(b: Backend, bytes: Uint8Array) {
    if (this.#nodes.size === 0) {
      this.#nodesObj = undefined
      return
    }
    const chunks = splitChunks(bytes)
    if (!chunks) return this.clear()
    for (const chunk of chunks) {
      let change
      try {
        change = A.decodeChange(chunk)
      } catch {
        return this.clear()
      }
      if (chunks.length === 1 && this.#remoteMove(b, change)) return
      for (const op of change.ops) {
        if (op.obj === "_root") {
          if (op.key === "nodes") return this.clear()
        } else if (op.obj === this.#nodesObj) {
          if (typeof op.key === "string") this.forget(op.key)
        } else {
          const owner = this.#owner.get(op.obj)
          if (owner !== undefined) this.forget(owner)
        }
      }
    }
  }
}

/** A decoded `set` op's value, if it is a number the read view takes (`backendNumber`). */
function opNumber(op: A.DecodedChange["ops"][number]): number | undefined {
  const d = op.datatype
  if (op.action !== "set" || (d !== "float64" && d !== "int" && d !== "uint")) return undefined
  return numberOf(op.value)
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0))
  let off = 0
  for (const p of parts) {
    out.set(p, off)
    off += p.length
  }
  return out
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

/** The root's `nodes` and `edges` maps, or a `not_loaded` error. */
function requireLoaded(b: Backend): { nodes: ObjId; edges: ObjId } {
  const nodes = b.getWithType("_root", "nodes")
  const edges = b.getWithType("_root", "edges")
  if (nodes?.[0] !== "map" || edges?.[0] !== "map") {
    throw new FlowEditError("not_loaded", "the flow has not been loaded from the hub yet (root maps missing)")
  }
  return { nodes: nodes[1] as ObjId, edges: edges[1] as ObjId }
}

/** The node's map, or a `node_not_found` error. */
function requireNode(b: Backend, id: string): ObjId {
  const { nodes } = requireLoaded(b)
  const obj = typeof id === "string" ? b.getWithType(nodes, id) : undefined
  if (obj?.[0] !== "map") throw new FlowEditError("node_not_found", `node not found: ${id}`)
  return obj[1] as ObjId
}

/** `readEdge` on the backend. */
function backendEdge(b: Backend, edges: ObjId, id: string): FlowEdge | undefined {
  const obj = b.getWithType(edges, id)
  if (obj?.[0] !== "map") return undefined
  const o = obj[1] as ObjId
  const f = (k: string) => {
    const v = b.getWithType(o, k)
    return v?.[0] === "str" ? (v[1] as string) : undefined
  }
  const source = f("source")
  const sourcePort = f("source_port")
  const target = f("target")
  const targetPort = f("target_port")
  if (source === undefined || sourcePort === undefined || target === undefined || targetPort === undefined) return undefined
  return { id, source: { node: source, port: sourcePort }, target: { node: target, port: targetPort } }
}

/** Ids of the edges whose `source` or `target` is `node` (what `delete_node` deletes). */
function edgesTouching(b: Backend, edges: ObjId, node: string): string[] {
  const out: string[] = []
  for (const e of b.keys(edges)) {
    const obj = b.getWithType(edges, e)
    if (obj?.[0] !== "map") continue
    const s = b.getWithType(obj[1] as ObjId, "source")
    const t = b.getWithType(obj[1] as ObjId, "target")
    if ((s?.[0] === "str" && s[1] === node) || (t?.[0] === "str" && t[1] === node)) out.push(e)
  }
  return out
}

function backendName(b: Backend): string {
  const v = b.getWithType("_root", "name")
  return v?.[0] === "str" ? (v[1] as string) : ""
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
  /** The backend holds changes (received, or local edits) that `#doc`'s JS view lacks. */
  #stale = false
  /** `#doc`'s JS view was never brought up to date (a replica that started empty). */
  #viewEmpty: boolean
  /** Nodes read from the backend (see `NodeCache`). */
  #cache = new NodeCache()
  /** The backend may hold changes waiting for dependencies (applied later, unseen). */
  #queued = false
  /** The position map the last `move_node` wrote. */
  #movedTo: ObjId | undefined
  /** The backend as plain data while the view is not built yet (see `snapshot`). */
  #plain: { heads: string[]; root: unknown } | undefined
  #nextId = 0

  constructor(doc?: A.Doc<unknown>) {
    this.#doc = doc ?? A.init()
    this.#viewEmpty = doc === undefined
  }

  /** The Automerge document, its JS view brought up to date first if it lags. */
  get doc(): A.Doc<unknown> {
    if (this.#stale) this.refresh()
    return this.#doc
  }

  set doc(doc: A.Doc<unknown>) {
    this.#doc = doc
    this.#stale = false
    this.#viewEmpty = false
    this.#cache.clear()
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
    if (this.#viewEmpty && A.getMissingDeps(this.#doc, []).length === 0) {
      // The first view of a replica that started empty (the whole flow arrived at
      // once): loading the saved document builds it in one pass, several times
      // faster than patching an empty view op by op. Same actor, same changes.
      this.#doc = A.load(A.getBackend(this.#doc).save(), { actor: A.getActorId(this.#doc) })
    } else {
      // No new changes: Automerge just patches the view up to the backend's state.
      ;[this.#doc] = A.applyChanges(this.#doc, [])
    }
    this.#stale = false
    this.#viewEmpty = false
    this.#plain = undefined
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
    const wasQueued = this.#queued
    this.#queued = A.getMissingDeps(this.#doc, []).length > 0
    // Changes that waited for dependencies apply unseen by the cache: forget it all.
    if (wasQueued || this.#queued) this.#cache.clear()
    else if (changed) this.#cache.changed(backend, bytes)
    return changed
  }

  /** Whether changes received so far wait for dependencies (see `missingDeps`). */
  get queued(): boolean {
    return this.#queued
  }

  /** Hashes of changes that queued changes depend on and the document lacks. */
  missingDeps(): string[] {
    return A.getMissingDeps(this.#doc, [])
  }

  /** The raw bytes of one change of the document, by hash. */
  changeBytes(hash: string): Uint8Array | undefined {
    return A.getBackend(this.#doc).getChangeByHash(hash) ?? undefined
  }

  /**
   * Applies an Automerge sync message; returns the new sync state.
   *
   * A replica that holds nothing yet (a new client opening a flow) gets the whole
   * flow in the hub's first message with changes (the saved document, or all its
   * changes). Those go to the backend only, like a change frame, and the JS view is
   * built on the first read: `A.receiveSyncMessage` would patch the view op by op
   * first, which on a 1,000-node flow costs several times the load. The sync state
   * then starts over, so the next message tells the hub exactly what this replica has.
   */
  receiveSyncMessage(sync: A.SyncState, message: Uint8Array): A.SyncState {
    if (this.#viewEmpty && !this.#stale && A.getHeads(this.#doc).length === 0) {
      const { changes } = A.decodeSyncMessage(message)
      if (changes.length > 0) {
        const backend = A.getBackend(this.#doc)
        backend.loadIncremental(changes.length === 1 ? changes[0] : concat(changes))
        this.#cache.clear()
        if (backend.getHeads().length > 0) {
          this.#stale = true
          return A.initSyncState()
        }
      }
    }
    // A view never built cannot be patched (loading into an empty document, and
    // `materialize` in `snapshot`, move Automerge's patch cursor): build it first.
    if (this.#viewEmpty && this.#stale) this.refresh()
    // On the possibly stale document: Automerge patches the view once for both.
    const [doc, next] = A.receiveSyncMessage(this.#doc, sync, message)
    this.#doc = doc
    this.#stale = false
    this.#cache.clear()
    if (A.getHeads(doc).length > 0) this.#viewEmpty = false
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
    if (this.#stale && this.#viewEmpty) {
      // A replica that got the whole flow and has no view yet (a new client): the
      // first snapshot reads the backend as plain data, without building the view
      // (about two thirds of the cost); it serves until the flow changes, after which
      // the view is built once and kept up to date by patches.
      const heads = A.getHeads(this.#doc)
      if (this.#plain === undefined) this.#plain = { heads, root: A.getBackend(this.#doc).materialize("/") }
      if (sameHeads(this.#plain.heads, heads)) return snapshotOf(this.#plain.root as A.Doc<unknown>)
    }
    return snapshotOf(this.doc)
  }

  /**
   * The ids of the flow's nodes, sorted (those `snapshot()` shows, and any malformed
   * ones it skips). Read from the backend while the view lags: one call, not a view.
   */
  nodeIds(): string[] {
    if (this.#stale) {
      const backend = A.getBackend(this.#doc)
      const nodes = backend.getWithType("_root", "nodes")
      return nodes?.[0] === "map" ? backend.keys(nodes[1] as ObjId) : []
    }
    const d = this.#doc as AnyDoc
    return isMap(d.nodes) ? Object.keys(d.nodes).sort() : []
  }

  /** One node (read from the backend while the view lags: O(node), not O(flow)). */
  node(id: string): FlowNode | undefined {
    if (this.#stale) {
      const node = this.#cache.read(A.getBackend(this.#doc), id)
      return node && copyNode(node)
    }
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
    return this.applyEditsRecorded(edits, false)
  }

  /**
   * `applyEdits`, plus with `record` the edit's effect on the read view (`diff`: what
   * `diffSnapshots(snapshot before, snapshot after)` gives, for undo), worked out from
   * the nodes and edges the edits touch only, not from two whole snapshots.
   */
  applyEditsRecorded(edits: readonly Edit[], record: boolean): EditsOutcome & { diff?: FlowDiff } {
    if (!Array.isArray(edits)) throw new FlowEditError("invalid_edit", "edits must be a list")
    const b = A.getBackend(this.#doc)
    const read = (id: string) => this.#cache.read(b, id)
    const scope = record ? scopeBefore(b, edits, read) : undefined
    this.#movedTo = undefined
    let ids: (string | undefined)[] = []
    const hash = this.#edit((bk) => {
      ids = edits.map((edit) => this.#applyOne(bk, edit))
    })
    // The nodes these edits wrote (the others' reads stay valid). A lone move of a node
    // read before keeps its cached read, at the new position.
    const move = edits.length === 1 && edits[0].op === "move_node" ? edits[0] : undefined
    const before = move && scope?.nodes.get(move.id)
    if (move && before && this.#movedTo !== undefined) this.#cache.moved(move.id, before, move.to, this.#movedTo)
    else edits.forEach((e, i) => {
      if (e.op === "add_node" || e.op === "move_node" || e.op === "relabel_node" || e.op === "set_node_kind" ||
        e.op === "configure_node" || e.op === "unconfigure_node" || e.op === "delete_node") {
        this.#cache.forget(ids[i] ?? e.id!)
      }
    })
    if (!scope) return { hash, ids }
    return { hash, ids, diff: scopedDiff(b, scope, edits, ids, read) }
  }

  #one(edit: Edit & { id: string }): EditOutcome {
    return { id: edit.id, hash: this.applyEdits([edit]).hash }
  }

  /** One edit inside the open change (reads through the backend see the earlier edits). */
  #applyOne(b: Backend, edit: Edit): string | undefined {
    switch (edit?.op) {
      case "set_name":
        checkLabel("name", edit.name)
        requireLoaded(b)
        b.put("_root", "name", edit.name, "str")
        return undefined
      case "add_node": {
        const { nodes } = requireLoaded(b)
        let id: string
        if (edit.id !== undefined && edit.id !== null) {
          id = edit.id
          checkId(join("nodes", id), id)
          if (b.getWithType(nodes, id) != null) throw new FlowEditError("duplicate_id", `duplicate id: ${id}`)
        } else {
          id = this.#freshId(b, "n", nodes)
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
        const obj = b.putObject(nodes, id, {})
        b.put(obj, "kind", edit.kind, "str")
        b.put(obj, "label", label, "str")
        putPosition(b, obj, edit.position)
        putValue(b, obj, "config", config)
        return id
      }
      case "move_node": {
        const node = requireNode(b, edit.id)
        checkPosition(join("nodes", edit.id), edit.to)
        this.#movedTo = putPosition(b, node, edit.to)
        return undefined
      }
      case "relabel_node": {
        const node = requireNode(b, edit.id)
        checkLabel(join(join("nodes", edit.id), "label"), edit.label)
        b.put(node, "label", edit.label, "str")
        return undefined
      }
      case "set_node_kind": {
        const node = requireNode(b, edit.id)
        checkKind(join(join("nodes", edit.id), "kind"), edit.kind)
        b.put(node, "kind", edit.kind, "str")
        return undefined
      }
      case "configure_node": {
        const node = requireNode(b, edit.id)
        const path = join(join("nodes", edit.id), "config")
        const config = b.getWithType(node, "config")
        if (config?.[0] !== "map") throw new FlowEditError("invalid_edit", `${path}: not a map`)
        checkConfigValue(join(path, edit.key), edit.value, 1)
        putValue(b, config[1] as ObjId, edit.key, edit.value)
        return undefined
      }
      case "unconfigure_node": {
        const node = requireNode(b, edit.id)
        const config = b.getWithType(node, "config")
        if (config?.[0] !== "map") throw new FlowEditError("invalid_edit", `${join(join("nodes", edit.id), "config")}: not a map`)
        // Deleting an absent key would still write a delete op: a no-op stays one.
        if (b.getWithType(config[1] as ObjId, edit.key) != null) b.delete(config[1] as ObjId, edit.key)
        return undefined
      }
      case "delete_node": {
        requireNode(b, edit.id)
        const { nodes, edges } = requireLoaded(b)
        for (const e of edgesTouching(b, edges, edit.id)) b.delete(edges, e)
        b.delete(nodes, edit.id)
        return undefined
      }
      case "connect": {
        requireNode(b, edit.source?.node)
        requireNode(b, edit.target?.node)
        const { edges } = requireLoaded(b)
        let edgeId: string
        if (edit.id !== undefined && edit.id !== null) {
          edgeId = edit.id
          checkId(join("edges", edgeId), edgeId)
          if (b.getWithType(edges, edgeId) != null) throw new FlowEditError("duplicate_id", `duplicate id: ${edgeId}`)
        } else {
          edgeId = this.#freshId(b, "e", edges)
        }
        const obj = b.putObject(edges, edgeId, {})
        b.put(obj, "source", edit.source.node, "str")
        b.put(obj, "source_port", edit.source.port, "str")
        b.put(obj, "target", edit.target.node, "str")
        b.put(obj, "target_port", edit.target.port, "str")
        return edgeId
      }
      case "disconnect": {
        const { edges } = requireLoaded(b)
        if (b.getWithType(edges, edit.id)?.[0] !== "map") throw new FlowEditError("edge_not_found", `edge not found: ${edit.id}`)
        b.delete(edges, edit.id)
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
      hash: this.#edit((b) => {
        const { edges } = requireLoaded(b)
        for (const e of dangling) b.delete(edges, e)
      }),
    }
  }

  #freshId(b: Backend, prefix: string, map: ObjId): string {
    const actor = this.actorId().slice(0, 12)
    for (;;) {
      this.#nextId += 1
      const id = `${prefix}${actor}-${this.#nextId}`
      if (b.getWithType(map, id) == null) return id
    }
  }

  /**
   * Runs `f` on the Automerge backend as exactly one change and returns its hash. The
   * ops go straight to the backend (what `A.change`'s proxies would write, without the
   * proxies) and the JS view is left to the next read, like a received change: a
   * local edit costs its ops and the commit, not an update of the view.
   */
  #edit(f: (b: Backend) => void): string {
    const b = A.getBackend(this.#doc)
    // Milliseconds, as the hub and the Rust client write (Automerge's default is
    // seconds): the flow's history groups changes into sessions by time.
    const time = Date.now()
    try {
      f(b)
    } catch (e) {
      b.rollback()
      throw e
    }
    // Automerge drops puts of the value already there; commit an empty change anyway
    // so that every typed edit yields exactly one change (to ack).
    const hash = b.commit(null, time) ?? b.emptyChange(null, time)
    this.#stale = true
    return hash
  }
}

// ---- the effect of edits on the read view (for undo), from what they touch ---------

/** The part of the flow a list of edits can change, read before they are applied. */
interface Scope {
  /** The name before, if an edit sets it. */
  name?: string
  /** Nodes the edits name, as `snapshot()` shows them before (undefined: absent). */
  nodes: Map<string, FlowNode | undefined>
  /** Edges the edits name or delete, read before whatever their endpoints. */
  edges: Map<string, FlowEdge | undefined>
}

function scopeBefore(b: Backend, edits: readonly Edit[], read: (id: string) => FlowNode | undefined): Scope {
  const scope: Scope = { nodes: new Map(), edges: new Map() }
  const root = (k: string) => {
    const v = b.getWithType("_root", k)
    return v?.[0] === "map" ? (v[1] as ObjId) : undefined
  }
  const nodes = root("nodes")
  const edges = root("edges")
  const node = (id: unknown) => {
    if (typeof id === "string" && !scope.nodes.has(id)) scope.nodes.set(id, read(id))
  }
  const edge = (id: unknown) => {
    if (typeof id === "string" && !scope.edges.has(id)) scope.edges.set(id, edges === undefined ? undefined : backendEdge(b, edges, id))
  }
  for (const e of edits) {
    switch (e?.op) {
      case "set_name":
        if (scope.name === undefined) scope.name = backendName(b)
        break
      case "add_node":
      case "move_node":
      case "relabel_node":
      case "set_node_kind":
      case "configure_node":
      case "unconfigure_node":
        node(e.id)
        break
      case "delete_node":
        node(e.id)
        if (edges !== undefined && nodes !== undefined && typeof e.id === "string") {
          for (const id of edgesTouching(b, edges, e.id)) edge(id)
        }
        break
      case "connect":
      case "disconnect":
        edge(e.id)
        break
    }
  }
  return scope
}

/**
 * `diffSnapshots(before, after)` of the whole flow, computed on the scope only: the
 * edits changed nothing outside it, except which edges show (an edge shows only while
 * both its endpoints are valid nodes), so the edges of every node that appeared or
 * disappeared join the scope.
 */
function scopedDiff(
  b: Backend,
  scope: Scope,
  edits: readonly Edit[],
  ids: (string | undefined)[],
  read: (id: string) => FlowNode | undefined,
): FlowDiff {
  const nodesAfter = new Map<string, FlowNode | undefined>()
  const edgesAfter = new Map<string, FlowEdge | undefined>()
  const nodes = b.getWithType("_root", "nodes")
  const edgesV = b.getWithType("_root", "edges")
  const edgesObj = edgesV?.[0] === "map" ? (edgesV[1] as ObjId) : undefined
  // Generated ids were absent before.
  edits.forEach((e, i) => {
    const id = ids[i]
    if (id === undefined) return
    if (e.op === "add_node" && !scope.nodes.has(id)) scope.nodes.set(id, undefined)
    if (e.op === "connect" && !scope.edges.has(id)) scope.edges.set(id, undefined)
  })
  for (const id of scope.nodes.keys()) nodesAfter.set(id, read(id))
  for (const id of scope.edges.keys()) edgesAfter.set(id, edgesObj === undefined ? undefined : backendEdge(b, edgesObj, id))
  // Nodes that appeared or disappeared: their edges may show or hide.
  if (edgesObj !== undefined && nodes?.[0] === "map") {
    for (const [id, before] of scope.nodes) {
      if ((before === undefined) === (nodesAfter.get(id) === undefined)) continue
      for (const e of edgesTouching(b, edgesObj, id)) {
        if (scope.edges.has(e)) continue
        // Not touched by the edits: the same before and after.
        const edge = backendEdge(b, edgesObj, e)
        scope.edges.set(e, edge)
        edgesAfter.set(e, edge)
      }
    }
  }
  // Whether an endpoint is a valid node: the scope's reads, else the (unchanged) flow.
  const outside = new Map<string, boolean>()
  const valid = (id: string, side: Map<string, FlowNode | undefined>) => {
    if (side.has(id)) return side.get(id) !== undefined
    let v = outside.get(id)
    if (v === undefined) {
      v = read(id) !== undefined
      outside.set(id, v)
    }
    return v
  }
  const view = (name: string, ns: Map<string, FlowNode | undefined>, es: Map<string, FlowEdge | undefined>): FlowSnapshot => {
    const snap: FlowSnapshot = { name, nodes: {}, edges: {} }
    for (const [id, n] of ns) if (n) snap.nodes[id] = n
    for (const [id, e] of es) if (e && valid(e.source.node, ns) && valid(e.target.node, ns)) snap.edges[id] = e
    return snap
  }
  const nameAfter = scope.name === undefined ? "" : backendName(b)
  return diffSnapshots(view(scope.name ?? "", scope.nodes, scope.edges), view(nameAfter, nodesAfter, edgesAfter))
}
