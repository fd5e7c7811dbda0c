// The demo page in two browsers (Alice and Bob) against a real hub process:
// a drag in one page moves the node in the other, a node added in one appears in the
// other, Alice's cursor and name show in Bob's page, a simulated run colours the nodes
// in both. Asserts on the DOM; screenshots go to target/web/. Also measures the time
// from a drag in page A to the move painted in page B (p50 over 100 drags).
//
// A second test: per-user undo in two pages (Ctrl+Z in A puts A's dragged node back and
// leaves the node B dragged where B put it, in both pages; Ctrl+Shift+Z redoes).
//
// A third: the history panel. A edits and names a version, B edits further; A's panel
// lists both users' sessions, and picking the version and "Now" (or the two sessions)
// marks on the canvas exactly the nodes B added, changed and removed; restoring the
// version undoes B's edits in both pages.
//
// Needs target/debug/flowhub (cargo build -p flowhub) and Chromium at /usr/bin/chromium
// (or CHROMIUM=/path). Run by scripts/web-test.sh.
//
// The hub embeds hub/static at build time, so a hub binary built before the page
// changed serves an older page: the test checks and fails saying so. WEB_ASSETS=tree
// serves the page's files from this working tree instead (a prebuilt hub, page work).

import { spawn } from "node:child_process"
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { createServer } from "node:net"
import { tmpdir } from "node:os"
import { dirname, join, resolve } from "node:path"
import { after, before, test } from "node:test"
import assert from "node:assert/strict"
import { fileURLToPath } from "node:url"

import { chromium } from "playwright-core"

const here = dirname(fileURLToPath(import.meta.url))
const root = resolve(here, "../../..")
const target = process.env.CARGO_TARGET_DIR ? resolve(root, process.env.CARGO_TARGET_DIR) : join(root, "target")
// Screenshots in this tree's target/web/ (where scripts/web-test.sh points), also when
// CARGO_TARGET_DIR names a shared build elsewhere; WEB_SHOTS_DIR overrides.
const shots = process.env.WEB_SHOTS_DIR ? resolve(process.env.WEB_SHOTS_DIR) : join(root, "target", "web")
const DRAGS = Number(process.env.DRAGS ?? 100)
const staticDir = join(root, "hub/static")
const assetsFromTree = process.env.WEB_ASSETS === "tree"
const ASSETS = {
  "/": ["index.html", "text/html; charset=utf-8"],
  "/app.js": ["app.js", "text/javascript; charset=utf-8"],
  "/app.css": ["app.css", "text/css; charset=utf-8"],
  "/automerge/automerge.wasm": ["automerge.wasm", "application/wasm"],
}

let hub
let browser
let base
let dataDir

function freePort() {
  return new Promise((res, rej) => {
    const srv = createServer()
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address()
      srv.close(() => res(port))
    })
    srv.on("error", rej)
  })
}

// Unref'd: a pending sleep must not keep the test process alive.
const sleep = (ms) => new Promise((r) => setTimeout(r, ms).unref())

