-- Match history. Portable SQL: the same migration runs on SQLite (embedded) and PostgreSQL.
CREATE TABLE IF NOT EXISTS matches (
    match_id   TEXT PRIMARY KEY,
    region     TEXT NOT NULL,
    epoch      BIGINT NOT NULL,
    started_ms BIGINT NOT NULL,
    ended_ms   BIGINT
);
CREATE INDEX IF NOT EXISTS matches_started ON matches (started_ms);

CREATE TABLE IF NOT EXISTS players (
    player_id TEXT PRIMARY KEY,
    name      TEXT NOT NULL
);

-- One row per kill; (match, epoch, seq) is the event's identity, so re-delivery inserts nothing.
CREATE TABLE IF NOT EXISTS kills (
    match_id TEXT NOT NULL,
    epoch    BIGINT NOT NULL,
    seq      BIGINT NOT NULL,
    killer   TEXT NOT NULL,
    victim   TEXT NOT NULL,
    at_ms    BIGINT NOT NULL,
    PRIMARY KEY (match_id, epoch, seq)
);
CREATE INDEX IF NOT EXISTS kills_killer ON kills (killer);
CREATE INDEX IF NOT EXISTS kills_victim ON kills (victim);

-- Final results, written when a match ends.
CREATE TABLE IF NOT EXISTS results (
    match_id  TEXT NOT NULL,
    player_id TEXT NOT NULL,
    name      TEXT NOT NULL,
    score     BIGINT NOT NULL,
    kills     BIGINT NOT NULL,
    deaths    BIGINT NOT NULL,
    PRIMARY KEY (match_id, player_id)
);
CREATE INDEX IF NOT EXISTS results_player ON results (player_id);
