//! Exactly one result per record: a duplicate commit keeps the first result, a late commit
//! after a release yields one result, concurrent claimers — threads on one handle, or two
//! handles on one store as two cluster nodes — never get the same record, and a purge drops the
//! results of records still in flight.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use super::Fixture;
use super::kit::{outcomes, parsed_results, result_for, submit};
use crate::store::{BatchState, Outcome, RecordError, RecordKey, RecordResult, Store, WorkItem};

/// A rejection unlike anything [`result_for`] gives, to tell a second result from the first.
fn late(item: &WorkItem) -> Outcome {
    let result = RecordResult::Rejected {
        r#ref: item.r#ref.clone(),
        error: RecordError { code: "late".into(), message: "second result".into() },
    };
    Outcome { key: item.key, result, audit: None }
}

/// A second commit of the same records (other content) and a record twice in one commit are
/// duplicates: the first result stays, counted once; a key that never existed is orphaned.
pub fn a_duplicate_commit_keeps_the_first_result(f: &dyn Fixture) {
    let store = f.open();
    let s = submit(&store, "i", None, 4, 1);
    let items = store.claim(4).unwrap();
    assert_eq!(store.commit(outcomes(&items)).unwrap().applied, 4);
    let stats = store.commit(items.iter().map(late).collect()).unwrap();
    assert_eq!((stats.applied, stats.duplicates, stats.signed, stats.rejected), (0, 4, 0, 0));

    let t = submit(&store, "i", None, 1, 1);
    let item = store.claim(1).unwrap().remove(0);
    let twice = [outcomes(std::slice::from_ref(&item)), vec![late(&item)]].concat();
    let stats = store.commit(twice).unwrap();
    assert_eq!((stats.applied, stats.duplicates, stats.batches_done), (1, 1, 1));

    let status = store.batch("i", &s.batch_id).unwrap().unwrap();
    assert_eq!((status.signed, status.rejected, status.state), (3, 1, BatchState::Done));
    let expected: Vec<RecordResult> = items.iter().map(result_for).collect();
    assert_eq!(parsed_results(&store, "i", &s.batch_id), expected);
    assert_eq!(parsed_results(&store, "i", &t.batch_id), vec![result_for(&item)]);
    let bogus = RecordKey::new(u64::MAX, 0);
    let stats = store.commit(vec![Outcome { key: bogus, ..outcomes(&[item])[0].clone() }]).unwrap();
    assert_eq!((stats.applied, stats.orphaned), (0, 1), "a key that never existed is dropped");
    f.check(&store);
    // The same after a restart: the stored result is final.
    let store = f.reopen(store);
    let stats = store.commit(items.iter().map(late).collect()).unwrap();
    assert_eq!((stats.applied, stats.duplicates), (0, 4));
    assert_eq!(parsed_results(&store, "i", &s.batch_id), expected);
}

/// A worker releases a chunk, another claims it again, and both commit (in either order):
/// each record ends with exactly one result, the one whose commit applied.
pub fn a_late_commit_after_release_yields_one_result(f: &dyn Fixture) {
    let store = f.open();
    let s = submit(&store, "i", None, 20, 1);
    let first = store.claim(20).unwrap();
    store.release(&first.iter().map(|i| i.key).collect::<Vec<_>>());
    let second = store.claim(20).unwrap();
    assert_eq!(
        second.iter().map(|i| i.key).collect::<Vec<_>>(),
        first.iter().map(|i| i.key).collect::<Vec<_>>()
    );
    // Records 0..10: the new claimer commits first, then the late one. 10..20: the other way.
    let a = store.commit(outcomes(&second[..10])).unwrap();
    let b = store.commit(first[..10].iter().map(late).collect()).unwrap();
    let c = store.commit(first[10..].iter().map(late).collect()).unwrap();
    let d = store.commit(outcomes(&second[10..])).unwrap();
    assert_eq!((a.applied, b.applied), (10, 0), "after a result, a late commit writes nothing");
    assert_eq!(c.applied + d.applied, 10, "one of the two results of 10..20 counts, once");
    assert_eq!(a.applied + b.applied + c.applied + d.applied, 20);
    let results = parsed_results(&store, "i", &s.batch_id);
    assert_eq!(results.len(), 20);
    for (i, r) in results.iter().enumerate() {
        let item = &second[i];
        let applied_late = i >= 10 && c.applied > 0;
        let expected = if applied_late { late(item).result } else { result_for(item) };
        assert_eq!(*r, expected, "record {i}");
    }
    let status = store.batch("i", &s.batch_id).unwrap().unwrap();
    assert_eq!((status.state, status.signed + status.rejected), (BatchState::Done, 20));
    f.check(&store);
}

