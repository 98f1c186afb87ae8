-- Append-only: never edit a migration that has shipped; add a new file.
-- Same tables as migrations/sqlite/0001_init.sql. Ids are UUIDs, times are Unix microseconds (UTC) in BIGINT,
-- exactly as SQLite stores them, so values round-trip bit for bit. Text columns that take part in an ORDER BY
-- (file keys, signing-key ids) use the "C" collation: byte order, the same as SQLite's BINARY, so keyset cursors
-- are portable and do not depend on the server's locale.

CREATE TABLE users (
    id            UUID    PRIMARY KEY,
    username      TEXT    COLLATE "C" NOT NULL UNIQUE,
    email         TEXT,
    password_hash TEXT,
    is_admin      BOOLEAN NOT NULL DEFAULT FALSE,
    disabled      BOOLEAN NOT NULL DEFAULT FALSE,
    created_at    BIGINT  NOT NULL
);

CREATE TABLE signing_keys (
    kid         TEXT   COLLATE "C" PRIMARY KEY,
    algorithm   TEXT   NOT NULL,
    private_der BYTEA  NOT NULL,
    public_raw  BYTEA  NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE refresh_tokens (
    hash       BYTEA   PRIMARY KEY,
    family     UUID    NOT NULL,
    user_id    UUID    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at BIGINT  NOT NULL,
    spent      BOOLEAN NOT NULL DEFAULT FALSE,
    revoked    BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);

CREATE TABLE files (
    key          TEXT    COLLATE "C" PRIMARY KEY,
    blob_id      UUID    NOT NULL UNIQUE,
    owner_id     UUID    NOT NULL REFERENCES users (id),
    name         TEXT    NOT NULL,
    size         BIGINT  NOT NULL CHECK (size >= 0),
    sha256       TEXT    NOT NULL,
    content_type TEXT    NOT NULL,
    visibility   TEXT    NOT NULL CHECK (visibility IN ('private', 'key')),
    created_at   BIGINT  NOT NULL,
    updated_at   BIGINT  NOT NULL
);
CREATE INDEX files_owner_newest ON files (owner_id, created_at DESC, key DESC);
