-- Player stats as a maintained table, updated in the same transaction as the kill and result
-- rows (only when those rows are new), so reads are one primary-key lookup.
CREATE TABLE IF NOT EXISTS player_stats (
    player_id TEXT PRIMARY KEY,
    kills     BIGINT NOT NULL DEFAULT 0,
    deaths    BIGINT NOT NULL DEFAULT 0,
    matches   BIGINT NOT NULL DEFAULT 0
);
INSERT INTO player_stats (player_id, kills, deaths, matches)
SELECT p.player_id,
       (SELECT COUNT(*) FROM kills k WHERE k.killer = p.player_id),
       (SELECT COUNT(*) FROM kills k WHERE k.victim = p.player_id),
       (SELECT COUNT(*) FROM results r WHERE r.player_id = p.player_id)
FROM players p
WHERE true -- SQLite needs a WHERE before ON CONFLICT in INSERT ... SELECT
ON CONFLICT (player_id) DO NOTHING;
