// Opening a large flow and editing in bursts, against a real hub: a new client gets the
// whole flow in one sync message, holds it in its Automerge backend before it has a JS
// view, and its first read (built from the saved document) is the hub's flow; a burst
// of edits in one task leaves as one change frame and every edit is acked.

import { WebSocket } from "ws"
import { afterAll, beforeAll, describe, expect, it } from "vitest"

import { FlowhubClient, snapshotOf, type WebSocketCtor } from "../src/index.js"
import { eventually, startHub, token, type HubProcess } from "./support.js"

const N = 1000

describe("a large flow against a real hub", () => {
  let hub: HubProcess
  const open: FlowhubClient[] = []

  async function client(sub: string, flows: Record<string, "viewer" | "editor" | "owner">) {
    const c = await FlowhubClient.connect({
      url: hub.url,
      token: token(sub, flows),
      WebSocket: WebSocket as unknown as WebSocketCtor,
      client: "vitest",
    })
    open.push(c)
    return c
  }

  async function hubFlow(flowId: string) {
    const r = await fetch(`${hub.httpUrl}/v1/flows/${flowId}`, {
      headers: { authorization: `Bearer ${token("checker", { [flowId]: "viewer" })}` },
    })
    expect(r.status).toBe(200)
    return (await r.json()) as { heads: string[]; name: string; nodes: Record<string, unknown>; edges: Record<string, unknown> }
  }

  beforeAll(async () => {
    hub = await startHub()
  })

  afterAll(async () => {
    for (const c of open) c.close()
    await hub?.stop()
  })

  it(`a burst of ${N} addNode calls leaves in one change frame and every edit is acked`, async () => {
    const w = await client("writer", { big: "editor" })
    const fw = await w.subscribe("big")
    const before = fw.frameStats()
    const edits = []
    for (let k = 0; k < N; k++) {
      edits.push(fw.addNode({ id: `n${k}`, kind: "action", label: `node ${k}`, position: { x: k, y: k % 10 }, config: { k } }))
    }
    // A few edges too, so the open below carries them.
    edits.push(fw.connect({ node: "n0", port: "out" }, { node: "n1", port: "in" }, "e01"))
    await Promise.all(edits)
    expect(fw.pendingChanges()).toEqual([])
    const stats = fw.frameStats()
    expect(stats.changesSent - before.changesSent).toBe(N + 1)
    expect(stats.changesOut - before.changesOut).toBe(1)
    const json = await hubFlow("big")
    expect(Object.keys(json.nodes).length).toBe(N)
    expect([...json.heads].sort()).toEqual([...fw.heads()].sort())
  })

  it("a new client holds the whole flow before it builds a view, and its view is the hub's", async () => {
    const json = await hubFlow("big")
    const r = await client("reader", { big: "editor" })
    const fr = await r.subscribe("big")
    // Ready: the replica holds the hub's heads; nothing has read the JS view yet.
    expect(fr.document.stale).toBe(true)
    expect(fr.nodeIds().length).toBe(N)
    expect(fr.document.node("n7")).toEqual({ id: "n7", kind: "action", label: "node 7", position: { x: 7, y: 7 }, config: { k: 7 } })
    // The whole flow came in the hub's sync messages (the saved document), not change by change.
    expect(fr.frameStats().syncIn).toBeLessThanOrEqual(3)
    // The first snapshot reads the backend as plain data; the view is built on demand.
    const snap = fr.snapshot()
    expect(Object.keys(snap.nodes).length).toBe(N)
    expect(JSON.parse(JSON.stringify(snap))).toEqual({ name: json.name, nodes: json.nodes, edges: json.edges })
    expect(snapshotOf(fr.doc)).toEqual(snap)
    expect(fr.document.stale).toBe(false)
    expect([...fr.heads()].sort()).toEqual([...json.heads].sort())
  })

  it("the new client and the writer keep converging after the open", async () => {
    const w = await client("writer2", { big: "editor" })
    const fw = await w.subscribe("big")
    const r = await client("reader2", { big: "editor" })
    const fr = await r.subscribe("big")
    const a = fr.moveNode("n3", { x: -3, y: -3 })
    const b = fw.relabelNode("n4", "four")
    const c = fr.deleteNode("n0")
    await Promise.all([a, b, c])
    await eventually(() => fw.document.node("n3")?.position.x === -3 && fr.document.node("n4")?.label === "four", 10_000, "both edits on both")
    await eventually(() => [...fw.heads()].sort().join() === [...fr.heads()].sort().join(), 10_000, "the same heads")
    const json = await hubFlow("big")
    expect([...json.heads].sort()).toEqual([...fr.heads()].sort())
    expect(JSON.parse(JSON.stringify(fr.snapshot()))).toEqual({ name: json.name, nodes: json.nodes, edges: json.edges })
    expect(JSON.parse(JSON.stringify(fw.snapshot()))).toEqual({ name: json.name, nodes: json.nodes, edges: json.edges })
    expect(json.edges).toEqual({})
    // Undo on the new client reverts its own delete (node and edge), from the scoped diff.
    const undone = fr.undo()
    await undone?.change
    await eventually(() => fw.document.node("n0") !== undefined, 10_000, "the undone delete on the writer")
    expect(Object.keys(fw.snapshot().edges)).toEqual(["e01"])
  })
})
