// Idle sessions, per transport: what one idle subscribed session costs the hub.
//
// Opens --sessions connections spread over --flows flows (each flow built with one
// node first), each subscribed and synced, then reads the hub's resident memory
// (/proc/<pid>/status, VmRSS) before and after and reports the delta per session.
//
//   ws              @flowhub/client, `subscribe(flowId)` (native /v1/ws)
//   automerge-repo  a stock automerge-repo `Repo` per session (WebSocketClientAdapter on
//                   /v1/automerge-repo), `repo.find(flow)` until the document is ready
//
// With --mode open, it measures opening instead: one flow of --nodes nodes, then
// --opens times a new session of the transport opens it (until the client holds every
// node), and leaves again; the hub's CPU (utime + stime) over the opens, per open.
// Two controls for that figure, since the client shares the machine's two cores with
// the hub (a stock Repo spends ~120 ms of its own CPU applying a 1,000-node flow, a
// native client ~30 ms, and the hub's CPU time grows with the time it shares):
//   --client-busy-ms MS   each client keeps its core busy MS ms before it leaves
//                         (give the faster client the slower one's time);
//   --hold-ms MS          each open lasts MS ms from connecting to leaving (the client
//                         sleeps the rest), so the hub's timers (the flow's tick, the
//                         store watch, presence) run as long for either transport;
//   --callgrind-out DIR   the hub runs under `valgrind --tool=callgrind` writing
//                         into DIR: its counters are zeroed before the opens and
//                         dumped after, and the report adds the hub's instructions
//                         per open (a count, not a time: the client cannot inflate it).
//
// Usage:
//   node idle.mjs --url ws://127.0.0.1:PORT --server-pid PID --transport ws|automerge-repo \
//     [--sessions 2000] [--flows 100] [--settle 5] [--out idle.json]
//   node idle.mjs --mode open --url … --server-pid PID --transport … [--nodes 1000] [--opens 20]
//     [--client-busy-ms MS] [--hold-ms MS] [--callgrind-out DIR]
// FLOWHUB_JWT_SECRET must be the hub's secret.

import { execFileSync } from "node:child_process"
import { readdirSync, readFileSync, statSync } from "node:fs"
import { join } from "node:path"

import { Repo } from "@automerge/automerge-repo"
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket"
import { flowAutomergeUrl } from "@flowhub/client"

import { flowhubConnect } from "./backends.mjs"
import { fail, mintToken, parseArgs, procCpuSeconds, round, runPrefix, sleep, until, writeJson } from "./lib.mjs"

const args = parseArgs(
  process.argv.slice(2),
  {
    url: "",
    serverPid: 0,
    transport: "ws",
    mode: "idle",
    sessions: 2000,
    flows: 100,
    nodes: 1000,
    opens: 20,
    clientBusyMs: 0,
    holdMs: 0,
    callgrindOut: "",
    settle: 5,
    out: "",
  },
  "node idle.mjs --url ws://HOST:PORT --server-pid PID --transport ws|automerge-repo [--sessions N] [--flows F]",
)
const secret = process.env.FLOWHUB_JWT_SECRET
/** Opens that took longer than --hold-ms (their hold was 0). */
let overHold = 0
const sessions = Number(args.sessions)
const flowCount = Number(args.flows)
const pid = args.serverPid
if (!args.url || !pid) fail("--url and --server-pid are required")

function rssBytes() {
  const status = readFileSync(`/proc/${pid}/status`, "utf8")
  const kb = Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1])
  return kb * 1024
}

const prefix = runPrefix("idle")
if (args.mode === "open") await measureOpens()

const flows = Array.from({ length: flowCount }, (_, i) => `${prefix}-f${i}`)
const roles = Object.fromEntries(flows.map((f) => [f, "editor"]))

// Every flow exists and is open on the hub before the measurement: the sessions are
// measured, not the flows.
// One builder per 50 flows (a session subscribes to at most 64); they stay connected,
// so the flows stay open.
const builders = []
for (const [i, flowId] of flows.entries()) {
  if (i % 50 === 0) builders.push(await flowhubConnect(args.url, secret, `builder-${i}`, roles))
  const flow = await builders.at(-1).subscribe(flowId)
  const id = flow.addNode({ id: `n${i}`, kind: "action", label: "idle", position: { x: i, y: 0 } })
  if ((await flow.waitAcked(id, 30_000)) !== "acked") fail(`flow ${flowId}: not acked`)
}
await sleep(Number(args.settle) * 1000)
const before = rssBytes()

