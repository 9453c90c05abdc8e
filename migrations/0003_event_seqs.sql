-- Every event's identity, so a rebuild knows for each match epoch which prefix of events
-- (seq 1..n, no gaps) history holds completely.
CREATE TABLE IF NOT EXISTS event_seqs (
    match_id TEXT NOT NULL,
    epoch    BIGINT NOT NULL,
    seq      BIGINT NOT NULL,
    PRIMARY KEY (match_id, epoch, seq)
);
