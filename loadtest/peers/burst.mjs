// A burst of back-to-back inserts, timed until the server has them all:
//
//   client  @flowhub/client on /v1/ws: COUNT `addNode` calls in one synchronous loop,
//           until every one is acknowledged (the hub's ack: stored durably).
//   repo    a stock automerge-repo Repo (WebSocketClientAdapter) on flowhub's
//           /v1/automerge-repo: COUNT `handle.change` node inserts in one loop, until
//           the hub has them all. Signal: the hub's heads, as its sync messages report
//           them to the Repo (`syncState.theirHeads` from the Repo's synchronizer),
//           contain the Repo's heads; the hub sends those only after storing the
//           changes. Checked afterwards with GET /v1/flows/{id} (all COUNT nodes).
//           The stock Repo throttles its sync messages (syncDebounceRate 100 ms).
//   hocuspocus  COUNT Y.Map inserts, one transaction each, until the server applied
//           them all (SyncStatus: unsyncedChanges back to 0) and until a second client
//           (its own socket) observes all COUNT nodes.
//
//   node burst.mjs [--url ws://FLOWHUB] [--hocuspocus-url ws://HOCUSPOCUS] [--count 1000] [--out FILE.json]
//
// Sides whose URL is not given are skipped. Environment: FLOWHUB_JWT_SECRET (flowhub).

import { performance } from "node:perf_hooks"

import * as A from "@automerge/automerge"
import { Repo } from "@automerge/automerge-repo"
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket"
import { flowAutomergeUrl, flowDocumentId } from "@flowhub/client"
import * as Y from "yjs"

import { flowhubConnect, flowhubServerState, hocuspocusOpen } from "./backends.mjs"
import { fail, httpBase, loadAverage, mintToken, parseArgs, round, runPrefix, sleep, until, writeJson } from "./lib.mjs"

const USAGE = "usage: node burst.mjs [--url ws://FLOWHUB] [--hocuspocus-url ws://HOCUSPOCUS] [--count 1000] [--out FILE.json]"
const args = parseArgs(process.argv.slice(2), { url: "", hocuspocusUrl: "", count: 1000, out: "" }, USAGE)
if (!args.url && !args.hocuspocusUrl) fail(`give --url and/or --hocuspocus-url\n${USAGE}`)
const secret = process.env.FLOWHUB_JWT_SECRET ?? ""
const prefix = runPrefix("pb")
const N = args.count
const TIMEOUT_MS = 300_000
const result = { tool: "loadtest/peers/burst.mjs", count: N, load_average: loadAverage() }
const lines = []

async function nodeCount(flowId) {
  const json = await flowhubServerState(args.url, secret, flowId)
  return Object.keys(json.nodes ?? {}).length
}

// ---- @flowhub/client ----------------------------------------------------------------------

async function flowhubClientBurst() {
  const flowId = `${prefix}-client`
  const client = await flowhubConnect(args.url, secret, `${prefix}-writer`, { [flowId]: "editor" })
  const flow = await client.subscribe(flowId)
  const t0 = performance.now()
  const edits = []
  for (let k = 0; k < N; k++) {
    edits.push(flow.addNode({ id: `n${k}`, kind: "action", label: `node ${k}`, position: { x: k, y: 0 } }))
  }
  const loopMs = performance.now() - t0
  const verdicts = await Promise.all(edits.map((e) => flow.waitAcked(e, TIMEOUT_MS)))
  const ackedMs = performance.now() - t0
  const unacked = verdicts.filter((v) => v !== "acked").length
  client.close()
  const stored = await nodeCount(flowId)
  if (unacked > 0 || stored !== N) throw new Error(`client burst: ${unacked} not acked; hub has ${stored}/${N} nodes`)
  result.flowhub_client = { flow: flowId, loop_ms: round(loopMs, 1), all_acked_ms: round(ackedMs, 1), hub_nodes: stored }
  lines.push(`flowhub @flowhub/client: ${N} addNode in ${loopMs.toFixed(0)} ms (loop), all acked after ${ackedMs.toFixed(0)} ms`)
}

// ---- stock automerge-repo Repo ---------------------------------------------------------------

