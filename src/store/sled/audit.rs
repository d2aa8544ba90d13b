//! The audit log's storage: entries appended under one lock so the chain is a line, each append
//! in the same sled transaction as the change it records (a result, a key's new state), and
//! flushed before the change is visible or answered. Checkpoints are also indexed by sequence
//! number (`audit_checkpoints`, in the same transaction), so their heads can be published and
//! listed without reading the whole log.

use std::sync::{MutexGuard, PoisonError};

use sled::Transactional as _;
use sled::transaction::{TransactionalTree, UnabortableTransactionError};

use super::{SledStore, StoreError};
use crate::audit::{Entry, Event, FIRST_SEQ, GENESIS, Hash};

/// The end of the chain: the next sequence number and the last hash.
#[derive(Debug, Clone, Copy)]
pub(super) struct AuditHead {
    pub next: u64,
    pub hash: Hash,
}

impl AuditHead {
    /// Reads the end of the chain from the tree at open.
    pub(super) fn load(tree: &sled::Tree) -> Result<AuditHead, StoreError> {
        let Some((k, v)) = tree.last().map_err(|e| StoreError::Io(e.to_string()))? else {
            return Ok(AuditHead { next: FIRST_SEQ, hash: GENESIS });
        };
        let seq = super::layout::decode_seq(&k)?;
        let hash: Hash = v
            .get(..32)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| StoreError::Corrupt(format!("audit entry {seq} is truncated")))?;
        Ok(AuditHead { next: seq + 1, hash })
    }

    /// Appends `event` inside a transaction, moving this (transaction-local) head.
    pub(super) fn append(
        &mut self,
        tree: &TransactionalTree,
        time: i64,
        event: Event,
    ) -> Result<(), UnabortableTransactionError> {
        let (stored, hash) = Entry { seq: self.next, time, event }.seal(&self.hash);
        tree.insert(&self.next.to_be_bytes()[..], stored)?;
        self.next += 1;
        self.hash = hash;
        Ok(())
    }

    /// A copy of this head moved past `events` appended in order (the transaction retries with
    /// the original head, so the shared one changes only after the flush).
    pub(super) fn appended(
        &self,
        tree: &TransactionalTree,
        time: i64,
        events: &[Event],
    ) -> Result<AuditHead, UnabortableTransactionError> {
        let mut h = *self;
        for e in events {
            h.append(tree, time, e.clone())?;
        }
        Ok(h)
    }
}

use crate::store::backend::{AtHead, RawEntry};

/// Fills the checkpoint index of a store written before it existed (once: an index with any
/// entry is complete, since every later checkpoint is indexed as it is appended).
pub(super) fn index_checkpoints(audit: &sled::Tree, index: &sled::Tree) -> sled::Result<()> {
    if !index.is_empty() || audit.is_empty() {
        return Ok(());
    }
    let mut found = 0u64;
    for item in audit.iter() {
        let (k, v) = item?;
        // The tag is serialised as is; parse only the entries that carry it.
        let body = v.get(32..).unwrap_or_default();
        if memchr_str(body, b"\"event\":\"checkpoint\"")
            && serde_json::from_slice::<Entry>(body)
                .is_ok_and(|e| matches!(e.event, Event::Checkpoint { .. }))
        {
            index.insert(k, &[][..])?;
            found += 1;
        }
    }
    if found > 0 {
        log::info!("audit: indexed {found} checkpoint(s) of an existing log");
        index.flush()?;
    }
    Ok(())
}

