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

use std::sync::{Mutex, PoisonError};

use handoff_core::{CommitOutcome, CommitRules, FileRecord, StoreError, StoreResult};
use tokio::sync::oneshot;

use super::SqliteStore;
use super::collab_impl::commit_files_in;
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
