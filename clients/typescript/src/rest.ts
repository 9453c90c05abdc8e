// Typed REST helpers. Every request and response type comes from ./generated/openapi.ts, which
// `npm run generate` writes from openapi.json, the document the server serves at /openapi.json
// (a server test fails when the two differ): none of these types is written by hand.

import type { components, paths } from "./generated/openapi.js";

export type Schemas = components["schemas"];

/** The JSON body of a path's 200 answer, as the server documents it. */
export type Ok<P extends keyof paths, M extends keyof paths[P]> = paths[P][M] extends {
  responses: { 200: { content: { "application/json": infer B } } };
}
  ? B
  : never;

export type Guest = Ok<"/v1/auth/guest", "post">;
export type MatchList = Ok<"/v1/matches", "get">;
export type MatchListing = MatchList["matches"][number];
export type MatchSnapshotBody = Ok<"/v1/matches/{id}/snapshot", "get">;
export type MatchResults = Ok<"/v1/matches/{id}/results", "get">;
export type Board = Ok<"/v1/leaderboards/{board}", "get">;
export type BoardEntry = Board["entries"][number];
export type PlayerStats = Ok<"/v1/players/{id}", "get">;
export type GatewayChoice = Ok<"/v1/matches/{id}/gateway", "get">;
export type Assignment = Ok<"/v1/matchmaking/join", "post">;
export type JoinRequest = Schemas["JoinRequest"];
export type RenderReport = Schemas["RenderReport"];
export type ErrorBody = Schemas["ErrorBody"];

/** An answer other than 2xx/304: the server's error code and message (`{"error":{...}}`). */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "ApiError";
  }
}

export interface ApiOptions {
  /** The server's origin; "" (the default) for the page's own. */
  baseUrl?: string;
  fetch?: typeof fetch;
}

const seg = encodeURIComponent;

export class GrandstandApi {
  private readonly base: string;
  private readonly fetchImpl: typeof fetch;
  /** The last listing and its ETag: a poll that finds it unchanged moves no body. */
  private listing: { etag: string; body: MatchList } | null = null;

  constructor(opts: ApiOptions = {}) {
    this.base = opts.baseUrl ?? "";
    this.fetchImpl = opts.fetch ?? ((url, init) => globalThis.fetch(url, init));
  }

  private async send(path: string, init?: RequestInit): Promise<Response> {
    const res = await this.fetchImpl(`${this.base}${path}`, init);
    if (!res.ok && res.status !== 304) throw await errorOf(res);
    return res;
  }

  private async json<T>(path: string, init?: RequestInit): Promise<T> {
    return (await (await this.send(path, init)).json()) as T;
  }

  /** A guest identity and its viewer token. */
  guest(): Promise<Guest> {
    return this.json("/v1/auth/guest", { method: "POST" });
  }

  /** Live matches, then recent ended ones. Repeated calls revalidate with the last ETag and,
   * while nothing changed, resolve to the same object as before. */
  async matches(): Promise<MatchList> {
    const init: RequestInit = this.listing ? { headers: { "if-none-match": this.listing.etag } } : {};
    const res = await this.send("/v1/matches", init);
    if (res.status === 304 && this.listing) return this.listing.body;
    const body = (await res.json()) as MatchList;
    const etag = res.headers.get("etag");
    this.listing = etag ? { etag, body } : null;
    return body;
  }

  snapshot(match: string): Promise<MatchSnapshotBody> {
    return this.json(`/v1/matches/${seg(match)}/snapshot`);
  }

  results(match: string): Promise<MatchResults> {
    return this.json(`/v1/matches/${seg(match)}/results`);
  }

  /** Where a viewer of `match` should connect. */
  gateway(match: string): Promise<GatewayChoice> {
    return this.json(`/v1/matches/${seg(match)}/gateway`);
  }

  leaderboard(board: string, page: { limit?: number; offset?: number } = {}): Promise<Board> {
    return this.json(`/v1/leaderboards/${seg(board)}${query({ limit: page.limit, offset: page.offset })}`);
  }

  /** The board around `player`; with `ifAbsent: "empty"` a player not on it yet gets the
   * board's total and no rows rather than a 404. */
  around(board: string, player: string, opts: { radius?: number; ifAbsent?: "empty" } = {}): Promise<Board> {
    return this.json(`/v1/leaderboards/${seg(board)}/around/${seg(player)}${query({ radius: opts.radius, if_absent: opts.ifAbsent })}`);
  }

  player(id: string): Promise<PlayerStats> {
    return this.json(`/v1/players/${seg(id)}`);
  }

  /** A seat in a match: the game server's address and a connect token. */
  join(token: string, request: JoinRequest): Promise<Assignment> {
    return this.json("/v1/matchmaking/join", {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify(request),
    });
  }

  /** A page's render health (at most one per 10 s per page; the gateway limits it too). */
  async reportRender(report: RenderReport): Promise<void> {
    await this.send("/v1/render-health", { method: "POST", body: JSON.stringify(report), keepalive: true });
  }
}

function query(params: Record<string, string | number | undefined>): string {
  const q = Object.entries(params)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${k}=${seg(String(v))}`)
    .join("&");
  return q ? `?${q}` : "";
}

async function errorOf(res: Response): Promise<ApiError> {
  let code = "http_error";
  let message = `${res.status} ${res.statusText}`;
  try {
    const body = (await res.json()) as Partial<ErrorBody>;
    if (body.error) ({ code, message } = body.error);
  } catch {
    // not JSON
  }
  return new ApiError(res.status, code, message);
}
