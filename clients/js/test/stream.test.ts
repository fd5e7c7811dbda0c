// Change streaming (`subscribe_flow.stream`, binary frames of kind 0x02): against a
// real hub, and the Flow's state machine alone against a scripted hub.

import * as A from "@automerge/automerge"
import { WebSocket } from "ws"
import { afterAll, beforeAll, describe, expect, it } from "vitest"

import {
  FRAME_FLOW_CHANGES,
  FRAME_FLOW_SYNC,
  Flow,
  FlowDocument,
  FlowhubClient,
  FlowhubError,
  decodeFrame,
  type FlowFrameStats,
  type WebSocketCtor,
} from "../src/index.js"
import { eventually, sleep, startHub, token, type HubProcess } from "./support.js"

describe("streaming against a real hub", () => {
  let hub: HubProcess
  const open: FlowhubClient[] = []

  async function client(sub: string, flows: Record<string, "viewer" | "editor" | "owner">, stream = true) {
    const c = await FlowhubClient.connect({
      url: hub.url,
      token: token(sub, flows),
      WebSocket: WebSocket as unknown as WebSocketCtor,
      client: "vitest",
      stream,
    })
    open.push(c)
    return c
  }

  beforeAll(async () => {
    hub = await startHub()
  })

  afterAll(async () => {
    for (const c of open) c.close()
    await hub?.stop()
  })

  /** Waits until no frame moved either way for 150 ms (a sync exchange finished). */
  async function settle(...flows: Flow[]) {
    let last = ""
    await eventually(
      async () => {
        const now = JSON.stringify(flows.map((f) => f.frameStats()))
        const quiet = now === last
        last = now
        await sleep(150)
        return quiet
      },
      10_000,
      "the sync exchange to settle",
    )
  }

  const diff = (after: FlowFrameStats, before: FlowFrameStats) =>
    Object.fromEntries(Object.entries(after).map(([k, v]) => [k, v - before[k as keyof FlowFrameStats]])) as unknown as FlowFrameStats

  it("two streaming clients converge, the hub streams after the first sync, every edit is acked", async () => {
    const a = await client("alice", { str: "editor" })
    const b = await client("bob", { str: "editor" })
    const fa = await a.subscribe("str")
    const fb = await b.subscribe("str")
    expect(fa.streaming && fb.streaming).toBe(true)
    expect(fa.caughtUp && fb.caughtUp).toBe(true)
    // The first sync ran the sync protocol, both ways.
    expect(fb.frameStats().syncIn).toBeGreaterThan(0)
    expect(fb.frameStats().syncOut).toBeGreaterThan(0)

    await fa.addNode({ id: "m", kind: "action", label: "M", position: { x: 0, y: 0 } })
    await eventually(() => fb.document.node("m"), 10_000, "the node on b")
    // Let the join's sync exchange finish: the hub streams to a peer it knows is current.
    await settle(fa, fb)
    const a0 = fa.frameStats()
    const b0 = fb.frameStats()

    const edits = []
    for (let i = 1; i <= 40; i++) {
      edits.push(fa.moveNode("m", { x: i, y: -i }))
      edits.push(fb.addNode({ id: `b${i}`, kind: "action", label: `B${i}`, position: { x: i, y: 0 } }))
      if (i % 10 === 0) edits.push(fb.relabelNode("m", `label ${i}`))
    }
    await Promise.all(edits) // every edit acked
    expect(fa.pendingChanges()).toEqual([])
    expect(fb.pendingChanges()).toEqual([])
    await eventually(() => JSON.stringify(fa.snapshot()) === JSON.stringify(fb.snapshot()), 10_000, "convergence")
    const snap = fa.snapshot()
    expect(Object.keys(snap.nodes).length).toBe(41)
    expect(snap.nodes.m).toMatchObject({ label: "label 40", position: { x: 40, y: -40 } })

    const da = diff(fa.frameStats(), a0)
    const db = diff(fb.frameStats(), b0)
    console.log(`streaming: a ${JSON.stringify(da)}, b ${JSON.stringify(db)}`)
    // Every local edit left in a change frame, none through the sync protocol; the
    // edits of one task share a frame (here: the loop's, one frame per client).
    expect(da.changesSent).toBe(40)
    expect(db.changesSent).toBe(44)
    expect(da.changesOut).toBe(1)
    expect(db.changesOut).toBe(1)
    expect(da.syncOut + db.syncOut).toBe(0)
    // The hub streamed the other side's edits, and nothing lacked dependencies.
    expect(db.changesIn).toBeGreaterThan(0)
    expect(da.changesIn).toBeGreaterThan(0)
    expect(da.fallbacks + db.fallbacks).toBe(0)

    // The hub's own view agrees.
    const r = await fetch(`${hub.httpUrl}/v1/flows/str`, { headers: { authorization: `Bearer ${token("alice", { str: "viewer" })}` } })
    const json = (await r.json()) as { heads: string[]; nodes: Record<string, unknown> }
    expect(Object.keys(json.nodes).length).toBe(41)
    expect([...json.heads].sort()).toEqual([...fa.heads()].sort())
  })

  it("a client that does not ask to stream gets sync frames only and converges with streaming ones", async () => {
    const a = await client("ana", { mixed: "editor" })
    const c = await client("carl", { mixed: "editor" }, false)
    const fa = await a.subscribe("mixed")
    const fc = await c.subscribe("mixed")
    expect(fa.streaming).toBe(true)
    expect(fc.streaming).toBe(false)
    const edits = []
    for (let i = 0; i < 10; i++) {
      edits.push(fa.addNode({ id: `a${i}`, kind: "action", label: `A${i}`, position: { x: i, y: 0 } }))
      edits.push(fc.addNode({ id: `c${i}`, kind: "action", label: `C${i}`, position: { x: i, y: 1 } }))
    }
    await Promise.all(edits)
    await eventually(() => JSON.stringify(fa.snapshot()) === JSON.stringify(fc.snapshot()), 10_000, "convergence")
    expect(Object.keys(fc.snapshot().nodes).length).toBe(20)
    expect(fc.frameStats()).toMatchObject({ changesIn: 0, changesOut: 0 })
    expect(fa.frameStats().changesSent).toBe(10)
  })

  it("a viewer's streamed edit is refused and rolled back; the hub keeps streaming to it", async () => {
    const ed = await client("edna", { vstr: "editor" })
    const fe = await ed.subscribe("vstr")
    await fe.addNode({ id: "keep", kind: "trigger", label: "Keep", position: { x: 0, y: 0 } })
    const v = await client("vera", { vstr: "viewer" })
    const fv = await v.subscribe("vstr")
    expect(fv.streaming && fv.caughtUp).toBe(true)

    const before = fv.frameStats()
    const edit = fv.addNode({ id: "nope", kind: "action", label: "Nope", position: { x: 1, y: 1 } })
    // The frame leaves at the end of the task (the task's edits share it).
    await sleep(0)
    expect(fv.frameStats().changesOut).toBe(before.changesOut + 1)
    await expect(edit).rejects.toMatchObject({ code: "forbidden", flowId: "vstr" })
    expect(fv.snapshot().nodes.nope).toBeUndefined()
    // The flags stay; only the sync state started over.
    expect(fv.streaming && fv.caughtUp).toBe(true)

    await eventually(() => fv.frameStats().syncIn > before.syncIn, 10_000, "the resync after the refusal")
    await settle(fv, fe)
    const mid = fv.frameStats()
    await fe.relabelNode("keep", "Still here")
    await eventually(() => fv.document.node("keep")?.label === "Still here", 10_000, "the viewer follows")
    await eventually(() => fv.frameStats().changesIn > mid.changesIn, 10_000, "a change frame after the refusal")
    expect(JSON.stringify(fv.snapshot())).toBe(JSON.stringify(fe.snapshot()))
  })
})

