// An unmodified automerge-repo Repo that writes what the flow schema refuses is never
// locked out: the hub stores its change together with a repair change of its own
// (docs/ARCHITECTURE.md, "Refusal or repair"), every replica converges on a valid
// flow, the Repo's later valid edits land, and its connection is never closed.

import * as A from "@automerge/automerge"
import { Repo, type DocHandle, type AutomergeUrl, type PeerId } from "@automerge/automerge-repo"
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket"
import { afterAll, beforeAll, describe, expect, it } from "vitest"

import { flowAutomergeUrl, snapshotOf, type FlowhubClient } from "../src/index.js"
import { connect, eventually, startHub, token, type HubProcess } from "./support.js"

let hub: HubProcess
const repos: { repo: Repo; adapter: WebSocketClientAdapter }[] = []
const clients: FlowhubClient[] = []

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnyDoc = any

/** A stock Repo on /v1/automerge-repo, counting how often its connection dropped. */
function repoFor(tok: string, peer: string): { repo: Repo; disconnects: () => number } {
  const adapter = new WebSocketClientAdapter(`${hub.url}/v1/automerge-repo?token=${tok}`, 500)
  let disconnects = 0
  adapter.on("peer-disconnected", () => disconnects++)
  const repo = new Repo({ network: [adapter], peerId: peer as PeerId })
  repos.push({ repo, adapter })
  return { repo, disconnects: () => disconnects }
}

async function getFlow(flowId: string, user: string): Promise<AnyDoc> {
  const r = await fetch(`${hub.httpUrl}/v1/flows/${flowId}`, {
    headers: { authorization: `Bearer ${token(user, { [flowId]: "viewer" })}` },
  })
  expect(r.status).toBe(200)
  const json = await r.json()
  delete json.id
  delete json.heads
  return json
}

beforeAll(async () => {
  hub = await startHub()
})

afterAll(async () => {
  for (const { repo, adapter } of repos) {
    adapter.socket?.addEventListener("error", () => {})
    await repo.shutdown().catch(() => {})
  }
  for (const c of clients) c.close()
  await hub?.stop()
})

