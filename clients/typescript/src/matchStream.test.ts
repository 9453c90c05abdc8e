import { describe, expect, it } from "vitest";
import { MatchStream, type MatchStreamOptions, type StreamEnv, type StreamStatus, type WebSocketLike } from "./matchStream.js";
import type { SpectatorState, StreamMessage } from "./types.js";

class FakeSocket implements WebSocketLike {
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  closed = false;
  constructor(readonly url: string) {}
  open() {
    this.onopen?.({});
  }
  send(msg: StreamMessage) {
    this.onmessage?.({ data: JSON.stringify(msg) });
  }
  drop(reason = "") {
    this.onclose?.({ code: 1006, reason });
  }
  close() {
    this.closed = true;
  }
}

const state = (tick: number): SpectatorState => ({
  region: "eu",
  status: "live",
  tick,
  arena: { width: 10000, height: 10000, obstacles: [] },
  players: {},
  tick_hz: 30,
});

/** A stream over fake sockets and a fake clock whose timers run when the test says. */
function harness(
  snapshot: { status: number; body?: unknown },
  format: "v1" | "v2" = "v1",
  env: Partial<StreamEnv> = {},
  options: Partial<MatchStreamOptions> = {},
) {
  let coldLoads = 0;
  const sockets: FakeSocket[] = [];
  const timers: { at: number; f: () => void }[] = [];
  const statuses: StreamStatus[] = [];
  let now = 1000;
  const stream = new MatchStream({
    baseUrl: "http://gw",
    matchId: "m1",
    token: async () => "tok",
    transport: "ws",
    format,
    onStatus: (s) => statuses.push(s),
    env: {
      fetch: async () => {
        coldLoads++;
        return new Response(JSON.stringify(snapshot.body ?? {}), { status: snapshot.status });
      },
      webSocket: (url) => {
        const s = new FakeSocket(url);
        sockets.push(s);
        return s;
      },
      now: () => now,
      random: () => 0.5,
      setTimeout: (f, ms) => {
        const t = { at: now + ms, f };
        timers.push(t);
        return t;
      },
      clearTimeout: (t) => {
        const i = timers.indexOf(t as (typeof timers)[number]);
        if (i >= 0) timers.splice(i, 1);
      },
      onWake: () => () => {},
      ...env,
    },
    ...options,
  });
  const advance = async (ms: number) => {
    now += ms;
    for (;;) {
      timers.sort((a, b) => a.at - b.at);
      const t = timers[0];
      if (!t || t.at > now) break;
      timers.shift();
      t.f();
      await new Promise((r) => setTimeout(r, 0));
    }
  };
  const settle = () => new Promise((r) => setTimeout(r, 0));
  return { stream, sockets, statuses, advance, settle, last: () => statuses[statuses.length - 1], coldLoads: () => coldLoads };
}

const delta = (epoch: number, version: number): StreamMessage => ({
  type: "delta",
  match: "m1",
  epoch,
  version,
  tick: version * 3,
});

