-- Append-only: never edit a migration that has shipped; add a new file.
-- Resumable (tus) uploads through upload links: a session records the link it was created through (only that
-- link's holders may continue it, and its reservation counts against the link's room) and the team the file goes
-- to. No foreign keys on purpose: deleting a team (or its links, by cascade) must not be blocked by, nor silently
-- drop, a session whose bytes still need reclaiming; such a session can no longer be continued (its link is gone)
-- and the expiry collector removes its bytes and then its row.

ALTER TABLE upload_sessions ADD COLUMN team_id TEXT;
ALTER TABLE upload_sessions ADD COLUMN upload_link_id TEXT;
CREATE INDEX upload_sessions_link ON upload_sessions (upload_link_id, completed) WHERE upload_link_id IS NOT NULL;
CREATE INDEX upload_sessions_team ON upload_sessions (team_id, completed) WHERE team_id IS NOT NULL;
