//! The work queue in PostgreSQL: blocks leased to a node with `FOR UPDATE SKIP LOCKED` until a
//! lease the database's clock ends; a commit writes only under the lease it claimed with, so a
//! node whose lease was taken over writes nothing (one result per record, one audit entry per
//! released signature).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use super::batches::context;
use super::store::{LEASE, PgStore, count, lock, random_i64};
use crate::audit::{Event, SignedRecord};
use crate::store::batch::batch_id_text;
use crate::store::block::{BLOCK, decode_block, decode_payload, resolve_entry, seal_entries};
use crate::store::seal::{self, DataKey, Purpose};
use crate::store::{CommitStats, Outcome, RecordKey, StoreError, WorkItem};

/// What a claim needs to know about a block's batch.
struct BatchInfo {
    id: [u8; 16],
    issuer: String,
    created_at: i64,
    key: Option<Arc<DataKey>>,
}

/// A block this process leased: its records handed out (until committed or released) and
/// those not handed out yet (a claim takes at most what it was asked for).
pub(super) struct Held {
    token: i64,
    since: Instant,
    out: BTreeMap<u32, WorkItem>,
    waiting: Vec<WorkItem>,
}

impl Held {
    /// The lease token the database holds for this block.
    pub(super) fn token(&self) -> i64 {
        self.token
    }
}

