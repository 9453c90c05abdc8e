import { useQuery } from "@tanstack/react-query";
import { api } from "../api";

export function PlayerPage({ id }: { id: string }) {
  const q = useQuery({ queryKey: ["player", id], queryFn: () => api.player(id) });
  const s = q.data;
  return (
    <section>
      <h1>{s?.name ?? id}</h1>
      {q.isPending && <p className="muted">loading…</p>}
      {q.isError && <p className="bad">{q.error.message}</p>}
      {s && (
        <dl className="stats" data-testid="player-stats">
          <dt>matches</dt>
          <dd>{s.matches ?? 0}</dd>
          <dt>kills</dt>
          <dd>{s.kills ?? 0}</dd>
          <dt>deaths</dt>
          <dd>{s.deaths ?? 0}</dd>
        </dl>
      )}
      {q.data?.recent && (
        <table className="matches">
          <thead>
            <tr>
              <th>match</th>
              <th>region</th>
              <th>started</th>
              <th>kills</th>
              <th>deaths</th>
            </tr>
          </thead>
          <tbody>
            {q.data.recent.map((m) => (
              <tr key={m.id}>
                <td>
                  <a href={`#/match/${encodeURIComponent(m.id)}`}>{m.id}</a>
                </td>
                <td>{m.region}</td>
                <td>{new Date(m.started_ms).toLocaleTimeString()}</td>
                <td>{m.kills ?? "–"}</td>
                <td>{m.deaths ?? "–"}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
