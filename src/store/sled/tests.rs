//! Sled store tests on real sled directories: the backend conformance suite in `conformance`
//! (every promise of the interface, [`crate::store::conformance`]), and what only sled has —
//! the layout's invariant checker here; what a purge and a lease leave in the trees in
//! `lifecycle`; damaged data, full and read-only disks in `damage`; `kill -9` of a child
//! process and the measurements in `crash`; hashed idempotency keys and crypto-shredding in
//! sled's files in files of their own.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::layout::{self, BatchMeta, StoredState};
use super::*;
use crate::store::conformance::kit::{self, parsed_results, records, refs, result_for, sign_all, submit};
use crate::store::{CommitStats, NewRecord, Outcome, RecordResult, WorkItem};

pub(crate) mod conformance;
mod crash;
mod damage;
mod idempotency_keys;
mod lifecycle;
mod shredding;

/// The suite's KEK in every process (the kill -9 tests reopen a child's store).
fn options() -> StoreOptions {
    StoreOptions { key_wrap: Some(kit::kek()), cache_capacity: 8 << 20, min_free_bytes: 0 }
}

fn open(dir: &Path) -> SledStore {
    SledStore::open(dir, options()).expect("open store")
}

fn tree_len(tree: &sled::Tree) -> usize {
    tree.iter().count()
}

/// The sealing context of a stored block of `tree` at key `k`, and the batch's data key.
fn block_key(store: &SledStore, purpose: seal::Purpose, k: &[u8]) -> (seal::Context, Arc<seal::DataKey>) {
    let block = layout::RecordKey::from_bytes(k).unwrap();
    let meta = store.inner.batches.get(layout::seq_key(block.batch_seq())).unwrap().expect("its batch");
    let meta = BatchMeta::decode(&meta).unwrap();
    let key = store.data_key(block.batch_seq()).unwrap().expect("a live batch has its data key");
    (shred::context(purpose, &meta.id, block), key)
}

/// A stored block opened (what it holds in clear).
fn open_stored(store: &SledStore, purpose: seal::Purpose, k: &[u8], v: &[u8]) -> Vec<u8> {
    let (ctx, key) = block_key(store, purpose, k);
    seal::open(&key, &ctx, v).expect("a stored block opens under its batch's key").to_vec()
}

/// Replaces a stored block with `plain`, sealed as the store would.
fn reseal(store: &SledStore, purpose: seal::Purpose, k: &[u8], plain: &[u8]) -> Vec<u8> {
    let (ctx, key) = block_key(store, purpose, k);
    seal::seal(&key, &ctx, plain).unwrap()
}

/// Every record entry in a tree of blocks under `prefix`, in key order: `(record, bytes)`.
fn block_entries(
    store: &SledStore,
    tree: &sled::Tree,
    purpose: seal::Purpose,
    prefix: &[u8],
) -> Vec<(layout::RecordKey, Vec<u8>)> {
    let mut out = Vec::new();
    for (k, v) in tree.scan_prefix(prefix).map(Result::unwrap) {
        let block = layout::RecordKey::from_bytes(&k).unwrap();
        let plain = open_stored(store, purpose, &k, &v);
        for (offset, entry) in layout::decode_block(&plain).expect("stored block decodes") {
            out.push((block.at_offset(offset), entry.to_vec()));
        }
    }
    out
}

/// The records with an entry in the queue under `prefix`.
fn record_keys(store: &SledStore, prefix: &[u8]) -> Vec<layout::RecordKey> {
    block_entries(store, &store.inner.pending, seal::Purpose::Pending, prefix)
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

/// What the checker found: per live batch (id → (total, signed, rejected)).
type Summary = BTreeMap<String, (u32, u32, u32)>;

/// Checks every invariant of the layout and returns the live batches.
fn check_invariants(store: &SledStore) -> Summary {
    let inner = &store.inner;
    let mut summary = Summary::new();
    let mut seqs = HashSet::new();
    let mut pending_total = 0u64;
    for item in inner.batches.iter() {
        let (k, v) = item.unwrap();
        let seq = layout::decode_seq(&k).unwrap();
        let meta = BatchMeta::decode(&v).unwrap();
        assert_ne!(meta.state, StoredState::Deleting, "an interrupted purge was not finished at open");
        seqs.insert(seq);
        let prefix = layout::seq_key(seq);
        let pending = record_keys(store, &prefix);
        let results: Vec<_> = block_entries(store, &inner.results, seal::Purpose::Results, &prefix);
        let (mut signed, mut rejected) = (0u32, 0u32);
        let pending_set: HashSet<_> = pending.iter().collect();
        for (k, v) in &results {
            assert!(!pending_set.contains(k), "a record is both pending and resolved");
            let r: RecordResult = serde_json::from_slice(v).expect("stored result parses");
            if r.is_signed() { signed += 1 } else { rejected += 1 }
        }
        for k in pending.iter().chain(results.iter().map(|(k, _)| k)) {
            assert!(k.index() < meta.total);
        }
        assert_eq!(pending.len() + results.len(), meta.total as usize, "queue + results == total");
        assert_eq!((meta.signed, meta.rejected), (signed, rejected), "counters equal the results");
        let expected = if results.is_empty() {
            StoredState::Queued
        } else if pending.is_empty() {
            StoredState::Done
        } else {
            StoredState::Signing
        };
        assert_eq!(meta.state, expected);
        let id_seq = inner.batch_ids.get(meta.id).unwrap().expect("id mapping exists");
        assert_eq!(layout::decode_seq(&id_seq).unwrap(), seq);
        if let Some(k) = &meta.idempotency {
            let entry = idempotency::Entry::decode(&inner.idempotency.get(k).unwrap().unwrap()).unwrap();
            assert!(matches!(entry, idempotency::Entry::Live { seq: s, .. } if s == seq), "its key names it");
        }
        assert!(inner.data_keys.get(prefix).unwrap().is_some(), "a live batch has its wrapped data key");
        pending_total += pending.len() as u64;
        summary.insert(layout::batch_id_text(&meta.id), (meta.total, signed, rejected));
    }
    for (tree, purpose) in
        [(&inner.pending, seal::Purpose::Pending), (&inner.results, seal::Purpose::Results)]
    {
        for (k, v) in tree.iter().map(Result::unwrap) {
            let key = layout::RecordKey::from_bytes(&k).unwrap();
            assert!(seqs.contains(&key.batch_seq()), "a record outlived its batch");
            assert_eq!(key.block(), key, "blocks are keyed by their first record");
            let plain = open_stored(store, purpose, &k, &v);
            assert!(!layout::decode_block(&plain).unwrap().is_empty(), "an empty block is removed");
        }
    }
    assert_eq!(tree_len(&inner.batch_ids), seqs.len());
    assert_eq!(tree_len(&inner.data_keys), seqs.len(), "a data key per live batch, none for purged ones");
    for v in inner.idempotency.iter().values() {
        match idempotency::Entry::decode(&v.unwrap()).unwrap() {
            idempotency::Entry::Live { seq, .. } => {
                assert!(seqs.contains(&seq), "live key of a purged batch")
            }
            idempotency::Entry::Tombstone { batch_id, .. } => {
                assert!(!summary.contains_key(&layout::batch_id_text(&batch_id)), "tombstone of a live batch")
            }
        }
    }
    assert_eq!(store.queued_records(), pending_total, "queued counter");
    summary
}
