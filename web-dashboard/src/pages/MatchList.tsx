import { useQuery } from "@tanstack/react-query";
import { api } from "../api";
import { Age } from "./Age";

export function MatchList() {
  const q = useQuery({
    queryKey: ["matches"],
    // Polled with the listing's ETag: while nothing changes each poll is a bodiless 304 and
    // the same data object (so nothing re-renders).
    queryFn: () => api.matches(),
    refetchInterval: 2000,
  });
  return (
    <section>
      <h1>
        Matches <Age updatedAt={q.dataUpdatedAt} failing={q.isError} />
      </h1>
      {q.isPending && <p className="muted">loading…</p>}
      {q.isError && !q.data && <p className="bad">matches unavailable: {String(q.error.message)}</p>}
      <table className="matches" data-testid="matches">
        <thead>
          <tr>
            <th>match</th>
            <th>region</th>
            <th>status</th>
            <th>players</th>
            <th>viewers</th>
            <th>leader</th>
          </tr>
        </thead>
        <tbody>
          {q.data?.matches.map((m) => (
            <tr key={m.id} data-status={m.status}>
              <td>
                <a href={`#/match/${encodeURIComponent(m.id)}`}>{m.id}</a>{" "}
                <a href={`#/replay/${encodeURIComponent(m.id)}`} className="muted-link" aria-label={`Replay ${m.id} from the start`}>
                  replay
                </a>
              </td>
              <td>{m.region}</td>
              <td className={m.status === "live" ? "ok" : "muted"}>{m.status}</td>
              <td>{m.players}</td>
              <td>{m.viewers}</td>
              <td>
                {m.broadcast_delay_ms
                  ? "hidden (delayed broadcast)"
                  : m.top[0]
                    ? `${m.top[0].name} (${m.top[0].score})`
                    : "–"}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}
