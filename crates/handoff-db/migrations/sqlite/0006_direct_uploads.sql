-- Append-only: never edit a migration that has shipped; add a new file.
-- Direct upload sessions (bytes sent straight to the blob store through signed URLs). Times are Unix
-- microseconds (UTC). A row never changes after creation except for its claim (`claim_token`/`claim_until`),
-- taken by a conditional UPDATE so that one completion or abort wins across nodes.

CREATE TABLE direct_uploads (
    id              TEXT    PRIMARY KEY,
    owner_id        TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    team_id         TEXT    REFERENCES teams (id) ON DELETE CASCADE,
    blob_id         TEXT    NOT NULL UNIQUE,
    file_key        TEXT    NOT NULL UNIQUE,
    name            TEXT    NOT NULL,
    content_type    TEXT    NOT NULL,
    visibility      TEXT    NOT NULL CHECK (visibility IN ('private', 'key')),
    file_expires_at INTEGER,
    size            INTEGER NOT NULL CHECK (size >= 0),
    sha256          TEXT,
    part_size       INTEGER NOT NULL CHECK (part_size > 0),
    part_count      INTEGER NOT NULL CHECK (part_count > 0),
    store_state     TEXT    NOT NULL,
    claim_token     TEXT,
    claim_until     INTEGER,
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL
);
CREATE INDEX direct_uploads_owner ON direct_uploads (owner_id, expires_at);
CREATE INDEX direct_uploads_team ON direct_uploads (team_id, expires_at);
CREATE INDEX direct_uploads_expiry ON direct_uploads (expires_at);
