// Server-Sent Events where the runtime has no EventSource (Node 20): the same event stream read
// through fetch. The parser is a plain function of the bytes, tested on its own.

import type { EventSourceLike } from "./matchStream.js";

export interface SseEvent {
  type: string;
  data: string;
  id?: string;
}

/** Incremental parser of `text/event-stream` (the WHATWG rules: lines end in LF, CRLF or CR;
 * `data` lines join with LF; a blank line dispatches; comments and unknown fields are ignored). */
export class SseParser {
  private buffer = "";
  private type = "";
  private data: string[] = [];
  private id: string | undefined;
  private lastWasCr = false;

  /** Feeds decoded text; returns the events it completed. */
  push(text: string): SseEvent[] {
    const out: SseEvent[] = [];
    // A CR that ended the previous chunk already ended its line: skip the LF of its CRLF.
    if (this.lastWasCr && text.startsWith("\n")) text = text.slice(1);
    this.buffer += text;
    let start = 0;
    for (let i = 0; i < this.buffer.length; i++) {
      const c = this.buffer[i];
      if (c !== "\n" && c !== "\r") continue;
      this.line(this.buffer.slice(start, i), out);
      if (c === "\r" && this.buffer[i + 1] === "\n") i++;
      start = i + 1;
    }
    this.lastWasCr = this.buffer.endsWith("\r");
    this.buffer = this.buffer.slice(start);
    return out;
  }

  private line(line: string, out: SseEvent[]): void {
    if (line === "") {
      if (this.data.length > 0) {
        out.push({ type: this.type || "message", data: this.data.join("\n"), ...(this.id !== undefined ? { id: this.id } : {}) });
      }
      this.type = "";
      this.data = [];
      return;
    }
    if (line.startsWith(":")) return;
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.type = value;
    else if (field === "data") this.data.push(value);
    else if (field === "id" && !value.includes("\0")) this.id = value;
  }
}

/** An EventSource over `fetch`: one request, no automatic retries (the stream clients resume
 * themselves, with backoff and a fresh token). */
export function fetchEventSource(url: string, fetchImpl: typeof fetch = globalThis.fetch): EventSourceLike {
  const listeners = new Map<string, ((ev: { data: string }) => void)[]>();
  const abort = new AbortController();
  let closed = false;
  const source: EventSourceLike = {
    onerror: null,
    onopen: null,
    addEventListener(type, listener) {
      listeners.set(type, [...(listeners.get(type) ?? []), listener]);
    },
    close() {
      closed = true;
      abort.abort();
    },
  };
  const fail = () => {
    if (!closed) {
      closed = true;
      source.onerror?.({});
    }
  };
  void (async () => {
    try {
      const res = await fetchImpl(url, { headers: { accept: "text/event-stream" }, signal: abort.signal });
      if (!res.ok || !res.body) {
        fail();
        return;
      }
      source.onopen?.({});
      const parser = new SseParser();
      const decoder = new TextDecoder();
      const reader = res.body.getReader();
      for (;;) {
        const { done, value } = await reader.read();
        if (done || closed) break;
        for (const ev of parser.push(decoder.decode(value, { stream: true }))) {
          if (closed) return;
          for (const l of listeners.get(ev.type) ?? []) l({ data: ev.data });
        }
      }
      fail();
    } catch {
      fail();
    }
  })();
  return source;
}
