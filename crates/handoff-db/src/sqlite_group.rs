//! Group commit for `commit_files` on SQLite. SQLite has one writer and, with `synchronous=FULL`, every commit
//! waits for a WAL sync (milliseconds on ordinary disks), so committing concurrent uploads one transaction each
//! caps them at one sync apiece, in a queue. Instead, callers queue their files here; whoever holds the leader
//! lock takes everything queued so far and commits it as **one transaction**, each caller's statements inside
//! its own savepoint, so that one caller's quota refusal or conflict rolls back only that caller's rows. Every
//! caller is answered only after the transaction holding its rows has committed (or with the error that
//! prevented it): an acknowledged commit is exactly as durable as before.
//!
//! There is no timer and no waiting for company: a batch is whatever queued up while the previous batch was
//! being committed, so a lone upload commits at once.
//!
//! Every statement is a round trip to sqlx's connection thread (two thread switches), and those switches are a
//! large share of a small upload's CPU time (bench/RESULTS.md, "Small uploads: the commit's round trips").
//! So the common case, one file with no upload link, takes two statements and no savepoint
//! ([`commit_single`]): an `INSERT … SELECT … WHERE` the account has room, which inserts the row or nothing, then
//! the usage `UPDATE`, which cannot be refused once the insert happened. Everything else takes the general path.

use std::sync::{Mutex, PoisonError};

use handoff_core::{Account, CommitOutcome, CommitRules, FileRecord, StoreError, StoreResult};
use sqlx::error::ErrorKind;
use tokio::sync::oneshot;

use super::SqliteStore;
use super::collab_impl::{bind_file_columns, commit_files_in};
use crate::collab::opt_u64;
use crate::store_error;

/// Callers per transaction at most: bounds the transaction (and the time the writer is held for it).
const MAX_BATCH: usize = 256;

struct Pending {
    files: Vec<FileRecord>,
    rules: CommitRules,
    done: oneshot::Sender<StoreResult<CommitOutcome>>,
}

#[derive(Default)]
pub(super) struct GroupCommit {
    queue: Mutex<Vec<Pending>>,
    /// Held while a batch is committed; whoever gets it next commits what queued up meanwhile.
    leader: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").finish_non_exhaustive()
    }
}

impl SqliteStore {
    pub(super) async fn commit_files_durably(
        &self,
        files: &[FileRecord],
        rules: &CommitRules,
    ) -> StoreResult<CommitOutcome> {
        let (done, answer) = oneshot::channel();
        self.group
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Pending {
                files: files.to_vec(),
                rules: *rules,
                done,
            });
        let mut answer = answer;
        loop {
            let leader = self.group.leader.lock().await;
            let batch: Vec<Pending> = {
                let mut queue = self.group.queue.lock().unwrap_or_else(PoisonError::into_inner);
                let n = queue.len().min(MAX_BATCH);
                queue.drain(..n).collect()
            };
            if batch.is_empty() {
                // Ours was taken by an earlier leader, which answers it.
                break;
            }
            // The batch runs as its own task: if this caller goes away (client disconnect), the others in the
            // batch still get their transaction committed and their answers.
            let store = self.clone();
            let _ = tokio::spawn(async move { store.commit_batch(batch).await }).await;
            drop(leader);
            match answer.try_recv() {
                Ok(outcome) => return outcome,
                // Ours is still queued (beyond MAX_BATCH): lead again.
                Err(oneshot::error::TryRecvError::Empty) => continue,
                Err(oneshot::error::TryRecvError::Closed) => return Err(interrupted()),
            }
        }
        answer.await.unwrap_or_else(|_| Err(interrupted()))
    }

    async fn commit_batch(&self, batch: Vec<Pending>) {
        let mut tx = match self.begin_write().await {
            Ok(tx) => tx,
            Err(e) => return fail_all(batch, &store_error(e)),
        };
        let mut outcomes = Vec::with_capacity(batch.len());
        for pending in &batch {
            if let ([file], None) = (pending.files.as_slice(), pending.rules.upload_link) {
                match commit_single(&mut tx, file, &pending.rules).await {
                    Ok(outcome) => outcomes.push(outcome),
                    Err(e) => {
                        drop(tx);
                        return fail_all(batch, &e);
                    }
                }
                continue;
            }
            let outcome = match savepoint(&mut tx, "SAVEPOINT handoff_commit").await {
                Ok(()) => commit_files_in(&mut tx, &pending.files, &pending.rules).await,
                Err(e) => Err(e),
            };
            let ends = match outcome {
                Ok(CommitOutcome::Committed) => savepoint(&mut tx, "RELEASE handoff_commit").await,
                _ => match savepoint(&mut tx, "ROLLBACK TO handoff_commit").await {
                    Ok(()) => savepoint(&mut tx, "RELEASE handoff_commit").await,
                    Err(e) => Err(e),
                },
            };
            if let Err(e) = ends {
                // The transaction is in an unknown state: give it up, nothing of this batch is committed.
                drop(tx);
                return fail_all(batch, &e);
            }
            outcomes.push(outcome);
        }
        if let Err(e) = tx.commit().await {
            return fail_all(batch, &store_error(e));
        }
        for (pending, outcome) in batch.into_iter().zip(outcomes) {
            let _ = pending.done.send(outcome);
        }
    }
}

