// The flowhub demo page: the flow as a canvas, co-edited live.
//
// Built by `npm run build:demo` in clients/js into hub/static/app.js (committed), so the
// hub serves it without an npm step. Plain DOM and SVG, no framework.
//
// URL: `/?flow=demo&token=<JWT>`; without a token, `/?name=Alice` (or a prompt) asks
// the hub's development endpoint for an editor token (only on a hub started with
// `flowhub demo` / `--demo`).

import { initializeWasm } from "@automerge/automerge"
import {
  FlowhubClient,
  FlowhubHttp,
  FlowEditError,
  versionRef,
  type EditSummary,
  type Flow,
  type FlowDiff,
  type FlowNode,
  type HistorySession,
  type NamedVersion,
  type NodeChange,
  type FlowSnapshot,
  type PresenceEntry,
  type RunEvent,
  type RunSnapshot,
  type RunWatch,
} from "@flowhub/client"

const NODE_W = 180
const NODE_H = 64
const SVG_NS = "http://www.w3.org/2000/svg"

const KIND_COLORS: Record<string, string> = {
  trigger: "#7b4bd6",
  action: "#3763d6",
  http: "#0f8ea8",
  filter: "#c26a12",
  transform: "#5b7a1f",
  decision: "#b8336a",
  delay: "#52606d",
}

interface Mark {
  kind: "move-sent" | "painted"
  node: string
  x: number
  y: number
  t: number
}

/** Test and debugging hooks (Playwright reads these). */
interface DemoHooks {
  client?: FlowhubClient
  flow?: Flow
  ready: boolean
  marks: Mark[]
  run?: RunSnapshot
  /** The diff shown on the canvas, if any. */
  diff?: FlowDiff
}

declare global {
  interface Window {
    flowhubDemo: DemoHooks
  }
}

const hooks: DemoHooks = { ready: false, marks: [] }
window.flowhubDemo = hooks

const $ = <T extends Element = HTMLElement>(sel: string) => document.querySelector(sel) as T
const now = () => performance.timeOrigin + performance.now()

const statusEl = $("#status")
const nameInput = $<HTMLInputElement>("#flow-name")
const peopleEl = $("#people")
const svg = $<SVGSVGElement>("#canvas")
const nodesLayer = $<SVGGElement>("#nodes")
const edgesLayer = $<SVGGElement>("#edges")
const cursorsEl = $("#cursors")
const wrap = $("#canvas-wrap")
const hint = $("#hint")
const runSummary = $("#run-summary")
const runLog = $("#run-log")

function setStatus(text: string, cls: "online" | "offline" | "") {
  statusEl.textContent = text
  statusEl.className = `status ${cls}`
}

function svgEl<K extends keyof SVGElementTagNameMap>(tag: K, attrs: Record<string, string | number> = {}) {
  const el = document.createElementNS(SVG_NS, tag)
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v))
  return el
}

function initials(name: string) {
  return (
    name
      .split(/\s+/)
      .filter(Boolean)
      .map((w) => w[0]!.toUpperCase())
      .slice(0, 2)
      .join("") || "?"
  )
}

// ---- auth ------------------------------------------------------------------------

async function askName(): Promise<string> {
  const dialog = $<HTMLDialogElement>("#join-dialog")
  const input = $<HTMLInputElement>("#join-name")
  dialog.showModal()
  return new Promise((resolve) => {
    $<HTMLFormElement>("#join-form").addEventListener("submit", () => resolve(input.value.trim() || "Guest"), { once: true })
  })
}

async function obtainToken(flowId: string): Promise<string> {
  const params = new URLSearchParams(location.search)
  const given = params.get("token")
  if (given) return given
  const name = params.get("name") ?? (await askName())
  const r = await fetch("/v1/dev/token", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ name, flow: flowId }),
  })
  if (!r.ok) throw new Error(`no token: the dev endpoint answered ${r.status} (it only exists on a hub started with "flowhub demo"; otherwise pass ?token=)`)
  const { token } = (await r.json()) as { token: string }
  params.delete("name")
  params.set("flow", flowId)
  params.set("token", token)
  history.replaceState(null, "", `?${params}`)
  return token
}

// ---- state ---------------------------------------------------------------------

let client: FlowhubClient
let http: FlowhubHttp
let flow: Flow
let token = ""
let flowId = "demo"
let selected: { node?: string; edge?: string } = {}
let connectFrom: string | undefined
let connectMode = false
let dragging: { id: string; dx: number; dy: number; moved: boolean } | undefined
let stepStatus = new Map<string, string>()
let runWatch: RunWatch | undefined
let renderQueued = false
const nodeEls = new Map<string, SVGGElement>()
const painted = new Map<string, string>()

function scheduleRender() {
  if (renderQueued) return
  renderQueued = true
  requestAnimationFrame(() => {
    renderQueued = false
    render()
  })
}

function canEdit() {
  return flow?.role === "editor" || flow?.role === "owner"
}

// ---- rendering -------------------------------------------------------------------

