import { useQuery, useQueryClient } from "@tanstack/react-query";
import { useVirtualizer } from "@tanstack/react-virtual";
import { useEffect, useMemo, useRef, useState } from "react";
import { BoardStream } from "@grandstand/client";
import { api, viewer, type BoardEntry } from "../api";
import { Age } from "./Age";
import { displayNames, staleText } from "./staleness";

export const BOARDS = ["global", "daily", "weekly"];

/** Any number of rows, of which only the visible ones (plus a few) are in the DOM. */
export function BoardTable({ entries, me, testId, label }: { entries: BoardEntry[]; me?: string; testId: string; label: string }) {
  const parent = useRef<HTMLDivElement>(null);
  const v = useVirtualizer({ count: entries.length, getScrollElement: () => parent.current, estimateSize: () => 28, overscan: 10 });
  const names = useMemo(() => displayNames(entries), [entries]);
  return (
    <div className="board" ref={parent} data-testid={testId} role="table" aria-label={label} aria-rowcount={entries.length} tabIndex={0}>
      <div style={{ height: v.getTotalSize(), position: "relative" }} role="rowgroup">
        {v.getVirtualItems().map((item) => {
          const e = entries[item.index];
          return (
            <div
              key={e.player}
              role="row"
              aria-rowindex={item.index + 1}
              className={`board-row${e.player === me ? " me" : ""}`}
              style={{ position: "absolute", top: 0, left: 0, right: 0, height: item.size, transform: `translateY(${item.start}px)` }}
            >
              <span className="rank" role="cell">
                #{e.rank}
              </span>
              <span role="cell">
                <a href={`#/player/${encodeURIComponent(e.player)}`}>{names.get(e.player) ?? e.name}</a>
              </span>
              <span className="score" role="cell">
                {e.score}
              </span>
            </div>
          );
        })}
      </div>
    </div>
  );
}

export function Leaderboards({ board, me: meParam }: { board: string; me?: string }) {
  const client = useQueryClient();
  const [me, setMe] = useState<string | undefined>(meParam);
  useEffect(() => {
    if (meParam) setMe(meParam);
    else void viewer().then((g) => setMe(g.player));
  }, [meParam]);
  const top = useQuery({
    queryKey: ["board", board],
    queryFn: () => api.leaderboard(board, { limit: 100 }),
    refetchInterval: 10_000,
  });
  const around = useQuery({
    queryKey: ["board", board, "around", me],
    enabled: !!me,
    retry: false,
    // A viewer not on the board yet gets an empty page, not a 404 (which browsers log).
    queryFn: () =>
      api.around(board, me!, { radius: 10, ifAbsent: "empty" }),
    refetchInterval: 10_000,
  });
  // Live: the board's stream ticks at most once a second; each tick refreshes both views.
  const [live, setLive] = useState(false);
  useEffect(() => {
    const stream = new BoardStream({
      board,
      onTick: () => void client.invalidateQueries({ queryKey: ["board", board] }),
      onStatus: (s) => setLive(s.connection === "live"),
    });
    stream.start();
    return () => stream.stop();
  }, [board, client]);
  const mine = around.data?.entries.find((e) => e.player === me);
  return (
    <section>
      <h1>
        Leaderboards <span className={`badge ${live ? "ok" : "muted"}`}>{live ? "● live" : "polling"}</span>{" "}
        <Age updatedAt={top.dataUpdatedAt} failing={top.isError} staleAfterMs={15_000} />
        {staleText(top.data) && (
          <span className="badge warn" data-testid="stale-reason">
            {staleText(top.data)}
          </span>
        )}
      </h1>
      <nav className="tabs" aria-label="Boards">
        {[...BOARDS, ...(board.startsWith("match:") ? [board] : [])].map((b) => (
          <a key={b} href={`#/leaderboards?board=${encodeURIComponent(b)}${meParam ? `&me=${encodeURIComponent(meParam)}` : ""}`} className={b === board ? "active" : ""}>
            {b}
          </a>
        ))}
      </nav>
      <div className="pinned" data-testid="pinned">
        {mine ? (
          <div className="board-row me">
            <span className="rank">#{mine.rank}</span>
            <span>{mine.name} (you)</span>
            <span className="score">{mine.score}</span>
          </div>
        ) : (
          <p className="pinned-note muted">{me ? "You: not ranked on this board yet" : "…"}</p>
        )}
      </div>
      {top.isError && !top.data && <p className="bad">leaderboard unavailable: {top.error.message}</p>}
      <div className="boards">
        <div>
          <h2 className="sub">Top 100</h2>
          <BoardTable entries={top.data?.entries ?? []} me={me} testId="top" label="Top 100" />
        </div>
        <div>
          <h2 className="sub">Around you</h2>
          {around.data && around.data.entries.length === 0 ? (
            <p className="empty muted" data-testid="around-empty">
              Nobody around you yet: you are not on this board.
            </p>
          ) : (
            <BoardTable entries={around.data?.entries ?? []} me={me} testId="around" label="Around you" />
          )}
        </div>
      </div>
    </section>
  );
}

/** The same table with 10,000 synthetic rows: what the scroll measurements run on. */
export function BigBoard({ rows }: { rows: number }) {
  const entries = useRef<BoardEntry[]>(
    Array.from({ length: rows }, (_, i) => ({ rank: i + 1, player: `p${i}`, name: `Player ${i}`, score: rows - i })),
  );
  return (
    <section>
      <h1>{rows.toLocaleString()} rows (synthetic, for scroll measurements)</h1>
      <BoardTable entries={entries.current} testId="big-board" label="Synthetic board" />
    </section>
  );
}
