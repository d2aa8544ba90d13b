//! The work queue: claiming pending records for signing (leases live in memory only), putting
//! them back after a transient failure, and committing results exactly once.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard, PoisonError};

use sled::Transactional;

use super::batches::abort;
use super::layout::{self, BatchMeta, RecordKey, StoredState};
use super::record::WorkItem;
use super::seal::{DataKey, Purpose};
use super::{SledStore, StoreError, shred};
use crate::audit::{Event, SignedRecord};
use crate::store::{CommitStats, Outcome};

/// This process's view of who works on what. Leases are not persisted: after a restart every
/// record in `pending` is claimable again, which is what makes a crash between signing and
/// committing harmless.
#[derive(Debug, Default)]
pub(super) struct Leases {
    /// Handed out (or set aside as unreadable) and not yet committed or released.
    leased: HashSet<RecordKey>,
    /// Released after a transient failure: offered again before anything newer.
    retry: BTreeSet<RecordKey>,
    /// Where the next scan of `pending` starts (everything before it is leased, resolved,
    /// retried via `retry`, or belongs to a batch being purged). Keeps `claim` O(max) instead
    /// of re-reading every leased record each time.
    cursor: Option<RecordKey>,
}

/// What a claim needs to know about a record's batch.
struct BatchInfo {
    id: String,
    raw_id: [u8; layout::BATCH_ID_LEN],
    issuer: String,
    created_at: i64,
    key: Arc<DataKey>,
}

impl SledStore {
    /// Hands out up to `max` pending records not leased in this process, oldest first (records
    /// released for retry come before newer ones). Each is leased until `commit` or `release`;
    /// concurrent callers never get the same record.
    pub fn claim(&self, max: usize) -> Result<Vec<WorkItem>, StoreError> {
        self.ensure_ok()?;
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        // Signing what could not be committed would only waste HSM operations.
        self.ensure_floor()?;
        let mut leases = self.leases();
        let mut batches: HashMap<u64, Option<Arc<BatchInfo>>> = HashMap::new();
        while out.len() < max {
            let Some(&first) = leases.retry.first() else { break };
            // This block's retried records, as many as still fit, in one read of the block.
            let block = first.block();
            let wanted: BTreeSet<RecordKey> =
                leases.retry.range(block..block.next_block()).copied().take(max - out.len()).collect();
            for key in &wanted {
                leases.retry.remove(key);
            }
            if let Some(v) = self.inner.pending.get(block.to_bytes()).map_err(|e| self.fail(e))? {
                let want = |k: RecordKey| wanted.contains(&k);
                if let Err(e) = self.take_block(block, &v, want, max, &mut batches, &mut leases, &mut out) {
                    // The batch's data key cannot be unwrapped now (HSM): offered again later.
                    leases.retry.extend(wanted.iter().filter(|k| !out.iter().any(|w| w.key == **k)));
                    return self.claim_stopped(leases, out, e);
                }
            }
        }
        let mut rewound = false;
        loop {
            let start = leases.cursor.unwrap_or(RecordKey::new(0, 0));
            for item in self.inner.pending.range(start.block().to_bytes()..) {
                if out.len() >= max {
                    break;
                }
                let (k, v) = item.map_err(|e| self.fail(e))?;
                let Ok(block) = RecordKey::from_bytes(&k) else {
                    // Not ours to interpret: never handed out, counted once per scan.
                    log::error!("store: a malformed key in the queue was skipped");
                    continue;
                };
                leases.cursor = Some(block.next_block());
                let want = |k: RecordKey| k >= start;
                match self.take_block(block, &v, want, max, &mut batches, &mut leases, &mut out) {
                    // Full in the middle of a block: the next scan resumes inside it.
                    Ok(Some(rest)) => leases.cursor = Some(rest),
                    Ok(None) => {}
                    Err(e) => {
                        // The batch's data key cannot be unwrapped now (HSM): rescanned later.
                        leases.cursor = Some(start.max(block));
                        return self.claim_stopped(leases, out, e);
                    }
                }
            }
            // Safety net: with nothing leased and nothing found, yet records queued, a lease
            // was dropped without commit or release; scan once more from the start.
            if out.is_empty()
                && !rewound
                && leases.leased.is_empty()
                && leases.cursor.is_some()
                && self.queued_records() > 0
            {
                leases.cursor = None;
                rewound = true;
                continue;
            }
            break;
        }
        self.inner.leased.store(leases.leased.len(), Ordering::Relaxed);
        Ok(out)
    }