async function repoBurst() {
  const flowId = `${prefix}-repo`
  // Create the flow (the hub's genesis) through a flowhub client first, as a user would.
  const creator = await flowhubConnect(args.url, secret, `${prefix}-creator`, { [flowId]: "editor" })
  await creator.subscribe(flowId)
  creator.close()

  const tok = mintToken(secret, `${prefix}-repo`, { [flowId]: "editor" })
  const adapter = new WebSocketClientAdapter(`${args.url}/v1/automerge-repo?token=${tok}`, 500)
  const repo = new Repo({ network: [adapter], peerId: `${prefix}-repo-peer` })
  const documentId = flowDocumentId(flowId)
  let hubHeads = []
  repo.synchronizer.on("sync-state", ({ documentId: d, syncState }) => {
    if (d === documentId && syncState.theirHeads) hubHeads = syncState.theirHeads
  })
  try {
    const handle = await repo.find(flowAutomergeUrl(flowId))
    const ok = await until(() => handle.doc()?.nodes !== undefined, 30_000)
    if (!ok) throw new Error("the Repo did not get the flow's genesis")
    const t0 = performance.now()
    for (let k = 0; k < N; k++) {
      handle.change((d) => {
        const id = `n${k}`
        d.nodes[id] = {}
        const n = d.nodes[id]
        n.kind = new A.ImmutableString("action")
        n.label = new A.ImmutableString(`node ${k}`)
        n.position = {}
        n.position.x = new A.Float64(k)
        n.position.y = new A.Float64(0)
        n.config = {}
      })
    }
    const loopMs = performance.now() - t0
    const mine = A.getHeads(handle.doc())
    const has = await until(() => mine.every((h) => hubHeads.includes(h)), TIMEOUT_MS, 2)
    const headsMs = performance.now() - t0
    if (!has) throw new Error(`repo burst: the hub's heads did not reach the Repo's within ${TIMEOUT_MS} ms`)
    const stored = await nodeCount(flowId)
    const getMs = performance.now() - t0
    if (stored !== N) throw new Error(`repo burst: hub heads matched but GET /v1/flows shows ${stored}/${N} nodes`)
    result.automerge_repo = {
      flow: flowId,
      loop_ms: round(loopMs, 1),
      hub_has_all_ms: round(headsMs, 1),
      confirmed_by_get_ms: round(getMs, 1),
      hub_nodes: stored,
      signal: "the hub's heads (Repo syncState.theirHeads) contain the Repo's heads; then GET /v1/flows/{id}",
    }
    lines.push(
      `flowhub stock automerge-repo Repo: ${N} inserts in ${loopMs.toFixed(0)} ms (loop), hub has all after ${headsMs.toFixed(0)} ms (GET confirms at ${getMs.toFixed(0)} ms)`,
    )
  } finally {
    adapter.socket?.addEventListener?.("error", () => {})
    await repo.shutdown().catch(() => {})
  }
}

// ---- Hocuspocus ---------------------------------------------------------------------------------

async function hocuspocusBurst() {
  const name = `${prefix}-hp`
  const writer = await hocuspocusOpen(args.hocuspocusUrl, name)
  const observer = await hocuspocusOpen(args.hocuspocusUrl, name)
  const seen = observer.doc.getMap("nodes")
  let observedMs
  const t0 = performance.now()
  seen.observe(() => {
    if (observedMs === undefined && seen.size >= N) observedMs = performance.now() - t0
  })
  const nodes = writer.doc.getMap("nodes")
  for (let k = 0; k < N; k++) {
    writer.doc.transact(() => {
      const m = new Y.Map()
      nodes.set(`n${k}`, m)
      m.set("kind", "action")
      m.set("label", `node ${k}`)
      m.set("x", k)
      m.set("y", 0)
      m.set("config", new Y.Map())
    })
  }
  const loopMs = performance.now() - t0
  await writer.flushed(TIMEOUT_MS)
  const appliedMs = performance.now() - t0
  const ok = await until(() => observedMs !== undefined, TIMEOUT_MS, 1)
  writer.close()
  observer.close()
  if (!ok) throw new Error(`hocuspocus burst: the observer saw ${seen.size}/${N} nodes`)
  result.hocuspocus = {
    document: name,
    loop_ms: round(loopMs, 1),
    server_applied_all_ms: round(appliedMs, 1),
    observer_has_all_ms: round(observedMs, 1),
    note: "SyncStatus = applied in the server's memory (no durable ack in Hocuspocus)",
  }
  lines.push(
    `hocuspocus: ${N} Y.Map inserts in ${loopMs.toFixed(0)} ms (loop), server applied all after ${appliedMs.toFixed(0)} ms, second client has all after ${observedMs.toFixed(0)} ms`,
  )
}

if (args.url) {
  result.flowhub_url = args.url
  await flowhubClientBurst()
  await sleep(300)
  await repoBurst()
}
if (args.hocuspocusUrl) {
  result.hocuspocus_url = args.hocuspocusUrl
  await hocuspocusBurst()
}
writeJson(args.out, result)
for (const l of lines) console.log(l)
if (args.out) console.log(`→ ${args.out}`)
process.exit(0)
