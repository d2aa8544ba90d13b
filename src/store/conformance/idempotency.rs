//! Idempotency keys: per issuer, bound to the request they were first used with (another
//! request is refused and stores nothing), answering the batch as it stands, refused with
//! `BatchDeleted` once their batch is purged, and one batch however many submit at once.

use std::sync::{Arc, Barrier};

use super::Fixture;
use super::kit::{outcomes, records, refs, sign_all, submit};
use crate::store::{BatchState, NewRecord, StoreError};

/// The same key and request return the same batch (queuing nothing); the same key from
/// another issuer, or no key, makes a new one; keys are told apart per issuer without
/// ambiguity; all of it survives a restart.
pub fn same_request_same_batch_per_issuer(f: &dyn Fixture) {
    let first;
    {
        let store = f.open();
        first = submit(&store, "issuer-a", Some("same"), 10, 1);
        assert!(first.created);
        let replay = submit(&store, "issuer-a", Some("same"), 10, 2);
        assert_eq!((replay.batch_id.as_str(), replay.created), (first.batch_id.as_str(), false));
        assert_eq!(replay.status.created_at, 1, "the batch as first accepted");
        assert_eq!(store.queued_records(), 10, "a replay queues nothing");
        let other = submit(&store, "issuer-b", Some("same"), 10, 3);
        assert!(other.created && other.batch_id != first.batch_id);
        let unkeyed = submit(&store, "issuer-a", None, 10, 4);
        assert!(unkeyed.created && unkeyed.batch_id != first.batch_id);
        let x = submit(&store, "a", Some("bc"), 1, 5);
        let y = submit(&store, "ab", Some("c"), 1, 5);
        assert!(x.created && y.created && x.batch_id != y.batch_id, "\"a\"+\"bc\" is not \"ab\"+\"c\"");
        store.close().unwrap();
    }
    let store = f.open();
    let replay = submit(&store, "issuer-a", Some("same"), 10, 9);
    assert_eq!((replay.batch_id.as_str(), replay.created), (first.batch_id.as_str(), false));
    assert_eq!(store.queued_records(), 32);
    f.check(&store);
}

/// Another request under a used key — a record's content changed, a record missing — is
/// [`StoreError::IdempotencyConflict`] and stores nothing; the same records in another JSON
/// form are the same request.
pub fn another_request_is_refused_and_stores_nothing(f: &dyn Fixture) {
    let store = f.open();
    let first = submit(&store, "i", Some("k"), 20, 1);
    let refs = refs("i", 20);
    let mut changed = records(&refs);
    changed[5].dcc_json = br#"{"ver":"1.3.0","nam":{"fnt":"NGUYEN"},"dob":"1990-01-02"}"#;
    let e = store.submit("i", Some("k"), &changed, 2).unwrap_err();
    assert!(matches!(e, StoreError::IdempotencyConflict), "{e}");
    assert!(!e.is_unavailable());
    let e = store.submit("i", Some("k"), &records(&refs[..19]), 2).unwrap_err();
    assert!(matches!(e, StoreError::IdempotencyConflict), "{e}");
    let renamed = super::kit::refs("j", 20);
    let e = store.submit("i", Some("k"), &records(&renamed), 2).unwrap_err();
    assert!(matches!(e, StoreError::IdempotencyConflict), "{e}");
    assert_eq!(store.queued_records(), 20, "nothing stored");
    let reordered = br#"{ "dob" : "1990-01-01", "nam":{"fnt":"NGUYEN"}, "ver":"1.3.0" }"#;
    let same: Vec<NewRecord<'_>> = refs.iter().map(|r| NewRecord { r#ref: r, dcc_json: reordered }).collect();
    let replay = store.submit("i", Some("k"), &same, 3).unwrap();
    assert_eq!((replay.batch_id.as_str(), replay.created), (first.batch_id.as_str(), false));
    let items = store.claim(1000).unwrap();
    assert_eq!(items.len(), 20, "only the first request's records were ever queued");
    assert!(items.iter().all(|i| i.batch_id == first.batch_id && i.dcc_json == super::kit::DCC));
    store.commit(outcomes(&items)).unwrap();
    f.check(&store);
}

