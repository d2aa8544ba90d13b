//! The audit chain in PostgreSQL: one chain for the cluster, every append holding the lock of
//! the one `audit_head` row inside the transaction of the change it records, so appends from
//! all nodes form one line and a rolled-back change leaves no entry.

use super::store::{PgStore, TxError, count};
use crate::audit::{Entry, Event, Hash};
use crate::store::StoreError;
use crate::store::backend::{AtHead, AuditEntries, RawEntry};

/// Entries read per query when streaming the log.
const PAGE: i64 = 1000;

/// The end of the chain, locked for this transaction.
fn lock_head(tx: &mut postgres::Transaction<'_>) -> Result<(u64, Hash), TxError> {
    let row = tx.query_one("SELECT seq, hash FROM audit_head FOR UPDATE", &[])?;
    let hash: Vec<u8> = row.get(1);
    let hash =
        hash.try_into().map_err(|_| StoreError::Corrupt("the audit head's hash is not 32 bytes".into()))?;
    Ok((count(row.get(0)), hash))
}

/// Appends `events` in order at the locked end of the chain; returns the last sequence number.
pub(super) fn append(
    tx: &mut postgres::Transaction<'_>,
    time: i64,
    events: Vec<Event>,
) -> Result<u64, TxError> {
    let (mut seq, mut hash) = lock_head(tx)?;
    for event in events {
        seq += 1;
        let checkpoint = matches!(event, Event::Checkpoint { .. });
        let (stored, next) = Entry { seq, time, event }.seal(&hash);
        tx.execute(
            "INSERT INTO audit (seq, stored, checkpoint) VALUES ($1, $2, $3)",
            &[&(seq as i64), &stored, &checkpoint],
        )?;
        hash = next;
    }
    tx.execute("UPDATE audit_head SET seq = $1, hash = $2", &[&(seq as i64), &&hash[..]])?;
    Ok(seq)
}

impl PgStore {
    /// Appends events in one transaction.
    pub fn audit_append(&self, events: Vec<Event>) -> Result<u64, StoreError> {
        let n = events.len() as u64;
        let now = super::store::unix_now();
        let last = self.tx(|tx| append(tx, now, events.clone()))?;
        crate::metrics::get().audit_entries.inc_by(n);
        Ok(last)
    }

    /// Appends what `make` builds from the chain's end, the chain held still meanwhile.
    pub fn audit_append_at_head(&self, make: AtHead<'_>) -> Result<Option<u64>, StoreError> {
        let now = super::store::unix_now();
        let appended = self.tx(|tx| {
            let (last, hash) = lock_head(tx)?;
            let last_is_checkpoint = tx
                .query_opt("SELECT checkpoint FROM audit WHERE seq = $1", &[&(last as i64)])?
                .is_some_and(|r| r.get::<_, bool>(0));
            match make(last, &hash, last_is_checkpoint) {
                Some(event) => Ok(Some(append(tx, now, vec![event])?)),
                None => Ok(None),
            }
        })?;
        if appended.is_some() {
            crate::metrics::get().audit_entries.inc();
        }
        Ok(appended)
    }

    /// Up to `limit` checkpoints from `from` on.
    pub fn audit_checkpoints(&self, from: u64, limit: usize) -> Result<Vec<RawEntry>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.read(|c| {
            c.query(
                "SELECT seq, stored FROM audit WHERE checkpoint AND seq >= $1 ORDER BY seq LIMIT $2",
                &[&(from.min(i64::MAX as u64) as i64), &limit],
            )
        })?;
        Ok(rows.iter().map(|r| (count(r.get(0)), r.get(1))).collect())
    }

    /// The end of the chain.
    pub fn audit_head(&self) -> Result<(u64, Hash), StoreError> {
        let row = self.read(|c| c.query_one("SELECT seq, hash FROM audit_head", &[]))?;
        let hash: Vec<u8> = row.get(1);
        let hash = hash
            .try_into()
            .map_err(|_| StoreError::Corrupt("the audit head's hash is not 32 bytes".into()))?;
        Ok((count(row.get(0)), hash))
    }

    /// Every entry from `from` on, read a page at a time.
    pub fn audit_entries(&self, from: u64) -> AuditEntries {
        let store = self.clone();
        let mut next = from.min(i64::MAX as u64) as i64;
        let mut page: std::vec::IntoIter<RawEntry> = Vec::new().into_iter();
        let mut ended = false;
        Box::new(std::iter::from_fn(move || {
            loop {
                if let Some(e) = page.next() {
                    return Some(Ok(e));
                }
                if ended {
                    return None;
                }
                let rows = store.read(|c| {
                    c.query(
                        "SELECT seq, stored FROM audit WHERE seq >= $1 ORDER BY seq LIMIT $2",
                        &[&next, &PAGE],
                    )
                });
                match rows {
                    Ok(rows) => {
                        ended = (rows.len() as i64) < PAGE;
                        let entries: Vec<RawEntry> =
                            rows.iter().map(|r| (count(r.get(0)), r.get(1))).collect();
                        if let Some(last) = entries.last() {
                            next = last.0 as i64 + 1;
                        }
                        page = entries.into_iter();
                    }
                    Err(e) => {
                        ended = true;
                        return Some(Err(e));
                    }
                }
            }
        }))
    }
}
