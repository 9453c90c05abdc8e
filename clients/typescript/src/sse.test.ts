import { describe, expect, it } from "vitest";
import { fetchEventSource, SseParser } from "./sse.js";

describe("SseParser", () => {
  it("dispatches on a blank line, joins data lines and skips comments", () => {
    const p = new SseParser();
    expect(p.push(": ping\n\nevent: delta\nid: 1:2\ndata: {\"a\":\ndata: 1}\n\n")).toEqual([
      { type: "delta", data: '{"a":\n1}', id: "1:2" },
    ]);
  });

  it("gives the same events however the bytes are split, with any line ending", () => {
    const text = "retry: 1000\r\nevent: snapshot\r\ndata: x\r\n\r\ndata: y\rdata:z\r\r:c\n\nevent: close\ndata: {}\n\n";
    const whole = new SseParser().push(text);
    expect(whole.map((e) => [e.type, e.data])).toEqual([
      ["snapshot", "x"],
      ["message", "y\nz"],
      ["close", "{}"],
    ]);
    for (let cut = 1; cut < text.length; cut++) {
      for (const step of [1, 3, 7]) {
        const p = new SseParser();
        const got = [...p.push(text.slice(0, cut))];
        for (let i = cut; i < text.length; i += step) got.push(...p.push(text.slice(i, i + step)));
        expect(got, `cut at ${cut}, step ${step}`).toEqual(whole);
      }
    }
  });

  it("holds an unfinished event back", () => {
    const p = new SseParser();
    expect(p.push("event: delta\ndata: 1\n")).toEqual([]);
    expect(p.push("\n")).toEqual([{ type: "delta", data: "1" }]);
  });
});

describe("fetchEventSource", () => {
  const body = (chunks: string[]) =>
    new ReadableStream<Uint8Array>({
      start(c) {
        for (const s of chunks) c.enqueue(new TextEncoder().encode(s));
        c.close();
      },
    });

  it("delivers events by type, then reports the end as an error once", async () => {
    const fake = (async () => new Response(body(["event: snap", "shot\ndata: 1\n\nevent: delta\ndata: 2\n\n"]))) as typeof fetch;
    const es = fetchEventSource("http://x/stream", fake);
    const got: string[] = [];
    let opened = 0;
    let errors = 0;
    es.onopen = () => opened++;
    es.addEventListener("snapshot", (e) => got.push(`s${e.data}`));
    es.addEventListener("delta", (e) => got.push(`d${e.data}`));
    await new Promise<void>((resolve) => {
      es.onerror = () => {
        errors++;
        resolve();
      };
    });
    expect([opened, got, errors]).toEqual([1, ["s1", "d2"], 1]);
  });

  it("reports a refused request as an error and sends Accept: text/event-stream", async () => {
    let accept: string | null = null;
    const fake = (async (_url: string, init?: RequestInit) => {
      accept = new Headers(init?.headers).get("accept");
      return new Response('{"error":{}}', { status: 429 });
    }) as typeof fetch;
    const es = fetchEventSource("http://x/stream", fake);
    await new Promise<void>((resolve) => (es.onerror = () => resolve()));
    expect(accept).toBe("text/event-stream");
  });

  it("is silent after close", async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const fake = (async () => {
      await gate;
      return new Response(body(["data: 1\n\n"]));
    }) as typeof fetch;
    const es = fetchEventSource("http://x/stream", fake);
    let calls = 0;
    es.onerror = () => calls++;
    es.addEventListener("message", () => calls++);
    es.close();
    release();
    await new Promise((r) => setTimeout(r, 20));
    expect(calls).toBe(0);
  });
});