    /// Ends a claim that met an error after leasing some records: those are handed out (the
    /// error comes back at the next claim); with none, the error is returned.
    fn claim_stopped(
        &self,
        leases: MutexGuard<'_, Leases>,
        out: Vec<WorkItem>,
        e: StoreError,
    ) -> Result<Vec<WorkItem>, StoreError> {
        self.inner.leased.store(leases.leased.len(), Ordering::Relaxed);
        if out.is_empty() { Err(e) } else { Ok(out) }
    }

    /// Puts leased records back for another `claim` (a chunk that failed transiently, e.g. an
    /// HSM outage). Keys not leased are ignored.
    pub fn release(&self, keys: &[RecordKey]) {
        let mut leases = self.leases();
        for key in keys {
            if leases.leased.remove(key) {
                leases.retry.insert(*key);
            }
        }
        self.inner.leased.store(leases.leased.len(), Ordering::Relaxed);
    }

    /// Stores results in one transaction and flushes. A record gets a result only if it is
    /// still pending: one that already has a result keeps it (the new one is counted as a
    /// duplicate), one whose batch was purged is dropped. The record's payload is removed, its
    /// batch's counters and state updated, and every signature stored is appended to the audit
    /// log (one entry per batch) in the same transaction: a signature is released only with its
    /// audit entry. The leases of all given keys end, whatever happened to them.
    ///
    /// On `Err` nothing was committed (or the store stopped); the records stay leased until
    /// `release`d.
    pub fn commit<O: Into<Outcome>>(&self, results: Vec<O>) -> Result<CommitStats, StoreError> {
        self.ensure_ok()?;
        if results.is_empty() {
            return Ok(CommitStats::default());
        }
        // Under the floor sled could meet ENOSPC, which it does not survive (see the module).
        self.ensure_floor()?;
        let results: Vec<Outcome> = results.into_iter().map(Into::into).collect();
        let lines: Vec<(RecordKey, sled::IVec, Option<SignedRecord>)> =
            results.iter().map(|o| (o.key, sled::IVec::from(o.result.to_json()), o.audit_record())).collect();
        // The lines of each block, in record order.
        let mut by_block: BTreeMap<RecordKey, Vec<usize>> = BTreeMap::new();
        for (i, (key, _, _)) in lines.iter().enumerate() {
            by_block.entry(key.block()).or_default().push(i);
        }
        for members in by_block.values_mut() {
            members.sort_by_key(|&i| lines[i].0);
        }
        // Each batch's data key, unwrapped before the transaction (an HSM call at most once
        // per batch); a batch without one was purged: its results are dropped.
        let mut keys: BTreeMap<u64, Option<Arc<DataKey>>> = BTreeMap::new();
        for block in by_block.keys() {
            if let Entry::Vacant(slot) = keys.entry(block.batch_seq()) {
                slot.insert(self.data_key(block.batch_seq())?);
            }
        }
        let inner = &self.inner;
        let now = super::unix_now();
        // Held until the flush returned: readers see this commit only once it is durable.
        let visible = inner.visibility.write().unwrap_or_else(PoisonError::into_inner);
        let mut head = self.audit_head_lock();
        let (stats, new_head, applied, done) = (&inner.batches, &inner.pending, &inner.results, &inner.audit)
            .transaction(|(batches, pending, stored, audit)| {
                let mut stats = CommitStats::default();
                // (line index, when its batch was accepted), for the metrics after the flush.
                let mut applied: Vec<(usize, i64)> = Vec::new();
                // Signatures stored, per batch, for the audit log.
                let mut signed_by_batch: BTreeMap<u64, Vec<SignedRecord>> = BTreeMap::new();
                // Ordered, so the metadata writes happen in a stable order.
                let mut metas: BTreeMap<u64, Option<(BatchMeta, bool)>> = BTreeMap::new();
                for (block, members) in &by_block {
                    let seq = block.batch_seq();
                    if let Entry::Vacant(slot) = metas.entry(seq) {
                        let meta = match batches.get(&layout::seq_key(seq)[..])? {
                            Some(v) => match BatchMeta::decode(&v) {
                                Ok(m) if m.state != StoredState::Deleting => Some((m, false)),
                                Ok(_) => None,
                                Err(e) => {
                                    log::error!(
                                        "store: batch {seq} metadata unreadable, results dropped: {e}"
                                    );
                                    None
                                }
                            },
                            None => None,
                        };
                        slot.insert(meta);
                    }
                    let (Some(Some((meta, dirty))), Some(Some(key))) = (metas.get_mut(&seq), keys.get(&seq))
                    else {
                        stats.orphaned += members.len();
                        continue;
                    };
                    let k = block.to_bytes();
                    let (pctx, rctx) = (
                        shred::context(Purpose::Pending, &meta.id, *block),
                        shred::context(Purpose::Results, &meta.id, *block),
                    );
                    let (pending_v, stored_v) = (pending.get(&k[..])?, stored.get(&k[..])?);
                    let opened = pending_v
                        .as_deref()
                        .map(|v| shred::open_block(key, &pctx, v))
                        .transpose()
                        .and_then(|p| {
                            Ok((
                                p,
                                stored_v.as_deref().map(|v| shred::open_block(key, &rctx, v)).transpose()?,
                            ))
                        });
                    let (pending_plain, stored_plain) = match opened {
                        Ok(o) => o,
                        Err(e) => {
                            log::error!(
                                "store: block {block} does not open, {} result(s) dropped: {e}",
                                members.len()
                            );
                            stats.orphaned += members.len();
                            continue;
                        }
                    };
                    let decoded = pending_plain
                        .as_deref()
                        .map_or(Ok(Vec::new()), |p| layout::decode_block(p))
                        .and_then(|p| {
                            Ok((
                                p,
                                stored_plain
                                    .as_deref()
                                    .map_or(Ok(Vec::new()), |r| layout::decode_block(r))?,
                            ))
                        });
                    let (mut queued, mut resolved) = match decoded {
                        Ok(d) => d,
                        Err(e) => {
                            // Set aside by `claim` already; nothing of this block can be applied.
                            log::error!(
                                "store: block {block} unreadable, {} result(s) dropped: {e}",
                                members.len()
                            );
                            stats.orphaned += members.len();
                            continue;
                        }
                    };
                    let (queued_before, resolved_before) = (queued.len(), resolved.len());
                    for &i in members {
                        let (key, line, signed) = &lines[i];
                        if key.index() >= meta.total {
                            stats.orphaned += 1;
                            continue;
                        }
                        if !layout::resolve_entry(&mut queued, &mut resolved, key.offset(), line.as_ref()) {
                            stats.duplicates += 1;
                            continue;
                        }
                        applied.push((i, meta.created_at));
                        if let Some(fact) = signed {
                            meta.signed = meta.signed.saturating_add(1);
                            stats.signed += 1;
                            signed_by_batch.entry(seq).or_default().push(fact.clone());
                        } else {
                            meta.rejected = meta.rejected.saturating_add(1);
                            stats.rejected += 1;
                        }
                        stats.applied += 1;
                        meta.state = if meta.pending() == 0 {
                            stats.batches_done += 1;
                            StoredState::Done
                        } else {
                            StoredState::Signing
                        };
                        *dirty = true;
                    }
                    if queued.len() != queued_before {
                        if queued.is_empty() {
                            pending.remove(&k[..])?;
                        } else {
                            pending
                                .insert(&k[..], layout::seal_entries(key, &pctx, &queued).map_err(abort)?)?;
                        }
                    }
                    if resolved.len() != resolved_before {
                        stored.insert(&k[..], layout::seal_entries(key, &rctx, &resolved).map_err(abort)?)?;
                    }
                }
                let mut h = *head;
                let mut done = Vec::new();
                for (seq, meta) in &metas {
                    if let Some((meta, true)) = meta {
                        batches.insert(&layout::seq_key(*seq)[..], meta.encode().map_err(abort)?)?;
                        if meta.state == StoredState::Done {
                            done.push(*seq);
                        }
                    }
                    if let (Some((meta, _)), Some(records)) = (meta, signed_by_batch.remove(seq)) {
                        let event = Event::Signed {
                            batch: layout::batch_id_text(&meta.id),
                            client: meta.issuer.clone(),
                            records,
                        };
                        h.append(audit, now, event)?;
                    }
                }
                Ok((stats, h, applied, done))
            })
            .map_err(|e| self.tx_error(e))?;
        self.flush_db()?;
        // Signing is over for these: their keys leave memory (a download unwraps once more).
        for seq in done {
            self.evict_data_key(seq);
        }
        self.publish_head(&mut head, new_head);
        drop(head);
        drop(visible);
        crate::store::record::observe_commit(&results, |i| lines[i].2.as_ref(), &applied, stats.batches_done);
        inner.queued.fetch_sub(stats.applied as i64, Ordering::SeqCst);
        let mut leases = self.leases();
        for o in &results {
            leases.leased.remove(&o.key);
        }
        inner.leased.store(leases.leased.len(), Ordering::Relaxed);
        Ok(stats)
    }