// ---- the Flow alone, against a scripted hub ------------------------------------------

/** The hub's genesis as the tests build it (the real one is made in Rust). */
function genesisDoc(): A.Doc<unknown> {
  return A.change(A.init<unknown>(), (d: any) => {
    d.name = new A.ImmutableString("")
    d.nodes = {}
    d.edges = {}
  })
}

/** A Flow wired to a fake client that records the binary frames it sends. */
function scriptedFlow() {
  const sent: { kind: number; payload: Uint8Array }[] = []
  const fakeClient = {
    connected: true,
    sessionId: "s",
    sendBinary(bytes: Uint8Array) {
      const f = decodeFrame(bytes)
      sent.push({ kind: f.kind, payload: f.payload.slice() })
      return true
    },
    // The real client batches a task's changes into one frame; this one sends each at once.
    queueChanges(flow: Flow, change: Uint8Array) {
      sent.push({ kind: FRAME_FLOW_CHANGES, payload: change.slice() })
      flow.countChangesSent(1)
      return true
    },
    sendMessage: () => true,
    request: async () => ({ type: "pong" }),
    forgetFlow() {},
  }
  const flow = new Flow(fakeClient as unknown as FlowhubClient, "scripted")
  return { flow, sent }
}

/** The hub's side: a document and the sync state for the one flow under test. */
class ScriptedHub {
  doc: FlowDocument
  sync = A.initSyncState()

