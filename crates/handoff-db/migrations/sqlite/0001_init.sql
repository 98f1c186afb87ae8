-- Append-only: never edit a migration that has shipped; add a new file.
-- Ids are UUID text, times are Unix microseconds (UTC).

CREATE TABLE users (
    id            TEXT    PRIMARY KEY,
    username      TEXT    NOT NULL UNIQUE,
    email         TEXT,
    password_hash TEXT,
    is_admin      INTEGER NOT NULL DEFAULT 0,
    disabled      INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL
);

CREATE TABLE signing_keys (
    kid         TEXT    PRIMARY KEY,
    algorithm   TEXT    NOT NULL,
    private_der BLOB    NOT NULL,
    public_raw  BLOB    NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE refresh_tokens (
    hash       BLOB    PRIMARY KEY,
    family     TEXT    NOT NULL,
    user_id    TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at INTEGER NOT NULL,
    spent      INTEGER NOT NULL DEFAULT 0,
    revoked    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family);

CREATE TABLE files (
    key          TEXT    PRIMARY KEY,
    blob_id      TEXT    NOT NULL UNIQUE,
    owner_id     TEXT    NOT NULL REFERENCES users (id),
    name         TEXT    NOT NULL,
    size         INTEGER NOT NULL CHECK (size >= 0),
    sha256       TEXT    NOT NULL,
    content_type TEXT    NOT NULL,
    visibility   TEXT    NOT NULL CHECK (visibility IN ('private', 'key')),
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);
CREATE INDEX files_owner_newest ON files (owner_id, created_at DESC, key DESC);
