//! Crypto-shredding in sled's trees and files: blocks sealed where they belong, data keys
//! unwrapped once, destroyed first on purge; nothing in clear in sled's files. (The KEK pin,
//! a handle without the KEK and the data-key stock are the conformance suite's.)

use super::*;

/// Options with a KEK that counts its unwraps.
fn counting(kek: &Arc<seal::testing::MemoryKek>) -> StoreOptions {
    StoreOptions { key_wrap: Some(kek.clone()), ..options() }
}

/// True if `needle` occurs in any file under `dir`.
fn on_disk(dir: &Path, needle: &[u8]) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p).unwrap().windows(needle.len()).any(|w| w == needle) {
                return true;
            }
        }
    }
    false
}

#[test]
fn a_block_moved_to_another_batch_or_position_does_not_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let a = submit(&store, "i", None, 40, 1);
    let b = submit(&store, "i", None, 40, 1);
    let (sa, _) = store.lookup("i", &a.batch_id).unwrap().unwrap();
    let (sb, _) = store.lookup("i", &b.batch_id).unwrap().unwrap();
    let a0 = store.inner.pending.get(layout::RecordKey::new(sa, 0).to_bytes()).unwrap().unwrap();
    // A's first block copied over B's first block, and over A's own second block.
    store.inner.pending.insert(layout::RecordKey::new(sb, 0).to_bytes(), a0.clone()).unwrap();
    store.inner.pending.insert(layout::RecordKey::new(sa, layout::BLOCK).to_bytes(), a0).unwrap();
    let mut claimed = Vec::new();
    loop {
        let items = store.claim(64).unwrap();
        if items.is_empty() {
            break;
        }
        store.commit(items.iter().map(|i| (i.key, result_for(i))).collect()).unwrap();
        claimed.extend(items);
    }
    let block = layout::BLOCK as usize;
    assert_eq!(claimed.len(), 80 - 2 * block, "both moved blocks are set aside, the rest signed");
    assert_eq!(store.corrupt_records(), 2 * u64::from(layout::BLOCK));
    for item in &claimed {
        // Every record handed out is its own: A's payload never comes out as B's or elsewhere.
        assert_eq!(item.r#ref, format!("i-{}", item.key.index()));
        let (seq, bid) = (item.key.batch_seq(), &item.batch_id);
        assert!((seq == sa && *bid == a.batch_id) || (seq == sb && *bid == b.batch_id));
        assert!(!(seq == sb && item.key.index() < layout::BLOCK), "B's first block came out");
        assert!(!(seq == sa && (layout::BLOCK..2 * layout::BLOCK).contains(&item.key.index())));
    }
    // A results block moved into the queue does not open there either.
    let (k, v) = store.inner.results.first().unwrap().unwrap();
    store.inner.results.remove(&k).unwrap();
    store.inner.pending.insert(&k, v).unwrap();
    drop(store);
    let store = open(dir.path());
    assert!(store.claim(64).unwrap().is_empty(), "nothing opens");
    assert_eq!(
        store.corrupt_records(),
        3 * u64::from(layout::BLOCK),
        "the two moved blocks and the results block"
    );
}

#[test]
fn each_batch_key_is_unwrapped_once_and_forgotten_when_done() {
    let dir = tempfile::tempdir().unwrap();
    let kek = seal::testing::MemoryKek::with_key([0x4b; 32]);
    let s = {
        let store = SledStore::open(dir.path(), counting(&kek)).unwrap();
        submit(&store, "i", None, 200, 1)
    };
    assert_eq!(kek.unwrap_count(), 0, "a new batch's key is cached, never unwrapped");
    // Reopened: the cache is empty; signing in many chunks unwraps once.
    let store = SledStore::open(dir.path(), counting(&kek)).unwrap();
    assert_eq!(sign_all(&store, 7), 200);
    assert_eq!(kek.unwrap_count(), 1, "one unwrap for the whole batch");
    assert_eq!(store.cached_data_keys(), 0, "evicted once the batch is done");
    assert_eq!(parsed_results(&store, "i", &s.batch_id).len(), 200);
    assert_eq!(kek.unwrap_count(), 2, "a download unwraps once");
    assert!(store.delete("i", &s.batch_id).unwrap());
    assert_eq!(store.cached_data_keys(), 0, "evicted when deleted");
}

#[test]
fn sled_files_hold_no_payload_or_result_in_clear_and_purge_destroys_the_key_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let name = "Đặng-Thị-Zéphyrine-7319";
    let dcc = format!(r#"{{"ver":"1.3.0","nam":{{"fn":"{name}"}},"dob":"1931-07-19"}}"#);
    let recs: Vec<NewRecord<'_>> = ["ref-Ωmega-1", "ref-Ωmega-2"]
        .iter()
        .map(|r| NewRecord { r#ref: r, dcc_json: dcc.as_bytes() })
        .collect();
    let s = store.submit("i", None, &recs, 1).unwrap();
    store.flush().unwrap();
    let items = store.claim(1).unwrap();
    let signed = RecordResult::Signed {
        r#ref: items[0].r#ref.clone(),
        hc1: "HC1:NCFOXN%TS3DH3ZSUZK+.V0ETD%65NL-AH-R6IOOP-I".into(),
        uvci: "URN:UVCI:01:VN:SHREDUNITQ7".into(),
        kid: "AAAAAAAAAAA=".into(),
        iat: 1,
        exp: 2,
    };
    store.commit(vec![(items[0].key, signed)]).unwrap();
    store.flush().unwrap();
    for needle in
        [name, "1931-07-19", "ref-Ωmega-1", "ref-Ωmega-2", "URN:UVCI:01:VN:SHREDUNITQ7", "NCFOXN%TS3DH3ZSUZK"]
    {
        assert!(!on_disk(dir.path(), needle.as_bytes()), "{needle} is readable in sled's files");
    }
    // Purge: the data key goes in the same transaction that hides the batch, before the sweep.
    let (seq, _) = store.lookup("i", &s.batch_id).unwrap().unwrap();
    let id = layout::parse_batch_id(&s.batch_id).unwrap();
    assert!(store.mark_deleting(super::batches::Target::Id(id), 5, |_| true).unwrap().is_some());
    assert!(store.inner.data_keys.get(layout::seq_key(seq)).unwrap().is_none(), "key destroyed at the mark");
    assert!(tree_len(&store.inner.pending) > 0, "blocks not swept yet");
    store.evict_data_key(seq);
    assert_eq!(store.data_key(seq).unwrap().map(|_| ()), None, "nothing can open them any more");
}
