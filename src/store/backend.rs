//! The one interface every store backend implements (sled embedded, PostgreSQL for a cluster):
//! the API, the pipeline, the key lifecycle and the audit log use only this, never a backend.
//!
//! Each method states the promise a backend must keep; the shared test suite holds every
//! backend to it. Calls are synchronous and may block on I/O (disk, network): async callers
//! run them on blocking threads.

use super::{BatchStatus, CommitStats, NewRecord, Outcome, RecordKey, StoreError, Submitted, WorkItem};
use crate::audit::{Event, Hash};

/// A stored audit entry: its sequence number and its stored bytes (`hash ‖ JSON`).
pub type RawEntry = (u64, Vec<u8>);

/// Audit entries in sequence order, read lazily.
pub type AuditEntries = Box<dyn Iterator<Item = Result<RawEntry, StoreError>> + Send>;

/// A batch's committed results in record order, one JSON object each (no newline), read
/// lazily. After an error the iterator ends.
pub type ResultLines = Box<dyn Iterator<Item = Result<Vec<u8>, StoreError>> + Send>;

/// Builds the event to append from the audit chain's end: (last sequence number, its hash,
/// whether that entry is a checkpoint). `None` appends nothing.
pub type AtHead<'a> = &'a mut dyn FnMut(u64, &Hash, bool) -> Option<Event>;

/// What another handle on the same store (another appliance of the cluster) changed, for the
/// caches and the idle workers of this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Key records or CSCAs: reload them.
    Keys,
    /// New work was queued: wake an idle worker.
    Work,
}

/// Called with each [`Change`]; must return quickly.
pub type OnChange = std::sync::Arc<dyn Fn(Change) + Send + Sync>;

/// A durable store of batches, their records and results, the work queue, key records, the
/// country's CSCAs and the audit log.
pub trait Backend: Send + Sync {
    /// The backend's name as the configuration spells it (`sled`, `postgres`).
    fn kind(&self) -> &'static str;

    /// Where the data lives, for messages (a directory, or a database URL without secrets).
    fn location(&self) -> String;

    // Batches.

