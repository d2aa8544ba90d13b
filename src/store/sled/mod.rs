//! The embedded backend, the default: batches, the work queue, results, idempotency keys, key
//! records and the audit log in an embedded sled 0.34 database in the state directory, for one
//! appliance. What every backend promises is in [`crate::store`]; this is how sled keeps it.
//!
//! # Layout
//!
//! | tree          | key                                   | value                                 |
//! |---------------|---------------------------------------|---------------------------------------|
//! | `batches`     | seq (u64 BE)                          | batch metadata (binary, versioned)    |
//! | `batch_ids`   | batch id (16 random bytes)            | seq                                   |
//! | `idempotency` | SHA-256 of issuer and key             | the batch's seq and request hash, or  |
//! |               |                                       | a tombstone once it was purged        |
//! | `data_keys`   | seq                                   | the batch's data key, wrapped by the  |
//! |               |                                       | KEK in the HSM                        |
//! | `pending`     | seq, first record index of a block    | refs and DCC JSON of the block's      |
//! |               | (u32 BE)                              | pending records, sealed               |
//! | `results`     | seq, first record index of a block    | the result lines of the block's       |
//! |               |                                       | resolved records, sealed              |
//! | `audit`       | entry seq (u64 BE)                    | chain hash, then the entry's JSON     |
//! | `audit_checkpoints` | a checkpoint entry's seq (u64 BE) | empty (an index of `audit`)           |
//! | `keys`        | key label (UTF-8)                     | the key's lifecycle record (JSON)     |
//!
//! Records are stored in blocks of [`layout::BLOCK`] consecutive records of a batch (record
//! `i` is in the block starting at `i - i % BLOCK`): one sled value per block, because sled's
//! cost is per key written. `seq` comes from sled's `generate_id` inside the submit
//! transaction: monotonic across restarts, so big-endian `pending` keys iterate in submission
//! order and the `pending` tree *is* the work queue. A record is pending exactly while its
//! payload is in its `pending` block; committing its result moves it from that block to the
//! same block in `results` in one transaction, so personal data does not outlive signing.
//! Every transaction does point operations only (sled's `TransactionalTree` cannot iterate);
//! the scans (claim, results, purge sweeps) run outside transactions.
//!
//! # Crypto-shredding
//!
//! Every `pending` and `results` value is sealed ([`seal`]: AES-256-GCM, bound to its batch,
//! tree and block) under its batch's data key, which is stored only wrapped by the KEK in the
//! HSM ([`StoreOptions::key_wrap`]). Purging a batch (DELETE or retention) first removes its
//! wrapped data key in one transaction with the mark that hides it, and flushes; only then are
//! its blocks swept. Whatever sled's log keeps of them afterwards (old pages, free segments)
//! is ciphertext under a key that no longer exists outside the HSM's reach — only someone who
//! also holds the KEK could open an old copy of a wrapped key sled still holds. Batch metadata
//! holds no issuer-chosen text: the idempotency key is stored as a hash. The audit log holds
//! only truncated hashes of what was signed. The KEK's label is pinned in sled's default tree
//! at first start ([`SledStore::pin_kek`]), so a missing KEK is noticed instead of replaced.
//!
//! # Idempotency
//!
//! A key names the request it was first used with (SHA-256 over its records as parsed,
//! [`idempotency::request_hash`]): the same key with another request is refused
//! ([`StoreError::IdempotencyConflict`]); with the same request, the batch is returned as it
//! stands. Purging the batch leaves a tombstone under the key for the retention period, and a
//! retry is refused ([`StoreError::BatchDeleted`]) instead of signed again.
//!
//! The audit log ([`crate::audit`]) is appended in the same transaction as what it records: a
//! commit's signatures, a key's change of state.
//!
//! # Guarantees
//!
//! - `submit` writes metadata, payloads and mappings in one transaction and then flushes (sled's
//!   flush, then an fsync of its file: [`SledStore::flush`]) before returning: a returned batch id
//!   survives `kill -9` and power loss.
//! - `commit` inserts a result only for a record still pending, removes its payload and updates
//!   its batch's counters in one transaction, then flushes. Readers of status and results never
//!   see a commit before its flush returned, so a result is never released unless durable; a
//!   crash before that just means the record is signed again.
//! - Any sled I/O failure stops this handle ([`StoreError::Failed`] / [`StoreError::Full`]):
//!   after a failed write sled's in-memory state may be ahead of the disk, so nothing is served
//!   from it until the daemon restarts and recovers from what is on disk. A stopped handle is
//!   never dropped (its sled database stays open until the process exits): sled flushes when
//!   dropped, and after a failed write that flush can wait forever (below).
//!
//! # A full disk
//!
//! sled 0.34.7 does not survive ENOSPC (found by `softhsm-tests/disk.rs`): a log buffer whose
//! write failed (or, for a large node, whose blob file could not be written) leaves a hole in
//! its log while later buffers still reach the disk (overwriting pages a file already has needs
//! no new space), and recovery skips the hole — so a transaction that was in flight, never
//! acknowledged, can come back half-applied: a commit's payloads removed without its results (a
//! record that is never signed), or its counters without its results. A failed blob write also
//! leaves its buffer claimed forever without setting sled's error, so every later flush,
//! including the one in sled's `Drop`, waits forever. Flushed transactions are not affected.
//! sled's periodic flusher is off: it also cleans segments, writing while the store is idle.
//! So the store keeps sled away from ENOSPC: `submit` keeps [`StoreOptions::min_free_bytes`]
//! free (new batches are refused below it) and signing (`claim`, `commit`, audit entries of
//! signatures, checkpoints) stops writing below a floor under that reserve
//! ([`StoreError::BelowFloor`]), resuming when space is freed. What remains is a race with
//! another process filling the floor between the check and sled's write; the other writes
//! (start, key and revocation events, purges) are small and not held to the floor.

