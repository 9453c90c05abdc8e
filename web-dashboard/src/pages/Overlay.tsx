// A transparent overlay for a broadcast (`/overlay/match/{id}`, loaded as a browser source in
// OBS): the match's top five and its last kills, fading out, over whatever the scene shows.

import { useEffect, useRef } from "react";
import type { EventMessage } from "@grandstand/client";
import { useMatchStream } from "../useMatchStream";

const KILLS_SHOWN = 5;
const KILL_MS = 8000;

export function Overlay({ id }: { id: string }) {
  const { frame } = useMatchStream(id, "auto");
  // When each shown kill first reached this page: it fades KILL_MS later.
  const seenAt = useRef(new Map<string, number>());
  useEffect(() => {
    document.documentElement.classList.add("overlay");
    return () => document.documentElement.classList.remove("overlay");
  }, []);
  const state = frame.view?.state;
  const top = state ? Object.values(state.players).sort((a, b) => b.score - a.score).slice(0, 5) : [];
  const names = (pid: unknown) => state?.players[String(pid)]?.name ?? String(pid);
  const now = Date.now();
  const recent = frame.feed.filter((e: EventMessage) => e.kind === "kill").slice(-KILLS_SHOWN);
  const seen = new Map<string, number>();
  for (const e of recent) {
    const key = `${e.epoch}:${e.version}`;
    seen.set(key, seenAt.current.get(key) ?? now);
  }
  seenAt.current = seen;
  const kills = recent.filter((e) => now - seen.get(`${e.epoch}:${e.version}`)! < KILL_MS).reverse();
  return (
    <main className="overlay-page">
      <h1 className="sr-only">Overlay of match {id}</h1>
      <table className="overlay-board" data-testid="overlay-board">
        <caption className="sr-only">Top five</caption>
        <tbody>
          {top.map((p, i) => (
            <tr key={`${p.id ?? p.name}-${i}`}>
              <td>{i + 1}</td>
              <td>{p.name}</td>
              <td className="score">{p.score}</td>
            </tr>
          ))}
        </tbody>
      </table>
      <ol className="overlay-kills" data-testid="overlay-kills" aria-live="polite">
        {kills.map((e) => (
          <li key={`${e.epoch}:${e.version}`}>
            <b>{names(e.killer)}</b> ✕ {names(e.victim)}
          </li>
        ))}
      </ol>
    </main>
  );
}