function nodeGroup(id: string): SVGGElement {
  let g = nodeEls.get(id)
  if (g) return g
  g = svgEl("g", { class: "node", "data-node-id": id })
  const remote = svgEl("rect", { class: "remote-select", x: -5, y: -5, width: NODE_W + 10, height: NODE_H + 10, visibility: "hidden" })
  const body = svgEl("rect", { class: "body", width: NODE_W, height: NODE_H })
  const bar = svgEl("path", { class: "kind-bar" })
  bar.setAttribute("d", `M0 10 a10 10 0 0 1 10 -10 h${NODE_W - 20} a10 10 0 0 1 10 10 v10 h-${NODE_W} z`)
  const kind = svgEl("text", { class: "kind", x: 10, y: 14 })
  const label = svgEl("text", { class: "label", x: 10, y: 42 })
  const state = svgEl("text", { class: "state", x: 10, y: 57 })
  const inPort = svgEl("circle", { class: "port in", cx: 0, cy: NODE_H / 2 + 8, r: 5 })
  const outPort = svgEl("circle", { class: "port out", cx: NODE_W, cy: NODE_H / 2 + 8, r: 5 })
  const tag = svgEl("g", { class: "remote-tag-g", visibility: "hidden" })
  const tagRect = svgEl("rect", { x: NODE_W - 70, y: -18, width: 72, height: 14, rx: 3 })
  const tagText = svgEl("text", { class: "remote-tag", x: NODE_W - 66, y: -8 })
  tag.append(tagRect, tagText)
  g.append(remote, body, bar, kind, label, state, inPort, outPort, tag)
  g.addEventListener("pointerdown", (ev) => onNodePointerDown(ev, id))
  g.addEventListener("dblclick", (ev) => {
    ev.stopPropagation()
    relabel(id)
  })
  nodesLayer.append(g)
  nodeEls.set(id, g)
  return g
}

function updateNode(node: FlowNode, remoteSel: Map<string, PresenceEntry>) {
  const g = nodeGroup(node.id)
  const { x, y } = node.position
  const key = `${x},${y}`
  if (g.dataset.pos !== key) {
    g.setAttribute("transform", `translate(${x} ${y})`)
    g.dataset.pos = key
    g.dataset.x = String(x)
    g.dataset.y = String(y)
    const prev = painted.get(node.id)
    painted.set(node.id, key)
    if (prev !== undefined && !(dragging && dragging.id === node.id)) {
      // A position from elsewhere: note when it reached the screen (after this frame).
      const mark: Mark = { kind: "painted", node: node.id, x, y, t: 0 }
      setTimeout(() => {
        mark.t = now()
        hooks.marks.push(mark)
      }, 0)
    }
  }
  const color = KIND_COLORS[node.kind] ?? "#52606d"
  const bar = g.querySelector<SVGPathElement>(".kind-bar")!
  bar.setAttribute("fill", color)
  g.querySelector(".kind")!.textContent = node.kind
  const label = g.querySelector(".label")!
  const shown = node.label.length > 22 ? `${node.label.slice(0, 21)}…` : node.label
  if (label.textContent !== shown) label.textContent = shown
  g.dataset.label = node.label
  g.dataset.kind = node.kind
  const status = stepStatus.get(node.id)
  g.dataset.runStatus = status ?? ""
  g.querySelector(".state")!.textContent = status ? status : node.id
  g.classList.toggle("run-running", status === "running" || status === "retrying")
  g.classList.toggle("run-succeeded", status === "succeeded")
  g.classList.toggle("run-failed", status === "failed")
  g.classList.toggle("selected", selected.node === node.id)
  g.classList.toggle("connect-source", connectFrom === node.id)
  const mark = diffMarkOf(node.id)
  g.classList.toggle("diff-added", mark === "added")
  g.classList.toggle("diff-changed", mark === "changed")
  if (mark) g.dataset.diff = mark
  else delete g.dataset.diff
  const by = remoteSel.get(node.id)
  const remote = g.querySelector<SVGRectElement>(".remote-select")!
  const tag = g.querySelector<SVGGElement>(".remote-tag-g")!
  if (by) {
    remote.setAttribute("visibility", "visible")
    remote.setAttribute("stroke", by.color)
    tag.setAttribute("visibility", "visible")
    tag.querySelector("rect")!.setAttribute("fill", by.color)
    tag.querySelector("text")!.textContent = by.name.slice(0, 11)
    g.dataset.selectedBy = by.name
  } else {
    remote.setAttribute("visibility", "hidden")
    tag.setAttribute("visibility", "hidden")
    delete g.dataset.selectedBy
  }
}

function edgePath(snap: FlowSnapshot, source: string, target: string): string | undefined {
  const s = snap.nodes[source]
  const t = snap.nodes[target]
  if (!s || !t) return undefined
  const x1 = s.position.x + NODE_W + 5
  const y1 = s.position.y + NODE_H / 2 + 8
  const x2 = t.position.x - 7
  const y2 = t.position.y + NODE_H / 2 + 8
  const dx = Math.max(40, Math.abs(x2 - x1) / 2)
  return `M${x1} ${y1} C${x1 + dx} ${y1} ${x2 - dx} ${y2} ${x2} ${y2}`
}

