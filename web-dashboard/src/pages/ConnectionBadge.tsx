// Honest connection state, never a modal: live, behind by Xs, reconnecting, or paused with the
// age of what is on screen.

import type { StreamStatus } from "@grandstand/client";

const secs = (ms: number) => `${(ms / 1000).toFixed(ms < 10_000 ? 1 : 0)}s`;

/** The connection state, announced to screen readers as it changes. */
export function ConnectionBadge({ status }: { status: StreamStatus | null }) {
  return (
    <span role="status" aria-live="polite" className="status">
      <Badge status={status} />
    </span>
  );
}

function Badge({ status }: { status: StreamStatus | null }) {
  if (!status) return <span className="badge muted">connecting…</span>;
  const now = Date.now();
  const age = status.lastMessageAt ? now - status.lastMessageAt : null;
  const retry = status.retryAt ? Math.max(0, status.retryAt - now) : null;
  const delay = status.delayMs ? <span className="badge muted">broadcast delay {secs(status.delayMs)}</span> : null;
  switch (status.connection) {
    case "connecting":
      return <span className="badge muted" data-testid="connection">connecting…</span>;
    case "reconnecting":
      return (
        <span className="badge warn" data-testid="connection" data-state="reconnecting">
          reconnecting…{retry !== null && retry > 0 ? ` (retry in ${secs(retry)})` : ""}
        </span>
      );
    case "paused":
      return (
        <span className="badge bad" data-testid="connection" data-state="paused">
          live updates paused{age !== null ? ` · showing the match as of ${secs(age)} ago` : ""}
          {retry !== null ? ` · retry in ${secs(retry)}` : ""}
        </span>
      );
    case "live": {
      // A stream that stopped talking is behind too, even if nothing says so yet.
      const silent = age !== null && age > 2000 ? age : 0;
      const behind = Math.max(status.behindMs, silent);
      return (
        <>
          <span className="badge ok" data-testid="connection" data-state="live">
            ● live
          </span>
          {behind > 1500 && (
            <span className="badge warn" data-testid="behind">
              behind by {secs(behind)}
            </span>
          )}
          {delay}
        </>
      );
    }
  }
}
