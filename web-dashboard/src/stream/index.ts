export { MatchStream } from "./matchStream";
export type { Connection, MatchStreamOptions, StreamEnv, StreamStatus } from "./matchStream";
export { applyMessage, parsePosition, position } from "./feed";
export type { Applied } from "./feed";
export { backoffDelay, retryAfterFromReason, BACKOFF_BASE_MS, BACKOFF_CAP_MS } from "./backoff";
export { LagEstimator } from "./lag";
export type * from "./types";
