// How long @flowhub/client takes to apply one remote edit (a node move made by another
// replica) on a 1,000-node flow, in Node, through the client's real receive path: the
// binary frame handed to the WebSocket's `onmessage`, decoded by FlowhubClient and
// applied by the Flow (replies, change event and ready check included).
//
// No hub process: a fake WebSocket plays the hub. Its document is a FlowDocument (the
// client's own typed-edit class) that starts from a local genesis (the hub's is made in
// Rust) and gets N nodes from N typed `addNode` edits. Two sessions are timed:
//
//   0x01  the hub does not agree to stream: every remote move arrives as an Automerge
//         sync message; the client's replies go back to the fake hub (untimed), so both
//         sync states stay in their steady state;
//   0x02  the hub agrees to stream: once the client caught up (sync protocol, untimed),
//         every remote move arrives as a change frame (the move's raw change).
//
// Each is timed without and with a `change` listener that reads the moved node
// (`flow.document.node(id)`), the usual thing an editor does on a remote edit.
// The client is bundled from src/ with esbuild, so this measures the working tree
// (`--src DIR`: another copy of src/, e.g. `git show`n from an older commit, to compare).
//
//   node scripts/apply-bench.mjs [--nodes 1000] [--applies 1000] [--warmup 200] [--src DIR] [--json]

import { build } from "esbuild"
import { mkdirSync } from "node:fs"
import { dirname, join, resolve } from "node:path"
import { performance } from "node:perf_hooks"
import { fileURLToPath, pathToFileURL } from "node:url"

import * as A from "@automerge/automerge"

const here = dirname(fileURLToPath(import.meta.url))
const pkg = resolve(here, "..")

function parseArgs(argv) {
  const args = { nodes: 1000, applies: 1000, warmup: 200, src: join(pkg, "src"), json: false }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (a === "--json") args.json = true
    else if (a === "--src") args.src = resolve(argv[++i])
    else if (a.startsWith("--") && a.slice(2) in args) args[a.slice(2)] = Number(argv[++i])
    else {
      console.error("usage: node scripts/apply-bench.mjs [--nodes 1000] [--applies 1000] [--warmup 200] [--src DIR] [--json]")
      process.exit(2)
    }
  }
  return args
}
const args = parseArgs(process.argv.slice(2))

// ---- the client under test, bundled from src/ ----------------------------------------------

const outDir = join(pkg, "node_modules/.cache/flowhub-apply-bench")
mkdirSync(outDir, { recursive: true })
const outfile = join(outDir, "client.mjs")
await build({
  entryPoints: [join(args.src, "index.ts")],
  outfile,
  bundle: true,
  format: "esm",
  platform: "node",
  target: "es2022",
  // bs58check (via @noble/hashes) requires node:crypto, which an ESM bundle cannot.
  external: ["@automerge/automerge", "bs58check"],
  logLevel: "warning",
})
const { FlowhubClient, FlowDocument } = await import(pathToFileURL(outfile).href)

const FLOW_ID = "apply-bench"
const SYNC = 0x01
const CHANGES = 0x02

function frame(kind, flowId, payload) {
  const id = new TextEncoder().encode(flowId)
  const out = new Uint8Array(2 + id.length + payload.length)
  out[0] = kind
  out[1] = id.length
  out.set(id, 2)
  out.set(payload, 2 + id.length)
  // What `ws` hands over with binaryType "arraybuffer".
  return out.buffer
}

function parseFrame(bytes) {
  const len = bytes[1]
  return { kind: bytes[0], flowId: new TextDecoder().decode(bytes.subarray(2, 2 + len)), payload: bytes.subarray(2 + len) }
}

// ---- the fake hub ------------------------------------------------------------------------------

const genesis = A.change(A.init(), (d) => {
  d.name = new A.ImmutableString("")
  d.nodes = {}
  d.edges = {}
})
const hub = new FlowDocument(A.clone(genesis))
for (let k = 0; k < args.nodes; k++) {
  hub.addNode({ id: `n${k}`, kind: "action", label: `node ${k}`, position: { x: k, y: k % 10 } })
}

