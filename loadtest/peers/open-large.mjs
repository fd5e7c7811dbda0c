// Opening a large flow: one writer builds an N-node flow (default 1,000) with N
// separate edits (flowhub: N typed `addNode`s, each its own Automerge change, all
// acked by the hub; Hocuspocus: N Yjs transactions, all confirmed by SyncStatus), then
// K times (default 20) a brand-new client connects and we time connect → the client
// holds the whole flow (all N nodes in the replica: flowhub `flow.nodeIds()`, Yjs
// `Y.Map.size`), and connect → a plain JS snapshot of all N nodes (flowhub
// `flow.snapshot()`, Yjs `toJSON()`) for an app that renders every node at once. The writer stays connected, so the
// document stays loaded on the server (Hocuspocus unloads a document without
// connections). Server CPU (utime + stime of --server-pid) is measured over the opens.
//
//   node open-large.mjs --backend hocuspocus|flowhub --url ws://127.0.0.1:PORT \
//     [--nodes 1000] [--opens 20] [--warmup 1] [--server-pid PID] [--out FILE.json]
//
// --warmup opens (default 1) run first, untimed: the first open in a fresh Node process
// pays for compiling the client's code paths.
//
// Environment: FLOWHUB_JWT_SECRET (flowhub backend).

import { performance } from "node:perf_hooks"

import * as Y from "yjs"

import { flowhubConnect, hocuspocusOpen } from "./backends.mjs"
import { fail, loadAverage, parseArgs, procCpuSeconds, round, runPrefix, selfCpuSeconds, sleep, summarize, until, writeJson } from "./lib.mjs"

const USAGE = `usage: node open-large.mjs --backend hocuspocus|flowhub --url ws://HOST:PORT
  [--nodes 1000] [--opens 20] [--warmup 1] [--server-pid PID] [--out FILE.json]`
const args = parseArgs(
  process.argv.slice(2),
  { backend: "", url: "", nodes: 1000, opens: 20, warmup: 1, serverPid: 0, out: "" },
  USAGE,
)
if (!["flowhub", "hocuspocus"].includes(args.backend)) fail(`--backend must be flowhub or hocuspocus\n${USAGE}`)
if (!args.url) fail(`--url is required\n${USAGE}`)
const secret = process.env.FLOWHUB_JWT_SECRET ?? ""
const prefix = runPrefix("po")
const flowId = `${prefix}-large`
const TIMEOUT_MS = 300_000

// ---- build -------------------------------------------------------------------------------

