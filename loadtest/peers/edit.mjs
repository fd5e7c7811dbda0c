// The `edit` workload of flowhub-loadtest (loadtest/src/scenario/edit.rs), in Node,
// against flowhub (@flowhub/client) or Hocuspocus (Yjs): issue #14's side-by-side.
//
//   node edit.mjs --backend hocuspocus|flowhub --url ws://127.0.0.1:PORT \
//     --flows 10 --editors-per-flow 5 --rate 10 --duration 20 --ramp-up 3 \
//     [--settle-timeout 30] [--server-pid PID] [--out result.json]
//
// F flows × E editors. Editor i edits flow i mod F and owns node `ed{i}`; every 1/R s
// it moves it to x = seq (its edit sequence number) in one edit (flowhub: typed
// `moveNode`; Yjs: one transaction setting x and y of the node's Y.Map) and records
// the send time of seq in this process. Every editor observes: after each change from
// the server it reads the other editors' nodes of its flow and, for every seq up to the
// x it sees, records arrival − send (a jump in x counts every seq it covers; one
// editor's edits are causally ordered, so seeing x = s means every earlier edit was
// applied too). Also timed: edit → server ack (flowhub: the hub's durable `ack`;
// Hocuspocus: its SyncStatus reply, i.e. applied in memory).
//
// After the load: wait (bounded by --settle-timeout) until all replicas of a flow hold
// the same state (flowhub: heads; Yjs: state vector) with nothing unacknowledged, then
// check every replica's JSON is equal, each editor's own node is at the last x it
// wrote, and the server's copy (flowhub: GET /v1/flows/{id}; Hocuspocus: a fresh
// provider) agrees.
//
// Environment: FLOWHUB_JWT_SECRET (flowhub backend; the hub's HS256 secret);
// FLOWHUB_STREAM=on|off sets @flowhub/client's `stream` option (default: the client's).
// Exit code: 0 all checks passed, 1 a check failed, 2 an error.

import { performance } from "node:perf_hooks"

import {
  flowhubEditor,
  flowhubServerState,
  hocuspocusEditor,
  hocuspocusServerState,
} from "./backends.mjs"
import {
  canonical,
  fail,
  loadAverage,
  parseArgs,
  procCpuSeconds,
  round,
  runPrefix,
  selfCpuSeconds,
  sleep,
  summarize,
  writeJson,
} from "./lib.mjs"

const USAGE = `usage: node edit.mjs --backend hocuspocus|flowhub --url ws://HOST:PORT
  [--flows 10] [--editors-per-flow 5] [--rate 10] [--duration 20] [--ramp-up 3]
  [--settle-timeout 30] [--server-pid PID] [--out FILE.json]`

const args = parseArgs(
  process.argv.slice(2),
  {
    backend: "",
    url: "",
    flows: 10,
    editorsPerFlow: 5,
    rate: 10,
    duration: 20,
    rampUp: 3,
    settleTimeout: 30,
    serverPid: 0,
    out: "",
  },
  USAGE,
)
if (!["flowhub", "hocuspocus"].includes(args.backend)) fail(`--backend must be flowhub or hocuspocus\n${USAGE}`)
if (!args.url) fail(`--url is required\n${USAGE}`)
if (!(args.rate > 0 && args.rate <= 1000)) fail("--rate must be in (0, 1000]")
if (args.flows < 1 || args.editorsPerFlow < 1) fail("--flows and --editors-per-flow must be at least 1")

const secret = process.env.FLOWHUB_JWT_SECRET ?? ""
const F = args.flows
const N = F * args.editorsPerFlow
const periodMs = 1000 / args.rate
const durationMs = args.duration * 1000
const capacity = Math.ceil(args.rate * args.duration * 1.25) + 16
const prefix = runPrefix("pe")
const flowIds = Array.from({ length: F }, (_, f) => `${prefix}-f${f}`)
const startedAt = Date.now()

// ---- per-editor state ----------------------------------------------------------------

const slots = Array.from({ length: N }, (_, i) => ({
  i,
  flow: i % F,
  nodeId: `ed${i}`,
  log: new Float64Array(capacity + 1).fill(NaN), // send time (performance.now) of seq
  sent: 0,
  acked: 0,
  ready: false,
  editor: undefined,
}))
const members = Array.from({ length: F }, () => [])
for (const s of slots) members[s.flow].push(s.i)

