// How long @flowhub/client takes to apply one remote edit (a node move made by another
// replica) on a 1,000-node flow, in Node, through the client's own apply path:
// `Flow.onSyncMessage(payload)` — what FlowhubClient calls for every binary sync frame:
// `Automerge.receiveSyncMessage`, then `#flush` (generateSyncMessage for the reply,
// handed to the client's sendBinary), the `change` event and the ready check.
//
// No hub: the "other replica" is a FlowDocument (the client's own typed-edit class) that
// plays the hub's part of the sync protocol with its own sync state; the Flow's replies
// go back to it (untimed), so both sync states stay in their steady state. The flow's
// root maps come from a local genesis change (the hub's genesis is made in Rust), then
// the writer adds N nodes with N typed edits and the Flow syncs them.
//
// Also timed, for reference, on the same edits: plain `Automerge.applyChanges` of the
// one change into a loaded copy, and Yjs `Y.applyUpdate` of one equivalent move on a
// 1,000-node Y.Doc.
//
//   node apply-bench.mjs [--nodes 1000] [--applies 1000] [--warmup 100] [--out FILE.json]

import { readFileSync } from "node:fs"
import { performance } from "node:perf_hooks"

import * as A from "@automerge/automerge"
import { Flow, FlowDocument, decodeSyncFrame } from "@flowhub/client"
import * as Y from "yjs"

import { fail, loadAverage, parseArgs, summarize, writeJson } from "./lib.mjs"

const USAGE = "usage: node apply-bench.mjs [--nodes 1000] [--applies 1000] [--warmup 100] [--out FILE.json]"
const args = parseArgs(process.argv.slice(2), { nodes: 1000, applies: 1000, warmup: 100, out: "" }, USAGE)
if (args.applies < 1) fail("--applies must be at least 1")
const FLOW_ID = "apply-bench"
const pkgVersion = (name) =>
  JSON.parse(readFileSync(new URL(`./node_modules/${name}/package.json`, import.meta.url), "utf8")).version

// ---- the writer replica and the Flow under test ------------------------------------------------

const genesis = A.change(A.init(), (d) => {
  d.name = new A.ImmutableString("")
  d.nodes = {}
  d.edges = {}
})
const writer = new FlowDocument(A.clone(genesis))
for (let k = 0; k < args.nodes; k++) {
  writer.addNode({ id: `n${k}`, kind: "action", label: `node ${k}`, position: { x: k, y: k % 10 } })
}

const outbox = []
const fakeClient = {
  connected: true,
  sessionId: "apply-bench",
  sendBinary(bytes) {
    outbox.push(bytes)
    return true
  },
  sendMessage: () => true,
  request: async () => ({ type: "pong" }),
  forgetFlow() {},
}
const flow = new Flow(fakeClient, FLOW_ID)
flow.onFlowState("editor", [])
let writerSync = A.initSyncState()

/** Runs the sync protocol between the writer and the Flow until both are quiet. */
function drain() {
  for (let round = 0; round < 1000; round++) {
    let moved = false
    while (outbox.length > 0) {
      const { payload } = decodeSyncFrame(outbox.shift())
      ;[writer.doc, writerSync] = A.receiveSyncMessage(writer.doc, writerSync, payload)
      moved = true
    }
    const [s, msg] = A.generateSyncMessage(writer.doc, writerSync)
    writerSync = s
    if (msg) {
      flow.onSyncMessage(msg)
      moved = true
    }
    if (!moved) return
  }
  throw new Error("sync did not quiesce")
}
drain()
if (Object.keys(flow.snapshot().nodes).length !== args.nodes) fail("the Flow did not get every node")

// A plain Automerge copy for the applyChanges reference.
let plain = A.load(A.save(writer.doc))

// ---- the Yjs reference -----------------------------------------------------------------------

