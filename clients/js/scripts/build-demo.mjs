// Builds the demo page bundle that the hub embeds (hub/src/demo.rs):
//   hub/static/src/app.ts + @flowhub/client + @automerge/automerge (slim)  -> hub/static/app.js
//   @automerge/automerge's wasm                                           -> hub/static/automerge.wasm
// Both outputs are committed, so `cargo run -p flowhub` needs no npm step.
//
//   node scripts/build-demo.mjs           rebuild in place
//   node scripts/build-demo.mjs --check   rebuild into a temp dir and fail if the
//                                         committed files differ (CI)

import { build } from "esbuild"
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { dirname, join, resolve } from "node:path"
import { fileURLToPath } from "node:url"

const here = dirname(fileURLToPath(import.meta.url))
const pkg = resolve(here, "..")
const root = resolve(pkg, "../..")
const staticDir = join(root, "hub/static")
const automergeDir = join(pkg, "node_modules/@automerge/automerge")
const slim = join(automergeDir, "dist/mjs/entrypoints/slim.js")
const wasm = join(automergeDir, "dist/automerge.wasm")

const check = process.argv.includes("--check")
const outDir = check ? mkdtempSync(join(tmpdir(), "flowhub-demo-")) : staticDir

/** One Automerge instance: the client library and the page both use the slim build,
 * whose wasm the page loads from /automerge/automerge.wasm. */
const aliases = {
  name: "flowhub-aliases",
  setup(b) {
    b.onResolve({ filter: /^@automerge\/automerge$/ }, () => ({ path: slim }))
    b.onResolve({ filter: /^@flowhub\/client$/ }, () => ({ path: join(pkg, "src/index.ts") }))
  },
}

const result = await build({
  entryPoints: [join(staticDir, "src/app.ts")],
  outfile: join(outDir, "app.js"),
  bundle: true,
  format: "esm",
  platform: "browser",
  target: "es2022",
  minify: true,
  sourcemap: false,
  legalComments: "eof",
  nodePaths: [join(pkg, "node_modules")],
  plugins: [aliases],
  logLevel: "warning",
  write: false,
})
for (const file of result.outputFiles) writeFileSync(file.path, file.contents)
copyFileSync(wasm, join(outDir, "automerge.wasm"))

if (check) {
  let stale = []
  for (const name of ["app.js", "automerge.wasm"]) {
    const fresh = readFileSync(join(outDir, name))
    let committed
    try {
      committed = readFileSync(join(staticDir, name))
    } catch {
      committed = Buffer.alloc(0)
    }
    if (!fresh.equals(committed)) stale.push(name)
  }
  rmSync(outDir, { recursive: true, force: true })
  if (stale.length > 0) {
    console.error(`hub/static is out of date (${stale.join(", ")}): run \`npm run build:demo\` in clients/js and commit the result`)
    process.exit(1)
  }
  console.log("hub/static/app.js and automerge.wasm are up to date")
} else {
  const size = readFileSync(join(outDir, "app.js")).length
  console.log(`built hub/static/app.js (${(size / 1024).toFixed(1)} KiB) and hub/static/automerge.wasm`)
}
