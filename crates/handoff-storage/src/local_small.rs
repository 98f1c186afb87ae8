//! Small blobs of the local store: every blob of at most [`SMALL_BLOB`] bytes committed through `create` lives
//! as one row of `small.sqlite3` under the store's root instead of as a file of its own.
//!
//! Why: a file is durable only after an `fdatasync` and a directory `fsync` of its own, two device flushes per
//! upload, and on ordinary disks those flushes, not the CPU, bound how many small files a server can accept per
//! second (bench/RESULTS.md, "Small blobs in one database"). Here one thread owns the only writing connection
//! and commits whatever queued up while its previous transaction was syncing as **one transaction**: one WAL
//! sync (`synchronous=FULL`) makes a whole batch durable, and each caller is answered only after the
//! transaction holding its row committed, so an acknowledged blob is exactly as durable as a file.
//!
//! The thread is a plain OS thread with rusqlite rather than a pooled sqlx connection: a batch then costs one
//! wake-up of that thread, not a round trip to a connection thread per statement. Reads take a read-only
//! connection from a small idle set, on the caller's thread, as reading a small file from the page cache does.
//! A second thread checkpoints the WAL into the database (copying pages and syncing the database file) beside
//! the writer, so that work is not done inside a commit that callers wait for ([`CHECKPOINT_EVERY`]).
//!
//! Blobs that were read are kept in a small LRU cache ([`HOT_BYTES`]): a blob's bytes never change once committed,
//! so only a delete can make an entry wrong, and a delete removes it. Without the cache each download of a small
//! file took SQLite's shared-memory read locks (two `fcntl` calls) and a query: 100 µs of CPU per 4 KiB download
//! then, 77 µs with it (bench/RESULTS.md).

use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use handoff_core::{BlobId, StoreError, StoreResult};
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension as _, TransactionBehavior, params};
use tokio::sync::oneshot;
use uuid::Uuid;

/// Largest blob kept in the database. The same bound as a small read in `local.rs`: a blob this size is read in
/// one go anyway, and SQLite stores it in a handful of overflow pages.
pub(super) const SMALL_BLOB: usize = 64 << 10;
/// Database file name under the store's root (beside `blobs/` and `tmp/`).
pub(super) const DATABASE: &str = "small.sqlite3";
/// Jobs per transaction at most: bounds the transaction's size and the time callers queued behind it wait.
const MAX_BATCH: usize = 512;
/// How long the writer waits for more jobs after the first of a batch. Without it a busy server's batches held about
/// one blob each (the sync is quick, and the next job arrives just after it): a transaction, a sync and two thread
/// wake-ups per blob. A lone upload pays at most this much more, less than the sync itself.
const GATHER: Duration = Duration::from_micros(300);
/// Idle read-only connections kept for reuse; more may be open at once under load.
const MAX_IDLE_READERS: usize = 16;
/// How often the checkpointer thread copies the WAL into the database, beside the writer. SQLite's default, a
/// checkpoint inside the commit that pushes the WAL past 1,000 pages, stalled the writer for milliseconds several
/// times a second under load: without it a 4 KiB upload's p99 fell from 34-42 ms to 21-22 ms (bench/RESULTS.md).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(50);
/// WAL pages after which a commit checkpoints after all: the bound on the WAL when the checkpointer falls behind.
/// A WAL can start over only once a checkpoint has caught up with every frame, which under steady writes only the
/// writer's own checkpoint does; most frames are copied by then.
const WRITER_CHECKPOINT_PAGES: u32 = 8192;
/// Bytes of recently read blobs kept in memory, at most; small against the server's memory bound (bench/README.md),
/// and hundreds of typical small files.
const HOT_BYTES: usize = 4 << 20;
/// What each cached blob is charged beyond its bytes (its key, handle and map slot), so that empty or one-byte blobs
/// cannot grow the cache past its bound in entries.
const HOT_ENTRY_OVERHEAD: usize = 128;
/// Another process with the database open (a `migrate-storage` run beside the server) may hold the write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

enum Job {
    Put { id: BlobId, bytes: Bytes },
    Delete { id: BlobId },
}

/// What a job answers: for a delete, whether a row was there.
type Reply = oneshot::Sender<StoreResult<bool>>;

pub(super) struct SmallBlobs {
    path: std::path::PathBuf,
    jobs: Sender<(Job, Reply)>,
    readers: Mutex<Vec<Connection>>,
    hot: Mutex<HotBlobs>,
    /// Dropped with this value, which ends the checkpointer thread.
    _stop_checkpoints: Sender<()>,
}

