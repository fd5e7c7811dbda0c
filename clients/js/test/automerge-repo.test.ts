// An unmodified automerge-repo Repo (with the official WebSocket network adapter)
// co-editing a flow with flowhub clients through GET /v1/automerge-repo.

import * as A from "@automerge/automerge"
import { Repo, type DocHandle, type AutomergeUrl, type PeerId } from "@automerge/automerge-repo"
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket"
import { afterAll, beforeAll, describe, expect, it } from "vitest"

import { flowAutomergeUrl, flowDocumentId, flowIdOfDocumentId, snapshotOf, type FlowhubClient } from "../src/index.js"
import { connect, eventually, startHub, token, type HubProcess } from "./support.js"

let hub: HubProcess
const repos: { repo: Repo; adapter: WebSocketClientAdapter }[] = []
const clients: FlowhubClient[] = []

function repoFor(tok: string, peer: string): Repo {
  const adapter = new WebSocketClientAdapter(`${hub.url}/v1/automerge-repo?token=${tok}`, 500)
  const repo = new Repo({ network: [adapter], peerId: peer as PeerId })
  repos.push({ repo, adapter })
  return repo
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnyDoc = any

beforeAll(async () => {
  hub = await startHub()
})

afterAll(async () => {
  for (const { repo, adapter } of repos) {
    // The adapter's disconnect() removes its own error listener and then closes the
    // socket. If a retry (every 500 ms after the hub closed a connection) is still
    // handshaking, ws then emits "closed before the connection was established"
    // with no listener: an uncaught exception at teardown. Give it a listener.
    adapter.socket?.addEventListener("error", () => {})
    await repo.shutdown().catch(() => {})
  }
  for (const c of clients) c.close()
  await hub?.stop()
})

describe("DocumentId mapping", () => {
  it("is base58check of the flow id, reversible", () => {
    expect(flowDocumentId("demo")).toBe("HnyCRLDpoJx")
    expect(flowIdOfDocumentId("HnyCRLDpoJx")).toBe("demo")
    expect(flowAutomergeUrl("flow-1")).toBe("automerge:6kkcGYqhk4c772")
    expect(flowIdOfDocumentId("11111111111111114Ki9Gx")).toBeUndefined()
  })
})

describe("automerge-repo", () => {
  it("a Repo and a flowhub client edit the same flow and converge", async () => {
    const fh = await connect(hub, token("alice", { shared: "editor" }, { name: "Alice" }))
    clients.push(fh)
    const flow = await fh.subscribe("shared")
    await flow.addNode({ id: "from-js", kind: "trigger", label: "From JS", position: { x: 0, y: 0 } })

    const repo = repoFor(token("rita", { shared: "editor" }, { name: "Rita" }), "rita-peer")
    const handle: DocHandle<AnyDoc> = await repo.find(flowAutomergeUrl("shared") as AutomergeUrl)
    await eventually(() => snapshotOf(handle.doc()).nodes["from-js"], 10_000, "the Repo gets the flow")
    expect(snapshotOf(handle.doc()).nodes["from-js"]).toMatchObject({ kind: "trigger", label: "From JS" })

    // The Repo edits with plain Automerge: scalar strings and f64 coordinates.
    handle.change((d: AnyDoc) => {
      d.nodes["from-repo"] = {}
      const n = d.nodes["from-repo"]
      n.kind = new A.ImmutableString("http")
      n.label = new A.ImmutableString("From Repo")
      n.position = {}
      n.position.x = new A.Float64(100)
      n.position.y = new A.Float64(50)
      n.config = {}
      n.config.url = new A.ImmutableString("https://example.test")
    })
    await eventually(() => flow.snapshot().nodes["from-repo"], 10_000, "the flowhub client gets the Repo's node")
    expect(flow.snapshot().nodes["from-repo"]).toEqual({
      id: "from-repo",
      kind: "http",
      label: "From Repo",
      position: { x: 100, y: 50 },
      config: { url: "https://example.test" },
    })

    await flow.connect({ node: "from-js", port: "out" }, { node: "from-repo", port: "in" }, "e1")
    await flow.moveNode("from-repo", { x: 120, y: 60 })
    handle.change((d: AnyDoc) => {
      d.name = new A.ImmutableString("Shared by both")
    })
    await eventually(
      () => JSON.stringify(snapshotOf(handle.doc())) === JSON.stringify(flow.snapshot()) && flow.snapshot().name === "Shared by both",
      10_000,
      "convergence",
    )
    expect(snapshotOf(handle.doc()).edges.e1).toBeDefined()
    expect([...A.getHeads(handle.doc())].sort()).toEqual([...flow.heads()].sort())

    // The hub stored the Repo's edits like any other (GET /v1/flows/{id}).
    const r = await fetch(`${hub.httpUrl}/v1/flows/shared`, { headers: { authorization: `Bearer ${token("alice", { shared: "viewer" })}` } })
    const json = await r.json()
    expect(json.name).toBe("Shared by both")
    expect(json.nodes["from-repo"].position).toEqual({ x: 120, y: 60 })
  })

  it("a Repo that opens a flow gets the whole document in one sync message", async () => {
    const fh = await connect(hub, token("olga", { opened: "editor" }))
    clients.push(fh)
    const flow = await fh.subscribe("opened")
    const edits = []
    for (let k = 0; k < 200; k++) edits.push(flow.addNode({ id: `n${k}`, kind: "action", label: `node ${k}`, position: { x: k, y: 0 } }))
    await Promise.all(edits)

    const adapter = new WebSocketClientAdapter(`${hub.url}/v1/automerge-repo?token=${token("otto", { opened: "viewer" })}`, 500)
    const fromHub: { type: string; bytes: number }[] = []
    adapter.on("message", (m: { type: string; data?: Uint8Array }) => fromHub.push({ type: m.type, bytes: m.data?.length ?? 0 }))
    const repo = new Repo({ network: [adapter], peerId: "otto-peer" as PeerId })
    repos.push({ repo, adapter })
    const handle: DocHandle<AnyDoc> = await repo.find(flowAutomergeUrl("opened") as AutomergeUrl)
    await eventually(() => Object.keys(handle.doc()?.nodes ?? {}).length === 200, 10_000, "the Repo has the flow")
    await new Promise((r) => setTimeout(r, 300))
    // The hub answers the Repo's request with the saved document, once: it does not
    // open the exchange itself (the Repo's answer to that, still with empty heads, would
    // make it send the whole document a second time).
    const syncs = fromHub.filter((m) => m.type === "sync")
    expect(syncs.length).toBe(1)
    expect(syncs[0].bytes).toBeGreaterThan(2_000)
    expect([...A.getHeads(handle.doc())].sort()).toEqual([...flow.heads()].sort())
  })

  it("carries presence both ways in ephemeral messages", async () => {
    const fh = await connect(hub, token("ann", { pres: "editor" }, { name: "Ann" }))
    clients.push(fh)
    const flow = await fh.subscribe("pres")
    const repo = repoFor(token("rex", { pres: "editor" }, { name: "Rex" }), "rex-peer")
    const handle: DocHandle<AnyDoc> = await repo.find(flowAutomergeUrl("pres") as AutomergeUrl)
    const received: AnyDoc[] = []
    handle.on("ephemeral-message", ({ message }) => received.push(message))
    await eventually(() => flow.others().some((p) => p.user_id === "rex"), 10_000, "the Repo peer is present")

    handle.broadcast({ cursor: { x: 7, y: 8 }, selection: ["a"], color: "#abcdef" })
    const rex = await eventually(() => flow.others().find((p) => p.user_id === "rex" && p.cursor?.x === 7), 10_000, "Repo cursor")
    expect(rex).toMatchObject({ name: "Rex", cursor: { x: 7, y: 8 }, selection: ["a"], color: "#abcdef" })

    flow.setPresence({ cursor: { x: 1, y: 2 }, color: "#010203" })
    const diff = await eventually(
      () => received.find((m) => m.type === "presence_diff" && m.updated?.some((p: AnyDoc) => p.user_id === "ann" && p.cursor?.x === 1)),
      10_000,
      "flowhub presence in the Repo",
    )
    expect(diff.flow_id).toBe("pres")
  })

  it("refuses a viewer Repo's edit: nothing is stored", async () => {
    const fh = await connect(hub, token("olga", { guarded: "editor" }))
    clients.push(fh)
    const flow = await fh.subscribe("guarded")
    await flow.addNode({ id: "base", kind: "trigger", label: "Base", position: { x: 0, y: 0 } })

    const repo = repoFor(token("vera", { guarded: "viewer" }), "vera-peer")
    const handle: DocHandle<AnyDoc> = await repo.find(flowAutomergeUrl("guarded") as AutomergeUrl)
    await eventually(() => snapshotOf(handle.doc()).nodes.base, 10_000, "the viewer reads")
    handle.change((d: AnyDoc) => {
      d.name = new A.ImmutableString("viewer was here")
    })
    // Give the hub time to refuse, then check nothing reached the flow.
    await new Promise((r) => setTimeout(r, 1000))
    const r = await fetch(`${hub.httpUrl}/v1/flows/guarded`, { headers: { authorization: `Bearer ${token("olga", { guarded: "editor" })}` } })
    expect((await r.json()).name).toBe("")
    expect(flow.snapshot().name).toBe("")
    // The editor keeps working.
    await flow.relabelNode("base", "Still fine")
  })

  it("answers doc-unavailable for documents that are not flows, or not readable", async () => {
    const repo = repoFor(token("nora", { mine: "editor" }), "nora-peer")
    const random = repo.create<AnyDoc>() // a random 16-byte DocumentId: no flow
    expect(random.documentId).toBeTruthy()
    await expect(repo.find(flowAutomergeUrl("not-mine") as AutomergeUrl)).rejects.toThrow(/unavailable/i)
  })
})
