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
  FlowEditError,
  type Flow,
  type FlowNode,
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
  }
  for (const path of [...edgesLayer.querySelectorAll<SVGPathElement>(".edge")]) {
    if (!seen.has(path.dataset.edgeId!)) path.remove()
  }

  if (document.activeElement !== nameInput) nameInput.value = snap.name
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
  client.on("close", () => setStatus("reconnecting…", "offline"))
  client.on("welcome", (w) => setStatus(`${w.name} · ${flowId}`, "online"))
  setStatus(`${client.welcome.name} · ${flowId}`, "online")
  flow = await client.subscribe(flowId)
  hooks.flow = flow
  document.title = `flowhub · ${flowId}`

  flow.on("change", scheduleRender)
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
