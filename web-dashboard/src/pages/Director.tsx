// The director's view: every live match at once (up to six), each drawn live, so a broadcaster
// sees where the action is and opens that match (or its overlay) with one click.

import { useQuery } from "@tanstack/react-query";
import { ArenaCanvas } from "../arena/ArenaCanvas";
import { api, type MatchListing } from "../api";
import { useMatchStream } from "../useMatchStream";
import { ConnectionBadge } from "./ConnectionBadge";

const TILES = 6;

function Tile({ match }: { match: MatchListing }) {
  const { live, frame } = useMatchStream(match.id, "auto");
  const state = frame.view?.state;
  const leader = state ? Object.values(state.players).sort((a, b) => b.score - a.score)[0] : undefined;
  const kills = frame.feed.filter((e) => e.kind === "kill").length;
  return (
    <article className="tile" data-testid="director-tile" aria-labelledby={`tile-${match.id}`}>
      <h2 id={`tile-${match.id}`}>
        <a href={`#/match/${encodeURIComponent(match.id)}`}>{match.id}</a> <ConnectionBadge status={frame.status} />
      </h2>
      <ArenaCanvas live={live} small label={`Match ${match.id}, live`} />
      <p className="muted" data-testid="tile-summary">
        {state ? `${Object.keys(state.players).length} players · tick ${state.tick}` : "waiting…"}
        {leader ? ` · leader ${leader.name} (${leader.score})` : ""} · {kills} kills seen
      </p>
      <p>
        <a href={`/overlay/match/${encodeURIComponent(match.id)}`}>overlay</a>
      </p>
    </article>
  );
}

export function Director() {
  const q = useQuery({ queryKey: ["matches"], queryFn: () => api.matches(), refetchInterval: 2000 });
  const live = (q.data?.matches ?? []).filter((m) => m.status === "live").slice(0, TILES);
  return (
    <section>
      <h1>Director</h1>
      {q.isPending && <p className="muted">loading…</p>}
      {q.data && live.length === 0 && <p className="muted">No match is live.</p>}
      <div className="director">
        {live.map((m) => (
          <Tile key={m.id} match={m} />
        ))}
      </div>
    </section>
  );
}