const failures = []
const addFailure = (msg) => {
  if (failures.length < 50) failures.push(msg)
}
const peerLatency = []
const ackLatency = []
let observedTotal = 0
let ackFailures = 0
let observing = true

// ---- connect (spread over the ramp-up) ------------------------------------------------

const rampStart = performance.now()
console.error(`edit.mjs: ${args.backend} ${args.url}: ${N} editors on ${F} flows (${prefix}), connecting over ${args.rampUp} s`)
await Promise.all(
  slots.map(async (slot) => {
    await sleep((args.rampUp * 1000 * slot.i) / N - (performance.now() - rampStart))
    const common = { url: args.url, flowId: flowIds[slot.flow], nodeId: slot.nodeId, y: slot.i }
    try {
      slot.editor =
        args.backend === "flowhub"
          ? await flowhubEditor({ ...common, secret, sub: `${prefix}-ed${slot.i}` })
          : await hocuspocusEditor(common)
      slot.ready = true
    } catch (e) {
      addFailure(`editor ${slot.i}: ${e?.message ?? e}`)
    }
  }),
)
const connected = slots.filter((s) => s.ready).length
console.error(`edit.mjs: ${connected}/${N} editors connected${failures.length ? `; failures: ${failures.slice(0, 3).join("; ")}` : ""}`)
if (connected === 0) {
  console.error("edit.mjs: no editor connected")
  process.exit(2)
}

// ---- observers -------------------------------------------------------------------------

function startObserver(slot) {
  const others = members[slot.flow].filter((j) => j !== slot.i && slots[j].ready)
  const ids = others.map((j) => slots[j].nodeId)
  const last = new Array(others.length).fill(0)
  const look = () => {
    if (!observing) return
    const xs = slot.editor.readX(ids)
    const now = performance.now()
    for (let k = 0; k < xs.length; k++) {
      const x = xs[k]
      if (typeof x !== "number" || !Number.isFinite(x) || x < 1) continue
      const log = slots[others[k]].log
      const seq = Math.min(Math.floor(x), capacity)
      while (last[k] < seq) {
        last[k] += 1
        const sent = log[last[k]]
        if (!Number.isNaN(sent)) {
          peerLatency.push(now - sent)
          observedTotal += 1
        }
      }
    }
  }
  slot.editor.onRemote(look)
}
for (const slot of slots) if (slot.ready) startObserver(slot)

// ---- the load ----------------------------------------------------------------------------

const loadStart = performance.now() + 100
const loadEnd = loadStart + durationMs
const cpu0 = { self: NaN, server: NaN }

async function editLoop(slot) {
  // Editors are spread over the period, so their edits do not arrive in bursts.
  let next = loadStart + (periodMs * slot.i) / N
  for (;;) {
    // Timers may fire a fraction of a millisecond early: wait until the tick is due.
    while (performance.now() < next) await sleep(next - performance.now())
    const now = performance.now()
    if (now >= loadEnd || slot.sent >= capacity) break
    const seq = slot.sent + 1
    slot.log[seq] = now
    let ack
    try {
      ack = slot.editor.move(seq, slot.i)
    } catch (e) {
      addFailure(`editor ${slot.i}, edit ${seq}: ${e?.message ?? e}`)
      break
    }
    slot.sent = seq
    ack.then(
      () => {
        ackLatency.push(performance.now() - now)
        slot.acked += 1
      },
      (e) => {
        ackFailures += 1
        addFailure(`editor ${slot.i}, ack of edit ${seq}: ${e?.message ?? e}`)
      },
    )
    // Missed ticks are skipped (tokio's MissedTickBehavior::Skip): the next tick is
    // the next multiple of the period after now.
    next += periodMs
    const after = performance.now()
    if (next < after) next += Math.ceil((after - next) / periodMs) * periodMs
  }
}

