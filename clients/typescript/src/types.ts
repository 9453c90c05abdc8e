// The viewer protocol (docs/architecture.md, "Viewer protocol"), as TypeScript types.

export interface PlayerView {
  /** The player's small id within the epoch (what feed v2 names players by). */
  id?: number;
  name: string;
  x: number; // tenths of an arena unit
  y: number;
  angle: number; // degrees
  hp: number;
  alive: boolean;
  score: number;
  kills: number;
  deaths: number;
  bot: boolean;
}

export interface Arena {
  width: number;
  height: number;
  obstacles: [number, number, number, number][];
}

export interface SpectatorState {
  region: string;
  status: "live" | "ended";
  tick: number;
  arena: Arena;
  players: Record<string, PlayerView>;
  broadcast_delay_ms?: number;
  tick_hz?: number;
}

export interface Shot {
  from: string;
  x0: number;
  y0: number;
  x1: number;
  y1: number;
  hit: boolean;
}

interface Envelope {
  match: string;
  epoch: number;
  version: number;
  /** Only when the gateway runs with --stamp-publish-time (a debugging aid). */
  published_us?: number;
}

export interface SnapshotMessage extends Envelope {
  type: "snapshot";
  state: SpectatorState;
}

export interface DeltaMessage extends Envelope {
  type: "delta";
  tick?: number;
  status?: "live" | "ended";
  players?: Record<string, PlayerView>;
  removed?: string[];
  shots?: Shot[];
}

export interface EventMessage extends Envelope {
  type: "event";
  kind: string;
  at_ms?: number;
  [field: string]: unknown;
}

export type StreamMessage = SnapshotMessage | DeltaMessage | EventMessage;

/** A match as a viewer holds it: the state at one point of its version line. */
export interface MatchView {
  match: string;
  epoch: number;
  version: number;
  state: SpectatorState;
}
