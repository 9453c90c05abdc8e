// Feed format v2 (docs/architecture.md, "Feed format v2") turned back into the v1 shapes the
// rest of the client applies: players by small ids become players by player id, delta rows
// (changed fields only, positions as differences) become whole player views, angles in 256ths
// of a turn become degrees. Pure: the view a message applies to is passed in.

import type { MatchView, PlayerView, Shot, StreamMessage } from "./types.js";

type RosterEntry = { player: string; name: string; bot: boolean };
type Row = number[];

const X = 1, Y = 2, ANGLE = 4, HP = 8, ALIVE = 16, SCORE = 32, KILLS = 64, DEATHS = 128;

/** 256ths of a turn to degrees in -180..180, as v1 sends them. */
export const degrees = (a: number): number => {
  const d = Math.round((a * 360) / 256);
  return d > 180 ? d - 360 : d;
};

/** Remembers who is who in the current epoch, beyond the players in the state (a player who
 * joined but is not drawn yet). Starts over with every snapshot. */
export class V2Decoder {
  private extra = new Map<number, RosterEntry>();

  /** The v1 form of `raw` (a parsed v2 message), given the view it applies to. A message that
   * does not follow `view` (a duplicate, a gap) is returned with its envelope only: the caller's
   * version-line rules reject it before looking further. */
  decode(view: MatchView | null, raw: Record<string, unknown>): StreamMessage {
    const envelope = {
      match: String(raw.match),
      epoch: Number(raw.epoch),
      version: Number(raw.version),
      ...(raw.published_us !== undefined ? { published_us: Number(raw.published_us) } : {}),
    };
    if (raw.type === "snapshot") return this.snapshot(envelope, raw.state as Record<string, unknown>);
    const follows = view !== null && envelope.epoch === view.epoch && envelope.version === view.version + 1;
    if (!follows) return { ...envelope, type: raw.type === "event" ? "event" : "delta", kind: "" } as StreamMessage;
    return raw.type === "delta" ? this.delta(envelope, view, raw) : this.event(envelope, view, raw);
  }

  private snapshot(envelope: { match: string; epoch: number; version: number }, s: Record<string, unknown>): StreamMessage {
    this.extra.clear();
    const roster = new Map<number, RosterEntry>();
    for (const [id, player, name, bot] of (s.roster as [number, string, string, number][]) ?? []) {
      roster.set(id, { player, name, bot: bot !== 0 });
    }
    const players: Record<string, PlayerView> = {};
    for (const [id, x, y, a, hp, alive, score, kills, deaths] of (s.players as Row[]) ?? []) {
      const who = roster.get(id);
      if (!who) continue;
      players[who.player] = { id, name: who.name, bot: who.bot, x, y, angle: degrees(a), hp, alive: alive !== 0, score, kills, deaths };
    }
    const { roster: _roster, players: _players, ...rest } = s;
    return { ...envelope, type: "snapshot", state: { ...(rest as object), players } } as StreamMessage;
  }

  /** Who has id `id`: a player in the state, or one the roster named. */
  private who(view: MatchView, id: number): { player: string; view?: PlayerView; entry?: RosterEntry } | null {
    for (const [player, p] of Object.entries(view.state.players)) {
      if (p.id === id) return { player, view: p };
    }
    const entry = this.extra.get(id);
    return entry ? { player: entry.player, entry } : null;
  }

  private delta(envelope: { match: string; epoch: number; version: number }, view: MatchView, raw: Record<string, unknown>): StreamMessage {
    for (const [id, player, name, bot] of (raw.j as [number, string, string, number][]) ?? []) {
      this.extra.set(id, { player, name, bot: bot !== 0 });
    }
    const removed: string[] = [];
    for (const id of (raw.r as number[]) ?? []) {
      const w = this.who(view, id);
      if (w) removed.push(w.player);
    }
    const players: Record<string, PlayerView> = {};
    for (const row of (raw.p as Row[]) ?? []) {
      const [id, mask, ...values] = row;
      const w = this.who(view, id);
      if (!w) continue;
      const base: PlayerView = w.view ?? {
        id, name: w.entry?.name ?? w.player, bot: w.entry?.bot ?? false,
        x: 0, y: 0, angle: 0, hp: 0, alive: false, score: 0, kills: 0, deaths: 0,
      };
      const p: PlayerView = { ...base };
      let i = 0;
      const next = () => values[i++];
      if (mask & X) p.x = base.x + next();
      if (mask & Y) p.y = base.y + next();
      if (mask & ANGLE) p.angle = degrees(next());
      if (mask & HP) p.hp = next();
      if (mask & ALIVE) p.alive = next() !== 0;
      if (mask & SCORE) p.score = next();
      if (mask & KILLS) p.kills = next();
      if (mask & DEATHS) p.deaths = next();
      players[w.player] = p;
    }
    const shots: Shot[] = [];
    for (const [from, x0, y0, x1, y1, hit] of (raw.s as Row[]) ?? []) {
      shots.push({ from: this.who(view, from)?.player ?? String(from), x0, y0, x1, y1, hit: hit !== 0 });
    }
    return {
      ...envelope,
      type: "delta",
      tick: raw.t as number | undefined,
      ...(raw.status ? { status: raw.status as "live" | "ended" } : {}),
      players,
      removed,
      shots,
    };
  }

  private event(envelope: { match: string; epoch: number; version: number }, view: MatchView, raw: Record<string, unknown>): StreamMessage {
    const { type: _t, match: _m, epoch: _e, version: _v, published_us: _p, ...facts } = raw;
    const name = (ref: unknown) => (typeof ref === "number" ? this.who(view, ref)?.player ?? String(ref) : ref);
    if (facts.kind === "player_joined" && typeof facts.id === "number") {
      this.extra.set(facts.id, { player: String(facts.player), name: String(facts.name), bot: Boolean(facts.bot) });
    }
    if (facts.kind === "kill") {
      facts.killer = name(facts.killer);
      facts.victim = name(facts.victim);
    }
    if (facts.kind === "player_left") {
      facts.player = name(facts.id);
    }
    // No kind: a record the gateway could not read keeps its version with the envelope alone.
    return { ...envelope, type: "event", ...facts, kind: typeof facts.kind === "string" ? facts.kind : "" };
  }
}