/// One file without an upload link, in two statements that cannot leave half a commit behind: the row goes in
/// only if its account has room (one statement: all or nothing), and then the account is charged for it.
/// `Ok(Err(_))` is this caller's own failure (a constraint the row broke, undone by SQLite with the statement);
/// `Err(_)` means the transaction can no longer be trusted, and the whole batch fails.
async fn commit_single(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    file: &FileRecord,
    rules: &CommitRules,
) -> StoreResult<StoreResult<CommitOutcome>> {
    let (table, account) = match file.account() {
        Account::User(id) => ("users", id.0.to_string()),
        Account::Team(id) => ("teams", id.0.to_string()),
    };
    let size = i64::try_from(file.size).map_err(|_| StoreError::Corrupt("size beyond i64".into()))?;
    // `table` is one of two constants, never input.
    let insert = sqlx::AssertSqlSafe(format!(
        "INSERT INTO files (key, blob_id, owner_id, name, size, sha256, content_type, visibility, created_at,
             updated_at, team_id, expires_at, upload_link_id)
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $17
         WHERE EXISTS (SELECT 1 FROM {table} WHERE id = $13
             AND (NOT $14 OR COALESCE(quota_bytes, $15) IS NULL OR used_bytes + $5 <= COALESCE(quota_bytes, $15))
             AND (NOT $14 OR COALESCE(quota_files, $16) IS NULL OR used_files + 1 <= COALESCE(quota_files, $16)))"
    ));
    let inserted = bind_file_columns(sqlx::query(insert), file)?
        .bind(&account)
        .bind(rules.enforce_quota)
        .bind(opt_u64(rules.default_quota.bytes))
        .bind(opt_u64(rules.default_quota.files))
        .bind(file.upload_link.map(|l| l.0.to_string()))
        .execute(&mut **tx)
        .await;
    match inserted {
        Ok(done) if done.rows_affected() == 0 => return Ok(Ok(CommitOutcome::QuotaExceeded)),
        Ok(_) => {}
        Err(sqlx::Error::Database(e))
            if matches!(
                e.kind(),
                ErrorKind::UniqueViolation
                    | ErrorKind::ForeignKeyViolation
                    | ErrorKind::NotNullViolation
                    | ErrorKind::CheckViolation
            ) =>
        {
            return Ok(Err(store_error(sqlx::Error::Database(e))));
        }
        Err(e) => return Err(store_error(e)),
    }
    let charge = sqlx::AssertSqlSafe(format!(
        "UPDATE {table} SET used_bytes = used_bytes + $1, used_files = used_files + 1 WHERE id = $2"
    ));
    let charged = sqlx::query(charge)
        .bind(size)
        .bind(&account)
        .execute(&mut **tx)
        .await
        .map_err(store_error)?;
    if charged.rows_affected() != 1 {
        // The insert just saw the account's row in this same transaction: this would be a bug, not a race.
        return Err(StoreError::Corrupt(
            "the account's row vanished during its commit".into(),
        ));
    }
    Ok(Ok(CommitOutcome::Committed))
}

fn interrupted() -> StoreError {
    StoreError::Unavailable("the commit was interrupted".into())
}

async fn savepoint(tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>, sql: &'static str) -> StoreResult<()> {
    sqlx::query(sql).execute(&mut **tx).await.map(drop).map_err(store_error)
}

/// `StoreError` is not `Clone`: each caller gets the same classification with the cause as text.
fn fail_all(batch: Vec<Pending>, error: &StoreError) {
    for pending in batch {
        let copy = match error {
            StoreError::Conflict => StoreError::Conflict,
            StoreError::NotFound => StoreError::NotFound,
            StoreError::Full => StoreError::Full,
            StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
            StoreError::Corrupt(m) => StoreError::Corrupt(m.clone()),
            StoreError::Other(e) => StoreError::Other(e.to_string().into()),
        };
        let _ = pending.done.send(Err(copy));
    }
}
