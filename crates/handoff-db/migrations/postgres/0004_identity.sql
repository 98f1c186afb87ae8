-- Append-only: never edit a migration that has shipped; add a new file.
-- Same tables as migrations/sqlite/0004_identity.sql: external identities (OpenID Connect providers such as
-- Amazon Cognito) and API tokens.

CREATE TABLE external_identities (
    issuer     TEXT    COLLATE "C" NOT NULL,
    subject    TEXT    COLLATE "C" NOT NULL,
    user_id    UUID    NOT NULL UNIQUE REFERENCES users (id) ON DELETE CASCADE,
    created_at BIGINT  NOT NULL,
    PRIMARY KEY (issuer, subject)
);

CREATE TABLE api_tokens (
    id           UUID    PRIMARY KEY,
    user_id      UUID    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         TEXT    NOT NULL,
    hash         BYTEA   NOT NULL UNIQUE,
    scope        TEXT    NOT NULL CHECK (scope IN ('full', 'read_only', 'upload_only')),
    created_at   BIGINT  NOT NULL,
    expires_at   BIGINT  NOT NULL,
    last_used_at BIGINT
);
CREATE INDEX api_tokens_user ON api_tokens (user_id, created_at);
