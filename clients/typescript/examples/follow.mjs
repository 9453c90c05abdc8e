#!/usr/bin/env node
// Follows a live match from Node and prints one JSON line per message, as received.
//   node examples/follow.mjs BASE MATCH SECONDS      e.g. http://127.0.0.1:8080 eu-1a2b 10
// Build first (`npm ci && npm run build`). Node 20 has no WebSocket, so this reads SSE.
import { GrandstandApi, MatchStream } from "../dist/index.js";

const [base, match, seconds = "10"] = process.argv.slice(2);
if (!base || !match) {
  console.error("usage: follow.mjs BASE MATCH [SECONDS]");
  process.exit(2);
}
const api = new GrandstandApi({ baseUrl: base });
const stream = new MatchStream({
  baseUrl: base,
  matchId: match,
  token: async () => (await api.guest()).token,
  onMessage: (msg) => process.stdout.write(`${JSON.stringify(msg)}\n`),
  onStatus: (s) => {
    if (s.connection !== "live") console.error(`[${s.connection}] ${s.transport}, attempt ${s.attempt}`);
  },
});
await stream.start();
setTimeout(() => {
  stream.stop();
  process.exit(0);
}, Number(seconds) * 1000);
