// Edits as data (`applyEdits`) and per-user undo/redo (crdt/src/undo.rs semantics):
// first on a bare FlowDocument, then with two clients against a real hub.

import * as A from "@automerge/automerge"
import { afterAll, beforeAll, describe, expect, it } from "vitest"

import { FlowDocument, FlowEditError, UndoStack, diffSnapshots, type Edit, type Flow, type FlowhubClient } from "../src/index.js"
import { connect, eventually, startHub, token, type HubProcess } from "./support.js"

function loaded(): FlowDocument {
  let doc = A.init<unknown>()
  doc = A.change(doc, (d: any) => {
    d.name = new A.ImmutableString("")
    d.nodes = {}
    d.edges = {}
  })
  return new FlowDocument(A.clone(doc))
}

describe("applyEdits (edits as data)", () => {
  it("applies the Rust Edit JSON as one change and returns the ids", () => {
    const doc = loaded()
    const changes = A.getAllChanges(doc.doc).length
    const edits: Edit[] = JSON.parse(`[
      {"op": "set_name", "name": "Pipeline"},
      {"op": "add_node", "id": "n0", "kind": "trigger", "position": {"x": 0, "y": 0}},
      {"op": "add_node", "kind": "http", "label": "Fetch", "position": {"x": 0, "y": 0}, "config": {"url": "https://example.com", "gone": 1}},
      {"op": "move_node", "id": "n0", "to": {"x": 1, "y": 2}},
      {"op": "relabel_node", "id": "n0", "label": "Start"},
      {"op": "set_node_kind", "id": "n0", "kind": "cron"},
      {"op": "configure_node", "id": "n0", "key": "every", "value": {"minutes": 5}},
      {"op": "connect", "id": "e1", "source": {"node": "n0", "port": "out"}, "target": {"node": "n0", "port": "in"}},
      {"op": "disconnect", "id": "e1"}
    ]`)
    const out = doc.applyEdits(edits)
    expect(A.getAllChanges(doc.doc).length).toBe(changes + 1)
    expect(doc.heads()).toEqual([out.hash])
    const added = out.ids[2]!
    expect(out.ids).toEqual([undefined, "n0", added, undefined, undefined, undefined, undefined, "e1", undefined])
    // Ids generated inside the batch, then used by later edits of the same batch.
    const more = doc.applyEdits([
      { op: "unconfigure_node", id: added, key: "gone" },
      { op: "connect", source: { node: "n0", port: "out" }, target: { node: added, port: "in" } },
    ])
    const snap = doc.snapshot()
    expect(snap.name).toBe("Pipeline")
    expect(snap.nodes.n0).toEqual({ id: "n0", kind: "cron", label: "Start", position: { x: 1, y: 2 }, config: { every: { minutes: 5 } } })
    expect(snap.nodes[added]!.config).toEqual({ url: "https://example.com" })
    expect(Object.keys(snap.edges)).toEqual([more.ids[1]])
  })

  it("is all or nothing: a failing edit leaves the document untouched", () => {
    const doc = loaded()
    doc.addNode({ id: "a", kind: "trigger", label: "A", position: { x: 0, y: 0 } })
    const heads = doc.heads()
    const before = doc.snapshot()
    expect(() =>
      doc.applyEdits([
        { op: "move_node", id: "a", to: { x: 5, y: 5 } },
        { op: "add_node", id: "a", kind: "trigger", position: { x: 0, y: 0 } },
      ]),
    ).toThrow(expect.objectContaining({ code: "duplicate_id" }))
    expect(() => doc.applyEdits([{ op: "delete_node", id: "a" }, { op: "move_node", id: "a", to: { x: 1, y: 1 } }])).toThrow(FlowEditError)
    expect(() => doc.applyEdits([{ op: "explode" } as unknown as Edit])).toThrow(expect.objectContaining({ code: "invalid_edit" }))
    expect(doc.heads()).toEqual(heads)
    expect(doc.snapshot()).toEqual(before)
  })
})

