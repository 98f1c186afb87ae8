-- Append-only: never edit a migration that has shipped; add a new file.
-- Resumable (tus) upload sessions. Times are Unix microseconds (UTC). `lease_token`/`lease_until` make one
-- append at a time win across nodes: a conditional UPDATE takes the lease only when it is free or run out.

CREATE TABLE upload_sessions (
    id            TEXT    PRIMARY KEY,
    owner_id      TEXT    NOT NULL REFERENCES users (id),
    blob_id       TEXT    NOT NULL UNIQUE,
    file_key      TEXT    NOT NULL UNIQUE,
    upload_length INTEGER CHECK (upload_length IS NULL OR upload_length >= 0),
    upload_offset INTEGER NOT NULL CHECK (upload_offset >= 0),
    metadata      TEXT    NOT NULL,
    name          TEXT    NOT NULL,
    content_type  TEXT    NOT NULL,
    visibility    TEXT    NOT NULL CHECK (visibility IN ('private', 'key')),
    store_state   TEXT    NOT NULL,
    hash_state    BLOB    NOT NULL,
    completed     INTEGER NOT NULL DEFAULT 0,
    lease_token   TEXT,
    lease_until   INTEGER,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL
);
CREATE INDEX upload_sessions_owner ON upload_sessions (owner_id, completed);
CREATE INDEX upload_sessions_expiry ON upload_sessions (expires_at);
