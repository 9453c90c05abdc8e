import { describe, expect, it } from "vitest";
import { Interpolator } from "./interpolate";
import type { PlayerView } from "@grandstand/client";

const p = (x: number, y: number, alive = true, angle = 0): PlayerView => ({
  name: "P",
  x,
  y,
  angle,
  hp: 100,
  alive,
  score: 0,
  kills: 0,
  deaths: 0,
  bot: true,
});

describe("Interpolator", () => {
  it("moves smoothly between samples", () => {
    const i = new Interpolator();
    i.push(0, { a: p(0, 0) });
    i.push(100, { a: p(100, 50) });
    const [d] = i.at(25);
    expect(d.x).toBeCloseTo(25);
    expect(d.y).toBeCloseTo(12.5);
    expect(i.at(150)[0].x).toBe(100); // holds the newest, never extrapolates
    expect(i.at(-10)[0].x).toBe(0);
  });

  it("snaps on respawn and on long jumps instead of sliding", () => {
    const i = new Interpolator();
    i.push(0, { a: p(0, 0, false), b: p(0, 0) });
    i.push(100, { a: p(4000, 4000, true), b: p(5000, 0) });
    const drawn = Object.fromEntries(i.at(50).map((d) => [d.id, d]));
    expect(drawn.a.x).toBe(0);
    expect(drawn.b.x).toBe(0);
    const later = Object.fromEntries(i.at(100).map((d) => [d.id, d]));
    expect(later.a.x).toBe(4000);
    expect(later.a.alive).toBe(true);
    expect(later.b.x).toBe(5000);
  });

  it("turns the short way round", () => {
    const i = new Interpolator();
    i.push(0, { a: p(0, 0, true, 170) });
    i.push(100, { a: p(0, 0, true, -170) });
    expect(i.at(50)[0].angle).toBeCloseTo(180);
  });

  it("forgets players who left", () => {
    const i = new Interpolator();
    i.push(0, { a: p(0, 0), b: p(1, 1) });
    i.push(100, { b: p(2, 2) });
    expect(i.at(100).map((d) => d.id)).toEqual(["b"]);
  });
});
