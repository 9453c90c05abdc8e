import { describe, expect, it } from "vitest";

import { applyMessage } from "./feed.js";
import type { MatchView } from "./types.js";
import { V2Decoder, degrees } from "./v2.js";

const snapshot = {
  type: "snapshot",
  match: "eu-1",
  epoch: 7,
  version: 812,
  state: {
    region: "eu",
    status: "live",
    tick: 2436,
    tick_hz: 30,
    arena: { width: 10000, height: 10000, obstacles: [] },
    roster: [
      [3, "eu-1-bot3", "Bot 3", 1],
      [7, "g-1a2b", "Guest", 0],
    ],
    players: [
      [3, 1234, 5678, 64, 100, 1, 5, 5, 2],
      [7, 8000, 4100, 192, 40, 1, 1, 1, 3],
    ],
  },
};

/** Decodes and applies, as the stream client does. */
function run(messages: Record<string, unknown>[]): { view: MatchView; decoded: unknown[] } {
  const d = new V2Decoder();
  let view: MatchView | null = null;
  const decoded = [];
  for (const m of messages) {
    const msg = d.decode(view, m);
    decoded.push(msg);
    const r = applyMessage(view, msg);
    if (r.kind === "applied") view = r.view;
  }
  return { view: view!, decoded };
}

describe("feed v2", () => {
  it("turns angles in 256ths of a turn into v1 degrees", () => {
    expect(degrees(0)).toBe(0);
    expect(degrees(64)).toBe(90);
    expect(degrees(128)).toBe(180);
    expect(degrees(192)).toBe(-90);
  });

  it("applies the worked example of docs/architecture.md", () => {
    const { view, decoded } = run([
      snapshot,
      { type: "delta", match: "eu-1", epoch: 7, version: 813, t: 2439, p: [[3, 7, 6, -12, 70], [7, 8, 25]], s: [[3, 1240, 5666, 7980, 4110, 1]] },
      { type: "event", match: "eu-1", epoch: 7, version: 814, at_ms: 1, kind: "kill", killer: 3, victim: 7 },
      { type: "delta", match: "eu-1", epoch: 7, version: 815, t: 2442, p: [[3, 96, 6, 6], [7, 152, 0, 0, 4]] },
    ]);
    expect(view.version).toBe(815);
    expect(view.state.tick).toBe(2442);
    expect(view.state.players["eu-1-bot3"]).toEqual({ id: 3, name: "Bot 3", bot: true, x: 1240, y: 5666, angle: degrees(70), hp: 100, alive: true, score: 6, kills: 6, deaths: 2 });
    expect(view.state.players["g-1a2b"]).toMatchObject({ hp: 0, alive: false, deaths: 4, x: 8000, y: 4100 });
    expect(decoded[1]).toMatchObject({ shots: [{ from: "eu-1-bot3", x0: 1240, hit: true }] });
    expect(decoded[2]).toMatchObject({ kind: "kill", killer: "eu-1-bot3", victim: "g-1a2b" });
  });

  it("brings players in with their roster entry and takes them out by id", () => {
    const { view, decoded } = run([
      snapshot,
      { type: "event", match: "eu-1", epoch: 7, version: 813, at_ms: 1, kind: "player_joined", id: 9, player: "g-9", name: "Nine", bot: false },
      { type: "delta", match: "eu-1", epoch: 7, version: 814, t: 2439, j: [[9, "g-9", "Nine", 0]], r: [7], p: [[9, 255, 500, 600, 0, 100, 1, 0, 0, 0]] },
      { type: "event", match: "eu-1", epoch: 7, version: 815, at_ms: 2, kind: "player_left", id: 7 },
    ]);
    expect(Object.keys(view.state.players).sort()).toEqual(["eu-1-bot3", "g-9"]);
    expect(view.state.players["g-9"]).toMatchObject({ id: 9, name: "Nine", x: 500, y: 600, hp: 100, alive: true });
    expect(decoded[1]).toMatchObject({ kind: "player_joined", player: "g-9" });
  });

  it("takes a record the gateway could not read (its envelope alone) as a no-op that keeps the line", () => {
    const { view, decoded } = run([
      snapshot,
      { type: "event", match: "eu-1", epoch: 7, version: 813 },
      { type: "delta", match: "eu-1", epoch: 7, version: 814 },
    ]);
    expect(view.version).toBe(814);
    expect(view.state.tick).toBe(2436);
    expect(Object.keys(view.state.players).sort()).toEqual(["eu-1-bot3", "g-1a2b"]);
    expect(view.state.players["g-1a2b"]).toMatchObject({ x: 8000, y: 4100, hp: 40 });
    expect(decoded[1]).toMatchObject({ type: "event", kind: "" });
  });

  it("leaves messages off the version line for the version rules to refuse", () => {
    const d = new V2Decoder();
    const view = applyMessage(null, d.decode(null, snapshot));
    if (view.kind !== "applied") throw new Error("snapshot not applied");
    // A replay overlapping what we hold, and a gap: neither is decoded against the wrong state.
    const dup = d.decode(view.view, { type: "delta", match: "eu-1", epoch: 7, version: 812, t: 1, p: [[3, 1, 50]] });
    expect(applyMessage(view.view, dup).kind).toBe("duplicate");
    const gap = d.decode(view.view, { type: "delta", match: "eu-1", epoch: 7, version: 820, t: 1, p: [[3, 1, 50]] });
    expect(applyMessage(view.view, gap).kind).toBe("gap");
  });
});
