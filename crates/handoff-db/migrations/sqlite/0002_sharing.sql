-- Teams, quotas and usage, share links, upload links, file retention and the audit log.

-- Usage counters move with every file commit and delete, in the same transaction; quotas NULL mean "the
-- configured default".
ALTER TABLE users ADD COLUMN quota_bytes INTEGER;
ALTER TABLE users ADD COLUMN quota_files INTEGER;
ALTER TABLE users ADD COLUMN used_bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN used_files INTEGER NOT NULL DEFAULT 0;
UPDATE users SET
    used_bytes = (SELECT COALESCE(SUM(size), 0) FROM files WHERE files.owner_id = users.id),
    used_files = (SELECT COUNT(*) FROM files WHERE files.owner_id = users.id);

CREATE TABLE teams (
    id          TEXT    PRIMARY KEY,
    name        TEXT    NOT NULL,
    quota_bytes INTEGER,
    quota_files INTEGER,
    used_bytes  INTEGER NOT NULL DEFAULT 0,
    used_files  INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL
);

CREATE TABLE team_members (
    team_id  TEXT    NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    user_id  TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role     TEXT    NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    added_at INTEGER NOT NULL,
    PRIMARY KEY (team_id, user_id)
);
CREATE INDEX team_members_user ON team_members (user_id);

CREATE TABLE upload_links (
    id             TEXT    PRIMARY KEY,
    token_hash     BLOB    NOT NULL UNIQUE,
    owner_id       TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    team_id        TEXT    REFERENCES teams (id) ON DELETE CASCADE,
    note           TEXT,
    password_hash  TEXT,
    expires_at     INTEGER,
    max_files      INTEGER,
    max_bytes      INTEGER,
    files_received INTEGER NOT NULL DEFAULT 0,
    bytes_received INTEGER NOT NULL DEFAULT 0,
    revoked        INTEGER NOT NULL DEFAULT 0,
    created_at     INTEGER NOT NULL
);
CREATE INDEX upload_links_owner ON upload_links (owner_id, created_at DESC);

ALTER TABLE files ADD COLUMN team_id TEXT REFERENCES teams (id);
ALTER TABLE files ADD COLUMN expires_at INTEGER;
ALTER TABLE files ADD COLUMN upload_link_id TEXT REFERENCES upload_links (id) ON DELETE SET NULL;
CREATE INDEX files_team_newest ON files (team_id, created_at DESC, key DESC) WHERE team_id IS NOT NULL;
CREATE INDEX files_expiry ON files (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX files_upload_link ON files (upload_link_id) WHERE upload_link_id IS NOT NULL;

CREATE TABLE shares (
    id            TEXT    PRIMARY KEY,
    token_hash    BLOB    NOT NULL UNIQUE,
    owner_id      TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    note          TEXT,
    password_hash TEXT,
    expires_at    INTEGER,
    max_downloads INTEGER,
    downloads     INTEGER NOT NULL DEFAULT 0,
    revoked       INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
CREATE INDEX shares_owner ON shares (owner_id, created_at DESC);

CREATE TABLE share_files (
    share_id TEXT    NOT NULL REFERENCES shares (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    file_key TEXT    NOT NULL REFERENCES files (key) ON DELETE CASCADE,
    PRIMARY KEY (share_id, position)
);
CREATE INDEX share_files_file ON share_files (file_key);

-- A counted download of one file of a link: Range requests presenting the grant do not count again.
CREATE TABLE share_grants (
    hash       BLOB    PRIMARY KEY,
    share_id   TEXT    NOT NULL REFERENCES shares (id) ON DELETE CASCADE,
    position   INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX share_grants_expiry ON share_grants (expires_at);

CREATE TABLE audit_events (
    id       TEXT    PRIMARY KEY,
    at       INTEGER NOT NULL,
    action   TEXT    NOT NULL,
    actor_id TEXT,
    owner_id TEXT,
    team_id  TEXT,
    file_key TEXT,
    detail   TEXT
);
CREATE INDEX audit_events_owner ON audit_events (owner_id, id DESC) WHERE owner_id IS NOT NULL;
CREATE INDEX audit_events_team ON audit_events (team_id, id DESC) WHERE team_id IS NOT NULL;
