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
//! So the common case, one file with no upload link, avoids per-caller statements. When a batch holds several
//! such callers ([`commit_together`]), the leader reads each of their accounts' usage once, decides every
//! caller's quota in arrival order in memory (exact: this transaction is the database's only writer), inserts
//! every accepted row with **one** multi-row `INSERT`, and charges each account with one `UPDATE`: a handful of
//! statements per batch instead of two per caller. A lone one ([`commit_single`]) takes two statements: an
//! `INSERT … SELECT … WHERE` the account has room, which inserts the row or nothing, then the usage `UPDATE`.
//! Everything else (several files, upload links), and the rare batch whose multi-row insert breaks a constraint
//! (nothing of it is inserted: SQLite undoes the whole statement), takes the per-caller paths.

use std::sync::{Mutex, PoisonError};

use handoff_core::{Account, CommitOutcome, CommitRules, FileRecord, StoreError, StoreResult};
use sqlx::error::ErrorKind;
use tokio::sync::oneshot;

use super::SqliteStore;
use super::collab_impl::{account_sql, bind_file_columns, commit_files_in, size};
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
            // Whichever comes first: our answer (another leader committed our files), or the leader lock. A caller
            // that went on queueing for the lock after its answer came would lead a batch of others' files before
            // returning; under load every caller then waited its turn to lead behind all the others, and each
            // batch held only what arrived during one commit (a convoy: bench/RESULTS.md).
            let leader = tokio::select! {
                biased;
                outcome = &mut answer => return outcome.unwrap_or_else(|_| Err(interrupted())),
                leader = self.group.leader.lock() => leader,
            };
            let batch: Vec<Pending> = {
                let mut queue = self.group.queue.lock().unwrap_or_else(PoisonError::into_inner);
                let n = queue.len().min(MAX_BATCH);
                queue.drain(..n).collect()
            };
            if batch.is_empty() {
                // Ours was taken by a leader that answers it once its transaction commits.
                drop(leader);
                return answer.await.unwrap_or_else(|_| Err(interrupted()));
            }
            // The batch runs as its own task: if this caller goes away (client disconnect), the others in the
            // batch still get their transaction committed and their answers.
            let store = self.clone();
            let _ = tokio::spawn(async move { store.commit_batch(batch).await }).await;
            drop(leader);
            // Ours was in that batch, or is still queued (beyond MAX_BATCH) and the loop leads or waits again.
        }
    }

    async fn commit_batch(&self, batch: Vec<Pending>) {
        let mut tx = match self.begin_write().await {
            Ok(tx) => tx,
            Err(e) => return fail_all(batch, &store_error(e)),
        };
        let mut outcomes: Vec<Option<StoreResult<CommitOutcome>>> = batch.iter().map(|_| None).collect();
        let simple: Vec<usize> = (0..batch.len()).filter(|&i| is_simple(&batch[i])).collect();
        if simple.len() > 1 {
            match commit_together(&mut tx, &batch, &simple).await {
                Ok(Some(decided)) => {
                    for (i, outcome) in simple.into_iter().zip(decided) {
                        outcomes[i] = Some(Ok(outcome));
                    }
                }
                // A row broke a constraint and nothing was inserted: each caller on its own, below.
                Ok(None) => {}
                Err(e) => {
                    drop(tx);
                    return fail_all(batch, &e);
                }
            }
        }
        for (pending, slot) in batch.iter().zip(outcomes.iter_mut()) {
            if slot.is_some() {
                continue;
            }
            if is_simple(pending) {
                match commit_single(&mut tx, &pending.files[0], &pending.rules).await {
                    Ok(outcome) => *slot = Some(outcome),
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
            *slot = Some(outcome);
        }
        if let Err(e) = tx.commit().await {
            return fail_all(batch, &store_error(e));
        }
        for (pending, outcome) in batch.into_iter().zip(outcomes) {
            let _ = pending.done.send(outcome.unwrap_or_else(|| Err(interrupted())));
        }
    }
}

/// One file without an upload link: the callers [`commit_together`] and [`commit_single`] serve.
fn is_simple(pending: &Pending) -> bool {
    pending.files.len() == 1 && pending.rules.upload_link.is_none()
}

/// An account's usage and own quota as read at the start of [`commit_together`], moved by what it accepts.
struct Room {
    account: Account,
    /// `None`: the account's row does not exist (its files are refused as over quota, as the other paths do).
    usage: Option<(i64, i64, Option<i64>, Option<i64>)>,
    charged_bytes: i64,
    charged_files: i64,
}

/// The callers `members` of `batch` (each [`is_simple`]), decided and inserted together: every account's usage
/// is read once, quotas are decided in memory in arrival order, the accepted rows go in through one multi-row
/// `INSERT`, and each account is charged once. `Ok(None)`: that insert broke a constraint and inserted nothing,
/// so the callers must be committed one by one to find whose row it was.
async fn commit_together(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    batch: &[Pending],
    members: &[usize],
) -> StoreResult<Option<Vec<CommitOutcome>>> {
    let mut rooms: Vec<Room> = Vec::new();
    let mut decided = Vec::with_capacity(members.len());
    let mut accepted: Vec<&FileRecord> = Vec::with_capacity(members.len());
    for &i in members {
        let (file, rules) = (&batch[i].files[0], &batch[i].rules);
        let account = file.account();
        let at = match rooms.iter().position(|r| r.account == account) {
            Some(at) => at,
            None => {
                rooms.push(Room {
                    account,
                    usage: read_usage(tx, account).await?,
                    charged_bytes: 0,
                    charged_files: 0,
                });
                rooms.len() - 1
            }
        };
        let room = &mut rooms[at];
        let size = size(file.size)?;
        let Some((used_bytes, used_files, quota_bytes, quota_files)) = &mut room.usage else {
            decided.push(CommitOutcome::QuotaExceeded);
            continue;
        };
        // The same rule as the SQL of the other paths: an account's own quota, else the default; none, no limit.
        let over = |used: i64, adding: i64, own: Option<i64>, default: Option<u64>| {
            own.or(opt_u64(default))
                .is_some_and(|q| used.saturating_add(adding) > q)
        };
        if rules.enforce_quota
            && (over(*used_bytes, size, *quota_bytes, rules.default_quota.bytes)
                || over(*used_files, 1, *quota_files, rules.default_quota.files))
        {
            decided.push(CommitOutcome::QuotaExceeded);
            continue;
        }
        *used_bytes = used_bytes.saturating_add(size);
        *used_files += 1;
        room.charged_bytes = room.charged_bytes.saturating_add(size);
        room.charged_files += 1;
        decided.push(CommitOutcome::Committed);
        accepted.push(file);
    }
    if accepted.is_empty() {
        return Ok(Some(decided));
    }
    let mut sql = String::from(
        "INSERT INTO files (key, blob_id, owner_id, name, size, sha256, content_type, visibility, created_at,
             updated_at, team_id, expires_at, upload_link_id) VALUES ",
    );
    // Anonymous `?` placeholders, bound in order: sqlx resolves a numbered one (`$n`) by asking SQLite for its
    // name, a scan of all of the statement's names, which for thousands of them showed in the profile.
    for row in 0..accepted.len() {
        sql.push_str(if row == 0 { "" } else { ", " });
        sql.push_str("(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)");
    }
    // Built from row counts only, never input. Not kept in the statement cache: its row count varies per batch.
    let mut insert = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(false);
    for file in &accepted {
        insert = bind_file_columns(insert, file)?;
    }
    match insert.execute(&mut **tx).await {
        Ok(_) => {}
        Err(sqlx::Error::Database(e)) if is_constraint(e.kind()) => return Ok(None),
        Err(e) => return Err(store_error(e)),
    }
    for room in rooms.iter().filter(|r| r.charged_files > 0) {
        charge(tx, room.account, room.charged_bytes, room.charged_files).await?;
    }
    Ok(Some(decided))
}