let writer
let open // () => Promise<() => void>: connect a fresh client, resolve once it has every node
const t0 = performance.now()
if (args.backend === "flowhub") {
  const client = await flowhubConnect(args.url, secret, `${prefix}-writer`, { [flowId]: "editor" })
  const flow = await client.subscribe(flowId)
  const edits = []
  for (let k = 0; k < args.nodes; k++) {
    edits.push(flow.addNode({ id: `n${k}`, kind: "action", label: `node ${k}`, position: { x: k, y: k % 10 } }))
  }
  const verdicts = await Promise.all(edits.map((e) => flow.waitAcked(e, TIMEOUT_MS)))
  const unknown = verdicts.filter((v) => v !== "acked").length
  if (unknown > 0) fail(`${unknown} of ${args.nodes} edits not acked within ${TIMEOUT_MS} ms`)
  writer = () => client.close()
  let n = 0
  open = async () => {
    n += 1
    const c = await flowhubConnect(args.url, secret, `${prefix}-reader${n}`, { [flowId]: "viewer" })
    // subscribe() resolves once the replica holds the heads the hub announced.
    const f = await c.subscribe(flowId)
    // (Clients before nodeIds() built their JS view on receipt: its keys, then.)
    const count = () => (f.nodeIds ? f.nodeIds().length : Object.keys(f.doc.nodes ?? {}).length)
    const ok = await until(() => count() >= args.nodes, TIMEOUT_MS, 1)
    if (!ok) throw new Error(`open ${n}: only ${count()} nodes after ${TIMEOUT_MS} ms`)
    return {
      snapshot: () => {
        const seen = Object.keys(f.snapshot().nodes).length
        if (seen !== args.nodes) throw new Error(`open ${n}: snapshot has ${seen} nodes`)
      },
      close: () => c.close(),
    }
  }
} else {
  const h = await hocuspocusOpen(args.url, flowId)
  const nodes = h.doc.getMap("nodes")
  for (let k = 0; k < args.nodes; k++) {
    h.doc.transact(() => {
      const m = new Y.Map()
      nodes.set(`n${k}`, m)
      m.set("kind", "action")
      m.set("label", `node ${k}`)
      m.set("x", k)
      m.set("y", k % 10)
      m.set("config", new Y.Map())
    })
  }
  await h.flushed(TIMEOUT_MS)
  writer = () => h.close()
  open = async () => {
    // Resolves on `synced`: the server's SyncStep2 (its whole state) was applied.
    const r = await hocuspocusOpen(args.url, flowId)
    const m = r.doc.getMap("nodes")
    const ok = await until(() => m.size >= args.nodes, TIMEOUT_MS, 1)
    if (!ok) throw new Error(`only ${m.size} nodes after ${TIMEOUT_MS} ms`)
    return {
      snapshot: () => {
        const seen = Object.keys(m.toJSON()).length
        if (seen !== args.nodes) throw new Error(`snapshot has ${seen} nodes`)
      },
      close: () => r.close(),
    }
  }
}
const buildMs = performance.now() - t0
console.error(`open-large.mjs: ${args.backend}: built ${args.nodes} nodes with ${args.nodes} edits in ${buildMs.toFixed(0)} ms`)
await sleep(500)

// ---- opens -----------------------------------------------------------------------------------

for (let k = 0; k < args.warmup; k++) {
  const o = await open()
  o.snapshot()
  o.close()
  await sleep(50)
}
const times = []
const snapshotTimes = []
const server0 = procCpuSeconds(args.serverPid)
const self0 = selfCpuSeconds()
for (let k = 0; k < args.opens; k++) {
  const start = performance.now()
  const o = await open()
  times.push(performance.now() - start)
  o.snapshot()
  snapshotTimes.push(performance.now() - start)
  o.close()
  await sleep(50)
}
const serverCpu = procCpuSeconds(args.serverPid) - server0
const clientCpu = selfCpuSeconds() - self0
writer()

const result = {
  tool: "loadtest/peers/open-large.mjs",
  backend: args.backend,
  url: args.url,
  flow: flowId,
  nodes: args.nodes,
  build_edits: args.nodes,
  build_ms: round(buildMs, 1),
  opens: args.opens,
  warmup_opens: args.warmup,
  open_ms: summarize(times),
  open_snapshot_ms: summarize(snapshotTimes),
  server_cpu_seconds_opens: args.serverPid ? round(serverCpu) : null,
  server_cpu_ms_per_open: args.serverPid ? round((serverCpu * 1000) / args.opens, 1) : null,
  client_cpu_ms_per_open: round((clientCpu * 1000) / args.opens, 1),
  load_average: loadAverage(),
}
writeJson(args.out, result)
const s = result.open_ms
console.log(
  `${args.backend} open ${args.nodes}-node flow ×${args.opens}: p50 ${s.p50_ms.toFixed(1)} ms, p99 ${s.p99_ms.toFixed(1)} ms, ` +
    `mean ${s.mean_ms.toFixed(1)} ms; with a full JS snapshot p50 ${result.open_snapshot_ms.p50_ms.toFixed(1)} ms, p99 ${result.open_snapshot_ms.p99_ms.toFixed(1)} ms` +
    (args.serverPid ? `, server CPU ${result.server_cpu_ms_per_open} ms/open` : "") +
    `, client CPU ${result.client_cpu_ms_per_open} ms/open (build: ${result.build_ms} ms)` +
    (args.out ? ` → ${args.out}` : ""),
)
process.exit(0)
