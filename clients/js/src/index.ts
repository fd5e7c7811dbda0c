export { FlowhubClient, Flow, RunWatch, FlowhubError } from "./client.js"
export type { ConnectOptions, FlowFrameStats, PendingEdit, Welcome, WebSocketCtor, WebSocketLike } from "./client.js"
export { FlowDocument, FlowEditError, snapshotOf, MAX_CONFIG_DEPTH, MAX_ID_LEN, MAX_KIND_LEN, MAX_LABEL_LEN } from "./flow.js"
export type {
  Edit,
  EditOp,
  EditOutcome,
  EditsOutcome,
  Endpoint,
  FlowEdge,
  FlowEditErrorCode,
  FlowNode,
  FlowSnapshot,
  JsonObject,
  JsonValue,
  NewNode,
  Position,
} from "./flow.js"
export {
  UndoStack,
  DEFAULT_UNDO_LIMIT,
  diffSnapshots,
  invertDiff,
  diffToEdits,
  composeDiffs,
  rebase,
  isEmptyDiff,
} from "./undo.js"
export type { Changed, ConfigChange, FlowDiff, NodeChange, SkipReason, Skipped, Undone, UndoEntry, UndoTarget } from "./undo.js"
export * from "./protocol.js"
export { FlowhubHttp, FlowhubHttpError, versionRef, runRef, applyJsonPatch } from "./http.js"
export type {
  ConfigKey,
  EditSummary,
  EditsResult,
  FlowVersion,
  JsonPatchOp,
  FlowJson,
  HistoryOptions,
  HistoryPage,
  HistorySession,
  HttpOptions,
  NamedVersion,
  VersionRef,
} from "./http.js"
export { applyRunEvent, newRunSnapshot, MAX_RUN_LOGS } from "./runs.js"
export { flowDocumentId, flowAutomergeUrl, flowIdOfDocumentId, base58checkEncode, base58checkDecode } from "./docid.js"