const held = []
const started = performance.now()
for (let i = 0; i < sessions; i++) {
  const flowId = flows[i % flowCount]
  if (args.transport === "ws") {
    const client = await flowhubConnect(args.url, secret, `idle-${i}`, { [flowId]: "viewer" })
    await client.subscribe(flowId)
    held.push(client)
  } else if (args.transport === "automerge-repo") {
    const token = mintToken(secret, `idle-${i}`, { [flowId]: "viewer" })
    const adapter = new WebSocketClientAdapter(`${args.url}/v1/automerge-repo?token=${token}`, 60_000)
    const repo = new Repo({ network: [adapter], peerId: `${prefix}-peer-${i}` })
    const handle = await repo.find(flowAutomergeUrl(flowId))
    await handle.whenReady()
    held.push(repo)
  } else {
    fail(`unknown transport ${args.transport}`)
  }
}
const openMs = performance.now() - started
await sleep(Number(args.settle) * 1000)
const after = rssBytes()
const perSession = (after - before) / sessions
const result = {
  transport: args.transport,
  sessions,
  flows: flowCount,
  rss_before_bytes: before,
  rss_after_bytes: after,
  bytes_per_session: Math.round(perSession),
  open_ms: round(openMs, 0),
}
console.log(JSON.stringify(result))
if (args.out) writeJson(args.out, result)
process.exit(0)

/** One new session of the transport holding all `nodes` nodes of `flowId`; closes it. */
async function openOnce(flowId, nodes, i) {
  const hold = performance.now() + Number(args.holdMs)
  if (args.transport === "ws") {
    const client = await flowhubConnect(args.url, secret, `opener-${i}`, { [flowId]: "viewer" })
    const flow = await client.subscribe(flowId)
    const ok = await until(() => flow.nodeIds().length >= nodes, 60_000)
    busy(Number(args.clientBusyMs))
    await holdUntil(hold)
    client.close()
    if (!ok) fail("ws: the flow did not arrive")
  } else {
    const token = mintToken(secret, `opener-${i}`, { [flowId]: "viewer" })
    const adapter = new WebSocketClientAdapter(`${args.url}/v1/automerge-repo?token=${token}`, 60_000)
    const repo = new Repo({ network: [adapter], peerId: `${prefix}-opener-${i}` })
    const handle = await repo.find(flowAutomergeUrl(flowId))
    await handle.whenReady()
    const ok = await until(() => Object.keys(handle.doc()?.nodes ?? {}).length >= nodes, 60_000)
    busy(Number(args.clientBusyMs))
    await holdUntil(hold)
    await repo.shutdown()
    if (!ok) fail("automerge-repo: the flow did not arrive")
  }
}

async function measureOpens() {
  const nodes = Number(args.nodes)
  const flowId = `${prefix}-large`
  const writer = await flowhubConnect(args.url, secret, "writer", { [flowId]: "editor" })
  const flow = await writer.subscribe(flowId)
  let last
  for (let i = 0; i < nodes; i++) {
    last = flow.addNode({ id: `n${i}`, kind: "action", label: `node ${i}`, position: { x: i, y: 0 } })
  }
  if ((await flow.waitAcked(last, 60_000)) !== "acked") fail("the large flow was not acked")
  await openOnce(flowId, nodes, -1) // warm-up, untimed
  await sleep(1000)
  const opens = Number(args.opens)
  if (args.callgrindOut) callgrindControl("-z")
  const cpu0 = procCpuSeconds(pid)
  const t0 = performance.now()
  for (let i = 0; i < opens; i++) await openOnce(flowId, nodes, i)
  const cpu1 = procCpuSeconds(pid)
  const wall = performance.now() - t0
  const result = {
    mode: "open",
    transport: args.transport,
    nodes,
    opens,
    client_busy_ms: Number(args.clientBusyMs),
    hold_ms: Number(args.holdMs),
    opens_longer_than_hold: overHold,
    hub_cpu_ms_per_open: round(((cpu1 - cpu0) * 1000) / opens, 1),
    wall_ms_per_open: round(wall / opens, 1),
  }
  if (args.callgrindOut) {
    result.hub_instructions_per_open = Math.round(callgrindDumpTotal() / opens)
    // Under valgrind the hub runs some 50 times slower: its CPU time means nothing.
    delete result.hub_cpu_ms_per_open
  }
  console.log(JSON.stringify(result))
  if (args.out) writeJson(args.out, result)
  process.exit(0)
}

/** Sleeps until `at` (a `performance.now()` time); counts an open that took longer. */
async function holdUntil(at) {
  const left = at - performance.now()
  if (left > 0) await sleep(left)
  else if (Number(args.holdMs) > 0) overHold++
}

/** Keeps this process's core busy for `ms` milliseconds (a client's own work). */
function busy(ms) {
  const end = performance.now() + ms
  while (performance.now() < end) {}
}

function callgrindControl(flag) {
  execFileSync("callgrind_control", [flag, String(pid)], { stdio: "ignore" })
}

/** Dumps the hub's callgrind counters and returns the instructions in the new dump. */
function callgrindDumpTotal() {
  const dumps = () => new Set(readdirSync(args.callgrindOut).filter((f) => f.startsWith("callgrind.out")))
  const before = dumps()
  callgrindControl("-d")
  const fresh = [...dumps()].filter((f) => !before.has(f))
  if (fresh.length !== 1) fail(`callgrind: expected one new dump in ${args.callgrindOut}, found ${fresh.length}`)
  const path = join(args.callgrindOut, fresh[0])
  if (statSync(path).size === 0) fail(`callgrind: ${path} is empty`)
  const total = /^(?:summary|totals): (\d+)/m.exec(readFileSync(path, "utf8"))
  if (!total) fail(`callgrind: no total in ${path}`)
  return Number(total[1])
}