describe("a stock Repo's schema-breaking edits", () => {
  it("are repaired, its later edits land, and every replica converges", async () => {
    const fh = await connect(hub, token("nat", { fixme: "editor" }, { name: "Nat" }))
    clients.push(fh)
    const flow = await fh.subscribe("fixme")
    await flow.addNode({ id: "n1", kind: "http", label: "Fetch", position: { x: 0, y: 0 } })

    const { repo, disconnects } = repoFor(token("sam", { fixme: "editor" }, { name: "Sam" }), "sam-peer")
    const handle: DocHandle<AnyDoc> = await repo.find(flowAutomergeUrl("fixme") as AutomergeUrl)
    // What the Repo's application observes: the hub's notices arrive as ephemeral messages.
    const notices: AnyDoc[] = []
    handle.on("ephemeral-message", ({ message }) => {
      if (typeof message?.type === "string" && message.type.startsWith("flowhub/")) notices.push(message)
    })
    await eventually(() => snapshotOf(handle.doc()).nodes.n1, 10_000, "the Repo gets the flow")

    // Each invalid edit is followed by a valid one, which must land.
    const invalid: [string, (d: AnyDoc) => void][] = [
      // Automerge 3 writes a plain JS string as a text object; the schema wants a string.
      ["a JS string where a scalar string belongs", (d) => (d.nodes.n1.label = "Plain JS string")],
      [
        "a node without label",
        (d) => {
          d.nodes.nolabel = { kind: new A.ImmutableString("http"), position: { x: 1, y: 2 }, config: {} }
        },
      ],
      ["an unknown key at the root", (d) => (d.extra = new A.ImmutableString("not in the schema"))],
      [
        "a non-numeric position",
        (d) => {
          d.nodes.n1.position = { x: new A.ImmutableString("far left"), y: 3 }
        },
      ],
    ]
    const expectedProblems = [
      "nodes/n1/label: expected string",
      "nodes/nolabel/label: missing",
      "extra: unexpected key",
      "nodes/n1/position/x: expected number",
    ]
    for (const [i, [what, change]] of invalid.entries()) {
      handle.change(change)
      const notice = await eventually(
        () => notices.find((n) => n.type === "flowhub/repaired" && n.problems?.includes(expectedProblems[i])),
        10_000,
        `the application is told what was repaired after ${what}`,
      )
      expect(notice.change).toMatch(/^[0-9a-f]{64}$/)
      handle.change((d: AnyDoc) => {
        d.nodes.n1.config[`step${i}`] = i
      })
      await eventually(
        () => flow.snapshot().nodes.n1?.config[`step${i}`] === i,
        10_000,
        `the valid edit after ${what} lands`,
      )
    }

    // One valid flow everywhere: the Repo, a flowhub client, and the store.
    const expected = {
      name: "",
      nodes: {
        n1: {
          id: "n1",
          kind: "http",
          label: "Plain JS string",
          position: { x: 0, y: 3 },
          config: { step0: 0, step1: 1, step2: 2, step3: 3 },
        },
        nolabel: { id: "nolabel", kind: "http", label: "", position: { x: 1, y: 2 }, config: {} },
      },
      edges: {},
    }
    await eventually(
      () => JSON.stringify(snapshotOf(handle.doc())) === JSON.stringify(flow.snapshot()),
      10_000,
      "the Repo and the flowhub client converge",
    )
    expect(flow.snapshot()).toEqual(expected)
    expect(snapshotOf(handle.doc())).toEqual(expected)
    expect(handle.doc().extra).toBeUndefined()
    expect(await getFlow("fixme", "nat")).toEqual(expected)
    expect([...A.getHeads(handle.doc())].sort()).toEqual([...flow.heads()].sort())
    expect(disconnects()).toBe(0)
    expect(notices.filter((n) => n.type === "flowhub/refused")).toEqual([])
  })
})

describe("a stock Repo without the editor role", () => {
  it("edits: nothing is stored or forwarded, its application is told, and it stays connected", async () => {
    const fh = await connect(hub, token("olive", { readonly: "editor" }, { name: "Olive" }))
    clients.push(fh)
    const flow = await fh.subscribe("readonly")
    await flow.addNode({ id: "base", kind: "trigger", label: "Base", position: { x: 0, y: 0 } })

    const { repo, disconnects } = repoFor(token("vic", { readonly: "viewer" }, { name: "Vic" }), "vic-peer")
    const handle: DocHandle<AnyDoc> = await repo.find(flowAutomergeUrl("readonly") as AutomergeUrl)
    const notices: AnyDoc[] = []
    handle.on("ephemeral-message", ({ message }) => {
      if (typeof message?.type === "string" && message.type.startsWith("flowhub/")) notices.push(message)
    })
    await eventually(() => snapshotOf(handle.doc()).nodes.base, 10_000, "the viewer reads")

    handle.change((d: AnyDoc) => {
      d.name = new A.ImmutableString("viewer was here")
    })
    const refused = await eventually(
      () => notices.find((n) => n.type === "flowhub/refused"),
      10_000,
      "the Repo's application is told its edit was refused",
    )
    expect(refused.code).toBe("forbidden")
    expect(refused.message).toMatch(/viewer/)

    // Nothing reached the flow, and the viewer still gets the editor's edits.
    await flow.relabelNode("base", "Edited after the refusal")
    await eventually(
      () => snapshotOf(handle.doc()).nodes.base?.label === "Edited after the refusal",
      10_000,
      "the viewer still receives edits",
    )
    expect((await getFlow("readonly", "olive")).name).toBe("")
    expect(flow.snapshot().name).toBe("")
    expect(disconnects()).toBe(0)
  })
})
