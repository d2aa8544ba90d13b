//! Moving a sled store ([`crate::store::copy`]): its trees read out as items, lazily, and
//! items written into an empty store in one sled transaction over every tree, batches numbered
//! anew by sled's own counter in queue order (sled cannot be told to go on from a number).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use sled::Transactional as _;

use super::layout::{self, BatchMeta, RecordKey, StoredState};
use super::{KEK_KEY, SledStore, StoreError, audit};
use crate::store::copy::{BatchItem, Checker, Item, Items, Tally};
use crate::store::idempotency::Entry;
use crate::store::seal::Purpose;

/// The trees of the import transaction, in this order.
const BATCHES: usize = 0;
const BATCH_IDS: usize = 1;
const IDEMPOTENCY: usize = 2;
const DATA_KEYS: usize = 3;
const PENDING: usize = 4;
const RESULTS: usize = 5;
const AUDIT: usize = 6;
const CHECKPOINTS: usize = 7;
const KEYS: usize = 8;
const CSCAS: usize = 9;
const DEFAULT: usize = 10;

impl SledStore {
    /// Every tree as items (see [`crate::store::Backend::export`]). Batches being purged are
    /// left out, with their blocks (the open that precedes an export finishes such purges).
    pub fn export(&self) -> Items {
        if let Err(e) = self.ensure_ok() {
            return Box::new(std::iter::once(Err(e)));
        }
        let inner = self.inner.clone();
        let fail = |e: sled::Error| StoreError::Io(e.to_string());
        // The purged batches, to leave out their blocks; none normally (see above).
        let mut gone = HashSet::new();
        for item in inner.batches.iter() {
            match item.map_err(fail).and_then(|(k, v)| Ok((layout::decode_seq(&k)?, BatchMeta::decode(&v)?)))
            {
                Ok((seq, meta)) if meta.state == StoredState::Deleting => {
                    gone.insert(seq);
                }
                Ok(_) => {}
                Err(e) => return Box::new(std::iter::once(Err(e))),
            }
        }
        let kek = match inner.db.get(KEK_KEY) {
            Ok(v) => v.map(|v| {
                String::from_utf8(v.to_vec())
                    .map(Item::Kek)
                    .map_err(|_| StoreError::Corrupt("the pinned KEK label is not UTF-8".into()))
            }),
            Err(e) => Some(Err(fail(e))),
        };
        let text = |b: &[u8], what: &str| {
            String::from_utf8(b.to_vec()).map_err(|_| StoreError::Corrupt(format!("{what} is not UTF-8")))
        };
        let keys = inner.keys.iter().map(move |r| {
            let (k, v) = r.map_err(fail)?;
            Ok(Item::Key { label: text(&k, "a key label")?, record: v.to_vec() })
        });
        let cscas = inner.cscas.iter().map(move |r| {
            let (k, v) = r.map_err(fail)?;
            Ok(match k.strip_prefix(super::keys::CSCA_PENDING) {
                Some(fp) => {
                    Item::CscaPending { fingerprint: text(fp, "a CSCA fingerprint")?, record: v.to_vec() }
                }
                None => Item::Csca { fingerprint: text(&k, "a CSCA fingerprint")?, der: v.to_vec() },
            })
        });
        // Trusted CSCAs first, then pending ones, as the item order says.
        let (trusted, pending_cscas): (Vec<_>, Vec<_>) =
            cscas.partition(|i| !matches!(i, Ok(Item::CscaPending { .. })));
        let data_keys = inner.data_keys.clone();
        let batches = inner.batches.iter().filter_map(move |r| {
            let item = (|| {
                let (k, v) = r.map_err(fail)?;
                let seq = layout::decode_seq(&k)?;
                let meta = BatchMeta::decode(&v)?;
                if meta.state == StoredState::Deleting {
                    return Ok(None);
                }
                let data_key = data_keys
                    .get(k)
                    .map_err(fail)?
                    .ok_or_else(|| StoreError::Corrupt(format!("batch {seq} has no data key")))?
                    .to_vec();
                Ok(Some(Item::Batch(BatchItem {
                    seq,
                    id: meta.id,
                    issuer: meta.issuer,
                    idempotency: meta.idempotency,
                    created_at: meta.created_at,
                    total: meta.total,
                    signed: meta.signed,
                    rejected: meta.rejected,
                    data_key,
                })))
            })();
            item.transpose()
        });
        let blocks = |tree: &sled::Tree, purpose: Purpose, gone: HashSet<u64>| {
            tree.iter().filter_map(move |r| {
                let item = (|| {
                    let (k, v) = r.map_err(fail)?;
                    let key = RecordKey::from_bytes(&k)?;
                    if gone.contains(&key.seq) {
                        return Ok(None);
                    }
                    Ok(Some(Item::Block { seq: key.seq, first: key.index, purpose, sealed: v.to_vec() }))
                })();
                item.transpose()
            })
        };
        let idempotency = inner.idempotency.iter().map(move |r| {
            let (k, v) = r.map_err(fail)?;
            let key =
                k.as_ref().try_into().map_err(|_| StoreError::Corrupt("an idempotency key's hash".into()))?;
            Ok(Item::Idempotency { key, entry: Entry::decode(&v)? })
        });
        let checkpoints = inner.audit_checkpoints.clone();
        let entries = inner.audit.iter().map(move |r| {
            let (k, v) = r.map_err(fail)?;
            Ok(Item::Audit {
                seq: layout::decode_seq(&k)?,
                checkpoint: checkpoints.contains_key(&k).map_err(fail)?,
                stored: v.to_vec(),
            })
        });
        Box::new(
            kek.into_iter()
                .chain(keys)
                .chain(trusted)
                .chain(pending_cscas)
                .chain(batches)
                .chain(blocks(&inner.pending, Purpose::Pending, gone.clone()))
                .chain(blocks(&inner.results, Purpose::Results, gone))
                .chain(idempotency)
                .chain(entries)
                .scan(false, |ended, r| {
                    // After an error the stream ends.
                    if *ended {
                        return None;
                    }
                    *ended = r.is_err();
                    Some(r)
                }),
        )
    }

