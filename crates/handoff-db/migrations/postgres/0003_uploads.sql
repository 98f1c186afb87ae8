-- Append-only: never edit a migration that has shipped; add a new file.
-- Same table as migrations/sqlite/0003_uploads.sql. Resumable (tus) upload sessions; times are BIGINT Unix
-- microseconds. `lease_token`/`lease_until` make one append at a time win across nodes: a conditional UPDATE
-- takes the lease only when it is free or run out.

CREATE TABLE upload_sessions (
    id            TEXT    COLLATE "C" PRIMARY KEY,
    owner_id      UUID    NOT NULL REFERENCES users (id),
    blob_id       UUID    NOT NULL UNIQUE,
    file_key      TEXT    COLLATE "C" NOT NULL UNIQUE,
    upload_length BIGINT  CHECK (upload_length IS NULL OR upload_length >= 0),
    upload_offset BIGINT  NOT NULL CHECK (upload_offset >= 0),
    metadata      TEXT    NOT NULL,
    name          TEXT    NOT NULL,
    content_type  TEXT    NOT NULL,
    visibility    TEXT    NOT NULL CHECK (visibility IN ('private', 'key')),
    store_state   TEXT    NOT NULL,
    hash_state    BYTEA   NOT NULL,
    completed     BOOLEAN NOT NULL DEFAULT FALSE,
    lease_token   TEXT,
    lease_until   BIGINT,
    created_at    BIGINT  NOT NULL,
    expires_at    BIGINT  NOT NULL
);
CREATE INDEX upload_sessions_owner ON upload_sessions (owner_id, completed);
CREATE INDEX upload_sessions_expiry ON upload_sessions (expires_at);