describe("MatchStream", () => {
  it("replays from the start: no cold load, resumes after what it holds, and ends with the match", async () => {
    const h = harness({ status: 200, body: { match: "m1", epoch: 4, version: 10, state: state(30) } }, "v1", {}, { from: "start" });
    await h.stream.start();
    await h.settle();
    expect(h.coldLoads()).toBe(0);
    expect(h.sockets[0].url).toBe("ws://gw/v1/matches/m1/stream?token=tok&from=start");
    h.sockets[0].open();
    h.sockets[0].onmessage?.({ data: JSON.stringify({ type: "snapshot", match: "m1", epoch: 4, version: 0, state: state(0) }) });
    h.sockets[0].send(delta(4, 1));
    h.sockets[0].drop();
    await h.advance(1000);
    expect(h.sockets[1].url).toBe("ws://gw/v1/matches/m1/stream?token=tok&from=start&since=4:1");
    h.sockets[1].open();
    h.sockets[1].onmessage?.({ data: JSON.stringify({ type: "delta", match: "m1", epoch: 4, version: 2, tick: 6, status: "ended" }) });
    h.sockets[1].onclose?.({ code: 1000, reason: "match ended" });
    expect(h.last().connection).toBe("ended");
    await h.advance(60_000);
    expect(h.sockets).toHaveLength(2);
  });

  it("cold-loads, streams from that version and resumes from the last one after a drop", async () => {
    const h = harness({ status: 200, body: { match: "m1", epoch: 4, version: 10, state: state(30) } });
    await h.stream.start();
    await h.settle();
    expect(h.sockets[0].url).toBe("ws://gw/v1/matches/m1/stream?token=tok&since=4:10");
    h.sockets[0].open();
    h.sockets[0].send(delta(4, 11));
    expect(h.last().connection).toBe("live");
    expect(h.stream.current?.version).toBe(11);

    h.sockets[0].drop("server shutting down; retry-after=1500ms");
    expect(h.last().connection).toBe("reconnecting");
    // The server's hint (1.5 s) beats the first backoff step (1 s).
    expect(h.last().retryAt).toBe(h.last().lastMessageAt! + 1500);
    await h.advance(1499);
    expect(h.sockets).toHaveLength(1);
    await h.advance(1);
    expect(h.sockets[1].url).toContain("since=4:11");
    h.sockets[1].open();
    h.sockets[1].send(delta(4, 12));
    expect(h.last().connection).toBe("live");
    expect(h.last().attempt).toBe(0);
  });

  it("backs off 1 s, 2 s, 4 s while the gateway is away and says paused after 5 s", async () => {
    const h = harness({ status: 503 });
    await h.stream.start();
    await h.settle();
    expect(h.sockets[0].url).not.toContain("since=");
    const gaps: number[] = [];
    let at = 0;
    for (let i = 0; i < 4; i++) {
      h.sockets[i].drop();
      const s = h.last();
      gaps.push(s.retryAt! - (1000 + at));
      await h.advance(s.retryAt! - (1000 + at));
      at = s.retryAt! - 1000;
      await h.settle();
    }
    expect(gaps).toEqual([1000, 2000, 4000, 8000]);
    expect(h.statuses.some((s) => s.connection === "reconnecting")).toBe(true);
    expect(h.last().connection).toBe("paused");
  });

  it("resumes at once from the last good version on a gap", async () => {
    const h = harness({ status: 200, body: { match: "m1", epoch: 1, version: 5, state: state(15) } });
    await h.stream.start();
    await h.settle();
    h.sockets[0].open();
    h.sockets[0].send(delta(1, 6));
    h.sockets[0].send(delta(1, 8));
    expect(h.sockets[0].closed).toBe(true);
    expect(h.last().gaps).toBe(1);
    await h.advance(0);
    await h.settle();
    expect(h.sockets[1].url).toContain("since=1:6");
  });

  it("starts a new epoch only from a snapshot", async () => {
    const h = harness({ status: 200, body: { match: "m1", epoch: 1, version: 5, state: state(15) } });
    await h.stream.start();
    await h.settle();
    h.sockets[0].open();
    h.sockets[0].send(delta(2, 1));
    expect(h.last().gaps).toBe(1);
    await h.advance(0);
    await h.settle();
    h.sockets[1].open();
    h.sockets[1].send({ type: "snapshot", match: "m1", epoch: 2, version: 3, state: state(9) });
    h.sockets[1].send(delta(2, 4));
    expect([h.stream.current?.epoch, h.stream.current?.version]).toEqual([2, 4]);
    expect(h.last().snapshots).toBe(2);
  });

  it("asks for feed v2 by default and applies it as the v1 view", async () => {
    const h = harness(
      { status: 200, body: { match: "m1", epoch: 4, version: 10, state: { ...state(30), players: { a: { id: 3, name: "A", x: 100, y: 200, angle: 90, hp: 100, alive: true, score: 0, kills: 0, deaths: 0, bot: true } } } } },
      "v2",
    );
    await h.stream.start();
    await h.settle();
    expect(h.sockets[0].url).toBe("ws://gw/v1/matches/m1/stream?token=tok&format=v2&since=4:10");
    h.sockets[0].open();
    h.sockets[0].send({ type: "delta", match: "m1", epoch: 4, version: 11, t: 33, p: [[3, 3, 5, -7]] } as unknown as StreamMessage);
    expect(h.stream.current?.version).toBe(11);
    expect(h.stream.current?.state.players.a).toMatchObject({ x: 105, y: 193, angle: 90, hp: 100 });
    expect(h.stream.current?.state.tick).toBe(33);
  });
});

describe("MatchStream liveness and waking", () => {
  it("replaces a live connection that went silent for two ping intervals", async () => {
    const h = harness({ status: 200, body: { match: "m1", epoch: 1, version: 5, state: state(15) } });
    await h.stream.start();
    await h.settle();
    h.sockets[0].open();
    h.sockets[0].send(delta(1, 6));
    await h.advance(20_000);
    h.sockets[0].send(delta(1, 7));
    // 39.9 s after the last message: still trusted.
    await h.advance(39_900);
    expect(h.sockets).toHaveLength(1);
    await h.advance(100);
    await h.settle();
    expect(h.sockets[0].closed).toBe(true);
    expect(h.sockets[1].url).toContain("since=1:7");
  });

  it("lets an ended match stay silent", async () => {
    const ended = { ...state(15), status: "ended" as const };
    const h = harness({ status: 200, body: { match: "m1", epoch: 1, version: 5, state: ended } });
    await h.stream.start();
    await h.settle();
    h.sockets[0].open();
    h.sockets[0].send({ type: "event", match: "m1", epoch: 1, version: 6, kind: "match_ended" } as unknown as StreamMessage);
    await h.advance(120_000);
    expect(h.sockets).toHaveLength(1);
  });

  it("backs off when gaps repeat instead of resuming at once every time", async () => {
    const h = harness({ status: 200, body: { match: "m1", epoch: 1, version: 5, state: state(15) } });
    await h.stream.start();
    await h.settle();
    h.sockets[0].open();
    h.sockets[0].send(delta(1, 7));
    await h.advance(0);
    await h.settle();
    expect(h.sockets).toHaveLength(2);
    h.sockets[1].open();
    h.sockets[1].send(delta(1, 9));
    expect(h.last().gaps).toBe(2);
    // The second gap within 10 s waits out a backoff step.
    await h.advance(0);
    await h.settle();
    expect(h.sockets).toHaveLength(2);
    expect(h.last().retryAt! - h.last().lastMessageAt!).toBeGreaterThanOrEqual(1000);
  });

  it("reconnects at once when the network comes back instead of waiting out the backoff", async () => {
    let wake: (() => void) | null = null;
    const h = harness({ status: 503 }, "v1", { onWake: (f) => ((wake = f), () => (wake = null)) });
    await h.stream.start();
    await h.settle();
    for (let i = 0; i < 3; i++) {
      h.sockets[i].drop();
      await h.advance(h.last().retryAt! - 1000);
      await h.settle();
    }
    h.sockets[3].drop();
    expect(h.last().connection).not.toBe("live");
    expect(h.sockets).toHaveLength(4);
    wake!();
    await h.settle();
    expect(h.sockets).toHaveLength(5);
    h.stream.stop();
    expect(wake).toBeNull();
  });
});
