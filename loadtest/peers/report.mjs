// Builds the markdown comparison of scripts/compare-peers.sh from its manifest: one
// line per step, tab-separated:
//
//   kind  label  result.json  server-cpu-samples  client-cpu-samples  exit-code
//
// kind: rust-edit (flowhub-loadtest edit JSON), node-edit (edit.mjs), open (open-large),
// burst, apply. CPU sample files hold `unix-seconds ticks` lines (utime + stime of one
// process, sampled every ~100 ms by the script); the CPU over a run's load phase is
// interpolated from them, so every row uses the same method.
//
//   node report.mjs --manifest FILE --rate 10 --out loadtest/results/compare-r10.md [--summary FILE.json]

import { existsSync, readFileSync, writeFileSync } from "node:fs"
import os from "node:os"

import { fail, parseArgs, round } from "./lib.mjs"

const USAGE = "usage: node report.mjs --manifest FILE --rate R --out FILE.md [--summary FILE.json] [--commands FILE]"
const args = parseArgs(process.argv.slice(2), { manifest: "", rate: 10, out: "", summary: "", commands: "" }, USAGE)
if (!args.manifest || !args.out) fail(USAGE)
const CLK_TCK = 100
const SAME_NODE = "edit → peer applied (same node)"
const ACK = "edit → hub ack"

const steps = readFileSync(args.manifest, "utf8")
  .split("\n")
  .filter((l) => l.trim())
  .map((l) => {
    const [kind, label, json, serverCpu, clientCpu, code] = l.split("\t")
    return { kind, label, json, serverCpu, clientCpu, code: Number(code) }
  })

function readJson(path) {
  try {
    return JSON.parse(readFileSync(path, "utf8"))
  } catch {
    return undefined
  }
}

/** CPU seconds of the sampled process between two unix times (ms), interpolated. */
function cpuBetween(file, fromMs, toMs) {
  if (!file || !existsSync(file)) return NaN
  const pts = readFileSync(file, "utf8")
    .split("\n")
    .map((l) => l.trim().split(/\s+/).map(Number))
    .filter((p) => p.length === 2 && p.every(Number.isFinite))
    .map(([t, ticks]) => [t * 1000, ticks / CLK_TCK])
  if (pts.length < 2 || fromMs < pts[0][0] || toMs > pts[pts.length - 1][0] + 200) return NaN
  const at = (t) => {
    let k = pts.findIndex((p) => p[0] >= t)
    if (k < 0) return pts[pts.length - 1][1]
    if (k === 0) return pts[0][1]
    const [t0, c0] = pts[k - 1]
    const [t1, c1] = pts[k]
    return c0 + ((c1 - c0) * (t - t0)) / Math.max(1e-9, t1 - t0)
  }
  return at(toMs) - at(fromMs)
}

/** The load window of a flowhub-loadtest report (unix ms), from its per-second series. */
function rustLoadWindow(r) {
  const section = r.sections?.find((s) => s.name === "edit")
  const series = section?.series?.find((s) => s.name === "edits sent")
  const p = r.parameters ?? {}
  const duration = (p.duration_s ?? 0) * 1000
  if (!series) return undefined
  // `start_s` is the load start truncated to whole seconds; the first bucket's share
  // of a full second's edits says how much of that second the load covered.
  const perSecond = (p.edit_rate ?? 0) * (section.values.find((v) => v.name === "editors connected")?.value ?? 0)
  const first = series.values[0] ?? 0
  const covered = perSecond > 0 ? Math.min(1, Math.max(0, first / perSecond)) : 1
  const startS = series.start_s + 1 - covered
  const start = r.started_at_unix_ms + startS * 1000
  return { start, end: start + duration }
}

const ms = (v) => (Number.isFinite(v) ? (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)) : "–")
const num = (v, d = 2) => (Number.isFinite(v) ? v.toFixed(d) : "–")

// ---- the edit runs ------------------------------------------------------------------------------

