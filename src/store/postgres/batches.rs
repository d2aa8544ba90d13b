//! Batches in PostgreSQL: durable submission with cluster-wide idempotency, status from any
//! node, and purging (the wrapped data key goes with the batch's row).

use super::store::{PgStore, TxError, count};
use crate::store::batch::{BATCH_ID_LEN, batch_id_text, parse_batch_id};
use crate::store::block::{BLOCK, BlockWriter};
use crate::store::idempotency;
use crate::store::seal::{self, Context, Purpose};
use crate::store::{BatchState, BatchStatus, NewRecord, StoreError, Submitted};

/// Batches purged per transaction by retention.
const PURGE_CHUNK: i64 = 256;
/// Aborts a submit whose idempotency key another node stored meanwhile (then answered as a
/// replay); never returned to a caller.
const RACED: StoreError = StoreError::Conflict("the idempotency key was stored concurrently");

/// A batch row's counts, as the API reports them.
pub(super) struct Counts {
    pub id: [u8; BATCH_ID_LEN],
    pub created_at: i64,
    pub total: i32,
    pub signed: i32,
    pub rejected: i32,
}

impl Counts {
    /// Reads `id, created_at, total, signed, rejected` from `row` starting at column `at`.
    pub(super) fn from_row(row: &postgres::Row, at: usize) -> Result<Self, StoreError> {
        let id: Vec<u8> = row.get(at);
        Ok(Self {
            id: id.try_into().map_err(|_| StoreError::Corrupt("a batch id is not 16 bytes".into()))?,
            created_at: row.get(at + 1),
            total: row.get(at + 2),
            signed: row.get(at + 3),
            rejected: row.get(at + 4),
        })
    }

    pub(super) fn status(&self) -> BatchStatus {
        let (total, signed, rejected) =
            (unsigned(self.total), unsigned(self.signed), unsigned(self.rejected));
        BatchStatus {
            batch_id: batch_id_text(&self.id),
            state: if signed + rejected == 0 {
                BatchState::Queued
            } else if signed + rejected >= total {
                BatchState::Done
            } else {
                BatchState::Signing
            },
            total,
            signed,
            rejected,
            created_at: self.created_at,
        }
    }

    fn replayed(&self) -> Submitted {
        Submitted {
            batch_id: batch_id_text(&self.id),
            created: false,
            total: unsigned(self.total),
            status: self.status(),
        }
    }
}

fn unsigned(v: i32) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

/// Where a block of batch `id` starting at record `first` belongs, for sealing.
pub(super) fn context(purpose: Purpose, id: &[u8; BATCH_ID_LEN], first: u32) -> Context {
    Context { purpose, batch: *id, position: first }
}

