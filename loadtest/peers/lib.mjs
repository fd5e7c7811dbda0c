// Shared helpers of the peer benchmarks: arguments, tokens, latency summaries, the
// CPU time of a process from /proc, flow ids, small waits.

import { createHmac, randomBytes } from "node:crypto"
import { readFileSync, writeFileSync, mkdirSync } from "node:fs"
import { dirname } from "node:path"

/** `--key value` / `--flag` arguments; `defaults` gives the known keys and types. */
export function parseArgs(argv, defaults, usage) {
  const out = { ...defaults }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (a === "--help" || a === "-h") {
      console.log(usage)
      process.exit(0)
    }
    if (!a.startsWith("--")) fail(`unexpected argument ${a}\n${usage}`)
    const eq = a.indexOf("=")
    const name = (eq > 0 ? a.slice(2, eq) : a.slice(2)).replace(/-([a-z])/g, (_, c) => c.toUpperCase())
    if (!(name in defaults)) fail(`unknown option ${a}\n${usage}`)
    const d = defaults[name]
    if (typeof d === "boolean" && eq < 0) {
      out[name] = true
      continue
    }
    const raw = eq > 0 ? a.slice(eq + 1) : argv[++i]
    if (raw === undefined) fail(`${a} needs a value`)
    if (typeof d === "number") {
      const v = Number(raw)
      if (!Number.isFinite(v)) fail(`${a}: not a number: ${raw}`)
      out[name] = v
    } else out[name] = raw
  }
  return out
}

export function fail(msg) {
  console.error(`error: ${msg}`)
  process.exit(2)
}

/** A short random prefix for ids, so runs against the same server never share state. */
export function runPrefix(tag = "pr") {
  return `${tag}${randomBytes(4).toString("hex")}`
}

/** An HS256 JWT with the hub's claims (protocol `Claims`: sub, name, exp, flows, svc). */
export function mintToken(secret, sub, flows, ttlSecs = 12 * 3600) {
  if (!secret) fail("FLOWHUB_JWT_SECRET is not set (the hub's HS256 secret)")
  const b64 = (s) => Buffer.from(s).toString("base64url")
  const claims = { sub, name: sub, exp: Math.floor(Date.now() / 1000) + ttlSecs, flows, svc: false }
  const input = `${b64(JSON.stringify({ alg: "HS256", typ: "JWT" }))}.${b64(JSON.stringify(claims))}`
  return `${input}.${createHmac("sha256", secret).update(input).digest("base64url")}`
}

/** ws://host:port → http://host:port (no trailing slash). */
export function httpBase(url) {
  return url.replace(/^ws/, "http").replace(/\/+$/, "")
}

const CLK_TCK = 100 // getconf CLK_TCK on Linux

/** utime + stime of a process in seconds (from /proc/PID/stat), or NaN. */
export function procCpuSeconds(pid) {
  if (!pid) return NaN
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8")
    const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    return (Number(rest[11]) + Number(rest[12])) / CLK_TCK
  } catch {
    return NaN
  }
}

/** This process's CPU seconds (user + system). */
export function selfCpuSeconds() {
  const u = process.cpuUsage()
  return (u.user + u.system) / 1e6
}

/** Percentiles of a list of latencies in ms. */
export function summarize(samples) {
  const n = samples.length
  if (n === 0) return { count: 0, mean_ms: 0, p50_ms: 0, p90_ms: 0, p99_ms: 0, p999_ms: 0, max_ms: 0, min_ms: 0 }
  const s = Float64Array.from(samples).sort()
  // Nearest rank, like an HDR histogram's value_at_quantile.
  const q = (p) => s[Math.min(n - 1, Math.max(0, Math.ceil(p * n) - 1))]
  let sum = 0
  for (const v of s) sum += v
  const r = (v) => Math.round(v * 1000) / 1000
  return {
    count: n,
    min_ms: r(s[0]),
    mean_ms: r(sum / n),
    p50_ms: r(q(0.5)),
    p90_ms: r(q(0.9)),
    p99_ms: r(q(0.99)),
    p999_ms: r(q(0.999)),
    max_ms: r(s[n - 1]),
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

/** Polls `cond` every `everyMs` until truthy or the deadline; returns the last value. */
export async function until(cond, timeoutMs, everyMs = 20) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const v = await cond()
    if (v || Date.now() >= deadline) return v
    await sleep(everyMs)
  }
}

/** JSON with object keys sorted (for comparing replicas whose key order differs). */
export function canonical(v) {
  if (Array.isArray(v)) return `[${v.map(canonical).join(",")}]`
  if (v !== null && typeof v === "object") {
    return `{${Object.keys(v)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical(v[k])}`)
      .join(",")}}`
  }
  return JSON.stringify(v)
}

export function writeJson(path, value) {
  if (!path) return
  mkdirSync(dirname(path), { recursive: true })
  writeFileSync(path, JSON.stringify(value, null, 2) + "\n")
}

export const round = (v, d = 3) => (Number.isFinite(v) ? Math.round(v * 10 ** d) / 10 ** d : null)

export function loadAverage() {
  try {
    return readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).map(Number)
  } catch {
    return []
  }
}