function render() {
  if (!flow) return
  const snap = flow.snapshot()
  const others = flow.others()
  const remoteSel = new Map<string, PresenceEntry>()
  for (const p of others) for (const id of p.selection) if (!remoteSel.has(id)) remoteSel.set(id, p)

  for (const node of Object.values(snap.nodes)) updateNode(node, remoteSel)
  for (const [id, g] of nodeEls) {
    if (!snap.nodes[id]) {
      g.remove()
      nodeEls.delete(id)
      painted.delete(id)
      if (selected.node === id) selected = {}
    }
  }

  const seen = new Set<string>()
  for (const edge of Object.values(snap.edges)) {
    seen.add(edge.id)
    let path = edgesLayer.querySelector<SVGPathElement>(`[data-edge-id="${CSS.escape(edge.id)}"]`)
    if (!path) {
      path = svgEl("path", { class: "edge", "data-edge-id": edge.id, "marker-end": "url(#arrow)" })
      path.addEventListener("pointerdown", (ev) => {
        ev.stopPropagation()
        select({ edge: edge.id })
      })
      edgesLayer.append(path)
    }
    const d = edgePath(snap, edge.source.node, edge.target.node)
    if (d && path.getAttribute("d") !== d) path.setAttribute("d", d)
    path.dataset.source = edge.source.node
    path.dataset.target = edge.target.node
    path.classList.toggle("selected", selected.edge === edge.id)
    const mark = diffEdgeMarkOf(edge.id)
    path.classList.toggle("diff-added", mark === "added")
    path.classList.toggle("diff-changed", mark === "changed")
    if (mark) path.dataset.diff = mark
    else delete path.dataset.diff
  }
  for (const path of [...edgesLayer.querySelectorAll<SVGPathElement>(".edge")]) {
    if (!seen.has(path.dataset.edgeId!)) path.remove()
  }

  if (document.activeElement !== nameInput) nameInput.value = snap.name
  renderGhosts(snap)
  renderUndo()
  renderPeople()
  renderCursors(others)
}

function renderUndo() {
  $<HTMLButtonElement>("#undo").disabled = !canEdit() || !flow.canUndo()
  $<HTMLButtonElement>("#redo").disabled = !canEdit() || !flow.canRedo()
}

function renderPeople() {
  const me = client.connected ? client.sessionId : ""
  const everyone = flow.presence()
  peopleEl.replaceChildren(
    ...everyone.map((p) => {
      const chip = document.createElement("span")
      chip.className = `person${p.session_id === me ? " me" : ""}`
      chip.dataset.userName = p.name
      const dot = document.createElement("span")
      dot.className = "dot"
      dot.style.background = p.color
      dot.textContent = initials(p.name)
      chip.append(dot, document.createTextNode(p.session_id === me ? `${p.name} (you)` : p.name))
      return chip
    }),
  )
}

function renderCursors(others: PresenceEntry[]) {
  const live = new Set<string>()
  for (const p of others) {
    if (!p.cursor) continue
    live.add(p.session_id)
    let el = cursorsEl.querySelector<HTMLElement>(`[data-session="${CSS.escape(p.session_id)}"]`)
    if (!el) {
      el = document.createElement("div")
      el.className = "cursor"
      el.dataset.session = p.session_id
      el.innerHTML = `<svg width="18" height="22" viewBox="0 0 18 22"><path d="M1 1 L1 18 L6 13 L10 21 L13 19.5 L9 12 L16 12 Z" stroke="#fff" stroke-width="1.5"/></svg><span class="name"></span>`
      cursorsEl.append(el)
    }
    el.querySelector("path")!.setAttribute("fill", p.color)
    const name = el.querySelector<HTMLElement>(".name")!
    name.textContent = p.name
    name.style.background = p.color
    el.dataset.userName = p.name
    el.dataset.color = p.color
    el.style.transform = `translate(${p.cursor.x}px, ${p.cursor.y}px)`
  }
  for (const el of [...cursorsEl.querySelectorAll<HTMLElement>(".cursor")]) {
    if (!live.has(el.dataset.session!)) el.remove()
  }
}

// ---- interaction -----------------------------------------------------------------

function canvasPoint(ev: { clientX: number; clientY: number }) {
  const r = svg.getBoundingClientRect()
  return { x: ev.clientX - r.left, y: ev.clientY - r.top }
}

function select(sel: { node?: string; edge?: string }) {
  selected = sel
  flow.setPresence({ selection: sel.node ? [sel.node] : [] })
  $<HTMLButtonElement>("#delete-selected").disabled = !canEdit() || !(sel.node || sel.edge)
  scheduleRender()
}

function showError(e: unknown) {
  hint.textContent = e instanceof FlowEditError || e instanceof Error ? e.message : String(e)
}

function onNodePointerDown(ev: PointerEvent, id: string) {
  ev.stopPropagation()
  if (connectMode) {
    if (!connectFrom) {
      connectFrom = id
      hint.textContent = "Now click the target node"
      scheduleRender()
    } else if (connectFrom !== id) {
      try {
        flow.connect({ node: connectFrom, port: "out" }, { node: id, port: "in" })
      } catch (e) {
        showError(e)
      }
      setConnectMode(false)
    }
    return
  }
  select({ node: id })
  if (!canEdit()) return
  const node = flow.snapshot().nodes[id]
  if (!node) return
  const p = canvasPoint(ev)
  dragging = { id, dx: p.x - node.position.x, dy: p.y - node.position.y, moved: false }
  // The drag's many moves are one undo step: Ctrl+Z puts the node back where it was.
  flow.beginUndoGroup()
  nodeEls.get(id)?.classList.add("dragging")
  ;(ev.target as Element).setPointerCapture?.(ev.pointerId)
}

let lastCursorSent = 0
let cursorTimer: ReturnType<typeof setTimeout> | undefined
let pendingCursor: { x: number; y: number } | undefined

function sendCursor(p: { x: number; y: number }) {
  pendingCursor = p
  const wait = 30 - (Date.now() - lastCursorSent)
  if (wait <= 0) {
    lastCursorSent = Date.now()
    flow.setPresence({ cursor: pendingCursor })
    pendingCursor = undefined
  } else if (!cursorTimer) {
    cursorTimer = setTimeout(() => {
      cursorTimer = undefined
      if (pendingCursor) sendCursor(pendingCursor)
    }, wait)
  }
}