mod audit;
mod backend;
mod batches;
mod copy;
mod keys;
pub(crate) mod layout;
mod queue;
mod results;
mod shred;
#[cfg(test)]
pub(crate) mod tests;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

pub use results::ResultIter;

// The backend-neutral parts, in scope for this module's children as `super::…`.
use super::error::{io_text, is_enospc, one_line};
use super::{
    KEY_CACHE, MAX_FLOOR, StoreError, StoreOptions, data_keys, error, idempotency, record, seal, unix_now,
};

/// Schema version of the layout above, kept in sled's default tree. 3: blocks sealed under
/// wrapped per-batch data keys, idempotency keys hashed with tombstones; 2 (blocks in clear)
/// and 1 (one value per record) are refused.
const SCHEMA_VERSION: u8 = 3;
const SCHEMA_KEY: &[u8] = b"hcert-store-schema";
/// The label of the KEK this store's data keys are wrapped with, recorded at first start.
const KEK_KEY: &[u8] = b"hcert-store-kek";
/// sled's segment size for a new store, its largest. sled writes any log item over a quarter
/// of a segment (a tree node, for us) to a file of its own under `blobs/`, without fsync, so
/// [`SledStore::flush_db`]'s fsync does not make it durable: found by `softhsm-tests/disk.rs`,
/// where an ext4 journal abort lost the blobs of flushed queue blocks. At 16 MiB the threshold
/// is 4 MiB, and no node of ours comes near it: a node holds at most 17 items, and the
/// largest items are bounded — queue and result blocks by [`layout::BLOCK`] records of at
/// most `MAX_DCC_BYTES` (the API's limit), audit entries by the pipeline's chunk size (at most
/// 1,024 records). The test `no_stored_value_reaches_sleds_blob_files` holds it to that.
pub const SEGMENT_SIZE: usize = 16 << 20;
/// sled's record of the parameters a store was created with.
const SLED_CONF_FILE: &str = "conf";
/// Our own lock file, taken before sled's, for a clear "in use" error.
pub const LOCK_FILE: &str = "store.lock";
/// sled 0.34's log file in its directory.
const SLED_FILE: &str = "db";

