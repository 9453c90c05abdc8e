// Render health for operators: while a match is on screen the page samples its frame intervals
// and its stream's lag and reports them to the gateway at most once per 10 s
// (`POST /v1/render-health`), so a fleet dashboard shows when viewers' screens stutter. Fixed
// memory (64 samples per series, reservoir-sampled), no personal data.

import type { RenderReport } from "@grandstand/client";

export const REPORT_INTERVAL_MS = 10_000;
const SAMPLES = 64;
/** An interval this long means the page was hidden, not that it stuttered. */
const HIDDEN_MS = 1000;

class Reservoir {
  readonly values: number[] = [];
  private seen = 0;
  constructor(private readonly random: () => number) {}
  add(v: number) {
    this.seen++;
    if (this.values.length < SAMPLES) this.values.push(v);
    else {
      const i = Math.floor(this.random() * this.seen);
      if (i < SAMPLES) this.values[i] = v;
    }
  }
}

/** The period's measurements; `take` hands them over as a report and starts a new period. */
export class RenderHealth {
  private frames = 0;
  private dropped = 0;
  private frameMs: Reservoir;
  private lagMs: Reservoir;
  /** The screen's refresh period as observed: the shortest interval seen (at least 4 ms). */
  private refreshMs = Infinity;

  constructor(private readonly random: () => number = Math.random) {
    this.frameMs = new Reservoir(random);
    this.lagMs = new Reservoir(random);
  }

  frame(intervalMs: number, lagMs: number | null) {
    if (!(intervalMs > 0) || intervalMs >= HIDDEN_MS) return;
    this.frames++;
    if (intervalMs >= 4) this.refreshMs = Math.min(this.refreshMs, intervalMs);
    if (Number.isFinite(this.refreshMs)) this.dropped += Math.max(0, Math.round(intervalMs / this.refreshMs) - 1);
    this.frameMs.add(Math.round(intervalMs * 10) / 10);
    if (lagMs !== null && lagMs >= 0) this.lagMs.add(Math.min(600_000, Math.round(lagMs)));
  }

  take(): RenderReport | null {
    if (this.frames === 0) return null;
    const report: RenderReport = {
      frames: Math.min(10_000, this.frames),
      dropped: Math.min(10_000, this.dropped),
      frame_ms: this.frameMs.values,
      lag_ms: this.lagMs.values,
    };
    this.frames = 0;
    this.dropped = 0;
    this.frameMs = new Reservoir(this.random);
    this.lagMs = new Reservoir(this.random);
    return report;
  }
}

/** The page's one reporter: reports every 10 s while frames are drawn, and once more when the
 * page is hidden (it may never come back), never more often than every 10 s. */
export const renderHealth = new RenderHealth();

let lastSent = -Infinity;
let timer: ReturnType<typeof setInterval> | null = null;

function send(now: number) {
  if (now - lastSent < REPORT_INTERVAL_MS) return;
  const report = renderHealth.take();
  if (!report) return;
  lastSent = now;
  const body = JSON.stringify(report);
  // sendBeacon survives the page closing; where it is refused, a keepalive fetch.
  if (!navigator.sendBeacon?.("/v1/render-health", body)) {
    void fetch("/v1/render-health", { method: "POST", body, keepalive: true }).catch(() => {});
  }
}

let users = 0;

function onHidden() {
  if (document.visibilityState === "hidden") send(performance.now());
}

/** Reports while at least one arena is on screen (a director grid has several). */
export function startRenderReports(): () => void {
  if (users++ === 0) {
    timer = setInterval(() => send(performance.now()), REPORT_INTERVAL_MS);
    document.addEventListener("visibilitychange", onHidden);
  }
  let stopped = false;
  return () => {
    if (stopped) return;
    stopped = true;
    if (--users > 0) return;
    if (timer !== null) clearInterval(timer);
    timer = null;
    document.removeEventListener("visibilitychange", onHidden);
  };
}
