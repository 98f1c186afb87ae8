-- Append-only: never edit a migration that has shipped; add a new file.
-- Resumable, idempotent completion of direct upload sessions. `verified_bytes`/`hash_state`: how far reading the
-- joined blob for SHA-256 got (a completion stops after a time budget; the next resumes there); `hash_state` is
-- NULL until the parts are joined. `completed_at`: when the session made its file; the row stays until it expires
-- so a completion retried after a lost answer finds the file, but no longer counts as open.

ALTER TABLE direct_uploads ADD COLUMN verified_bytes INTEGER NOT NULL DEFAULT 0 CHECK (verified_bytes >= 0);
ALTER TABLE direct_uploads ADD COLUMN hash_state BLOB;
ALTER TABLE direct_uploads ADD COLUMN completed_at INTEGER;