const yWriter = new Y.Doc()
const yReader = new Y.Doc()
const yNodes = yWriter.getMap("nodes")
for (let k = 0; k < args.nodes; k++) {
  yWriter.transact(() => {
    const m = new Y.Map()
    yNodes.set(`n${k}`, m)
    m.set("kind", "action")
    m.set("label", `node ${k}`)
    m.set("x", k)
    m.set("y", k % 10)
    m.set("config", new Y.Map())
  })
}
Y.applyUpdate(yReader, Y.encodeStateAsUpdate(yWriter))

// ---- the loop ------------------------------------------------------------------------------------

const viaFlow = []
const viaFlowListener = []
const viaApplyChanges = []
const viaYjs = []
let listenerReads = 0
let listenTo
flow.on("change", () => {
  if (listenTo) {
    const n = flow.document.node(listenTo)
    if (n) listenerReads += 1
  }
})

const total = args.warmup + 2 * args.applies
for (let it = 0; it < total; it++) {
  const measuring = it >= args.warmup
  const withListener = measuring && it >= args.warmup + args.applies
  const id = `n${(it * 7919) % args.nodes}`
  const x = 10_000 + it
  writer.moveNode(id, { x, y: 1 })
  const [s, msg] = A.generateSyncMessage(writer.doc, writerSync)
  writerSync = s
  if (!msg) fail("the writer had nothing to send after an edit")
  const change = A.getLastLocalChange(writer.doc)

  listenTo = withListener ? id : undefined
  let t = performance.now()
  flow.onSyncMessage(msg)
  const dt = performance.now() - t
  if (measuring) (withListener ? viaFlowListener : viaFlow).push(dt)
  if (flow.document.node(id)?.position.x !== x) fail(`apply ${it}: the Flow does not show ${id} at x=${x}`)
  drain()

  t = performance.now()
  ;[plain] = A.applyChanges(plain, [change])
  if (measuring && !withListener) viaApplyChanges.push(performance.now() - t)

  const before = Y.encodeStateVector(yReader)
  yWriter.transact(() => {
    const m = yNodes.get(id)
    m.set("x", x)
    m.set("y", 1)
  })
  const update = Y.encodeStateAsUpdate(yWriter, before)
  t = performance.now()
  Y.applyUpdate(yReader, update)
  if (measuring && !withListener) viaYjs.push(performance.now() - t)
}
if (listenerReads < args.applies) fail(`the change listener ran ${listenerReads} times`)

const result = {
  tool: "loadtest/peers/apply-bench.mjs",
  nodes: args.nodes,
  applies: args.applies,
  warmup: args.warmup,
  node_version: process.version,
  automerge_version: pkgVersion("@automerge/automerge"),
  yjs_version: pkgVersion("yjs"),
  flow_on_sync_message: summarize(viaFlow),
  flow_on_sync_message_with_change_listener: summarize(viaFlowListener),
  automerge_apply_changes: summarize(viaApplyChanges),
  yjs_apply_update: summarize(viaYjs),
  path: "Flow.onSyncMessage: A.receiveSyncMessage + reply generation (#flush) + change event + ready check; fed by a FlowDocument replica over the sync protocol, no hub",
  load_average: loadAverage(),
}
writeJson(args.out, result)
const f = (s) => `mean ${s.mean_ms.toFixed(3)} ms, p50 ${s.p50_ms.toFixed(3)} ms, p99 ${s.p99_ms.toFixed(3)} ms`
console.log(`apply one remote move on a ${args.nodes}-node flow, ${args.applies} applies each:`)
console.log(`  @flowhub/client Flow.onSyncMessage:          ${f(result.flow_on_sync_message)}`)
console.log(`  … with a change listener reading the node:   ${f(result.flow_on_sync_message_with_change_listener)}`)
console.log(`  Automerge.applyChanges (one change):         ${f(result.automerge_apply_changes)}`)
console.log(`  Yjs Y.applyUpdate (same move, Y.Map nodes):  ${f(result.yjs_apply_update)}`)
if (args.out) console.log(`→ ${args.out}`)