  constructor(doc: A.Doc<unknown>) {
    this.doc = new FlowDocument(doc)
  }

  /** Runs the sync protocol with the flow (and takes its change frames) until both are quiet. */
  pump(flow: Flow, sent: { kind: number; payload: Uint8Array }[]) {
    for (let round = 0; round < 100; round++) {
      let moved = false
      while (sent.length > 0) {
        const f = sent.shift()!
        if (f.kind === FRAME_FLOW_SYNC) this.sync = this.doc.receiveSyncMessage(this.sync, f.payload)
        else this.doc.receiveChanges(f.payload)
        moved = true
      }
      const [s, msg] = this.doc.generateSyncMessage(this.sync)
      this.sync = s
      if (msg) {
        flow.onSyncMessage(msg)
        moved = true
      }
      if (!moved) return
    }
    throw new Error("the sync did not quiesce")
  }

  /** A node move by someone else; returns the raw change. */
  move(id: string, x: number): Uint8Array {
    const { hash } = this.doc.moveNode(id, { x, y: x })
    return this.doc.changeBytes(hash)!
  }
}

function hubWithNode(): ScriptedHub {
  const hub = new ScriptedHub(genesisDoc())
  hub.doc.addNode({ id: "a", kind: "action", label: "A", position: { x: 0, y: 0 } })
  return hub
}

const kinds = (sent: { kind: number }[]) => sent.map((f) => f.kind)

describe("FlowDocument with a lagging view", () => {
  it("reads a node from the backend exactly as from the view", () => {
    const hub = hubWithNode()
    hub.doc.addNode({
      id: "rich",
      kind: "http",
      label: "Rich ✓",
      position: { x: 1.5, y: -2 },
      config: { retries: 3, ratio: 0.25, on: true, off: null, name: "n", nested: { list: [1, "two", { three: [3] }], empty: {} } },
    })
    const replica = new FlowDocument(A.load(A.save(hub.doc.doc)))
    const change = hub.move("rich", 7)
    replica.receiveChanges(change)
    expect(replica.stale).toBe(true)
    const fromBackend = replica.node("rich")
    expect(replica.node("missing")).toBeUndefined()
    expect(replica.stale).toBe(true)
    replica.refresh()
    expect(replica.stale).toBe(false)
    expect(fromBackend).toEqual(replica.node("rich"))
    expect(fromBackend).toEqual(hub.doc.node("rich"))
    expect(fromBackend?.position).toEqual({ x: 7, y: 7 })
    expect(replica.snapshot()).toEqual(hub.doc.snapshot())
  })

  it("brings the view up to date once for many changes", () => {
    const hub = hubWithNode()
    const replica = new FlowDocument(A.load(A.save(hub.doc.doc)))
    for (let i = 1; i <= 50; i++) expect(replica.receiveChanges(hub.move("a", i))).toBe(true)
    expect(replica.isLoaded()).toBe(true)
    expect(replica.heads()).toEqual(hub.doc.heads())
    expect(replica.snapshot()).toEqual(hub.doc.snapshot())
    // Typed edits work on the refreshed view and their changes go anywhere.
    const { hash } = replica.moveNode("a", { x: -1, y: -1 })
    expect(hub.doc.receiveChanges(replica.changeBytes(hash)!)).toBe(true)
    expect(hub.doc.snapshot()).toEqual(replica.snapshot())
  })
})

