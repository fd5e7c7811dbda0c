// Structural diffs between two read views of a flow (crdt/src/diff.rs) and per-user
// undo/redo (crdt/src/undo.rs), in JavaScript. Same JSON shapes, same rules:
//
// Automerge has no undo: undo is a *new* change made of inverse typed edits. An
// `UndoStack` holds only its own user's steps, each as the diff (before -> after) of
// what the step did, so the inverse is exact (a move's old position, a deleted node
// whole with its edges, a config key's old value or its absence). Undo reverts a
// property only if it still holds the value the user's step left there; otherwise
// someone changed it since and their value stays: that part is reported as skipped
// (`changed_since`, `gone`, `taken`). Redo is the same the other way; a new local
// step clears redo. An undo whose every part is skipped commits nothing.
//
// Sans-IO: the stack reads a snapshot and applies edits through an `UndoTarget` (a
// `FlowDocument`, or a `Flow`'s edit path so the undo is sent and acked like any edit).

import type { Edit, EditOutcome, FlowEdge, FlowNode, FlowSnapshot, JsonValue, Position } from "./flow.js"

/** A value that changed from `old` to `new`. */
export interface Changed<T> {
  old: T
  new: T
}

/** One config key's change; an absent side: the key did not exist in that version. */
export interface ConfigChange {
  old?: JsonValue
  new?: JsonValue
}

/** How one node present in both versions differs. Only changed fields are set. */
export interface NodeChange {
  id: string
  kind?: Changed<string>
  label?: Changed<string>
  position?: Changed<Position>
  config?: Record<string, ConfigChange>
}

/** What differs between two versions of a flow (ids in order). */
export interface FlowDiff {
  name?: Changed<string>
  nodes_added: FlowNode[]
  nodes_removed: FlowNode[]
  nodes_changed: NodeChange[]
  edges_added: FlowEdge[]
  edges_removed: FlowEdge[]
  edges_changed: Changed<FlowEdge>[]
}

export type SkipReason = "changed_since" | "gone" | "taken"

/** A part of an undo or redo that was left alone: `name`, `nodes/<id>`,
 *  `nodes/<id>/position` (or `kind`, `label`, `config/<key>`), `edges/<id>`. */
export interface Skipped {
  path: string
  reason: SkipReason
}

/** What an undo or redo did. */
export interface Undone<C extends EditOutcome = EditOutcome> {
  /** The change it made; undefined if every part was skipped. */
  change?: C
  /** The parts it left alone, and why. */
  skipped: Skipped[]
}

/** Where an `UndoStack` reads the flow and applies the inverse (as one change). */
export interface UndoTarget<C extends EditOutcome = EditOutcome> {
  snapshot(): FlowSnapshot
  applyEdits(edits: Edit[]): C
}

// ---- equality --------------------------------------------------------------------

/** Exact: `0` and `-0` differ, as in JSON (diff.rs `same_position`). */
export function samePosition(a: Position, b: Position): boolean {
  return Object.is(a.x, b.x) && Object.is(a.y, b.y)
}

export function jsonEqual(a: JsonValue | undefined, b: JsonValue | undefined): boolean {
  if (a === b) return true
  if (a === null || b === null || a === undefined || b === undefined) return false
  if (typeof a !== "object" || typeof b !== "object") return false
  if (Array.isArray(a) || Array.isArray(b)) {
    if (!Array.isArray(a) || !Array.isArray(b) || a.length !== b.length) return false
    return a.every((v, i) => jsonEqual(v, b[i]))
  }
  const ka = Object.keys(a)
  if (ka.length !== Object.keys(b).length) return false
  return ka.every((k) => Object.prototype.hasOwnProperty.call(b, k) && jsonEqual(a[k], b[k]))
}

function sameEdge(a: FlowEdge, b: FlowEdge): boolean {
  return (
    a.id === b.id &&
    a.source.node === b.source.node &&
    a.source.port === b.source.port &&
    a.target.node === b.target.node &&
    a.target.port === b.target.port
  )
}

function sameNode(a: FlowNode, b: FlowNode): boolean {
  return (
    a.kind === b.kind &&
    a.label === b.label &&
    samePosition(a.position, b.position) &&
    jsonEqual(a.config, b.config)
  )
}

