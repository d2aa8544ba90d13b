//! What the lifecycle leaves in sled's trees: a delete empties every tree but the key's
//! tombstone, a lease lives only in its process, an interrupted purge is finished at open, a
//! store of another schema is refused. (The lifecycle's promises themselves are the
//! conformance suite's.)

use super::*;

#[test]
fn a_delete_empties_every_tree_but_the_tombstone() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let s = submit(&store, "issuer-a", Some("k1"), 1000, 100);
    let items = store.claim(10).unwrap();
    store.commit(kit::outcomes(&items)).unwrap();
    check_invariants(&store);
    assert_eq!(sign_all(&store, 256), 990);
    assert_eq!(tree_len(&store.inner.pending), 0, "payloads are purged once signed");
    assert!(store.delete("issuer-a", &s.batch_id).unwrap());
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
    assert_eq!(tree_len(&inner.idempotency), 1, "the key stays spent: a tombstone");
    check_invariants(&store);
}

#[test]
fn leases_live_only_in_their_process() {
    let dir = tempfile::tempdir().unwrap();
    let a;
    {
        let store = open(dir.path());
        a = submit(&store, "i", None, 200, 1);
        assert_eq!(store.claim(30).unwrap().len(), 30);
        // Dropped without commit or release, as a crash would.
    }
    let store = open(dir.path());
    assert_eq!(store.queued_records(), 200);
    let items = store.claim(1000).unwrap();
    assert_eq!(items.len(), 200, "the old leases are gone");
    assert_eq!((items[0].key.index(), items[0].batch_id.as_str()), (0, a.batch_id.as_str()));
    check_invariants(&store);
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
