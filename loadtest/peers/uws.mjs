// The fan-out the design this product started from names: Node.js with uWebSockets.js, its
// native pub/sub (one topic per match, `app.publish` writes each message to every subscriber
// from C++), one NATS subscription. Deltas and events are forwarded as they are, uncompressed.
// Env: NATS_URL, SUBJECT_ROOT, PORT (0 picks one). Prints "listening <port>".
import { connect } from "nats";
import uWS from "uwebsockets";

const nc = await connect({ servers: process.env.NATS_URL ?? "nats://127.0.0.1:4222" });
const root = process.env.SUBJECT_ROOT ?? "match";
const app = uWS.App().ws("/*", {
  compression: uWS.DISABLED,
  maxPayloadLength: 4096,
  // Slow viewers: uWS buffers up to this much per socket, then drops the socket's messages.
  maxBackpressure: 1024 * 1024,
  idleTimeout: 120,
  upgrade: (res, req, context) => {
    const match = new URLSearchParams(req.getQuery()).get("match");
    res.upgrade(
      { match },
      req.getHeader("sec-websocket-key"),
      req.getHeader("sec-websocket-protocol"),
      req.getHeader("sec-websocket-extensions"),
      context,
    );
  },
  open: (ws) => ws.subscribe(ws.getUserData().match),
});
app.listen("127.0.0.1", Number(process.env.PORT ?? 0), (token) => {
  if (!token) {
    console.error("uws: listen failed");
    process.exit(1);
  }
  console.log(`listening ${uWS.us_socket_local_port(token)}`);
});
for await (const m of nc.subscribe(`${root}.*.*`)) {
  const [, match, kind] = m.subject.split(".");
  if (kind === "keyframe") continue;
  app.publish(match, m.data, false);
}
