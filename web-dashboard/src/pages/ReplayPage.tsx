// A replay of a recent match: the whole match is fetched from its first keyframe (`from=start`,
// as fast as the page reads) into a timeline, then played back at match speed; the slider
// seeks to any tick by restarting from the keyframe before it. The match can still be live: the
// timeline grows as it goes on.

import { useEffect, useRef, useState } from "react";
import { MatchStream, MatchTimeline, type EventMessage, type MatchView, type StreamStatus } from "@grandstand/client";
import { viewerToken } from "../api";
import { ArenaCanvas } from "../arena/ArenaCanvas";
import { Interpolator } from "../arena/interpolate";
import type { LiveMatch } from "../useMatchStream";

const SPEEDS = [1, 2, 4, 8];
const FEED_SHOWN = 12;

function clock(ticks: number, hz: number): string {
  const s = Math.max(0, Math.floor(ticks / hz));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

export function ReplayPage({ id }: { id: string }) {
  const timeline = useRef(new MatchTimeline());
  const live = useRef<LiveMatch | null>(null);
  const playhead = useRef({ tick: 0, playing: true, speed: 1, seeked: true });
  const [loaded, setLoaded] = useState<{ messages: number; status: StreamStatus | null; truncated: boolean }>({ messages: 0, status: null, truncated: false });
  const [shown, setShown] = useState<{ view: MatchView | null; feed: EventMessage[]; playing: boolean; speed: number }>({
    view: null,
    feed: [],
    playing: true,
    speed: 1,
  });

  useEffect(() => {
    const t = new MatchTimeline();
    timeline.current = t;
    const interpolator = new Interpolator();
    const source = { current: null as MatchView | null, status: { behindMs: 0 } };
    live.current = { stream: source, interpolator, shots: [], undrawn: [], dirty: true };
    let status: StreamStatus | null = null;
    const stream = new MatchStream({
      matchId: id,
      from: "start",
      token: viewerToken,
      onView: (_view, msg) => {
        t.push(msg);
      },
      onStatus: (s) => {
        status = s;
      },
    });
    void stream.start();

    let raf = 0;
    let last = performance.now();
    let lastPush = 0;
    let feed: EventMessage[] = [];
    const frame = (now: number) => {
      raf = requestAnimationFrame(frame);
      const dt = now - last;
      last = now;
      const p = playhead.current;
      const first = t.firstTick;
      const end = t.lastTick;
      if (first === null || end === null) return;
      const hz = t.latest?.state.tick_hz ?? 30;
      if (p.seeked) {
        p.tick = Math.min(Math.max(p.tick, first), end);
        interpolator.clear();
        feed = [];
      }
      const before = p.tick;
      if (p.playing && !p.seeked) p.tick = Math.min(end, p.tick + (dt / 1000) * hz * p.speed);
      const moved = Math.floor(p.tick) !== Math.floor(before) || p.seeked;
      p.seeked = false;
      if (moved) {
        const view = t.viewAt(Math.floor(p.tick));
        source.current = view;
        if (view) interpolator.push(Date.now(), view.state.players);
        for (const m of t.between(Math.floor(before), Math.floor(p.tick))) {
          if (m.type === "event") feed = [...feed, m].slice(-FEED_SHOWN);
        }
      }
      if (now - lastPush > 250) {
        lastPush = now;
        setLoaded({ messages: t.length, status, truncated: t.truncated });
        setShown({ view: source.current, feed, playing: p.playing, speed: p.speed });
      }
    };
    raf = requestAnimationFrame(frame);
    return () => {
      cancelAnimationFrame(raf);
      stream.stop();
      live.current = null;
    };
  }, [id]);

  const t = timeline.current;
  const first = t.firstTick ?? 0;
  const end = t.lastTick ?? 0;
  const hz = shown.view?.state.tick_hz ?? 30;
  const at = shown.view?.state.tick ?? first;
  const names = (pid: unknown) => shown.view?.state.players[String(pid)]?.name ?? String(pid);
  const control = (f: (p: typeof playhead.current) => void) => {
    f(playhead.current);
    setShown((s) => ({ ...s, playing: playhead.current.playing, speed: playhead.current.speed }));
  };
  const connection = loaded.status?.connection;
  return (
    <section className="match">
      <h1>
        Replay of {id}{" "}
        <span className="badge muted" role="status" data-testid="replay-loading" data-state={connection ?? "connecting"}>
          {connection === "ended"
            ? `whole match loaded · ${loaded.messages} messages`
            : `loading · ${loaded.messages} messages`}
          {loaded.truncated ? " · too long, cut" : ""}
        </span>
      </h1>
      <div className="replay-bar">
        <button type="button" data-testid="replay-play" onClick={() => control((p) => (p.playing = !p.playing))}>
          {shown.playing ? "Pause" : "Play"}
        </button>
        <label>
          Position{" "}
          <input
            type="range"
            data-testid="replay-seek"
            min={first}
            max={Math.max(first, end)}
            value={at}
            onChange={(e) =>
              control((p) => {
                p.tick = Number(e.target.value);
                p.seeked = true;
              })
            }
          />
        </label>
        <span data-testid="replay-clock">
          {clock(at - first, hz)} / {clock(end - first, hz)}
        </span>
        <label>
          Speed{" "}
          <select value={shown.speed} onChange={(e) => control((p) => (p.speed = Number(e.target.value)))}>
            {SPEEDS.map((s) => (
              <option key={s} value={s}>
                {s}×
              </option>
            ))}
          </select>
        </label>
      </div>
      <p className="muted" data-testid="replay-position">
        {shown.view ? `epoch ${shown.view.epoch} · version ${shown.view.version} · tick ${at}` : "waiting for the first keyframe…"}
      </p>
      <div className="match-body">
        <ArenaCanvas live={live} label={`Replay of match ${id}`} />
        <div className="side">
          <h2 className="sub">Feed</h2>
          <div className="feed" role="log" aria-label="Events at the replay's position" data-testid="replay-feed" tabIndex={0}>
            {[...shown.feed].reverse().map((e) => (
              <div key={`${e.epoch}:${e.version}`} className="feed-row">
                {e.kind === "kill" ? `${names(e.killer)} eliminated ${names(e.victim)}` : e.kind.replace(/_/g, " ")}
              </div>
            ))}
          </div>
        </div>
      </div>
    </section>
  );
}