/// The sled store. Cheap to clone (an `Arc` inside), `Send + Sync`; every call is synchronous and
/// may block on disk I/O, so async callers run it on blocking threads.
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    /// sled's log file (read-only: only for `sync_all`).
    db_file: File,
    batches: sled::Tree,
    batch_ids: sled::Tree,
    idempotency: sled::Tree,
    data_keys: sled::Tree,
    pending: sled::Tree,
    results: sled::Tree,
    audit: sled::Tree,
    /// The sequence numbers of the audit log's checkpoints, written with them.
    audit_checkpoints: sled::Tree,
    keys: sled::Tree,
    /// The country's CSCAs as recorded at first start (SHA-256 hex → certificate DER).
    cscas: sled::Tree,
    /// Unwrapped data keys of live batches, by seq.
    key_cache: seal::KeyCache<u64>,
    /// Data keys made ahead for new batches, once started ([`SledStore::start_key_stock`]).
    key_stock: OnceLock<Arc<data_keys::KeyStock>>,
    /// The end of the audit chain; every appender holds it from transaction to flush.
    audit_head: Mutex<audit::AuditHead>,
    dir: PathBuf,
    options: StoreOptions,
    /// Records accepted and not yet resolved, over live batches. Signed because a commit's
    /// decrement may run before the matching submit's increment; read clamped at zero.
    queued: AtomicI64,
    /// Leases of this process (in memory only: after a restart everything is pending again).
    leases: Mutex<queue::Leases>,
    leased: AtomicUsize,
    /// Commits hold it for writing from transaction to flush; status and result readers hold
    /// it for reading, so they only ever see flushed results.
    visibility: RwLock<()>,
    /// Set by the first sled failure; from then on every call fails with it.
    failure: OnceLock<Failure>,
    corrupt_records: AtomicU64,
    expired_unsigned: AtomicU64,
    /// Held for the life of the store; declared last so it is released after sled closed.
    _lock: File,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(stock) = self.key_stock.get() {
            stock.stop();
        }
    }
}

#[derive(Debug, Clone)]
enum Failure {
    Full,
    Other(String),
}

