import { describe, expect, it } from "vitest";
import { backoffDelay, retryAfterFromReason } from "./backoff.js";
import { LagEstimator } from "./lag.js";

describe("backoffDelay", () => {
  it("doubles from 1 s to a 30 s cap", () => {
    const mid = () => 0.5; // no jitter
    expect([0, 1, 2, 3, 4, 5, 6, 10].map((a) => backoffDelay(a, mid))).toEqual([
      1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000,
    ]);
  });

  it("spreads each step by +-20% and never past the cap", () => {
    expect(backoffDelay(0, () => 0)).toBe(800);
    expect(backoffDelay(0, () => 0.999999)).toBe(1200);
    expect(backoffDelay(2, () => 0)).toBe(3200);
    expect(backoffDelay(9, () => 0.999999)).toBe(30000);
  });

  it("waits at least the server's retry-after hint", () => {
    expect(backoffDelay(0, () => 0.5, 5000)).toBe(5000);
    expect(backoffDelay(3, () => 0.5, 5000)).toBe(8000);
    expect(backoffDelay(0, () => 0.5, 90_000)).toBe(30000);
  });

  it("reads the hint from a gateway close reason", () => {
    expect(retryAfterFromReason("idle: no pong; retry-after=1234ms")).toBe(1234);
    expect(retryAfterFromReason("viewer left")).toBe(0);
  });
});

describe("LagEstimator", () => {
  it("measures how far the stream fell behind its freshest point, whatever the clocks", () => {
    const lag = new LagEstimator();
    const clockOffset = 1_700_000_000_000; // the local clock is not the server's
    // 30 Hz: tick 30 = 1 s. Messages arrive 50 ms after their tick, then one 2 s late.
    lag.observe(30, 30, clockOffset + 1050);
    lag.observe(60, 30, clockOffset + 2050);
    expect(lag.behindMs()).toBe(0);
    lag.observe(90, 30, clockOffset + 5050);
    expect(lag.behindMs()).toBe(2000);
    // Caught up again.
    lag.observe(180, 30, clockOffset + 6050);
    expect(lag.behindMs()).toBe(0);
    expect(lag.localTimeOf(90, 30)).toBe(clockOffset + 3050);
  });

  it("needs a tick rate", () => {
    const lag = new LagEstimator();
    lag.observe(30, 0, 1000);
    expect(lag.behindMs()).toBe(0);
    expect(lag.localTimeOf(30, 0)).toBeNull();
  });
});
