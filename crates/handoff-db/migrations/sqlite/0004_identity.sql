-- Append-only: never edit a migration that has shipped; add a new file.
-- External identities (OpenID Connect providers such as Amazon Cognito) and API tokens.

-- An external identity is its provider's (issuer, subject), never an e-mail address. Each links to exactly one
-- account, and an account has at most one external identity.
CREATE TABLE external_identities (
    issuer     TEXT    NOT NULL,
    subject    TEXT    NOT NULL,
    user_id    TEXT    NOT NULL UNIQUE REFERENCES users (id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (issuer, subject)
);

-- Only the SHA-256 of a token's secret is stored. Revoking a token deletes its row.
CREATE TABLE api_tokens (
    id           TEXT    PRIMARY KEY,
    user_id      TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         TEXT    NOT NULL,
    hash         BLOB    NOT NULL UNIQUE,
    scope        TEXT    NOT NULL CHECK (scope IN ('full', 'read_only', 'upload_only')),
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    last_used_at INTEGER
);
CREATE INDEX api_tokens_user ON api_tokens (user_id, created_at);
