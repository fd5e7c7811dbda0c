// The two backends behind one small "editor" interface, so edit.mjs runs the same
// workload on both:
//
//   flowhub     @flowhub/client (Automerge; one WebSocket per client on /v1/ws), typed
//               edits (`addNode`, `moveNode`), promise settled by the hub's durable ack.
//   hocuspocus  @hocuspocus/provider 3 (Yjs; one WebSocket per provider, `ws` as the
//               polyfill), a Y.Map "nodes" of Y.Maps {x, y}; "ack" is Hocuspocus's
//               SyncStatus reply (the server applied the update in memory; with the
//               SQLite extension it is stored later, debounced).
//
// Editor interface:
//   move(seq, y)   moves the own node to x = seq in one edit/transaction; returns a
//                  promise that resolves when the server has it (ack).
//   readX(ids)     x of the given nodes (undefined when absent).
//   onRemote(cb)   cb() after every change that came from the server.
//   stateKey()     equal on two replicas iff they hold the same state (heads / state vector).
//   pending()      own edits the server has not acknowledged yet.
//   snapshot()     the flow as plain JSON (for comparing replicas).
//   close()

import { FlowhubClient } from "@flowhub/client"
import { HocuspocusProvider } from "@hocuspocus/provider"
import { WebSocket } from "ws"
import * as Y from "yjs"

import { canonical, httpBase, mintToken } from "./lib.mjs"

const SETUP_TIMEOUT_MS = 30_000