function onPointerMove(ev: PointerEvent) {
  if (!flow) return
  const p = canvasPoint(ev)
  sendCursor({ x: Math.round(p.x), y: Math.round(p.y) })
  if (!dragging) return
  const x = Math.round(p.x - dragging.dx)
  const y = Math.round(p.y - dragging.dy)
  const node = flow.snapshot().nodes[dragging.id]
  if (!node || (node.position.x === x && node.position.y === y)) return
  dragging.moved = true
  hooks.marks.push({ kind: "move-sent", node: dragging.id, x, y, t: now() })
  try {
    flow.moveNode(dragging.id, { x, y })
  } catch (e) {
    showError(e)
  }
}

function onPointerUp() {
  if (!dragging) return
  nodeEls.get(dragging.id)?.classList.remove("dragging")
  dragging = undefined
  flow.endUndoGroup()
  scheduleRender()
}

/**
 * Undoes (or redoes) this user's last step. Only their own edits are on the stack, and
 * a property someone else changed since keeps their value: the hint says so.
 */
function undoRedo(redo: boolean) {
  if (!canEdit()) return
  if (dragging) onPointerUp()
  try {
    const done = redo ? flow.redo() : flow.undo()
    if (!done) return
    hint.textContent =
      done.skipped.length > 0
        ? `${redo ? "Redo" : "Undo"} left ${done.skipped.map((s) => s.path).join(", ")} alone: changed by someone else since`
        : ""
    if (selected.node && !flow.snapshot().nodes[selected.node]) select({})
  } catch (e) {
    showError(e)
  }
  scheduleRender()
}

function setConnectMode(on: boolean) {
  connectMode = on
  connectFrom = undefined
  $("#connect-mode").classList.toggle("active", on)
  hint.textContent = on ? "Click the source node" : ""
  scheduleRender()
}

let added = 0
function addNode() {
  const kind = $<HTMLSelectElement>("#new-kind").value
  const labelInput = $<HTMLInputElement>("#new-label")
  added += 1
  const label = labelInput.value.trim() || `${kind[0]!.toUpperCase()}${kind.slice(1)} ${added}`
  const x = Math.round(wrap.scrollLeft + 60 + ((added * 97) % 420))
  const y = Math.round(wrap.scrollTop + 440 + ((added * 53) % 160))
  try {
    const edit = flow.addNode({ kind, label, position: { x, y } })
    labelInput.value = ""
    select({ node: edit.id })
  } catch (e) {
    showError(e)
  }
}

/** Double-click on a node: a new label. */
function relabel(id: string) {
  const node = flow.snapshot().nodes[id]
  if (!node || !canEdit()) return
  const label = prompt("Label", node.label)?.trim()
  if (!label || label === node.label) return
  try {
    flow.relabelNode(id, label)
  } catch (e) {
    showError(e)
  }
}

function deleteSelected() {
  try {
    if (selected.node) flow.deleteNode(selected.node)
    else if (selected.edge) flow.disconnect(selected.edge)
    select({})
  } catch (e) {
    showError(e)
  }
}

// ---- runs -------------------------------------------------------------------------

function renderRun(run: RunSnapshot | undefined) {
  hooks.run = run
  stepStatus = new Map((run?.steps ?? []).map((s) => [s.nodeId, s.status]))
  if (!run) return
  runSummary.innerHTML = ""
  const badge = document.createElement("span")
  badge.className = `badge ${run.status}`
  badge.textContent = run.status
  runSummary.append(document.createTextNode(`${run.id} `), badge)
  runSummary.dataset.status = run.status
  runSummary.classList.remove("muted")
  scheduleRender()
}

function logEvent(e: RunEvent) {
  const li = document.createElement("li")
  li.className = `k-${e.type.replace(".", "-")}${e.level ? ` lvl-${e.level}` : ""}`
  const label = e.node_id ? (flow.snapshot().nodes[e.node_id]?.label ?? e.node_id) : ""
  const text =
    e.type === "log" ? `${label ? `[${label}] ` : ""}${e.message ?? ""}` : `${e.type}${label ? ` ${label}` : ""}${e.error ? `: ${e.error}` : ""}${e.type === "run.finished" ? ` (${e.status ?? "succeeded"})` : ""}`
  li.innerHTML = `<span class="seq"></span><span class="msg"></span>`
  li.querySelector(".seq")!.textContent = String(e.seq)
  li.querySelector(".msg")!.textContent = text
  runLog.append(li)
  li.scrollIntoView({ block: "nearest" })
}

async function watchRun(runId: string) {
  if (runWatch?.runId === runId) return
  const previous = runWatch
  runWatch = undefined
  await previous?.close()
  runLog.replaceChildren()
  try {
    runWatch = await client.watchRun(runId, {
      onState: (run) => renderRun(structuredClone(run)),
      onEvent: (e, run) => {
        logEvent(e)
        renderRun(run)
      },
    })
    renderRun(runWatch.run)
  } catch (e) {
    showError(e)
  }
}

async function simulateRun() {
  const failAtSelection = $<HTMLInputElement>("#fail-selected").checked
  const r = await fetch("/v1/dev/simulate-run", {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
    body: JSON.stringify({ flow_id: flowId, fail_node: failAtSelection ? selected.node : undefined }),
  })
  if (!r.ok) return showError(new Error(`simulate-run: ${r.status}`))
  const { run_id } = (await r.json()) as { run_id: string }
  await watchRun(run_id)
}

