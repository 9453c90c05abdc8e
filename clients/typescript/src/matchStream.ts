// A live match for a viewer: cold load, stream from that version, apply, detect gaps and epochs,
// resume with backoff. No framework; usable by any page or app.

import { backoffDelay, retryAfterFromReason } from "./backoff.js";
import { applyMessage, position } from "./feed.js";
import { LagEstimator } from "./lag.js";
import { fetchEventSource } from "./sse.js";
import { V2Decoder } from "./v2.js";
import type { EventMessage, MatchView, SnapshotMessage, StreamMessage } from "./types.js";

/** "ended": a replay that reached the end of its match (the gateway closed it normally). */
export type Connection = "connecting" | "live" | "reconnecting" | "paused" | "ended";

export interface StreamStatus {
  connection: Connection;
  transport: "ws" | "sse";
  /** Failed attempts since the stream last delivered a message. */
  attempt: number;
  /** When the next attempt starts (local ms), while reconnecting. */
  retryAt: number | null;
  /** When the last message arrived (local ms). */
  lastMessageAt: number | null;
  /** How far behind the game the stream runs, beyond its best (ms). */
  behindMs: number;
  /** The match's own broadcast delay (competitive matches), ms. */
  delayMs: number;
  /** Resumes forced by a missing version or an epoch without snapshot. */
  gaps: number;
  snapshots: number;
  messages: number;
}

export interface WebSocketLike {
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  close(code?: number, reason?: string): void;
}

export interface EventSourceLike {
  addEventListener(type: string, listener: (ev: { data: string }) => void): void;
  onerror: ((ev: unknown) => void) | null;
  onopen: ((ev: unknown) => void) | null;
  close(): void;
}

export interface StreamEnv {
  fetch: (url: string, init?: RequestInit) => Promise<Response>;
  webSocket: (url: string) => WebSocketLike;
  eventSource: (url: string) => EventSourceLike;
  now: () => number;
  random: () => number;
  setTimeout: (f: () => void, ms: number) => unknown;
  clearTimeout: (t: unknown) => void;
  /** Calls `f` when the network comes back or the page becomes visible again (a laptop
   * waking up); returns how to stop listening. */
  onWake: (f: () => void) => () => void;
}

export interface MatchStreamOptions {
  /** The gateway's HTTP origin; "" for the page's own. */
  baseUrl?: string;
  matchId: string;
  /** A REST token (asked for again before every connection, so it can be refreshed). */
  token: () => Promise<string>;
  /** "auto": WebSocket, falling back to SSE after three attempts that never opened. */
  transport?: "ws" | "sse" | "auto";
  /** "start": replay the match from its first retained keyframe (no cold load; the stream's
   * first message is that keyframe's snapshot), as fast as the viewer reads, then on into the
   * live line; a resume carries on after the last version held. An ended match's replay
   * ends (connection "ended") instead of reconnecting. */
  from?: "start";
  /** The feed format: "v2" (compact; compressed over WebSocket by the browser's
   * permessage-deflate) unless told otherwise. */
  format?: "v1" | "v2";
  /** Every message as received (parsed JSON, before any decoding), applied or not. */
  onMessage?: (msg: Record<string, unknown>) => void;
  /** Every applied message, with the view after it. Callers coalesce renders themselves. */
  onView?: (view: MatchView, msg: StreamMessage) => void;
  onEvent?: (msg: EventMessage) => void;
  onStatus?: (status: StreamStatus) => void;
  /** An outage longer than this is shown as "paused" rather than "reconnecting". */
  pauseAfterMs?: number;
  /** A live connection silent this long is presumed dead (a half-open socket after a sleep)
   * and replaced: two of the gateway's 20 s ping intervals by default. */
  livenessMs?: number;
  env?: Partial<StreamEnv>;
}

/** Gaps closer together than this back off instead of resuming at once. */
export const GAP_WINDOW_MS = 10_000;

/** A browser's, or Node's: where the runtime has no EventSource (Node 20), SSE is read through
 * fetch; where it has no WebSocket, "auto" starts on SSE. */
