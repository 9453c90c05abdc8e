import { useEffect, useState } from "react";

/** How old shown data is, once it is old enough to matter (or its source is failing). */
export function Age({ updatedAt, failing, staleAfterMs = 5000 }: { updatedAt: number; failing?: boolean; staleAfterMs?: number }) {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const t = setInterval(() => setNow(Date.now()), 1000);
    return () => clearInterval(t);
  }, []);
  if (!updatedAt) return null;
  const age = now - updatedAt;
  if (!failing && age < staleAfterMs) return null;
  return (
    <span className="badge warn" data-testid="stale">
      {failing ? "updates failing · " : ""}as of {Math.round(age / 1000)}s ago
    </span>
  );
}
