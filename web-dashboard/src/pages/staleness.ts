import type { Board } from "../api";

/**
 * What the stale badge of a board says: the server's reason and how old the data is, or
 * nothing while the board is fresh.
 */
export function staleText(board: Pick<Board, "stale" | "stale_reason" | "age_ms"> | undefined): string | null {
  if (!board?.stale) return null;
  const reason = board.stale_reason?.trim() || "stale";
  const age = board.age_ms == null ? "" : ` · data ${formatAge(board.age_ms)} old`;
  return `${reason}${age}`;
}

function formatAge(ms: number): string {
  const s = Math.round(ms / 1000);
  if (s < 120) return `${s} s`;
  const m = Math.round(s / 60);
  return m < 120 ? `${m} min` : `${Math.round(m / 60)} h`;
}

/**
 * Names as a board shows them: a name several players share (bots of different matches are
 * all "Bot 8") is qualified with the start of each one's player id, which names its match.
 */
export function displayNames(entries: { player: string; name: string }[]): Map<string, string> {
  const count = new Map<string, number>();
  for (const e of entries) count.set(e.name, (count.get(e.name) ?? 0) + 1);
  const out = new Map<string, string>();
  for (const e of entries) {
    const shared = (count.get(e.name) ?? 0) > 1;
    out.set(e.player, shared ? `${e.name} (${qualifier(e.player)})` : e.name);
  }
  return out;
}

/** `us-8dd9b854-bot12` -> `us-8dd9`: the region and the start of the match id. */
function qualifier(player: string): string {
  const parts = player.split("-");
  if (parts.length >= 3) return `${parts[0]}-${parts[1].slice(0, 4)}`;
  return player.length > 10 ? `${player.slice(0, 10)}…` : player;
}
