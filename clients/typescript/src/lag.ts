// How far behind the game the stream runs, without trusting the server's clock: every message
// carries a simulation tick, and ticks advance at a known rate. The smallest seen
// (arrival - tick time) is the stream at its freshest; how much later the latest message came
// than that is how far behind it is now. Clock offsets cancel out.

export class LagEstimator {
  private best: number | null = null;
  private latest: number | null = null;
  private bestAt = 0;

  /** The freshest baseline is forgotten after this long, so a path that got slower for good
   * (a new gateway) is not reported as behind forever. */
  constructor(private readonly forgetAfterMs = 60_000) {}

  observe(tick: number, tickHz: number, arrivedMs: number): void {
    if (!tickHz) return;
    const offset = arrivedMs - (tick * 1000) / tickHz;
    if (this.best === null || offset < this.best || arrivedMs - this.bestAt > this.forgetAfterMs) {
      this.best = offset;
      this.bestAt = arrivedMs;
    }
    this.latest = offset;
  }

  /** Milliseconds the latest message lagged behind the freshest seen. */
  behindMs(): number {
    if (this.best === null || this.latest === null) return 0;
    return Math.max(0, this.latest - this.best);
  }

  /** Where (in local ms) tick `tick` belongs on the freshest timeline, for interpolation. */
  localTimeOf(tick: number, tickHz: number): number | null {
    if (this.best === null || !tickHz) return null;
    return this.best + (tick * 1000) / tickHz;
  }

  reset(): void {
    this.best = null;
    this.latest = null;
  }
}
