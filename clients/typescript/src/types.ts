// The viewer protocol (docs/architecture.md, "Viewer protocol"), as TypeScript types.

import type { components } from "./generated/openapi.js";

// The state a viewer holds is what the server documents (generated from /openapi.json, like
// the REST types); the stream's envelopes below are the protocol's own.

/** One player as viewers see it: positions in tenths of an arena unit, angle in degrees. */
export type PlayerView = components["schemas"]["PlayerView"];
export type Arena = components["schemas"]["Arena"];
export type SpectatorState = components["schemas"]["SpectatorState"];

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
