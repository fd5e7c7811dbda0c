// A stock Hocuspocus 3 server for the side-by-side benchmarks: in memory by default,
// `--sqlite PATH` adds @hocuspocus/extension-sqlite (its default debounce: stores a
// document 2 s after the last change, at most every 10 s).
//
//   node hocuspocus-server.mjs --port 1234 [--host 127.0.0.1] [--sqlite /tmp/h.db]
//
// Prints `pid <PID>` and then `ready ws://HOST:PORT` once it listens.

import { Server } from "@hocuspocus/server"
import { SQLite } from "@hocuspocus/extension-sqlite"

import { parseArgs } from "./lib.mjs"

const USAGE = "usage: node hocuspocus-server.mjs --port PORT [--host 127.0.0.1] [--sqlite PATH]"
const args = parseArgs(process.argv.slice(2), { port: 0, host: "127.0.0.1", sqlite: "" }, USAGE)

console.log(`pid ${process.pid}`)
const extensions = []
if (args.sqlite) extensions.push(new SQLite({ database: args.sqlite }))

const server = new Server({
  name: "bench",
  port: args.port,
  address: args.host,
  quiet: true,
  stopOnSignals: true,
  extensions,
})
await server.listen()
console.log(`ready ws://${args.host}:${server.address.port}${args.sqlite ? ` (sqlite ${args.sqlite})` : " (in memory)"}`)
