-- Partner keys (broadcasters, data partners): only the key's SHA-256 is stored. A revoked
-- partner keeps its row (revoked_ms set) so its name is not reused by accident.
CREATE TABLE IF NOT EXISTS partners (
    name        TEXT PRIMARY KEY,
    key_hash    TEXT NOT NULL UNIQUE,
    delay_ms    BIGINT,
    max_streams BIGINT,
    matches     TEXT,
    created_ms  BIGINT NOT NULL,
    revoked_ms  BIGINT
);