setTimeout(() => {
  cpu0.self = selfCpuSeconds()
  cpu0.server = procCpuSeconds(args.serverPid)
}, Math.max(0, loadStart - performance.now()))
let cpu1
setTimeout(() => {
  cpu1 = { self: selfCpuSeconds(), server: procCpuSeconds(args.serverPid) }
}, Math.max(0, loadEnd - performance.now()))

const progress = setInterval(() => {
  const sent = slots.reduce((n, s) => n + s.sent, 0)
  console.error(`edit.mjs: ${((performance.now() - loadStart) / 1000).toFixed(0)} s: ${sent} edits, ${observedTotal} applies seen`)
}, 5000)
await Promise.all(slots.filter((s) => s.ready).map(editLoop))
clearInterval(progress)
while (!cpu1) await sleep(5)
const sent = slots.reduce((n, s) => n + s.sent, 0)
console.error(`edit.mjs: load done: ${sent} edits; waiting for convergence (at most ${args.settleTimeout} s)`)

// ---- convergence ---------------------------------------------------------------------------

const settleStart = performance.now()
const settleDeadline = settleStart + args.settleTimeout * 1000

/** Where two JSON values first differ: `path: a vs b` (for the report). */
function firstDifference(a, b, path = "") {
  if (canonical(a) === canonical(b)) return ""
  if (a && b && typeof a === "object" && typeof b === "object") {
    for (const k of [...new Set([...Object.keys(a), ...Object.keys(b)])].sort()) {
      const d = firstDifference(a[k], b[k], `${path}/${k}`)
      if (d) return d
    }
  }
  const show = (v) => (v === undefined ? "absent" : canonical(v).slice(0, 120))
  return `${path || "/"}: ${show(a)} vs ${show(b)}`
}

async function checkFlow(f) {
  const reps = members[f].map((j) => slots[j]).filter((s) => s.ready)
  const problems = []
  let settled = false
  while (performance.now() < settleDeadline) {
    const keys = new Set(reps.map((s) => s.editor.stateKey()))
    if (keys.size === 1 && reps.every((s) => s.editor.pending() === 0)) {
      settled = true
      break
    }
    await sleep(20)
  }
  const settleMs = performance.now() - settleStart
  if (!settled) problems.push(`replicas did not settle within ${args.settleTimeout} s`)
  const objs = reps.map((s) => s.editor.snapshot())
  const snaps = objs.map(canonical)
  for (let k = 1; k < reps.length; k++) {
    if (snaps[k] !== snaps[0]) problems.push(`editor ${reps[k].i}'s JSON differs from editor ${reps[0].i}'s: ${firstDifference(objs[0], objs[k])}`)
  }
  for (const s of reps) {
    const [x] = s.editor.readX([s.nodeId])
    if (x !== s.sent) problems.push(`editor ${s.i} has its node ${s.nodeId} at x=${x} but last wrote x=${s.sent}`)
  }
  // The server's copy: an edit the server lost shows up even if all replicas agree.
  try {
    if (args.backend === "flowhub") {
      const hub = await flowhubServerState(args.url, secret, flowIds[f])
      const mine = reps[0]?.editor.snapshot()
      for (const s of reps) {
        const x = hub?.nodes?.[s.nodeId]?.position?.x
        if (x !== s.sent) problems.push(`hub has ${s.nodeId} at x=${x} but editor ${s.i} last wrote x=${s.sent}`)
      }
      if (mine && canonical(Object.keys(hub?.nodes ?? {}).sort()) !== canonical(Object.keys(mine.nodes).sort())) {
        problems.push("the hub's node set differs from the replicas'")
      }
      if (Array.isArray(hub?.heads) && reps.length > 0 && [...hub.heads].sort().join(",") !== reps[0].editor.stateKey()) {
        problems.push("the hub's heads differ from the replicas'")
      }
    } else {
      const server = await hocuspocusServerState(args.url, flowIds[f])
      if (reps.length > 0 && canonical(server) !== snaps[0]) problems.push("a fresh provider's JSON differs from the replicas'")
    }
  } catch (e) {
    problems.push(`server state: ${e?.message ?? e}`)
  }
  return { flow: flowIds[f], settled, settle_ms: round(settleMs, 1), problems }
}

const verdicts = await Promise.all(flowIds.map((_, f) => checkFlow(f)))
observing = false
for (const s of slots) s.editor?.close()