// ---- history and diff ------------------------------------------------------------------
//
// The panel lists the flow's named versions and editing sessions (GET …/versions and
// …/history), newest first, under a "Now" entry. Picking two entries diffs the older
// against the newer (GET …/diff): live nodes are outlined green (added) or amber
// (changed), removed nodes are drawn ghosted at their old position, and a move leaves a
// dashed outline where the node was. "Restore this version" makes the flow equal to the
// older pick again (POST …/restore), as one new change by this user.

interface HistoryEntry {
  key: string
  kind: "now" | "version" | "session"
  title: string
  /** `undefined` is the live flow. */
  ref?: string
  time: number
  el?: HTMLLIElement
}

let historyOpen = false
let sessions: HistorySession[] = []
let versions: NamedVersion[] = []
let olderBefore: string | undefined
let picks: HistoryEntry[] = []
let entries = new Map<string, HistoryEntry>()
let shownDiff: { from: HistoryEntry; to: HistoryEntry; diff: FlowDiff } | undefined
let historyTimer: ReturnType<typeof setTimeout> | undefined
let historyLoads = 0
const ghostsLayer = $<SVGGElement>("#diff-ghosts")
const historyPanel = $("#history-panel")
const historyList = $("#history-list")
const diffBox = $("#diff-box")

function diffMarkOf(id: string): "added" | "changed" | undefined {
  const d = shownDiff?.diff
  if (!d) return undefined
  if (d.nodes_added.some((n) => n.id === id)) return "added"
  if (d.nodes_changed.some((c) => c.id === id)) return "changed"
  return undefined
}

function diffEdgeMarkOf(id: string): "added" | "changed" | undefined {
  const d = shownDiff?.diff
  if (!d) return undefined
  if (d.edges_added.some((e) => e.id === id)) return "added"
  if (d.edges_changed.some((c) => c.new.id === id)) return "changed"
  return undefined
}

function ghost(node: FlowNode, cls: "removed" | "added" | "moved-from", at = node.position) {
  const g = svgEl("g", { class: `ghost ${cls}`, "data-ghost-of": node.id, "data-diff": cls, transform: `translate(${at.x} ${at.y})` })
  g.append(svgEl("rect", { width: NODE_W, height: NODE_H }))
  const text = svgEl("text", { x: 10, y: cls === "moved-from" ? 14 : 38 })
  const label = node.label.length > 22 ? `${node.label.slice(0, 21)}…` : node.label
  text.textContent = cls === "moved-from" ? `${label} was here` : label
  g.append(text)
  return g
}

/** Removed (and since-deleted added) nodes as ghosts, old positions of moved nodes. */
function renderGhosts(snap: FlowSnapshot) {
  const d = shownDiff?.diff
  if (!d) {
    if (ghostsLayer.childElementCount > 0) ghostsLayer.replaceChildren()
    return
  }
  const out: SVGElement[] = []
  const where = new Map<string, { x: number; y: number }>()
  for (const n of Object.values(snap.nodes)) where.set(n.id, n.position)
  for (const n of d.nodes_removed) if (!snap.nodes[n.id]) where.set(n.id, n.position)
  for (const n of d.nodes_added) if (!snap.nodes[n.id]) where.set(n.id, n.position)
  const ghostEdge = (e: { id: string; source: { node: string }; target: { node: string } }, cls: string) => {
    const s = where.get(e.source.node)
    const t = where.get(e.target.node)
    if (!s || !t) return
    const x1 = s.x + NODE_W + 5
    const y1 = s.y + NODE_H / 2 + 8
    const x2 = t.x - 7
    const y2 = t.y + NODE_H / 2 + 8
    const dx = Math.max(40, Math.abs(x2 - x1) / 2)
    out.push(svgEl("path", { class: `ghost-edge ${cls}`, "data-ghost-of": e.id, d: `M${x1} ${y1} C${x1 + dx} ${y1} ${x2 - dx} ${y2} ${x2} ${y2}` }))
  }
  for (const e of d.edges_removed) ghostEdge(e, "removed")
  for (const e of d.edges_added) if (!snap.edges[e.id]) ghostEdge(e, "added")
  for (const c of d.nodes_changed) {
    const live = snap.nodes[c.id]
    if (live && c.position) out.push(ghost(live, "moved-from", c.position.old))
  }
  for (const n of d.nodes_removed) if (!snap.nodes[n.id]) out.push(ghost(n, "removed"))
  for (const n of d.nodes_added) if (!snap.nodes[n.id]) out.push(ghost(n, "added"))
  ghostsLayer.replaceChildren(...out)
}

const short = (s: string, n = 24) => (s.length > n ? `${s.slice(0, n - 1)}…` : s)

function nodeName(id: string): string {
  const n = flow.snapshot().nodes[id]
  return n ? `“${short(n.label)}”` : id
}

/** "moved 2 nodes, relabelled n1". */
function describe(s: EditSummary): string {
  const parts: string[] = []
  // One node by its label now, but a relabelled one by its id (its label changed).
  const nodes = (verb: string, ids: string[]) => {
    if (ids.length === 1) parts.push(`${verb} ${verb === "relabelled" ? ids[0]! : nodeName(ids[0]!)}`)
    else if (ids.length > 1) parts.push(`${verb} ${ids.length} nodes`)
  }
  const edges = (verb: string, n: number) => {
    if (n > 0) parts.push(`${verb} ${n} edge${n === 1 ? "" : "s"}`)
  }
  if (s.renamed) parts.push("renamed the flow")
  nodes("added", s.nodes_added)
  nodes("removed", s.nodes_removed)
  nodes("moved", s.nodes_moved)
  nodes("relabelled", s.nodes_relabelled)
  nodes("retyped", s.nodes_retyped)
  if (s.config_changed.length === 1) parts.push(`configured ${nodeName(s.config_changed[0]!.node)}`)
  else if (s.config_changed.length > 1) parts.push(`changed ${s.config_changed.length} config keys`)
  edges("connected", s.edges_added.length)
  edges("disconnected", s.edges_removed.length)
  edges("rewired", s.edges_changed.length)
  return parts.join(", ") || "no visible change"
}