describe("UndoStack on a FlowDocument", () => {
  it("undoes and redoes a batch exactly, config key absence included", () => {
    const doc = loaded()
    const stack = new UndoStack()
    const record = (edits: Edit[]) => {
      const before = doc.snapshot()
      const out = doc.applyEdits(edits)
      stack.push(diffSnapshots(before, doc.snapshot()), [out.hash])
    }
    doc.applyEdits([{ op: "add_node", id: "a", kind: "trigger", label: "A", position: { x: 0, y: 0 }, config: { k: 1 } }])
    const start = doc.snapshot()
    record([
      { op: "configure_node", id: "a", key: "k", value: 2 },
      { op: "configure_node", id: "a", key: "new", value: null },
      { op: "set_node_kind", id: "a", kind: "cron" },
      { op: "set_name", name: "N" },
    ])
    const after = doc.snapshot()
    expect(stack.undo(doc)?.skipped).toEqual([])
    expect(doc.snapshot()).toEqual(start)
    expect(stack.canRedo()).toBe(true)
    stack.redo(doc)
    expect(doc.snapshot()).toEqual(after)
    expect(stack.canRedo()).toBe(false)
  })
})

describe("composeDiffs (a step of several edits)", () => {
  const doc = loaded()
  const stack = new UndoStack()
  const step = (edit: Edit) => {
    const before = doc.snapshot()
    const out = doc.applyEdits([edit])
    stack.push(diffSnapshots(before, doc.snapshot()), [out.hash])
  }

  it("add then move then configure is one add; undo removes the node", () => {
    const start = doc.snapshot()
    stack.beginGroup()
    step({ op: "add_node", id: "g", kind: "action", label: "G", position: { x: 0, y: 0 } })
    step({ op: "move_node", id: "g", to: { x: 3, y: 4 } })
    step({ op: "configure_node", id: "g", key: "k", value: [1] })
    stack.endGroup()
    const [entry] = stack.entries().undo
    expect(entry!.diff.nodes_added).toEqual([{ id: "g", kind: "action", label: "G", position: { x: 3, y: 4 }, config: { k: [1] } }])
    expect(entry!.diff.nodes_changed).toEqual([])
    expect(entry!.hashes.length).toBe(3)
    stack.undo(doc)
    expect(doc.snapshot()).toEqual(start)
  })

  it("a drag back to where it started leaves no step; a changed-then-deleted node is restored as it was", () => {
    const s = new UndoStack()
    const d = loaded()
    d.addNode({ id: "h", kind: "action", label: "H", position: { x: 1, y: 1 }, config: { a: 1 } })
    const record = (edit: Edit) => {
      const before = d.snapshot()
      d.applyEdits([edit])
      s.push(diffSnapshots(before, d.snapshot()))
    }
    s.beginGroup()
    record({ op: "move_node", id: "h", to: { x: 5, y: 5 } })
    record({ op: "move_node", id: "h", to: { x: 1, y: 1 } })
    s.endGroup()
    expect(s.canUndo()).toBe(false)
    const start = d.snapshot()
    s.beginGroup()
    record({ op: "relabel_node", id: "h", label: "changed" })
    record({ op: "unconfigure_node", id: "h", key: "a" })
    record({ op: "delete_node", id: "h" })
    s.endGroup()
    expect(s.entries().undo[0]!.diff.nodes_removed).toEqual([start.nodes.h])
    s.undo(d)
    expect(d.snapshot()).toEqual(start)
  })
})

// ---- against a real hub ----------------------------------------------------------------

let hub: HubProcess
const open: FlowhubClient[] = []

beforeAll(async () => {
  hub = await startHub()
})

afterAll(async () => {
  for (const c of open) c.close()
  await hub?.stop()
})

async function pair(flow: string): Promise<[Flow, Flow]> {
  const a = await connect(hub, token("alice", { [flow]: "editor" }))
  const b = await connect(hub, token("bob", { [flow]: "editor" }))
  open.push(a, b)
  return [await a.subscribe(flow), await b.subscribe(flow)]
}

const same = (fa: Flow, fb: Flow) => JSON.stringify(fa.snapshot()) === JSON.stringify(fb.snapshot())

async function seed(fa: Flow, fb: Flow) {
  await fa.applyEdits([
    { op: "add_node", id: "a", kind: "trigger", label: "A", position: { x: 0, y: 0 } },
    { op: "add_node", id: "b", kind: "action", label: "B", position: { x: 200, y: 0 } },
    { op: "add_node", id: "c", kind: "action", label: "C", position: { x: 400, y: 0 } },
    { op: "connect", id: "a-b", source: { node: "a", port: "out" }, target: { node: "b", port: "in" } },
    { op: "connect", id: "b-c", source: { node: "b", port: "out" }, target: { node: "c", port: "in" } },
  ])
  await eventually(() => fb.snapshot().edges["b-c"], 10_000, "seed reaches b")
}