function defaultEnv(): StreamEnv {
  return {
    fetch: (url, init) => globalThis.fetch(url, init),
    webSocket: (url) => {
      if (typeof globalThis.WebSocket === "undefined") throw new Error("this runtime has no WebSocket");
      return new WebSocket(url) as unknown as WebSocketLike;
    },
    eventSource: (url) =>
      typeof globalThis.EventSource === "undefined"
        ? fetchEventSource(url)
        : (new EventSource(url) as unknown as EventSourceLike),
    now: () => Date.now(),
    random: () => Math.random(),
    setTimeout: (f, ms) => globalThis.setTimeout(f, ms),
    clearTimeout: (t) => globalThis.clearTimeout(t as number),
    onWake: (f) => {
      const g = globalThis as unknown as {
        addEventListener?: (t: string, f: () => void) => void;
        removeEventListener?: (t: string, f: () => void) => void;
        document?: { visibilityState?: string; addEventListener?: (t: string, f: () => void) => void; removeEventListener?: (t: string, f: () => void) => void };
      };
      const visible = () => {
        if (g.document?.visibilityState === "visible") f();
      };
      g.addEventListener?.("online", f);
      g.document?.addEventListener?.("visibilitychange", visible);
      return () => {
        g.removeEventListener?.("online", f);
        g.document?.removeEventListener?.("visibilitychange", visible);
      };
    },
  };
}

export class MatchStream {
  private readonly env: StreamEnv;
  private readonly lag = new LagEstimator();
  private readonly v2 = new V2Decoder();
  private view: MatchView | null = null;
  private socket: WebSocketLike | null = null;
  private source: EventSourceLike | null = null;
  private retryTimer: unknown = null;
  private pauseTimer: unknown = null;
  private downSince: number | null = null;
  private neverOpened = 0;
  private lastGapAt: number | null = null;
  private livenessTimer: unknown = null;
  private unlistenWake: (() => void) | null = null;
  private stopped = false;
  private generation = 0;
  readonly status: StreamStatus;

  constructor(private readonly opts: MatchStreamOptions) {
    this.env = { ...defaultEnv(), ...opts.env };
    const noWebSocket = typeof globalThis.WebSocket === "undefined" && !opts.env?.webSocket;
    this.status = {
      connection: "connecting",
      transport: opts.transport === "sse" || (opts.transport !== "ws" && noWebSocket) ? "sse" : "ws",
      attempt: 0,
      retryAt: null,
      lastMessageAt: null,
      behindMs: 0,
      delayMs: 0,
      gaps: 0,
      snapshots: 0,
      messages: 0,
    };
  }

  get current(): MatchView | null {
    return this.view;
  }

  /** Where (local ms) a tick of this match sits on the stream's timeline. */
  timeOfTick(tick: number): number | null {
    return this.lag.localTimeOf(tick, this.view?.state.tick_hz ?? 0);
  }

  async start(): Promise<void> {
    this.unlistenWake = this.env.onWake(() => this.wake());
    if (this.opts.from !== "start") await this.coldLoad();
    this.connect();
  }

  stop(): void {
    this.stopped = true;
    this.generation++;
    this.closeTransport();
    if (this.retryTimer !== null) this.env.clearTimeout(this.retryTimer);
    if (this.pauseTimer !== null) this.env.clearTimeout(this.pauseTimer);
    if (this.livenessTimer !== null) this.env.clearTimeout(this.livenessTimer);
    this.unlistenWake?.();
  }

  /** The network is back or the page visible again: waiting out a backoff is pointless, and
   * a connection that went silent meanwhile is checked now rather than at its deadline. */
  private wake(): void {
    if (this.stopped) return;
    if (this.retryTimer !== null) {
      this.env.clearTimeout(this.retryTimer);
      this.connect();
    } else if (this.status.connection === "live") {
      this.checkLiveness();
    }
  }

  private livenessMs(): number {
    return this.opts.livenessMs ?? 40_000;
  }