impl std::fmt::Debug for SmallBlobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmallBlobs")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SmallBlobs {
    /// Opens (creating if needed) the database under `root` and starts its writer thread, which ends when the
    /// last handle to this value is dropped. Blocking: call from the blocking pool.
    pub(super) fn open(root: &Path) -> std::io::Result<Self> {
        let path = root.join(DATABASE);
        let created = !path.exists();
        let writer = Connection::open(&path).map_err(std::io::Error::other)?;
        writer
            .busy_timeout(BUSY_TIMEOUT)
            .and_then(|()| {
                writer.execute_batch(&format!(
                    "PRAGMA journal_mode = WAL;
                     PRAGMA synchronous = FULL;
                     PRAGMA wal_autocheckpoint = {WRITER_CHECKPOINT_PAGES};
                     CREATE TABLE IF NOT EXISTS blobs (
                         id BLOB PRIMARY KEY NOT NULL,
                         created_ms INTEGER NOT NULL,
                         bytes BLOB NOT NULL
                     );"
                ))
            })
            .map_err(std::io::Error::other)?;
        if created {
            // The new database file's directory entry must survive a crash like any blob's.
            super::sync_dir(root)?;
        }
        let checkpointer = Connection::open(&path).map_err(std::io::Error::other)?;
        checkpointer.busy_timeout(BUSY_TIMEOUT).map_err(std::io::Error::other)?;
        let database = std::fs::File::open(&path)?;
        let (jobs, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name("handoff-small-blobs".into())
            .spawn(move || run_writer(writer, queue))?;
        let (stop_checkpoints, stopped) = mpsc::channel();
        std::thread::Builder::new()
            .name("handoff-small-ckpt".into())
            .spawn(move || run_checkpointer(&checkpointer, &database, &stopped))?;
        Ok(Self {
            path,
            jobs,
            readers: Mutex::new(Vec::new()),
            hot: Mutex::new(HotBlobs::new()),
            _stop_checkpoints: stop_checkpoints,
        })
    }

    /// Stores `bytes` under `id`; returns once the row is durable.
    pub(super) async fn put(&self, id: BlobId, bytes: Bytes) -> StoreResult<()> {
        self.submit(Job::Put { id, bytes }).await.map(drop)
    }

    /// Removes the row of `id`; whether there was one.
    pub(super) async fn delete(&self, id: BlobId) -> StoreResult<bool> {
        let deleted = self.submit(Job::Delete { id }).await;
        // After the row is gone, so that no read can bring the bytes back (see `HotBlobs::put`).
        self.hot().forget(id);
        deleted
    }

    fn hot(&self) -> std::sync::MutexGuard<'_, HotBlobs> {
        self.hot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn submit(&self, job: Job) -> StoreResult<bool> {
        let (done, answer) = oneshot::channel();
        let stopped = || StoreError::Unavailable("the small-blob writer has stopped".into());
        self.jobs.send((job, done)).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// The bytes of `id`, if it is a small blob. Blocking, but only for a page-cache lookup.
    pub(super) fn read(&self, id: BlobId) -> StoreResult<Option<Bytes>> {
        let generation = {
            let mut hot = self.hot();
            if let Some(bytes) = hot.get(id) {
                return Ok(Some(bytes));
            }
            hot.generation
        };
        let bytes = self.with_reader(|conn| {
            conn.prepare_cached("SELECT bytes FROM blobs WHERE id = ?1")?
                .query_row([id.0.as_bytes()], |row| {
                    Ok(Bytes::copy_from_slice(row.get_ref(0)?.as_blob()?))
                })
                .optional()
        })?;
        if let Some(bytes) = &bytes {
            self.hot().put(id, bytes.clone(), generation);
        }
        Ok(bytes)
    }

    /// Small blobs committed at or before `cutoff`. Blocking.
    pub(super) fn list_older_than(&self, cutoff: SystemTime) -> StoreResult<Vec<BlobId>> {
        let cutoff_ms = unix_ms(cutoff);
        self.with_reader(|conn| {
            let mut select = conn.prepare_cached("SELECT id FROM blobs WHERE created_ms <= ?1")?;
            let rows = select.query_map([cutoff_ms], |row| row.get::<_, Vec<u8>>(0))?;
            let mut ids = Vec::new();
            for id in rows {
                // A row this store did not write (a malformed id) is not a blob anyone can name: skip it.
                if let Ok(uuid) = Uuid::from_slice(&id?) {
                    ids.push(BlobId(uuid));
                }
            }
            Ok(ids)
        })
    }

    fn with_reader<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> StoreResult<T> {
        let idle = self.readers.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => open_reader(&self.path).map_err(|e| store_error(&e))?,
        };
        let result = f(&conn).map_err(|e| store_error(&e));
        let mut idle = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
        result
    }
}

/// The read cache: at most [`HOT_BYTES`], counting each entry's bytes and overhead, least recently read evicted first.
struct HotBlobs {
    blobs: hashlink::LruCache<BlobId, Bytes>,
    /// The sum of [`charge`] over the entries.
    bytes: usize,
    /// Bumped by every delete: a read that started before one may have seen the row it removed.
    generation: u64,
}

impl HotBlobs {
    fn new() -> Self {
        Self {
            blobs: hashlink::LruCache::new_unbounded(),
            bytes: 0,
            generation: 0,
        }
    }