impl PgStore {
    /// Leases up to `max` pending records to this node, in queue order: records of blocks it
    /// already holds, and whole blocks leased from the database (what is not handed out now
    /// waits for the next claim, under the same lease).
    pub fn claim(&self, max: usize) -> Result<Vec<WorkItem>, StoreError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let mut leases = lock(&self.inner.leases);
        self.keep_leases(&mut leases)?;
        let mut pool: Vec<WorkItem> =
            leases.values_mut().flat_map(|h| std::mem::take(&mut h.waiting)).collect();
        let mut error = None;
        while pool.len() < max {
            let want = (max - pool.len()).div_ceil(BLOCK as usize);
            match self.lease_blocks(want, &mut leases) {
                Ok(items) if items.is_empty() => break,
                Ok(items) => pool.extend(items),
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        pool.sort_by_key(|w| w.key);
        let rest = pool.split_off(pool.len().min(max));
        for w in rest {
            if let Some(h) = leases.get_mut(&block_of(w.key)) {
                h.waiting.push(w);
            }
        }
        for w in &pool {
            if let Some(h) = leases.get_mut(&block_of(w.key)) {
                h.out.insert(w.key.index(), w.clone());
            }
        }
        match error {
            Some(e) if pool.is_empty() => Err(e),
            _ => Ok(pool),
        }
    }

    /// Renews the leases of held blocks whose records wait, when half their time has passed;
    /// a lease another node took over meanwhile is dropped with its waiting records.
    fn keep_leases(&self, leases: &mut BTreeMap<(u64, u32), Held>) -> Result<(), StoreError> {
        let stale: Vec<((u64, u32), i64)> = leases
            .iter()
            .filter(|(_, h)| !h.waiting.is_empty() && h.since.elapsed() > LEASE / 2)
            .map(|(b, h)| (*b, h.token))
            .collect();
        if stale.is_empty() {
            return Ok(());
        }
        let lease_ms = LEASE.as_millis() as f64;
        let (seqs, firsts): (Vec<i64>, Vec<i32>) =
            stale.iter().map(|((s, b), _)| (*s as i64, *b as i32)).unzip();
        let tokens: Vec<i64> = stale.iter().map(|(_, t)| *t).collect();
        let kept = self.tx(|tx| {
            let rows = tx.query(
                "UPDATE pending p SET lease_until = clock_timestamp() + $4 * interval '1 millisecond'
                 FROM unnest($1::bigint[], $2::integer[], $3::bigint[]) AS u(s, b, t)
                 WHERE p.batch_seq = u.s AND p.block = u.b AND p.lease_token = u.t
                 RETURNING p.batch_seq, p.block",
                &[&seqs, &firsts, &tokens, &lease_ms],
            )?;
            Ok(rows.iter().map(|r| (count(r.get(0)), r.get::<_, i32>(1) as u32)).collect::<Vec<_>>())
        })?;
        for (block, _) in stale {
            if kept.contains(&block) {
                if let Some(h) = leases.get_mut(&block) {
                    h.since = Instant::now();
                }
            } else {
                leases.remove(&block);
            }
        }
        Ok(())
    }

    /// Leases up to `blocks` blocks from the database and returns their records, each block
    /// recorded as held.
    fn lease_blocks(
        &self,
        blocks: usize,
        leases: &mut BTreeMap<(u64, u32), Held>,
    ) -> Result<Vec<WorkItem>, StoreError> {
        let blocks = i64::try_from(blocks.max(1)).unwrap_or(i64::MAX);
        let token = random_i64()?;
        let lease_ms = LEASE.as_millis() as f64;
        let node = self.inner.node.clone();
        let (rows, batches) = self.tx(|tx| {
            let rows = tx.query(
                "WITH c AS (
                     SELECT batch_seq, block FROM pending
                     WHERE lease_until IS NULL OR lease_until < clock_timestamp()
                     ORDER BY batch_seq, block LIMIT $1 FOR UPDATE SKIP LOCKED)
                 UPDATE pending p SET lease_token = $2, lease_node = $3,
                     lease_until = clock_timestamp() + $4 * interval '1 millisecond'
                 FROM c WHERE p.batch_seq = c.batch_seq AND p.block = c.block
                 RETURNING p.batch_seq, p.block, p.sealed",
                &[&blocks, &token, &node, &lease_ms],
            )?;
            let seqs: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
            let batches = tx.query(
                "SELECT seq, id, issuer, created_at, data_key FROM batches WHERE seq = ANY($1)",
                &[&seqs],
            )?;
            Ok((rows, batches))
        })?;
        let mut info: HashMap<i64, BatchInfo> = HashMap::new();
        let mut unwrap_error = None;
        for b in &batches {
            let seq: i64 = b.get(0);
            let id: Vec<u8> = b.get(1);
            let Ok(id) = <[u8; 16]>::try_from(id) else { continue };
            let key = match self.data_key(count(seq), b.get::<_, &[u8]>(4)) {
                Ok(k) => Some(k),
                Err(e) => {
                    unwrap_error.get_or_insert(e);
                    None
                }
            };
            info.insert(seq, BatchInfo { id, issuer: b.get(2), created_at: b.get(3), key });
        }
        let mut out = Vec::new();
        let mut give_back = Vec::new();
        let mut set_aside = Vec::new();
        for r in &rows {
            let (seq, first): (i64, i32) = (r.get(0), r.get(1));
            let block = (count(seq), u32::try_from(first).unwrap_or(0));
            let Some(batch) = info.get(&seq) else {
                // Purged between the lease and the read: nothing to do.
                continue;
            };
            let Some(key) = &batch.key else {
                // The data key cannot be unwrapped now (HSM): offered again.
                give_back.push(block);
                continue;
            };
            match open_payloads(key, &batch.id, block, r.get::<_, &[u8]>(2)) {
                Ok(payloads) => {
                    leases.insert(
                        block,
                        Held { token, since: Instant::now(), out: BTreeMap::new(), waiting: Vec::new() },
                    );
                    for (offset, r#ref, dcc_json) in payloads {
                        out.push(WorkItem {
                            key: RecordKey::new(block.0, block.1 + u32::from(offset)),
                            batch_id: batch_id_text(&batch.id),
                            issuer_id: batch.issuer.clone(),
                            r#ref,
                            dcc_json,
                            accepted_at: batch.created_at,
                        });
                    }
                }
                Err(e) => {
                    log::error!("store: block {}/{} does not open and is set aside: {e}", block.0, block.1);
                    set_aside.push(block);
                }
            }
        }
        if !give_back.is_empty() {
            self.end_leases(&give_back, token, false)?;
        }
        if !set_aside.is_empty() {
            self.corrupt(set_aside.len() as u64);
            self.end_leases(&set_aside, token, true)?;
        }
        match unwrap_error {
            Some(e) if out.is_empty() => Err(e),
            _ => Ok(out),
        }
    }

