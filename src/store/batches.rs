//! Batches: durable submission with idempotency, status, and purging (by the issuer or after
//! the retention period).

use std::sync::atomic::Ordering;

use serde::Serialize;
use sled::Transactional;
use sled::transaction::ConflictableTransactionError;

use super::layout::{self, BATCH_ID_LEN, BatchMeta, RecordKey, StoredState};
use super::record::NewRecord;
use super::{Store, StoreError};

/// Keys removed per sled batch when purging, bounding memory and lock hold times.
const SWEEP_CHUNK: usize = 1024;

/// A batch's state as the API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchState {
    /// Accepted, no result yet.
    Queued,
    /// Some records have results.
    Signing,
    /// Every record is signed or rejected.
    Done,
}

impl BatchState {
    /// The name used in the API: `queued`, `signing` or `done`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Signing => "signing",
            Self::Done => "done",
        }
    }
}

/// Where a batch stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchStatus {
    /// The batch id.
    pub batch_id: String,
    /// Its state.
    pub state: BatchState,
    /// Records in the batch.
    pub total: u32,
    /// Records signed.
    pub signed: u32,
    /// Records rejected.
    pub rejected: u32,
    /// When it was accepted (Unix seconds).
    pub created_at: i64,
}

/// The answer to a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    /// The batch id to give the issuer.
    pub batch_id: String,
    /// False when the idempotency key named an existing batch, which is returned instead.
    pub created: bool,
    /// Records in the batch.
    pub total: u32,
}

/// The outcome of the submit transaction.
enum Outcome {
    Created { id: [u8; BATCH_ID_LEN], seq: u64 },
    Existing { id: [u8; BATCH_ID_LEN], total: u32 },
}

