//! Store tests on real sled directories: the lifecycle, exactly-once, durability across reopen
//! and across `kill -9` of a child process, idempotency, isolation, retention, a full disk.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::layout::{self, BatchMeta, StoredState};
use super::*;

mod idempotency_keys;
mod shredding;

/// The same test KEK in every process (the kill -9 tests reopen a child's store).
fn options() -> StoreOptions {
    StoreOptions {
        key_wrap: Some(seal::testing::MemoryKek::with_key([0x4b; 32])),
        cache_capacity: 8 << 20,
        min_free_bytes: 0,
    }
}

fn open(dir: &Path) -> Store {
    Store::open(dir, options()).expect("open store")
}

const DCC: &[u8] = br#"{"ver":"1.3.0","nam":{"fnt":"NGUYEN"},"dob":"1990-01-01"}"#;

fn refs(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

fn records(refs: &[String]) -> Vec<NewRecord<'_>> {
    refs.iter().map(|r| NewRecord { r#ref: r, dcc_json: DCC }).collect()
}

fn submit(store: &Store, issuer: &str, key: Option<&str>, n: usize, now: i64) -> Submitted {
    let refs = refs(issuer, n);
    store.submit(issuer, key, &records(&refs), now).expect("submit")
}

/// A result for a claimed item: every third rejected.
fn result_for(item: &WorkItem) -> RecordResult {
    if item.key.index() % 3 == 2 {
        RecordResult::Rejected {
            r#ref: item.r#ref.clone(),
            error: RecordError { code: "schema".into(), message: "test rejection".into() },
        }
    } else {
        RecordResult::Signed {
            r#ref: item.r#ref.clone(),
            hc1: format!("HC1:{}", item.r#ref),
            uvci: "URN:UVCI:01:VN:TEST".into(),
            kid: "AAAAAAAAAAA=".into(),
            iat: 1,
            exp: 2,
        }
    }
}

fn sign_all(store: &Store, chunk: usize) -> usize {
    let mut n = 0;
    loop {
        let items = store.claim(chunk).unwrap();
        if items.is_empty() {
            return n;
        }
        n += items.len();
        store.commit(items.iter().map(|i| (i.key, result_for(i))).collect()).unwrap();
    }
}

/// A batch's results as streamed, parsed.
fn parsed_results(store: &Store, issuer: &str, batch_id: &str) -> Vec<RecordResult> {
    let lines = store.results(issuer, batch_id).unwrap().expect("the batch exists");
    lines.map(|l| serde_json::from_slice(&l.unwrap()).expect("a result line parses")).collect()
}

fn tree_len(tree: &sled::Tree) -> usize {
    tree.iter().count()
}

/// The sealing context of a stored block of `tree` at key `k`, and the batch's data key.
fn block_key(store: &Store, purpose: seal::Purpose, k: &[u8]) -> (seal::Context, Arc<seal::DataKey>) {
    let block = layout::RecordKey::from_bytes(k).unwrap();
    let meta = store.inner.batches.get(layout::seq_key(block.batch_seq())).unwrap().expect("its batch");
    let meta = BatchMeta::decode(&meta).unwrap();
    let key = store.data_key(block.batch_seq()).unwrap().expect("a live batch has its data key");
    (shred::context(purpose, &meta.id, block), key)
}

/// A stored block opened (what it holds in clear).
fn open_stored(store: &Store, purpose: seal::Purpose, k: &[u8], v: &[u8]) -> Vec<u8> {
    let (ctx, key) = block_key(store, purpose, k);
    seal::open(&key, &ctx, v).expect("a stored block opens under its batch's key").to_vec()
}

/// Replaces a stored block with `plain`, sealed as the store would.
fn reseal(store: &Store, purpose: seal::Purpose, k: &[u8], plain: &[u8]) -> Vec<u8> {
    let (ctx, key) = block_key(store, purpose, k);
    seal::seal(&key, &ctx, plain).unwrap()
}

/// Every record entry in a tree of blocks under `prefix`, in key order: `(record, bytes)`.
fn block_entries(
    store: &Store,
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
fn record_keys(store: &Store, prefix: &[u8]) -> Vec<layout::RecordKey> {
    block_entries(store, &store.inner.pending, seal::Purpose::Pending, prefix)
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

/// What the checker found: per live batch (id → (total, signed, rejected)).
type Summary = BTreeMap<String, (u32, u32, u32)>;

/// Checks every invariant of the layout and returns the live batches.
fn check_invariants(store: &Store) -> Summary {
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

#[test]
fn lifecycle_submit_claim_commit_stream_delete() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let s = submit(&store, "issuer-a", Some("k1"), 1000, 100);
    assert!(s.created && s.total == 1000 && s.batch_id.len() == 32);
    assert_eq!(store.queued_records(), 1000);
    assert!(store.has_work());
    let status = store.batch("issuer-a", &s.batch_id).unwrap().unwrap();
    assert_eq!(
        (status.state, status.total, status.signed, status.rejected),
        (BatchState::Queued, 1000, 0, 0)
    );
    assert_eq!(status.created_at, 100);

    // Claims come out in record order with everything the pipeline needs.
    let first = store.claim(10).unwrap();
    assert_eq!(first.len(), 10);
    for (i, item) in first.iter().enumerate() {
        assert_eq!(item.key.index() as usize, i);
        assert_eq!((item.batch_id.as_str(), item.issuer_id.as_str()), (s.batch_id.as_str(), "issuer-a"));
        assert_eq!(
            (item.r#ref.clone(), item.dcc_json.as_slice(), item.accepted_at),
            (format!("issuer-a-{i}"), DCC, 100)
        );
    }
    let stats = store.commit(first.iter().map(|i| (i.key, result_for(i))).collect()).unwrap();
    assert_eq!((stats.applied, stats.signed, stats.rejected, stats.duplicates), (10, 7, 3, 0));
    assert_eq!(store.batch("issuer-a", &s.batch_id).unwrap().unwrap().state, BatchState::Signing);
    assert_eq!(store.queued_records(), 990);
    assert_eq!(store.oldest_pending_age(160).unwrap(), Some(60));

    assert_eq!(sign_all(&store, 256), 990);
    assert!(!store.has_work());
    assert_eq!(store.oldest_pending_age(160).unwrap(), None);
    let status = store.batch("issuer-a", &s.batch_id).unwrap().unwrap();
    assert_eq!((status.state, status.signed + status.rejected), (BatchState::Done, 1000));
    check_invariants(&store);
    assert_eq!(tree_len(&store.inner.pending), 0, "payloads are purged once signed");

    // Results stream in record order, each exactly the documented JSON object.
    let lines: Vec<Vec<u8>> =
        store.results("issuer-a", &s.batch_id).unwrap().unwrap().map(|l| l.unwrap()).collect();
    assert_eq!(lines.len(), 1000);
    for (i, line) in lines.iter().enumerate() {
        let r: RecordResult = serde_json::from_slice(line).unwrap();
        assert_eq!(r.r#ref(), format!("issuer-a-{i}"));
        assert!(line.starts_with(br#"{"ref":""#) && !line.contains(&b'\n'));
    }

    // Delete purges every tree.
    assert!(store.delete("issuer-a", &s.batch_id).unwrap());
    assert!(!store.delete("issuer-a", &s.batch_id).unwrap(), "a second delete finds nothing");
    assert!(store.batch("issuer-a", &s.batch_id).unwrap().is_none());
    assert!(store.results("issuer-a", &s.batch_id).unwrap().is_none());
    let inner = &store.inner;
    for (name, tree) in [
        ("batches", &inner.batches),
        ("batch_ids", &inner.batch_ids),
        ("data_keys", &inner.data_keys),
        ("pending", &inner.pending),
        ("results", &inner.results),
    ] {
        assert_eq!(tree_len(tree), 0, "{name} is empty after delete");
    }
    // The idempotency key stays spent: a tombstone, and a retry is refused, not signed again.
    assert_eq!(tree_len(&inner.idempotency), 1);
    let refs = refs("issuer-a", 1000);
    let retry = store.submit("issuer-a", Some("k1"), &records(&refs), 200);
    assert!(
        matches!(retry, Err(StoreError::BatchDeleted { ref batch_id }) if *batch_id == s.batch_id),
        "{retry:?}"
    );
    assert_eq!(store.queued_records(), 0);
}

#[test]
fn delete_of_a_batch_with_pending_and_leased_records() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let a = submit(&store, "i", None, 300, 1);
    let b = submit(&store, "i", None, 5, 1);
    let leased = store.claim(100).unwrap();
    assert!(store.delete("i", &a.batch_id).unwrap());
    assert_eq!(store.queued_records(), 5);
    // The in-flight chunk's results arrive after the purge: dropped, not resurrected.
    let stats = store.commit(leased.iter().map(|i| (i.key, result_for(i))).collect()).unwrap();
    assert_eq!((stats.applied, stats.orphaned), (0, 100));
    let rest = store.claim(1000).unwrap();
    assert!(rest.iter().all(|i| i.batch_id == b.batch_id) && rest.len() == 5);
    check_invariants(&store);
}

#[test]
fn commit_is_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let s = submit(&store, "i", None, 4, 1);
    let items = store.claim(4).unwrap();
    let first: Vec<_> = items.iter().map(|i| (i.key, result_for(i))).collect();
    assert_eq!(store.commit(first.clone()).unwrap().applied, 4);
    // The same records again, with different content: skipped, first result kept, counted once.
    let second: Vec<_> = items
        .iter()
        .map(|i| {
            (
                i.key,
                RecordResult::Rejected {
                    r#ref: i.r#ref.clone(),
                    error: RecordError { code: "late".into(), message: "second result".into() },
                },
            )
        })
        .collect();
    let stats = store.commit(second).unwrap();
    assert_eq!((stats.applied, stats.duplicates), (0, 4));
    // Twice within one chunk: the second is a duplicate.
    let t = submit(&store, "i", None, 1, 1);
    let item = store.claim(1).unwrap().remove(0);
    let stats = store.commit(vec![(item.key, result_for(&item)), (item.key, result_for(&item))]).unwrap();
    assert_eq!((stats.applied, stats.duplicates, stats.batches_done), (1, 1, 1));

    let status = store.batch("i", &s.batch_id).unwrap().unwrap();
    assert_eq!((status.signed, status.rejected, status.state), (3, 1, BatchState::Done));
    let lines = parsed_results(&store, "i", &s.batch_id);
    assert_eq!(lines, first.into_iter().map(|(_, r)| r).collect::<Vec<_>>());
    assert_eq!(store.batch("i", &t.batch_id).unwrap().unwrap().signed, 1);
    // A key that never existed is dropped, not stored.
    let bogus = layout::RecordKey::new(u64::MAX, 0);
    assert_eq!(store.commit(vec![(bogus, result_for(&item))]).unwrap().orphaned, 1);
    check_invariants(&store);
}

/// A small deterministic generator, so a failing shuffle can be replayed.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

#[test]
fn records_of_a_block_resolve_in_any_order_split_released_and_across_reopen() {
    for seed in [0x9e37_79b9_7f4a_7c15, 0x2545_f491_4f6c_dd1d, 7] {
        resolve_shuffled(seed);
    }
}

/// One run of the test above, its shuffles drawn from `seed`.
fn resolve_shuffled(seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let a = submit(&store, "i", None, 3 * layout::BLOCK as usize + 5, 1);
    let b = submit(&store, "i", None, 70, 1);
    let total = 3 * layout::BLOCK as usize + 5 + 70;
    let mut rng = XorShift(seed);
    let mut resolved = 0;
    for round in 0.. {
        // Odd claim sizes cut blocks anywhere; results come back shuffled, split across
        // commits, and some records are released and claimed again later.
        let mut items = store.claim(1 + rng.below(50)).unwrap();
        if items.is_empty() {
            break;
        }
        for i in (1..items.len()).rev() {
            items.swap(i, rng.below(i + 1));
        }
        let released: Vec<_> = items.drain(..rng.below(items.len() / 3 + 1)).map(|i| i.key).collect();
        store.release(&released);
        while !items.is_empty() {
            let part: Vec<_> = items.drain(..1 + rng.below(items.len())).collect();
            let stats = store.commit(part.iter().map(|i| (i.key, result_for(i))).collect()).unwrap();
            assert_eq!((stats.applied, stats.duplicates, stats.orphaned), (part.len(), 0, 0));
            resolved += part.len();
        }
        check_invariants(&store);
        if round % 4 == 3 {
            // Leases are per process: a reopen hands out whatever is still pending.
            store.close().unwrap();
            store = open(dir.path());
        }
    }
    assert_eq!(resolved, total);
    for s in [&a, &b] {
        let lines = parsed_results(&store, "i", &s.batch_id);
        assert_eq!(lines.len(), s.total as usize);
        for (n, r) in lines.iter().enumerate() {
            assert_eq!(r.r#ref(), format!("i-{n}"), "results stream in record order");
        }
    }
    assert_eq!(tree_len(&store.inner.pending), 0);
}

#[test]
fn a_store_of_another_schema_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        store.inner.db.insert(SCHEMA_KEY, &[1u8][..]).unwrap();
        store.close().unwrap();
    }
    let e = Store::open(dir.path(), options()).err().expect("schema 1 is refused");
    assert!(matches!(e, StoreError::Open { .. }), "{e}");
    let text = e.to_string();
    assert!(text.contains("schema 1") && text.contains("empty store directory"), "{text}");
}

#[test]
fn concurrent_claims_never_overlap_and_release_makes_records_claimable() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for _ in 0..4 {
        submit(&store, "i", None, 500, 1);
    }
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (store, seen) = (store.clone(), seen.clone());
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                loop {
                    let items = store.claim(37).unwrap();
                    if items.is_empty() {
                        return mine;
                    }
                    let mut seen = seen.lock().unwrap();
                    for i in &items {
                        assert!(seen.insert(i.key), "record {} handed out twice", i.key);
                    }
                    mine.extend(items.into_iter().map(|i| i.key));
                }
            })
        })
        .collect();
    let claimed: Vec<Vec<_>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(claimed.iter().map(Vec::len).sum::<usize>(), 2000);
    assert!(store.claim(10).unwrap().is_empty(), "everything is leased");
    assert!(!store.has_work());

    // A failed chunk goes back and is offered first.
    let failed = &claimed.iter().max_by_key(|c| c.len()).unwrap()[..20];
    store.release(failed);
    assert!(store.has_work());
    let again = store.claim(100).unwrap();
    assert_eq!(again.iter().map(|i| i.key).collect::<Vec<_>>(), failed.to_vec());
    store.release(failed);
    store.release(failed); // a second release of the same keys is harmless
    assert_eq!(store.claim(100).unwrap().len(), 20);

    // Leases end with the commit; nothing is pending afterwards.
    for keys in &claimed {
        let results = keys
            .iter()
            .map(|k| {
                (
                    *k,
                    RecordResult::Signed {
                        r#ref: "r".into(),
                        hc1: "HC1:".into(),
                        uvci: "u".into(),
                        kid: "k".into(),
                        iat: 0,
                        exp: 1,
                    },
                )
            })
            .collect();
        store.commit(results).unwrap();
    }
    assert_eq!(store.queued_records(), 0);
    check_invariants(&store);
}

#[test]
fn readers_writers_and_purges_run_concurrently() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let ids: Vec<String> = (0..6).map(|n| submit(&store, "i", None, 300, n).batch_id).collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = ids
        .iter()
        .take(3)
        .cloned()
        .map(|id| {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let before = store.batch("i", &id).unwrap().unwrap();
                    let lines =
                        store.results("i", &id).unwrap().unwrap().inspect(|l| assert!(l.is_ok())).count();
                    // Whatever the status showed was already visible in the results.
                    assert!(lines as u32 >= before.signed + before.rejected);
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let store = store.clone();
            std::thread::spawn(move || sign_all(&store, 50))
        })
        .collect();
    let submitter = {
        let store = store.clone();
        std::thread::spawn(move || {
            for n in 0..10 {
                let s = submit(&store, "j", None, 100, n);
                if n % 2 == 0 {
                    assert!(store.delete("j", &s.batch_id).unwrap());
                }
            }
        })
    };
    submitter.join().unwrap();
    for w in workers {
        w.join().unwrap();
    }
    sign_all(&store, 500);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    let summary = check_invariants(&store);
    assert_eq!(summary.len(), 6 + 5);
    assert!(summary.values().all(|(t, s, r)| s + r == *t));
}

