//! The durable heart of the daemon: batches, the work queue, results, idempotency keys, key
//! records and the audit log, behind one interface ([`Backend`]) with two backends — [`sled`],
//! embedded, the default for one appliance, and PostgreSQL for several appliances as one
//! cluster. The rest of the daemon holds a [`Store`] and never knows which.
//!
//! # What every backend promises
//!
//! - **A 202 means durable.** [`Backend::submit`] returns only once the batch and all its
//!   records survive a crash (and, replicated, the loss of a machine).
//! - **Exactly one result per record.** A commit stores a record's first result only, removes
//!   its payload and appends its signature to the audit log at once; a result is never
//!   released before it is durable, and a crash before that just means the record is signed
//!   again.
//! - **Idempotency.** A key names the request it was first used with (SHA-256 over its records
//!   as parsed, [`idempotency::request_hash`]): the same key with another request is refused
//!   ([`StoreError::IdempotencyConflict`]); with the same request, the batch is returned as it
//!   stands. Purging the batch leaves a tombstone under the key for the retention period, and a
//!   retry is refused ([`StoreError::BatchDeleted`]) instead of signed again.
//! - **Crypto-shredding.** Payloads and results are sealed ([`seal`]: AES-256-GCM, bound to
//!   their batch, purpose and block) under the batch's data key, stored only wrapped by the KEK
//!   in the HSM ([`StoreOptions::key_wrap`]); a purge destroys the wrapped key first, so what a
//!   copy of the disk keeps of a purged batch is ciphertext nobody can open without the HSM.
//!   The KEK's label is pinned at first start, so a missing KEK is noticed instead of replaced.
//! - **One audit chain**, appended in the same transaction as what it records.

pub mod backend;
mod batch;
mod block;
#[cfg(test)]
pub(crate) mod conformance;
pub mod copy;
mod data_keys;
mod error;
pub mod idempotency;
pub mod postgres;
mod record;
pub mod seal;
pub mod sled;

use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

pub use backend::{Backend, Change, OnChange, RawEntry, ResultLines};
pub use batch::{BatchState, BatchStatus, Submitted};
pub use error::StoreError;
pub use record::{
    CommitStats, MAX_DCC_BYTES, NewRecord, OVERSIZE_DCC, Outcome, RecordError, RecordKey, RecordResult,
    WorkItem,
};

use crate::audit::{Event, Hash};

/// Data keys kept unwrapped at most (one per batch being signed or read).
const KEY_CACHE: usize = 1024;
/// Data keys made ahead: the batches accepted while the HSM is away, at most. (The unit tests
/// use a few, to use them up quickly.)
const KEY_STOCK: usize = if cfg!(test) { 8 } else { 256 };

/// Tuning of the store.
#[derive(Clone)]
pub struct StoreOptions {
    /// Wraps and unwraps the batches' data keys with the KEK (the HSM). `None` for a handle
    /// that never reads or writes records (`audit verify`): submit, claim, commit and results
    /// then fail with [`StoreError::NoKeyWrap`].
    pub key_wrap: Option<Arc<dyn seal::KeyWrap>>,
    /// sled's page cache in bytes. sled's resident memory grows well past this while records
    /// are being accepted (measured, 200,000 records of ~400 bytes accepted in one process:
    /// about 166 MiB RSS at 16 MiB, 191 MiB at 32 MiB, 203–231 MiB at 64 MiB), so keep it
    /// modest under a 256 MiB budget. Default 32 MiB.
    pub cache_capacity: u64,
    /// `submit` answers [`StoreError::BelowReserve`] when the file system has less than this
    /// many bytes free (plus room for the batch) — before sled ever meets ENOSPC, after which it
    /// cannot go on. This leaves room to commit the results of work already accepted; the store
    /// does not stop, and accepts batches again once space is freed. Signing itself stops at the
    /// floor, half of this but at most [`MAX_FLOOR`] ([`StoreError::BelowFloor`]). 0 disables
    /// both (tests only).
    pub min_free_bytes: u64,
}

