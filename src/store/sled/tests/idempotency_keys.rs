//! Idempotency keys in sled's tree: stored hashed, a tombstone after the purge holding
//! nothing the issuer chose. (Their promises are the conformance suite's.)

use super::*;

#[test]
fn tombstones_hold_nothing_the_issuer_chose() {
    let dir = tempfile::tempdir().unwrap();
    let key = "issuer-chosen-Nguyễn-key";
    let s;
    {
        let store = open(dir.path());
        s = submit(&store, "i", Some(key), 3, 1);
        let (_, v) = store.inner.idempotency.first().unwrap().unwrap();
        assert!(matches!(idempotency::Entry::decode(&v).unwrap(), idempotency::Entry::Live { .. }));
        assert!(store.delete("i", &s.batch_id).unwrap());
    }
    let store = open(dir.path());
    assert_eq!(tree_len(&store.inner.idempotency), 1);
    let (k, v) = store.inner.idempotency.first().unwrap().unwrap();
    assert!(matches!(idempotency::Entry::decode(&v).unwrap(), idempotency::Entry::Tombstone { .. }));
    for b in [&k[..], &v[..]] {
        assert!(!b.windows(key.len()).any(|w| w == key.as_bytes()), "the key is stored hashed");
    }
    check_invariants(&store);
}
