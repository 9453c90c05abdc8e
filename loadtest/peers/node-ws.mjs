// The common hand-rolled fan-out: one Node.js process on the `ws` package, one NATS
// subscription, and a loop over the match's sockets for every message.
// Env: NATS_URL, SUBJECT_ROOT, PORT (0 picks one). Prints "listening <port>".
import { connect } from "nats";
import { WebSocketServer } from "ws";

const nc = await connect({ servers: process.env.NATS_URL ?? "nats://127.0.0.1:4222" });
const root = process.env.SUBJECT_ROOT ?? "match";
const rooms = new Map();
const wss = new WebSocketServer({ port: Number(process.env.PORT ?? 0), host: "127.0.0.1", perMessageDeflate: false });
wss.on("connection", (ws, req) => {
  const id = new URL(req.url, "http://x").searchParams.get("match");
  if (!rooms.has(id)) rooms.set(id, new Set());
  rooms.get(id).add(ws);
  ws.on("close", () => rooms.get(id)?.delete(ws));
  ws.on("error", () => {});
});
wss.on("listening", () => console.log(`listening ${wss.address().port}`));
const decoder = new TextDecoder();
for await (const m of nc.subscribe(`${root}.*.*`)) {
  const [, id, kind] = m.subject.split(".");
  if (kind === "keyframe") continue;
  const viewers = rooms.get(id);
  if (!viewers) continue;
  const text = decoder.decode(m.data);
  for (const ws of viewers) ws.send(text);
}
