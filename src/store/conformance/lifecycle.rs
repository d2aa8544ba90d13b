//! The lifecycle of a batch: submit, claim, commit, stream, delete; isolation between issuers;
//! durability across a restart; readers, writers and purges at once; input at the edges.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::Fixture;
use super::kit::{DCC, outcomes, parsed_results, sign_all, submit};
use crate::store::{BatchState, CommitStats, NewRecord, Outcome, RecordResult, StoreError};

/// Submit → status → claim (in record order, with all the pipeline needs) → commit → stream
/// (each line the documented JSON) → delete (gone for good, a second delete finds nothing).
pub fn submit_claim_commit_stream_delete(f: &dyn Fixture) {
    let store = f.open();
    let s = submit(&store, "issuer-a", Some("k1"), 1000, 100);
    assert!(s.created && s.total == 1000 && s.batch_id.len() == 32, "{s:?}");
    assert!(s.batch_id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{s:?}");
    assert_eq!((s.status.state, s.status.total, s.status.signed), (BatchState::Queued, 1000, 0));
    assert_eq!(store.queued_records(), 1000);
    assert!(store.has_work());
    let status = store.batch("issuer-a", &s.batch_id).unwrap().unwrap();
    assert_eq!(
        (status.batch_id.as_str(), status.state, status.total, status.signed, status.rejected),
        (s.batch_id.as_str(), BatchState::Queued, 1000, 0, 0)
    );
    assert_eq!(status.created_at, 100);
    assert_eq!(store.results("issuer-a", &s.batch_id).unwrap().unwrap().count(), 0, "no result yet");

    let first = store.claim(10).unwrap();
    assert_eq!(first.len(), 10);
    for (i, item) in first.iter().enumerate() {
        assert_eq!(item.key.index() as usize, i, "claims come out in record order");
        assert_eq!((item.batch_id.as_str(), item.issuer_id.as_str()), (s.batch_id.as_str(), "issuer-a"));
        assert_eq!(
            (item.r#ref.clone(), item.dcc_json.as_slice(), item.accepted_at),
            (format!("issuer-a-{i}"), DCC, 100)
        );
    }
    let stats = store.commit(outcomes(&first)).unwrap();
    assert_eq!((stats.applied, stats.signed, stats.rejected, stats.duplicates), (10, 7, 3, 0));
    assert_eq!(store.batch("issuer-a", &s.batch_id).unwrap().unwrap().state, BatchState::Signing);
    assert_eq!(store.queued_records(), 990);
    assert_eq!(store.oldest_pending_age(160).unwrap(), Some(60));
    assert_eq!(parsed_results(&store, "issuer-a", &s.batch_id).len(), 10, "committed results stream");

    assert_eq!(sign_all(&store, 256), 990);
    assert!(!store.has_work());
    assert_eq!(store.queued_records(), 0);
    assert_eq!(store.oldest_pending_age(160).unwrap(), None);
    let status = store.batch("issuer-a", &s.batch_id).unwrap().unwrap();
    assert_eq!((status.state, status.signed, status.rejected), (BatchState::Done, 667, 333));
    f.check(&store);

    let lines: Vec<Vec<u8>> =
        store.results("issuer-a", &s.batch_id).unwrap().unwrap().map(|l| l.unwrap()).collect();
    assert_eq!(lines.len(), 1000);
    for (i, line) in lines.iter().enumerate() {
        let r: RecordResult = serde_json::from_slice(line).unwrap();
        assert_eq!(r.r#ref(), format!("issuer-a-{i}"));
        assert_eq!(*line, r.to_json(), "each line is the result's documented JSON, as committed");
        assert!(!line.contains(&b'\n'));
    }

    assert!(store.delete("issuer-a", &s.batch_id).unwrap());
    assert!(!store.delete("issuer-a", &s.batch_id).unwrap(), "a second delete finds nothing");
    assert!(store.batch("issuer-a", &s.batch_id).unwrap().is_none());
    assert!(store.results("issuer-a", &s.batch_id).unwrap().is_none());
    assert_eq!(store.queued_records(), 0);
    f.check(&store);
    let store = f.reopen(store);
    assert!(store.batch("issuer-a", &s.batch_id).unwrap().is_none(), "a delete is durable");
}

/// Records resolve in any order — claims of odd sizes, results shuffled and split across
/// commits, some released and claimed again, the store reopened between rounds — and the
/// results still stream complete and in record order.
pub fn results_stream_in_record_order_whatever_the_commit_order(f: &dyn Fixture) {
    for seed in [0x9e37_79b9_7f4a_7c15, 0x2545_f491_4f6c_dd1d, 7] {
        resolve_shuffled(f, seed);
    }
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

/// One run of the test above, its shuffles drawn from `seed` (each run its own issuer).
fn resolve_shuffled(f: &dyn Fixture, seed: u64) {
    let issuer = format!("shuffle-{seed:x}");
    let mut store = f.open();
    // Sizes that cut the shared block encoding's blocks anywhere (`store::block`).
    let a = submit(&store, &issuer, None, 3 * crate::store::block::BLOCK as usize + 5, 1);
    let b = submit(&store, &issuer, None, 70, 1);
    let total = (a.total + b.total) as usize;
    let mut rng = XorShift(seed);
    let mut resolved = 0;
    for round in 0.. {
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
            let stats = store.commit(outcomes(&part)).unwrap();
            assert_eq!((stats.applied, stats.duplicates, stats.orphaned), (part.len(), 0, 0));
            resolved += part.len();
        }
        f.check(&store);
        if round % 4 == 3 {
            // Nothing is leased here: every claimed record was committed or released.
            store = f.reopen(store);
        }
    }
    assert_eq!(resolved, total);
    for s in [&a, &b] {
        let lines = parsed_results(&store, &issuer, &s.batch_id);
        assert_eq!(lines.len(), s.total as usize);
        for (n, r) in lines.iter().enumerate() {
            assert_eq!(r.r#ref(), format!("{issuer}-{n}"), "results stream in record order");
        }
        assert_eq!(store.batch(&issuer, &s.batch_id).unwrap().unwrap().state, BatchState::Done);
    }
    store.close().unwrap();
}

/// An issuer sees, streams and deletes only its own batches; odd ids find nothing.
pub fn isolation_between_issuers(f: &dyn Fixture) {
    let store = f.open();
    let s = submit(&store, "issuer-a", None, 3, 1);
    assert!(store.batch("issuer-b", &s.batch_id).unwrap().is_none());
    assert!(store.results("issuer-b", &s.batch_id).unwrap().is_none());
    assert!(!store.delete("issuer-b", &s.batch_id).unwrap(), "another issuer cannot delete");
    assert!(store.batch("issuer-a", &s.batch_id).unwrap().is_some(), "still there for its owner");
    for bad in ["", "nope", "../x", "' OR 1=1 --", &s.batch_id.to_uppercase(), &format!("{}0", s.batch_id)] {
        assert!(store.batch("issuer-a", bad).unwrap().is_none(), "{bad}");
        assert!(store.results("issuer-a", bad).unwrap().is_none(), "{bad}");
        assert!(!store.delete("issuer-a", bad).unwrap(), "{bad}");
    }
    let items = store.claim(10).unwrap();
    assert!(items.iter().all(|i| i.issuer_id == "issuer-a" && i.batch_id == s.batch_id));
}

/// Batches, records, results, counts and idempotency keys survive a restart; records neither
/// committed nor leased are claimable again.
pub fn durable_across_reopen(f: &dyn Fixture) {
    let (a, b);
    {
        let store = f.open();
        a = submit(&store, "i", Some("key-a"), 200, 1);
        b = submit(&store, "j", None, 50, 2);
        let leased = store.claim(30).unwrap();
        assert_eq!(leased.len(), 30);
        store.commit(outcomes(&leased[..10])).unwrap();
        store.release(&leased[10..].iter().map(|i| i.key).collect::<Vec<_>>());
        store.close().unwrap();
    }
    let mut store = f.open();
    assert_eq!(store.queued_records(), 240);
    f.check(&store);
    let status = store.batch("i", &a.batch_id).unwrap().unwrap();
    assert_eq!((status.state, status.total, status.signed + status.rejected), (BatchState::Signing, 200, 10));
    assert_eq!(parsed_results(&store, "i", &a.batch_id).len(), 10);
    assert_eq!(store.batch("j", &b.batch_id).unwrap().unwrap().state, BatchState::Queued);
    let items = store.claim(115).unwrap();
    assert_eq!(items[0].key.index(), 10, "the released records are pending again, oldest first");
    store.commit(outcomes(&items)).unwrap();
    store = f.reopen(store);
    assert_eq!(store.queued_records(), 125);
    let status = store.batch("i", &a.batch_id).unwrap().unwrap();
    assert_eq!((status.state, status.signed + status.rejected), (BatchState::Signing, 125));
    assert_eq!(sign_all(&store, 64), 125);
    f.check(&store);
    let replay = submit(&store, "i", Some("key-a"), 200, 9);
    assert_eq!((replay.batch_id.as_str(), replay.created, replay.total), (a.batch_id.as_str(), false, 200));
    assert_eq!(replay.status.state, BatchState::Done);
}

/// Status readers and result streams, signing workers, and submits with deletes, all at once:
/// a status never shows a result the stream does not have, and everything ends consistent.
pub fn readers_writers_and_purges_run_concurrently(f: &dyn Fixture) {
    let store = f.open();
    let ids: Vec<String> = (0..6).map(|n| submit(&store, "i", None, 300, n).batch_id).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = ids
        .iter()
        .take(3)
        .cloned()
        .map(|id| {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0;
                while !stop.load(Ordering::Relaxed) || reads == 0 {
                    let before = store.batch("i", &id).unwrap().unwrap();
                    let lines =
                        store.results("i", &id).unwrap().unwrap().inspect(|l| assert!(l.is_ok())).count();
                    assert!(lines as u32 >= before.signed + before.rejected, "a status ahead of its results");
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
            let mut kept = Vec::new();
            for n in 0..10 {
                let s = submit(&store, "j", None, 100, n);
                if n % 2 == 0 {
                    assert!(store.delete("j", &s.batch_id).unwrap());
                } else {
                    kept.push(s.batch_id);
                }
            }
            kept
        })
    };
    let kept = submitter.join().unwrap();
    for w in workers {
        w.join().unwrap();
    }
    sign_all(&store, 500);
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    f.check(&store);
    for (issuer, id) in ids.iter().map(|id| ("i", id)).chain(kept.iter().map(|id| ("j", id))) {
        let s = store.batch(issuer, id).unwrap().expect("a kept batch is there");
        assert_eq!((s.state, s.signed + s.rejected), (BatchState::Done, s.total));
    }
    assert_eq!(store.queued_records(), 0);
}

/// An empty batch is refused and stores nothing; odd but representable input (an empty
/// issuer, reference and idempotency key, a payload that is not UTF-8) is stored and handed out
/// exactly as given; an empty commit and a claim of nothing do nothing.
pub fn edge_input_is_refused_or_stored_as_given(f: &dyn Fixture) {
    let store = f.open();
    assert!(matches!(store.submit("i", None, &[], 1), Err(StoreError::Invalid(_))));
    assert_eq!(store.queued_records(), 0);
    let odd = [0xff, 0x00, b'\'', b'\\', 0xc3];
    let recs =
        [NewRecord { r#ref: "", dcc_json: &odd }, NewRecord { r#ref: "Nguyễn ' \\ \"", dcc_json: DCC }];
    let s = store.submit("", Some(""), &recs, 1).unwrap();
    assert!(store.claim(0).unwrap().is_empty());
    assert_eq!(store.commit(Vec::<Outcome>::new()).unwrap(), CommitStats::default());
    let items = store.claim(10).unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!((items[0].r#ref.as_str(), items[0].dcc_json.as_slice()), ("", &odd[..]));
    assert_eq!((items[1].r#ref.as_str(), items[1].issuer_id.as_str()), ("Nguyễn ' \\ \"", ""));
    store.commit(outcomes(&items)).unwrap();
    let replay = store.submit("", Some(""), &recs, 2).unwrap();
    assert_eq!((replay.batch_id.as_str(), replay.created), (s.batch_id.as_str(), false));
    let lines = parsed_results(&store, "", &s.batch_id);
    assert_eq!(lines.iter().map(|r| r.r#ref()).collect::<Vec<_>>(), ["", "Nguyễn ' \\ \""]);
    f.check(&store);
}

/// The backend names itself, says where its data is (never with a secret in it), is ready and
/// flushes.
pub fn health_and_identity(f: &dyn Fixture) {
    let store = f.open();
    assert!(["sled", "postgres"].contains(&store.kind()), "{}", store.kind());
    let location = store.location();
    assert!(!location.is_empty() && !location.contains('\n'), "{location}");
    assert!(!location.to_lowercase().contains("password"), "a location with a secret: {location}");
    store.check().unwrap();
    store.check_free_space().unwrap();
    submit(&store, "i", None, 2, 1);
    store.flush().unwrap();
    assert_eq!(store.corrupt_records(), 0);
    assert_eq!(store.expired_unsigned_records(), 0);
    assert!(format!("{store:?}").contains(store.kind()));
}
