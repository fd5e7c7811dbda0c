// Flow id <-> automerge-repo DocumentId (docs/PROTOCOL.md, "automerge-repo").
//
// DocumentId = base58check(UTF-8 bytes of the flow id). Reversible and stateless: any
// hub node maps a DocumentId back to its flow without a table.

import bs58check from "bs58check"

// base58check as automerge-repo itself encodes DocumentIds: the same `bs58check`
// package (double SHA-256 checksum, no version byte), so the ids match byte for byte.

export function base58checkEncode(payload: Uint8Array): string {
  return bs58check.encode(payload)
}

/** The payload, or `undefined` for a string that is not base58 or fails its checksum. */
export function base58checkDecode(s: string): Uint8Array | undefined {
  const payload = bs58check.decodeUnsafe(s)
  return payload === undefined ? undefined : new Uint8Array(payload)
}

const FLOW_ID_RE = /^[A-Za-z0-9_.:-]{1,128}$/

/** The automerge-repo DocumentId of a flow. */
export function flowDocumentId(flowId: string): string {
  if (!FLOW_ID_RE.test(flowId)) throw new Error(`invalid flow id ${JSON.stringify(flowId)}`)
  return base58checkEncode(new TextEncoder().encode(flowId))
}

/** The `automerge:` URL of a flow, for `repo.find(...)`. */
export function flowAutomergeUrl(flowId: string): string {
  return `automerge:${flowDocumentId(flowId)}`
}

/** The flow behind a DocumentId, or `undefined` if it names no flow. */
export function flowIdOfDocumentId(documentId: string): string | undefined {
  const bytes = base58checkDecode(documentId)
  if (!bytes) return undefined
  const flowId = new TextDecoder("utf-8", { fatal: false }).decode(bytes)
  return FLOW_ID_RE.test(flowId) ? flowId : undefined
}