before(async () => {
  const bin = join(target, "debug", "flowhub")
  assert.ok(existsSync(bin), `${bin} is missing: cargo build -p flowhub`)
  const port = await freePort()
  dataDir = mkdtempSync(join(tmpdir(), "flowhub-web-"))
  base = `http://127.0.0.1:${port}`
  // The embedded default (no database URL) with the demo turned on, as the README's
  // `flowhub demo` does: the dev endpoints exist only then.
  const env = { ...process.env, FLOWHUB_LISTEN: `127.0.0.1:${port}`, FLOWHUB_DATA_DIR: dataDir, FLOWHUB_DEMO: "1", RUST_LOG: "warn" }
  delete env.FLOWHUB_DATABASE_URL
  delete env.FLOWHUB_JWT_SECRET
  hub = spawn(bin, ["serve"], { env, stdio: ["ignore", "ignore", "inherit"] })
  for (let i = 0; ; i++) {
    try {
      if ((await fetch(`${base}/readyz`)).ok) break
    } catch {}
    assert.ok(i < 600 && hub.exitCode === null, "hub did not become ready")
    await sleep(50)
  }
  if (!assetsFromTree) {
    const served = Buffer.from(await (await fetch(`${base}/app.js`)).arrayBuffer())
    assert.ok(
      served.equals(readFileSync(join(staticDir, "app.js"))),
      `${bin} serves an older hub/static/app.js than this tree: rebuild the hub (cargo build -p flowhub) or set WEB_ASSETS=tree`,
    )
  }
  mkdirSync(shots, { recursive: true })
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      // Two pages render side by side: neither may be throttled as "in the background".
      "--disable-background-timer-throttling",
      "--disable-renderer-backgrounding",
      "--disable-backgrounding-occluded-windows",
      // A page fulfilled by the test (WEB_ASSETS=tree) has no local address of its own:
      // Chromium's local-network checks would block its WebSocket to 127.0.0.1.
      ...(assetsFromTree ? ["--disable-features=LocalNetworkAccessChecks"] : []),
    ],
  })
})

after(async () => {
  await browser?.close()
  if (hub && hub.exitCode === null) {
    const exited = new Promise((r) => hub.once("exit", r))
    hub.kill("SIGTERM")
    await Promise.race([exited, sleep(10_000)])
    if (hub.exitCode === null) hub.kill("SIGKILL")
  }
  if (dataDir) rmSync(dataDir, { recursive: true, force: true })
})

async function openAs(name, flow) {
  const context = await browser.newContext({ viewport: { width: 1400, height: 820 } })
  if (assetsFromTree) {
    await context.route(
      (url) => url.origin === base && Object.hasOwn(ASSETS, url.pathname),
      (route) => {
        const [file, contentType] = ASSETS[new URL(route.request().url()).pathname]
        return route.fulfill({ status: 200, contentType, body: readFileSync(join(staticDir, file)) })
      },
    )
  }
  const page = await context.newPage()
  page.on("pageerror", (e) => console.error(`[${name}] page error:`, e))
  page.on("console", (m) => {
    if (m.type() === "error") console.error(`[${name}] console:`, m.text())
  })
  await page.goto(`${base}/?flow=${flow}&name=${encodeURIComponent(name)}`)
  await page.waitForSelector("body[data-ready=true]", { timeout: 20_000 })
  return page
}

const node = (page, id) => page.locator(`g.node[data-node-id="${id}"]`)

async function nodePos(page, id) {
  const el = node(page, id)
  return { x: Number(await el.getAttribute("data-x")), y: Number(await el.getAttribute("data-y")) }
}

/** Drags node `id` in `page` so that its top-left ends at (x, y). */
async function dragTo(page, id, x, y, steps = 2) {
  const box = await node(page, id).locator("rect.body").boundingBox()
  const from = await nodePos(page, id)
  const grabX = box.x + 40
  const grabY = box.y + 40
  await page.mouse.move(grabX, grabY)
  await page.mouse.down()
  await page.mouse.move(grabX + (x - from.x), grabY + (y - from.y), { steps })
  await page.mouse.up()
}

function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]
}

