import { useEffect, useState } from "react";
import { BigBoard, Leaderboards } from "./pages/Leaderboards";
import { MatchList } from "./pages/MatchList";
import { MatchPage } from "./pages/MatchPage";
import { PlayerPage } from "./pages/PlayerPage";

/** Hash routes, so the server only ever serves one page: #/, #/match/ID, #/leaderboards,
 * #/player/ID. Query after "?" in the hash (board=, me=, transport=, rows=). */
function useRoute(): { path: string[]; params: URLSearchParams } {
  const read = () => {
    const [p, q] = window.location.hash.replace(/^#\/?/, "").split("?");
    return { path: p.split("/").filter(Boolean).map(decodeURIComponent), params: new URLSearchParams(q ?? "") };
  };
  const [route, setRoute] = useState(read);
  useEffect(() => {
    const on = () => setRoute(read());
    window.addEventListener("hashchange", on);
    return () => window.removeEventListener("hashchange", on);
  }, []);
  return route;
}

export function App() {
  const { path, params } = useRoute();
  let page;
  let title = "Live matches";
  if (path[0] === "match" && path[1]) {
    title = `Match ${path[1]}`;
    const t = params.get("transport");
    page = <MatchPage key={path[1]} id={path[1]} transport={t === "sse" || t === "ws" ? t : "auto"} />;
  } else if (path[0] === "leaderboards") {
    title = `Leaderboard: ${params.get("board") ?? "global"}`;
    page = <Leaderboards board={params.get("board") ?? "global"} me={params.get("me") ?? undefined} />;
  } else if (path[0] === "player" && path[1]) {
    title = `Player ${path[1]}`;
    page = <PlayerPage id={path[1]} />;
  } else if (path[0] === "bench" && path[1] === "board") {
    title = "Board benchmark";
    page = <BigBoard rows={Number(params.get("rows") ?? 10_000)} />;
  } else {
    page = <MatchList />;
  }
  useEffect(() => {
    document.title = `${title} · Grandstand`;
  }, [title]);
  return (
    <>
      <header>
        <a href="#/" className="brand">
          Grandstand
        </a>
        <nav aria-label="Main">
          <a href="#/">matches</a>
          <a href="#/leaderboards">leaderboards</a>
        </nav>
      </header>
      <main>{page}</main>
    </>
  );
}
