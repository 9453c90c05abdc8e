// The arena, drawn every animation frame from the latest view: players interpolated about
// 100 ms behind, tracers for shots, names and health. No React state is touched here.

import { useEffect, useRef, type RefObject } from "react";
import { pageMetrics } from "../metrics";
import { renderHealth, startRenderReports } from "../renderHealth";
import type { LiveMatch } from "../useMatchStream";

export const INTERPOLATION_DELAY_MS = 100;
const SHOT_MS = 150;

function colour(id: string): string {
  // FNV-1a, so ids that differ only in their last characters still get far-apart hues.
  let h = 0x811c9dc5;
  for (let i = 0; i < id.length; i++) h = Math.imul(h ^ id.charCodeAt(i), 0x01000193) >>> 0;
  return `hsl(${(h >>> 8) % 360} 70% 58%)`;
}

export function ArenaCanvas({ live, small = false, label = "The arena: every player's position, live" }: { live: RefObject<LiveMatch | null>; small?: boolean; label?: string }) {
  const canvas = useRef<HTMLCanvasElement>(null);

  useEffect(() => {
    let raf = 0;
    let last = 0;
    const stopReports = startRenderReports();
    const draw = (now: number) => {
      raf = requestAnimationFrame(draw);
      const c = canvas.current;
      const m = live.current;
      const view = m?.stream.current;
      if (last) {
        pageMetrics.record("frameTimes", now - last);
        if (view) renderHealth.frame(now - last, m?.stream.status.behindMs ?? null);
      }
      last = now;
      if (!c || !m || !view) return;
      const dpr = window.devicePixelRatio || 1;
      const size = c.clientWidth;
      // Both sides: a canvas starts at 300 x 150, so a 300-pixel tile matches on width alone.
      if (c.width !== Math.round(size * dpr) || c.height !== Math.round(size * dpr)) {
        c.width = Math.round(size * dpr);
        c.height = Math.round(size * dpr);
      }
      const g = c.getContext("2d");
      if (!g) return;
      pageMetrics.firstFrame();
      const { arena } = view.state;
      const k = (size * dpr) / Math.max(arena.width, arena.height);
      g.setTransform(1, 0, 0, 1, 0, 0);
      g.fillStyle = "#10141c";
      g.fillRect(0, 0, c.width, c.height);
      g.setTransform(k, 0, 0, k, 0, 0);
      g.fillStyle = "#2a3140";
      for (const [x, y, w, h] of arena.obstacles) g.fillRect(x, y, w, h);

      const renderAt = Date.now() - INTERPOLATION_DELAY_MS;
      g.lineWidth = 12;
      for (const { t, shot } of m.shots) {
        const age = renderAt - t;
        if (age < 0 || age > SHOT_MS) continue;
        g.strokeStyle = shot.hit ? `rgba(255,90,90,${1 - age / SHOT_MS})` : `rgba(255,230,150,${1 - age / SHOT_MS})`;
        g.beginPath();
        g.moveTo(shot.x0, shot.y0);
        g.lineTo(shot.x1, shot.y1);
        g.stroke();
      }
      const r = 110;
      g.font = `${150}px system-ui, sans-serif`;
      g.textAlign = "center";
      for (const p of m.interpolator.at(renderAt)) {
        if (!p.alive) continue;
        g.fillStyle = colour(p.id);
        g.beginPath();
        g.arc(p.x, p.y, r, 0, Math.PI * 2);
        g.fill();
        const a = (p.angle * Math.PI) / 180;
        g.strokeStyle = "#fff";
        g.lineWidth = 20;
        g.beginPath();
        g.moveTo(p.x, p.y);
        g.lineTo(p.x + Math.cos(a) * r * 1.6, p.y + Math.sin(a) * r * 1.6);
        g.stroke();
        g.fillStyle = "#333";
        g.fillRect(p.x - 120, p.y - r - 60, 240, 30);
        g.fillStyle = p.view.hp > 30 ? "#4caf50" : "#e53935";
        g.fillRect(p.x - 120, p.y - r - 60, (240 * p.view.hp) / 100, 30);
        g.fillStyle = "#dde";
        g.fillText(p.view.name, p.x, p.y - r - 85);
      }
      // Every message applied before this frame is on screen now.
      if (m.undrawn.length) {
        const drawnAt = Date.now();
        for (const { published, event } of m.undrawn) {
          pageMetrics.record("tickToPixel", drawnAt - published);
          pageMetrics.record(event ? "tickToPixelEvents" : "tickToPixelState", drawnAt - published);
        }
        m.undrawn.length = 0;
      }
    };
    raf = requestAnimationFrame(draw);
    return () => {
      cancelAnimationFrame(raf);
      stopReports();
    };
  }, [live]);

  // The picture is named by its wrapper: a canvas given a role of its own reads to assistive
  // technology as a control.
  return (
    <div role="img" aria-label={label}>
      <canvas ref={canvas} className={small ? "arena small" : "arena"} data-testid="arena" aria-hidden="true" />
    </div>
  );
}