function isEmptySummary(s: EditSummary) {
  return describe(s) === "no visible change"
}

function timeText(ms: number): string {
  const d = new Date(ms)
  const today = new Date().toDateString() === d.toDateString()
  return today ? d.toLocaleTimeString() : d.toLocaleString()
}

/** A JSON edit's session (edits, restore) carries only the user id as its name. */
function sessionName(s: HistorySession): string {
  return s.name && s.name !== s.user_id ? s.name : s.user_id ? userName(s.user_id) : "unknown"
}

function userName(userId: string): string {
  const s = sessions.find((x) => x.user_id === userId && x.name !== userId)
  if (s) return s.name
  return flow.presence().find((p) => p.user_id === userId)?.name ?? userId
}

function scheduleHistoryRefresh() {
  if (historyTimer) return
  historyTimer = setTimeout(() => {
    historyTimer = undefined
    void loadHistory()
  }, 400)
}

/** Reloads versions and the newest history page; re-diffs when "now" is picked. */
async function loadHistory() {
  const load = ++historyLoads
  try {
    const [page, vs] = await Promise.all([http.history(flowId, { limit: 200 }), http.listVersions(flowId)])
    if (load !== historyLoads) return
    sessions = page.sessions
    olderBefore = page.next_before
    versions = vs
    renderHistory()
    if (shownDiff && (shownDiff.to.kind === "now" || !entries.has(shownDiff.from.key))) await showDiff()
  } catch (e) {
    showError(e)
  }
}

async function loadOlder() {
  if (!olderBefore) return
  try {
    const page = await http.history(flowId, { limit: 200, before: olderBefore })
    sessions = [...sessions, ...page.sessions]
    olderBefore = page.next_before
    renderHistory()
  } catch (e) {
    showError(e)
  }
}

function renderHistory() {
  const list: HistoryEntry[] = [{ key: "now", kind: "now", title: "Now", time: Number.POSITIVE_INFINITY }]
  for (const v of versions) {
    list.push({ key: `version:${v.name}`, kind: "version", title: v.name, ref: versionRef(v.name), time: v.created_at_ms })
  }
  for (const s of sessions) {
    if (!s.user_id && isEmptySummary(s.summary)) continue // the genesis change
    list.push({ key: `session:${s.heads_after.join(",")}`, kind: "session", title: `${sessionName(s)}, ${timeText(s.end)}`, ref: s.heads_after.join(","), time: s.end })
  }
  // Newest first; a version named right after a session comes above it.
  list.sort((a, b) => b.time - a.time || (a.kind === "version" ? -1 : b.kind === "version" ? 1 : 0))
  entries = new Map(list.map((e) => [e.key, e]))
  picks = picks.filter((p) => entries.has(p.key)).map((p) => entries.get(p.key)!)
  const bySession = new Map(sessions.map((s) => [`session:${s.heads_after.join(",")}`, s]))
  const items = list.map((entry) => {
    const li = document.createElement("li")
    li.className = `h-entry ${entry.kind}`
    li.dataset.key = entry.key
    li.dataset.kind = entry.kind
    const head = document.createElement("div")
    head.className = "head"
    const who = document.createElement("span")
    who.className = "who"
    const when = document.createElement("time")
    const what = document.createElement("div")
    what.className = "what"
    if (entry.kind === "now") {
      who.textContent = "Now"
      what.textContent = "the live flow"
    } else if (entry.kind === "version") {
      const v = versions.find((x) => x.name === entry.title)!
      who.textContent = entry.title
      li.dataset.versionName = v.name
      when.textContent = timeText(v.created_at_ms)
      what.textContent = `named by ${userName(v.user_id)}`
    } else {
      const s = bySession.get(entry.key)!
      who.textContent = sessionName(s)
      li.dataset.userId = s.user_id
      li.dataset.userName = sessionName(s)
      when.textContent = timeText(s.end)
      what.textContent = `${describe(s.summary)} (${s.changes.length} change${s.changes.length === 1 ? "" : "s"})`
    }
    head.append(who, when)
    li.append(head, what)
    li.addEventListener("click", () => pick(entry))
    entry.el = li
    return li
  })
  historyList.replaceChildren(...items)
  $<HTMLButtonElement>("#history-older").hidden = !olderBefore
  renderPicks()
}

function renderPicks() {
  const [from, to] = orderedPicks()
  for (const e of entries.values()) {
    const role = e === from ? "from" : e === to ? "to" : ""
    e.el?.classList.toggle("picked", role !== "")
    if (!e.el) continue
    e.el.querySelector(".pick")?.remove()
    if (role) {
      e.el.dataset.pick = role
      const tag = document.createElement("span")
      tag.className = "pick"
      tag.textContent = role === "from" ? "A" : "B"
      e.el.querySelector(".head")!.prepend(tag)
    } else delete e.el.dataset.pick
  }
}

/** The two picks, older first. */
function orderedPicks(): [HistoryEntry?, HistoryEntry?] {
  if (picks.length < 2) return [picks[0], undefined]
  const [a, b] = picks as [HistoryEntry, HistoryEntry]
  return a.time <= b.time ? [a, b] : [b, a]
}