#[test]
fn durable_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b);
    {
        let store = open(dir.path());
        a = submit(&store, "i", Some("key-a"), 200, 1);
        b = submit(&store, "j", None, 50, 2);
        let leased = store.claim(30).unwrap();
        assert_eq!(leased.len(), 30);
        // Dropped without commit or release.
    }
    {
        let store = open(dir.path());
        assert_eq!(store.queued_records(), 250, "all pending again, leases are not persisted");
        let summary = check_invariants(&store);
        assert_eq!(summary[&a.batch_id], (200, 0, 0));
        // Commit half, then reopen.
        let items = store.claim(125).unwrap();
        assert_eq!(items[0].key.index(), 0, "the old leases are gone");
        store.commit(items.iter().map(|i| (i.key, result_for(i))).collect()).unwrap();
    }
    let store = open(dir.path());
    let summary = check_invariants(&store);
    assert_eq!(store.queued_records(), 125);
    let (total, signed, rejected) = summary[&a.batch_id];
    assert_eq!((total, signed + rejected), (200, 125));
    assert_eq!(summary[&b.batch_id], (50, 0, 0));
    assert_eq!(store.batch("i", &a.batch_id).unwrap().unwrap().state, BatchState::Signing);
    let rest = store.claim(1000).unwrap();
    assert_eq!(rest.len(), 125);
    assert_eq!(rest[0].key.index(), 125);
    // The idempotency key survived too.
    let replay = submit(&store, "i", Some("key-a"), 200, 9);
    assert_eq!((replay.batch_id.as_str(), replay.created, replay.total), (a.batch_id.as_str(), false, 200));
}