  /** Arms the silence deadline of a live connection (one timer, not one per message: when
   * it fires it looks at the last message and re-arms for the time left). */
  private armLiveness(delay = this.livenessMs()): void {
    if (this.livenessTimer !== null || this.stopped) return;
    this.livenessTimer = this.env.setTimeout(() => {
      this.livenessTimer = null;
      this.checkLiveness();
    }, delay);
  }

  private checkLiveness(): void {
    const last = this.status.lastMessageAt;
    // An ended match may stay silent for good.
    if (this.status.connection !== "live" || last === null || this.view?.state.status === "ended") return;
    const silent = this.env.now() - last;
    if (silent >= this.livenessMs()) {
      this.scheduleReconnect(this.generation, 0, true);
    } else {
      this.armLiveness(this.livenessMs() - silent);
    }
  }

  /** The cached snapshot, so the page draws before the stream is up. A match broadcast with a
   * delay has none (409); its stream starts with a delayed snapshot instead. */
  private async coldLoad(): Promise<void> {
    const url = `${this.opts.baseUrl ?? ""}/v1/matches/${encodeURIComponent(this.opts.matchId)}/snapshot`;
    try {
      const res = await this.env.fetch(url);
      if (!res.ok) return;
      const body = (await res.json()) as Omit<SnapshotMessage, "type">;
      const msg: SnapshotMessage = { ...body, type: "snapshot" };
      this.opts.onMessage?.(msg as unknown as Record<string, unknown>);
      this.handle(msg);
    } catch {
      // The stream will bring a snapshot.
    }
  }

  private streamUrl(token: string): string {
    const base = this.opts.baseUrl || globalThis.location?.origin || "";
    let url = `${base}/v1/matches/${encodeURIComponent(this.opts.matchId)}/stream?token=${encodeURIComponent(token)}`;
    if ((this.opts.format ?? "v2") === "v2") url += "&format=v2";
    if (this.opts.from === "start") url += "&from=start";
    if (this.view) url += `&since=${position(this.view.epoch, this.view.version)}`;
    return url;
  }

  private connect(): void {
    if (this.stopped) return;
    const generation = ++this.generation;
    this.retryTimer = null;
    this.status.retryAt = null;
    this.emitStatus();
    this.opts
      .token()
      .then((token) => {
        if (generation !== this.generation) return;
        if (this.status.transport === "ws") this.openWebSocket(token, generation);
        else this.openEventSource(token, generation);
      })
      .catch(() => this.scheduleReconnect(generation, 0));
  }

