// One live match for a React page. Messages are applied as they come, but React hears about
// them at most once per animation frame; the canvas reads the latest view directly.

import { useEffect, useRef, useState } from "react";
import { viewerToken } from "./api";
import { Interpolator } from "./arena/interpolate";
import { pageMetrics } from "./metrics";
import { MatchStream, type StreamStatus } from "@grandstand/client";
import type { EventMessage, MatchView, Shot } from "@grandstand/client";

/** What the arena draws from: the view to show and how far behind the game it is. */
export interface ArenaSource {
  readonly current: MatchView | null;
  readonly status: { behindMs: number };
}

export interface LiveMatch {
  stream: ArenaSource;
  interpolator: Interpolator;
  shots: { t: number; shot: Shot }[];
  /** Messages applied since the last drawn frame, with their publish time (ms) if stamped. */
  undrawn: { published: number; event: boolean }[];
  dirty: boolean;
}

export interface MatchFrame {
  view: MatchView | null;
  status: StreamStatus | null;
  feed: EventMessage[];
}

const FEED_CAP = 500;

export function useMatchStream(matchId: string, transport: "ws" | "sse" | "auto") {
  const live = useRef<LiveMatch | null>(null);
  const feed = useRef<EventMessage[]>([]);
  const status = useRef<StreamStatus | null>(null);
  const [frame, setFrame] = useState<MatchFrame>({ view: null, status: null, feed: [] });

  useEffect(() => {
    const interpolator = new Interpolator();
    feed.current = [];
    const stream = new MatchStream({
      matchId,
      transport,
      token: viewerToken,
      onView: (view, msg) => {
        const m = live.current!;
        pageMetrics.version(`${view.epoch}:${view.version} ${msg.type}`);
        if (msg.type === "snapshot") interpolator.clear();
        const t = stream.timeOfTick(view.state.tick) ?? Date.now();
        if (msg.type !== "event") interpolator.push(t, view.state.players);
        if (msg.type === "delta" && msg.shots) {
          for (const shot of msg.shots) m.shots.push({ t, shot });
          if (m.shots.length > 200) m.shots.splice(0, m.shots.length - 200);
        }
        // An event without a kind is a record the gateway could not read: a version, no news.
        if (msg.type === "event" && msg.kind) {
          feed.current = [...feed.current, msg].slice(-FEED_CAP);
        }
        if (msg.published_us) m.undrawn.push({ published: msg.published_us / 1000, event: msg.type === "event" });
        m.dirty = true;
      },
      onStatus: (s) => {
        status.current = s;
        pageMetrics.gaps = s.gaps;
        if (live.current) live.current.dirty = true;
      },
    });
    live.current = { stream, interpolator, shots: [], undrawn: [], dirty: true };
    void stream.start();

    // React state follows the stream at most once per animation frame (and at least every
    // second, so ages and countdowns move while nothing arrives).
    let raf = 0;
    let lastPush = 0;
    const tick = (now: number) => {
      const m = live.current;
      if (m && (m.dirty || now - lastPush > 1000)) {
        m.dirty = false;
        lastPush = now;
        setFrame({ view: stream.current, status: status.current, feed: feed.current });
      }
      raf = requestAnimationFrame(tick);
    };
    raf = requestAnimationFrame(tick);
    return () => {
      cancelAnimationFrame(raf);
      stream.stop();
      live.current = null;
    };
  }, [matchId, transport]);

  return { live, frame };
}