#[test]
fn isolation_between_issuers() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let s = submit(&store, "issuer-a", None, 3, 1);
    assert!(store.batch("issuer-b", &s.batch_id).unwrap().is_none());
    assert!(store.results("issuer-b", &s.batch_id).unwrap().is_none());
    assert!(!store.delete("issuer-b", &s.batch_id).unwrap(), "another issuer cannot delete");
    assert!(store.batch("issuer-a", &s.batch_id).unwrap().is_some(), "still there for its owner");
    for bad in ["", "nope", "../x", &s.batch_id.to_uppercase(), &format!("{}0", s.batch_id)] {
        assert!(store.batch("issuer-a", bad).unwrap().is_none());
        assert!(!store.delete("issuer-a", bad).unwrap());
    }
}

#[test]
fn retention_purges_expired_batches_and_counts_unsigned_records() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let day = 86_400;
    let old_done = submit(&store, "i", Some("old"), 20, 0);
    sign_all(&store, 64);
    let old_unsigned = submit(&store, "i", None, 7, 10);
    let young = submit(&store, "i", None, 4, 6 * day);
    assert_eq!(store.oldest_pending_age(7 * day).unwrap(), Some(7 * day - 10));
    let purged = store.purge_expired(7 * day + 10, 7 * day).unwrap();
    assert_eq!(purged, 2);
    assert_eq!(store.expired_unsigned_records(), 7);
    assert!(store.batch("i", &old_done.batch_id).unwrap().is_none());
    assert!(store.batch("i", &old_unsigned.batch_id).unwrap().is_none());
    assert!(store.batch("i", &young.batch_id).unwrap().is_some());
    assert_eq!(store.queued_records(), 4);
    assert_eq!(store.oldest_pending_age(7 * day).unwrap(), Some(day));
    assert_eq!(store.purge_expired(7 * day + 10, 7 * day).unwrap(), 0);
    let summary = check_invariants(&store);
    assert_eq!(summary.len(), 1);
    // The expired batch's key is a tombstone for a retention period after the purge: a retry
    // is refused, not signed again; then the tombstone expires and the key is free.
    let refs20 = refs("i", 20);
    let retry = store.submit("i", Some("old"), &records(&refs20), 8 * day);
    assert!(
        matches!(retry, Err(StoreError::BatchDeleted { ref batch_id }) if *batch_id == old_done.batch_id),
        "{retry:?}"
    );
    assert_eq!(store.purge_expired(14 * day + 9, 7 * day).unwrap(), 1, "the young batch's turn");
    assert!(store.submit("i", Some("old"), &records(&refs20), 8 * day).is_err(), "a day short of expiry");
    assert_eq!(store.purge_expired(14 * day + 10, 7 * day).unwrap(), 0);
    assert_eq!(tree_len(&store.inner.idempotency), 0, "the tombstone expired");
    assert!(submit(&store, "i", Some("old"), 1, 15 * day).created, "an expired tombstone frees its key");
}

