// Applying stream messages to a match view: pure, so every rule of the contract is unit tested.

import type { MatchView, StreamMessage } from "./types.js";

export type Applied =
  /** The view moved to the message's version (a snapshot replaces it outright). */
  | { kind: "applied"; view: MatchView }
  /** Old news: a version we already have (a replay overlapping the cold load). */
  | { kind: "duplicate" }
  /** A version is missing, or a new epoch began without a snapshot: resume from `since`. */
  | { kind: "gap"; expected: string; got: string };

export const position = (epoch: number, version: number): string => `${epoch}:${version}`;

/** Parses "epoch:version" strictly, like the gateway does. */
export function parsePosition(s: string): { epoch: number; version: number } | null {
  const m = /^(\d{1,15}):(\d{1,15})$/.exec(s);
  return m ? { epoch: Number(m[1]), version: Number(m[2]) } : null;
}

export function applyMessage(view: MatchView | null, msg: StreamMessage): Applied {
  if (msg.type === "snapshot") {
    // Never back in time: a snapshot of an older epoch (a lagging gateway) or an older
    // version of this one is old news.
    if (view && (msg.epoch < view.epoch || (msg.epoch === view.epoch && msg.version < view.version))) {
      return { kind: "duplicate" };
    }
    return {
      kind: "applied",
      view: { match: msg.match, epoch: msg.epoch, version: msg.version, state: msg.state },
    };
  }
  if (!view) {
    return { kind: "gap", expected: "a snapshot", got: position(msg.epoch, msg.version) };
  }
  if (msg.epoch < view.epoch || (msg.epoch === view.epoch && msg.version <= view.version)) {
    return { kind: "duplicate" };
  }
  if (msg.epoch !== view.epoch || msg.version !== view.version + 1) {
    return {
      kind: "gap",
      expected: position(view.epoch, view.version + 1),
      got: position(msg.epoch, msg.version),
    };
  }
  let state = view.state;
  if (msg.type === "delta") {
    const players = { ...state.players };
    for (const id of msg.removed ?? []) delete players[id];
    for (const [id, p] of Object.entries(msg.players ?? {})) players[id] = p;
    state = {
      ...state,
      players,
      tick: msg.tick ?? state.tick,
      status: msg.status ?? state.status,
    };
  }
  return { kind: "applied", view: { ...view, version: msg.version, state } };
}
