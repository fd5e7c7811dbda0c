// Test helpers: a real hub process on a free port, HS256 tokens, the Rust CLI.

import { spawn, execFile, type ChildProcess } from "node:child_process"
import { createHmac } from "node:crypto"
import { existsSync, mkdtempSync, rmSync } from "node:fs"
import { createServer } from "node:net"
import { tmpdir } from "node:os"
import { join, resolve } from "node:path"
import { WebSocket } from "ws"

import { FlowhubClient, type WebSocketCtor } from "../src/index.js"

export const SECRET = "js-test-secret"
const ROOT = resolve(__dirname, "../../..")
const TARGET = process.env.CARGO_TARGET_DIR ? resolve(ROOT, process.env.CARGO_TARGET_DIR) : join(ROOT, "target")

export function binary(name: string): string {
  const path = join(TARGET, "debug", name)
  if (!existsSync(path)) {
    throw new Error(`${path} is missing: run \`cargo build -p flowhub -p flowhub-client --bins\` first (scripts/web-test.sh does)`)
  }
  return path
}

export function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const srv = createServer()
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address()
      const port = typeof addr === "object" && addr ? addr.port : 0
      srv.close(() => res(port))
    })
    srv.on("error", rej)
  })
}

export interface HubProcess {
  port: number
  url: string
  httpUrl: string
  dataDir: string
  /** SIGTERM (the hub drains: sessions get close 1012) and wait for the exit. */
  kill(): Promise<void>
  /** SIGKILL: no drain, no flush; what the store committed stays. */
  kill9(): Promise<void>
  /** Starts the hub again on the same port and data directory. */
  restart(): Promise<void>
  stop(): Promise<void>
}

/** Starts `flowhub serve` on the embedded default (SQLite in a temp dir). */
export async function startHub(env: Record<string, string> = {}): Promise<HubProcess> {
  const port = await freePort()
  const dataDir = mkdtempSync(join(tmpdir(), "flowhub-js-"))
  const httpUrl = `http://127.0.0.1:${port}`
  let child: ChildProcess | undefined

  async function launch() {
    const proc = spawn(binary("flowhub"), ["serve"], {
      env: {
        ...process.env,
        FLOWHUB_LISTEN: `127.0.0.1:${port}`,
        FLOWHUB_DATA_DIR: dataDir,
        FLOWHUB_JWT_SECRET: SECRET,
        FLOWHUB_DATABASE_URL: "",
        RUST_LOG: process.env.RUST_LOG ?? "warn",
        ...env,
      },
      stdio: ["ignore", "ignore", "inherit"],
    })
    child = proc
    const deadline = Date.now() + 30_000
    for (;;) {
      if (proc.exitCode !== null) throw new Error(`flowhub exited with ${proc.exitCode}`)
      try {
        const r = await fetch(`${httpUrl}/readyz`)
        if (r.ok) return
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) {
        proc.kill("SIGKILL")
        throw new Error("flowhub did not become ready")
      }
      await sleep(50)
    }
  }

  async function kill() {
    const proc = child
    if (!proc || proc.exitCode !== null) return
    const exited = new Promise((r) => proc.once("exit", r))
    proc.kill("SIGTERM")
    await Promise.race([exited, sleep(15_000)])
    if (proc.exitCode === null) proc.kill("SIGKILL")
  }

  async function kill9() {
    const proc = child
    if (!proc || proc.exitCode !== null) return
    const exited = new Promise((r) => proc.once("exit", r))
    proc.kill("SIGKILL")
    await exited
  }

  await launch()
  return {
    port,
    url: `ws://127.0.0.1:${port}`,
    httpUrl,
    dataDir,
    kill,
    kill9,
    restart: launch,
    async stop() {
      await kill()
      rmSync(dataDir, { recursive: true, force: true })
    },
  }
}

function b64url(data: string | Buffer): string {
  return Buffer.from(data).toString("base64url")
}

/** An HS256 JWT with the claims of hub/src/auth.rs. */
export function token(
  sub: string,
  flows: Record<string, "viewer" | "editor" | "owner">,
  opts: { name?: string; svc?: boolean; ttlSecs?: number } = {},
): string {
  const claims: Record<string, unknown> = {
    sub,
    name: opts.name ?? sub,
    exp: Math.floor(Date.now() / 1000) + (opts.ttlSecs ?? 3600),
    flows,
  }
  if (opts.svc) claims.svc = true
  const input = `${b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }))}.${b64url(JSON.stringify(claims))}`
  const sig = createHmac("sha256", SECRET).update(input).digest("base64url")
  return `${input}.${sig}`
}

export function connect(hub: HubProcess, tok: string): Promise<FlowhubClient> {
  return FlowhubClient.connect({ url: hub.url, token: tok, WebSocket: WebSocket as unknown as WebSocketCtor, client: "vitest" })
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms))
}

/** Polls `cond` until it returns a truthy value or `timeoutMs` passes. */
export async function eventually<T>(cond: () => T | Promise<T>, timeoutMs = 10_000, what = "condition"): Promise<T> {
  const deadline = Date.now() + timeoutMs
  let last: unknown
  for (;;) {
    try {
      const v = await cond()
      if (v) return v
    } catch (e) {
      last = e
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ""}`)
    await sleep(20)
  }
}

/** Runs `flowhub-cli` against the hub; resolves with stdout and the exit code. */
export function cli(hub: HubProcess, tok: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((res) => {
    execFile(
      binary("flowhub-cli"),
      ["--url", hub.url, ...args],
      { env: { ...process.env, FLOWHUB_TOKEN: tok }, timeout: 20_000 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === "number" ? err.code : 1) : 0
        res({ code, stdout: String(stdout), stderr: String(stderr) })
      },
    )
  })
}