#[test]
fn an_interrupted_purge_is_finished_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let s;
    {
        let store = open(dir.path());
        s = submit(&store, "i", Some("k"), 50, 1);
        let items = store.claim(20).unwrap();
        store.commit(items.iter().map(|i| (i.key, result_for(i))).collect()).unwrap();
        // Mark it as purging, as `delete` does, then "crash" before the sweep.
        let id = layout::parse_batch_id(&s.batch_id).unwrap();
        assert!(store.mark_deleting(super::batches::Target::Id(id), 1, |_| true).unwrap().is_some());
        store.flush().unwrap();
    }
    let store = open(dir.path());
    check_invariants(&store);
    assert_eq!(tree_len(&store.inner.pending) + tree_len(&store.inner.results), 0);
    assert!(store.batch("i", &s.batch_id).unwrap().is_none());
}

#[test]
fn an_unreadable_payload_is_set_aside_not_handed_out() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    submit(&store, "i", None, 3, 1);
    let (k, v) = store.inner.pending.first().unwrap().unwrap();
    // Record 1's payload damaged inside a block that still reads: only it is set aside.
    let plain = open_stored(&store, seal::Purpose::Pending, &k, &v);
    let mut block = layout::BlockWriter::with_capacity(0);
    for (offset, entry) in layout::decode_block(&plain).unwrap() {
        block.push(offset, if offset == 1 { &[0, 2, 0xff, 0xfe] } else { entry }).unwrap();
    }
    let sealed = reseal(&store, seal::Purpose::Pending, &k, &block.finish());
    store.inner.pending.insert(&k, sealed).unwrap();
    let items = store.claim(10).unwrap();
    assert_eq!(items.iter().map(|i| i.key.index()).collect::<Vec<_>>(), vec![0, 2]);
    assert_eq!(store.corrupt_records(), 1);
    assert!(store.claim(10).unwrap().is_empty());
    assert_eq!(store.queued_records(), 3, "it stays pending, so the queue age alert fires");
}

