import { describe, expect, it } from "vitest";
import { BoardStream, type BoardTick } from "./boardStream.js";
import type { EventSourceLike } from "./matchStream.js";

class FakeSource implements EventSourceLike {
  onerror: ((ev: unknown) => void) | null = null;
  onopen: ((ev: unknown) => void) | null = null;
  closed = false;
  private listeners = new Map<string, ((ev: { data: string }) => void)[]>();
  constructor(readonly url: string) {}
  addEventListener(type: string, l: (ev: { data: string }) => void) {
    this.listeners.set(type, [...(this.listeners.get(type) ?? []), l]);
  }
  emit(type: string, data: string) {
    for (const l of this.listeners.get(type) ?? []) l({ data });
  }
  close() {
    this.closed = true;
  }
}

function harness() {
  const sources: FakeSource[] = [];
  const timers: { f: () => void; ms: number }[] = [];
  const ticks: BoardTick[] = [];
  const stream = new BoardStream({
    baseUrl: "http://gw",
    board: "eu weekly",
    onTick: (t) => ticks.push(t),
    env: {
      eventSource: (url) => {
        const s = new FakeSource(url);
        sources.push(s);
        return s;
      },
      random: () => 0.5,
      setTimeout: (f, ms) => timers.push({ f, ms }),
      clearTimeout: () => {},
    },
  });
  return { stream, sources, timers, ticks };
}

const tick = (version: number, top = "p1") =>
  JSON.stringify({ type: "leaderboard", board: "eu weekly", version, updated_at: version, total: 1, entries: [{ rank: 1, player: top, name: top, score: 3 }] });

describe("BoardStream", () => {
  it("follows the board's stream and keeps only newer ticks", () => {
    const h = harness();
    h.stream.start();
    expect(h.sources[0].url).toBe("http://gw/v1/leaderboards/eu%20weekly/stream");
    h.sources[0].emit("leaderboard", tick(10));
    h.sources[0].emit("leaderboard", tick(8, "old"));
    h.sources[0].emit("leaderboard", "not json");
    h.sources[0].emit("leaderboard", tick(12, "p2"));
    expect(h.ticks.map((t) => [t.version, t.entries[0].player])).toEqual([
      [10, "p1"],
      [12, "p2"],
    ]);
    expect(h.stream.status).toMatchObject({ connection: "live", ticks: 2 });
  });

  it("resumes a dropped stream with growing delays, reset by a tick", () => {
    const h = harness();
    h.stream.start();
    h.sources[0].onerror?.({});
    const firstDelay = h.timers[0].ms;
    h.timers.shift()!.f();
    h.sources[1].onerror?.({});
    expect(h.sources[0].closed).toBe(true);
    expect(h.stream.status).toMatchObject({ connection: "reconnecting", attempt: 2 });
    expect(h.timers[0].ms).toBeGreaterThan(firstDelay);
    h.timers.shift()!.f();
    h.sources[2].emit("leaderboard", tick(5));
    expect(h.stream.status).toMatchObject({ connection: "live", attempt: 0 });
  });

  it("stops for good", () => {
    const h = harness();
    h.stream.start();
    h.stream.stop();
    h.sources[0].emit("leaderboard", tick(1));
    h.sources[0].onerror?.({});
    expect([h.ticks.length, h.timers.length, h.sources[0].closed]).toEqual([0, 0, true]);
  });
});