test("two users co-edit the demo flow in two browsers", { timeout: 240_000 }, async () => {
  const a = await openAs("Alice", "demo")
  const b = await openAs("Bob", "demo")

  // Both pages show the sample flow (seeded by whichever page came first).
  for (const page of [a, b]) {
    await page.waitForFunction(() => document.querySelectorAll("g.node").length === 6)
    await page.waitForFunction(() => document.querySelectorAll("path.edge[d]").length === 5)
    assert.equal(await page.inputValue("#flow-name"), "Order pipeline")
    assert.equal(await node(page, "fetch-customer").getAttribute("data-label"), "Fetch customer")
  }
  await a.screenshot({ path: join(shots, "01-alice-start.png") })

  // A node dragged in A moves in B.
  const before = await nodePos(b, "fetch-customer")
  await dragTo(a, "fetch-customer", before.x + 20, before.y + 160, 8)
  const moved = await nodePos(a, "fetch-customer")
  assert.deepEqual(moved, { x: before.x + 20, y: before.y + 160 })
  await b.waitForFunction(
    ([x, y]) => {
      const g = document.querySelector('g.node[data-node-id="fetch-customer"]')
      return g && Number(g.dataset.x) === x && Number(g.dataset.y) === y
    },
    [moved.x, moved.y],
  )
  // The transform on screen matches, and the edges follow.
  assert.equal(await node(b, "fetch-customer").getAttribute("transform"), `translate(${moved.x} ${moved.y})`)

  // A node added in B appears in A.
  await b.selectOption("#new-kind", "http")
  await b.fill("#new-label", "Added by Bob")
  await b.click("#add-node")
  const added = a.locator('g.node[data-label="Added by Bob"]')
  await added.waitFor({ timeout: 10_000 })
  assert.equal(await added.getAttribute("data-kind"), "http")
  assert.equal(await a.locator("g.node").count(), 7)

  // Alice's cursor and name are visible in B; her selection too.
  await a.mouse.move(700, 520)
  await a.mouse.move(720, 540, { steps: 3 })
  const cursor = b.locator('.cursor[data-user-name="Alice"]')
  await cursor.waitFor({ state: "visible", timeout: 10_000 })
  assert.equal(await cursor.locator(".name").textContent(), "Alice")
  const svgBox = await a.locator("#canvas").boundingBox()
  await b.waitForFunction(
    ([x, y]) => {
      const el = document.querySelector('.cursor[data-user-name="Alice"]')
      return el && el.style.transform === `translate(${x}px, ${y}px)`
    },
    [Math.round(720 - svgBox.x), Math.round(540 - svgBox.y)],
  )
  await b.waitForFunction(() => document.querySelector('g.node[data-node-id="fetch-customer"]')?.dataset.selectedBy === "Alice")
  assert.ok(await b.locator('#people .person[data-user-name="Alice"]').isVisible())
  assert.ok(await a.locator('#people .person[data-user-name="Bob"]').isVisible())
  // The two people wear different colours (the page avoids sharing one).
  await b.waitForFunction(() => {
    const dots = [...document.querySelectorAll("#people .person .dot")].map((d) => d.style.background)
    return dots.length === 2 && dots[0] !== dots[1]
  })
  await b.screenshot({ path: join(shots, "02-bob-sees-alice.png") })

  // A simulated run colours the nodes in both pages, live. A step can be running for
  // less time than a loaded machine takes to paint it, so either colour counts here;
  // the end state is checked exactly below.
  await a.click("#simulate-run")
  for (const page of [a, b]) {
    await page.waitForSelector("g.node.run-running, g.node.run-succeeded", { timeout: 20_000 })
  }
  await b.screenshot({ path: join(shots, "03-bob-run-in-progress.png") })
  for (const page of [a, b]) {
    await page.waitForFunction(() => document.querySelector("#run-summary")?.dataset.status === "succeeded", null, { timeout: 30_000 })
    await page.waitForFunction(() => {
      const nodes = [...document.querySelectorAll("g.node")]
      return nodes.length === 7 && nodes.every((g) => g.dataset.runStatus === "succeeded" && g.classList.contains("run-succeeded"))
    })
    assert.ok((await page.locator("#run-log li").count()) >= 1 + 7 * 3)
  }
  await a.screenshot({ path: join(shots, "04-alice-run-succeeded.png") })

  // A run that fails at the selected node: red there, in both.
  await node(a, "is-vip").locator("rect.body").click()
  await a.check("#fail-selected")
  await a.click("#simulate-run")
  for (const page of [a, b]) {
    await page.waitForFunction(() => document.querySelector("#run-summary")?.dataset.status === "failed", null, { timeout: 30_000 })
    assert.equal(await node(page, "is-vip").getAttribute("data-run-status"), "failed")
    assert.ok(await node(page, "is-vip").evaluate((g) => g.classList.contains("run-failed")))
    assert.equal(await node(page, "new-order").getAttribute("data-run-status"), "succeeded")
  }
  await b.screenshot({ path: join(shots, "05-bob-run-failed.png") })
  await a.uncheck("#fail-selected")

  // Drag -> paint latency: page A drags, page B paints; both clocks are the browser's.
  const latencies = []
  await a.evaluate(() => (window.flowhubDemo.marks.length = 0))
  await b.evaluate(() => (window.flowhubDemo.marks.length = 0))
  for (let i = 0; i < DRAGS; i++) {
    const x = 600 + (i % 2) * 60
    const y = 420 + i
    await dragTo(a, "send-survey", x, y, 2)
    await b.waitForFunction(
      ([x, y]) => window.flowhubDemo.marks.some((m) => m.kind === "painted" && m.node === "send-survey" && m.x === x && m.y === y && m.t > 0),
      [x, y],
      { timeout: 10_000, polling: 5 },
    )
    const sent = await a.evaluate(
      ([x, y]) => window.flowhubDemo.marks.find((m) => m.kind === "move-sent" && m.node === "send-survey" && m.x === x && m.y === y)?.t,
      [x, y],
    )
    const painted = await b.evaluate(
      ([x, y]) => window.flowhubDemo.marks.find((m) => m.kind === "painted" && m.node === "send-survey" && m.x === x && m.y === y)?.t,
      [x, y],
    )
    assert.ok(sent && painted, `marks for drag ${i}`)
    latencies.push(painted - sent)
  }
  latencies.sort((p, q) => p - q)
  const stats = {
    drags: latencies.length,
    p50_ms: +percentile(latencies, 50).toFixed(1),
    p90_ms: +percentile(latencies, 90).toFixed(1),
    p99_ms: +percentile(latencies, 99).toFixed(1),
    min_ms: +latencies[0].toFixed(1),
    max_ms: +latencies[latencies.length - 1].toFixed(1),
  }
  console.log(`drag -> paint latency (page A drag to page B paint): ${JSON.stringify(stats)}`)
  writeFileSync(join(shots, "drag-latency.json"), JSON.stringify(stats, null, 2))
  await b.screenshot({ path: join(shots, "06-bob-after-drags.png") })
  const final = await nodePos(a, "send-survey")
  assert.deepEqual(await nodePos(b, "send-survey"), final)
  assert.ok(stats.p50_ms < 1000, `drag -> paint p50 ${stats.p50_ms} ms`)
})

