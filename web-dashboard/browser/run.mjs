// The dashboard in a real headless Chromium against a running Grandstand (BASE), through a TCP
// proxy this script controls, so it can cut the viewer's connection like a network would.
// Writes screenshots and measurements to ARTIFACTS; exits non-zero on the first failed check.

import { execSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import http, { createServer } from "node:http";
import net from "node:net";
import { chromium } from "playwright-core";

const BASE = process.env.BASE ?? "http://127.0.0.1:8080";
const ARTIFACTS = process.env.ARTIFACTS ?? "test-artifacts";
const MEASURE_MS = Number(process.env.MEASURE_MS ?? 10_000);
mkdirSync(ARTIFACTS, { recursive: true });

function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
  console.log(`ok - ${what}`);
}

function percentile(xs, p) {
  if (!xs.length) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
}

const summary = (xs) => ({
  n: xs.length,
  p50: percentile(xs, 50),
  p95: percentile(xs, 95),
  p99: percentile(xs, 99),
  max: xs.length ? Math.max(...xs) : null,
});

/** A proxy that can drop every connection and refuse new ones, then let them through again. */
function startProxy(target) {
  const url = new URL(target);
  const sockets = new Set();
  let blocked = false;
  const server = net.createServer((client) => {
    if (blocked) return client.destroy();
    const upstream = net.connect(Number(url.port), url.hostname);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => {});
    }
    client.pipe(upstream);
    upstream.pipe(client);
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
  });
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () =>
      resolve({
        url: `http://127.0.0.1:${server.address().port}`,
        block() {
          blocked = true;
          for (const s of sockets) s.destroy();
        },
        unblock() {
          blocked = false;
        },
        close: () => server.close(),
      }),
    ),
  );
}

/** Versions must be consecutive within an epoch; a snapshot may replace any run of them. */
function versionLineHolds(lines) {
  let last = null;
  for (const line of lines) {
    const [pos, type] = line.split(" ");
    const [epoch, version] = pos.split(":").map(Number);
    if (last && type !== "snapshot") {
      if (epoch !== last.epoch || version !== last.version + 1) return `${last.epoch}:${last.version} -> ${line}`;
    }
    last = { epoch, version };
  }
  return null;
}

