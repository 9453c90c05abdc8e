// Reconnect timing: 1 s, 2 s, 4 s ... 30 s, each with +-20% jitter so a crowd dropped at once
// does not come back at once; a server's retry-after hint is a floor.

export const BACKOFF_BASE_MS = 1000;
export const BACKOFF_CAP_MS = 30_000;

export function backoffDelay(attempt: number, random: () => number, retryAfterMs = 0): number {
  const base = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** Math.max(0, attempt));
  const jittered = base * (0.8 + 0.4 * random());
  return Math.round(Math.min(BACKOFF_CAP_MS, Math.max(jittered, retryAfterMs)));
}

/** The retry-after hint of a gateway close reason ("...; retry-after=1200ms"). */
export function retryAfterFromReason(reason: string): number {
  const m = /retry-after=(\d+)ms/.exec(reason);
  return m ? Number(m[1]) : 0;
}