    /// Stores a batch durably: on `Ok` the batch and every record survive a crash, power loss
    /// or (for a replicated backend) the loss of a machine, and each record is pending, sealed
    /// under the batch's new data key. An `idempotency_key` the issuer already used returns that
    /// batch as it stands when the request is the same (`created == false`), is
    /// [`StoreError::IdempotencyConflict`] for another request and [`StoreError::BatchDeleted`]
    /// once the batch was purged; then nothing is stored.
    fn submit(
        &self,
        issuer_id: &str,
        idempotency_key: Option<&str>,
        records: &[NewRecord<'_>],
        now_unix: i64,
    ) -> Result<Submitted, StoreError>;

    /// Where the issuer's batch stands, or `None` if it has none by that id. Never reports a
    /// result before it is durable.
    fn batch(&self, issuer_id: &str, batch_id: &str) -> Result<Option<BatchStatus>, StoreError>;

    /// The batch's durable results so far, or `None` if the issuer has no such batch.
    fn results(&self, issuer_id: &str, batch_id: &str) -> Result<Option<ResultLines>, StoreError>;

    /// Purges the issuer's batch (its data key first, so what remains of it is unreadable);
    /// false if there is none. A retry of its idempotency key is refused afterwards.
    fn delete(&self, issuer_id: &str, batch_id: &str) -> Result<bool, StoreError>;

    /// Purges every batch accepted `ttl_secs` ago or earlier, and idempotency tombstones as old;
    /// returns the batches purged.
    fn purge_expired(&self, now_unix: i64, ttl_secs: i64) -> Result<usize, StoreError>;

    // The work queue.

    /// Leases up to `max` pending records, oldest first, to this process. A record leased
    /// elsewhere is not handed out until that lease is released or (in a cluster) expires.
    fn claim(&self, max: usize) -> Result<Vec<WorkItem>, StoreError>;

    /// Gives leased records back without a result (a transient failure): offered again first.
    fn release(&self, keys: &[RecordKey]);

    /// Stores results durably: only the first result of a record counts (exactly one result
    /// per record, one audit entry per released signature), its payload goes, its batch's
    /// counts move, and the signatures are appended to the audit log, all at once.
    fn commit(&self, results: Vec<Outcome>) -> Result<CommitStats, StoreError>;

    /// Records accepted and not yet resolved.
    fn queued_records(&self) -> u64;

    /// Whether there may be records to claim (a hint for the pipeline's sleep).
    fn has_work(&self) -> bool;

    /// Age in seconds of the oldest pending record, if any.
    fn oldest_pending_age(&self, now_unix: i64) -> Result<Option<i64>, StoreError>;

    /// Stored records (or batches) set aside as unreadable since this process started.
    fn corrupt_records(&self) -> u64;

    /// Records purged unsigned by retention since this process started.
    fn expired_unsigned_records(&self) -> u64;

    // The audit log: one hash chain, appended in order.

    /// Appends events in order, durably; returns the last sequence number.
    fn audit_append(&self, events: Vec<Event>) -> Result<u64, StoreError>;

    /// Appends the event `make` builds from the chain's end, with the chain held still.
    fn audit_append_at_head(&self, make: AtHead<'_>) -> Result<Option<u64>, StoreError>;

    /// Up to `limit` checkpoint entries from sequence number `from` on, in order.
    fn audit_checkpoints(&self, from: u64, limit: usize) -> Result<Vec<RawEntry>, StoreError>;

    /// The last sequence number and chain hash (`(0, zeros)` for an empty log).
    fn audit_head(&self) -> Result<(u64, Hash), StoreError>;

    /// Every entry from `from` on, in order.
    fn audit_entries(&self, from: u64) -> AuditEntries;

    // Keys and CSCAs (their lifecycle records; the keys themselves stay in the HSM).

    /// Every key record by label.
    fn key_records(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// One key record.
    fn key_record(&self, label: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Writes a key record with its audit events at once; with `expect`, only if the stored
    /// record is still that (`Some(None)`: absent), else [`StoreError::Conflict`].
    fn put_key_record(
        &self,
        label: &str,
        record: &[u8],
        expect: Option<Option<&[u8]>>,
        events: Vec<Event>,
    ) -> Result<(), StoreError>;

    /// The trusted CSCAs (SHA-256 hex → certificate DER).
    fn csca_records(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Records the CSCAs of the first start, with their audit events.
    fn put_csca_records(&self, cscas: &[(String, Vec<u8>)], events: Vec<Event>) -> Result<(), StoreError>;

    /// A CSCA waiting for a second officer.
    fn csca_pending(&self, fingerprint: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Every CSCA waiting for a second officer.
    fn csca_pendings(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Sets (or clears) a pending CSCA and/or trusts one, with the audit events, at once.
    fn update_csca(
        &self,
        fingerprint: &str,
        pending: Option<&[u8]>,
        trusted: Option<&[u8]>,
        events: Vec<Event>,
    ) -> Result<(), StoreError>;

    // Crypto-shredding.

    /// The KEK label the store was set up with (`None` before the first start).
    fn pinned_kek(&self) -> Result<Option<String>, StoreError>;

    /// Records the KEK label at first start; [`StoreError::Conflict`] for another label later.
    fn pin_kek(&self, label: &str) -> Result<(), StoreError>;

    /// Starts making data keys ahead, so batches are accepted without an HSM call.
    fn start_key_stock(&self) -> Result<(), StoreError>;

    /// Stops that and waits until no HSM call of it is in flight.
    fn stop_key_stock(&self);

    /// Data keys made ahead and waiting.
    fn stocked_data_keys(&self) -> usize;

    // Moving a store ([`super::copy`]).

    /// Everything the store holds, as items in [`super::copy::Item`]'s order, read lazily:
    /// wrapped data keys, sealed blocks and audit entries as stored, never opened. Meant for a
    /// store no daemon is using (what it reads while one writes may not be one moment's state).
    fn export(&self) -> super::copy::Items;

    /// Writes `items` (another store's [`Backend::export`]) into this store, which must be
    /// empty — no batch, key, CSCA, idempotency key, audit entry or KEK pin, else
    /// [`StoreError::NotEmpty`] — at once: in one transaction, so a failure or a refusal leaves
    /// it empty. The audit chain keeps its sequence numbers and bytes; batches keep their queue
    /// order (their internal numbers may change). Returns what was written.
    fn import(&self, items: super::copy::Items) -> Result<super::copy::Tally, StoreError>;

    // The cluster.

    /// Calls `on_change` for what other handles change from now on, and for every kind of
    /// change after each reconnection (changes may have been missed meanwhile). A backend that
    /// one process owns alone has no other handles and never calls it.
    fn watch(&self, on_change: OnChange) {
        let _ = on_change;
    }

    /// Gives back, for other handles to claim at once, all work this handle leased and did
    /// not commit: called once its workers have stopped (a stopping node). A backend that one
    /// process owns alone has nobody to give it to.
    fn give_back_leases(&self) {}

    // Health.

    /// Readiness: `Err` while the store cannot take signing work (stopped after a failure,
    /// out of space, database unreachable).
    fn check(&self) -> Result<(), StoreError>;

    /// `Err` while new batches would be refused for lack of space.
    fn check_free_space(&self) -> Result<(), StoreError>;

    /// Makes everything written so far durable.
    fn flush(&self) -> Result<(), StoreError>;
}