    /// Records accepted and not yet signed or rejected (leased ones included), for
    /// backpressure and the `hcert_queue_records` gauge. O(1).
    pub fn queued_records(&self) -> u64 {
        u64::try_from(self.inner.queued.load(Ordering::SeqCst)).unwrap_or(0)
    }

    /// Cheap "is there something to claim": queued records beyond those leased.
    pub fn has_work(&self) -> bool {
        self.queued_records() > self.inner.leased.load(Ordering::Relaxed) as u64
    }

    /// Seconds since the oldest pending record was accepted (`None` with an empty queue), for
    /// alerting on a stuck queue.
    pub fn oldest_pending_age(&self, now_unix: i64) -> Result<Option<i64>, StoreError> {
        self.ensure_ok()?;
        let mut start = RecordKey::new(0, 0);
        loop {
            let Some(item) = self.inner.pending.range(start.to_bytes()..).next() else { return Ok(None) };
            let (k, _) = item.map_err(|e| self.fail(e))?;
            let key = RecordKey::from_bytes(&k)?;
            let seq = key.batch_seq();
            if let Some(v) = self.inner.batches.get(layout::seq_key(seq)).map_err(|e| self.fail(e))? {
                let meta = BatchMeta::decode(&v)?;
                if meta.state != StoredState::Deleting {
                    return Ok(Some(now_unix.saturating_sub(meta.created_at).max(0)));
                }
            }
            // A batch being purged: skip all of it.
            match seq.checked_add(1) {
                Some(next) => start = RecordKey::new(next, 0),
                None => return Ok(None),
            }
        }
    }

