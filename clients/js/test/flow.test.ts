// FlowDocument without a hub: what the typed edits write, the read view, and the
// protocol helpers.

import * as A from "@automerge/automerge"
import { describe, expect, it } from "vitest"

import {
  FlowDocument,
  FlowEditError,
  applyRunEvent,
  base58checkDecode,
  base58checkEncode,
  decodeSyncFrame,
  encodeSyncFrame,
  newRunSnapshot,
  type RunEvent,
} from "../src/index.js"

/** A document holding the root maps, as the hub's genesis sync would bring them. */
function loaded(): FlowDocument {
  // Built the way crdt/src/genesis.rs does it (scalar name, nodes and edges maps).
  let doc = A.init<unknown>()
  doc = A.change(doc, (d: any) => {
    d.name = new A.ImmutableString("")
    d.nodes = {}
    d.edges = {}
  })
  return new FlowDocument(A.clone(doc))
}

function ops(doc: FlowDocument, hash: string) {
  const change = A.getAllChanges(doc.doc).find((c) => A.decodeChange(c).hash === hash)!
  return A.decodeChange(change).ops
}

describe("FlowDocument", () => {
  it("writes scalar strings, f64 positions in a fresh map, and nested config", () => {
    const doc = loaded()
    const { id, hash } = doc.addNode({
      kind: "http",
      label: "Call",
      position: { x: 1, y: 2.5 },
      config: { n: 3, f: 1.5, s: "x", nested: { list: [1, "a", { k: true }] } },
    })
    expect(id).toMatch(/^n[0-9a-f]{12}-1$/)
    const written = ops(doc, hash)
    expect(written.some((o) => o.action === "makeText")).toBe(false) // never text objects
    expect(written.filter((o) => o.key === "x" || o.key === "y").map((o) => (o as { datatype?: string }).datatype)).toEqual(["float64", "float64"])
    expect(doc.snapshot().nodes[id!]).toEqual({
      id,
      kind: "http",
      label: "Call",
      position: { x: 1, y: 2.5 },
      config: { f: 1.5, n: 3, nested: { list: [1, "a", { k: true }] }, s: "x" },
    })
    const move = doc.moveNode(id!, { x: 5, y: 6 })
    expect(ops(doc, move.hash).filter((o) => o.action === "makeMap").map((o) => o.key)).toEqual(["position"])
  })

  it("makes exactly one change per edit, an empty one for a no-op", () => {
    const doc = loaded()
    const { id } = doc.addNode({ kind: "a", label: "L", position: { x: 0, y: 0 } })
    const before = A.getAllChanges(doc.doc).length
    const same = doc.relabelNode(id!, "L")
    expect(A.getAllChanges(doc.doc).length).toBe(before + 1)
    expect(doc.heads()).toEqual([same.hash])
  })

  it("deletes a node with its edges in one change; hides dangling edges", () => {
    const doc = loaded()
    const a = doc.addNode({ id: "a", kind: "trigger", label: "A", position: { x: 0, y: 0 } })
    doc.addNode({ id: "b", kind: "action", label: "B", position: { x: 1, y: 0 } })
    const e = doc.connect({ node: "a", port: "out" }, { node: "b", port: "in" })
    expect(Object.keys(doc.snapshot().edges)).toEqual([e.id])
    // A concurrent replica connects to `a` while this one deletes it.
    const other = new FlowDocument(A.clone(doc.doc))
    other.connect({ node: "b", port: "out" }, { node: "a", port: "in" }, "late")
    doc.deleteNode(a.id!)
    doc.doc = A.merge(doc.doc, other.doc)
    expect(doc.snapshot().edges).toEqual({})
    expect(doc.danglingEdges()).toEqual(["late"])
    doc.repair()
    expect(doc.danglingEdges()).toEqual([])
  })

  it("checks input like the Rust schema", () => {
    const doc = loaded()
    const bad = (f: () => unknown, code: string) => {
      try {
        f()
      } catch (e) {
        expect(e).toBeInstanceOf(FlowEditError)
        expect((e as FlowEditError).code).toBe(code)
        return
      }
      throw new Error("no error")
    }
    bad(() => doc.addNode({ kind: "Not-Lower", label: "", position: { x: 0, y: 0 } }), "invalid_edit")
    bad(() => doc.addNode({ kind: "a", label: "x".repeat(1001), position: { x: 0, y: 0 } }), "invalid_edit")
    bad(() => doc.addNode({ kind: "a", label: "", position: { x: Infinity, y: 0 } }), "invalid_edit")
    bad(() => doc.addNode({ id: "", kind: "a", label: "", position: { x: 0, y: 0 } }), "invalid_edit")
    doc.addNode({ id: "dup", kind: "a", label: "", position: { x: 0, y: 0 } })
    bad(() => doc.addNode({ id: "dup", kind: "a", label: "", position: { x: 0, y: 0 } }), "duplicate_id")
    bad(() => doc.moveNode("nope", { x: 0, y: 0 }), "node_not_found")
    bad(() => doc.disconnect("nope"), "edge_not_found")
    let deep: any = 1
    for (let i = 0; i < 40; i++) deep = { d: deep }
    bad(() => doc.configureNode("dup", "k", deep), "invalid_edit")
    bad(() => new FlowDocument().setName("x"), "not_loaded")
  })
})

describe("protocol helpers", () => {
  it("frames sync messages like docs/PROTOCOL.md", () => {
    const frame = encodeSyncFrame("demo", new Uint8Array([0x42, 0x00]))
    expect([...frame]).toEqual([0x01, 0x04, 0x64, 0x65, 0x6d, 0x6f, 0x42, 0x00])
    const back = decodeSyncFrame(frame)
    expect(back.flowId).toBe("demo")
    expect([...back.payload]).toEqual([0x42, 0x00])
    expect(() => encodeSyncFrame("bad id", new Uint8Array([1]))).toThrow()
  })

  it("base58check round-trips", () => {
    for (const bytes of [new Uint8Array([]), new Uint8Array([0, 0, 1]), new TextEncoder().encode("order-pipeline.v2")]) {
      expect(base58checkDecode(base58checkEncode(bytes))).toEqual(bytes)
    }
    expect(base58checkDecode("HnyCRLDpoJy")).toBeUndefined()
  })

  it("folds run events like the hub", () => {
    const run = newRunSnapshot("r", "f")
    const ev = (seq: number, type: RunEvent["type"], extra: Partial<RunEvent> = {}): RunEvent => ({ event_id: `e${seq}`, seq, type, flow_id: "f", ts: 1000 + seq, ...extra })
    applyRunEvent(run, ev(1, "run.started"))
    applyRunEvent(run, ev(2, "step.started", { node_id: "a" }))
    applyRunEvent(run, ev(3, "step.retrying", { node_id: "a", error: "flaky" }))
    applyRunEvent(run, ev(4, "step.started", { node_id: "a" }))
    applyRunEvent(run, ev(5, "step.succeeded", { node_id: "a" }))
    applyRunEvent(run, ev(6, "run.finished", { status: "succeeded" }))
    applyRunEvent(run, ev(7, "run.finished", { status: "failed" })) // ended runs stay ended
    expect(run).toMatchObject({ status: "succeeded", startedAt: 1001, finishedAt: 1006, lastSeq: 7 })
    expect(run.steps).toEqual([{ nodeId: "a", status: "succeeded", attempt: 2, startedAt: 1004, finishedAt: 1005, durationMs: 1, error: null }])
  })
})