  private openWebSocket(token: string, generation: number): void {
    const url = this.streamUrl(token).replace(/^http/, "ws");
    const ws = this.env.webSocket(url);
    this.socket = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.neverOpened = 0;
    };
    ws.onmessage = (ev) => {
      if (generation !== this.generation || typeof ev.data !== "string") return;
      this.receive(ev.data, generation);
    };
    ws.onclose = (ev) => {
      if (generation !== this.generation) return;
      if (!opened && this.opts.transport !== "ws" && ++this.neverOpened >= 3) {
        this.status.transport = "sse";
      }
      this.scheduleReconnect(generation, retryAfterFromReason(ev.reason ?? ""));
    };
    ws.onerror = () => {};
  }

  private openEventSource(token: string, generation: number): void {
    const es = this.env.eventSource(this.streamUrl(token));
    this.source = es;
    const onData = (ev: { data: string }) => {
      if (generation === this.generation) this.receive(ev.data, generation);
    };
    for (const type of ["snapshot", "delta", "event"]) es.addEventListener(type, onData);
    es.addEventListener("close", (ev) => {
      if (generation !== this.generation) return;
      let hint = 0;
      try {
        hint = Number((JSON.parse(ev.data) as { retry_after_ms?: number }).retry_after_ms ?? 0);
      } catch {
        hint = 0;
      }
      this.scheduleReconnect(generation, hint);
    });
    // EventSource would retry on its own from Last-Event-ID; we resume ourselves, with backoff
    // and a fresh token, so its retries are cut short.
    es.onerror = () => {
      if (generation === this.generation) this.scheduleReconnect(generation, 0);
    };
  }

  private receive(data: string, generation: number): void {
    let msg: StreamMessage;
    try {
      const parsed = JSON.parse(data) as Record<string, unknown>;
      this.opts.onMessage?.(parsed);
      msg = (this.opts.format ?? "v2") === "v2" ? this.v2.decode(this.view, parsed) : (parsed as unknown as StreamMessage);
    } catch {
      return;
    }
    if (!this.handle(msg)) {
      // A missing version: resume at once from the last one we hold; a gap again soon after
      // backs off like any failed attempt (a gateway that keeps skipping is not hammered).
      this.status.gaps++;
      const now = this.env.now();
      const again = this.lastGapAt !== null && now - this.lastGapAt < GAP_WINDOW_MS;
      this.lastGapAt = now;
      this.scheduleReconnect(generation, 0, !again);
    }
  }

  /** Applies one message; false on a gap. */
  private handle(msg: StreamMessage): boolean {
    const now = this.env.now();
    const r = applyMessage(this.view, msg);
    if (r.kind === "gap") return false;
    this.status.lastMessageAt = now;
    if (this.status.connection !== "live" && (this.socket || this.source)) {
      this.status.connection = "live";
      this.status.attempt = 0;
      this.downSince = null;
    }
    if (this.socket || this.source) this.armLiveness();
    if (r.kind === "duplicate") return true;
    const epochChanged = this.view !== null && this.view.epoch !== r.view.epoch;
    if (epochChanged) this.lag.reset();
    this.view = r.view;
    this.status.messages++;
    if (msg.type === "snapshot") this.status.snapshots++;
    const state = r.view.state;
    this.status.delayMs = state.broadcast_delay_ms ?? 0;
    this.lag.observe(state.tick, state.tick_hz ?? 0, now);
    this.status.behindMs = this.lag.behindMs();
    this.opts.onView?.(r.view, msg);
    if (msg.type === "event") this.opts.onEvent?.(msg);
    this.emitStatus();
    return true;
  }

  private closeTransport(): void {
    if (this.socket) {
      const ws = this.socket;
      this.socket = null;
      ws.onclose = null;
      ws.onmessage = null;
      try {
        ws.close(1000, "viewer left");
      } catch {
        // already closed
      }
    }
    if (this.source) {
      this.source.close();
      this.source = null;
    }
  }

  private scheduleReconnect(generation: number, retryAfterMs: number, immediate = false): void {
    if (generation !== this.generation || this.stopped) return;
    // A replay that has shown its match's end is over: there is nothing to resume.
    if (this.opts.from === "start" && this.view?.state.status === "ended") {
      this.stop();
      this.status.connection = "ended";
      this.status.retryAt = null;
      this.emitStatus();
      return;
    }
    this.generation++;
    this.closeTransport();
    if (this.livenessTimer !== null) this.env.clearTimeout(this.livenessTimer);
    this.livenessTimer = null;
    const now = this.env.now();
    this.downSince ??= now;
    const delay = immediate ? 0 : backoffDelay(this.status.attempt, this.env.random, retryAfterMs);
    if (!immediate) this.status.attempt++;
    const pauseAfter = this.opts.pauseAfterMs ?? 5000;
    this.status.connection = now - this.downSince >= pauseAfter ? "paused" : "reconnecting";
    this.status.retryAt = now + delay;
    if (this.status.connection === "reconnecting" && this.pauseTimer === null) {
      this.pauseTimer = this.env.setTimeout(() => {
        this.pauseTimer = null;
        if (this.status.connection === "reconnecting") {
          this.status.connection = "paused";
          this.emitStatus();
        }
      }, pauseAfter - (now - this.downSince));
    }
    this.emitStatus();
    this.retryTimer = this.env.setTimeout(() => this.connect(), delay);
  }

  private emitStatus(): void {
    this.opts.onStatus?.({ ...this.status });
  }
}
