// Players drawn a little in the past (100 ms by default), between the two samples around the
// render time, so 10 Hz updates look like smooth motion. Respawns and other long jumps snap
// instead of sliding across the arena.

import type { PlayerView } from "@grandstand/client";

export interface Sample {
  t: number;
  x: number;
  y: number;
  angle: number;
  alive: boolean;
}

export interface Drawn extends Sample {
  id: string;
  view: PlayerView;
}

/** Moves longer than this (tenths of a unit) in one step are teleports: they snap. */
export const SNAP_DISTANCE = 1500;
const KEEP = 8;

function lerpAngle(a: number, b: number, f: number): number {
  const d = ((((b - a) % 360) + 540) % 360) - 180;
  return a + d * f;
}

export function between(a: Sample, b: Sample, t: number): Sample {
  if (t >= b.t) return b;
  if (t <= a.t) return a;
  const snap = a.alive !== b.alive || Math.hypot(b.x - a.x, b.y - a.y) > SNAP_DISTANCE;
  if (snap) return a;
  const f = (t - a.t) / (b.t - a.t);
  return {
    t,
    x: a.x + (b.x - a.x) * f,
    y: a.y + (b.y - a.y) * f,
    angle: lerpAngle(a.angle, b.angle, f),
    alive: b.alive,
  };
}

export class Interpolator {
  private tracks = new Map<string, { samples: Sample[]; view: PlayerView }>();

  /** Records every player's position at time `t` (the time of the state's tick). */
  push(t: number, players: Record<string, PlayerView>): void {
    for (const id of this.tracks.keys()) {
      if (!(id in players)) this.tracks.delete(id);
    }
    for (const [id, view] of Object.entries(players)) {
      let track = this.tracks.get(id);
      if (!track) {
        track = { samples: [], view };
        this.tracks.set(id, track);
      }
      track.view = view;
      const s = track.samples;
      const sample = { t, x: view.x, y: view.y, angle: view.angle, alive: view.alive };
      if (s.length && s[s.length - 1].t >= t) s[s.length - 1] = sample;
      else s.push(sample);
      if (s.length > KEEP) s.shift();
    }
  }

  /** Drops every sample (a new snapshot or epoch: positions restart, no sliding). */
  clear(): void {
    this.tracks.clear();
  }

  at(t: number): Drawn[] {
    const out: Drawn[] = [];
    for (const [id, { samples, view }] of this.tracks) {
      let s = samples[0];
      for (let i = 1; i < samples.length; i++) {
        if (samples[i].t >= t) {
          s = between(samples[i - 1], samples[i], t);
          break;
        }
        s = samples[i];
      }
      if (s) out.push({ ...s, id, view });
    }
    return out;
  }
}