impl Store {
    /// Stores a batch durably: when this returns `Ok`, the batch and every record survive a
    /// crash or power loss, and each record is pending. With an `idempotency_key` already used
    /// by the same issuer for a batch that still exists, that batch is returned
    /// (`created == false`) and nothing is stored.
    pub fn submit(
        &self,
        issuer_id: &str,
        idempotency_key: Option<&str>,
        records: &[NewRecord<'_>],
        now_unix: i64,
    ) -> Result<Submitted, StoreError> {
        self.ensure_ok()?;
        if records.is_empty() {
            return Err(StoreError::Invalid("a batch needs at least one record"));
        }
        let total =
            u32::try_from(records.len()).map_err(|_| StoreError::Invalid("too many records in one batch"))?;
        let idem = idempotency_key.map(|k| layout::idempotency_key(issuer_id, k)).transpose()?;
        // Encoded before the transaction, a block of records per value: the closure only
        // copies references.
        let blocks = records
            .chunks(layout::BLOCK as usize)
            .map(|chunk| {
                let bytes = chunk.iter().map(|r| 8 + r.r#ref.len() + r.dcc_json.len()).sum();
                let mut block = layout::BlockWriter::with_capacity(bytes);
                for (offset, r) in (0u8..).zip(chunk) {
                    block.push_payload(offset, r.r#ref, r.dcc_json)?;
                }
                Ok(sled::IVec::from(block.finish()))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let id = random_id()?;
        let meta = BatchMeta {
            id,
            issuer: issuer_id.to_owned(),
            idempotency_key: idempotency_key.map(str::to_owned),
            created_at: now_unix,
            total,
            signed: 0,
            rejected: 0,
            state: StoredState::Queued,
        };
        let meta_bytes = meta.encode()?;
        if idem.is_none() || !self.idempotency_hit(idem.as_deref())? {
            let bytes: u64 = blocks.iter().map(|b| b.len() as u64 + 32).sum();
            self.ensure_free_space(bytes)?;
        }
        let inner = &self.inner;
        let outcome = (&inner.batches, &inner.batch_ids, &inner.idempotency, &inner.pending)
            .transaction(|(batches, batch_ids, idempotency, pending)| {
                if let Some(k) = &idem
                    && let Some(seq) = idempotency.get(k)?
                {
                    let seq_bytes: &[u8] = &seq;
                    let existing = batches.get(seq_bytes)?.ok_or_else(|| {
                        abort(StoreError::Corrupt("idempotency key names a missing batch".into()))
                    })?;
                    let existing = BatchMeta::decode(&existing).map_err(abort)?;
                    return Ok(Outcome::Existing { id: existing.id, total: existing.total });
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
                if let Some(k) = &idem {
                    idempotency.insert(k.as_slice(), &seq_key[..])?;
                }
                for (first, block) in (0u32..).step_by(layout::BLOCK as usize).zip(&blocks) {
                    pending.insert(&RecordKey::new(seq, first).to_bytes()[..], block.clone())?;
                }
                Ok(Outcome::Created { id, seq })
            })
            .map_err(|e| self.tx_error(e))?;
        let submitted = match outcome {
            Outcome::Created { id, seq } => {
                self.inner.queued.fetch_add(i64::from(total), Ordering::SeqCst);
                self.rewind_cursor(RecordKey::new(seq, 0));
                Submitted { batch_id: layout::batch_id_text(&id), created: true, total }
            }
            Outcome::Existing { id, total } => {
                Submitted { batch_id: layout::batch_id_text(&id), created: false, total }
            }
        };
        // Also for a replay: the first submission may still be flushing in another thread, and
        // a replay must not promise more than it.
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

    /// Purges a batch: metadata, payloads still pending, results and its idempotency key.
    /// `false` if it does not exist for this issuer. Records of it that a worker is signing
    /// right now are dropped when their results arrive.
    pub fn delete(&self, issuer_id: &str, batch_id: &str) -> Result<bool, StoreError> {
        self.ensure_ok()?;
        let Some(id) = layout::parse_batch_id(batch_id) else { return Ok(false) };
        let Some(marked) = self.mark_deleting(Target::Id(id), |meta| meta.issuer == issuer_id)? else {
            return Ok(false);
        };
        self.finish_delete(marked)?;
        Ok(true)
    }

    /// Purges every batch accepted more than `ttl_secs` before `now_unix`, whatever its state,
    /// and returns how many. A batch that expires before all its records were signed is an
    /// operational failure (the issuer never got those certificates): such records are counted
    /// in [`Store::expired_unsigned_records`] and logged, without any record content.
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
            if let Some(m) = self.mark_deleting(Target::Seq(seq), |meta| meta.created_at <= cutoff)? {
                unsigned += u64::from(m.pending);
                self.finish_delete(m)?;
                purged += 1;
            }
        }
        if unsigned > 0 {
            self.inner.expired_unsigned.fetch_add(unsigned, Ordering::Relaxed);
            log::warn!("store: retention purged {unsigned} record(s) that were never signed");
        }
        Ok(purged)
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

    fn idempotency_hit(&self, key: Option<&[u8]>) -> Result<bool, StoreError> {
        match key {
            Some(k) => Ok(self.inner.idempotency.contains_key(k).map_err(|e| self.fail(e))?),
            None => Ok(false),
        }
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

    /// Makes a batch invisible in one transaction (state `Deleting`, id and idempotency
    /// mappings gone) and takes its pending records off the queue count, if the batch found
    /// through `target` passes `select`.
    pub(super) fn mark_deleting(
        &self,
        target: Target,
        select: impl Fn(&BatchMeta) -> bool,
    ) -> Result<Option<Marked>, StoreError> {
        let inner = &self.inner;
        let marked = (&inner.batches, &inner.batch_ids, &inner.idempotency)
            .transaction(|(batches, batch_ids, idempotency)| {
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
                if let Some(key) = &meta.idempotency_key {
                    let k = layout::idempotency_key(&meta.issuer, key).map_err(abort)?;
                    // Only if it still names this batch (it always should).
                    if idempotency.get(k.as_slice())?.as_deref() == Some(&seq_key[..]) {
                        idempotency.remove(k.as_slice())?;
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

    fn finish_delete(&self, marked: Marked) -> Result<(), StoreError> {
        self.sweep(marked.seq)?;
        self.flush_db()?;
        Ok(())
    }

    /// Removes a `Deleting` batch's payloads and results, then its metadata. Idempotent: a
    /// crash midway is finished at the next open.
    pub(super) fn sweep(&self, seq: u64) -> Result<(), StoreError> {
        let prefix = layout::seq_key(seq);
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