const byId = <T extends { id: string }>(a: T, b: T) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)

// ---- diffs -------------------------------------------------------------------------

export function emptyDiff(): FlowDiff {
  return { nodes_added: [], nodes_removed: [], nodes_changed: [], edges_added: [], edges_removed: [], edges_changed: [] }
}

export function isEmptyDiff(d: FlowDiff): boolean {
  return (
    d.name === undefined &&
    d.nodes_added.length === 0 &&
    d.nodes_removed.length === 0 &&
    d.nodes_changed.length === 0 &&
    d.edges_added.length === 0 &&
    d.edges_removed.length === 0 &&
    d.edges_changed.length === 0
  )
}

function nodeChangeEmpty(c: NodeChange): boolean {
  return !c.kind && !c.label && !c.position && Object.keys(c.config ?? {}).length === 0
}

/** Per-field differences of one node present in both versions (diff.rs `node_change`). */
export function nodeChange(old: FlowNode, now: FlowNode): NodeChange {
  const out: NodeChange = { id: now.id }
  if (old.kind !== now.kind) out.kind = { old: old.kind, new: now.kind }
  if (old.label !== now.label) out.label = { old: old.label, new: now.label }
  if (!samePosition(old.position, now.position)) out.position = { old: old.position, new: now.position }
  const config: Record<string, ConfigChange> = {}
  for (const key of Object.keys({ ...old.config, ...now.config }).sort()) {
    const has = (c: object) => Object.prototype.hasOwnProperty.call(c, key)
    const a = has(old.config) ? old.config[key] : undefined
    const b = has(now.config) ? now.config[key] : undefined
    if (jsonEqual(a, b)) continue
    const change: ConfigChange = {}
    if (a !== undefined) change.old = a
    if (b !== undefined) change.new = b
    config[key] = change
  }
  if (Object.keys(config).length > 0) out.config = config
  return out
}

/** What differs from `old` to `now` (diff.rs `FlowDiff::between`). */
export function diffSnapshots(old: FlowSnapshot, now: FlowSnapshot): FlowDiff {
  const diff = emptyDiff()
  if (old.name !== now.name) diff.name = { old: old.name, new: now.name }
  for (const [id, node] of Object.entries(old.nodes)) {
    const n = now.nodes[id]
    if (!n) diff.nodes_removed.push(node)
    else {
      const c = nodeChange(node, n)
      if (!nodeChangeEmpty(c)) diff.nodes_changed.push(c)
    }
  }
  for (const [id, node] of Object.entries(now.nodes)) if (!old.nodes[id]) diff.nodes_added.push(node)
  for (const [id, edge] of Object.entries(old.edges)) {
    const e = now.edges[id]
    if (!e) diff.edges_removed.push(edge)
    else if (!sameEdge(e, edge)) diff.edges_changed.push({ old: edge, new: e })
  }
  for (const [id, edge] of Object.entries(now.edges)) if (!old.edges[id]) diff.edges_added.push(edge)
  for (const list of [diff.nodes_added, diff.nodes_removed, diff.nodes_changed, diff.edges_added, diff.edges_removed]) {
    ;(list as { id: string }[]).sort(byId)
  }
  diff.edges_changed.sort((a, b) => byId(a.new, b.new))
  return diff
}

function invertChanged<T>(c: Changed<T> | undefined): Changed<T> | undefined {
  return c && { old: c.new, new: c.old }
}

function invertNodeChange(c: NodeChange): NodeChange {
  const out: NodeChange = { id: c.id }
  if (c.kind) out.kind = invertChanged(c.kind)
  if (c.label) out.label = invertChanged(c.label)
  if (c.position) out.position = invertChanged(c.position)
  if (c.config) {
    out.config = {}
    for (const [k, v] of Object.entries(c.config)) {
      const inv: ConfigChange = {}
      if (v.new !== undefined) inv.old = v.new
      if (v.old !== undefined) inv.new = v.old
      out.config[k] = inv
    }
  }
  return out
}