    /// After a submit: a batch whose sequence number is below the scan cursor (a concurrent
    /// submit committed out of order) must not be skipped.
    pub(super) fn rewind_cursor(&self, to: RecordKey) {
        let mut leases = self.leases();
        if leases.cursor.is_some_and(|c| c > to) {
            leases.cursor = Some(to);
        }
    }

    fn leases(&self) -> MutexGuard<'_, Leases> {
        // The lease set stays consistent under a panic (single inserts/removes).
        self.inner.leases.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Leases the records of one pending block that `want` selects (and nobody holds) to the
    /// caller, in record order, until `out` holds `max`; records that cannot be read are set
    /// aside. Returns the first selected record left in the block when `out` filled up first.
    #[allow(clippy::too_many_arguments)]
    fn take_block(
        &self,
        block: RecordKey,
        value: &[u8],
        want: impl Fn(RecordKey) -> bool,
        max: usize,
        batches: &mut HashMap<u64, Option<Arc<BatchInfo>>>,
        leases: &mut Leases,
        out: &mut Vec<WorkItem>,
    ) -> Result<Option<RecordKey>, StoreError> {
        let seq = block.batch_seq();
        let info = match batches.get(&seq) {
            Some(info) => info.clone(),
            None => {
                let info = match self.inner.batches.get(layout::seq_key(seq)).map_err(|e| self.fail(e))? {
                    None => None,
                    Some(v) => match BatchMeta::decode(&v) {
                        Ok(m) if m.state == StoredState::Deleting => None,
                        Ok(m) => match self.data_key(seq)? {
                            Some(key) => Some(Arc::new(BatchInfo {
                                id: layout::batch_id_text(&m.id),
                                raw_id: m.id,
                                issuer: m.issuer,
                                created_at: m.created_at,
                                key,
                            })),
                            // Purged since its metadata was read (the key goes first): skip.
                            None if !self.batch_is_live(seq)? => None,
                            None => {
                                let e =
                                    StoreError::Corrupt(format!("batch {seq} has no data key to open it"));
                                self.quarantine_block(block, None, leases, &e);
                                return Ok(None);
                            }
                        },
                        Err(e) => {
                            self.quarantine_block(block, None, leases, &e);
                            return Ok(None);
                        }
                    },
                };
                batches.insert(seq, info.clone());
                info
            }
        };
        // A batch being purged: its records are about to go.
        let Some(info) = info else { return Ok(None) };
        let opened =
            shred::open_block(&info.key, &shred::context(Purpose::Pending, &info.raw_id, block), value);
        let plain = match opened {
            Ok(p) => p,
            Err(e) => {
                self.quarantine_block(block, None, leases, &e);
                return Ok(None);
            }
        };
        let entries = match layout::decode_block(&plain) {
            Ok(entries) => entries,
            Err(e) => {
                self.quarantine_block(block, None, leases, &e);
                return Ok(None);
            }
        };
        for (offset, entry) in entries {
            let key = block.at_offset(offset);
            if !want(key) || leases.leased.contains(&key) {
                continue;
            }
            if out.len() >= max {
                return Ok(Some(key));
            }
            match layout::decode_payload(entry) {
                Ok((r#ref, dcc_json)) => {
                    leases.leased.insert(key);
                    out.push(WorkItem {
                        key,
                        batch_id: info.id.clone(),
                        issuer_id: info.issuer.clone(),
                        r#ref,
                        dcc_json,
                        accepted_at: info.created_at,
                    });
                }
                Err(e) => self.quarantine(std::iter::once(key), leases, &e),
            }
        }
        Ok(None)
    }

    /// Whether batch `seq` exists and is not being purged.
    fn batch_is_live(&self, seq: u64) -> Result<bool, StoreError> {
        Ok(match self.inner.batches.get(layout::seq_key(seq)).map_err(|e| self.fail(e))? {
            Some(v) => BatchMeta::decode(&v).is_ok_and(|m| m.state != StoredState::Deleting),
            None => false,
        })
    }

    /// Sets aside the records of a block that cannot be used: those its readable `entries`
    /// name, or every record it could hold when it cannot be read at all.
    fn quarantine_block(
        &self,
        block: RecordKey,
        entries: Option<&[(u8, &[u8])]>,
        leases: &mut Leases,
        why: &StoreError,
    ) {
        match entries {
            Some(entries) => self.quarantine(entries.iter().map(|&(o, _)| block.at_offset(o)), leases, why),
            // Unreadable: every record the block can hold (offsets below BLOCK <= 256 fit a u8).
            None => self.quarantine((0..layout::BLOCK).map(|o| block.at_offset(o as u8)), leases, why),
        }
    }

    /// Records that cannot be read stay pending (they show in the queue's age) but are never
    /// handed out again by this process.
    fn quarantine(&self, keys: impl Iterator<Item = RecordKey>, leases: &mut Leases, why: &StoreError) {
        let mut first = None;
        let mut n = 0u64;
        for key in keys {
            if leases.leased.insert(key) {
                first.get_or_insert(key);
                n += 1;
            }
        }
        if let Some(first) = first {
            self.inner.corrupt_records.fetch_add(n, Ordering::Relaxed);
            log::error!("store: {n} record(s) from {first} on set aside: {why}");
        }
    }
}
