// Folding run events into a RunSnapshot, exactly as actors/src/run/state.rs does, so a
// watcher can keep the run's state current from `run_state` plus `run_event`s.

import type { RunEvent, RunSnapshot, StepState } from "./protocol.js"

/** How many log lines a folded snapshot keeps (the hub's `recent_logs`). */
export const MAX_RUN_LOGS = 100

const FINAL = new Set(["succeeded", "failed", "cancelled"])

export function newRunSnapshot(runId: string, flowId: string): RunSnapshot {
  return {
    id: runId,
    flowId,
    status: "queued",
    startedAt: null,
    finishedAt: null,
    flowHeads: [],
    lastSeq: 0,
    steps: [],
    logs: [],
  }
}

/** Applies the next event in sequence to `run` (mutates it). */
export function applyRunEvent(run: RunSnapshot, event: RunEvent, maxLogs = MAX_RUN_LOGS): void {
  run.lastSeq = Math.max(run.lastSeq, event.seq)
  switch (event.type) {
    case "run.started":
      if (run.status === "queued") run.status = "running"
      if (run.startedAt === null) {
        run.startedAt = event.ts
        if (event.flow_heads) run.flowHeads = [...event.flow_heads]
      }
      break
    case "step.started":
    case "step.succeeded":
    case "step.failed":
    case "step.retrying":
      if (run.status === "queued") run.status = "running"
      if (event.node_id !== undefined) applyStep(run, event.node_id, event)
      break
    case "log":
      if (maxLogs > 0) {
        if (run.logs.length >= maxLogs) run.logs.splice(0, run.logs.length + 1 - maxLogs)
        run.logs.push({
          seq: event.seq,
          ts: event.ts,
          level: event.level ?? "info",
          msg: event.message ?? "",
          nodeId: event.node_id ?? null,
        })
      }
      break
    case "run.finished":
      if (!FINAL.has(run.status)) {
        run.status = event.status && FINAL.has(event.status) ? event.status : "succeeded"
        run.finishedAt = event.ts
      }
      break
  }
}

function applyStep(run: RunSnapshot, nodeId: string, e: RunEvent) {
  let step = run.steps.find((s) => s.nodeId === nodeId)
  if (!step) {
    step = {
      nodeId,
      status: "running",
      attempt: 0,
      startedAt: null,
      finishedAt: null,
      durationMs: null,
      error: null,
    }
    run.steps.push(step)
  }
  const ended = (s: StepState, status: StepState["status"]) => {
    s.status = status
    s.finishedAt = e.ts
    s.durationMs = e.duration_ms ?? (s.startedAt !== null ? Math.max(0, e.ts - s.startedAt) : null)
    if (e.attempt !== undefined) s.attempt = e.attempt
    s.attempt = Math.max(s.attempt, 1)
  }
  switch (e.type) {
    case "step.started":
      step.attempt =
        e.attempt !== undefined ? e.attempt : step.status === "retrying" ? step.attempt + 1 : Math.max(step.attempt, 1)
      step.status = "running"
      step.startedAt = e.ts
      step.finishedAt = null
      step.durationMs = null
      step.error = null
      break
    case "step.succeeded":
      ended(step, "succeeded")
      step.error = null
      break
    case "step.failed":
      ended(step, "failed")
      step.error = e.error ?? null
      break
    case "step.retrying":
      ended(step, "retrying")
      step.error = e.error ?? null
      break
  }
}