/** Resolves once node `id` shows at (x, y) in `page`. */
function nodeAt(page, id, x, y) {
  return page.waitForFunction(
    ([id, x, y]) => {
      const g = document.querySelector(`g.node[data-node-id="${id}"]`)
      return g && Number(g.dataset.x) === x && Number(g.dataset.y) === y
    },
    [id, x, y],
    { timeout: 10_000 },
  )
}

test("Ctrl+Z undoes only the user's own edit, in both pages", { timeout: 120_000 }, async () => {
  const a = await openAs("Alice", "undo-demo")
  const b = await openAs("Bob", "undo-demo")
  for (const page of [a, b]) await page.waitForFunction(() => document.querySelectorAll("g.node").length === 6)
  // Nothing of either user's to undo yet (seeding the sample flow is not an edit to undo).
  for (const page of [a, b]) assert.ok(await page.locator("#undo").isDisabled())

  const aStart = await nodePos(a, "fetch-customer")
  const bStart = await nodePos(b, "send-gift")
  const aMoved = { x: aStart.x + 40, y: aStart.y + 180 }
  const bMoved = { x: bStart.x + 60, y: bStart.y + 320 }
  await dragTo(a, "fetch-customer", aMoved.x, aMoved.y, 8)
  await dragTo(b, "send-gift", bMoved.x, bMoved.y, 8)
  for (const page of [a, b]) {
    await nodeAt(page, "fetch-customer", aMoved.x, aMoved.y)
    await nodeAt(page, "send-gift", bMoved.x, bMoved.y)
  }
  assert.ok(await a.locator("#undo").isEnabled())
  await a.screenshot({ path: join(shots, "07-alice-before-undo.png") })

  // Ctrl+Z in A: the whole drag (8 moves, one step) is undone, B's move is kept.
  await a.keyboard.press("Control+z")
  for (const page of [a, b]) {
    await nodeAt(page, "fetch-customer", aStart.x, aStart.y)
    assert.deepEqual(await nodePos(page, "send-gift"), bMoved)
  }
  // Nothing else of A's to undo: a second Ctrl+Z changes nothing.
  assert.ok(await a.locator("#undo").isDisabled())
  assert.ok(await a.locator("#redo").isEnabled())
  await a.keyboard.press("Control+z")
  for (const page of [a, b]) assert.deepEqual(await nodePos(page, "send-gift"), bMoved)
  await a.screenshot({ path: join(shots, "08-alice-after-undo.png") })
  await b.screenshot({ path: join(shots, "09-bob-after-alice-undo.png") })

  // Redo (Ctrl+Shift+Z) moves A's node again; Ctrl+Y after another undo too.
  await a.keyboard.press("Control+Shift+z")
  for (const page of [a, b]) await nodeAt(page, "fetch-customer", aMoved.x, aMoved.y)
  await a.click("#undo")
  for (const page of [a, b]) await nodeAt(page, "fetch-customer", aStart.x, aStart.y)
  await a.keyboard.press("Control+y")
  for (const page of [a, b]) await nodeAt(page, "fetch-customer", aMoved.x, aMoved.y)

  // B undoes a delete: the node and its edges come back in both pages.
  const edgesBefore = await a.locator("path.edge[d]").count()
  await node(b, "wait-day").locator("rect.body").click()
  await b.click("#delete-selected")
  for (const page of [a, b]) await page.waitForFunction(() => !document.querySelector('g.node[data-node-id="wait-day"]'))
  assert.equal(await a.locator("path.edge[d]").count(), edgesBefore - 2)
  await b.keyboard.press("Control+z")
  for (const page of [a, b]) {
    await node(page, "wait-day").waitFor({ timeout: 10_000 })
    await page.waitForFunction((n) => document.querySelectorAll("path.edge[d]").length === n, edgesBefore)
    assert.deepEqual(await nodePos(page, "fetch-customer"), aMoved)
  }
  await b.screenshot({ path: join(shots, "10-bob-undid-delete.png") })
})