/** The diff from the second version back to the first. */
export function invertDiff(d: FlowDiff): FlowDiff {
  const out: FlowDiff = {
    nodes_added: d.nodes_removed,
    nodes_removed: d.nodes_added,
    nodes_changed: d.nodes_changed.map(invertNodeChange),
    edges_added: d.edges_removed,
    edges_removed: d.edges_added,
    edges_changed: d.edges_changed.map((c) => ({ old: c.new, new: c.old })),
  }
  if (d.name) out.name = invertChanged(d.name)
  return out
}

/**
 * Edits that turn the first version into the second (diff.rs `to_edits`), in this
 * order: disconnect removed and re-pointed edges, delete removed nodes, rename, add
 * nodes, change nodes (kind, label, position, config keys), connect added and
 * re-pointed edges.
 */
export function diffToEdits(d: FlowDiff): Edit[] {
  const edits: Edit[] = []
  for (const e of [...d.edges_removed, ...d.edges_changed.map((c) => c.old)]) edits.push({ op: "disconnect", id: e.id })
  for (const n of d.nodes_removed) edits.push({ op: "delete_node", id: n.id })
  if (d.name) edits.push({ op: "set_name", name: d.name.new })
  for (const n of d.nodes_added) {
    edits.push({ op: "add_node", id: n.id, kind: n.kind, label: n.label, position: { ...n.position }, config: n.config })
  }
  for (const c of d.nodes_changed) {
    if (c.kind) edits.push({ op: "set_node_kind", id: c.id, kind: c.kind.new })
    if (c.label) edits.push({ op: "relabel_node", id: c.id, label: c.label.new })
    if (c.position) edits.push({ op: "move_node", id: c.id, to: { ...c.position.new } })
    for (const [key, v] of Object.entries(c.config ?? {})) {
      edits.push(v.new !== undefined ? { op: "configure_node", id: c.id, key, value: v.new } : { op: "unconfigure_node", id: c.id, key })
    }
  }
  for (const e of [...d.edges_added, ...d.edges_changed.map((c) => c.new)]) {
    edits.push({ op: "connect", id: e.id, source: { ...e.source }, target: { ...e.target } })
  }
  return edits
}

// ---- composing (several local edits as one undo step, e.g. a drag) ----------------------

type NodeFx = { t: "add"; node: FlowNode } | { t: "rm"; node: FlowNode } | { t: "ch"; c: NodeChange }
type EdgeFx = { t: "add"; edge: FlowEdge } | { t: "rm"; edge: FlowEdge } | { t: "ch"; c: Changed<FlowEdge> }

function mergeField<T>(a: Changed<T> | undefined, b: Changed<T> | undefined, same: (x: T, y: T) => boolean) {
  if (!a) return b
  if (!b) return a
  return same(a.old, b.new) ? undefined : { old: a.old, new: b.new }
}

function mergeNodeChange(a: NodeChange, b: NodeChange): NodeChange {
  const out: NodeChange = { id: b.id }
  const kind = mergeField(a.kind, b.kind, (x, y) => x === y)
  const label = mergeField(a.label, b.label, (x, y) => x === y)
  const position = mergeField(a.position, b.position, samePosition)
  if (kind) out.kind = kind
  if (label) out.label = label
  if (position) out.position = position
  const config: Record<string, ConfigChange> = {}
  for (const key of Object.keys({ ...a.config, ...b.config }).sort()) {
    const ca = a.config?.[key]
    const cb = b.config?.[key]
    const old = ca ? ca.old : cb!.old
    const now = cb ? cb.new : ca!.new
    if (jsonEqual(old, now)) continue
    const c: ConfigChange = {}
    if (old !== undefined) c.old = old
    if (now !== undefined) c.new = now
    config[key] = c
  }
  if (Object.keys(config).length > 0) out.config = config
  return out
}

/** `node` with `c`'s fields set to their `new` (`side` "new") or `old` values. */
function withChange(node: FlowNode, c: NodeChange, side: "old" | "new"): FlowNode {
  const out: FlowNode = { ...node, position: { ...node.position }, config: { ...node.config } }
  if (c.kind) out.kind = c.kind[side]
  if (c.label) out.label = c.label[side]
  if (c.position) out.position = { ...c.position[side] }
  for (const [k, v] of Object.entries(c.config ?? {})) {
    const value = v[side]
    if (value === undefined) delete out.config[k]
    else out.config[k] = value
  }
  return out
}