function pick(entry: HistoryEntry) {
  if (picks.some((p) => p.key === entry.key)) picks = picks.filter((p) => p.key !== entry.key)
  else picks = [...picks, entry].slice(-2)
  renderPicks()
  if (picks.length === 2) void showDiff()
  else clearDiff(picks.length === 1 ? "Pick one more entry to compare." : "")
}

function clearDiff(note = "") {
  shownDiff = undefined
  hooks.diff = undefined
  delete svg.dataset.diff
  diffBox.hidden = true
  if (note) hint.textContent = note
  scheduleRender()
}

async function showDiff() {
  const [from, to] = orderedPicks()
  if (!from || !to) return clearDiff()
  const key = `${from.key}..${to.key}`
  if (svg.dataset.diff !== key) svg.dataset.diffState = "loading"
  try {
    const diff = await http.diff(flowId, from.ref!, to.ref)
    const [f, t] = orderedPicks()
    if (f !== from || t !== to) return // picked again meanwhile
    shownDiff = { from, to, diff }
    hooks.diff = diff
    svg.dataset.diff = key
    svg.dataset.diffState = "ready"
    renderDiffBox()
    hint.textContent = to.kind === "now" ? "" : "The canvas shows the flow now, marked with what changed from A to B."
    scheduleRender()
  } catch (e) {
    showError(e)
  }
}

function changeText(c: NodeChange): string {
  const parts: string[] = []
  if (c.position) parts.push("moved")
  if (c.label) parts.push(`label “${short(c.label.old, 18)}” → “${short(c.label.new, 18)}”`)
  if (c.kind) parts.push(`kind ${c.kind.old} → ${c.kind.new}`)
  const keys = Object.keys(c.config ?? {})
  if (keys.length) parts.push(`config ${keys.join(", ")}`)
  return parts.join(", ")
}

function renderDiffBox() {
  if (!shownDiff) return
  const { from, to, diff } = shownDiff
  diffBox.hidden = false
  $("#diff-title").textContent = `A: ${from.title} → B: ${to.title}`
  const rows: [string, string][] = []
  if (diff.name) rows.push(["changed", `flow name “${diff.name.old}” → “${diff.name.new}”`])
  for (const n of diff.nodes_added) rows.push(["added", `+ ${n.label} (${n.kind})`])
  for (const n of diff.nodes_removed) rows.push(["removed", `− ${n.label} (${n.kind})`])
  for (const c of diff.nodes_changed) rows.push(["changed", `~ ${flow.snapshot().nodes[c.id]?.label ?? c.id}: ${changeText(c)}`])
  const edgeCount = (n: number, what: string, cls: string) => {
    if (n > 0) rows.push([cls, `${cls === "added" ? "+" : cls === "removed" ? "−" : "~"} ${n} edge${n === 1 ? "" : "s"} ${what}`])
  }
  edgeCount(diff.edges_added.length, "connected", "added")
  edgeCount(diff.edges_removed.length, "disconnected", "removed")
  edgeCount(diff.edges_changed.length, "rewired", "changed")
  if (rows.length === 0) rows.push(["", "No differences."])
  $("#diff-list").replaceChildren(
    ...rows.map(([cls, text]) => {
      const li = document.createElement("li")
      li.className = cls
      li.textContent = text
      return li
    }),
  )
  const restore = $<HTMLButtonElement>("#restore-version")
  restore.textContent = `Restore A (${short(from.title, 28)})`
  restore.disabled = !canEdit()
}

async function restoreFrom() {
  const from = shownDiff?.from
  if (!from?.ref || !canEdit()) return
  try {
    await http.restore(flowId, from.ref)
    hint.textContent = `Restored ${from.title}`
    await loadHistory()
  } catch (e) {
    showError(e)
  }
}

async function nameVersion(ev: Event) {
  ev.preventDefault()
  const input = $<HTMLInputElement>("#version-name")
  const name = input.value.trim()
  if (!name) return
  try {
    await http.createVersion(flowId, name)
    input.value = ""
    await loadHistory()
  } catch (e) {
    showError(e)
  }
}

function setHistoryOpen(open: boolean) {
  historyOpen = open
  historyPanel.hidden = !open
  $("#side").classList.toggle("history-open", open)
  $("#history-toggle").classList.toggle("active", open)
  if (open) void loadHistory()
  else {
    picks = []
    clearDiff()
  }
}

function setupHistory() {
  const toggle = $<HTMLButtonElement>("#history-toggle")
  toggle.disabled = false
  toggle.addEventListener("click", () => setHistoryOpen(!historyOpen))
  $("#version-form").addEventListener("submit", (ev) => void nameVersion(ev))
  $<HTMLButtonElement>("#name-version").disabled = !canEdit()
  $("#restore-version").addEventListener("click", () => void restoreFrom())
  $("#close-diff").addEventListener("click", () => {
    picks = []
    renderPicks()
    clearDiff()
  })
  $("#history-older").addEventListener("click", () => void loadOlder())
}

// ---- sample flow -------------------------------------------------------------------

