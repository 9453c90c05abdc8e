import { describe, expect, it } from "vitest";
import { applyMessage } from "./feed.js";
import { KEYFRAME_EVERY, MatchTimeline } from "./timeline.js";
import type { MatchView, PlayerView, StreamMessage } from "./types.js";

const player = (x: number): PlayerView => ({ name: "a", x, y: 0, angle: 0, hp: 100, alive: true, score: x, kills: 0, deaths: 0, bot: false });

/** A match of `n` messages: a snapshot at tick 0, then a delta per tick (player "a" at x = tick)
 * with an event every 7th version. */
function feed(n: number): StreamMessage[] {
  const out: StreamMessage[] = [
    {
      type: "snapshot",
      match: "m",
      epoch: 1,
      version: 0,
      state: { region: "eu", status: "live", tick: 0, arena: { width: 10, height: 10, obstacles: [] }, players: { a: player(0) } },
    },
  ];
  let tick = 0;
  for (let v = 1; v < n; v++) {
    if (v % 7 === 0) out.push({ type: "event", match: "m", epoch: 1, version: v, kind: "kill" });
    else {
      tick++;
      out.push({ type: "delta", match: "m", epoch: 1, version: v, tick, players: { a: player(tick) } });
    }
  }
  return out;
}

describe("MatchTimeline", () => {
  it("shows every tick exactly as applying the feed up to it does, in any order", () => {
    const msgs = feed(3 * KEYFRAME_EVERY + 17);
    const t = new MatchTimeline();
    for (const m of msgs) expect(t.push(m)).toBe(true);
    // The reference: the view after each message, applied one by one.
    const byTick = new Map<number, MatchView>();
    let view: MatchView | null = null;
    for (const m of msgs) {
      const r = applyMessage(view, m);
      if (r.kind === "applied") view = r.view;
      byTick.set(view!.state.tick, view!);
    }
    const ticks = [...byTick.keys()];
    for (const tick of [...ticks].reverse().concat(ticks)) {
      expect(t.viewAt(tick), `tick ${tick}`).toEqual(byTick.get(tick));
    }
    expect(t.viewAt(-1)).toBeNull();
    expect(t.viewAt(10 ** 9)).toEqual(view);
    expect([t.firstTick, t.lastTick]).toEqual([0, view!.state.tick]);
  });

  it("gives the events between two ticks for the feed while playing", () => {
    const t = new MatchTimeline();
    for (const m of feed(30)) t.push(m);
    const kinds = t.between(5, 12).filter((m) => m.type === "event").map((m) => m.version);
    expect(kinds).toEqual([7, 14]);
  });

  it("refuses a gap, ignores what it already has and stops at its bound", () => {
    const msgs = feed(50);
    const t = new MatchTimeline(20);
    expect(t.push(msgs[1])).toBe(false); // no snapshot yet
    for (const m of msgs.slice(0, 10)) t.push(m);
    expect(t.push(msgs[5])).toBe(true);
    expect(t.push(msgs[12])).toBe(false);
    expect(t.length).toBe(10);
    for (const m of msgs.slice(10)) t.push(m);
    expect([t.length, t.truncated]).toEqual([20, true]);
  });
});
