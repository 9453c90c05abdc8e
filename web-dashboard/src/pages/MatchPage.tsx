import { useVirtualizer } from "@tanstack/react-virtual";
import { useRef } from "react";
import { ArenaCanvas } from "../arena/ArenaCanvas";
import type { EventMessage } from "@grandstand/client";
import { useMatchStream } from "../useMatchStream";
import { ConnectionBadge } from "./ConnectionBadge";

function describe(e: EventMessage, names: (id: unknown) => string): string {
  switch (e.kind) {
    case "kill":
      return `${names(e.killer)} eliminated ${names(e.victim)}`;
    case "player_joined":
      return `${String(e.name ?? names(e.player))} joined`;
    case "player_left":
      return `${names(e.player)} left`;
    case "match_started":
      return "match started";
    case "match_ended":
      return "match ended";
    default:
      return e.kind;
  }
}

function KillFeed({ feed, names }: { feed: EventMessage[]; names: (id: unknown) => string }) {
  const parent = useRef<HTMLDivElement>(null);
  // Newest first; virtualized so a long match's feed costs only the visible rows.
  const rows = feed.length;
  const v = useVirtualizer({ count: rows, getScrollElement: () => parent.current, estimateSize: () => 24, overscan: 8 });
  return (
    <div className="feed" ref={parent} data-testid="feed" role="log" aria-label="Kill feed" tabIndex={0}>
      <div style={{ height: v.getTotalSize(), position: "relative" }}>
        {v.getVirtualItems().map((item) => {
          const e = feed[rows - 1 - item.index];
          return (
            <div key={`${e.epoch}:${e.version}`} className="feed-row" style={{ position: "absolute", top: 0, transform: `translateY(${item.start}px)`, height: item.size }}>
              {describe(e, names)}
            </div>
          );
        })}
      </div>
    </div>
  );
}

export function MatchPage({ id, transport }: { id: string; transport: "ws" | "sse" | "auto" }) {
  const { live, frame } = useMatchStream(id, transport);
  const state = frame.view?.state;
  const players = state ? Object.entries(state.players).sort(([, a], [, b]) => b.score - a.score) : [];
  const names = (pid: unknown) => state?.players[String(pid)]?.name ?? String(pid);
  return (
    <section className="match">
      <h1>
        {id} <ConnectionBadge status={frame.status} />
      </h1>
      <p className="muted" data-testid="position">
        {frame.view ? `epoch ${frame.view.epoch} · version ${frame.view.version} · tick ${state?.tick}` : "waiting for the match…"}
        {state?.status === "ended" ? " · ended" : ""}
      </p>
      <div className="match-body">
        <ArenaCanvas live={live} />
        <div className="side">
          <table className="scoreboard" data-testid="scoreboard">
            <thead>
              <tr>
                <th>player</th>
                <th>score</th>
                <th>K</th>
                <th>D</th>
                <th>hp</th>
              </tr>
            </thead>
            <tbody>
              {players.map(([pid, p]) => (
                <tr key={pid} className={p.alive ? "" : "muted"}>
                  <td>
                    <a href={`#/player/${encodeURIComponent(pid)}`}>{p.name}</a>
                    {p.bot ? <span className="muted"> bot</span> : ""}
                  </td>
                  <td>{p.score}</td>
                  <td>{p.kills}</td>
                  <td>{p.deaths}</td>
                  <td>{p.alive ? p.hp : "✝"}</td>
                </tr>
              ))}
            </tbody>
          </table>
          <h2 className="sub">Feed</h2>
          <KillFeed feed={frame.feed} names={names} />
          <p>
            <a href={`#/leaderboards?board=${encodeURIComponent(`match:${id}`)}`}>match leaderboard</a>
          </p>
        </div>
      </div>
    </section>
  );
}
