// Measurements the browser tests read (window.__grandstand): bounded rings, never growing.
// Off unless the page is asked for them (localStorage "grandstand.instrument" = "1", which the
// browser tests set): a viewer's page keeps no message log and exposes nothing.

/** Whether this page records measurements for the browser tests. */
export const instrumented: boolean = (() => {
  try {
    return typeof localStorage !== "undefined" && localStorage.getItem("grandstand.instrument") === "1";
  } catch {
    return false;
  }
})();

const CAP = 5000;

function ring(): number[] {
  return [];
}

function push(r: number[], v: number) {
  r.push(v);
  if (r.length > CAP) r.splice(0, r.length - CAP);
}

export const pageMetrics = {
  /** Log publish time -> the first animation frame drawn with that message (ms); only when
   * the gateway stamps publish times (--stamp-publish-time). */
  tickToPixel: ring(),
  /** The same, for snapshots and deltas (the state drawn). */
  tickToPixelState: ring(),
  /** The same, for events (which the gateway may hold up to --event-coalesce-ms, 25 ms, to
   * send them in one write with their tick's delta). */
  tickToPixelEvents: ring(),
  /** Time between consecutive animation frames while a match is on screen (ms). */
  frameTimes: ring(),
  /** Every applied message's "epoch:version type", for checking the version line. */
  versions: [] as string[],
  gaps: 0,
  /** When (ms since the navigation started) the first arena frame with match data was drawn. */
  firstFrameMs: null as number | null,
  firstFrame() {
    if (instrumented && this.firstFrameMs === null) this.firstFrameMs = performance.now();
  },
  record(name: "tickToPixel" | "tickToPixelState" | "tickToPixelEvents" | "frameTimes", v: number) {
    if (instrumented) push(this[name], v);
  },
  version(line: string) {
    if (!instrumented) return;
    this.versions.push(line);
    if (this.versions.length > 20_000) this.versions.splice(0, 10_000);
  },
};

declare global {
  interface Window {
    __grandstand?: typeof pageMetrics;
  }
}

if (instrumented && typeof window !== "undefined") window.__grandstand = pageMetrics;