/** Double-clicks node `id` in `page` and answers the label prompt with `label`. */
async function relabelIn(page, id, label) {
  page.once("dialog", (d) => d.accept(label))
  await node(page, id).locator("rect.body").dblclick()
  await page.waitForFunction(([id, label]) => document.querySelector(`g.node[data-node-id="${id}"]`)?.dataset.label === label, [id, label])
}

/** Waits until `locator`'s text contains every one of `words`. */
async function hasWords(locator, words) {
  const deadline = Date.now() + 10_000
  for (;;) {
    const text = await locator.textContent()
    const missing = words.filter((w) => !text.includes(w))
    if (missing.length === 0) return
    assert.ok(Date.now() < deadline, `${JSON.stringify(text)} lacks ${missing.join(", ")}`)
    await sleep(50)
  }
}

/** The diff marks on `page`'s canvas, by node id. */
function diffMarks(page) {
  return page.evaluate(() => {
    const ids = (sel, attr) => [...document.querySelectorAll(sel)].map((el) => el.getAttribute(attr)).sort()
    return {
      added: ids('g.node[data-diff="added"]', "data-node-id"),
      changed: ids('g.node[data-diff="changed"]', "data-node-id"),
      removed: ids('g.ghost[data-diff="removed"]', "data-ghost-of"),
      movedFrom: ids('g.ghost[data-diff="moved-from"]', "data-ghost-of"),
      addedGhosts: ids('g.ghost[data-diff="added"]', "data-ghost-of"),
      removedEdges: ids("path.ghost-edge.removed", "data-ghost-of"),
    }
  })
}

