-- Same tables as migrations/sqlite/0002_sharing.sql: teams, quotas and usage, share links, upload links, file
-- retention and the audit log.

ALTER TABLE users ADD COLUMN quota_bytes BIGINT;
ALTER TABLE users ADD COLUMN quota_files BIGINT;
ALTER TABLE users ADD COLUMN used_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN used_files BIGINT NOT NULL DEFAULT 0;
UPDATE users SET
    used_bytes = (SELECT COALESCE(SUM(size), 0) FROM files WHERE files.owner_id = users.id),
    used_files = (SELECT COUNT(*) FROM files WHERE files.owner_id = users.id);

CREATE TABLE teams (
    id          UUID   PRIMARY KEY,
    name        TEXT   COLLATE "C" NOT NULL,
    quota_bytes BIGINT,
    quota_files BIGINT,
    used_bytes  BIGINT NOT NULL DEFAULT 0,
    used_files  BIGINT NOT NULL DEFAULT 0,
    created_at  BIGINT NOT NULL
);

CREATE TABLE team_members (
    team_id  UUID   NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    user_id  UUID   NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role     TEXT   NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    added_at BIGINT NOT NULL,
    PRIMARY KEY (team_id, user_id)
);
CREATE INDEX team_members_user ON team_members (user_id);

CREATE TABLE upload_links (
    id             UUID    PRIMARY KEY,
    token_hash     BYTEA   NOT NULL UNIQUE,
    owner_id       UUID    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    team_id        UUID    REFERENCES teams (id) ON DELETE CASCADE,
    note           TEXT,
    password_hash  TEXT,
    expires_at     BIGINT,
    max_files      BIGINT,
    max_bytes      BIGINT,
    files_received BIGINT  NOT NULL DEFAULT 0,
    bytes_received BIGINT  NOT NULL DEFAULT 0,
    revoked        BOOLEAN NOT NULL DEFAULT FALSE,
    created_at     BIGINT  NOT NULL
);
CREATE INDEX upload_links_owner ON upload_links (owner_id, created_at DESC);

ALTER TABLE files ADD COLUMN team_id UUID REFERENCES teams (id);
ALTER TABLE files ADD COLUMN expires_at BIGINT;
ALTER TABLE files ADD COLUMN upload_link_id UUID REFERENCES upload_links (id) ON DELETE SET NULL;
CREATE INDEX files_team_newest ON files (team_id, created_at DESC, key DESC) WHERE team_id IS NOT NULL;
CREATE INDEX files_expiry ON files (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX files_upload_link ON files (upload_link_id) WHERE upload_link_id IS NOT NULL;

CREATE TABLE shares (
    id            UUID    PRIMARY KEY,
    token_hash    BYTEA   NOT NULL UNIQUE,
    owner_id      UUID    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    note          TEXT,
    password_hash TEXT,
    expires_at    BIGINT,
    max_downloads BIGINT,
    downloads     BIGINT  NOT NULL DEFAULT 0,
    revoked       BOOLEAN NOT NULL DEFAULT FALSE,
    created_at    BIGINT  NOT NULL,
    updated_at    BIGINT  NOT NULL
);
CREATE INDEX shares_owner ON shares (owner_id, created_at DESC);

CREATE TABLE share_files (
    share_id UUID    NOT NULL REFERENCES shares (id) ON DELETE CASCADE,
    position BIGINT  NOT NULL,
    file_key TEXT    COLLATE "C" NOT NULL REFERENCES files (key) ON DELETE CASCADE,
    PRIMARY KEY (share_id, position)
);
CREATE INDEX share_files_file ON share_files (file_key);

CREATE TABLE share_grants (
    hash       BYTEA   PRIMARY KEY,
    share_id   UUID    NOT NULL REFERENCES shares (id) ON DELETE CASCADE,
    position   BIGINT  NOT NULL,
    expires_at BIGINT  NOT NULL
);
CREATE INDEX share_grants_expiry ON share_grants (expires_at);

CREATE TABLE audit_events (
    id       UUID   PRIMARY KEY,
    at       BIGINT NOT NULL,
    action   TEXT   NOT NULL,
    actor_id UUID,
    owner_id UUID,
    team_id  UUID,
    file_key TEXT,
    detail   TEXT
);
CREATE INDEX audit_events_owner ON audit_events (owner_id, id DESC) WHERE owner_id IS NOT NULL;
CREATE INDEX audit_events_team ON audit_events (team_id, id DESC) WHERE team_id IS NOT NULL;