/// The most free space the signing pipeline keeps untouched (see [`StoreOptions`]): room for the
/// writes in flight when it is reached (a few chunks' commits, sled's segments and blobs).
pub const MAX_FLOOR: u64 = 32 << 20;

impl Default for StoreOptions {
    fn default() -> Self {
        Self { key_wrap: None, cache_capacity: 32 << 20, min_free_bytes: 256 << 20 }
    }
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("key_wrap", &self.key_wrap.as_ref().map(|k| k.describe()))
            .field("cache_capacity", &self.cache_capacity)
            .field("min_free_bytes", &self.min_free_bytes)
            .finish()
    }
}

/// The store the daemon uses, whichever backend holds it. Cheap to clone (an `Arc` inside);
/// every [`Backend`] method is callable on it directly.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
}

impl Store {
    /// Opens (or creates) the embedded sled store in `dir`.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<Self, StoreError> {
        Ok(Self::from_backend(sled::SledStore::open(dir, options)?))
    }

    /// Opens the store `[store]` configures: sled under `state_dir/store`, or PostgreSQL (its
    /// schema migrated). With `wait`, an unreachable database is waited for (logged, retried
    /// with backoff) instead of an error, so an appliance booting before its database comes up
    /// by itself; a refusal (credentials, schema, TLS) is returned at once.
    pub fn open_configured(
        config: &crate::config::StoreConfig,
        state_dir: &Path,
        options: StoreOptions,
        wait: bool,
    ) -> Result<Self, StoreError> {
        match config.backend {
            crate::config::StoreBackend::Sled => Self::open(&state_dir.join("store"), options),
            crate::config::StoreBackend::Postgres => {
                let mut pause = std::time::Duration::from_millis(250);
                loop {
                    let settings = postgres::PgSettings::from_config(config)
                        .map_err(|e| StoreError::Database(e.to_string()))?;
                    match postgres::PgStore::open(settings, options.clone()) {
                        Ok(store) => return Ok(Self::from_backend(store)),
                        Err(e) if wait && e.is_unavailable() => {
                            log::warn!("store: {e}; retrying in {pause:?}");
                            std::thread::sleep(pause);
                            pause = (pause * 2).min(std::time::Duration::from_secs(5));
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }

    /// A store on `backend`.
    pub fn from_backend(backend: impl Backend + 'static) -> Self {
        Self { backend: Arc::new(backend) }
    }

    /// Stores results ([`Backend::commit`]), from outcomes or `(key, result)` pairs.
    pub fn commit<O: Into<Outcome>>(&self, results: Vec<O>) -> Result<CommitStats, StoreError> {
        self.backend.commit(results.into_iter().map(Into::into).collect())
    }

    /// Appends the event `make` builds from the chain's end ([`Backend::audit_append_at_head`]).
    pub fn audit_append_at_head<F>(&self, make: F) -> Result<Option<u64>, StoreError>
    where
        F: FnOnce(u64, &Hash, bool) -> Option<Event>,
    {
        let mut make = Some(make);
        self.backend.audit_append_at_head(&mut |last, hash, checkpoint| make.take()?(last, hash, checkpoint))
    }

    /// The whole audit log as `audit verify` reads it ([`crate::audit::verify_chain`]'s input):
    /// a read failure is a bad entry.
    pub fn audit_chain(&self) -> impl Iterator<Item = Result<RawEntry, crate::audit::BadEntry>> + use<> {
        self.backend.audit_entries(crate::audit::FIRST_SEQ).map(|r| {
            r.map_err(|e| crate::audit::BadEntry { seq: 0, reason: format!("cannot read the store: {e}") })
        })
    }

    /// Flushes and drops this handle (the backend closes when the last clone is gone).
    pub fn close(self) -> Result<(), StoreError> {
        self.backend.flush()
    }
}

impl Deref for Store {
    type Target = dyn Backend;

    fn deref(&self) -> &Self::Target {
        self.backend.as_ref()
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend.kind())
            .field("at", &self.backend.location())
            .finish()
    }
}

/// The calendar clock, Unix seconds (audit entry times, tombstones): [`crate::clock`].
pub(crate) fn unix_now() -> i64 {
    crate::clock::now_unix()
}