impl SledStore {
    /// Opens (or creates) the store in `dir`, which it owns: sled's files and a lock file live
    /// there. Purges that a crash interrupted are finished, and the queue is recounted.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::open_io(dir, "cannot create it", &e))?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))
            .map_err(|e| StoreError::open_io(dir, "cannot create its lock file", &e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked { path: dir.to_path_buf() });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(StoreError::open_io(dir, "cannot lock it", &e));
            }
        }
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(options.cache_capacity)
            .segment_size(segment_size(dir))
            // Durability comes from our explicit flushes (every write path ends in one; a purge
            // sweep a crash interrupts is redone at the next open). No periodic flusher: besides
            // flushing, it cleans segments, i.e. writes while the store is idle, and with the disk
            // full such a write leaves sled hanging every later flush (see "A full disk").
            // Segments are still cleaned as part of our own writes.
            .flush_every_ms(None);
        let db = open_sled(dir, &config)?;
        let tree = |name: &str| db.open_tree(name).map_err(|e| open_error(dir, e));
        let (batches, batch_ids, idempotency, pending, results) =
            (tree("batches")?, tree("batch_ids")?, tree("idempotency")?, tree("pending")?, tree("results")?);
        let (audit, audit_checkpoints, keys, cscas, data_keys) =
            (tree("audit")?, tree("audit_checkpoints")?, tree("keys")?, tree("cscas")?, tree("data_keys")?);
        let audit_head = audit::AuditHead::load(&audit)?;
        audit::index_checkpoints(&audit, &audit_checkpoints).map_err(|e| open_error(dir, e))?;
        // sled's log file, for the fsync sled's own flush leaves out (see `flush_db`).
        let db_file = File::open(dir.join(SLED_FILE))
            .map_err(|e| StoreError::open_io(dir, "cannot open the database file", &e))?;
        match db.get(SCHEMA_KEY).map_err(|e| open_error(dir, e))? {
            None => {
                db.insert(SCHEMA_KEY, &[SCHEMA_VERSION]).map_err(|e| open_error(dir, e))?;
                db.flush().map_err(|e| open_error(dir, e))?;
                db_file
                    .sync_all()
                    .map_err(|e| StoreError::open_io(dir, "cannot sync the database file", &e))?;
            }
            Some(v) if v.as_ref() == [SCHEMA_VERSION] => {}
            Some(v) => {
                return Err(StoreError::Open {
                    path: dir.to_path_buf(),
                    reason: format!(
                        "store schema {} is not the one this binary knows ({SCHEMA_VERSION}): let the \
                         hcert-signer version that wrote it sign and deliver its queue, then start this one \
                         on an empty store directory",
                        v.first().map_or_else(|| "(empty)".to_owned(), u8::to_string)
                    ),
                });
            }
        }
        let store = Self {
            inner: Arc::new(Inner {
                db,
                db_file,
                batches,
                batch_ids,
                idempotency,
                data_keys,
                pending,
                results,
                audit,
                audit_checkpoints,
                keys,
                cscas,
                key_cache: seal::KeyCache::new(KEY_CACHE),
                key_stock: OnceLock::new(),
                audit_head: Mutex::new(audit_head),
                dir: dir.to_path_buf(),
                options,
                queued: AtomicI64::new(0),
                leases: Mutex::new(queue::Leases::default()),
                leased: AtomicUsize::new(0),
                visibility: RwLock::new(()),
                failure: OnceLock::new(),
                corrupt_records: AtomicU64::new(0),
                expired_unsigned: AtomicU64::new(0),
                _lock: lock,
            }),
        };
        store.recover()?;
        Ok(store)
    }

    /// The directory the store lives in.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Readiness: `Err` once the store has stopped after a failure (a restart is needed), or
    /// while free space is under the floor (signing paused until space is freed).
    pub fn check(&self) -> Result<(), StoreError> {
        self.ensure_ok()?;
        self.ensure_floor()
    }

    /// Flushes everything written so far to disk (fsync).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.ensure_ok()?;
        self.flush_db()
    }

    /// sled's flush, then an fsync of its file. sled 0.34 makes its log writes stable with
    /// `sync_file_range`, which writes the pages but neither commits the metadata of blocks the
    /// file just grew by nor flushes the disk's cache; only its periodic flusher (off here) ever
    /// called fsync. Without this, a flushed write is lost with the file system's journal (a
    /// power cut, ext4 aborting on an error): found by `softhsm-tests/disk.rs`, where a store
    /// whose every write had been flushed came back empty. It does not cover sled's blob files
    /// (delayed allocation keeps their data out of the journal commit this forces), which is why
    /// the store keeps every node small enough that sled writes none ([`SEGMENT_SIZE`]).
    pub(crate) fn flush_db(&self) -> Result<(), StoreError> {
        self.inner.db.flush().map_err(|e| self.fail(e))?;
        self.inner.db_file.sync_all().map_err(|e| self.fail(sled::Error::Io(e)))
    }

    /// Flushes and drops this handle (the files close when the last clone is gone).
    pub fn close(self) -> Result<(), StoreError> {
        self.flush()
    }

    /// Stored records (or batches, counted once) that could not be read and were set aside
    /// (left as they are, never handed out) since this process started. Non-zero means a bug or
    /// tampering: alert on it.
    pub fn corrupt_records(&self) -> u64 {
        self.inner.corrupt_records.load(Ordering::Relaxed)
    }

    /// Records purged by [`SledStore::purge_expired`] before they had a result, since this process
    /// started: each one is a certificate the issuer never got (an operational failure).
    pub fn expired_unsigned_records(&self) -> u64 {
        self.inner.expired_unsigned.load(Ordering::Relaxed)
    }

    /// The error of an earlier failure, if any.
    fn ensure_ok(&self) -> Result<(), StoreError> {
        match self.inner.failure.get() {
            None => Ok(()),
            Some(Failure::Full) => Err(StoreError::Full),
            Some(Failure::Other(why)) => Err(StoreError::Failed(why.clone())),
        }
    }

    /// Maps a sled error and stops the store: after a failed write sled's memory may be ahead
    /// of its disk, and after ENOSPC it refuses (or spins on) further work anyway.
    fn fail(&self, e: sled::Error) -> StoreError {
        let (failure, err) = match &e {
            sled::Error::Io(io) if is_enospc(io) => (Failure::Full, StoreError::Full),
            sled::Error::Io(io) => {
                let text = io_text(io);
                (Failure::Other(format!("I/O: {text}")), StoreError::Io(text))
            }
            other => {
                let text = one_line(&other.to_string());
                (Failure::Other(text.clone()), StoreError::Io(text))
            }
        };
        if self.inner.failure.set(failure).is_ok() {
            log::error!("store: stopped after a storage failure: {err}");
            // Never dropped from now on: sled flushes when dropped, and after some failed writes
            // that flush never returns (see "A full disk"), which would hang the daemon's exit.
            // Nothing is to be written any more anyway; the process exit closes the files.
            std::mem::forget(self.inner.clone());
        }
        err
    }

    /// Refuses the signing pipeline's writes while free space is under the floor (see
    /// [`StoreOptions::min_free_bytes`]), without stopping the store.
    pub(crate) fn ensure_floor(&self) -> Result<(), StoreError> {
        let floor = (self.inner.options.min_free_bytes / 2).min(MAX_FLOOR);
        if floor == 0 {
            return Ok(());
        }
        let free = self.free_bytes()?;
        if free < floor {
            return Err(StoreError::BelowFloor { free_mib: free >> 20, floor_mib: floor >> 20 });
        }
        Ok(())
    }

    /// Free space on the store's file system for this (unprivileged) process, in bytes.
    fn free_bytes(&self) -> Result<u64, StoreError> {
        let st = rustix::fs::statvfs(&self.inner.dir)
            .map_err(|e| StoreError::open_io(&self.inner.dir, "cannot read free space", &e.into()))?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }

    /// Maps a transaction's outcome; `Abort` carries our own typed error.
    fn tx_error(&self, e: sled::transaction::TransactionError<StoreError>) -> StoreError {
        match e {
            sled::transaction::TransactionError::Abort(e) => e,
            sled::transaction::TransactionError::Storage(e) => self.fail(e),
        }
    }

    /// At open: finish purges that a crash interrupted and count the queue.
    fn recover(&self) -> Result<(), StoreError> {
        let mut queued: i64 = 0;
        let mut unfinished = Vec::new();
        for item in self.inner.batches.iter() {
            let (k, v) = item.map_err(|e| self.fail(e))?;
            // One damaged batch must not keep the appliance down: its records are set aside
            // when met (see `claim`), and the count tells the operator.
            let (seq, meta) = match layout::decode_seq(&k)
                .and_then(|seq| Ok((seq, layout::BatchMeta::decode(&v)?)))
            {
                Ok(x) => x,
                Err(e) => {
                    self.inner.corrupt_records.fetch_add(1, Ordering::Relaxed);
                    log::error!("store: a batch's metadata is unreadable, its records are set aside: {e}");
                    continue;
                }
            };
            if meta.state == layout::StoredState::Deleting {
                unfinished.push(seq);
            } else {
                queued += i64::from(meta.pending());
            }
        }
        for seq in unfinished {
            self.sweep(seq)?;
        }
        self.inner.queued.store(queued, Ordering::SeqCst);
        Ok(())
    }
}