/** Waits until the canvas shows the diff `key` (`<from>..<to>`) with the marks `want`. */
async function waitForMarks(page, key, want) {
  await page.waitForFunction((key) => {
    const c = document.querySelector("#canvas")
    return c.dataset.diff === key && c.dataset.diffState === "ready"
  }, key)
  const deadline = Date.now() + 10_000
  for (;;) {
    const got = await diffMarks(page)
    const pick = { added: got.added, changed: got.changed, removed: got.removed }
    try {
      assert.deepEqual(pick, want)
      return got
    } catch (e) {
      if (Date.now() > deadline) throw e
    }
    await sleep(50)
  }
}

test("history panel: both users' sessions, a named version against now, restore", { timeout: 120_000 }, async () => {
  const a = await openAs("Alice", "history-demo")
  const b = await openAs("Bob", "history-demo")
  for (const page of [a, b]) await page.waitForFunction(() => document.querySelectorAll("g.node").length === 6)

  // Alice adds, moves and relabels nodes.
  await a.fill("#new-label", "Added by Alice")
  await a.click("#add-node")
  const aliceNode = a.locator('g.node[data-label="Added by Alice"]')
  await aliceNode.waitFor()
  const aliceId = await aliceNode.getAttribute("data-node-id")
  await dragTo(a, aliceId, 40, 330, 2)
  const fc = await nodePos(a, "fetch-customer")
  await dragTo(a, "fetch-customer", fc.x + 30, fc.y + 200, 4)
  await relabelIn(a, "is-vip", "Big spender?")
  // All of it reached the hub (Bob sees it) before Alice names the version.
  await nodeAt(b, "fetch-customer", fc.x + 30, fc.y + 200)
  await b.waitForFunction(() => document.querySelector('g.node[data-node-id="is-vip"]')?.dataset.label === "Big spender?")
  await b.locator('g.node[data-label="Added by Alice"]').waitFor()

  await a.click("#history-toggle")
  await a.locator("#history-panel").waitFor({ state: "visible" })
  await a.fill("#version-name", "alice-done")
  await a.click("#name-version")
  await a.locator('.h-entry.version[data-version-name="alice-done"]').waitFor({ timeout: 10_000 })

  // Bob moves, relabels, adds and deletes.
  const sg = await nodePos(b, "send-gift")
  await dragTo(b, "send-gift", sg.x + 40, sg.y + 300, 4)
  await relabelIn(b, "wait-day", "Wait 2 days")
  await b.fill("#new-label", "Added by Bob")
  await b.click("#add-node")
  const bobNode = b.locator('g.node[data-label="Added by Bob"]')
  await bobNode.waitFor()
  const bobId = await bobNode.getAttribute("data-node-id")
  await node(b, "send-survey").locator("rect.body").click()
  await b.click("#delete-selected")
  await a.waitForFunction(() => !document.querySelector('g.node[data-node-id="send-survey"]'))
  await a.locator('g.node[data-label="Added by Bob"]').waitFor()

  // Alice's panel lists both users' sessions (refreshed live), newest first.
  const bobSession = a.locator('.h-entry.session[data-user-name="Bob"]')
  await bobSession.waitFor({ timeout: 10_000 })
  const aliceSession = a.locator('.h-entry.session[data-user-name="Alice"]').first()
  await aliceSession.waitFor()
  // The panel refreshes after each change it hears of: wait for the last of them.
  await hasWords(bobSession.locator(".what"), ["added “Added by Bob”", "removed send-survey", "moved “Send a gift”", "relabelled wait-day", "disconnected 1 edge"])
  await hasWords(aliceSession.locator(".what"), ["added 7 nodes", "relabelled is-vip", "moved 2 nodes"])
  const kinds = await a.$$eval("#history-list .h-entry", (els) => els.map((e) => e.dataset.userName ?? e.dataset.versionName ?? e.dataset.kind))
  assert.deepEqual(kinds.slice(0, 4), ["now", "Bob", "alice-done", "Alice"])
  await a.locator("#history-panel").screenshot({ path: join(shots, "11-history-panel.png") })

  // The named version against now: exactly what Bob did is marked.
  const want = { added: [bobId], changed: ["send-gift", "wait-day"], removed: ["send-survey"] }
  await a.click('.h-entry.version[data-version-name="alice-done"]')
  await a.click(".h-entry.now")
  const marks = await waitForMarks(a, "version:alice-done..now", want)
  assert.deepEqual(marks.movedFrom, ["send-gift"])
  assert.deepEqual(marks.addedGhosts, [])
  assert.deepEqual(marks.removedEdges, ["wait-day--send-survey"])
  for (const id of ["fetch-customer", "is-vip", aliceId, "new-order"]) assert.equal(await node(a, id).getAttribute("data-diff"), null, id)
  assert.equal(await a.locator('.h-entry[data-pick="from"]').getAttribute("data-version-name"), "alice-done")
  assert.equal(await a.locator('.h-entry[data-pick="to"]').getAttribute("data-kind"), "now")
  const listed = await a.$$eval("#diff-list li", (els) => els.map((e) => `${e.className} ${e.textContent}`))
  assert.deepEqual(listed.filter((l) => l.startsWith("added") || l.startsWith("removed")).sort(), [
    "added + Added by Bob (action)",
    "removed − 1 edge disconnected",
    "removed − Send survey (action)",
  ])
  await a.screenshot({ path: join(shots, "12-diff-version-vs-now.png") })

  // Two sessions compare the same way: Alice's last session against Bob's.
  await a.click("#close-diff")
  await a.waitForFunction(() => !document.querySelector("#canvas").dataset.diff && !document.querySelector("[data-diff]"))
  await aliceSession.click()
  await bobSession.click()
  const aliceKey = await aliceSession.getAttribute("data-key")
  const bobKey = await bobSession.getAttribute("data-key")
  await waitForMarks(a, `${aliceKey}..${bobKey}`, want)

  // Restore the version: Bob's edits are undone in both pages, as one new change.
  await a.click("#close-diff")
  await a.click('.h-entry.version[data-version-name="alice-done"]')
  await a.click(".h-entry.now")
  await waitForMarks(a, "version:alice-done..now", want)
  await a.click("#restore-version")
  for (const page of [a, b]) {
    await node(page, "send-survey").waitFor({ timeout: 10_000 })
    await page.waitForFunction((id) => !document.querySelector(`g.node[data-node-id="${id}"]`), bobId)
    await page.waitForFunction(() => document.querySelector('g.node[data-node-id="wait-day"]')?.dataset.label === "Wait 1 day")
    await nodeAt(page, "send-gift", sg.x, sg.y)
    assert.equal(await node(page, "is-vip").getAttribute("data-label"), "Big spender?")
  }
  // Nothing differs from the version any more, and the restore is in the history, by Alice.
  await waitForMarks(a, "version:alice-done..now", { added: [], changed: [], removed: [] })
  await a.waitForFunction(() => {
    const first = document.querySelector("#history-list .h-entry.session")
    return first?.dataset.userName === "Alice" && first.querySelector(".what").textContent.includes("added “Send survey”")
  })
  await a.screenshot({ path: join(shots, "13-after-restore.png") })

  // The page still edits and undoes as before.
  const nw = await nodePos(a, "new-order")
  await dragTo(a, "new-order", nw.x + 20, nw.y + 20, 2)
  await nodeAt(b, "new-order", nw.x + 20, nw.y + 20)
  await a.keyboard.press("Control+z")
  for (const page of [a, b]) await nodeAt(page, "new-order", nw.x, nw.y)
})
