// HTTP data for the pages (TanStack Query does caching and refetching) and the viewer's token.

export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export async function getJson<T>(path: string): Promise<T> {
  const res = await fetch(path);
  if (!res.ok) {
    let code = "http_error";
    let message = `${res.status} ${res.statusText}`;
    try {
      const body = (await res.json()) as { error?: { code: string; message: string } };
      if (body.error) ({ code, message } = body.error);
    } catch {
      // not JSON
    }
    throw new HttpError(res.status, code, message);
  }
  return (await res.json()) as T;
}

export interface ScoreLine {
  player: string;
  name: string;
  score: number;
}

export interface MatchListing {
  id: string;
  region: string;
  status: "live" | "ended";
  players: number;
  viewers: number;
  epoch: number;
  version: number;
  top: ScoreLine[];
  broadcast_delay_ms?: number;
}

export interface BoardEntry {
  rank: number;
  player: string;
  name: string;
  score: number;
}

/** A leaderboard page as `GET /v1/leaderboards/{board}` sends it (schema `Board` in /openapi.json). */
export interface Board {
  board: string;
  updated_at: number | null;
  age_ms: number | null;
  stale: boolean;
  stale_reason: string | null;
  behind_events: number | null;
  total: number;
  entries: BoardEntry[];
}

interface Guest {
  token: string;
  player: string;
  expires: number;
}

let guest: Guest | null = null;

/** The viewer's guest identity: kept for the tab, renewed a minute before it expires. */
export async function viewerToken(): Promise<string> {
  return (await viewer()).token;
}

export async function viewer(): Promise<Guest> {
  if (guest && guest.expires - Date.now() > 60_000) return guest;
  const stored = sessionStorage.getItem("grandstand.guest");
  if (stored) {
    const g = JSON.parse(stored) as Guest;
    if (g.expires - Date.now() > 60_000) return (guest = g);
  }
  const res = await fetch("/v1/auth/guest", { method: "POST" });
  if (!res.ok) throw new HttpError(res.status, "auth", "cannot get a viewer token");
  const body = (await res.json()) as { token: string; player: string; expires_at?: number };
  const payload = JSON.parse(atob(body.token.split(".")[0].replace(/-/g, "+").replace(/_/g, "/"))) as {
    exp?: number;
  };
  const expires = (payload.exp ?? body.expires_at ?? Date.now() / 1000 + 600) * 1000;
  guest = { token: body.token, player: body.player, expires };
  sessionStorage.setItem("grandstand.guest", JSON.stringify(guest));
  return guest;
}
