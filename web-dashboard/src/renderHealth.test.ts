import { describe, expect, it } from "vitest";
import { RenderHealth } from "./renderHealth";

describe("RenderHealth", () => {
  it("counts frames and the refreshes they missed, and skips hidden stretches", () => {
    const h = new RenderHealth(() => 0.5);
    for (const ms of [16.7, 16.6, 33.4, 50.1, 16.7, 5000]) h.frame(ms, 100);
    const r = h.take()!;
    expect(r.frames).toBe(5);
    expect(r.dropped).toBe(3); // 33.4 missed one refresh, 50.1 two
    expect(r.frame_ms).toEqual([16.7, 16.6, 33.4, 50.1, 16.7]);
    expect(r.lag_ms).toEqual([100, 100, 100, 100, 100]);
    expect(h.take()).toBeNull();
  });

  it("keeps at most 64 samples of a long period, within the server's bounds", () => {
    const h = new RenderHealth(() => 0.99);
    for (let i = 0; i < 20_000; i++) h.frame(16 + (i % 3), i % 2 ? null : 10 ** 9);
    const r = h.take()!;
    expect(r.frame_ms.length).toBe(64);
    expect(r.lag_ms.length).toBe(64);
    expect(r.frames).toBe(10_000);
    expect(Math.max(...r.lag_ms)).toBe(600_000);
    expect(JSON.stringify(r).length).toBeLessThan(4096);
  });
});