const editRows = []
for (const s of steps.filter((s) => s.kind === "rust-edit" || s.kind === "node-edit")) {
  const r = readJson(s.json)
  const row = { label: s.label, kind: s.kind, exit_code: s.code, json: s.json }
  if (!r) {
    editRows.push({ ...row, error: `no result (exit ${s.code})` })
    continue
  }
  if (s.kind === "rust-edit") {
    const sec = r.sections.find((x) => x.name === "edit")
    const v = (name) => sec.values.find((x) => x.name === name)?.value
    const lat = sec.latencies.find((l) => l.name === SAME_NODE)
    const ack = sec.latencies.find((l) => l.name === ACK)
    const w = rustLoadWindow(r)
    Object.assign(row, {
      p50: lat ? lat.p50_us / 1000 : NaN,
      p99: lat ? lat.p99_us / 1000 : NaN,
      ack_p50: ack ? ack.p50_us / 1000 : NaN,
      ack_p99: ack ? ack.p99_us / 1000 : NaN,
      sent: v("edits sent"),
      planned: v("edits planned"),
      observed: v("applies observed"),
      expected: v("applies expected"),
      converged: v("convergence") === 1,
      convergence_detail: r.checks.find((c) => c.name === "convergence")?.detail,
      window: w,
      window_note: "estimated from the report's per-second series",
      load_average: r.machine?.load_average,
    })
  } else {
    Object.assign(row, {
      p50: r.edit_to_peer.p50_ms,
      p99: r.edit_to_peer.p99_ms,
      ack_p50: r.edit_to_ack.p50_ms,
      ack_p99: r.edit_to_ack.p99_ms,
      sent: r.edits_sent,
      planned: r.edits_planned,
      observed: r.applies_observed,
      expected: r.applies_expected,
      converged: r.convergence.passed,
      convergence_detail: r.checks.find((c) => c.name === "convergence")?.detail,
      window: { start: r.load_start_unix_ms, end: r.load_end_unix_ms },
      server_cpu_direct: r.server_cpu_seconds_load,
      load_average: r.load_average,
    })
  }
  if (row.window) {
    row.server_cpu = cpuBetween(s.serverCpu, row.window.start, row.window.end)
    row.client_cpu = cpuBetween(s.clientCpu, row.window.start, row.window.end)
  }
  row.server_cpu_per_1000 = row.sent > 0 ? (row.server_cpu * 1000) / row.sent : NaN
  row.client_cpu_per_1000 = row.sent > 0 ? (row.client_cpu * 1000) / row.sent : NaN
  editRows.push(row)
}

const rate = args.rate
const lines = []
lines.push(`# flowhub vs Hocuspocus: the edit workload of issue #14 at R = ${rate}/s`)
lines.push("")
lines.push(
  `10 flows × 5 editors, each moving its own node ${rate} times a second (${rate * 50} edits/s in all); every edit timed until every other editor of its flow has it. Clients run in their own process, on the same machine as the server. Generated by \`scripts/compare-peers.sh\` on ${new Date().toISOString()}.`,
)
lines.push("")
lines.push(`| R = ${rate}/s per editor (${rate * 50} edits/s) | edit → peer p50 | p99 | server CPU per 1,000 edits | converged |`)
lines.push("|---|---|---|---|---|")
for (const r of editRows) {
  if (r.error) {
    lines.push(`| ${r.label} | – | – | – | ${r.error} |`)
    continue
  }
  lines.push(
    `| ${r.label} | ${ms(r.p50)} ms | ${ms(r.p99)} ms | ${num(r.server_cpu_per_1000, 3)} s | ${r.converged ? "yes" : "**no**"} |`,
  )
}
lines.push("")
lines.push("Details:")
lines.push("")
lines.push("| run | edits sent / planned | applies observed / expected | edit → ack p50 / p99 | client CPU per 1,000 edits | server CPU, load phase | load avg at start |")
lines.push("|---|---|---|---|---|---|---|")
for (const r of editRows) {
  if (r.error) continue
  lines.push(
    `| ${r.label} | ${r.sent} / ${r.planned} | ${r.observed} / ${r.expected}${r.observed === r.expected ? "" : " **(short)**"} | ${ms(r.ack_p50)} / ${ms(r.ack_p99)} ms | ${num(r.client_cpu_per_1000, 3)} s | ${num(r.server_cpu, 2)} s | ${(r.load_average ?? []).map((x) => num(x, 2)).join(" ")} |`,
  )
}
lines.push("")
lines.push(
  "Server CPU: utime + stime of the server process alone (`flowhub`, or the Hocuspocus node process) from /proc/PID/stat, sampled every ~100 ms and interpolated over the load phase (for flowhub-loadtest the load window is estimated from its per-second series, ±~20 ms). Client CPU: the same for the load-generating process. " +
    "Ack: flowhub's is the hub's durable `ack` (stored in SQLite); Hocuspocus's is its SyncStatus reply (applied in memory; the SQLite extension stores debounced, 2 s after the last change).",
)
const notes = []
for (const r of editRows) {
  if (r.error) continue
  if (r.planned > 0 && r.sent < 0.95 * r.planned) {
    notes.push(
      `- ${r.label}: sent only ${r.sent} of ${r.planned} planned edits (${((100 * r.sent) / r.planned).toFixed(0)} %): the editors fell behind their schedule and skipped ticks (in the ${num((r.window.end - r.window.start) / 1000, 0)} s load phase: client CPU ${num(r.client_cpu, 2)} s, server CPU ${num(r.server_cpu, 2)} s, on ${os.cpus().length} cores shared by both), so these latencies are those of a saturated system.`,
    )
  }
  if (!r.converged) notes.push(`- ${r.label}: convergence: ${r.convergence_detail}`)
}
if (notes.length > 0) {
  lines.push("")
  lines.push(...notes)
}

// ---- open-large, burst, apply -----------------------------------------------------------------