/// The segment size to open the store in `dir` with: the one it was created with (sled
/// refuses any other), or [`SEGMENT_SIZE`] for a new store.
fn segment_size(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join(SLED_CONF_FILE))
        .ok()
        .and_then(|conf| {
            conf.lines().find_map(|l| l.strip_prefix("segment_size: ").and_then(|v| v.trim().parse().ok()))
        })
        .unwrap_or(SEGMENT_SIZE)
}

/// Opens sled. We hold our own lock, so no other process has the store; if sled's lock is
/// still taken, it is this process's previous handle whose background threads have not let go
/// of the file yet (sled issues #1234, #1289): wait for them, briefly.
fn open_sled(dir: &Path, config: &sled::Config) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut pause = std::time::Duration::from_millis(5);
    loop {
        match config.open() {
            Ok(db) => return Ok(db),
            Err(e) => {
                let err = open_error(dir, e);
                if !matches!(err, StoreError::Locked { .. }) || std::time::Instant::now() >= deadline {
                    return Err(err);
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(200));
            }
        }
    }
}

fn open_error(dir: &Path, e: sled::Error) -> StoreError {
    match e {
        sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
            StoreError::Locked { path: dir.to_path_buf() }
        }
        sled::Error::Io(io) => StoreError::open_io(dir, "cannot open the database", &io),
        sled::Error::Corruption { .. } => StoreError::Corrupt(format!(
            "the database in {} is damaged: restore it from a backup",
            dir.display()
        )),
        other => StoreError::Open { path: dir.to_path_buf(), reason: one_line(&other.to_string()) },
    }
}