#[test]
fn an_unreadable_block_sets_its_records_aside_and_the_queue_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let s = submit(&store, "i", None, 150, 1);
    let (seq, _) = store.lookup("i", &s.batch_id).unwrap().unwrap();
    let second = layout::RecordKey::new(seq, layout::BLOCK);
    store.inner.pending.insert(second.to_bytes(), &[layout::BLOCK as u8, 9, 9][..]).unwrap();
    let mut claimed = Vec::new();
    loop {
        let items = store.claim(40).unwrap();
        if items.is_empty() {
            break;
        }
        store.commit(items.iter().map(|i| (i.key, result_for(i))).collect()).unwrap();
        claimed.extend(items.iter().map(|i| i.key.index()));
    }
    let expected: Vec<u32> = (0..layout::BLOCK).chain(2 * layout::BLOCK..150).collect();
    assert_eq!(claimed, expected, "the blocks before and after it are signed, in order");
    assert_eq!(store.corrupt_records(), u64::from(layout::BLOCK), "every record it could hold");
    assert_eq!(store.queued_records(), u64::from(layout::BLOCK));
    let lines = store.results("i", &s.batch_id).unwrap().unwrap().count();
    assert_eq!(lines, 150 - layout::BLOCK as usize);
}

#[test]
fn a_damaged_batch_does_not_stop_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (bad, good);
    {
        let store = open(dir.path());
        bad = submit(&store, "i", None, 3, 1);
        good = submit(&store, "i", None, 2, 1);
        let (seq, _) = store.lookup("i", &bad.batch_id).unwrap().unwrap();
        store.inner.batches.insert(layout::seq_key(seq), &b"garbage"[..]).unwrap();
    }
    let store = open(dir.path());
    assert_eq!(store.corrupt_records(), 1);
    assert_eq!(store.queued_records(), 2, "only the readable batch is counted");
    assert!(matches!(store.batch("i", &bad.batch_id), Err(StoreError::Corrupt(_))));
    let items = store.claim(10).unwrap();
    assert!(items.len() == 2 && items.iter().all(|i| i.batch_id == good.batch_id));
    assert_eq!(store.purge_expired(1_000_000, 10).unwrap(), 1, "retention goes on for the others");
}