    /// Ends this node's leases on `blocks` (only where `token` still holds them): offered again,
    /// or with `forever`, set aside (never handed out: a damaged block waits for an operator).
    fn end_leases(&self, blocks: &[(u64, u32)], token: i64, forever: bool) -> Result<(), StoreError> {
        let (seqs, firsts) = split(blocks);
        let until = if forever { "'infinity'::timestamptz" } else { "NULL" };
        let sql = format!(
            "UPDATE pending SET lease_until = {until}, lease_token = NULL
             WHERE (batch_seq, block) IN (SELECT * FROM unnest($1::bigint[], $2::integer[])) AND lease_token = $3"
        );
        self.tx(|tx| {
            tx.execute(sql.as_str(), &[&seqs, &firsts, &token])?;
            Ok(())
        })
    }

    /// Gives leased records back. A block none of whose records is handed out any more goes
    /// back to the database whole, for any node (this one included) to claim.
    pub fn release(&self, keys: &[RecordKey]) {
        let mut by_token: BTreeMap<i64, Vec<(u64, u32)>> = BTreeMap::new();
        {
            let mut leases = lock(&self.inner.leases);
            for k in keys {
                let block = block_of(*k);
                let Some(h) = leases.get_mut(&block) else { continue };
                if let Some(w) = h.out.remove(&k.index()) {
                    h.waiting.push(w);
                }
                if h.out.is_empty() {
                    let token = h.token;
                    leases.remove(&block);
                    by_token.entry(token).or_default().push(block);
                }
            }
        }
        for (token, blocks) in by_token {
            // If this fails (database away), the lease simply expires.
            if let Err(e) = self.end_leases(&blocks, token, false) {
                log::warn!(
                    "store: cannot give {} block(s) back now, their leases will expire: {e}",
                    blocks.len()
                );
            }
        }
    }