function composeNode(a: NodeFx, b: NodeFx): NodeFx | undefined {
  if (a.t === "add" && b.t === "ch") return { t: "add", node: withChange(a.node, b.c, "new") }
  if (a.t === "add" && b.t === "rm") return undefined
  if (a.t === "ch" && b.t === "ch") {
    const c = mergeNodeChange(a.c, b.c)
    return nodeChangeEmpty(c) ? undefined : { t: "ch", c }
  }
  if (a.t === "ch" && b.t === "rm") return { t: "rm", node: withChange(b.node, a.c, "old") }
  if (a.t === "rm" && b.t === "add") {
    const c = nodeChange(a.node, b.node)
    return nodeChangeEmpty(c) ? undefined : { t: "ch", c }
  }
  return b // inconsistent (someone else's change in between): the later step wins
}

function composeEdge(a: EdgeFx, b: EdgeFx): EdgeFx | undefined {
  if (a.t === "add" && b.t === "rm") return undefined
  if (a.t === "add" && b.t === "ch") return { t: "add", edge: b.c.new }
  if (a.t === "ch" && b.t === "ch") return sameEdge(a.c.old, b.c.new) ? undefined : { t: "ch", c: { old: a.c.old, new: b.c.new } }
  if (a.t === "ch" && b.t === "rm") return { t: "rm", edge: a.c.old }
  if (a.t === "rm" && b.t === "add") return sameEdge(a.edge, b.edge) ? undefined : { t: "ch", c: { old: a.edge, new: b.edge } }
  return b
}

function nodeEffects(d: FlowDiff): Map<string, NodeFx> {
  const m = new Map<string, NodeFx>()
  for (const node of d.nodes_added) m.set(node.id, { t: "add", node })
  for (const node of d.nodes_removed) m.set(node.id, { t: "rm", node })
  for (const c of d.nodes_changed) m.set(c.id, { t: "ch", c })
  return m
}

function edgeEffects(d: FlowDiff): Map<string, EdgeFx> {
  const m = new Map<string, EdgeFx>()
  for (const edge of d.edges_added) m.set(edge.id, { t: "add", edge })
  for (const edge of d.edges_removed) m.set(edge.id, { t: "rm", edge })
  for (const c of d.edges_changed) m.set(c.old.id, { t: "ch", c })
  return m
}

/** The diff of doing `a` and then `b` (a step made of several edits). */
export function composeDiffs(a: FlowDiff, b: FlowDiff): FlowDiff {
  const out = emptyDiff()
  const name = mergeField(a.name, b.name, (x, y) => x === y)
  if (name) out.name = name
  const nodes = nodeEffects(a)
  for (const [id, fx] of nodeEffects(b)) {
    const prev = nodes.get(id)
    const next = prev ? composeNode(prev, fx) : fx
    if (next) nodes.set(id, next)
    else nodes.delete(id)
  }
  for (const fx of nodes.values()) {
    if (fx.t === "add") out.nodes_added.push(fx.node)
    else if (fx.t === "rm") out.nodes_removed.push(fx.node)
    else out.nodes_changed.push(fx.c)
  }
  const edges = edgeEffects(a)
  for (const [id, fx] of edgeEffects(b)) {
    const prev = edges.get(id)
    const next = prev ? composeEdge(prev, fx) : fx
    if (next) edges.set(id, next)
    else edges.delete(id)
  }
  for (const fx of edges.values()) {
    if (fx.t === "add") out.edges_added.push(fx.edge)
    else if (fx.t === "rm") out.edges_removed.push(fx.edge)
    else out.edges_changed.push(fx.c)
  }
  for (const list of [out.nodes_added, out.nodes_removed, out.nodes_changed, out.edges_added, out.edges_removed]) {
    ;(list as { id: string }[]).sort(byId)
  }
  out.edges_changed.sort((x, y) => byId(x.new, y.new))
  return out
}

// ---- rebasing an inverse onto the current flow (undo.rs `rebase`) -------------------

/**
 * The part of `wanted` (a diff whose `old` side is what the user's step left) that
 * still applies to `current`: each property whose current value is still that `old`
 * side. The rest is reported.
 */