impl PgStore {
    /// Stores a batch in one transaction (see [`crate::store::Backend::submit`]).
    pub fn submit(
        &self,
        issuer_id: &str,
        idempotency_key: Option<&str>,
        records: &[NewRecord<'_>],
        now_unix: i64,
    ) -> Result<Submitted, StoreError> {
        let (total, idem) = idempotency::admit(issuer_id, idempotency_key, records)?;
        let total = i32::try_from(total).map_err(|_| StoreError::Invalid("too many records in one batch"))?;
        // A replay or a refusal costs no data key (no HSM call).
        if let Some((k, request)) = &idem
            && let Some(answer) = self.read(|c| resolve(c, k, request))?
        {
            return self.replicated(answer);
        }
        let mut id = [0u8; BATCH_ID_LEN];
        aws_lc_rs::rand::fill(&mut id)
            .map_err(|_| StoreError::Io("the system random generator failed".into()))?;
        let (data_key, wrapped) = self.new_data_key()?;
        let mut firsts = Vec::with_capacity(records.len().div_ceil(BLOCK as usize));
        let mut sealed = Vec::with_capacity(firsts.capacity());
        let mut sizes = Vec::with_capacity(firsts.capacity());
        for (chunk, first) in records.chunks(BLOCK as usize).zip((0u32..).step_by(BLOCK as usize)) {
            let mut block =
                BlockWriter::with_capacity(chunk.iter().map(|r| 8 + r.r#ref.len() + r.dcc_json.len()).sum());
            for (offset, r) in (0u8..).zip(chunk) {
                block.push_payload(offset, r.r#ref, r.dcc_json)?;
            }
            let plain = zeroize::Zeroizing::new(block.finish());
            sealed.push(seal::seal(&data_key, &context(Purpose::Pending, &id, first), &plain)?);
            firsts.push(
                i32::try_from(first).map_err(|_| StoreError::Invalid("too many records in one batch"))?,
            );
            sizes.push(i32::try_from(chunk.len()).unwrap_or(i32::MAX));
        }
        let outcome = self.tx(|tx| {
            if let Some((k, request)) = &idem {
                // Locks the key's row, if any, against a concurrent purge.
                if let Some(answer) = resolve_locked(tx, k, request)? {
                    return Ok(Err(answer));
                }
            }
            let seq: i64 = tx
                .query_one(
                    "INSERT INTO batches (id, issuer, created_at, total, data_key, idempotency)
                     VALUES ($1, $2, $3, $4, $5, $6) RETURNING seq",
                    &[&&id[..], &issuer_id, &now_unix, &total, &wrapped, &idem.as_ref().map(|(k, _)| &k[..])],
                )?
                .get(0);
            if let Some((k, request)) = &idem {
                // A row lock cannot guard a key nobody stored yet: another node may store it
                // now. Then this transaction is rolled back and the key answered as a replay.
                let stored = tx.execute(
                    "INSERT INTO idempotency (key_hash, request_hash, batch_seq) VALUES ($1, $2, $3)
                     ON CONFLICT (key_hash) DO NOTHING",
                    &[&&k[..], &&request[..], &seq],
                )?;
                if stored == 0 {
                    return Err(TxError::Abort(RACED));
                }
            }
            tx.execute(
                "INSERT INTO pending (batch_seq, block, sealed, records)
                 SELECT $1, b, s, n FROM unnest($2::integer[], $3::bytea[], $4::integer[]) AS u(b, s, n)",
                &[&seq, &firsts, &sealed, &sizes],
            )?;
            tx.execute("SELECT pg_notify('hcert_work', '')", &[])?;
            Ok(Ok(seq))
        });
        let seq = match outcome {
            Ok(Ok(seq)) => seq,
            Ok(Err(answer)) => return self.replicated(answer),
            Err(StoreError::Conflict(why)) if why == RACED.to_string() => {
                let (k, request) = idem.as_ref().ok_or(RACED)?;
                return self.replicated(self.read(|c| resolve(c, k, request))?.unwrap_or(Err(RACED)));
            }
            Err(e) => return Err(e),
        };
        self.inner.key_cache.insert(count(seq), data_key);
        self.queue_changed();
        let counts = Counts { id, created_at: now_unix, total, signed: 0, rejected: 0 };
        Ok(Submitted {
            batch_id: batch_id_text(&id),
            created: true,
            total: unsigned(total),
            status: counts.status(),
        })
    }

    /// `answer` (an idempotency key's replay or refusal), once everything this primary
    /// committed is on the synchronous standby too. The batch it names may come from a COMMIT
    /// whose wait for the standby was cancelled (answered 503, see `tx`): on the primary only.
    /// A transaction that writes commits only once the standby has the WAL up to it, which
    /// holds every earlier commit; so the retry gets its 202 only when the batch is as durable
    /// as a first 202 promises. (It must write a row: a transaction id alone writes no WAL,
    /// and PostgreSQL then does not wait for the standby.)
    fn replicated<T>(&self, answer: Result<T, StoreError>) -> Result<T, StoreError> {
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO hcert_meta (key, value) VALUES ('replication_barrier', '\\x')
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[],
            )?;
            Ok(())
        })?;
        answer
    }

    /// The issuer's batch, or `None` (another issuer's batch looks exactly like a missing one).
    pub fn batch(&self, issuer_id: &str, batch_id: &str) -> Result<Option<BatchStatus>, StoreError> {
        let Some(id) = parse_batch_id(batch_id) else { return Ok(None) };
        let row = self.read(|c| {
            c.query_opt(
                "SELECT id, created_at, total, signed, rejected FROM batches WHERE id = $1 AND issuer = $2",
                &[&&id[..], &issuer_id],
            )
        })?;
        row.map(|r| Ok(Counts::from_row(&r, 0)?.status())).transpose()
    }

    /// Purges the issuer's batch (see [`crate::store::Backend::delete`]).
    pub fn delete(&self, issuer_id: &str, batch_id: &str) -> Result<bool, StoreError> {
        let Some(id) = parse_batch_id(batch_id) else { return Ok(false) };
        let now = super::store::unix_now();
        let purged = self.tx(|tx| {
            let rows = tx.query(
                "DELETE FROM batches WHERE id = $1 AND issuer = $2
                 RETURNING seq, id, idempotency, total - signed - rejected",
                &[&&id[..], &issuer_id],
            )?;
            tombstone(tx, &rows, now)?;
            Ok(rows.iter().map(|r| (r.get::<_, i64>(0), r.get::<_, i32>(3))).collect::<Vec<_>>())
        })?;
        self.purged(&purged, false);
        Ok(!purged.is_empty())
    }

    /// Purges batches accepted before `now - ttl` and tombstones as old.
    pub fn purge_expired(&self, now_unix: i64, ttl_secs: i64) -> Result<usize, StoreError> {
        let cutoff = now_unix.saturating_sub(ttl_secs.max(0));
        let mut total = 0;
        loop {
            let purged = self.tx(|tx| {
                let rows = tx.query(
                    "DELETE FROM batches WHERE seq IN (
                         SELECT seq FROM batches WHERE created_at <= $1 ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED)
                     RETURNING seq, id, idempotency, total - signed - rejected",
                    &[&cutoff, &PURGE_CHUNK],
                )?;
                tombstone(tx, &rows, now_unix)?;
                Ok(rows.iter().map(|r| (r.get::<_, i64>(0), r.get::<_, i32>(3))).collect::<Vec<_>>())
            })?;
            self.purged(&purged, true);
            total += purged.len();
            if purged.len() < PURGE_CHUNK as usize {
                break;
            }
        }
        self.tx(|tx| {
            tx.execute("DELETE FROM idempotency WHERE deleted_at <= $1", &[&cutoff])?;
            Ok(())
        })?;
        if total > 0 {
            log::info!("store: purged {total} batch(es) past the retention period");
        }
        Ok(total)
    }