    /// Stores results under the leases they were claimed with (see [`crate::store::Backend::commit`]).
    pub fn commit(&self, results: Vec<Outcome>) -> Result<CommitStats, StoreError> {
        if results.is_empty() {
            return Ok(CommitStats::default());
        }
        let lines: Vec<(Vec<u8>, Option<SignedRecord>)> =
            results.iter().map(|o| (o.result.to_json(), o.audit_record())).collect();
        let mut by_block: BTreeMap<(u64, u32), Vec<usize>> = BTreeMap::new();
        for (i, o) in results.iter().enumerate() {
            by_block.entry(block_of(o.key)).or_default().push(i);
        }
        for members in by_block.values_mut() {
            members.sort_by_key(|&i| results[i].key);
        }
        // Each block's lease token, and whether this process keeps records of it after this
        // commit (then its lease stays; otherwise what is left is offered again at once).
        let (tokens, kept): (BTreeMap<Block, i64>, BTreeMap<Block, bool>) = {
            let leases = lock(&self.inner.leases);
            let mut tokens = BTreeMap::new();
            let mut kept = BTreeMap::new();
            for (b, members) in &by_block {
                if let Some(h) = leases.get(b) {
                    tokens.insert(*b, h.token);
                    let others =
                        h.out.keys().filter(|i| !members.iter().any(|&m| results[m].key.index() == **i));
                    kept.insert(*b, !h.waiting.is_empty() || others.count() > 0);
                }
            }
            (tokens, kept)
        };
        let (seqs, firsts) = split(&by_block.keys().copied().collect::<Vec<_>>());
        let batch_seqs: Vec<i64> = {
            let mut v: Vec<i64> = seqs.clone();
            v.dedup();
            v
        };
        let now = super::store::unix_now();
        let (stats, applied, done, appended) = self.tx(|tx| {
            let mut stats = CommitStats::default();
            let mut applied: Vec<(usize, i64)> = Vec::new();
            let batches = tx.query(
                "SELECT seq, id, issuer, created_at, total, signed, rejected, data_key FROM batches
                 WHERE seq = ANY($1) ORDER BY seq FOR UPDATE",
                &[&batch_seqs],
            )?;
            let mut metas: BTreeMap<i64, Meta> = BTreeMap::new();
            for b in &batches {
                let seq: i64 = b.get(0);
                let id: Vec<u8> = b.get(1);
                let Ok(id) = <[u8; 16]>::try_from(id) else { continue };
                let key = self.data_key(count(seq), b.get::<_, &[u8]>(7))?;
                metas.insert(
                    seq,
                    Meta {
                        id,
                        issuer: b.get(2),
                        created_at: b.get(3),
                        total: b.get(4),
                        signed: b.get(5),
                        rejected: b.get(6),
                        key,
                        dirty: false,
                        facts: Vec::new(),
                    },
                );
            }
            let pending: HashMap<(i64, i32), (Vec<u8>, Option<i64>)> = tx
                .query(
                    "SELECT batch_seq, block, sealed, lease_token FROM pending
                     WHERE (batch_seq, block) IN (SELECT * FROM unnest($1::bigint[], $2::integer[]))
                     ORDER BY batch_seq, block FOR UPDATE",
                    &[&seqs, &firsts],
                )?
                .into_iter()
                .map(|r| ((r.get(0), r.get(1)), (r.get(2), r.get(3))))
                .collect();
            let stored: HashMap<(i64, i32), Vec<u8>> = tx
                .query(
                    "SELECT batch_seq, block, sealed FROM results
                     WHERE (batch_seq, block) IN (SELECT * FROM unnest($1::bigint[], $2::integer[]))
                     ORDER BY batch_seq, block FOR UPDATE",
                    &[&seqs, &firsts],
                )?
                .into_iter()
                .map(|r| ((r.get(0), r.get(1)), r.get(2)))
                .collect();
            for (&(seq_u, first_u), members) in &by_block {
                let (seq, first) = (seq_u as i64, first_u as i32);
                let Some(meta) = metas.get_mut(&seq) else {
                    stats.orphaned += members.len();
                    continue;
                };
                let Some((pending_sealed, lease)) = pending.get(&(seq, first)) else {
                    // Every record of the block already has its result.
                    stats.duplicates += members.len();
                    continue;
                };
                if *lease != tokens.get(&(seq_u, first_u)).copied() {
                    // Taken over by another node after our lease ended: its results count.
                    stats.duplicates += members.len();
                    continue;
                }
                let (pctx, rctx) =
                    (context(Purpose::Pending, &meta.id, first_u), context(Purpose::Results, &meta.id, first_u));
                let pending_plain = seal::open(&meta.key, &pctx, pending_sealed)?;
                let stored_plain = stored.get(&(seq, first)).map(|v| seal::open(&meta.key, &rctx, v)).transpose()?;
                let mut queued = decode_block(&pending_plain)?;
                let mut resolved = stored_plain.as_deref().map_or(Ok(Vec::new()), |p| decode_block(p))?;
                let (queued_before, resolved_before) = (queued.len(), resolved.len());
                for &i in members {
                    let key = results[i].key;
                    if i64::from(key.index()) >= i64::from(meta.total) {
                        stats.orphaned += 1;
                        continue;
                    }
                    if !resolve_entry(&mut queued, &mut resolved, key.offset(), &lines[i].0) {
                        stats.duplicates += 1;
                        continue;
                    }
                    applied.push((i, meta.created_at));
                    if let Some(fact) = &lines[i].1 {
                        meta.signed += 1;
                        stats.signed += 1;
                        meta.facts.push(fact.clone());
                    } else {
                        meta.rejected += 1;
                        stats.rejected += 1;
                    }
                    stats.applied += 1;
                    meta.dirty = true;
                }
                if queued.len() != queued_before {
                    if queued.is_empty() {
                        tx.execute("DELETE FROM pending WHERE batch_seq = $1 AND block = $2", &[&seq, &first])?;
                    } else {
                        let sealed = seal_entries(&meta.key, &pctx, &queued)?;
                        let n = i32::try_from(queued.len()).unwrap_or(i32::MAX);
                        tx.execute("UPDATE pending SET sealed = $3, records = $4 WHERE batch_seq = $1 AND block = $2", &[
                            &seq, &first, &sealed, &n,
                        ])?;
                        if !kept.get(&(seq_u, first_u)).copied().unwrap_or(false) {
                            // Nothing of it is held here any more: offered again at once.
                            tx.execute(
                                "UPDATE pending SET lease_token = NULL, lease_until = NULL
                                 WHERE batch_seq = $1 AND block = $2",
                                &[&seq, &first],
                            )?;
                        }
                    }
                }
                if resolved.len() != resolved_before {
                    let sealed = seal_entries(&meta.key, &rctx, &resolved)?;
                    tx.execute(
                        "INSERT INTO results (batch_seq, block, sealed) VALUES ($1, $2, $3)
                         ON CONFLICT (batch_seq, block) DO UPDATE SET sealed = EXCLUDED.sealed",
                        &[&seq, &first, &sealed],
                    )?;
                }
            }
            let mut done = Vec::new();
            let mut events = Vec::new();
            for (seq, meta) in &mut metas {
                if !meta.dirty {
                    continue;
                }
                tx.execute(
                    "UPDATE batches SET signed = $2, rejected = $3 WHERE seq = $1",
                    &[seq, &meta.signed, &meta.rejected],
                )?;
                if meta.signed + meta.rejected >= meta.total {
                    stats.batches_done += 1;
                    done.push(count(*seq));
                }
                if !meta.facts.is_empty() {
                    events.push(Event::Signed {
                        batch: batch_id_text(&meta.id),
                        client: meta.issuer.clone(),
                        records: std::mem::take(&mut meta.facts),
                    });
                }
            }
            let appended = events.len();
            if !events.is_empty() {
                super::audit::append(tx, now, events)?;
            }
            Ok((stats, applied, done, appended))
        })?;
        for seq in done {
            self.inner.key_cache.evict(&seq);
        }
        crate::metrics::get().audit_entries.inc_by(appended as u64);
        crate::store::record::observe_commit(&results, |i| lines[i].1.as_ref(), &applied, stats.batches_done);
        {
            let mut leases = lock(&self.inner.leases);
            for (block, members) in &by_block {
                let Some(h) = leases.get_mut(block) else { continue };
                for &m in members {
                    h.out.remove(&results[m].key.index());
                }
                if !kept.get(block).copied().unwrap_or(false) {
                    leases.remove(block);
                }
            }
        }
        self.queue_changed();
        Ok(stats)
    }

