// @flowhub/client against a real hub process (target/debug/flowhub serve).

import { afterAll, beforeAll, describe, expect, it } from "vitest"

import { FlowhubClient, FlowhubError, type Flow } from "../src/index.js"
import { cli, connect, eventually, startHub, token, type HubProcess } from "./support.js"

let hub: HubProcess
const open: FlowhubClient[] = []

async function client(sub: string, flows: Record<string, "viewer" | "editor" | "owner">, name?: string) {
  const c = await connect(hub, token(sub, flows, { name }))
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

describe("session", () => {
  it("is welcomed with the token's identity and answers hello", async () => {
    const c = await client("alice", { demo: "editor" }, "Alice")
    expect(c.welcome.user_id).toBe("alice")
    expect(c.welcome.name).toBe("Alice")
    expect(c.welcome.protocol).toBe(1)
    expect(c.sessionId).toMatch(/^[0-9a-f]{32}$/)
    expect(await c.ping()).toBeGreaterThanOrEqual(0)
  })

  it("is refused with a bad token", async () => {
    await expect(connect(hub, "not-a-token")).rejects.toBeInstanceOf(FlowhubError)
  })

  it("cannot subscribe to a flow the token does not name", async () => {
    const c = await client("mallory", { other: "editor" })
    await expect(c.subscribe("secret")).rejects.toMatchObject({ code: "forbidden" })
  })
})

describe("co-editing", () => {
  it("two JS clients co-edit a flow and converge", async () => {
    const a = await client("alice", { coedit: "editor" })
    const b = await client("bob", { coedit: "editor" })
    const fa = await a.subscribe("coedit")
    const fb = await b.subscribe("coedit")
    expect(fa.role).toBe("editor")

    const n1 = fa.addNode({ kind: "trigger", label: "New order", position: { x: 0, y: 0 }, config: { schedule: "*/5 * * * *" } })
    const n2 = fb.addNode({ id: "http-1", kind: "http", label: "Call API", position: { x: 200, y: 0 }, config: { retries: 3, headers: { accept: "json" }, tags: ["a", 1, true, null] } })
    expect(n1.id).toMatch(/^n[0-9a-f]{12}-1$/)
    await Promise.all([n1, n2])

    await eventually(() => fa.snapshot().nodes["http-1"] && fb.snapshot().nodes[n1.id!], 10_000, "both nodes on both sides")
    const e = fa.connect({ node: n1.id!, port: "out" }, { node: "http-1", port: "in" })
    const moves = [fb.moveNode(n1.id!, { x: 10.5, y: -20 }), fb.relabelNode("http-1", "Call the API"), fa.configureNode("http-1", "retries", 5), fa.setName("Order pipeline")]
    await Promise.all([e, ...moves])

    await eventually(() => JSON.stringify(fa.snapshot()) === JSON.stringify(fb.snapshot()), 10_000, "convergence")
    const snap = fa.snapshot()
    expect(snap.name).toBe("Order pipeline")
    expect(snap.nodes[n1.id!].position).toEqual({ x: 10.5, y: -20 })
    expect(snap.nodes["http-1"]).toEqual({
      id: "http-1",
      kind: "http",
      label: "Call the API",
      position: { x: 200, y: 0 },
      config: { headers: { accept: "json" }, retries: 5, tags: ["a", 1, true, null] },
    })
    expect(snap.edges[e.id!]).toEqual({ id: e.id, source: { node: n1.id, port: "out" }, target: { node: "http-1", port: "in" } })
    expect(fa.pendingChanges()).toEqual([])

    // The hub's own view (GET /v1/flows/{id}) agrees with both replicas.
    const r = await fetch(`${hub.httpUrl}/v1/flows/coedit`, { headers: { authorization: `Bearer ${token("alice", { coedit: "editor" })}` } })
    const json = await r.json()
    expect(json.name).toBe("Order pipeline")
    expect(json.nodes["http-1"].config).toEqual({ headers: { accept: "json" }, retries: 5, tags: ["a", 1, true, null] })
    expect(json.nodes[n1.id!].position).toEqual({ x: 10.5, y: -20 })
    expect(Object.keys(json.edges)).toEqual([e.id])
    expect([...json.heads].sort()).toEqual([...fa.heads()].sort())

    // Deleting a node deletes its edges in the same change.
    await fb.deleteNode(n1.id!)
    await eventually(() => !fa.snapshot().nodes[n1.id!], 10_000, "delete seen")
    expect(fa.snapshot().edges).toEqual({})
    expect(fa.document.danglingEdges()).toEqual([])
  })

  it("concurrent moves settle on one writer's whole position", async () => {
    const a = await client("alice", { moves: "editor" })
    const b = await client("bob", { moves: "editor" })
    const fa = await a.subscribe("moves")
    const fb = await b.subscribe("moves")
    await fa.addNode({ id: "n", kind: "action", label: "N", position: { x: 0, y: 0 } })
    await eventually(() => fb.snapshot().nodes.n, 10_000, "node on b")
    await Promise.all([fa.moveNode("n", { x: 1, y: 1 }), fb.moveNode("n", { x: 2, y: 2 })])
    await eventually(() => JSON.stringify(fa.snapshot()) === JSON.stringify(fb.snapshot()), 10_000, "convergence")
    const p = fa.snapshot().nodes.n.position
    expect([1, 2]).toContain(p.x)
    expect(p.y).toBe(p.x)
  })

  it("a Rust flowhub-cli edit and a JS client see each other's edits", async () => {
    const tok = token("carol", { interop: "editor" })
    const a = await client("alice", { interop: "editor" })
    const fa = await a.subscribe("interop")

    const added = await cli(hub, tok, ["edit", "interop", "add-node", "--kind", "trigger", "--label", "From Rust", "--x", "5", "--y", "6", "--id", "rust-1"])
    expect(added.code, added.stderr).toBe(0)
    expect(JSON.parse(added.stdout)).toMatchObject({ ok: true, id: "rust-1" })
    await eventually(() => fa.snapshot().nodes["rust-1"], 10_000, "the Rust node in JS")
    expect(fa.snapshot().nodes["rust-1"]).toMatchObject({ kind: "trigger", label: "From Rust", position: { x: 5, y: 6 } })

    const js = await fa.addNode({ kind: "filter", label: "From JS", position: { x: 1.25, y: 2 }, config: { expr: "x > 1" } })
    await fa.moveNode("rust-1", { x: 50, y: 60 })
    const moved = await cli(hub, tok, ["edit", "interop", "move-node", js.id!, "--x", "-7.5", "--y", "8"])
    expect(moved.code, moved.stderr).toBe(0)
    await eventually(() => fa.snapshot().nodes[js.id!].position.x === -7.5, 10_000, "the Rust move in JS")

    const dump = await cli(hub, tok, ["dump", "interop"])
    expect(dump.code, dump.stderr).toBe(0)
    const flow = JSON.parse(dump.stdout)
    expect(flow.nodes[js.id!]).toMatchObject({ kind: "filter", label: "From JS", position: { x: -7.5, y: 8 }, config: { expr: "x > 1" } })
    expect(flow.nodes["rust-1"].position).toEqual({ x: 50, y: 60 })
    const connected = await cli(hub, tok, ["edit", "interop", "connect", "rust-1", js.id!])
    expect(connected.code, connected.stderr).toBe(0)
    await eventually(() => Object.keys(fa.snapshot().edges).length === 1, 10_000, "the Rust edge in JS")
  })
})

describe("refusals", () => {
  it("a viewer's edit is refused, rejected and rolled back", async () => {
    const ed = await client("ed", { view: "editor" })
    const fe = await ed.subscribe("view")
    await fe.addNode({ id: "keep", kind: "trigger", label: "Keep", position: { x: 0, y: 0 } })

    const v = await client("vic", { view: "viewer" })
    const fv = await v.subscribe("view")
    expect(fv.role).toBe("viewer")
    await eventually(() => fv.snapshot().nodes.keep, 10_000, "the viewer reads")

    const refused = fv.once("refused")
    const edit = fv.addNode({ id: "nope", kind: "action", label: "Nope", position: { x: 1, y: 1 } })
    expect(fv.snapshot().nodes.nope).toBeDefined() // applied locally at once
    await expect(edit).rejects.toMatchObject({ code: "forbidden", flowId: "view" })
    const [err] = await refused
    expect(err.code).toBe("forbidden")
    expect(fv.snapshot().nodes.nope).toBeUndefined() // rolled back
    expect(fv.pendingChanges()).toEqual([])

    // The replica keeps following the flow after the rollback.
    await fe.relabelNode("keep", "Still here")
    await eventually(() => fv.snapshot().nodes.keep?.label === "Still here", 10_000, "viewer follows after rollback")
    expect(fe.snapshot().nodes.nope).toBeUndefined()
    expect(JSON.stringify(fv.snapshot())).toBe(JSON.stringify(fe.snapshot()))
  })

  it("a change that breaks the schema is refused and rolled back", async () => {
    const c = await client("sam", { schema: "editor" })
    const f = await c.subscribe("schema")
    await f.addNode({ id: "ok", kind: "trigger", label: "OK", position: { x: 0, y: 0 } })
    const bad = f.unsafeChange((d) => {
      d.nodes.bad = { kind: "NOT VALID" } // wrong kind, no label/position/config
    })
    await expect(bad).rejects.toMatchObject({ code: "schema_violation" })
    expect(f.doc).not.toHaveProperty("nodes.bad")
    // Later edits still go through.
    await f.relabelNode("ok", "Still OK")
    expect(f.snapshot().nodes.ok.label).toBe("Still OK")
  })

  it("edits invalid locally throw before anything is sent", async () => {
    const c = await client("lou", { local: "editor" })
    const f = await c.subscribe("local")
    expect(() => f.addNode({ kind: "Bad Kind", label: "x", position: { x: 0, y: 0 } })).toThrow(/kind/)
    expect(() => f.moveNode("missing", { x: 0, y: 0 })).toThrow(/node not found/)
    expect(() => f.addNode({ kind: "a", label: "x", position: { x: Number.NaN, y: 0 } })).toThrow(/finite/)
    expect(f.pendingChanges()).toEqual([])
  })
})

describe("presence", () => {
  it("shares cursors, selections and colours, and reports leaving", async () => {
    const a = await client("ann", { pres: "editor" }, "Ann")
    const b = await client("ben", { pres: "editor" }, "Ben")
    const fa = await a.subscribe("pres")
    const fb = await b.subscribe("pres")
    await eventually(() => fb.others().some((p) => p.user_id === "ann"), 10_000, "ann present for ben")

    fa.setPresence({ cursor: { x: 12, y: 34 }, selection: ["n1"], color: "#123456" })
    const seen = await eventually(
      () => fb.others().find((p) => p.user_id === "ann" && p.cursor?.x === 12),
      10_000,
      "ann's cursor",
    )
    expect(seen).toMatchObject({ name: "Ann", cursor: { x: 12, y: 34 }, selection: ["n1"], color: "#123456", session_id: a.sessionId })
    expect(fb.others().some((p) => p.session_id === b.sessionId)).toBe(false)

    await fa.close()
    await eventually(() => !fb.others().some((p) => p.user_id === "ann"), 10_000, "ann left")
  })
})

describe("runs", () => {
  async function ingest(runId: string, events: object[]) {
    const r = await fetch(`${hub.httpUrl}/v1/runs/${runId}/events`, {
      method: "POST",
      headers: { authorization: `Bearer ${token("engine", {}, { svc: true })}`, "content-type": "application/json" },
      body: JSON.stringify({ events }),
    })
    expect(r.status, await r.clone().text()).toBe(200)
    return r.json()
  }

  const ev = (runId: string, n: number, type: string, extra: object = {}) => ({
    event_id: `${runId}-${n}`,
    type,
    flow_id: "runflow",
    ts: 1_700_000_000_000 + n,
    ...extra,
  })

  it("watches a run: run_state, then events in order, folded into the state", async () => {
    const c = await client("rita", { runflow: "viewer" })
    await ingest("run-1", [ev("run-1", 1, "run.started"), ev("run-1", 2, "step.started", { node_id: "a" })])
    const events: number[] = []
    const w = await c.watchRun("run-1", { onEvent: (e) => events.push(e.seq) })
    expect(w.run).toMatchObject({ id: "run-1", flowId: "runflow", status: "running" })
    await eventually(() => events.length === 2, 10_000, "replayed events")

    await ingest("run-1", [
      ev("run-1", 3, "step.succeeded", { node_id: "a" }),
      ev("run-1", 4, "log", { node_id: "a", level: "info", message: "done" }),
      ev("run-1", 5, "step.started", { node_id: "b" }),
      ev("run-1", 6, "step.failed", { node_id: "b", error: "boom" }),
      ev("run-1", 7, "run.finished", { status: "failed" }),
    ])
    await eventually(() => events.length === 7, 10_000, "live events")
    expect(events).toEqual([1, 2, 3, 4, 5, 6, 7])
    expect(w.lastSeq).toBe(7)
    expect(w.run!.status).toBe("failed")
    expect(w.run!.steps.map((s) => [s.nodeId, s.status])).toEqual([
      ["a", "succeeded"],
      ["b", "failed"],
    ])
    expect(w.run!.steps[1].error).toBe("boom")
    expect(w.run!.logs.map((l) => l.msg)).toEqual(["done"])
    // Re-posting is harmless (idempotent by event id) and delivers nothing new.
    await ingest("run-1", [ev("run-1", 7, "run.finished", { status: "failed" })])
    await w.close()
  })

  it("resumes after a given seq without gaps or repeats, and feeds a flow's runs", async () => {
    const c = await client("ravi", { runflow: "viewer" })
    const feed: string[] = []
    await c.watchFlowRuns("runflow", (run) => feed.push(`${run.id}:${run.status}`))
    await ingest("run-2", [1, 2, 3, 4].map((n) => ev("run-2", n, n === 1 ? "run.started" : "log", { message: `m${n}` })))
    const events: number[] = []
    const w = await c.watchRun("run-2", { sinceSeq: 2, onEvent: (e) => events.push(e.seq) })
    await eventually(() => events.length === 2, 10_000, "events after seq 2")
    expect(events).toEqual([3, 4])
    await ingest("run-2", [ev("run-2", 5, "run.finished")])
    await eventually(() => events.length === 3, 10_000, "live event")
    expect(events).toEqual([3, 4, 5])
    await eventually(() => feed.includes("run-2:succeeded"), 10_000, "flow_run feed")
    expect(feed[0]).toBe("run-2:running")
  })

  it("refuses runs of flows the token does not name", async () => {
    await ingest("run-3", [{ ...ev("run-3", 1, "run.started"), flow_id: "private" }])
    const c = await client("rob", { runflow: "viewer" })
    await expect(c.watchRun("run-3")).rejects.toMatchObject({ code: "forbidden" })
    await expect(c.watchRun("no-such-run")).rejects.toMatchObject({ code: "not_found" })
  })
})

describe("reconnect", () => {
  it("reconnects after the hub restarts, resubscribes and syncs edits made offline", async () => {
    const own = await startHub()
    try {
      const a = await connect(own, token("rae", { recon: "editor" }))
      const b = await connect(own, token("rob", { recon: "editor" }))
      open.push(a, b)
      const fa = await a.subscribe("recon")
      const fb = await b.subscribe("recon")
      await fa.addNode({ id: "r1", kind: "trigger", label: "R1", position: { x: 0, y: 0 } })
      const closed = a.once("close")
      await own.kill() // drains: close 1012, reconnect at once
      const [code] = await closed
      expect(code).toBe(1012)
      expect(a.connected).toBe(false)
      // Edited while offline: applied locally, acked once the hub has it.
      const offline = fa.relabelNode("r1", "edited offline")
      await own.restart()
      await offline
      await eventually(() => fb.snapshot().nodes.r1?.label === "edited offline", 15_000, "offline edit reaches b")
      expect(a.connected && b.connected).toBe(true)
      expect(JSON.stringify(fa.snapshot())).toBe(JSON.stringify(fb.snapshot()))
    } finally {
      await own.stop()
    }
  })
})
