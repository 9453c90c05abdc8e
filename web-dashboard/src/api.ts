// HTTP data for the pages (TanStack Query does caching and refetching) and the viewer's token.
// Requests and their types come from @grandstand/client, whose types are generated from the
// server's OpenAPI document.

import { GrandstandApi, type Guest } from "@grandstand/client";

export { ApiError } from "@grandstand/client";
export type { Board, BoardEntry, MatchListing, PlayerStats } from "@grandstand/client";

/** The page's own origin. */
export const api = new GrandstandApi();

interface StoredGuest {
  token: string;
  player: string;
  expires: number;
}

let guest: StoredGuest | null = null;

/** The viewer's guest identity: kept for the tab, renewed a minute before it expires. */
export async function viewerToken(): Promise<string> {
  return (await viewer()).token;
}

export async function viewer(): Promise<StoredGuest> {
  if (guest && guest.expires - Date.now() > 60_000) return guest;
  const stored = sessionStorage.getItem("grandstand.guest");
  if (stored) {
    const g = JSON.parse(stored) as StoredGuest;
    if (g.expires - Date.now() > 60_000) return (guest = g);
  }
  const body: Guest = await api.guest();
  guest = { token: body.token, player: body.player, expires: expiresAt(body) };
  sessionStorage.setItem("grandstand.guest", JSON.stringify(guest));
  return guest;
}

/** When a token expires (ms): its own `exp` claim, else what the server said. */
function expiresAt(body: Guest): number {
  try {
    const payload = JSON.parse(atob(body.token.split(".")[0].replace(/-/g, "+").replace(/_/g, "/"))) as { exp?: number };
    if (payload.exp) return payload.exp * 1000;
  } catch {
    // not a token we can read: trust the server's answer
  }
  return (body.expires_at ?? Date.now() / 1000 + 600) * 1000;
}