    fn get(&mut self, id: BlobId) -> Option<Bytes> {
        self.blobs.get(&id).cloned()
    }

    /// Keeps what a read found, unless a delete has happened since the read began (`generation`).
    fn put(&mut self, id: BlobId, bytes: Bytes, generation: u64) {
        if generation != self.generation || charge(&bytes) > HOT_BYTES {
            return;
        }
        self.bytes += charge(&bytes);
        if let Some(old) = self.blobs.insert(id, bytes) {
            self.bytes -= charge(&old);
        }
        while self.bytes > HOT_BYTES {
            match self.blobs.remove_lru() {
                Some((_, evicted)) => self.bytes -= charge(&evicted),
                None => break,
            }
        }
    }

    fn forget(&mut self, id: BlobId) {
        self.generation += 1;
        if let Some(old) = self.blobs.remove(&id) {
            self.bytes -= charge(&old);
        }
    }
}

fn charge(bytes: &Bytes) -> usize {
    bytes.len() + HOT_ENTRY_OVERHEAD
}

fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

/// The checkpointer thread: a passive checkpoint every [`CHECKPOINT_EVERY`] (it never waits for the writer, nor
/// the writer for it), until the store is dropped. `database` is the database file itself.
fn run_checkpointer(conn: &Connection, database: &std::fs::File, stop: &Receiver<()>) {
    let mut progress = (0, 0);
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        // Busy (another checkpoint is running, e.g. the writer's) or failed: the next round, or the writer's own
        // checkpoint, catches up.
        let checkpoint = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
        });
        match checkpoint {
            // SQLite syncs the database only after a checkpoint that caught up with the WAL's end, which under
            // steady writes none here does; the writer's own checkpoint would then sync every page copied since.
            // Syncing here keeps that writeback off the writer. An extra sync never harms SQLite's guarantees.
            // Unchanged counts (the WAL's frames, those copied so far): nothing new, and an idle server syncs nothing.
            Ok((frames, copied)) if copied > 0 && (frames, copied) != progress => {
                progress = (frames, copied);
                if let Err(e) = database.sync_data() {
                    tracing::debug!(error = %e, "small-blob database sync after a checkpoint failed");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "small-blob checkpoint skipped"),
        }
    }
}

/// The writer thread: one transaction per batch of what is queued or arrives within [`GATHER`] of its first job, until
/// every sender is gone.
fn run_writer(mut conn: Connection, queue: Receiver<(Job, Reply)>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        let deadline = Instant::now() + GATHER;
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match queue.recv_timeout(left) {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
            }
        }
        match apply(&mut conn, &batch) {
            Ok(deleted) => {
                for ((_, done), deleted) in batch.into_iter().zip(deleted) {
                    let _ = done.send(Ok(deleted));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, jobs = batch.len(), "small-blob transaction failed");
                for (_, done) in batch {
                    let _ = done.send(Err(store_error(&e)));
                }
            }
        }
    }
}

/// Runs the batch in one transaction; for each job, whether it removed a row.
fn apply(conn: &mut Connection, batch: &[(Job, Reply)]) -> rusqlite::Result<Vec<bool>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let now_ms = unix_ms(SystemTime::now());
    let mut deleted = Vec::with_capacity(batch.len());
    {
        let mut insert = tx.prepare_cached("INSERT INTO blobs (id, created_ms, bytes) VALUES (?1, ?2, ?3)")?;
        let mut delete = tx.prepare_cached("DELETE FROM blobs WHERE id = ?1")?;
        for (job, _) in batch {
            deleted.push(match job {
                Job::Put { id, bytes } => {
                    insert.execute(params![id.0.as_bytes(), now_ms, &bytes[..]])?;
                    false
                }
                Job::Delete { id } => delete.execute([id.0.as_bytes()])? > 0,
            });
        }
    }
    tx.commit()?;
    Ok(deleted)
}

fn unix_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn store_error(e: &rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => StoreError::Full,
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Unavailable(e.to_string()),
        _ => StoreError::Other(e.to_string().into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_cache_stays_within_its_bound_in_bytes_and_in_entries() {
        let mut hot = HotBlobs::new();
        let most_entries = HOT_BYTES / HOT_ENTRY_OVERHEAD;
        for _ in 0..2 * most_entries {
            hot.put(BlobId::generate(), Bytes::new(), hot.generation);
        }
        assert!(hot.blobs.len() <= most_entries, "{} empty blobs kept", hot.blobs.len());
        for _ in 0..200 {
            hot.put(BlobId::generate(), Bytes::from(vec![7; SMALL_BLOB]), hot.generation);
        }
        assert!(hot.bytes <= HOT_BYTES, "{} bytes kept", hot.bytes);
        assert_eq!(hot.bytes, hot.blobs.iter().map(|(_, b)| charge(b)).sum::<usize>());
        assert!(hot.blobs.len() >= HOT_BYTES / charge(&Bytes::from(vec![7; SMALL_BLOB])));
    }
}