fn memchr_str(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

impl SledStore {
    /// Appends events (in order) and flushes; returns the sequence number of the last one.
    /// Signatures are signing: under the floor they wait like the pipeline's commits
    /// ([`StoreError::BelowFloor`]); other events (start, key changes, revocations) are small and
    /// always written.
    pub fn audit_append(&self, events: Vec<Event>) -> Result<u64, StoreError> {
        self.ensure_ok()?;
        if events.iter().any(|e| matches!(e, Event::Signed { .. })) {
            self.ensure_floor()?;
        }
        let mut head = self.audit_head_lock();
        self.append_locked(&mut head, &events)
    }

    /// Appends `events` while the caller holds the chain's end, flushes, and publishes the new
    /// end; returns the last sequence number.
    fn append_locked(&self, head: &mut AuditHead, events: &[Event]) -> Result<u64, StoreError> {
        let now = super::unix_now();
        let new_head = self
            .inner
            .audit
            .transaction(|tree| Ok(head.appended(tree, now, events)?))
            .map_err(|e| self.tx_error(e))?;
        self.flush_db()?;
        self.publish_head(head, new_head);
        Ok(new_head.next - 1)
    }

    /// Appends the event `make` builds from the chain's end (last sequence number, its hash and
    /// whether that entry is a checkpoint) — for checkpoints, which must sign exactly the head
    /// they follow. The chain is held still meanwhile; `make` returning `None` appends nothing.
    /// Periodic, so under the floor it waits for the next period ([`StoreError::BelowFloor`]).
    pub fn audit_append_at_head(&self, make: AtHead<'_>) -> Result<Option<u64>, StoreError> {
        self.ensure_ok()?;
        self.ensure_floor()?;
        let mut head = self.audit_head_lock();
        let last = head.next - 1;
        let last_is_checkpoint = match self.inner.audit.get(last.to_be_bytes()).map_err(|e| self.fail(e))? {
            Some(v) => v
                .get(32..)
                .and_then(|body| serde_json::from_slice::<Entry>(body).ok())
                .is_some_and(|e| matches!(e.event, Event::Checkpoint { .. })),
            None => false,
        };
        let Some(event) = make(last, &head.hash, last_is_checkpoint) else { return Ok(None) };
        let is_checkpoint = matches!(event, Event::Checkpoint { .. });
        let now = super::unix_now();
        let events = [event];
        let new_head = (&self.inner.audit, &self.inner.audit_checkpoints)
            .transaction(|(audit, index)| {
                let new_head = head.appended(audit, now, &events)?;
                if is_checkpoint {
                    index.insert(&(new_head.next - 1).to_be_bytes()[..], &[][..])?;
                }
                Ok(new_head)
            })
            .map_err(|e| self.tx_error(e))?;
        self.flush_db()?;
        self.publish_head(&mut head, new_head);
        Ok(Some(new_head.next - 1))
    }

    /// Up to `limit` checkpoint entries from sequence number `from` on, in order, as stored.
    pub fn audit_checkpoints(&self, from: u64, limit: usize) -> Result<Vec<RawEntry>, StoreError> {
        self.ensure_ok()?;
        let mut out = Vec::new();
        for item in self.inner.audit_checkpoints.range(from.to_be_bytes()..).take(limit) {
            let (k, _) = item.map_err(|e| self.fail(e))?;
            let seq = super::layout::decode_seq(&k)?;
            let stored = self.inner.audit.get(k).map_err(|e| self.fail(e))?.ok_or_else(|| {
                StoreError::Corrupt(format!("checkpoint {seq} is indexed but not in the log"))
            })?;
            out.push((seq, stored.to_vec()));
        }
        Ok(out)
    }

    /// The last sequence number and chain hash (`(0, zeros)` for an empty log).
    pub fn audit_head(&self) -> (u64, Hash) {
        let head = self.audit_head_lock();
        (head.next - 1, head.hash)
    }

    /// Every entry from `from` on, in order (a snapshot iterator: entries appended meanwhile
    /// may or may not appear).
    pub fn audit_entries(
        &self,
        from: u64,
    ) -> impl Iterator<Item = Result<RawEntry, StoreError>> + Send + 'static {
        let store = self.clone();
        self.inner.audit.range(from.to_be_bytes()..).map(move |item| {
            let (k, v) = item.map_err(|e| store.fail(e))?;
            Ok((super::layout::decode_seq(&k)?, v.to_vec()))
        })
    }

    /// Makes a flushed append visible: the new end of the chain, and the count.
    pub(super) fn publish_head(&self, head: &mut AuditHead, new_head: AuditHead) {
        crate::metrics::get().audit_entries.inc_by(new_head.next.saturating_sub(head.next));
        *head = new_head;
    }

    pub(super) fn audit_head_lock(&self) -> MutexGuard<'_, AuditHead> {
        // The head is only replaced whole after a successful flush.
        self.inner.audit_head.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreOptions;

    fn open(dir: &std::path::Path) -> SledStore {
        SledStore::open(dir, StoreOptions { min_free_bytes: 0, ..StoreOptions::default() }).unwrap()
    }

    fn started() -> Event {
        Event::Started { audit_key: "a".into(), version: "1".into() }
    }

    /// Appends a (fake) checkpoint over the end, as the audit key would.
    fn checkpoint(store: &SledStore) -> Option<u64> {
        store
            .audit_append_at_head(&mut |last, head, _| {
                Some(Event::Checkpoint { covers: last, head: hex::encode(head), signature: String::new() })
            })
            .unwrap()
    }

    #[test]
    fn checkpoints_are_indexed_as_appended_and_rebuilt_for_an_older_store() {
        let dir = tempfile::tempdir().unwrap();
        let mut cps = Vec::new();
        {
            let store = open(dir.path());
            assert!(store.audit_checkpoints(1, 10).unwrap().is_empty());
            for _ in 0..3 {
                store.audit_append(vec![started(), started()]).unwrap();
                cps.push(checkpoint(&store).unwrap());
            }
            store.audit_append(vec![started()]).unwrap();
            assert_eq!(cps, vec![3, 6, 9]);
            let listed: Vec<u64> =
                store.audit_checkpoints(1, 10).unwrap().into_iter().map(|(s, _)| s).collect();
            assert_eq!(listed, cps);
            let page: Vec<u64> = store.audit_checkpoints(4, 1).unwrap().into_iter().map(|(s, _)| s).collect();
            assert_eq!(page, vec![6]);
            let (_, stored) = &store.audit_checkpoints(9, 1).unwrap()[0];
            assert!(String::from_utf8_lossy(&stored[32..]).contains("\"covers\":8"));
            store.close().unwrap();
        }
        // A store written before the index: the index is rebuilt from the log at open.
        {
            let db =
                sled::Config::new().path(dir.path()).segment_size(super::super::SEGMENT_SIZE).open().unwrap();
            db.open_tree("audit_checkpoints").unwrap().clear().unwrap();
            db.flush().unwrap();
        }
        let store = open(dir.path());
        let listed: Vec<u64> = store.audit_checkpoints(1, 10).unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(listed, cps);
    }
}
