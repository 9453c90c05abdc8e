import { describe, expect, it } from "vitest";
import { applyMessage, parsePosition } from "./feed.js";
import type { DeltaMessage, MatchView, SnapshotMessage, SpectatorState } from "./types.js";

const state = (tick: number): SpectatorState => ({
  region: "eu",
  status: "live",
  tick,
  arena: { width: 10000, height: 10000, obstacles: [] },
  players: {
    a: { name: "A", x: 1, y: 1, angle: 0, hp: 100, alive: true, score: 0, kills: 0, deaths: 0, bot: true },
  },
  tick_hz: 30,
});
const snapshot = (epoch: number, version: number): SnapshotMessage => ({
  type: "snapshot",
  match: "m",
  epoch,
  version,
  state: state(version * 3),
});
const delta = (epoch: number, version: number, extra: Partial<DeltaMessage> = {}): DeltaMessage => ({
  type: "delta",
  match: "m",
  epoch,
  version,
  tick: version * 3,
  ...extra,
});
const applied = (r: ReturnType<typeof applyMessage>): MatchView => {
  if (r.kind !== "applied") throw new Error(`expected applied, got ${JSON.stringify(r)}`);
  return r.view;
};

describe("applyMessage", () => {
  it("starts from a snapshot and follows consecutive versions", () => {
    let v = applied(applyMessage(null, snapshot(1, 10)));
    v = applied(
      applyMessage(
        v,
        delta(1, 11, {
          players: { b: { ...v.state.players.a, name: "B", x: 50 } },
          removed: ["a"],
        }),
      ),
    );
    expect(v.version).toBe(11);
    expect(v.state.tick).toBe(33);
    expect(Object.keys(v.state.players)).toEqual(["b"]);
    v = applied(applyMessage(v, delta(1, 12, { status: "ended" })));
    expect(v.state.status).toBe("ended");
    expect(v.state.players.b.x).toBe(50);
  });

  it("never mutates the view it was given", () => {
    const v = applied(applyMessage(null, snapshot(1, 1)));
    const before = JSON.stringify(v);
    applyMessage(v, delta(1, 2, { removed: ["a"] }));
    expect(JSON.stringify(v)).toBe(before);
  });

  it("treats events as versions without changing the state", () => {
    const v = applied(applyMessage(null, snapshot(1, 1)));
    const e = applied(
      applyMessage(v, { type: "event", match: "m", epoch: 1, version: 2, kind: "kill", killer: "a", victim: "b" }),
    );
    expect(e.version).toBe(2);
    expect(e.state).toBe(v.state);
  });

  it("ignores what it already has (a replay overlapping the cold load)", () => {
    const v = applied(applyMessage(null, snapshot(1, 10)));
    expect(applyMessage(v, delta(1, 9)).kind).toBe("duplicate");
    expect(applyMessage(v, delta(1, 10)).kind).toBe("duplicate");
    expect(applyMessage(v, delta(0, 99)).kind).toBe("duplicate");
    expect(applyMessage(v, snapshot(1, 5)).kind).toBe("duplicate");
  });

  it("reports a missing version and a new epoch without a snapshot as gaps", () => {
    const v = applied(applyMessage(null, snapshot(1, 10)));
    expect(applyMessage(v, delta(1, 12))).toEqual({ kind: "gap", expected: "1:11", got: "1:12" });
    expect(applyMessage(v, delta(2, 1))).toEqual({ kind: "gap", expected: "1:11", got: "2:1" });
    expect(applyMessage(null, delta(1, 1)).kind).toBe("gap");
  });

  it("refuses a snapshot of an older epoch (never back in time)", () => {
    const v = (applyMessage(null, snapshot(3, 10)) as { view: MatchView }).view;
    expect(applyMessage(v, snapshot(2, 50)).kind).toBe("duplicate");
    expect(applyMessage(v, snapshot(3, 9)).kind).toBe("duplicate");
    expect(applyMessage(v, snapshot(4, 0)).kind).toBe("applied");
  });

  it("lets a snapshot replace any run of deltas and start a new epoch", () => {
    const v = applied(applyMessage(null, snapshot(1, 10)));
    expect(applied(applyMessage(v, snapshot(1, 40))).version).toBe(40);
    const next = applied(applyMessage(v, snapshot(2, 0)));
    expect([next.epoch, next.version]).toEqual([2, 0]);
  });
});

describe("parsePosition", () => {
  it("parses epoch:version strictly", () => {
    expect(parsePosition("3:17")).toEqual({ epoch: 3, version: 17 });
    for (const bad of ["", "3", "3:", ":4", "-1:2", "1:2:3", " 1:2", "a:b"]) {
      expect(parsePosition(bad)).toBeNull();
    }
  });
});
