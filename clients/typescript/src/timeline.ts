// A match recorded for replay: every message of a `from=start` stream kept in order, with the
// view kept at a keyframe every KEYFRAME_EVERY messages, so any tick can be shown by restarting
// from the keyframe before it and applying what follows (at most KEYFRAME_EVERY messages),
// without holding a view per message. Bounded: past `maxMessages` recording stops and
// `truncated` says so.

import { applyMessage } from "./feed.js";
import type { MatchView, StreamMessage } from "./types.js";

export const KEYFRAME_EVERY = 100;

export class MatchTimeline {
  private readonly messages: StreamMessage[] = [];
  /** The match tick after each message. */
  private readonly ticks: number[] = [];
  private readonly keyframes: { at: number; view: MatchView }[] = [];
  private head: MatchView | null = null;
  truncated = false;

  constructor(readonly maxMessages = 100_000) {}

  get length(): number {
    return this.messages.length;
  }

  get latest(): MatchView | null {
    return this.head;
  }

  get firstTick(): number | null {
    return this.ticks.length ? this.ticks[0] : null;
  }

  get lastTick(): number | null {
    return this.ticks.length ? this.ticks[this.ticks.length - 1] : null;
  }

  /** Records a message; false on a gap (the caller resumes from `latest`). */
  push(msg: StreamMessage): boolean {
    const r = applyMessage(this.head, msg);
    if (r.kind === "gap") return false;
    if (r.kind === "duplicate") return true;
    if (this.messages.length >= this.maxMessages) {
      this.truncated = true;
      return true;
    }
    this.head = r.view;
    const at = this.messages.length;
    this.messages.push(msg);
    this.ticks.push(r.view.state.tick);
    if (msg.type === "snapshot" || at % KEYFRAME_EVERY === 0) this.keyframes.push({ at, view: r.view });
    return true;
  }

  /** The view as it was at `tick` (after the last message at or before it): the keyframe
   * before it, moved forward. Any tick, in any order (a seek is just another call). */
  viewAt(tick: number): MatchView | null {
    const index = this.lastIndexAtOrBefore(tick);
    if (index < 0) return null;
    let k = this.keyframes.length - 1;
    while (k > 0 && this.keyframes[k].at > index) k--;
    const key = this.keyframes[k];
    if (!key || key.at > index) return null;
    let view = key.view;
    for (let i = key.at + 1; i <= index; i++) {
      const r = applyMessage(view, this.messages[i]);
      if (r.kind === "applied") view = r.view;
    }
    return view;
  }

  /** The messages after `fromTick` up to and including `toTick` (events to show while playing). */
  between(fromTick: number, toTick: number): StreamMessage[] {
    const start = this.lastIndexAtOrBefore(fromTick) + 1;
    const end = this.lastIndexAtOrBefore(toTick);
    return this.messages.slice(Math.max(0, start), end + 1);
  }

  private lastIndexAtOrBefore(tick: number): number {
    let lo = 0;
    let hi = this.ticks.length - 1;
    let found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (this.ticks[mid] <= tick) {
        found = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    return found;
  }
}