const opens = steps.filter((s) => s.kind === "open").map((s) => ({ s, r: readJson(s.json) }))
if (opens.length > 0) {
  lines.push("")
  lines.push("## Opening a 1,000-node flow (built with 1,000 separate edits), 20 fresh clients")
  lines.push("")
  lines.push("| server | connect → all nodes in the replica p50 | p99 | → plain JS snapshot of all nodes p50 | p99 | server CPU per open | client CPU per open |")
  lines.push("|---|---|---|---|---|---|---|")
  for (const { s, r } of opens) {
    if (!r) lines.push(`| ${s.label} | – | – | – | – | – | no result (exit ${s.code}) |`)
    else {
      const snap = r.open_snapshot_ms
      lines.push(
        `| ${s.label} | ${ms(r.open_ms.p50_ms)} ms | ${ms(r.open_ms.p99_ms)} ms | ${snap ? `${ms(snap.p50_ms)} ms` : "–"} | ${snap ? `${ms(snap.p99_ms)} ms` : "–"} | ${num(r.server_cpu_ms_per_open, 1)} ms | ${num(r.client_cpu_ms_per_open, 1)} ms |`,
      )
    }
  }
  lines.push("")
  lines.push(
    "All nodes in the replica: @flowhub/client `flow.nodeIds()` (the Automerge document holds every node; its JS view is built on the first read), Yjs `Y.Map.size`. Plain JS snapshot: `flow.snapshot()` / `Y.Map.toJSON()` right after, counted from connect.",
  )
}
const bursts = steps.filter((s) => s.kind === "burst").map((s) => ({ s, r: readJson(s.json) }))
if (bursts.length > 0) {
  lines.push("")
  lines.push("## A burst of 1,000 back-to-back node inserts, until the server has them all")
  lines.push("")
  lines.push("| client → server | insert loop | server has all | note |")
  lines.push("|---|---|---|---|")
  for (const { s, r } of bursts) {
    if (!r) {
      lines.push(`| ${s.label} | – | – | no result (exit ${s.code}) |`)
      continue
    }
    if (r.flowhub_client)
      lines.push(`| @flowhub/client → flowhub /v1/ws | ${ms(r.flowhub_client.loop_ms)} ms | ${ms(r.flowhub_client.all_acked_ms)} ms | every addNode acked (stored) |`)
    if (r.automerge_repo)
      lines.push(
        `| stock automerge-repo Repo → flowhub /v1/automerge-repo | ${ms(r.automerge_repo.loop_ms)} ms | ${ms(r.automerge_repo.hub_has_all_ms)} ms | hub's heads (its sync messages) contain the Repo's; GET /v1/flows confirms at ${ms(r.automerge_repo.confirmed_by_get_ms)} ms; the Repo throttles sync to every 100 ms |`,
      )
    if (r.hocuspocus)
      lines.push(
        `| HocuspocusProvider → Hocuspocus (in memory) | ${ms(r.hocuspocus.loop_ms)} ms | ${ms(r.hocuspocus.server_applied_all_ms)} ms | SyncStatus for all (applied in memory); a second client has all at ${ms(r.hocuspocus.observer_has_all_ms)} ms |`,
      )
  }
}
const applies = steps.filter((s) => s.kind === "apply").map((s) => ({ s, r: readJson(s.json) }))
if (applies.length > 0) {
  lines.push("")
  lines.push("## Applying one remote node move on a 1,000-node flow, in Node (no server)")
  lines.push("")
  lines.push("| path | mean | p50 | p99 |")
  lines.push("|---|---|---|---|")
  for (const { s, r } of applies) {
    if (!r) {
      lines.push(`| ${s.label} | – | – | no result (exit ${s.code}) |`)
      continue
    }
    const row = (name, x) => lines.push(`| ${name} | ${ms(x.mean_ms)} ms | ${ms(x.p50_ms)} ms | ${ms(x.p99_ms)} ms |`)
    row(`@flowhub/client \`Flow.onSyncMessage\` (receiveSyncMessage + reply + change event), ${r.applies} applies`, r.flow_on_sync_message)
    row("… with a change listener reading the moved node", r.flow_on_sync_message_with_change_listener)
    row(`plain \`Automerge.applyChanges\` of the one change (automerge ${r.automerge_version})`, r.automerge_apply_changes)
    row(`Yjs \`Y.applyUpdate\` of the same move (yjs ${r.yjs_version})`, r.yjs_apply_update)
  }
}

const failed = steps.filter((s) => s.code !== 0)
lines.push("")
lines.push(failed.length === 0 ? "Every step exited 0." : `Steps that exited non-zero: ${failed.map((s) => `${s.label} (${s.kind}, exit ${s.code})`).join("; ")}.`)
if (args.commands && existsSync(args.commands)) {
  lines.push("")
  lines.push("Commands:")
  lines.push("")
  lines.push("```sh")
  lines.push(readFileSync(args.commands, "utf8").trimEnd())
  lines.push("```")
}
const md = lines.join("\n") + "\n"
writeFileSync(args.out, md)
if (args.summary) {
  const clean = editRows.map((r) => ({
    ...r,
    server_cpu: round(r.server_cpu),
    client_cpu: round(r.client_cpu),
    server_cpu_per_1000: round(r.server_cpu_per_1000),
    client_cpu_per_1000: round(r.client_cpu_per_1000),
  }))
  writeFileSync(args.summary, JSON.stringify({ rate, edit: clean, steps }, null, 2) + "\n")
}
process.stdout.write(md)