export function rebase(wanted: FlowDiff, current: FlowSnapshot): { diff: FlowDiff; skipped: Skipped[] } {
  const skipped: Skipped[] = []
  const skip = (path: string, reason: SkipReason) => skipped.push({ path, reason })
  const out = emptyDiff()

  if (wanted.name) {
    if (current.name === wanted.name.old) out.name = wanted.name
    else skip("name", "changed_since")
  }

  for (const node of wanted.nodes_added) {
    if (current.nodes[node.id]) skip(`nodes/${node.id}`, "taken")
    else out.nodes_added.push(node)
  }

  for (const node of wanted.nodes_removed) {
    const path = `nodes/${node.id}`
    const now = current.nodes[node.id]
    if (!now) skip(path, "gone")
    else if (!sameNode(now, node)) skip(path, "changed_since")
    else {
      // Deleting the node takes its edges along: only those this revert removes
      // anyway, never a connection someone else made.
      const foreign = Object.values(current.edges).some(
        (e) => (e.source.node === node.id || e.target.node === node.id) && !wanted.edges_removed.some((w) => sameEdge(w, e)),
      )
      if (foreign) skip(path, "changed_since")
      else out.nodes_removed.push(node)
    }
  }

  for (const change of wanted.nodes_changed) {
    const now = current.nodes[change.id]
    if (!now) {
      skip(`nodes/${change.id}`, "gone")
      continue
    }
    const field = (name: string) => `nodes/${change.id}/${name}`
    const kept: NodeChange = { id: change.id }
    if (change.kind) {
      if (now.kind === change.kind.old) kept.kind = change.kind
      else skip(field("kind"), "changed_since")
    }
    if (change.label) {
      if (now.label === change.label.old) kept.label = change.label
      else skip(field("label"), "changed_since")
    }
    if (change.position) {
      if (samePosition(now.position, change.position.old)) kept.position = change.position
      else skip(field("position"), "changed_since")
    }
    for (const [key, value] of Object.entries(change.config ?? {})) {
      const has = Object.prototype.hasOwnProperty.call(now.config, key)
      if (jsonEqual(has ? now.config[key] : undefined, value.old)) (kept.config ??= {})[key] = value
      else skip(field(`config/${key}`), "changed_since")
    }
    if (!nodeChangeEmpty(kept)) out.nodes_changed.push(kept)
  }

  // Endpoints an edge to restore may use: nodes there now and not deleted by this
  // revert, or restored by it.
  const deleting = new Set(out.nodes_removed.map((n) => n.id))
  const endpointOk = (id: string) =>
    (current.nodes[id] !== undefined && !deleting.has(id)) || out.nodes_added.some((n) => n.id === id)

  for (const edge of wanted.edges_added) {
    const path = `edges/${edge.id}`
    if (current.edges[edge.id]) skip(path, "taken")
    else if (!endpointOk(edge.source.node) || !endpointOk(edge.target.node)) skip(path, "gone")
    else out.edges_added.push(edge)
  }

  for (const edge of wanted.edges_removed) {
    const now = current.edges[edge.id]
    if (!now) skip(`edges/${edge.id}`, "gone")
    else if (!sameEdge(now, edge)) skip(`edges/${edge.id}`, "changed_since")
    else out.edges_removed.push(edge)
  }

  for (const c of wanted.edges_changed) {
    const path = `edges/${c.old.id}`
    const now = current.edges[c.old.id]
    if (!now) skip(path, "gone")
    else if (!sameEdge(now, c.old)) skip(path, "changed_since")
    else if (!endpointOk(c.new.source.node) || !endpointOk(c.new.target.node)) skip(path, "gone")
    else out.edges_changed.push(c)
  }

  return { diff: out, skipped }
}

// ---- the stack ------------------------------------------------------------------------

/** How many steps an `UndoStack` remembers by default. */
export const DEFAULT_UNDO_LIMIT = 200

/** One recorded step: what it did, and the hashes of the changes that did it. */
export interface UndoEntry {
  diff: FlowDiff
  hashes: string[]
}