/// Released records become claimable again and are offered before anything newer; releasing
/// twice, or releasing what is not leased, changes nothing.
pub fn release_offers_records_again_first(f: &dyn Fixture) {
    let store = f.open();
    submit(&store, "i", None, 50, 1);
    submit(&store, "i", None, 50, 2);
    let chunk = store.claim(30).unwrap();
    assert!(store.claim(0).unwrap().is_empty());
    let failed: Vec<RecordKey> = chunk[5..15].iter().map(|i| i.key).collect();
    store.commit(outcomes(&chunk[..5])).unwrap();
    store.commit(outcomes(&chunk[15..])).unwrap();
    store.release(&failed);
    store.release(&failed);
    store.release(&[chunk[0].key]); // already committed: not leased
    let again = store.claim(15).unwrap();
    assert_eq!(again.iter().take(10).map(|i| i.key).collect::<Vec<_>>(), failed, "offered again first");
    assert_eq!(again.len(), 15);
    assert!(again[10..].iter().all(|i| !failed.contains(&i.key) && i.key.index() >= 30));
    let rest = store.claim(1000).unwrap();
    assert_eq!(rest.len(), 100 - 30 - 5, "each record handed out once");
    store.commit(outcomes(&again)).unwrap();
    store.commit(outcomes(&rest)).unwrap();
    assert_eq!(store.queued_records(), 0);
    assert!(!store.has_work());
    f.check(&store);
}

/// Claims every record from `threads` threads per handle over `handles`, committing as they
/// go; fails if any record is handed out twice. Returns the records each thread committed.
fn claim_concurrently(handles: &[Store], threads: usize) -> Vec<Vec<RecordKey>> {
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let workers: Vec<_> = handles
        .iter()
        .flat_map(|h| std::iter::repeat_n(h, threads))
        .map(|h| {
            let (store, seen) = (h.clone(), seen.clone());
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                loop {
                    let items = store.claim(37).unwrap();
                    if items.is_empty() {
                        return mine;
                    }
                    {
                        let mut seen = seen.lock().unwrap();
                        for i in &items {
                            assert!(seen.insert(i.key), "record {} handed out twice", i.key);
                        }
                    }
                    let stats = store.commit(outcomes(&items)).unwrap();
                    assert_eq!((stats.applied, stats.duplicates), (items.len(), 0));
                    mine.extend(items.into_iter().map(|i| i.key));
                }
            })
        })
        .collect();
    workers.into_iter().map(|t| t.join().unwrap()).collect()
}

/// Four threads claiming from one handle never get the same record, and together get all.
pub fn concurrent_claimers_never_share_a_record(f: &dyn Fixture) {
    let store = f.open();
    let ids: Vec<String> = (0..4).map(|n| submit(&store, "i", None, 500, n).batch_id).collect();
    let claimed = claim_concurrently(std::slice::from_ref(&store), 4);
    assert_eq!(claimed.iter().map(Vec::len).sum::<usize>(), 2000);
    assert!(store.claim(10).unwrap().is_empty());
    assert_eq!(store.queued_records(), 0);
    for id in &ids {
        let status = store.batch("i", id).unwrap().unwrap();
        assert_eq!((status.state, status.signed + status.rejected), (BatchState::Done, 500));
        assert_eq!(parsed_results(&store, "i", id).len(), 500);
    }
    f.check(&store);
}

/// Two handles on one store — two cluster nodes on one database — claiming at once never get
/// the same record; each sees the other's batches and results. Skipped for a backend with one
/// handle per store (sled: one process owns its directory).
pub fn two_handles_never_share_a_record(f: &dyn Fixture) {
    let one = f.open();
    let Some(two) = f.second_handle() else { return };
    let a = submit(&one, "i", None, 700, 1);
    let b = submit(&two, "j", None, 700, 1);
    let claimed = claim_concurrently(&[one.clone(), two.clone()], 2);
    assert_eq!(claimed.iter().map(Vec::len).sum::<usize>(), 1400);
    for h in [&one, &two] {
        assert_eq!(h.batch("i", &a.batch_id).unwrap().unwrap().state, BatchState::Done);
        assert_eq!(parsed_results(h, "j", &b.batch_id).len(), 700);
    }
    // A chunk one node claimed and gave back is the other's to finish, once.
    let c = submit(&one, "i", None, 10, 2);
    let items = one.claim(10).unwrap();
    assert!(two.claim(10).unwrap().is_empty(), "leased by the other node");
    one.release(&items.iter().map(|i| i.key).collect::<Vec<_>>());
    let taken = two.claim(10).unwrap();
    assert_eq!(taken.len(), 10);
    assert_eq!(two.commit(outcomes(&taken)).unwrap().applied, 10);
    assert_eq!(one.commit(items.iter().map(late).collect()).unwrap().applied, 0, "a late commit");
    assert_eq!(parsed_results(&one, "i", &c.batch_id), taken.iter().map(result_for).collect::<Vec<_>>());
    f.check(&one);
}

/// A batch purged while some of its records are leased: the chunk's results arriving after
/// the purge are dropped (orphaned), never resurrect it, and other batches go on.
pub fn delete_drops_the_results_of_leased_records(f: &dyn Fixture) {
    let store = f.open();
    let a = submit(&store, "i", None, 300, 1);
    let b = submit(&store, "i", None, 5, 1);
    let leased = store.claim(100).unwrap();
    assert!(leased.iter().all(|i| i.batch_id == a.batch_id));
    assert!(store.delete("i", &a.batch_id).unwrap());
    assert_eq!(store.queued_records(), 5);
    let stats = store.commit(outcomes(&leased)).unwrap();
    assert_eq!((stats.applied, stats.orphaned), (0, 100));
    assert!(store.batch("i", &a.batch_id).unwrap().is_none());
    let rest = store.claim(1000).unwrap();
    assert!(rest.len() == 5 && rest.iter().all(|i| i.batch_id == b.batch_id));
    store.commit(outcomes(&rest)).unwrap();
    f.check(&store);
}