describe("applyEdits through the hub", () => {
  it("is one edit for the hub: sent, acked, and seen by the other client", async () => {
    const [fa, fb] = await pair("edits-data")
    const edit = fa.applyEdits([
      { op: "set_name", name: "Data" },
      { op: "add_node", id: "x", kind: "http", label: "X", position: { x: 1, y: 1 } },
      { op: "configure_node", id: "x", key: "url", value: "https://example.com" },
    ])
    expect(fa.pendingChanges()).toEqual([edit.hash])
    await edit
    expect(fa.pendingChanges()).toEqual([])
    await eventually(() => fb.snapshot().nodes.x?.config.url === "https://example.com", 10_000, "edits reach b")
    expect(fb.snapshot().name).toBe("Data")
  })
})

describe("undo/redo with two clients", () => {
  it("undoes the user's own edit and keeps the other user's; redo puts it back", async () => {
    const [fa, fb] = await pair("undo-own")
    await seed(fa, fb)
    expect(fb.canUndo()).toBe(false) // a remote edit is never on b's stack
    await fa.moveNode("a", { x: 10, y: 50 })
    await fb.relabelNode("c", "Bob's label")
    await eventually(() => fa.snapshot().nodes.c?.label === "Bob's label", 10_000, "b's relabel reaches a")

    const undone = fa.undo()!
    expect(undone.skipped).toEqual([])
    await undone.change
    expect(fa.snapshot().nodes.a!.position).toEqual({ x: 0, y: 0 })
    await eventually(() => fb.snapshot().nodes.a?.position.y === 0, 10_000, "undo reaches b")
    expect(fb.snapshot().nodes.c!.label).toBe("Bob's label")
    expect(fa.snapshot().nodes.c!.label).toBe("Bob's label")

    expect(fa.canRedo()).toBe(true)
    await fa.redo()!.change
    expect(fa.snapshot().nodes.a!.position).toEqual({ x: 10, y: 50 })
    await eventually(() => fb.snapshot().nodes.a?.position.y === 50, 10_000, "redo reaches b")
    expect(fb.snapshot().nodes.c!.label).toBe("Bob's label")

    // A new local edit clears redo.
    fa.undo()
    expect(fa.canRedo()).toBe(true)
    await fa.relabelNode("b", "new edit")
    expect(fa.canRedo()).toBe(false)
    // b undoes only its own relabel; a's edits stay.
    await fb.undo()!.change
    await eventually(() => fa.snapshot().nodes.c?.label === "C", 10_000, "b's undo reaches a")
    expect(fa.snapshot().nodes.b!.label).toBe("new edit")
    expect(fb.canUndo()).toBe(false)
    await eventually(() => same(fa, fb), 10_000, "converged")
  })

  it("leaves a node another user moved since where they put it (skipped)", async () => {
    const [fa, fb] = await pair("undo-conflict")
    await seed(fa, fb)
    await fa.applyEdits([
      { op: "move_node", id: "a", to: { x: 5, y: 5 } },
      { op: "relabel_node", id: "a", label: "moved by Alice" },
    ])
    await eventually(() => fb.snapshot().nodes.a?.position.x === 5, 10_000, "a's move reaches b")
    await fb.moveNode("a", { x: 99, y: 99 })
    await eventually(() => fa.snapshot().nodes.a?.position.x === 99, 10_000, "b's move reaches a")

    const skippedEvents: unknown[] = []
    fa.on("undo", (info) => skippedEvents.push(info.skipped))
    const undone = fa.undo()!
    expect(undone.skipped).toEqual([{ path: "nodes/a/position", reason: "changed_since" }])
    await undone.change // the label part still applies
    expect(skippedEvents).toEqual([[{ path: "nodes/a/position", reason: "changed_since" }]])
    await eventually(() => fb.snapshot().nodes.a?.label === "A", 10_000, "label undo reaches b")
    for (const f of [fa, fb]) expect(f.snapshot().nodes.a!.position).toEqual({ x: 99, y: 99 })

    // Every part skipped: no change, nothing to redo.
    await fa.moveNode("b", { x: 1, y: 1 })
    await eventually(() => fb.snapshot().nodes.b?.position.x === 1, 10_000, "move reaches b")
    await fb.deleteNode("b")
    await eventually(() => !fa.snapshot().nodes.b, 10_000, "delete reaches a")
    const heads = fa.heads()
    const nothing = fa.undo()!
    expect(nothing).toEqual({ skipped: [{ path: "nodes/b", reason: "gone" }] })
    expect(fa.heads()).toEqual(heads)
    expect(fa.canRedo()).toBe(false)
  })

  it("undoing a delete restores the node and its edges, in both replicas", async () => {
    const [fa, fb] = await pair("undo-delete")
    await seed(fa, fb)
    const before = fa.snapshot()
    await fa.deleteNode("b")
    await eventually(() => !fb.snapshot().nodes.b && Object.keys(fb.snapshot().edges).length === 0, 10_000, "delete reaches b")
    const undone = fa.undo()!
    expect(undone.skipped).toEqual([])
    await undone.change
    expect(fa.snapshot()).toEqual(before)
    await eventually(() => same(fa, fb), 10_000, "restore reaches b")
    expect(Object.keys(fb.snapshot().edges)).toEqual(["a-b", "b-c"])
    expect(fb.snapshot().nodes.b).toEqual(before.nodes.b)
    // And redo deletes it again, edges included.
    await fa.redo()!.change
    await eventually(() => !fb.snapshot().nodes.b && Object.keys(fb.snapshot().edges).length === 0, 10_000, "redo reaches b")
  })

  it("a drag grouped as one step is undone by one undo", async () => {
    const [fa, fb] = await pair("undo-group")
    await seed(fa, fb)
    fa.beginUndoGroup()
    for (let i = 1; i <= 5; i++) fa.moveNode("c", { x: 400 + i * 10, y: i * 10 })
    fa.endUndoGroup()
    expect(fa.undoStack.entries().undo.length).toBe(2) // the seed batch and the drag
    await fa.undo()!.change
    expect(fa.snapshot().nodes.c!.position).toEqual({ x: 400, y: 0 })
    await eventually(() => fb.snapshot().nodes.c?.position.x === 400, 10_000, "undo reaches b")
  })

  it("keeps the stack across a reconnect (the flow resubscribes)", async () => {
    const own = await startHub()
    try {
      const a = await connect(own, token("alice", { recon: "editor" }))
      const b = await connect(own, token("bob", { recon: "editor" }))
      open.push(a, b)
      const fa = await a.subscribe("recon")
      const fb = await b.subscribe("recon")
      await seed(fa, fb)
      await fa.moveNode("a", { x: 70, y: 70 })
      await fb.moveNode("c", { x: 700, y: 700 })
      await eventually(() => fa.snapshot().nodes.c?.position.x === 700 && fb.snapshot().nodes.a?.position.x === 70, 10_000, "moves cross")

      const closed = a.once("close")
      await own.kill() // drains: close 1012; the clients reconnect
      await closed
      await own.restart()
      await eventually(() => a.connected && fa.subscribed && b.connected && fb.subscribed, 20_000, "both resubscribed")

      expect(fa.canUndo()).toBe(true)
      const undone = fa.undo()!
      expect(undone.skipped).toEqual([])
      await undone.change
      await eventually(() => fb.snapshot().nodes.a?.position.x === 0, 15_000, "undo after reconnect reaches b")
      expect(fb.snapshot().nodes.c!.position).toEqual({ x: 700, y: 700 })
      expect(fa.snapshot().nodes.c!.position).toEqual({ x: 700, y: 700 })
    } finally {
      await own.stop()
    }
  })

  it("drops the undo step of an edit the hub refused and rolled back", async () => {
    const a = await connect(hub, token("alice", { "undo-refused": "editor" }))
    const v = await connect(hub, token("vic", { "undo-refused": "viewer" }))
    open.push(a, v)
    const fa = await a.subscribe("undo-refused")
    const fv = await v.subscribe("undo-refused")
    await fa.addNode({ id: "a", kind: "trigger", label: "A", position: { x: 0, y: 0 } })
    await eventually(() => fv.snapshot().nodes.a, 10_000, "node reaches the viewer")
    const refused = fv.moveNode("a", { x: 9, y: 9 })
    expect(fv.canUndo()).toBe(true)
    await expect(refused).rejects.toMatchObject({ code: "forbidden" })
    expect(fv.snapshot().nodes.a!.position).toEqual({ x: 0, y: 0 })
    expect(fv.canUndo()).toBe(false)
  })
})