/** One user's undo and redo history for one flow (plain data: survives reconnects). */
export class UndoStack {
  #undo: UndoEntry[] = []
  #redo: UndoEntry[] = []
  #limit: number
  /** Depth of open groups; while open, recorded steps merge into `#group`. */
  #groupDepth = 0
  #group: UndoEntry | undefined

  constructor(limit = DEFAULT_UNDO_LIMIT) {
    this.#limit = Math.max(1, limit)
  }

  canUndo(): boolean {
    return this.#undo.length > 0
  }

  canRedo(): boolean {
    return this.#redo.length > 0
  }

  /** The undo steps, oldest first, and the redo steps, most recent last (copies). */
  entries(): { undo: UndoEntry[]; redo: UndoEntry[] } {
    return { undo: [...this.#undo], redo: [...this.#redo] }
  }

  clear(): void {
    this.#undo = []
    this.#redo = []
    this.#group = undefined
  }

  /**
   * Records a local step whose effect is known (the diff of the read view before ->
   * after it). An empty diff is ignored; any other clears redo. While a group is open
   * (`beginGroup`), steps merge into one.
   */
  push(diff: FlowDiff, hashes: string[] = []): void {
    if (isEmptyDiff(diff)) return
    this.#redo = []
    if (this.#groupDepth > 0 && this.#group && this.#undo[this.#undo.length - 1] === this.#group) {
      this.#group.diff = composeDiffs(this.#group.diff, diff)
      this.#group.hashes.push(...hashes)
      if (isEmptyDiff(this.#group.diff)) {
        // The group undid itself (dragged back to where it started).
        this.#undo.pop()
        this.#group = undefined
      }
      return
    }
    const entry = { diff, hashes: [...hashes] }
    if (this.#groupDepth > 0) this.#group = entry
    this.#pushUndo(entry)
  }

  /** Opens a group: the steps recorded until `endGroup` become one undo step. */
  beginGroup(): void {
    this.#groupDepth += 1
  }

  endGroup(): void {
    if (this.#groupDepth === 0) return
    this.#groupDepth -= 1
    if (this.#groupDepth === 0) this.#group = undefined
  }

  /** Drops the steps made of any of these changes (refused by the hub, rolled back). */
  forget(hashes: Set<string>): void {
    const keep = (e: UndoEntry) => !e.hashes.some((h) => hashes.has(h))
    this.#undo = this.#undo.filter(keep)
    this.#redo = this.#redo.filter(keep)
    if (this.#group && !keep(this.#group)) this.#group = undefined
  }

  /** Reverts the most recent step as one new change, leaving alone whatever others
   *  changed since. Undefined: nothing to undo. */
  undo<C extends EditOutcome>(target: UndoTarget<C>): Undone<C> | undefined {
    this.#closeGroups()
    const step = this.#undo.pop()
    if (!step) return undefined
    try {
      const [undone, done] = revert(target, step.diff)
      if (done) this.#redo.push(done)
      return undone
    } catch (e) {
      this.#undo.push(step)
      throw e
    }
  }

  /** Reverts the most recent undo, with the same rules. Undefined: nothing to redo. */
  redo<C extends EditOutcome>(target: UndoTarget<C>): Undone<C> | undefined {
    this.#closeGroups()
    const step = this.#redo.pop()
    if (!step) return undefined
    try {
      const [undone, done] = revert(target, step.diff)
      if (done) this.#pushUndo(done)
      return undone
    } catch (e) {
      this.#redo.push(step)
      throw e
    }
  }

  #closeGroups() {
    this.#groupDepth = 0
    this.#group = undefined
  }

  #pushUndo(entry: UndoEntry) {
    this.#undo.push(entry)
    if (this.#undo.length > this.#limit) this.#undo.shift()
  }
}

function revert<C extends EditOutcome>(target: UndoTarget<C>, step: FlowDiff): [Undone<C>, UndoEntry | undefined] {
  const current = target.snapshot()
  const { diff, skipped } = rebase(invertDiff(step), current)
  if (isEmptyDiff(diff)) return [{ skipped }, undefined]
  const change = target.applyEdits(diffToEdits(diff))
  const done = diffSnapshots(current, target.snapshot())
  return [{ change, skipped }, isEmptyDiff(done) ? undefined : { diff: done, hashes: [change.hash] }]
}