    /// Whether records may be waiting that this process does not hold out.
    pub fn has_work(&self) -> bool {
        let out: usize = lock(&self.inner.leases).values().map(|h| h.out.len()).sum();
        self.queued_records() > out as u64
    }

    /// Age of the oldest pending record, cluster-wide.
    pub fn oldest_pending_age(&self, now_unix: i64) -> Result<Option<i64>, StoreError> {
        let oldest = self.read(|c| {
            c.query_one(
                "SELECT min(b.created_at) FROM batches b WHERE EXISTS (SELECT 1 FROM pending p WHERE p.batch_seq = b.seq)",
                &[],
            )
            .map(|r| r.get::<_, Option<i64>>(0))
        })?;
        Ok(oldest.map(|t| now_unix.saturating_sub(t).max(0)))
    }
}

/// A batch as a commit changes it.
struct Meta {
    id: [u8; 16],
    issuer: String,
    created_at: i64,
    total: i32,
    signed: i32,
    rejected: i32,
    key: Arc<DataKey>,
    dirty: bool,
    facts: Vec<SignedRecord>,
}

/// The payloads of a pending block: `(offset, ref, dcc_json)`.
fn open_payloads(
    key: &DataKey,
    id: &[u8; 16],
    block: (u64, u32),
    sealed: &[u8],
) -> Result<Vec<(u8, String, Vec<u8>)>, StoreError> {
    let plain = seal::open(key, &context(Purpose::Pending, id, block.1), sealed)?;
    decode_block(&plain)?
        .into_iter()
        .map(|(offset, entry)| {
            let (r#ref, dcc) = decode_payload(entry)?;
            Ok((offset, r#ref, dcc))
        })
        .collect()
}

/// Blocks as the two arrays `unnest` takes.
pub(super) fn split(blocks: &[(u64, u32)]) -> (Vec<i64>, Vec<i32>) {
    blocks.iter().map(|&(s, b)| (s as i64, b as i32)).unzip()
}

/// A block: its batch's seq and its first record's index.
type Block = (u64, u32);

/// The block a record is in, as the lease map keys it.
fn block_of(key: RecordKey) -> (u64, u32) {
    (key.batch_seq(), key.block().index())
}
