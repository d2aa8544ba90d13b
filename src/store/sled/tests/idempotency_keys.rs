//! Idempotency keys: per issuer, bound to their request, tombstoned after a purge.

use super::*;

#[test]
fn idempotency_per_issuer() {
    let dir = tempfile::tempdir().unwrap();
    let first;
    {
        let store = open(dir.path());
        first = submit(&store, "issuer-a", Some("same"), 10, 1);
        let replay = submit(&store, "issuer-a", Some("same"), 10, 2);
        assert_eq!((replay.batch_id.as_str(), replay.created), (first.batch_id.as_str(), false));
        assert_eq!(store.queued_records(), 10, "a replay queues nothing");
        let other = submit(&store, "issuer-b", Some("same"), 10, 3);
        assert!(other.created && other.batch_id != first.batch_id);
        let unkeyed = submit(&store, "issuer-a", None, 10, 4);
        assert!(unkeyed.created && unkeyed.batch_id != first.batch_id);
        // Keys are compared per issuer without ambiguity ("a"+"bc" is not "ab"+"c").
        let x = submit(&store, "a", Some("bc"), 1, 5);
        let y = submit(&store, "ab", Some("c"), 1, 5);
        assert_ne!(x.batch_id, y.batch_id);
    }
    let store = open(dir.path());
    let replay = submit(&store, "issuer-a", Some("same"), 10, 9);
    assert_eq!((replay.batch_id.as_str(), replay.created), (first.batch_id.as_str(), false));
    assert_eq!(store.queued_records(), 32);
    check_invariants(&store);
}

#[test]
fn another_request_under_a_used_key_is_refused_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let first = submit(&store, "i", Some("k"), 20, 1);
    let before = (tree_len(&store.inner.pending), tree_len(&store.inner.data_keys), store.queued_records());
    let refs = refs("i", 20);
    let mut changed = records(&refs);
    changed[5].dcc_json = br#"{"ver":"1.3.0","nam":{"fnt":"NGUYEN"},"dob":"1990-01-02"}"#;
    assert!(matches!(store.submit("i", Some("k"), &changed, 2), Err(StoreError::IdempotencyConflict)));
    assert!(matches!(
        store.submit("i", Some("k"), &records(&refs[..19]), 2),
        Err(StoreError::IdempotencyConflict)
    ));
    let after = (tree_len(&store.inner.pending), tree_len(&store.inner.data_keys), store.queued_records());
    assert_eq!(before, after, "nothing stored");
    // The same records in another JSON form are the same request.
    let reordered: Vec<u8> = br#"{ "dob" : "1990-01-01", "nam":{"fnt":"NGUYEN"}, "ver":"1.3.0" }"#.to_vec();
    let same: Vec<NewRecord<'_>> =
        refs.iter().map(|r| NewRecord { r#ref: r, dcc_json: &reordered }).collect();
    let replay = store.submit("i", Some("k"), &same, 3).unwrap();
    assert_eq!((replay.batch_id, replay.created), (first.batch_id, false));
    check_invariants(&store);
}

#[test]
fn a_replay_answers_the_batch_as_it_stands() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let first = submit(&store, "i", Some("k"), 40, 1);
    assert_eq!((first.status.state, first.status.signed), (BatchState::Queued, 0));
    let items = store.claim(16).unwrap();
    store.commit(items.iter().map(|i| (i.key, result_for(i))).collect()).unwrap();
    let mid = submit(&store, "i", Some("k"), 40, 2);
    assert_eq!(mid.status.state, BatchState::Signing);
    assert_eq!(mid.status.signed + mid.status.rejected, 16);
    sign_all(&store, 64);
    let done = submit(&store, "i", Some("k"), 40, 3);
    assert_eq!(
        (done.batch_id.as_str(), done.created, done.status.state),
        (first.batch_id.as_str(), false, BatchState::Done)
    );
    assert_eq!(done.status.signed + done.status.rejected, 40);
}

#[test]
fn tombstones_survive_reopen_and_hold_nothing_the_issuer_chose() {
    let dir = tempfile::tempdir().unwrap();
    let key = "issuer-chosen-Nguyễn-key";
    let s;
    {
        let store = open(dir.path());
        s = submit(&store, "i", Some(key), 3, 1);
        assert!(store.delete("i", &s.batch_id).unwrap());
    }
    let store = open(dir.path());
    let refs = refs("i", 3);
    let e = store.submit("i", Some(key), &records(&refs), 2).unwrap_err();
    assert!(matches!(&e, StoreError::BatchDeleted { batch_id } if *batch_id == s.batch_id), "{e}");
    let (k, v) = store.inner.idempotency.first().unwrap().unwrap();
    assert!(matches!(idempotency::Entry::decode(&v).unwrap(), idempotency::Entry::Tombstone { .. }));
    for b in [&k[..], &v[..]] {
        assert!(!b.windows(key.len()).any(|w| w == key.as_bytes()), "the key is stored hashed");
    }
    assert_eq!(store.queued_records(), 0);
}