/// A replay answers the batch's real state and counts: queued, signing, done.
pub fn a_replay_answers_the_batch_as_it_stands(f: &dyn Fixture) {
    let store = f.open();
    let first = submit(&store, "i", Some("k"), 40, 1);
    assert_eq!((first.status.state, first.status.signed), (BatchState::Queued, 0));
    let items = store.claim(16).unwrap();
    store.commit(outcomes(&items)).unwrap();
    let mid = submit(&store, "i", Some("k"), 40, 2);
    assert_eq!((mid.status.state, mid.status.signed + mid.status.rejected), (BatchState::Signing, 16));
    assert_eq!(mid.total, 40);
    sign_all(&store, 64);
    let done = submit(&store, "i", Some("k"), 40, 3);
    assert_eq!(
        (done.batch_id.as_str(), done.created, done.status.state),
        (first.batch_id.as_str(), false, BatchState::Done)
    );
    assert_eq!(done.status.signed + done.status.rejected, 40);
    assert_eq!(done.status, store.batch("i", &first.batch_id).unwrap().unwrap());
}

/// After a delete, a retry under the key is [`StoreError::BatchDeleted`] naming the batch — the
/// same request or another, before and after a restart — and queues nothing; the key of
/// another issuer is unaffected.
pub fn a_retry_after_delete_is_refused_across_reopen(f: &dyn Fixture) {
    let key = "issuer-chosen-Nguyễn-key";
    let s;
    {
        let store = f.open();
        s = submit(&store, "i", Some(key), 3, 1);
        submit(&store, "other", Some(key), 3, 1);
        assert!(store.delete("i", &s.batch_id).unwrap());
        let refs = refs("i", 3);
        let e = store.submit("i", Some(key), &records(&refs), 2).unwrap_err();
        assert!(matches!(&e, StoreError::BatchDeleted { batch_id } if *batch_id == s.batch_id), "{e}");
        store.close().unwrap();
    }
    let store = f.open();
    for n in [3, 4] {
        let refs = refs("i", n);
        let e = store.submit("i", Some(key), &records(&refs), 2).unwrap_err();
        assert!(matches!(&e, StoreError::BatchDeleted { batch_id } if *batch_id == s.batch_id), "{e}");
        assert!(!e.is_unavailable());
        assert!(!e.to_string().contains(key), "the message does not repeat the issuer's key: {e}");
    }
    assert_eq!(store.queued_records(), 3, "only the other issuer's batch");
    let again = submit(&store, "other", Some(key), 3, 5);
    assert!(!again.created);
    f.check(&store);
}

/// Several submitters sending the same request under one key at once get one batch between
/// them (on two handles too, when the backend has them); a different request among them is
/// refused.
pub fn concurrent_submits_under_one_key_make_one_batch(f: &dyn Fixture) {
    let store = f.open();
    let mut handles = vec![store.clone(); 4];
    handles.extend(f.second_handle().into_iter().flat_map(|h| vec![h; 4]));
    let barrier = Arc::new(Barrier::new(handles.len()));
    let threads: Vec<_> = handles
        .into_iter()
        .enumerate()
        .map(|(n, h)| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let size = if n == 1 { 11 } else { 10 }; // one thread sends another request
                let refs = refs("i", size);
                barrier.wait();
                (n, h.submit("i", Some("race"), &records(&refs), 1))
            })
        })
        .collect();
    let outcomes: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let winners: Vec<_> = outcomes.iter().filter(|(_, r)| matches!(r, Ok(s) if s.created)).collect();
    assert_eq!(winners.len(), 1, "exactly one submit makes the batch: {outcomes:?}");
    let (winner, Ok(made)) = winners[0] else { unreachable!() };
    // The odd request (thread 1) may win the key; then every other request is the conflicting one.
    for (n, r) in &outcomes {
        let same_request = (*n == 1) == (*winner == 1);
        match r {
            Ok(s) => {
                assert!(same_request, "submit {n}: another request under the key was accepted");
                assert_eq!(s.batch_id, made.batch_id, "submit {n}: another batch under the same key");
            }
            Err(StoreError::IdempotencyConflict) => {
                assert!(!same_request, "submit {n}: the same request refused")
            }
            Err(e) => panic!("submit {n}: {e}"),
        }
    }
    assert_eq!(store.queued_records(), u64::from(made.total), "one batch queued");
    f.check(&store);
}