const executablePath = process.env.CHROMIUM ?? execSync("command -v chromium || command -v chromium-browser").toString().trim();
const proxy = await startProxy(BASE);
const browser = await chromium.launch({
  executablePath,
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
const results = { base: BASE, axe: {} };
const axeSource = readFileSync(new URL("../node_modules/axe-core/axe.min.js", import.meta.url), "utf8");

/** axe-core on the page as it is: no serious or critical violation; all of them recorded. */
async function axeCheck(page, name) {
  await page.addScriptTag({ content: axeSource });
  const found = await page.evaluate(async () =>
    (await window.axe.run(document, { resultTypes: ["violations"] })).violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.length })),
  );
  results.axe[name] = found;
  const bad = found.filter((v) => v.impact === "serious" || v.impact === "critical");
  check(bad.length === 0, `axe on ${name}: no serious or critical violation (all: ${JSON.stringify(found)})`);
}
let outage = false;
const consoleErrors = [];
const outageErrors = [];
try {
  // A viewer's page keeps no measurements and exposes none.
  const plain = await browser.newPage();
  await plain.goto(`${proxy.url}/`);
  await plain.waitForSelector("[data-testid=matches]", { timeout: 20_000 });
  const exposed = await plain.evaluate(() => typeof window.__grandstand);
  check(exposed === "undefined", `no test instrumentation in a viewer's page (window.__grandstand: ${exposed})`);
  await plain.close();

  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  // The measurements below are read from the page's instrumentation, switched on for it.
  await page.addInitScript(() => localStorage.setItem("grandstand.instrument", "1"));
  page.on("console", (m) => {
    if (m.type() === "error") (outage ? outageErrors : consoleErrors).push(m.text());
  });
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
  page.on("response", (r) => {
    if (r.status() >= 400 && !outage) consoleErrors.push(`${r.status()} ${r.url()}`);
  });

  // Cold loads: a new browser profile each time (nothing cached), straight to a live match;
  // the time from navigation to the first arena frame drawn with the match's data.
  const someLive = (await (await fetch(`${BASE}/v1/matches`)).json()).matches.find((m) => m.status === "live");
  const coldLoads = [];
  for (let i = 0; i < 5; i++) {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const cold = await ctx.newPage();
    await cold.addInitScript(() => localStorage.setItem("grandstand.instrument", "1"));
    await cold.goto(`${proxy.url}/#/match/${encodeURIComponent(someLive.id)}`);
    await cold.waitForFunction(() => window.__grandstand?.firstFrameMs != null, null, { timeout: 20_000 });
    coldLoads.push(await cold.evaluate(() => window.__grandstand.firstFrameMs));
    await ctx.close();
  }
  results.firstLiveFrameMs = summary(coldLoads);
  check(coldLoads.length === 5, `time to the first live frame on a cold load measured (${coldLoads.map(Math.round).join(", ")} ms)`);

  // The bundle as served: each asset's bytes without compression, gzip and brotli.
  const rawSize = (path, encoding) =>
    new Promise((resolve, reject) => {
      const u = new URL(path, BASE);
      http
        .get(u, { headers: { "accept-encoding": encoding } }, (res) => {
          let n = 0;
          res.on("data", (c) => (n += c.length));
          res.on("end", () => resolve({ bytes: n, encoding: res.headers["content-encoding"] ?? "identity", cache: res.headers["cache-control"] }));
        })
        .on("error", reject);
    });
  const html = await (await fetch(`${BASE}/`)).text();
  const assets = [...html.matchAll(/(?:src|href)="(\/assets\/[^"]+)"/g)].map((m) => m[1]);
  results.bundle = {};
  for (const asset of assets) {
    results.bundle[asset] = {
      identity: await rawSize(asset, "identity"),
      gzip: await rawSize(asset, "gzip"),
      br: await rawSize(asset, "br"),
    };
  }
  const js = Object.entries(results.bundle).find(([k]) => k.endsWith(".js"))[1];
  check(js.br.encoding === "br" && js.gzip.encoding === "gzip" && js.br.bytes < js.identity.bytes / 2, `the bundle is served precompressed (${js.identity.bytes} B, gzip ${js.gzip.bytes} B, brotli ${js.br.bytes} B)`);

  // The match list.
  await page.goto(`${proxy.url}/`);
  await page.waitForSelector('[data-testid=matches] tr[data-status=live] a', { timeout: 20_000 });
  const live = await page.locator('[data-testid=matches] tr[data-status=live]').count();
  check(live >= 1, `the match list shows live matches (${live})`);
  await page.screenshot({ path: `${ARTIFACTS}/01-matches.png` });
  await axeCheck(page, "match list");
  check((await page.title()).startsWith("Live matches"), `the match list has its own title (${await page.title()})`);

  // A live match: the arena moves.
  await page.locator('[data-testid=matches] tr[data-status=live] a').first().click();
  await page.waitForSelector('[data-testid=connection][data-state=live]', { timeout: 20_000 });
  await page.waitForFunction(() => document.querySelectorAll('[data-testid=scoreboard] tbody tr').length > 0);
  const arena = page.locator('[data-testid=arena]');
  await page.waitForTimeout(500);
  const a = await arena.screenshot({ path: `${ARTIFACTS}/02-arena-a.png` });
  await page.waitForTimeout(700);
  const b = await arena.screenshot({ path: `${ARTIFACTS}/03-arena-b.png` });
  check(!a.equals(b), "players move: two screenshots of the arena differ");
  await page.screenshot({ path: `${ARTIFACTS}/04-match.png` });
  await axeCheck(page, "match");
  const liveRegion = await page.locator("[role=status][aria-live=polite] [data-testid=connection]").count();
  check(liveRegion === 1, "the connection state is a live region");
  check((await page.locator("[role=log][data-testid=feed]").count()) === 1, "the kill feed is a log");

  // Measure while streaming.
  await page.evaluate(() => {
    window.__grandstand.frameTimes.length = 0;
    window.__grandstand.tickToPixel.length = 0;
    (window.__grandstand.tickToPixelState ?? []).length = 0;
    (window.__grandstand.tickToPixelEvents ?? []).length = 0;
  });
  await page.waitForTimeout(MEASURE_MS);
  const streaming = await page.evaluate(() => ({
    frameTimes: [...window.__grandstand.frameTimes],
    tickToPixel: [...window.__grandstand.tickToPixel],
    tickToPixelState: [...(window.__grandstand.tickToPixelState ?? [])],
    tickToPixelEvents: [...(window.__grandstand.tickToPixelEvents ?? [])],
  }));
  results.tickToPixelState = summary(streaming.tickToPixelState);
  results.tickToPixelEvents = summary(streaming.tickToPixelEvents);
  results.frameTimesWhileStreaming = summary(streaming.frameTimes);
  results.tickToPixel = summary(streaming.tickToPixel);
  check(streaming.tickToPixel.length > 0, `tick-to-pixel measured (${streaming.tickToPixel.length} messages)`);

  // Cut the connection: the page says so, then recovers without a gap.
  outage = true;
  proxy.block();
  await page.waitForSelector('[data-testid=connection][data-state=reconnecting], [data-testid=connection][data-state=paused]', { timeout: 10_000 });
  await page.screenshot({ path: `${ARTIFACTS}/05-reconnecting.png` });
  check(true, "the reconnecting indicator shows while the gateway is unreachable");
  await page.waitForTimeout(3000);
  const cutAt = Date.now();
  proxy.unblock();
  await page.waitForSelector('[data-testid=connection][data-state=live]', { timeout: 30_000 });
  results.recoveryMs = Date.now() - cutAt;
  outage = false;
  await page.waitForTimeout(1000);
  const after = await page.evaluate(() => ({ gaps: window.__grandstand.gaps, versions: [...window.__grandstand.versions] }));
  check(after.gaps === 0, "no version gap seen by the stream client");
  const broken = versionLineHolds(after.versions);
  check(broken === null, `the version line is unbroken across the outage${broken ? ` (${broken})` : ""}`);
  await page.screenshot({ path: `${ARTIFACTS}/06-recovered.png` });

  // The same match over SSE.
  const matchUrl = page.url();
  await page.goto(`${matchUrl}?transport=sse`);
  await page.waitForSelector('[data-testid=connection][data-state=live]', { timeout: 20_000 });
  check(true, "the match streams over SSE too");

  // The browser's own WebSocket negotiates permessage-deflate for feed v2, and the first
  // message (a compressed frame, inflated by the browser) is a v2 snapshot with its roster.
  const liveMatch = (await (await fetch(`${BASE}/v1/matches`)).json()).matches.find((m) => m.status === "live");
  const v2 = await page.evaluate(async ({ id }) => {
    const { token } = await (await fetch("/v1/auth/guest", { method: "POST" })).json();
    const url = `${location.origin.replace(/^http/, "ws")}/v1/matches/${id}/stream?format=v2&token=${token}`;
    return await new Promise((done) => {
      const ws = new WebSocket(url, "grandstand.v2");
      ws.onmessage = (ev) => {
        const m = JSON.parse(ev.data);
        done({ extensions: ws.extensions, protocol: ws.protocol, type: m.type, roster: Array.isArray(m.state?.roster) });
        ws.close();
      };
      ws.onerror = () => done({ error: true });
    });
  }, { id: liveMatch.id });
  results.v2WebSocket = v2;
  check(v2.extensions?.startsWith("permessage-deflate"), `Chromium negotiated permessage-deflate (${v2.extensions})`);
  check(v2.protocol === "grandstand.v2" && v2.type === "snapshot" && v2.roster, "feed v2 over the grandstand.v2 subprotocol, starting with a snapshot and its roster");

  // Cross-origin, as a broadcaster's overlay page loaded from its own origin: the allowed
  // origin (--cors-origins) fetches, streams over SSE and opens a WebSocket; another origin
  // (the proxy's) is refused all three.
  const overlayPort = Number(process.env.OVERLAY_PORT ?? 0);
  if (overlayPort) {
    const overlay = createServer((_, res) => {
      res.writeHead(200, { "content-type": "text/html" });
      res.end("<!doctype html><title>overlay</title><p>overlay</p>");
    });
    await new Promise((r) => overlay.listen(overlayPort, "127.0.0.1", r));
    const tok = (await (await fetch(`${BASE}/v1/auth/guest`, { method: "POST" })).json()).token;
    const crossOrigin = ({ base, id, tok }) =>
      (async () => {
        const out = {};
        try {
          out.fetch = (await fetch(`${base}/v1/matches/${id}/snapshot`)).status;
        } catch (e) {
          out.fetch = `refused: ${e.message}`;
        }
        out.sse = await new Promise((done) => {
          const es = new EventSource(`${base}/v1/matches/${id}/stream?token=${tok}`);
          es.addEventListener("snapshot", () => (es.close(), done("snapshot")));
          es.onerror = () => (es.close(), done("error"));
        });
        out.ws = await new Promise((done) => {
          const ws = new WebSocket(`${base.replace(/^http/, "ws")}/v1/matches/${id}/stream?token=${tok}`);
          ws.onopen = () => (ws.close(), done("open"));
          ws.onerror = () => done("error");
        });
        return out;
      })();
    await page.goto(`http://127.0.0.1:${overlayPort}/`);
    const allowed = await page.evaluate(crossOrigin, { base: BASE, id: liveMatch.id, tok });
    results.crossOriginAllowed = allowed;
    check(allowed.fetch === 200 && allowed.sse === "snapshot" && allowed.ws === "open", `an allowed origin fetches, streams over SSE and opens a WebSocket (${JSON.stringify(allowed)})`);
    await page.goto(`${proxy.url}/`);
    consoleErrors.length = 0;
    const refused = await page.evaluate(crossOrigin, { base: BASE, id: liveMatch.id, tok });
    consoleErrors.length = 0; // the browser logs the refusals it was asked to provoke
    results.crossOriginRefused = refused;
    check(String(refused.fetch).startsWith("refused") && refused.sse === "error" && refused.ws === "error", `another origin is refused all three (${JSON.stringify(refused)})`);
    overlay.close();
  }

  // Leaderboards, with someone's own row pinned.
  const board = await (await fetch(`${BASE}/v1/leaderboards/global?limit=20`)).json();
  check(board.entries.length > 0, "the global board has entries");
  const me = board.entries[Math.min(board.entries.length - 1, 3)];
  await page.goto(`${proxy.url}/#/leaderboards?board=global&me=${encodeURIComponent(me.player)}`);
  await page.waitForFunction(() => document.querySelectorAll('[data-testid=top] .board-row').length > 0, null, { timeout: 20_000 });
  await page.waitForFunction(() => document.querySelector('[data-testid=pinned] .board-row.me') !== null, null, { timeout: 20_000 });
  const pinned = await page.locator('[data-testid=pinned]').innerText();
  check(pinned.includes("(you)") && pinned.includes(me.name), `the viewer's own row is pinned: ${pinned.replace(/\s+/g, " ")}`);
  await page.screenshot({ path: `${ARTIFACTS}/07-leaderboards.png` });
  await axeCheck(page, "leaderboards");
  const rowcount = await page.locator("[data-testid=top][role=table]").getAttribute("aria-rowcount");
  check(Number(rowcount) === board.entries.length || Number(rowcount) > 0, `the board is a table with its row count (${rowcount})`);
  // Every name on the board is told apart (bots of different matches share their names).
  const shown = await page.locator("[data-testid=top] .board-row a").allInnerTexts();
  check(new Set(shown).size === shown.length, `every name on the board is distinct (${shown.length} rows)`);

  // As a guest, on no board yet: one line saying so, words where "Around you" would be, and
  // no failed request (the console check at the end counts every 4xx).
  await page.goto(`${proxy.url}/#/leaderboards?board=global`);
  await page.waitForSelector("[data-testid=around-empty]", { timeout: 20_000 });
  const note = page.locator("[data-testid=pinned] .pinned-note");
  const noteBox = await note.boundingBox();
  const noteText = await note.innerText();
  check(noteText.includes("not ranked") && noteBox.height < 40, `a guest's pinned box is one line saying so (${noteBox.height}px: ${noteText})`);
  const emptyText = await page.locator("[data-testid=around-empty]").innerText();
  check(emptyText.includes("not on this board"), `"Around you" says why it is empty (${emptyText})`);
  await page.screenshot({ path: `${ARTIFACTS}/07b-leaderboards-guest.png` });
  await axeCheck(page, "leaderboards as a guest");

  // The director's grid: every live match drawn at once.
  await page.goto(`${proxy.url}/#/director`);
  await page.waitForFunction(() => document.querySelectorAll("[data-testid=director-tile] [data-testid=connection][data-state=live]").length >= 2, null, { timeout: 20_000 });
  await page.waitForFunction(() => [...document.querySelectorAll("[data-testid=tile-summary]")].every((e) => e.textContent.includes("players")), null, { timeout: 20_000 });
  const tiles = await page.locator("[data-testid=director-tile]").count();
  check(tiles >= 2, `the director grid shows every live match, each live (${tiles} tiles)`);
  const tileCanvases = await page.evaluate(() => [...document.querySelectorAll("[data-testid=director-tile] canvas")].map((c) => [c.clientWidth, c.clientHeight, c.width, c.height]));
  check(tileCanvases.every(([cw, ch, w, h]) => cw === ch && w === h && w >= cw), `each tile draws a square arena at its displayed size (${JSON.stringify(tileCanvases)})`);
  check((await page.title()).startsWith("Director"), "the director page has its own title");
  await page.screenshot({ path: `${ARTIFACTS}/10-director.png` });
  await axeCheck(page, "director");

  // The broadcaster's overlay: its own path, no page chrome, a transparent background.
  await page.goto(`${proxy.url}/overlay/match/${encodeURIComponent(liveMatch.id)}`);
  await page.waitForFunction(() => document.querySelectorAll("[data-testid=overlay-board] tr").length > 0, null, { timeout: 20_000 });
  const look = await page.evaluate(() => ({
    html: getComputedStyle(document.documentElement).backgroundColor,
    body: getComputedStyle(document.body).backgroundColor,
    header: document.querySelectorAll("header").length,
    rows: document.querySelectorAll("[data-testid=overlay-board] tr").length,
  }));
  results.overlay = look;
  check(look.html === "rgba(0, 0, 0, 0)" && look.body === "rgba(0, 0, 0, 0)" && look.header === 0, `the overlay is transparent and chrome-free (${JSON.stringify(look)})`);
  check(look.rows > 0 && look.rows <= 5, `the overlay shows the top five (${look.rows} rows)`);
  await page.screenshot({ path: `${ARTIFACTS}/11-overlay.png`, omitBackground: true });
  await axeCheck(page, "overlay");

  // A replay: the match from its first keyframe, played back and seekable.
  await page.goto(`${proxy.url}/#/replay/${encodeURIComponent(liveMatch.id)}`);
  await page.waitForFunction(() => /version \d+/.test(document.querySelector("[data-testid=replay-position]")?.textContent ?? ""), null, { timeout: 20_000 });
  const replayArena = page.locator("[data-testid=arena]");
  await page.waitForTimeout(600);
  const r1 = await replayArena.screenshot();
  await page.waitForTimeout(900);
  const r2 = await replayArena.screenshot();
  check(!r1.equals(r2), "the replay plays: two screenshots of its arena differ");
  const tickOf = async () => Number((await page.locator("[data-testid=replay-position]").innerText()).match(/tick (\d+)/)[1]);
  const before = await tickOf();
  const seek = page.locator("[data-testid=replay-seek]");
  const min = Number(await seek.getAttribute("min"));
  await page.locator("[data-testid=replay-play]").click(); // pause, so the position stays put
  await seek.evaluate((el, v) => {
    Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, "value").set.call(el, String(v));
    el.dispatchEvent(new Event("input", { bubbles: true }));
  }, min);
  await page.waitForFunction((m) => Number(document.querySelector("[data-testid=replay-position]").textContent.match(/tick (\d+)/)[1]) <= m + 1, min, { timeout: 5000 });
  const afterSeek = await tickOf();
  const clockText = await page.locator("[data-testid=replay-clock]").innerText();
  results.replay = { before, min, afterSeek, clock: clockText };
  check(afterSeek < before && afterSeek <= min + 1 && clockText.startsWith("0:00"), `seeking back to the first keyframe shows its tick (${before} -> ${afterSeek}, ${clockText})`);
  await page.screenshot({ path: `${ARTIFACTS}/12-replay.png` });
  await axeCheck(page, "replay");

  // A page that throws is caught: it says so, and the next route renders normally.
  await page.goto(`${proxy.url}/#/bench/crash`);
  await page.waitForSelector("[role=alert][data-testid=page-error]", { timeout: 10_000 });
  check((await page.locator("[data-testid=page-error]").innerText()).includes("on purpose"), "a failing page shows its error instead of a blank screen");
  await page.locator("[data-testid=page-error] a").click();
  await page.waitForSelector("[data-testid=matches] tr[data-status=live]", { timeout: 10_000 });
  check(true, "after a failed page the next route renders");
  // React reports the error it caught; that one was provoked.
  for (let i = consoleErrors.length - 1; i >= 0; i--) if (consoleErrors[i].includes("on purpose")) consoleErrors.splice(i, 1);

  // A phone: one column, nothing wider than the screen.
  await page.setViewportSize({ width: 390, height: 844 });
  for (const [name, route] of [["leaderboards", "#/leaderboards?board=global"], ["match", `#/match/${liveMatch.id}`], ["match list", "#/"]]) {
    await page.goto(`${proxy.url}/${route}`);
    await page.waitForTimeout(800);
    const widths = await page.evaluate(() => ({ content: document.documentElement.scrollWidth, screen: window.innerWidth }));
    check(widths.content <= widths.screen, `${name} fits a phone's width (${widths.content} px of ${widths.screen})`);
    await page.screenshot({ path: `${ARTIFACTS}/09-phone-${name.replace(/ /g, "-")}.png` });
  }
  await page.setViewportSize({ width: 1280, height: 900 });

  // Scrolling 10,000 rows.
  await page.goto(`${proxy.url}/#/bench/board?rows=10000`);
  await page.waitForSelector('[data-testid=big-board] .board-row');
  const scroll = await page.evaluate(async () => {
    const el = document.querySelector('[data-testid=big-board]');
    const frames = [];
    let last = performance.now();
    const rowsInDom = [];
    await new Promise((done) => {
      const start = performance.now();
      const step = (now) => {
        frames.push(now - last);
        last = now;
        const f = Math.min(1, (now - start) / 4000);
        el.scrollTop = f * (el.scrollHeight - el.clientHeight);
        rowsInDom.push(el.querySelectorAll('.board-row').length);
        if (f < 1) requestAnimationFrame(step);
        else done();
      };
      requestAnimationFrame(step);
    });
    await new Promise((r) => setTimeout(r, 100));
    return { frames: frames.slice(1), maxRows: Math.max(...rowsInDom), bottom: el.innerText.includes("#10000") };
  });
  results.scrollFrameTimes10k = summary(scroll.frames);
  check(scroll.maxRows < 100, `virtualized: at most ${scroll.maxRows} of 10,000 rows in the DOM`);
  check(scroll.bottom, "the 10,000th row is reachable");
  await page.screenshot({ path: `${ARTIFACTS}/08-big-board.png` });

  // Render health: the pages that drew an arena reported to the gateway (at most one report
  // per 10 s per page), and the reports reached its histograms.
  const metricsText = await (await fetch(`${BASE}/metrics`)).text();
  const metricValue = (name) =>
    metricsText
      .split("\n")
      .filter((l) => l.startsWith(name + " ") || l.startsWith(name + "{"))
      .reduce((sum, l) => sum + Number(l.split(" ").pop()), 0);
  results.renderReports = {
    accepted: metricValue('gw_render_reports_total{result="accepted"}'),
    frames: metricValue("gw_render_frames_total"),
    frameSamples: metricValue("gw_render_frame_seconds_count"),
  };
  check(results.renderReports.accepted >= 1 && results.renderReports.frames > 0 && results.renderReports.frameSamples > 0, `pages report their render health (${JSON.stringify(results.renderReports)})`);

  results.consoleErrors = consoleErrors;
  results.consoleErrorsDuringOutage = outageErrors.length;
  check(consoleErrors.length === 0, `no console errors (${consoleErrors.join(" | ")})`);
} finally {
  writeFileSync(`${ARTIFACTS}/browser-results.json`, JSON.stringify(results, null, 2));
  console.log(JSON.stringify(results));
  await browser.close();
  proxy.close();
}