function withTimeout(promise, ms, what) {
  let timer
  return Promise.race([
    promise,
    new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: timed out after ${ms} ms`)), ms))),
  ]).finally(() => clearTimeout(timer))
}

// ---- flowhub -----------------------------------------------------------------------

/** Connects a @flowhub/client session with an editor token for `flowId`. */
export async function flowhubConnect(url, secret, sub, flows) {
  const options = {
    url,
    token: mintToken(secret, sub, flows),
    WebSocket,
    client: "flowhub-peers",
    reconnect: false,
    requestTimeoutMs: SETUP_TIMEOUT_MS,
  }
  // FLOWHUB_STREAM=on|off sets the client's `stream` option (change streaming, in
  // clients that have it); unset leaves the client's default.
  const stream = process.env.FLOWHUB_STREAM
  if (stream === "on" || stream === "off") options.stream = stream === "on"
  return FlowhubClient.connect(options)
}

/** One editor on `flowId` owning node `nodeId` (created at x = 0, y). */
export async function flowhubEditor({ url, secret, flowId, nodeId, sub, y }) {
  const client = await flowhubConnect(url, secret, sub, { [flowId]: "editor" })
  const setup = async () => {
    const flow = await client.subscribe(flowId)
    const created = flow.addNode({ id: nodeId, kind: "action", label: `editor ${y}`, position: { x: 0, y } })
    const verdict = await flow.waitAcked(created, SETUP_TIMEOUT_MS)
    if (verdict !== "acked") throw new Error(`node ${nodeId}: no ack within ${SETUP_TIMEOUT_MS} ms`)
    return flow
  }
  let flow
  try {
    flow = await withTimeout(setup(), SETUP_TIMEOUT_MS, `editor ${sub}`)
  } catch (e) {
    client.close()
    throw e
  }
  let closed = false
  client.on("close", (code, reason) => {
    if (!closed) console.error(`flowhub editor ${sub}: connection closed (${code} ${reason})`)
  })
  return {
    move(seq, yy) {
      // Throws synchronously on a local FlowEditError; the promise settles on the
      // hub's verdict (ack, or refusal after a rollback).
      return flow.moveNode(nodeId, { x: seq, y: yy })
    },
    readX(ids) {
      const doc = flow.document
      return ids.map((id) => doc.node(id)?.position.x)
    },
    onRemote(cb) {
      flow.on("change", ({ local }) => {
        if (!local) cb()
      })
    },
    stateKey: () => [...flow.heads()].sort().join(","),
    pending: () => flow.pendingChanges().length,
    snapshot: () => flow.snapshot(),
    get connected() {
      return client.connected
    },
    close() {
      closed = true
      client.close()
    },
  }
}

/** The hub's view of a flow: `GET /v1/flows/{id}` with a viewer token. */
export async function flowhubServerState(url, secret, flowId) {
  const r = await fetch(`${httpBase(url)}/v1/flows/${encodeURIComponent(flowId)}`, {
    headers: { authorization: `Bearer ${mintToken(secret, "peers-checker", { [flowId]: "viewer" })}` },
  })
  if (!r.ok) throw new Error(`GET /v1/flows/${flowId}: HTTP ${r.status} ${await r.text()}`)
  return r.json()
}

// ---- hocuspocus --------------------------------------------------------------------

/**
 * A HocuspocusProvider with its own WebSocket (the provider creates one per instance
 * when given `url`), resolved once synced. `acks` tracks SyncStatus replies: each local
 * update raises `unsyncedChanges`, each SyncStatus(applied) lowers it, in order.
 */
export async function hocuspocusOpen(url, name) {
  const doc = new Y.Doc()
  const acks = []
  let prev = 0
  let tracking = false
  const provider = new HocuspocusProvider({
    url,
    name,
    document: doc,
    WebSocketPolyfill: WebSocket,
    token: "bench",
    onUnsyncedChanges: ({ number }) => {
      if (tracking && number < prev) {
        for (let k = prev - number; k > 0 && acks.length > 0; k--) acks.shift()()
      }
      prev = number
    },
  })
  await withTimeout(
    new Promise((resolve) => {
      if (provider.isSynced) resolve()
      provider.on("synced", () => resolve())
    }),
    SETUP_TIMEOUT_MS,
    `hocuspocus ${name}: synced`,
  ).catch((e) => {
    provider.destroy()
    throw e
  })
  return {
    doc,
    provider,
    /** Starts pairing acks with `expectAck` promises (after setup). */
    track() {
      tracking = true
      prev = provider.unsyncedChanges
    },
    expectAck() {
      return new Promise((resolve) => acks.push(resolve))
    },
    /** Resolves when the server applied every local update so far. */
    async flushed(timeoutMs = SETUP_TIMEOUT_MS) {
      const deadline = Date.now() + timeoutMs
      while (provider.hasUnsyncedChanges) {
        if (Date.now() > deadline) throw new Error(`hocuspocus ${name}: unsynced changes after ${timeoutMs} ms`)
        await new Promise((r) => setTimeout(r, 5))
      }
    },
    close() {
      provider.destroy()
      doc.destroy()
    },
  }
}

/** A Y.Map's JSON with nested Y types. */
export function yNodesJson(doc) {
  return doc.getMap("nodes").toJSON()
}

export async function hocuspocusEditor({ url, flowId, nodeId, y }) {
  const h = await hocuspocusOpen(url, flowId)
  const { doc, provider } = h
  const nodes = doc.getMap("nodes")
  let own
  doc.transact(() => {
    own = new Y.Map()
    nodes.set(nodeId, own)
    own.set("x", 0)
    own.set("y", y)
  })
  try {
    await h.flushed()
  } catch (e) {
    h.close()
    throw e
  }
  h.track()
  return {
    move(seq, yy) {
      const ack = h.expectAck()
      doc.transact(() => {
        own.set("x", seq)
        own.set("y", yy)
      })
      return ack
    },
    readX(ids) {
      return ids.map((id) => {
        const m = nodes.get(id)
        return m instanceof Y.Map ? m.get("x") : undefined
      })
    },
    onRemote(cb) {
      nodes.observeDeep((_events, txn) => {
        if (!txn.local) cb()
      })
    },
    stateKey: () => Buffer.from(Y.encodeStateVector(doc)).toString("base64"),
    pending: () => provider.unsyncedChanges,
    snapshot: () => JSON.parse(canonical(yNodesJson(doc))),
    get connected() {
      return provider.configuration.websocketProvider.status === "connected"
    },
    close: () => h.close(),
  }
}

/** A fresh provider's view of a document: what the server holds. */
export async function hocuspocusServerState(url, name) {
  const h = await hocuspocusOpen(url, name)
  try {
    return JSON.parse(canonical(yNodesJson(h.doc)))
  } finally {
    h.close()
  }
}
