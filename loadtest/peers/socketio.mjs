// The common framework choice: Socket.IO rooms, one NATS subscription, `io.to(match).emit`.
// Env: NATS_URL, SUBJECT_ROOT, PORT (0 picks one). Prints "listening <port>".
import { createServer } from "node:http";
import { connect } from "nats";
import { Server } from "socket.io";

const nc = await connect({ servers: process.env.NATS_URL ?? "nats://127.0.0.1:4222" });
const root = process.env.SUBJECT_ROOT ?? "match";
const http = createServer();
const io = new Server(http, { transports: ["websocket"], perMessageDeflate: false, serveClient: false });
io.on("connection", (socket) => {
  socket.on("join", (id) => socket.join(String(id)));
});
http.listen(Number(process.env.PORT ?? 0), "127.0.0.1", () => console.log(`listening ${http.address().port}`));
const decoder = new TextDecoder();
for await (const m of nc.subscribe(`${root}.*.*`)) {
  const [, id, kind] = m.subject.split(".");
  if (kind === "keyframe") continue;
  io.to(id).emit("d", decoder.decode(m.data));
}