describe("the Flow's streaming state machine", () => {
  it("applies change frames with no reply, leaving the JS view to the next read", () => {
    const hub = hubWithNode()
    const { flow, sent } = scriptedFlow()
    flow.beforeSubscribe()
    flow.onFlowState("editor", hub.doc.heads(), true)
    hub.pump(flow, sent)
    expect(flow.caughtUp).toBe(true)

    let changes = 0
    flow.on("change", ({ local }) => {
      if (!local) changes++
    })
    flow.onChanges(hub.move("a", 5))
    expect(sent).toEqual([]) // no answer to a change frame
    expect(changes).toBe(1)
    expect(flow.document.stale).toBe(true)
    expect(flow.document.node("a")?.position).toEqual({ x: 5, y: 5 }) // read from the backend
    expect(flow.document.stale).toBe(true)
    expect(flow.snapshot().nodes.a.position).toEqual({ x: 5, y: 5 })
    // (A replica that loaded the whole flow reads its first snapshot as plain data.)
    expect((flow.doc as any).nodes.a.position.x).toBe(5) // brings the view up to date
    expect(flow.document.stale).toBe(false)
    expect((flow.doc as any).nodes.a.position.x).toBe(5)
    // A frame holding changes the replica has changes nothing.
    flow.onChanges(hub.doc.changeBytes(hub.doc.heads()[0])!)
    expect(changes).toBe(1)
    expect(flow.heads()).toEqual(hub.doc.heads())
    // A typed edit on the lagging view sees the latest state.
    flow.onChanges(hub.move("a", 6))
    flow.relabelNode("a", "A2")
    expect(flow.snapshot().nodes.a).toMatchObject({ label: "A2", position: { x: 6, y: 6 } })
  })

  it("falls back to the sync protocol when a change frame lacks dependencies, and converges", () => {
    const hub = hubWithNode()
    const { flow, sent } = scriptedFlow()
    flow.beforeSubscribe()
    flow.onFlowState("editor", hub.doc.heads(), true)
    hub.pump(flow, sent)
    expect(flow.frameStats().fallbacks).toBe(0)

    hub.move("a", 1) // never sent to the flow
    const second = hub.move("a", 2)
    flow.onChanges(second)
    // Queued, not applied: its dependency is missing, so the flow asked for a sync round.
    expect(flow.document.node("a")?.position).toEqual({ x: 0, y: 0 })
    expect(flow.document.missingDeps().length).toBe(1)
    expect(flow.frameStats().fallbacks).toBe(1)
    expect(kinds(sent)).toEqual([FRAME_FLOW_SYNC])

    hub.pump(flow, sent)
    expect(flow.document.missingDeps()).toEqual([])
    expect(flow.heads()).toEqual(hub.doc.heads())
    expect(flow.snapshot()).toEqual(hub.doc.snapshot())
    expect(flow.snapshot().nodes.a.position).toEqual({ x: 2, y: 2 })

  })

  it("sends local edits through the sync protocol until caught up, then as change frames", () => {
    // The replica held part of the flow already (an earlier session); the hub has more.
    const hub = hubWithNode()
    const { flow, sent } = scriptedFlow()
    flow.document.doc = A.load(A.save(hub.doc.doc))
    hub.doc.addNode({ id: "b", kind: "action", label: "B", position: { x: 1, y: 1 } })

    flow.beforeSubscribe()
    flow.onFlowState("editor", hub.doc.heads(), true)
    expect(flow.streaming).toBe(true)
    expect(flow.caughtUp).toBe(false)

    // Not caught up: the edit is left to the sync protocol (the first sync message is
    // in flight; the protocol sends the change once the hub answered).
    const early = flow.moveNode("a", { x: 3, y: 3 })
    expect(kinds(sent)).not.toContain(FRAME_FLOW_CHANGES)
    expect(flow.frameStats().changesOut).toBe(0)

    hub.pump(flow, sent)
    expect(flow.caughtUp).toBe(true)
    expect(hub.doc.hasHeads([early.hash])).toBe(true)

    const late = flow.moveNode("a", { x: 4, y: 4 })
    expect(kinds(sent)).toEqual([FRAME_FLOW_CHANGES])
    expect(A.decodeChange(sent[0].payload).hash).toBe(late.hash)
    expect(flow.frameStats().changesOut).toBe(1)
    hub.pump(flow, sent)
    expect(hub.doc.snapshot()).toEqual(flow.snapshot())
    expect(hub.doc.node("a")?.position).toEqual({ x: 4, y: 4 })
  })

  it("streams only when the hub agreed, and starts over on every subscribe", () => {
    const hub = hubWithNode()
    const { flow, sent } = scriptedFlow()
    flow.beforeSubscribe()
    flow.onFlowState("editor", hub.doc.heads(), false) // the hub declined
    hub.pump(flow, sent)
    expect(flow.caughtUp).toBe(true)
    flow.moveNode("a", { x: 1, y: 1 })
    expect(kinds(sent)).toEqual([FRAME_FLOW_SYNC])
    hub.pump(flow, sent)

    // A resubscribe (reconnect): no streaming until the new flow_state says so.
    flow.onDisconnect()
    flow.beforeSubscribe()
    expect(flow.streaming || flow.caughtUp).toBe(false)
    flow.moveNode("a", { x: 2, y: 2 }) // offline: nothing sent
    expect(sent).toEqual([])
    hub.sync = A.initSyncState() // the hub starts from a fresh sync state too
    flow.onFlowState("editor", hub.doc.heads(), true)
    // Already holds the announced heads: caught up at once. The offline edit goes
    // through the sync protocol (the first sync message is on its way)...
    expect(flow.caughtUp && flow.streaming).toBe(true)
    expect(kinds(sent)).toEqual([FRAME_FLOW_SYNC])
    hub.pump(flow, sent)
    expect(hub.doc.node("a")?.position).toEqual({ x: 2, y: 2 })
    // ...and new edits as change frames.
    flow.moveNode("a", { x: 3, y: 3 })
    expect(kinds(sent)).toEqual([FRAME_FLOW_CHANGES])
    hub.pump(flow, sent)
    expect(hub.doc.snapshot()).toEqual(flow.snapshot())
  })

  it("keeps streaming after a refusal; only the sync state starts over", async () => {
    const hub = hubWithNode()
    const { flow, sent } = scriptedFlow()
    flow.beforeSubscribe()
    flow.onFlowState("viewer", hub.doc.heads(), true)
    hub.pump(flow, sent)
    const edit = flow.addNode({ id: "x", kind: "action", label: "X", position: { x: 0, y: 0 } })
    expect(kinds(sent)).toEqual([FRAME_FLOW_CHANGES])
    sent.length = 0 // the hub refuses it
    flow.onRefused(new FlowhubError("forbidden", "read-only", "scripted"))
    await expect(edit).rejects.toMatchObject({ code: "forbidden" })
    expect(flow.snapshot().nodes.x).toBeUndefined()
    expect(flow.streaming && flow.caughtUp).toBe(true)
    expect(kinds(sent)).toEqual([FRAME_FLOW_SYNC]) // a fresh sync round
    hub.sync = A.initSyncState()
    hub.pump(flow, sent)
    flow.onChanges(hub.move("a", 9))
    expect(flow.document.node("a")?.position).toEqual({ x: 9, y: 9 })
    expect(sent).toEqual([])
  })
})
