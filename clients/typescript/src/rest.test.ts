import { describe, expect, it } from "vitest";
import { ApiError, GrandstandApi } from "./rest.js";

type Call = { url: string; init?: RequestInit };

function server(answer: (call: Call) => Response) {
  const calls: Call[] = [];
  const fetch = (async (url: string, init?: RequestInit) => {
    const call = { url, init };
    calls.push(call);
    return answer(call);
  }) as typeof globalThis.fetch;
  return { calls, fetch };
}

const listing = { matches: [{ id: "eu-1", region: "eu", status: "live", players: 3, viewers: 1, epoch: 1, version: 9, top: [] }] };

describe("GrandstandApi", () => {
  it("revalidates the match list with its ETag and keeps the same object on a 304", async () => {
    let version = 0;
    const s = server((c) => {
      const tag = `"l${version}"`;
      if (new Headers(c.init?.headers).get("if-none-match") === tag) return new Response(null, { status: 304, headers: { etag: tag } });
      return Response.json({ ...listing, n: version }, { headers: { etag: tag } });
    });
    const api = new GrandstandApi({ baseUrl: "http://api", fetch: s.fetch });
    const first = await api.matches();
    const again = await api.matches();
    expect(again).toBe(first);
    version = 1;
    const changed = await api.matches();
    expect(changed).not.toBe(first);
    expect(s.calls.map((c) => new Headers(c.init?.headers).get("if-none-match"))).toEqual([null, '"l0"', '"l0"']);
    expect(s.calls[0].url).toBe("http://api/v1/matches");
  });

  it("turns an error body into an ApiError with the server's code", async () => {
    const s = server(() => Response.json({ error: { code: "not_found", message: "no such match" } }, { status: 404 }));
    const api = new GrandstandApi({ fetch: s.fetch });
    const e = await api.snapshot("nope").catch((e: unknown) => e);
    expect(e).toBeInstanceOf(ApiError);
    expect(e).toMatchObject({ status: 404, code: "not_found", message: "no such match" });
    const s2 = server(() => new Response("<html>bad gateway</html>", { status: 502, statusText: "Bad Gateway" }));
    await expect(new GrandstandApi({ fetch: s2.fetch }).player("p")).rejects.toMatchObject({ status: 502, code: "http_error" });
  });

  it("encodes path segments and leaves unset parameters out", async () => {
    const s = server(() => Response.json({ board: "b", entries: [] }));
    const api = new GrandstandApi({ fetch: s.fetch });
    await api.leaderboard("match:eu/1", { limit: 10 });
    await api.around("global", "p 1", { ifAbsent: "empty" });
    await api.join("tok", { region: "eu", skill: 1200 });
    expect(s.calls.map((c) => c.url)).toEqual([
      "/v1/leaderboards/match%3Aeu%2F1?limit=10",
      "/v1/leaderboards/global/around/p%201?if_absent=empty",
      "/v1/matchmaking/join",
    ]);
    expect(new Headers(s.calls[2].init?.headers).get("authorization")).toBe("Bearer tok");
    expect(JSON.parse(String(s.calls[2].init?.body))).toEqual({ region: "eu", skill: 1200 });
  });
});
