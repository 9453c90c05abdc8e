import { useEffect, useState } from "react";
import { ErrorBoundary } from "./ErrorBoundary";
import { instrumented } from "./metrics";
import { Director } from "./pages/Director";
import { BigBoard, Leaderboards } from "./pages/Leaderboards";
import { MatchList } from "./pages/MatchList";
import { MatchPage } from "./pages/MatchPage";
import { Overlay } from "./pages/Overlay";
import { PlayerPage } from "./pages/PlayerPage";
import { ReplayPage } from "./pages/ReplayPage";

/** Throws while rendering: how the browser tests see the error boundary at work (test builds
 * only, behind the instrumentation flag). */
function Crash(): never {
  throw new Error("a page failed on purpose (test)");
}

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

/** `/overlay/match/{id}`: a page of its own path (no header, a transparent background), so a
 * broadcaster's browser source loads just the overlay. */
function overlayMatch(): string | null {
  const m = /^\/overlay\/match\/([^/]+)\/?$/.exec(window.location.pathname);
  return m ? decodeURIComponent(m[1]) : null;
}

export function App() {
  const overlay = overlayMatch();
  return overlay ? <OverlayApp id={overlay} /> : <DashboardApp />;
}

function OverlayApp({ id }: { id: string }) {
  useEffect(() => {
    document.title = `Overlay ${id} · Grandstand`;
  }, [id]);
  return (
    <ErrorBoundary resetKey={id}>
      <Overlay id={id} />
    </ErrorBoundary>
  );
}

function DashboardApp() {
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
  } else if (path[0] === "replay" && path[1]) {
    title = `Replay ${path[1]}`;
    page = <ReplayPage key={path[1]} id={path[1]} />;
  } else if (path[0] === "director") {
    title = "Director";
    page = <Director />;
  } else if (path[0] === "bench" && path[1] === "crash" && instrumented) {
    title = "Crash";
    page = <Crash />;
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
          <a href="#/director">director</a>
        </nav>
      </header>
      <main>
        <ErrorBoundary resetKey={window.location.hash}>{page}</ErrorBoundary>
      </main>
    </>
  );
}