/** Fills an empty flow with a sample pipeline (fixed ids: concurrent seeding agrees). */
function seed() {
  const snap = flow.snapshot()
  if (Object.keys(snap.nodes).length > 0 || snap.name !== "" || !canEdit()) return
  const nodes = [
    { id: "new-order", kind: "trigger", label: "New order", x: 40, y: 100 },
    { id: "fetch-customer", kind: "http", label: "Fetch customer", x: 260, y: 100 },
    { id: "is-vip", kind: "decision", label: "VIP customer?", x: 480, y: 100 },
    { id: "send-gift", kind: "action", label: "Send a gift", x: 700, y: 30 },
    { id: "wait-day", kind: "delay", label: "Wait 1 day", x: 700, y: 190 },
    { id: "send-survey", kind: "action", label: "Send survey", x: 910, y: 190 },
  ]
  try {
    flow.setName("Order pipeline")
    for (const n of nodes) flow.addNode({ id: n.id, kind: n.kind, label: n.label, position: { x: n.x, y: n.y } })
    const link = (a: string, b: string, port = "out") => flow.connect({ node: a, port }, { node: b, port: "in" }, `${a}--${b}`)
    link("new-order", "fetch-customer")
    link("fetch-customer", "is-vip")
    link("is-vip", "send-gift", "true")
    link("is-vip", "wait-day", "false")
    link("wait-day", "send-survey")
  } catch (e) {
    showError(e)
  }
  // Seeding is not the user's edit: nothing to undo yet.
  flow.undoStack.clear()
}

/** The hub's colours (actors/src/flow/presence.rs); used to avoid sharing one. */
const PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324"]

/**
 * Keeps the hub-assigned colour (a hash of the user id, so two people can share one)
 * unless someone else here already has it. Runs on every presence change, not just at
 * start: two pages opened together may not see each other yet when they start. Of two
 * sessions with the same colour, the one with the greater session id moves, so they
 * never both switch.
 */
function pickColor() {
  const me = flow.presence().find((p) => p.session_id === client.sessionId)
  if (!me) return
  const others = flow.others()
  const taken = new Set(others.map((p) => p.color))
  const clash = others.some((p) => p.color === me.color && p.session_id < me.session_id)
  if (!clash) return
  const free = PALETTE.find((c) => !taken.has(c))
  if (free) flow.setPresence({ color: free })
}

// ---- start ---------------------------------------------------------------------------

async function main() {
  const params = new URLSearchParams(location.search)
  flowId = params.get("flow") ?? "demo"
  setStatus("loading…", "")
  await initializeWasm("/automerge/automerge.wasm")
  token = await obtainToken(flowId)
  const url = location.origin.replace(/^http/, "ws")
  client = await FlowhubClient.connect({ url, token: () => token, client: "flowhub-demo" })
  hooks.client = client
  http = new FlowhubHttp({ baseUrl: location.origin, token: () => token })
  client.on("close", () => setStatus("reconnecting…", "offline"))
  client.on("welcome", (w) => setStatus(`${w.name} · ${flowId}`, "online"))
  setStatus(`${client.welcome.name} · ${flowId}`, "online")
  flow = await client.subscribe(flowId)
  hooks.flow = flow
  document.title = `flowhub · ${flowId}`

  flow.on("change", () => {
    scheduleRender()
    if (historyOpen) scheduleHistoryRefresh()
  })
  flow.on("presence", () => {
    pickColor()
    scheduleRender()
  })
  flow.on("refused", (e) => {
    hint.textContent = `edit refused by the hub: ${e.code}`
    scheduleRender()
  })

  const editable = canEdit()
  nameInput.disabled = !editable
  for (const id of ["#add-node", "#connect-mode", "#simulate-run"]) $<HTMLButtonElement>(id).disabled = !editable && id !== "#simulate-run"
  if (!editable) hint.textContent = `read-only (${flow.role})`

  nameInput.addEventListener("change", () => {
    try {
      flow.setName(nameInput.value)
    } catch (e) {
      showError(e)
    }
  })
  $("#add-node").addEventListener("click", addNode)
  $("#connect-mode").addEventListener("click", () => setConnectMode(!connectMode))
  $("#delete-selected").addEventListener("click", deleteSelected)
  $("#undo").addEventListener("click", () => undoRedo(false))
  $("#redo").addEventListener("click", () => undoRedo(true))
  $("#simulate-run").addEventListener("click", () => void simulateRun())
  setupHistory()
  wrap.addEventListener("pointermove", onPointerMove)
  window.addEventListener("pointerup", onPointerUp)
  svg.addEventListener("pointerdown", () => {
    if (connectMode) setConnectMode(false)
    select({})
  })
  window.addEventListener("keydown", (ev) => {
    const typing = ev.target instanceof HTMLInputElement || ev.target instanceof HTMLSelectElement
    if (!typing && (ev.key === "Delete" || ev.key === "Backspace") && canEdit()) deleteSelected()
    if (ev.key === "Escape") setConnectMode(false)
    // Ctrl+Z / Cmd+Z undo, Ctrl+Shift+Z / Cmd+Shift+Z / Ctrl+Y redo (text fields keep
    // their own undo).
    const mod = ev.ctrlKey || ev.metaKey
    const key = ev.key.toLowerCase()
    if (!typing && mod && !ev.altKey && (key === "z" || (key === "y" && !ev.shiftKey))) {
      ev.preventDefault()
      undoRedo(key === "y" || ev.shiftKey)
    }
  })

  await client.watchFlowRuns(flowId, (run) => {
    if (run.status === "running" && runWatch?.runId !== run.id) void watchRun(run.id)
  })

  seed()
  pickColor()
  render()
  hooks.ready = true
  document.body.dataset.ready = "true"
}

main().catch((e) => {
  console.error(e)
  setStatus(`error: ${e instanceof Error ? e.message : String(e)}`, "offline")
})