/// Adds to an account's usage, in the transaction whose inserts just saw the account's row: no quota check (the
/// caller decided), and a missing row is a bug, not a race.
async fn charge(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    account: Account,
    bytes: i64,
    files: i64,
) -> StoreResult<()> {
    let (table, id) = account_sql(account);
    // `table` is one of two constants, never input.
    let sql = sqlx::AssertSqlSafe(format!(
        "UPDATE {table} SET used_bytes = used_bytes + $1, used_files = used_files + $2 WHERE id = $3"
    ));
    let charged = sqlx::query(sql)
        .bind(bytes)
        .bind(files)
        .bind(id)
        .execute(&mut **tx)
        .await
        .map_err(store_error)?;
    if charged.rows_affected() != 1 {
        return Err(StoreError::Corrupt(
            "an account's row vanished during its commit".into(),
        ));
    }
    Ok(())
}

/// An account's `(used_bytes, used_files, quota_bytes, quota_files)`, its own quotas without defaults applied.
async fn read_usage(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    account: Account,
) -> StoreResult<Option<(i64, i64, Option<i64>, Option<i64>)>> {
    let (table, id) = account_sql(account);
    // `table` is one of two constants, never input.
    let select = sqlx::AssertSqlSafe(format!(
        "SELECT used_bytes, used_files, quota_bytes, quota_files FROM {table} WHERE id = $1"
    ));
    sqlx::query_as(select)
        .bind(id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(store_error)
}

/// A broken constraint: the statement's own failure, undone with it, not the transaction's.
fn is_constraint(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::UniqueViolation
            | ErrorKind::ForeignKeyViolation
            | ErrorKind::NotNullViolation
            | ErrorKind::CheckViolation
    )
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
    let (table, account) = account_sql(file.account());
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
        Err(sqlx::Error::Database(e)) if is_constraint(e.kind()) => {
            return Ok(Err(store_error(sqlx::Error::Database(e))));
        }
        Err(e) => return Err(store_error(e)),
    }
    charge(tx, file.account(), size(file.size)?, 1).await?;
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