// ---- report ----------------------------------------------------------------------------------

let expected = 0
for (const s of slots) {
  if (!s.ready) continue
  const peers = members[s.flow].filter((j) => slots[j].ready).length
  expected += s.sent * Math.max(0, peers - 1)
}
const acked = slots.reduce((n, s) => n + s.acked, 0)
const problems = verdicts.flatMap((v) => v.problems.map((p) => `${v.flow}: ${p}`))
const converged = problems.length === 0 && verdicts.length > 0
const serverCpu = cpu1.server - cpu0.server
const clientCpu = cpu1.self - cpu0.self
const checks = [
  { name: "editors connected", passed: connected === N, detail: `${connected}/${N}` },
  {
    name: "counts add up",
    passed: observedTotal === expected && acked === sent,
    detail: `applies observed ${observedTotal} / expected ${expected}; acked ${acked} / sent ${sent}; ack failures ${ackFailures}`,
  },
  {
    name: "convergence",
    passed: converged,
    detail: converged
      ? `${verdicts.length} flows: every replica, the server's copy and every editor's last position agree (settled within ${Math.max(...verdicts.map((v) => v.settle_ms))} ms)`
      : `${problems.length} problem(s): ${problems.slice(0, 4).join("; ")}`,
  },
]
const result = {
  tool: "loadtest/peers/edit.mjs",
  backend: args.backend,
  url: args.url,
  run_prefix: prefix,
  flowhub_stream: args.backend === "flowhub" ? process.env.FLOWHUB_STREAM || "client default" : undefined,
  parameters: {
    flows: F,
    editors_per_flow: args.editorsPerFlow,
    editors: N,
    rate: args.rate,
    duration_s: args.duration,
    ramp_up_s: args.rampUp,
    settle_timeout_s: args.settleTimeout,
  },
  started_at_unix_ms: startedAt,
  load_start_unix_ms: round(performance.timeOrigin + loadStart, 1),
  load_end_unix_ms: round(performance.timeOrigin + loadEnd, 1),
  load_average: loadAverage(),
  editors_connected: connected,
  edits_planned: Math.floor(args.rate * args.duration * connected),
  edits_sent: sent,
  edits_acked: acked,
  applies_observed: observedTotal,
  applies_expected: expected,
  edit_to_peer: summarize(peerLatency),
  edit_to_ack: summarize(ackLatency),
  ack_meaning: args.backend === "flowhub" ? "hub ack: stored durably" : "Hocuspocus SyncStatus: applied in the server's memory",
  convergence: { passed: converged, flows: verdicts },
  client_cpu_seconds_load: round(clientCpu),
  server_pid: args.serverPid || null,
  server_cpu_seconds_load: args.serverPid ? round(serverCpu) : null,
  server_cpu_seconds_per_1000_edits: args.serverPid && sent > 0 ? round((serverCpu * 1000) / sent) : null,
  client_cpu_seconds_per_1000_edits: sent > 0 ? round((clientCpu * 1000) / sent) : null,
  failures,
  checks,
  passed: checks.every((c) => c.passed),
}
writeJson(args.out, result)

const p = result.edit_to_peer
const cpuText = result.server_cpu_seconds_per_1000_edits !== null ? `server CPU ${result.server_cpu_seconds_per_1000_edits} s/1000 edits, ` : ""
console.log(
  `${args.backend} R=${args.rate}/s: ${sent} edits (${acked} acked), applies ${observedTotal}/${expected}, ` +
    `edit→peer p50 ${p.p50_ms.toFixed(2)} ms p99 ${p.p99_ms.toFixed(2)} ms, ack p50 ${result.edit_to_ack.p50_ms.toFixed(2)} ms p99 ${result.edit_to_ack.p99_ms.toFixed(2)} ms, ` +
    `${cpuText}client CPU ${result.client_cpu_seconds_per_1000_edits} s/1000 edits, converged ${converged ? "PASS" : "FAIL"}` +
    (args.out ? ` → ${args.out}` : ""),
)
for (const c of checks) if (!c.passed) console.log(`  FAIL ${c.name}: ${c.detail}`)
process.exit(result.passed ? 0 : 1)