/** One session's socket: JSON control frames answered like the hub, sync frames kept in an inbox. */
function fakeSocket(allowStream) {
  const session = { socket: undefined, sync: A.initSyncState(), inbox: [], sent: { [SYNC]: 0, [CHANGES]: 0 }, asked: false }
  class FakeWebSocket {
    binaryType = "blob"
    readyState = 1
    onopen = null
    onclose = null
    onmessage = null
    onerror = null
    constructor() {
      session.socket = this
      setTimeout(() => this.#text({ type: "welcome", protocol: 1, session_id: "0".repeat(32), user_id: "bench", name: "bench", node_id: "n", limits: { max_frame_bytes: 1 << 24, max_subscriptions: 64 } }))
    }
    #text(msg) {
      this.onmessage?.({ data: JSON.stringify(msg) })
    }
    send(data) {
      if (typeof data !== "string") {
        const f = parseFrame(data instanceof Uint8Array ? data : new Uint8Array(data))
        session.sent[f.kind] = (session.sent[f.kind] ?? 0) + 1
        session.inbox.push(f)
        return
      }
      const msg = JSON.parse(data)
      const reply = (m) => setTimeout(() => this.#text({ ...m, id: msg.id }))
      if (msg.type === "hello") reply({ type: "welcome", protocol: 1, session_id: "0".repeat(32), user_id: "bench", name: "bench", node_id: "n", limits: { max_frame_bytes: 1 << 24, max_subscriptions: 64 } })
      else if (msg.type === "subscribe_flow") {
        session.asked = msg.stream === true
        session.streaming = allowStream && session.asked
        reply({ type: "flow_state", flow_id: msg.flow_id, role: "editor", heads: hub.heads(), stream: session.streaming || undefined })
        // The hub starts the sync right after flow_state.
        setTimeout(() => pump(session))
      } else reply({ type: "ack" })
    }
    close() {}
  }
  return { session, FakeWebSocket }
}

/** Runs the sync protocol between the fake hub and one session until both are quiet. */
function pump(session) {
  for (let round = 0; round < 10_000; round++) {
    let moved = false
    while (session.inbox.length > 0) {
      const f = session.inbox.shift()
      if (f.kind === SYNC) [hub.doc, session.sync] = A.receiveSyncMessage(hub.doc, session.sync, f.payload)
      else hub.doc = A.loadIncremental(hub.doc, f.payload)
      moved = true
    }
    const [s, msg] = A.generateSyncMessage(hub.doc, session.sync)
    session.sync = s
    if (msg) {
      session.socket.onmessage({ data: frame(SYNC, FLOW_ID, msg) })
      moved = true
    }
    if (!moved) return
  }
  throw new Error("sync did not quiesce")
}

async function open(allowStream) {
  const { session, FakeWebSocket } = fakeSocket(allowStream)
  const client = await FlowhubClient.connect({ url: "ws://bench", token: "t", WebSocket: FakeWebSocket, reconnect: false })
  const flow = await client.subscribe(FLOW_ID)
  pump(session)
  if (Object.keys(flow.snapshot().nodes).length !== args.nodes) throw new Error("the flow did not get every node")
  return { session, client, flow }
}

// ---- the loop ------------------------------------------------------------------------------------

function summarize(samples) {
  const s = [...samples].sort((a, b) => a - b)
  const q = (p) => s[Math.min(s.length - 1, Math.floor(p * s.length))]
  return { n: s.length, mean_ms: s.reduce((a, b) => a + b, 0) / s.length, p50_ms: q(0.5), p99_ms: q(0.99) }
}

let seq = 0
function run(kind, { session, flow }, withListener) {
  let listenTo
  let reads = 0
  const off = withListener
    ? flow.on("change", () => {
        if (listenTo && flow.document.node(listenTo)) reads += 1
      })
    : () => {}
  const samples = []
  for (let it = 0; it < args.warmup + args.applies; it++) {
    const id = `n${(seq * 7919) % args.nodes}`
    const x = 10_000 + seq++
    hub.moveNode(id, { x, y: 1 })
    let data
    if (kind === SYNC) {
      const [s, msg] = A.generateSyncMessage(hub.doc, session.sync)
      session.sync = s
      if (!msg) throw new Error("the hub had nothing to send after an edit")
      data = frame(SYNC, FLOW_ID, msg)
    } else {
      data = frame(CHANGES, FLOW_ID, A.getLastLocalChange(hub.doc))
    }
    listenTo = id
    const t = performance.now()
    session.socket.onmessage({ data })
    const dt = performance.now() - t
    if (it >= args.warmup) samples.push(dt)
    if (flow.document.node(id)?.position.x !== x) throw new Error(`${kind === SYNC ? "0x01" : "0x02"} apply ${it}: ${id} not at x=${x}`)
    if (kind === SYNC) pump(session)
    else if (session.inbox.length > 0) throw new Error("the client answered a change frame")
  }
  off()
  if (withListener && reads < args.applies) throw new Error(`the change listener ran ${reads} times`)
  // Untimed: the whole view (brought up to date now if it lagged) is the hub's.
  if (JSON.stringify(flow.snapshot()) !== JSON.stringify(hub.snapshot())) throw new Error("the flow's view differs from the hub's")
  return summarize(samples)
}

const result = { src: args.src, nodes: args.nodes, applies: args.applies, warmup: args.warmup, node: process.version }

const viaSync = await open(false)
result.sync_0x01 = run(SYNC, viaSync, false)
result.sync_0x01_with_listener = run(SYNC, viaSync, true)
viaSync.client.close()

const viaChanges = await open(true)
if (viaChanges.session.streaming) {
  const before = viaChanges.session.sent[CHANGES]
  result.changes_0x02 = run(CHANGES, viaChanges, false)
  result.changes_0x02_with_listener = run(CHANGES, viaChanges, true)
  if (viaChanges.session.sent[CHANGES] !== before) throw new Error("the client sent change frames without editing")
} else {
  result.changes_0x02 = "n/a: the client does not subscribe with stream"
}
viaChanges.client.close()

if (args.json) console.log(JSON.stringify(result, null, 2))
else {
  const f = (s) => (typeof s === "string" ? s : `mean ${s.mean_ms.toFixed(3)} ms, p50 ${s.p50_ms.toFixed(3)} ms, p99 ${s.p99_ms.toFixed(3)} ms`)
  console.log(`apply one remote node move on a ${args.nodes}-node flow (${args.applies} applies, ${args.warmup} warm-up), Node ${process.version}, client ${args.src}:`)
  console.log(`  0x01 sync frame:                    ${f(result.sync_0x01)}`)
  console.log(`  0x01 sync frame + change listener:  ${f(result.sync_0x01_with_listener)}`)
  console.log(`  0x02 change frame:                  ${f(result.changes_0x02)}`)
  if (result.changes_0x02_with_listener) console.log(`  0x02 change frame + change listener: ${f(result.changes_0x02_with_listener)}`)
}
process.exit(0)
