// The flow HTTP API client (src/http.ts) against a real hub: JSON edits reach a live
// WebSocket `Flow`, idempotent retries, typed errors, history with verified users, named
// versions in diffs, restore.

import { afterAll, beforeAll, describe, expect, it } from "vitest"

import { FlowhubError, FlowhubHttp, FlowhubHttpError, versionRef, type FlowhubClient } from "../src/index.js"
import { connect, eventually, startHub, token, type HubProcess } from "./support.js"

let hub: HubProcess
const open: FlowhubClient[] = []

beforeAll(async () => {
  hub = await startHub()
})

afterAll(async () => {
  for (const c of open) c.close()
  await hub?.stop()
})

const http = (user: string, flow: string, role: "viewer" | "editor" | "owner" = "editor", name?: string) =>
  new FlowhubHttp({ baseUrl: hub.httpUrl, token: token(user, { [flow]: role }, { name }) })

async function rejection(p: Promise<unknown>): Promise<FlowhubHttpError> {
  try {
    await p
  } catch (e) {
    expect(e).toBeInstanceOf(FlowhubHttpError)
    return e as FlowhubHttpError
  }
  throw new Error("expected the request to fail")
}

describe("FlowhubHttp", () => {
  it("applies edits as one change that a WebSocket Flow sees live", async () => {
    const ws = await connect(hub, token("watcher", { live: "viewer" }))
    open.push(ws)
    const flow = await ws.subscribe("live")
    const api = http("script", "live")
    const res = await api.applyEdits("live", [
      { op: "set_name", name: "From a script" },
      { op: "add_node", id: "t", kind: "trigger", label: "Start", position: { x: 0, y: 0 } },
      { op: "add_node", id: "h", kind: "http", label: "Fetch", position: { x: 200, y: 0 }, config: { url: "https://example.test" } },
      { op: "connect", id: "e1", source: { node: "t", port: "out" }, target: { node: "h", port: "in" } },
    ])
    expect(res.replayed).toBe(false)
    expect(res.heads).toEqual([res.change])
    await eventually(() => flow.snapshot().edges.e1, 10_000, "the edge reaches the WebSocket flow")
    const snap = flow.snapshot()
    expect(snap.name).toBe("From a script")
    expect(snap.nodes.h).toEqual({ id: "h", kind: "http", label: "Fetch", position: { x: 200, y: 0 }, config: { url: "https://example.test" } })
    expect(flow.heads()).toEqual(res.heads)
    // And the HTTP read agrees.
    const json = await api.getFlow("live")
    expect(json.heads).toEqual(res.heads)
    expect(json.nodes).toEqual(snap.nodes)
  })

  it("follows a flow as JSON over SSE, with the authors of each version, and resumes", async () => {
    const ws = await connect(hub, token("maker", { watched: "editor" }))
    open.push(ws)
    const flow = await ws.subscribe("watched")
    await flow.addNode({ id: "a", kind: "trigger", label: "Start", position: { x: 0, y: 0 } })
    const viewer = http("dash", "watched", "viewer")
    const abort = new AbortController()
    const versions = viewer.watchJson("watched", { signal: abort.signal })
    const first = (await versions.next()).value!
    expect(first.flow.nodes.a.label).toBe("Start")

    await flow.relabelNode("a", "Begin")
    let v = (await versions.next()).value!
    while (v.flow.nodes.a.label !== "Begin") v = (await versions.next()).value!
    expect(v.authors).toEqual(["maker"])
    const at = { heads: v.heads, flow: structuredClone(v.flow) }
    abort.abort()
    await versions.return(undefined)

    // Missed while away: one patch from the heads it had.
    await http("script", "watched").applyEdits("watched", [{ op: "move_node", id: "a", to: { x: 5, y: 6 } }])
    const again = viewer.watchJson("watched", { since: at.heads, flow: at.flow })
    const resumed = (await again.next()).value!
    expect(resumed.flow.nodes.a.position).toEqual({ x: 5, y: 6 })
    expect(resumed.authors).toEqual(["script"])
    const json = await viewer.getFlow("watched")
    expect(resumed.heads).toEqual(json.heads)
    await again.return(undefined)
  })

  it("applies an idempotent retry once", async () => {
    const api = http("ci", "idem")
    const edits = [{ op: "add_node" as const, kind: "action", label: "Deploy", position: { x: 0, y: 0 } }]
    const first = await api.applyEdits("idem", edits, { idempotencyKey: "deploy-42" })
    const retry = await api.applyEdits("idem", edits, { idempotencyKey: "deploy-42" })
    expect(first.replayed).toBe(false)
    expect(retry).toEqual({ change: first.change, heads: first.heads, replayed: true })
    const flow = await api.getFlow("idem")
    expect(Object.values(flow.nodes).map((n) => n.label)).toEqual(["Deploy"])
    // Another key is another change.
    const other = await api.applyEdits("idem", edits, { idempotencyKey: "deploy-43" })
    expect(other.replayed).toBe(false)
    expect(Object.keys((await api.getFlow("idem")).nodes)).toHaveLength(2)
  })

  it("gives a viewer a typed forbidden, and names other refusals by code", async () => {
    const editor = http("ann", "typed")
    await editor.applyEdits("typed", [{ op: "add_node", id: "a", kind: "trigger", label: "A", position: { x: 0, y: 0 } }])
    const viewer = http("vic", "typed", "viewer")
    const heads = (await viewer.getFlow("typed")).heads

    const refused = await rejection(viewer.applyEdits("typed", [{ op: "relabel_node", id: "a", label: "nope" }]))
    expect(refused).toBeInstanceOf(FlowhubError)
    expect(refused.code).toBe("forbidden")
    expect(refused.status).toBe(403)
    expect(refused.flowId).toBe("typed")
    expect((await rejection(viewer.createVersion("typed", "v"))).code).toBe("forbidden")
    expect((await rejection(viewer.restore("typed", heads))).code).toBe("forbidden")
    expect((await viewer.getFlow("typed")).heads).toEqual(heads)

    const missing = await rejection(editor.applyEdits("typed", [{ op: "move_node", id: "ghost", to: { x: 1, y: 1 } }]))
    expect(missing.code).toBe("not_found")
    expect((await rejection(editor.diff("typed", versionRef("no-such-version")))).code).toBe("not_found")
    expect((await rejection(editor.diff("typed", "not-hex"))).code).toBe("bad_request")
    const stranger = new FlowhubHttp({ baseUrl: hub.httpUrl, token: "not-a-jwt" })
    expect((await rejection(stranger.history("typed"))).code).toBe("unauthorized")
  })

  it("lists two users' sessions in the history with their verified user ids", async () => {
    const ann = await connect(hub, token("ann", { hist: "editor" }, { name: "Ann" }))
    open.push(ann)
    const fa = await ann.subscribe("hist")
    await fa.addNode({ id: "n1", kind: "trigger", label: "Start", position: { x: 0, y: 0 } })
    await fa.addNode({ id: "n2", kind: "action", label: "Act", position: { x: 200, y: 0 } })
    const bob = http("bob", "hist", "editor", "Bob")
    await bob.applyEdits("hist", [
      { op: "move_node", id: "n1", to: { x: 10, y: 20 } },
      { op: "move_node", id: "n2", to: { x: 210, y: 20 } },
      { op: "relabel_node", id: "n1", label: "Begin" },
    ])

    const page = await http("vic", "hist", "viewer").history("hist")
    const users = page.sessions.map((s) => s.user_id)
    expect(users.slice(0, 2)).toEqual(["bob", "ann"])
    const [b, a] = page.sessions
    // A JSON edit's change names only the user id (in its message), so that is its name.
    expect(b!.name).toBe("bob")
    expect(a!.name).toBe("Ann")
    expect(b!.summary.nodes_moved.sort()).toEqual(["n1", "n2"])
    expect(b!.summary.nodes_relabelled).toEqual(["n1"])
    expect(a!.summary.nodes_added.sort()).toEqual(["n1", "n2"])
    expect(a!.changes).toHaveLength(2)
    expect(b!.end).toBeGreaterThanOrEqual(a!.end)
    expect(b!.start).toBeGreaterThan(1_600_000_000_000)
    // A session's heads_after is a version: Ann's shows the flow before Bob's edits.
    const then = await bob.getFlow("hist", { heads: a!.heads_after })
    expect(then.nodes.n1!.label).toBe("Start")
    const diff = await bob.diff("hist", a!.heads_after, b!.heads_after)
    expect(diff.nodes_changed.map((c) => c.id)).toEqual(["n1", "n2"])

    // Paging: one change per page walks every change, newest first, then stops.
    const pages = []
    for await (const p of bob.historyPages("hist", { limit: 1 })) pages.push(p)
    const changes = pages.flatMap((p) => p.sessions.flatMap((s) => s.changes))
    expect(changes).toEqual(page.sessions.flatMap((s) => s.changes))
    expect(pages.at(-1)!.next_before).toBeUndefined()
  })

  it("round-trips a named version, usable as version:NAME in a diff and a restore", async () => {
    const api = http("ann", "named")
    await api.applyEdits("named", [
      { op: "add_node", id: "a", kind: "trigger", label: "Start", position: { x: 0, y: 0 } },
      { op: "add_node", id: "b", kind: "action", label: "Gone later", position: { x: 200, y: 0 } },
    ])
    const v1 = await api.createVersion("named", "before the migration")
    expect(v1.name).toBe("before the migration")
    expect(v1.user_id).toBe("ann")
    expect(v1.heads).toEqual((await api.getFlow("named")).heads)
    expect(v1.created_at_ms).toBeGreaterThan(1_600_000_000_000)
    expect(await http("vic", "named", "viewer").listVersions("named")).toEqual([v1])
    const dup = await rejection(api.createVersion("named", "before the migration"))
    expect(dup.status).toBe(409)

    await api.applyEdits("named", [
      { op: "relabel_node", id: "a", label: "Begin" },
      { op: "delete_node", id: "b" },
      { op: "add_node", id: "c", kind: "http", label: "New", position: { x: 400, y: 0 } },
    ])
    const diff = await api.diff("named", versionRef("before the migration"))
    expect(diff.nodes_added.map((n) => n.id)).toEqual(["c"])
    expect(diff.nodes_removed).toEqual([{ id: "b", kind: "action", label: "Gone later", position: { x: 200, y: 0 }, config: {} }])
    expect(diff.nodes_changed).toEqual([{ id: "a", label: { old: "Start", new: "Begin" } }])
    // The same diff by heads, and nothing between the version and its own heads.
    expect(await api.diff("named", v1.heads)).toEqual(diff)
    const none = await api.diff("named", versionRef(v1.name), v1.heads)
    expect([none.nodes_added, none.nodes_removed, none.nodes_changed]).toEqual([[], [], []])

    // Restore makes the flow equal to the version again, as one new change.
    const before = await api.getFlow("named")
    const restored = await api.restore("named", versionRef(v1.name), { idempotencyKey: "undo-migration" })
    expect(restored.replayed).toBe(false)
    const now = await api.getFlow("named")
    const then = await api.getFlow("named", { heads: v1.heads })
    expect(now.nodes).toEqual(then.nodes)
    expect(now.heads).not.toEqual(before.heads)
    expect((await api.restore("named", versionRef(v1.name), { idempotencyKey: "undo-migration" })).replayed).toBe(true)

    await api.deleteVersion("named", v1.name)
    expect(await api.listVersions("named")).toEqual([])
    expect((await rejection(api.deleteVersion("named", v1.name))).code).toBe("not_found")
    expect((await rejection(api.diff("named", versionRef(v1.name)))).code).toBe("not_found")
  })
})
