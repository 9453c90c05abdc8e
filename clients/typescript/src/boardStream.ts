// A leaderboard followed live: `GET /v1/leaderboards/{board}/stream` over SSE (public, no
// token). The gateway sends the board's top 100 at most once a second and a slow reader simply
// misses ticks, so the latest tick is all there is to keep; a dropped stream is resumed with
// backoff, and an older tick arriving after a newer one (a reconnect to another gateway) is
// ignored.

import { backoffDelay } from "./backoff.js";
import { fetchEventSource } from "./sse.js";
import type { EventSourceLike } from "./matchStream.js";

export interface BoardTick {
  type: "leaderboard";
  board: string;
  /** Orders ticks of one board (the time of its latest change, ms). */
  version: number;
  updated_at: number | null;
  total: number;
  entries: { rank: number; player: string; name: string; score: number }[];
}

export interface BoardStreamStatus {
  connection: "connecting" | "live" | "reconnecting";
  /** Failed attempts since the stream last delivered a tick. */
  attempt: number;
  ticks: number;
}

export interface BoardStreamEnv {
  eventSource: (url: string) => EventSourceLike;
  random: () => number;
  setTimeout: (f: () => void, ms: number) => unknown;
  clearTimeout: (t: unknown) => void;
}

export interface BoardStreamOptions {
  /** The gateway's HTTP origin; "" for the page's own. */
  baseUrl?: string;
  board: string;
  onTick: (tick: BoardTick) => void;
  onStatus?: (status: BoardStreamStatus) => void;
  env?: Partial<BoardStreamEnv>;
}

export class BoardStream {
  private readonly env: BoardStreamEnv;
  private source: EventSourceLike | null = null;
  private retryTimer: unknown = null;
  private latest = -Infinity;
  private stopped = false;
  readonly status: BoardStreamStatus = { connection: "connecting", attempt: 0, ticks: 0 };

  constructor(private readonly opts: BoardStreamOptions) {
    this.env = {
      eventSource: (url) =>
        typeof globalThis.EventSource === "undefined" ? fetchEventSource(url) : (new EventSource(url) as unknown as EventSourceLike),
      random: () => Math.random(),
      setTimeout: (f, ms) => globalThis.setTimeout(f, ms),
      clearTimeout: (t) => globalThis.clearTimeout(t as number),
      ...opts.env,
    };
  }

  start(): void {
    this.connect();
  }

  stop(): void {
    this.stopped = true;
    this.source?.close();
    this.source = null;
    if (this.retryTimer !== null) this.env.clearTimeout(this.retryTimer);
  }

  private connect(): void {
    if (this.stopped) return;
    this.retryTimer = null;
    const base = this.opts.baseUrl ?? globalThis.location?.origin ?? "";
    const es = this.env.eventSource(`${base}/v1/leaderboards/${encodeURIComponent(this.opts.board)}/stream`);
    this.source = es;
    es.addEventListener("leaderboard", (ev) => {
      if (this.source !== es) return;
      let tick: BoardTick;
      try {
        tick = JSON.parse(ev.data) as BoardTick;
      } catch {
        return;
      }
      if (typeof tick.version !== "number" || !Array.isArray(tick.entries)) return;
      this.status.connection = "live";
      this.status.attempt = 0;
      if (tick.version < this.latest) return this.emitStatus();
      this.latest = tick.version;
      this.status.ticks++;
      this.emitStatus();
      this.opts.onTick(tick);
    });
    es.onopen = () => {
      if (this.source !== es) return;
      this.status.connection = "live";
      this.emitStatus();
    };
    es.onerror = () => {
      if (this.source !== es || this.stopped) return;
      es.close();
      this.source = null;
      this.status.connection = "reconnecting";
      const delay = backoffDelay(this.status.attempt, this.env.random, 0);
      this.status.attempt++;
      this.emitStatus();
      this.retryTimer = this.env.setTimeout(() => this.connect(), delay);
    };
  }

  private emitStatus(): void {
    this.opts.onStatus?.({ ...this.status });
  }
}