#[test]
fn input_the_store_cannot_represent_is_refused_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert!(matches!(store.submit("i", None, &[], 1), Err(StoreError::Invalid(_))));
    let long = "x".repeat(70_000);
    let recs = [NewRecord { r#ref: &long, dcc_json: b"{}" }];
    assert!(matches!(store.submit("i", None, &recs, 1), Err(StoreError::Invalid(_))));
    let recs = [NewRecord { r#ref: "r", dcc_json: b"{}" }];
    assert!(matches!(store.submit(&long, None, &recs, 1), Err(StoreError::Invalid(_))));
    assert!(matches!(store.submit("i", Some(&long), &recs, 1), Err(StoreError::Invalid(_))));
    // Odd but representable input is stored as given.
    let recs = [NewRecord { r#ref: "", dcc_json: &[0xff, 0x00] }];
    let s = store.submit("", Some(""), &recs, i64::MIN).unwrap();
    assert_eq!(store.claim(1).unwrap()[0].dcc_json, vec![0xff, 0x00]);
    assert!(store.batch("", &s.batch_id).unwrap().is_some());
    assert_eq!(store.oldest_pending_age(i64::MAX).unwrap(), Some(i64::MAX));
    assert_eq!(store.purge_expired(i64::MAX, i64::MAX).unwrap(), 1);
    assert_eq!(store.commit(Vec::<Outcome>::new()).unwrap(), CommitStats::default());
    assert!(store.claim(0).unwrap().is_empty());
    check_invariants(&store);
}

#[test]
fn open_errors_are_typed_and_actionable() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let e = Store::open(dir.path(), options()).err().expect("a second open must fail");
    assert!(matches!(e, StoreError::Locked { .. }), "{e}");
    assert!(e.to_string().contains("in use by another process"));
    drop(store);
    let again = open(dir.path());
    drop(again);

    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let e = Store::open(&file.join("store"), options()).err().expect("under a file");
    assert!(matches!(e, StoreError::Open { .. }), "{e}");
    assert!(!e.to_string().contains('\n') && e.is_unavailable());
}

#[test]
fn the_free_space_reserve_refuses_a_batch_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let kept = {
        let store = open(dir.path());
        submit(&store, "i", Some("k"), 5, 1)
    };
    let store = Store::open(dir.path(), StoreOptions { min_free_bytes: u64::MAX / 4, ..options() }).unwrap();
    let refs = refs("i", 5);
    let e = store.submit("i", None, &records(&refs), 2).unwrap_err();
    assert!(e.is_full() && e.is_unavailable(), "{e}");
    // A replay of an accepted batch is still answered: it needs no space.
    let replay = store.submit("i", Some("k"), &records(&refs), 2).unwrap();
    assert_eq!(replay.batch_id, kept.batch_id);
    // The store goes on: nothing was half-written, work can still be committed.
    store.check().unwrap();
    assert_eq!(sign_all(&store, 10), 5);
    assert_eq!(check_invariants(&store).len(), 1);
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(options: &str) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!("mount failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn remount(&self, options: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(self.path())
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

#[test]
fn a_full_disk_fails_with_full_and_keeps_earlier_batches() {
    let fs = match Tmpfs::mount("size=2m") {
        Ok(fs) => fs,
        Err(why) => {
            println!(
                "SKIPPED a_full_disk_fails_with_full_and_keeps_earlier_batches: cannot mount a tmpfs ({why})"
            );
            return;
        }
    };
    let dir = fs.path().join("store");
    let mut accepted = Vec::new();
    let failure = {
        let store = open(&dir);
        let mut failure = None;
        for n in 0..1000 {
            let refs = refs(&format!("b{n}"), 100);
            match store.submit("i", None, &records(&refs), n) {
                Ok(s) => accepted.push(s),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let e = failure.expect("a 2 MiB disk fills up");
        assert!(matches!(e, StoreError::Full), "ENOSPC surfaces as Full, got {e}");
        // The handle stops (sled cannot go on after ENOSPC) and says so, without hanging.
        assert!(matches!(store.check(), Err(StoreError::Full)));
        assert!(matches!(store.claim(10), Err(StoreError::Full)));
        assert!(matches!(store.batch("i", &accepted[0].batch_id), Err(StoreError::Full)));
        e
    };
    assert!(!accepted.is_empty(), "some batches fit before the disk filled");
    println!("disk full after {} batches of 100 records: {failure}", accepted.len());
    // Free space, restart: every accepted batch is intact and pending; nothing half-written.
    // The failed handle is never closed (its sled could hang flushing), so a restart is a copy
    // of the files opened afresh.
    fs.remount("size=64m");
    let copy = fs.path().join("restarted");
    std::fs::create_dir_all(&copy).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
        } else {
            // sled's blobs directory.
            std::fs::create_dir_all(copy.join(entry.file_name())).unwrap();
            for blob in std::fs::read_dir(entry.path()).unwrap() {
                let blob = blob.unwrap();
                std::fs::copy(blob.path(), copy.join(entry.file_name()).join(blob.file_name())).unwrap();
            }
        }
    }
    let store = open(&copy);
    let summary = check_invariants(&store);
    for s in &accepted {
        assert_eq!(summary.get(&s.batch_id), Some(&(100, 0, 0)), "accepted batch intact");
    }
    // The failed batch is either wholly there (its transaction reached the disk before the
    // flush failed) or not at all; check_invariants proved it is not partial.
    assert!(summary.len() == accepted.len() || summary.len() == accepted.len() + 1);
    assert_eq!(sign_all(&store, 256), 100 * summary.len());
}

#[test]
fn a_read_only_directory_is_a_clear_open_error() {
    let fs = match Tmpfs::mount("size=1m,ro") {
        Ok(fs) => fs,
        Err(why) => {
            println!("SKIPPED a_read_only_directory_is_a_clear_open_error: cannot mount a tmpfs ({why})");
            return;
        }
    };
    let e = Store::open(&fs.path().join("store"), options()).err().expect("read-only");
    let text = e.to_string();
    assert!(matches!(e, StoreError::Open { .. }) && text.contains("read-only"), "{text}");
}

/// Files in sled's `blobs/` directory (nodes sled writes outside its log, unsynced).
fn blob_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("blobs")).map_or(0, |d| d.count())
}

#[test]
fn no_stored_value_reaches_sleds_blob_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // The largest records the API accepts (a 128-character ref, 8 KiB of DCC JSON), with
    // results larger still (an HC1 half as long again as the DCC), enough to fill nodes.
    let big_dcc = vec![b'x'; crate::api::routes::MAX_DCC_BYTES];
    let long_refs: Vec<String> = (0..600).map(|i| format!("{i:0>128}")).collect();
    let recs: Vec<NewRecord<'_>> =
        long_refs.iter().map(|r| NewRecord { r#ref: r, dcc_json: &big_dcc }).collect();
    submit_records(&store, &recs);
    submit_records(&store, &recs);
    let hc1 = format!("HC1:{}", "A".repeat(crate::api::routes::MAX_DCC_BYTES * 3 / 2));
    let big_result = |i: &WorkItem| RecordResult::Signed {
        r#ref: i.r#ref.clone(),
        hc1: hc1.clone(),
        uvci: "URN:UVCI:01:VN:ABCDEFGHIJKLMNOPQRSTUVWXYZ#Q".into(),
        kid: "AAAAAAAAAAA=".into(),
        iat: 1,
        exp: 2,
    };
    let audited = |i: &WorkItem, result: RecordResult| Outcome {
        key: i.key,
        audit: Some(crate::audit::SignedRecord::new(
            &i.r#ref,
            "URN:UVCI:01:VN:X",
            &[7; 64],
            "AAAAAAAAAAA=",
            2,
        )),
        result,
    };
    loop {
        let items = store.claim(crate::config::MAX_CHUNK_SIZE).unwrap();
        if items.is_empty() {
            break;
        }
        store.commit(items.iter().map(|i| audited(i, big_result(i))).collect()).unwrap();
    }
    // Audit entries as large as a chunk can make them: 1,024 signatures of one batch each.
    let small = refs(&"r".repeat(128), 18 * crate::config::MAX_CHUNK_SIZE);
    submit_records(&store, &records(&small));
    loop {
        let items = store.claim(crate::config::MAX_CHUNK_SIZE).unwrap();
        if items.is_empty() {
            break;
        }
        store.commit(items.iter().map(|i| audited(i, result_for(i))).collect()).unwrap();
    }
    store.flush().unwrap();
    check_invariants(&store);
    assert_eq!(blob_files(dir.path()), 0, "sled wrote blob files, which its flush does not sync");
}

fn submit_records(store: &Store, recs: &[NewRecord<'_>]) {
    store.submit("i", None, recs, 1).expect("submit");
}

#[test]
fn result_iterators_can_move_to_blocking_threads() {
    fn send_static<T: Send + 'static>() {}
    send_static::<ResultIter>();
    send_static::<Store>();
    fn sync<T: Sync>() {}
    sync::<Store>();
}

// --- crash test ------------------------------------------------------------------------------

const CHILD_ENV: &str = "HCERT_STORE_CRASH_DIR";

/// A tiny PRNG seeded from the system's: the test needs varied timing, not cryptography.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let mut seed = [0u8; 8];
        aws_lc_rs::rand::fill(&mut seed).unwrap();
        Self(u64::from_le_bytes(seed) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// The child side of the crash test: submits, signs and deletes until killed (or 60 s pass).
/// Prints `SUBMITTED <id> <total>` only after `submit` returned, `DELETING`/`DELETED` around a
/// delete.
#[test]
#[ignore = "child process of crash_kill9_keeps_every_accepted_record"]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else { return };
    let store = open(Path::new(&dir));
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let say = {
        let out = out.clone();
        move |line: String| {
            let mut out = out.lock().unwrap();
            writeln!(out, "{line}").unwrap();
            out.flush().unwrap();
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let worker = {
        let store = store.clone();
        std::thread::spawn(move || {
            let mut rng = Rng::new();
            while Instant::now() < deadline {
                let items = store.claim(1 + rng.below(128) as usize).unwrap();
                if items.is_empty() {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                }
                let results: Vec<_> = items.iter().map(|i| (i.key, result_for(i))).collect();
                match rng.below(10) {
                    0 => store.release(&items.iter().map(|i| i.key).collect::<Vec<_>>()),
                    1 => {
                        // A duplicate commit, as after a retry.
                        store.commit(results.clone()).unwrap();
                        store.commit(results).unwrap();
                    }
                    _ => {
                        store.commit(results).unwrap();
                    }
                }
            }
        })
    };
    let mut rng = Rng::new();
    let mut mine: Vec<String> = Vec::new();
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let size = 1 + rng.below(400) as usize;
        let key = (rng.below(3) == 0).then(|| format!("k{}", rng.below(1_000_000)));
        let refs = refs(&format!("c{n}"), size);
        let s = store.submit("crash", key.as_deref(), &records(&refs), 1).unwrap();
        say(format!("SUBMITTED {} {}", s.batch_id, s.total));
        mine.push(s.batch_id);
        if rng.below(5) == 0 && mine.len() > 2 {
            let victim = mine.remove(rng.below(mine.len() as u64) as usize);
            say(format!("DELETING {victim}"));
            store.delete("crash", &victim).unwrap();
            say(format!("DELETED {victim}"));
        }
        std::thread::sleep(Duration::from_millis(rng.below(20)));
    }
    worker.join().unwrap();
}

#[test]
fn crash_kill9_keeps_every_accepted_record() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng::new();
    let mut submitted: BTreeMap<String, u32> = BTreeMap::new();
    let mut deleted: HashSet<String> = HashSet::new();
    let mut deleting: HashSet<String> = HashSet::new();
    let cycles = 6;
    for cycle in 0..cycles {
        let mut child = Command::new(&exe)
            .args(["store::tests::crash_child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let reader = {
            let lines = lines.clone();
            std::thread::spawn(move || {
                // Only whole lines count: a line cut by the kill is no promise.
                let mut reader = BufReader::new(stdout);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line.ends_with('\n') {
                    lines.lock().unwrap().push(line.trim_end().to_owned());
                    line.clear();
                }
            })
        };
        let started = Instant::now();
        while !lines.lock().unwrap().iter().any(|l| l.starts_with("SUBMITTED")) {
            assert!(started.elapsed() < Duration::from_secs(30), "the child never submitted");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(50 + rng.below(700)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        let lines = lines.lock().unwrap();
        for line in lines.iter() {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts.as_slice() {
                ["SUBMITTED", id, total] => {
                    submitted.insert((*id).to_owned(), total.parse().unwrap());
                }
                ["DELETING", id] => {
                    deleting.insert((*id).to_owned());
                }
                ["DELETED", id] => {
                    deleted.insert((*id).to_owned());
                }
                _ => {}
            }
        }
        let store = open(dir.path());
        let summary = check_invariants(&store);
        for (id, total) in &submitted {
            if deleted.contains(id) {
                assert!(!summary.contains_key(id), "a deleted batch came back");
            } else if !deleting.contains(id) {
                let (t, _, _) =
                    summary.get(id).unwrap_or_else(|| panic!("accepted batch lost (cycle {cycle})"));
                assert_eq!(t, total);
            }
        }
        let resolved: u32 = summary.values().map(|(_, s, r)| s + r).sum();
        println!(
            "cycle {cycle}: {} batches accepted so far, {} live, {} queued, {resolved} resolved, {} deleted",
            submitted.len(),
            summary.len(),
            store.queued_records(),
            deleted.len()
        );
    }
    // Finally everything left is signed exactly once.
    let store = open(dir.path());
    sign_all(&store, 256);
    let summary = check_invariants(&store);
    for (id, (total, signed, rejected)) in &summary {
        assert_eq!(signed + rejected, *total, "batch {id} fully resolved");
    }
    assert!(submitted.len() >= cycles, "the child made progress each cycle");
}

// --- measurements ----------------------------------------------------------------------------

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Figures for the report: `HCERT_MEASURE_DIR=/var/tmp cargo test --release --lib
/// store::tests::measure -- --ignored --nocapture`. Fills a store with 200,000 queued records,
/// then reopens it in a fresh child process (so the memory figures are the daemon's, not the
/// filler's) to claim, commit and stream. `HCERT_MEASURE_CACHE_MB` sets sled's cache (default
/// 64). No assertions on timings.
#[test]
#[ignore = "measurement, run by hand in release mode"]
fn measure() {
    let cache_mb: u64 =
        std::env::var("HCERT_MEASURE_CACHE_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    let opts = StoreOptions { cache_capacity: cache_mb << 20, min_free_bytes: 0, ..options() };
    if let Some(dir) = std::env::var_os("HCERT_MEASURE_REOPEN") {
        measure_reopened(Path::new(&dir), opts);
        return;
    }
    let base = std::env::var_os("HCERT_MEASURE_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let dir = tempfile::tempdir_in(base).unwrap();
    let dcc = vec![b'x'; 380];
    {
        let store = Store::open(dir.path(), opts).unwrap();
        let refs = refs("person", 10_000);
        let recs: Vec<NewRecord<'_>> = refs.iter().map(|r| NewRecord { r#ref: r, dcc_json: &dcc }).collect();
        let mut times = Vec::new();
        for n in 0..20 {
            let t = Instant::now();
            store.submit("i", None, &recs, n).unwrap();
            times.push(t.elapsed());
            if n % 5 == 4 {
                println!("  {} queued: VmRSS {} MiB", store.queued_records(), rss_kib("VmRSS") / 1024);
            }
        }
        times.sort();
        println!(
            "submit 10,000 records of ~400 bytes incl. flush: median {:?}, max {:?}",
            times[10], times[19]
        );
        println!(
            "filler process after 200,000 queued: VmHWM {} MiB, on disk {} MiB",
            rss_kib("VmHWM") / 1024,
            store.inner.db.size_on_disk().unwrap_or(0) >> 20
        );
    }
    let st = Command::new(std::env::current_exe().unwrap())
        .args(["store::tests::measure", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env("HCERT_MEASURE_REOPEN", dir.path())
        .status()
        .unwrap();
    assert!(st.success());
}

fn measure_reopened(dir: &Path, opts: StoreOptions) {
    let before = rss_kib("VmRSS");
    let t = Instant::now();
    let store = Store::open(dir, opts.clone()).unwrap();
    println!(
        "fresh process, cache {} MiB: open with {} queued took {:?}; VmRSS {} -> {} MiB",
        opts.cache_capacity >> 20,
        store.queued_records(),
        t.elapsed(),
        before / 1024,
        rss_kib("VmRSS") / 1024
    );
    let t = Instant::now();
    let mut chunks = Vec::new();
    for _ in 0..200 {
        chunks.push(store.claim(256).unwrap());
    }
    let claimed: usize = chunks.iter().map(Vec::len).sum();
    let claim = t.elapsed();
    println!(
        "claim: {claimed} records in 256-record claims: {claim:?} ({:.1} µs/record)",
        claim.as_secs_f64() * 1e6 / claimed as f64
    );
    let mut commit_times = Vec::new();
    for items in &chunks {
        let results: Vec<_> = items
            .iter()
            .map(|i| {
                (
                    i.key,
                    RecordResult::Signed {
                        r#ref: i.r#ref.clone(),
                        hc1: format!("HC1:{}", "6BF".repeat(150)),
                        uvci: "URN:UVCI:01:VN:ABCDEFGHIJ#K".into(),
                        kid: "3lTmAZX19GQ=".into(),
                        iat: 1,
                        exp: 2,
                    },
                )
            })
            .collect();
        let t = Instant::now();
        store.commit(results).unwrap();
        commit_times.push(t.elapsed());
    }
    commit_times.sort();
    println!(
        "commit 256 results incl. flush: median {:?}, p90 {:?}, max {:?}",
        commit_times[commit_times.len() / 2],
        commit_times[commit_times.len() * 9 / 10],
        commit_times[commit_times.len() - 1]
    );
    let batch = store.inner.batches.first().unwrap().unwrap();
    let meta = BatchMeta::decode(&batch.1).unwrap();
    let id = layout::batch_id_text(&meta.id);
    let t = Instant::now();
    let lines = store.results("i", &id).unwrap().unwrap().count();
    println!("stream {lines} results: {:?}", t.elapsed());
    let t = Instant::now();
    assert!(store.delete("i", &id).unwrap());
    println!("delete a 10,000-record batch: {:?}", t.elapsed());
    let t = Instant::now();
    let oldest = store.oldest_pending_age(100).unwrap();
    println!("oldest_pending_age ({oldest:?}): {:?}", t.elapsed());
    // Drain the rest, as a daemon would, watching the peak.
    let t = Instant::now();
    let mut n = 0;
    loop {
        let items = store.claim(256).unwrap();
        if items.is_empty() {
            break;
        }
        n += items.len();
        store.commit(items.iter().map(|i| (i.key, result_for(i))).collect()).unwrap();
    }
    println!("claim+commit of the remaining {n} records: {:?}", t.elapsed());
    println!(
        "fresh process end: VmRSS {} MiB, VmHWM {} MiB",
        rss_kib("VmRSS") / 1024,
        rss_kib("VmHWM") / 1024
    );
}
