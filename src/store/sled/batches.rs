//! Batches: durable submission with idempotency, status, and purging (by the issuer or after
//! the retention period).

use std::sync::atomic::Ordering;

use sled::Transactional;
use sled::transaction::ConflictableTransactionError;

use super::idempotency::{self, Entry};
use super::layout::{self, BATCH_ID_LEN, BatchMeta, RecordKey, StoredState};
use super::record::NewRecord;
use super::seal::Purpose;
use super::{SledStore, StoreError, shred};
use crate::store::{BatchState, BatchStatus, Submitted};

/// Keys removed per sled batch when purging, bounding memory and lock hold times.
const SWEEP_CHUNK: usize = 1024;

/// The outcome of the submit transaction.
enum Outcome {
    Created { seq: u64 },
    Existing(BatchMeta),
}

impl SledStore {
    /// Stores a batch durably: when this returns `Ok`, the batch and every record survive a
    /// crash or power loss, and each record is pending, sealed under the batch's new data key.
    /// With an `idempotency_key` the same issuer already used: the same request (see
    /// [`idempotency::request_hash`]) returns that batch as it stands (`created == false`);
    /// another request is [`StoreError::IdempotencyConflict`]; a key whose batch was purged
    /// is [`StoreError::BatchDeleted`]. In those cases nothing is stored.
    pub fn submit(
        &self,
        issuer_id: &str,
        idempotency_key: Option<&str>,
        records: &[NewRecord<'_>],
        now_unix: i64,
    ) -> Result<Submitted, StoreError> {
        self.ensure_ok()?;
        let (total, idem) = idempotency::admit(issuer_id, idempotency_key, records)?;
        // A replay or a refusal costs no data key (no HSM call) and no space check. Read
        // outside a transaction, so a purge running meanwhile may show half done: then the
        // transaction below decides.
        if let Some((k, request)) = &idem
            && let Some(v) = self.inner.idempotency.get(k).map_err(|e| self.fail(e))?
        {
            let meta = |seq: u64| self.inner.batches.get(layout::seq_key(seq)).map_err(|e| self.fail(e));
            match resolve(&v, request, meta) {
                Ok(existing) if existing.state != StoredState::Deleting => {
                    // The first submission may still be flushing in another thread, and a
                    // replay must not promise more than it.
                    self.flush_db()?;
                    return Ok(replayed(&existing));
                }
                Ok(_) | Err(ResolveError::SledStore(StoreError::Corrupt(_))) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let id = random_id()?;
        let (data_key, wrapped) = self.new_data_key()?;
        // Encoded and sealed before the transaction, a block of records per value: the
        // closure only copies references.
        let blocks = records
            .chunks(layout::BLOCK as usize)
            .zip((0u32..).step_by(layout::BLOCK as usize))
            .map(|(chunk, first)| {
                let bytes = chunk.iter().map(|r| 8 + r.r#ref.len() + r.dcc_json.len()).sum();
                let mut block = layout::BlockWriter::with_capacity(bytes);
                for (offset, r) in (0u8..).zip(chunk) {
                    block.push_payload(offset, r.r#ref, r.dcc_json)?;
                }
                let ctx = shred::context(Purpose::Pending, &id, RecordKey::new(0, first));
                Ok(sled::IVec::from(shred::seal_block(&data_key, &ctx, &block.finish())?))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let meta = BatchMeta {
            id,
            issuer: issuer_id.to_owned(),
            idempotency: idem.map(|(k, _)| k),
            created_at: now_unix,
            total,
            signed: 0,
            rejected: 0,
            state: StoredState::Queued,
        };
        let meta_bytes = meta.encode()?;
        let bytes: u64 = blocks.iter().map(|b| b.len() as u64 + 32).sum();
        self.ensure_free_space(bytes)?;
        let inner = &self.inner;
        let outcome =
            (&inner.batches, &inner.batch_ids, &inner.idempotency, &inner.pending, &inner.data_keys)
                .transaction(|(batches, batch_ids, idempotency, pending, data_keys)| {
                    if let Some((k, request)) = &idem
                        && let Some(v) = idempotency.get(k)?
                    {
                        let meta = |seq: u64| batches.get(&layout::seq_key(seq)[..]);
                        return match resolve(&v, request, meta) {
                            Ok(existing) => Ok(Outcome::Existing(existing)),
                            Err(ResolveError::SledStore(e)) => Err(abort(e)),
                            Err(ResolveError::Tx(e)) => Err(e.into()),
                        };
                    }
                    if batch_ids.get(&id[..])?.is_some() {
                        // 2^-128; refusing beats overwriting another issuer's batch.
                        return Err(abort(StoreError::Corrupt("random batch id collided".into())));
                    }
                    // Inside the transaction, so sequence order is commit order.
                    let seq = batches.generate_id()?;
                    let seq_key = layout::seq_key(seq);
                    batches.insert(&seq_key[..], meta_bytes.as_slice())?;
                    batch_ids.insert(&id[..], &seq_key[..])?;
                    data_keys.insert(&seq_key[..], wrapped.as_slice())?;
                    if let Some((k, request)) = &idem {
                        idempotency.insert(&k[..], Entry::Live { seq, request: *request }.encode())?;
                    }
                    for (first, block) in (0u32..).step_by(layout::BLOCK as usize).zip(&blocks) {
                        pending.insert(&RecordKey::new(seq, first).to_bytes()[..], block.clone())?;
                    }
                    Ok(Outcome::Created { seq })
                })
                .map_err(|e| self.tx_error(e))?;
        let submitted = match outcome {
            Outcome::Created { seq } => {
                self.cache_data_key(seq, data_key);
                self.inner.queued.fetch_add(i64::from(total), Ordering::SeqCst);
                self.rewind_cursor(RecordKey::new(seq, 0));
                Submitted {
                    batch_id: layout::batch_id_text(&id),
                    created: true,
                    total,
                    status: status(&meta),
                }
            }
            Outcome::Existing(existing) => replayed(&existing),
        };
        // Also for a replay (see above).
        self.flush_db()?;
        Ok(submitted)
    }

    /// The batch's status, or `None` if it does not exist for this issuer (another issuer's
    /// batch looks exactly like a missing one).
    pub fn batch(&self, issuer_id: &str, batch_id: &str) -> Result<Option<BatchStatus>, StoreError> {
        self.ensure_ok()?;
        let _visible = self.inner.visibility.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(self.lookup(issuer_id, batch_id)?.map(|(_, meta)| status(&meta)))
    }

    /// Purges a batch: its data key first, then metadata, payloads still pending and results;
    /// its idempotency key becomes a tombstone for the retention period. `false` if it does not
    /// exist for this issuer. Records of it that a worker is signing right now are dropped when
    /// their results arrive.
    pub fn delete(&self, issuer_id: &str, batch_id: &str) -> Result<bool, StoreError> {
        self.ensure_ok()?;
        let Some(id) = layout::parse_batch_id(batch_id) else { return Ok(false) };
        let now = super::unix_now();
        let Some(marked) = self.mark_deleting(Target::Id(id), now, |meta| meta.issuer == issuer_id)? else {
            return Ok(false);
        };
        self.finish_delete(marked)?;
        Ok(true)
    }

    /// Purges every batch accepted more than `ttl_secs` before `now_unix`, whatever its state,
    /// and returns how many. A batch that expires before all its records were signed is an
    /// operational failure (the issuer never got those certificates): such records are counted
    /// in [`SledStore::expired_unsigned_records`] and logged, without any record content. Tombstones
    /// of idempotency keys older than `ttl_secs` are removed too (not counted).
    pub fn purge_expired(&self, now_unix: i64, ttl_secs: i64) -> Result<usize, StoreError> {
        self.ensure_ok()?;
        let cutoff = now_unix.saturating_sub(ttl_secs.max(0));
        let mut expired = Vec::new();
        for item in self.inner.batches.iter() {
            let (k, v) = item.map_err(|e| self.fail(e))?;
            // A damaged batch cannot be dated; the others' retention must go on regardless.
            match layout::decode_seq(&k).and_then(|seq| Ok((seq, BatchMeta::decode(&v)?))) {
                Ok((seq, meta)) if meta.state != StoredState::Deleting && meta.created_at <= cutoff => {
                    expired.push(seq);
                }
                Ok(_) => {}
                Err(e) => log::error!("store: retention skips a batch whose metadata is unreadable: {e}"),
            }
        }
        let (mut purged, mut unsigned) = (0usize, 0u64);
        for seq in expired {
            if let Some(m) =
                self.mark_deleting(Target::Seq(seq), now_unix, |meta| meta.created_at <= cutoff)?
            {
                unsigned += u64::from(m.pending);
                self.finish_delete(m)?;
                purged += 1;
            }
        }
        if unsigned > 0 {
            self.inner.expired_unsigned.fetch_add(unsigned, Ordering::Relaxed);
            log::warn!("store: retention purged {unsigned} record(s) that were never signed");
        }
        self.expire_tombstones(cutoff)?;
        Ok(purged)
    }

    /// Removes the idempotency tombstones of batches purged at or before `cutoff`.
    fn expire_tombstones(&self, cutoff: i64) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        let mut n = 0usize;
        for item in self.inner.idempotency.iter() {
            let (k, v) = item.map_err(|e| self.fail(e))?;
            match Entry::decode(&v) {
                Ok(Entry::Tombstone { deleted_at, .. }) if deleted_at <= cutoff => {
                    batch.remove(k);
                    n += 1;
                }
                Ok(_) => {}
                Err(e) => log::error!("store: retention skips an unreadable idempotency entry: {e}"),
            }
        }
        if n > 0 {
            self.inner.idempotency.apply_batch(batch).map_err(|e| self.fail(e))?;
            self.flush_db()?;
            log::info!("store: {n} idempotency tombstone(s) expired");
        }
        Ok(())
    }

    /// Resolves an issuer's batch id to its sequence number and metadata.
    pub(super) fn lookup(
        &self,
        issuer_id: &str,
        batch_id: &str,
    ) -> Result<Option<(u64, BatchMeta)>, StoreError> {
        let Some(id) = layout::parse_batch_id(batch_id) else { return Ok(None) };
        let Some(seq) = self.inner.batch_ids.get(id).map_err(|e| self.fail(e))? else { return Ok(None) };
        let seq = layout::decode_seq(&seq)?;
        let Some(meta) = self.inner.batches.get(layout::seq_key(seq)).map_err(|e| self.fail(e))? else {
            return Ok(None);
        };
        let meta = BatchMeta::decode(&meta)?;
        if meta.issuer != issuer_id || meta.state == StoredState::Deleting {
            return Ok(None);
        }
        Ok(Some((seq, meta)))
    }

    /// Whether a new batch would be refused for lack of space right now
    /// ([`StoreError::BelowReserve`]), for readiness to report. It does not stop the store:
    /// work already accepted goes on being signed into the reserve. `Ok` with no reserve.
    pub fn check_free_space(&self) -> Result<(), StoreError> {
        self.free_space_for(0)
    }

    /// Refuses a batch that would bring free space under the reserve, so sled never meets
    /// ENOSPC in normal operation (after which it cannot continue).
    fn ensure_free_space(&self, batch_bytes: u64) -> Result<(), StoreError> {
        self.free_space_for(batch_bytes).inspect_err(|e| log::warn!("store: refusing a batch: {e}"))
    }

    fn free_space_for(&self, batch_bytes: u64) -> Result<(), StoreError> {
        let reserve = self.inner.options.min_free_bytes;
        if reserve == 0 {
            return Ok(());
        }
        let free = self.free_bytes()?;
        // The log holds the payloads now and their results later: twice the batch, roughly.
        if free < reserve.saturating_add(batch_bytes.saturating_mul(2)) {
            return Err(StoreError::BelowReserve { free_mib: free >> 20, reserve_mib: reserve >> 20 });
        }
        Ok(())
    }

    /// Makes a batch invisible and unreadable in one transaction (state `Deleting`, its
    /// wrapped data key and id mapping gone, its idempotency key a tombstone dated
    /// `deleted_at`) and takes its pending records off the queue count, if the batch found
    /// through `target` passes `select`.
    pub(super) fn mark_deleting(
        &self,
        target: Target,
        deleted_at: i64,
        select: impl Fn(&BatchMeta) -> bool,
    ) -> Result<Option<Marked>, StoreError> {
        let inner = &self.inner;
        let marked = (&inner.batches, &inner.batch_ids, &inner.idempotency, &inner.data_keys)
            .transaction(|(batches, batch_ids, idempotency, data_keys)| {
                let seq = match target {
                    Target::Seq(seq) => seq,
                    Target::Id(id) => match batch_ids.get(&id[..])? {
                        Some(s) => layout::decode_seq(&s).map_err(abort)?,
                        None => return Ok(None),
                    },
                };
                let seq_key = layout::seq_key(seq);
                let Some(v) = batches.get(&seq_key[..])? else { return Ok(None) };
                let mut meta = BatchMeta::decode(&v).map_err(abort)?;
                if meta.state == StoredState::Deleting || !select(&meta) {
                    return Ok(None);
                }
                let pending = meta.pending();
                meta.state = StoredState::Deleting;
                batches.insert(&seq_key[..], meta.encode().map_err(abort)?)?;
                batch_ids.remove(&meta.id[..])?;
                // The shredding itself: without its data key, no copy of the batch's blocks
                // anywhere in sled's files can be opened.
                data_keys.remove(&seq_key[..])?;
                if let Some(k) = &meta.idempotency {
                    // Only if it still names this batch (it always should).
                    let names_it = match idempotency.get(&k[..])? {
                        Some(v) => matches!(Entry::decode(&v), Ok(Entry::Live { seq: s, .. }) if s == seq),
                        None => false,
                    };
                    if names_it {
                        let tombstone = Entry::Tombstone { batch_id: meta.id, deleted_at };
                        idempotency.insert(&k[..], tombstone.encode())?;
                    }
                }
                Ok(Some(Marked { seq, pending }))
            })
            .map_err(|e| self.tx_error(e))?;
        if let Some(m) = &marked {
            self.inner.queued.fetch_sub(i64::from(m.pending), Ordering::SeqCst);
        }
        Ok(marked)
    }

    /// The data key's removal is flushed before the sweep begins: a crash or a copy of the
    /// disk taken at any point after finds the batch's blocks, if at all, without their key.
    fn finish_delete(&self, marked: Marked) -> Result<(), StoreError> {
        self.flush_db()?;
        self.evict_data_key(marked.seq);
        self.sweep(marked.seq)?;
        self.flush_db()?;
        Ok(())
    }

    /// Removes a `Deleting` batch's payloads and results, then its metadata. Idempotent: a
    /// crash midway is finished at the next open.
    pub(super) fn sweep(&self, seq: u64) -> Result<(), StoreError> {
        let prefix = layout::seq_key(seq);
        // Gone already when marked; a store from before that rule would keep it otherwise.
        self.inner.data_keys.remove(prefix).map_err(|e| self.fail(e))?;
        for tree in [&self.inner.pending, &self.inner.results] {
            loop {
                let mut batch = sled::Batch::default();
                let mut n = 0;
                for key in tree.scan_prefix(prefix).keys().take(SWEEP_CHUNK) {
                    batch.remove(key.map_err(|e| self.fail(e))?);
                    n += 1;
                }
                if n == 0 {
                    break;
                }
                tree.apply_batch(batch).map_err(|e| self.fail(e))?;
            }
        }
        self.inner.batches.remove(prefix).map_err(|e| self.fail(e))?;
        Ok(())
    }
}

/// How `mark_deleting` finds the batch.
#[derive(Clone, Copy)]
pub(super) enum Target {
    Id([u8; BATCH_ID_LEN]),
    Seq(u64),
}

/// A batch just marked for deletion.
pub(super) struct Marked {
    seq: u64,
    pending: u32,
}

pub(super) fn status(meta: &BatchMeta) -> BatchStatus {
    BatchStatus {
        batch_id: layout::batch_id_text(&meta.id),
        state: match meta.state {
            StoredState::Queued => BatchState::Queued,
            StoredState::Signing => BatchState::Signing,
            // `Deleting` batches are never looked up; reporting them as done is harmless.
            StoredState::Done | StoredState::Deleting => BatchState::Done,
        },
        total: meta.total,
        signed: meta.signed,
        rejected: meta.rejected,
        created_at: meta.created_at,
    }
}

/// A submission answered from the batch an idempotency key names.
fn replayed(meta: &BatchMeta) -> Submitted {
    Submitted {
        batch_id: layout::batch_id_text(&meta.id),
        created: false,
        total: meta.total,
        status: status(meta),
    }
}

/// Why an idempotency key could not be resolved: our error, or the transaction's.
enum ResolveError<E> {
    SledStore(StoreError),
    Tx(E),
}

impl From<ResolveError<StoreError>> for StoreError {
    fn from(e: ResolveError<StoreError>) -> Self {
        match e {
            ResolveError::SledStore(e) | ResolveError::Tx(e) => e,
        }
    }
}

/// What a stored idempotency entry `v` answers to `request`: the batch it names if the request
/// is the same, otherwise the conflict or the tombstone.
fn resolve<E>(
    v: &[u8],
    request: &[u8; 32],
    meta: impl Fn(u64) -> Result<Option<sled::IVec>, E>,
) -> Result<BatchMeta, ResolveError<E>> {
    match Entry::decode(v).map_err(ResolveError::SledStore)? {
        Entry::Tombstone { batch_id, .. } => Err(ResolveError::SledStore(StoreError::BatchDeleted {
            batch_id: layout::batch_id_text(&batch_id),
        })),
        Entry::Live { request: first, .. } if &first != request => {
            Err(ResolveError::SledStore(StoreError::IdempotencyConflict))
        }
        Entry::Live { seq, .. } => {
            let bytes = meta(seq).map_err(ResolveError::Tx)?.ok_or_else(|| {
                ResolveError::SledStore(StoreError::Corrupt("idempotency key names a missing batch".into()))
            })?;
            BatchMeta::decode(&bytes).map_err(ResolveError::SledStore)
        }
    }
}

pub(super) fn abort(e: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(e)
}

/// 128 random bits from the system's CSPRNG: ids are capabilities-in-part, so unguessable.
fn random_id() -> Result<[u8; BATCH_ID_LEN], StoreError> {
    let mut id = [0u8; BATCH_ID_LEN];
    aws_lc_rs::rand::fill(&mut id)
        .map_err(|_| StoreError::Io("the system random generator failed".into()))?;
    Ok(id)
}