    /// After a purge committed: keys out of memory, leases forgotten, counts moved.
    fn purged(&self, batches: &[(i64, i32)], expired: bool) {
        let mut leases = super::store::lock(&self.inner.leases);
        for &(seq, unresolved) in batches {
            self.inner.key_cache.evict(&count(seq));
            leases.retain(|&(s, _), _| s != count(seq));
            if expired && unresolved > 0 {
                self.inner
                    .expired_unsigned
                    .fetch_add(count(i64::from(unresolved)), std::sync::atomic::Ordering::Relaxed);
            }
        }
        drop(leases);
        if !batches.is_empty() {
            self.queue_changed();
        }
    }
}

/// Turns the idempotency keys of purged batch rows (`seq, id, idempotency, …`) into tombstones.
fn tombstone(tx: &mut postgres::Transaction<'_>, rows: &[postgres::Row], now: i64) -> Result<(), TxError> {
    for r in rows {
        if let Some(k) = r.get::<_, Option<Vec<u8>>>(2) {
            let id: Vec<u8> = r.get(1);
            tx.execute(
                "UPDATE idempotency SET batch_seq = NULL, deleted_id = $2, deleted_at = $3 WHERE key_hash = $1",
                &[&k, &id, &now],
            )?;
        }
    }
    Ok(())
}

/// What a used idempotency key answers, if it is used: the batch as it stands, a conflict, or
/// its tombstone.
type Answer = Result<Submitted, StoreError>;

fn resolve(
    c: &mut postgres::Client,
    key: &[u8; 32],
    request: &[u8; 32],
) -> Result<Option<Answer>, postgres::Error> {
    let row = c.query_opt(
        "SELECT i.request_hash, i.deleted_id, b.id, b.created_at, b.total, b.signed, b.rejected
         FROM idempotency i LEFT JOIN batches b ON b.seq = i.batch_seq WHERE i.key_hash = $1",
        &[&&key[..]],
    )?;
    Ok(row.map(|r| answer(&r, request)))
}

fn resolve_locked(
    tx: &mut postgres::Transaction<'_>,
    key: &[u8; 32],
    request: &[u8; 32],
) -> Result<Option<Answer>, postgres::Error> {
    let row = tx.query_opt(
        "SELECT i.request_hash, i.deleted_id, b.id, b.created_at, b.total, b.signed, b.rejected
         FROM idempotency i LEFT JOIN batches b ON b.seq = i.batch_seq WHERE i.key_hash = $1
         FOR UPDATE OF i",
        &[&&key[..]],
    )?;
    Ok(row.map(|r| answer(&r, request)))
}

fn answer(r: &postgres::Row, request: &[u8; 32]) -> Answer {
    if let Some(deleted) = r.get::<_, Option<Vec<u8>>>(1) {
        return Err(StoreError::BatchDeleted { batch_id: hex::encode(deleted) });
    }
    if r.get::<_, Vec<u8>>(0) != request {
        return Err(StoreError::IdempotencyConflict);
    }
    if r.get::<_, Option<Vec<u8>>>(2).is_none() {
        return Err(StoreError::Corrupt("an idempotency key names a batch that is not stored".into()));
    }
    Ok(Counts::from_row(r, 2)?.replayed())
}