    /// Writes `items` into this store, which must be empty, in one transaction (see
    /// [`crate::store::Backend::import`]). The items are held in memory meanwhile: a sled
    /// transaction cannot stream.
    pub fn import(&self, items: Items) -> Result<Tally, StoreError> {
        self.ensure_ok()?;
        let mut head = self.audit_head_lock();
        self.ensure_empty()?;
        let mut checker = Checker::default();
        let mut all = Vec::new();
        for item in items {
            let item = item?;
            checker.check(&item)?;
            all.push(item);
        }
        let tally = checker.tally;
        let last = all.iter().rev().find_map(|i| match i {
            Item::Audit { stored, .. } => Some(stored.as_slice()),
            _ => None,
        });
        let new_head = audit::AuditHead { next: tally.head_seq + 1, hash: Checker::head_hash(last) };
        let inner = &self.inner;
        let trees = [
            &inner.batches,
            &inner.batch_ids,
            &inner.idempotency,
            &inner.data_keys,
            &inner.pending,
            &inner.results,
            &inner.audit,
            &inner.audit_checkpoints,
            &inner.keys,
            &inner.cscas,
            &*inner.db,
        ];
        trees
            .as_slice()
            .transaction(|t| {
                // Old seq → new seq, rebuilt on each attempt of the transaction.
                let mut seqs = HashMap::new();
                for item in &all {
                    match item {
                        Item::Kek(label) => {
                            t[DEFAULT].insert(KEK_KEY, label.as_bytes())?;
                        }
                        Item::Key { label, record } => {
                            t[KEYS].insert(label.as_bytes(), record.as_slice())?;
                        }
                        Item::Csca { fingerprint, der } => {
                            t[CSCAS].insert(fingerprint.as_bytes(), der.as_slice())?;
                        }
                        Item::CscaPending { fingerprint, record } => {
                            let key = [super::keys::CSCA_PENDING, fingerprint.as_bytes()].concat();
                            t[CSCAS].insert(key, record.as_slice())?;
                        }
                        Item::Batch(b) => {
                            let seq = t[BATCHES].generate_id()?;
                            seqs.insert(b.seq, seq);
                            let done = b.signed + b.rejected;
                            let meta = BatchMeta {
                                id: b.id,
                                issuer: b.issuer.clone(),
                                idempotency: b.idempotency,
                                created_at: b.created_at,
                                total: b.total,
                                signed: b.signed,
                                rejected: b.rejected,
                                state: if done == 0 {
                                    StoredState::Queued
                                } else if done >= b.total {
                                    StoredState::Done
                                } else {
                                    StoredState::Signing
                                },
                            };
                            let encoded = meta.encode().map_err(super::batches::abort)?;
                            let key = layout::seq_key(seq);
                            t[BATCHES].insert(&key[..], encoded)?;
                            t[BATCH_IDS].insert(&b.id[..], &key[..])?;
                            t[DATA_KEYS].insert(&key[..], b.data_key.as_slice())?;
                        }
                        Item::Block { seq, first, purpose, sealed } => {
                            let key = RecordKey::new(seqs[seq], *first).to_bytes();
                            let tree = if *purpose == Purpose::Pending { PENDING } else { RESULTS };
                            t[tree].insert(&key[..], sealed.as_slice())?;
                        }
                        Item::Idempotency { key, entry } => {
                            let entry = match *entry {
                                Entry::Live { seq, request } => Entry::Live { seq: seqs[&seq], request },
                                tombstone => tombstone,
                            };
                            t[IDEMPOTENCY].insert(&key[..], entry.encode())?;
                        }
                        Item::Audit { seq, stored, checkpoint } => {
                            t[AUDIT].insert(&layout::seq_key(*seq)[..], stored.as_slice())?;
                            if *checkpoint {
                                t[CHECKPOINTS].insert(&layout::seq_key(*seq)[..], &[][..])?;
                            }
                        }
                    }
                }
                Ok(())
            })
            .map_err(|e| self.tx_error(e))?;
        self.flush_db()?;
        self.publish_head(&mut head, new_head);
        drop(head);
        self.inner
            .queued
            .fetch_add(i64::try_from(tally.records_pending).unwrap_or(i64::MAX), Ordering::SeqCst);
        self.rewind_cursor(RecordKey::new(0, 0));
        Ok(tally)
    }

    /// Refuses an import into a store that holds anything, naming the first thing found.
    fn ensure_empty(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        let trees = [
            ("batches", &inner.batches),
            ("idempotency keys", &inner.idempotency),
            ("key records", &inner.keys),
            ("CSCAs", &inner.cscas),
            ("audit entries", &inner.audit),
        ];
        if let Some((what, _)) = trees.iter().find(|(_, t)| !t.is_empty()) {
            return Err(StoreError::NotEmpty((*what).to_owned()));
        }
        if inner.db.contains_key(KEK_KEY).map_err(|e| self.fail(e))? {
            return Err(StoreError::NotEmpty("a KEK pin".into()));
        }
        Ok(())
    }
}
