-- Append-only: never edit a migration that has shipped; add a new file.
-- Same table as migrations/sqlite/0006_direct_uploads.sql. Direct upload sessions (bytes sent straight to the
-- blob store through signed URLs); times are BIGINT Unix microseconds. A row never changes after creation except
-- for its claim (`claim_token`/`claim_until`), taken by a conditional UPDATE so that one completion or abort wins
-- across nodes.

CREATE TABLE direct_uploads (
    id              TEXT    COLLATE "C" PRIMARY KEY,
    owner_id        UUID    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    team_id         UUID    REFERENCES teams (id) ON DELETE CASCADE,
    blob_id         UUID    NOT NULL UNIQUE,
    file_key        TEXT    COLLATE "C" NOT NULL UNIQUE,
    name            TEXT    NOT NULL,
    content_type    TEXT    NOT NULL,
    visibility      TEXT    NOT NULL CHECK (visibility IN ('private', 'key')),
    file_expires_at BIGINT,
    size            BIGINT  NOT NULL CHECK (size >= 0),
    sha256          TEXT,
    part_size       BIGINT  NOT NULL CHECK (part_size > 0),
    part_count      INTEGER NOT NULL CHECK (part_count > 0),
    store_state     TEXT    NOT NULL,
    claim_token     TEXT,
    claim_until     BIGINT,
    created_at      BIGINT  NOT NULL,
    expires_at      BIGINT  NOT NULL
);
CREATE INDEX direct_uploads_owner ON direct_uploads (owner_id, expires_at);
CREATE INDEX direct_uploads_team ON direct_uploads (team_id, expires_at);
CREATE INDEX direct_uploads_expiry ON direct_uploads (expires_at);
