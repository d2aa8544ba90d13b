//! The lifecycle: submit, claim, commit, stream, delete; exactly-once in any order and across
//! reopen; concurrency; isolation between issuers; retention.

use super::*;

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
    let e = SledStore::open(dir.path(), options()).err().expect("schema 1 is refused");
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
