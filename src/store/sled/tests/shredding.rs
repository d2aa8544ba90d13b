//! Crypto-shredding in the store: blocks sealed where they belong, data keys unwrapped once,
//! destroyed first on purge; nothing in clear in sled's files.

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

#[test]
fn a_handle_without_a_kek_reads_and_writes_no_records() {
    let dir = tempfile::tempdir().unwrap();
    let s = submit(&open(dir.path()), "i", None, 3, 1);
    let store = SledStore::open(dir.path(), StoreOptions { key_wrap: None, ..options() }).unwrap();
    let refs = refs("i", 1);
    assert!(matches!(store.submit("i", None, &records(&refs), 1), Err(StoreError::NoKeyWrap)));
    assert!(matches!(store.claim(3), Err(StoreError::NoKeyWrap)));
    assert!(matches!(store.results("i", &s.batch_id), Err(StoreError::NoKeyWrap)));
    // A KEK that cannot unwrap (another one): claim fails without handing anything out or
    // setting records aside; the right KEK then signs them all.
    drop(store);
    let wrong = SledStore::open(dir.path(), counting(&seal::testing::MemoryKek::new())).unwrap();
    let e = wrong.claim(3).unwrap_err();
    assert!(matches!(e, StoreError::Seal(seal::SealError::Unwrap(_))) && e.is_unavailable(), "{e}");
    assert_eq!(wrong.corrupt_records(), 0);
    drop(wrong);
    assert_eq!(sign_all(&open(dir.path()), 10), 3);
}

/// A KEK that can be taken away, like an HSM token.
struct FlakyKek {
    inner: Arc<seal::testing::MemoryKek>,
    down: std::sync::atomic::AtomicBool,
}

impl seal::KeyWrap for FlakyKek {
    fn wrap(&self, key: &[u8; seal::DATA_KEY_LEN]) -> Result<Vec<u8>, seal::SealError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(seal::SealError::Wrap("HSM unavailable".into()));
        }
        self.inner.wrap(key)
    }

    fn unwrap(
        &self,
        wrapped: &[u8],
    ) -> Result<zeroize::Zeroizing<[u8; seal::DATA_KEY_LEN]>, seal::SealError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(seal::SealError::Unwrap("HSM unavailable".into()));
        }
        self.inner.unwrap(wrapped)
    }

    fn describe(&self) -> String {
        "a test KEK that can be taken away".into()
    }
}

#[test]
fn batches_are_accepted_while_the_kek_is_away_until_the_stock_is_used_up() {
    let dir = tempfile::tempdir().unwrap();
    let kek = Arc::new(FlakyKek { inner: seal::testing::MemoryKek::new(), down: false.into() });
    let store =
        SledStore::open(dir.path(), StoreOptions { key_wrap: Some(kek.clone()), ..options() }).unwrap();
    assert_eq!(store.stocked_data_keys(), 0, "no stock before it is started");
    store.start_key_stock().unwrap();
    let start = Instant::now();
    while store.stocked_data_keys() < KEY_STOCK {
        assert!(start.elapsed() < Duration::from_secs(30), "the stock does not fill");
        std::thread::sleep(Duration::from_millis(10));
    }
    kek.down.store(true, std::sync::atomic::Ordering::SeqCst);
    for i in 0..KEY_STOCK {
        submit(&store, &format!("i{i}"), None, 1, 1);
    }
    let refs = refs("i", 1);
    let e = store.submit("i", None, &records(&refs), 1).unwrap_err();
    assert!(matches!(e, StoreError::Seal(seal::SealError::Wrap(_))) && e.is_unavailable(), "{e}");
    assert_eq!(store.queued_records(), KEY_STOCK as u64, "the refused batch stored nothing");
    // Back: the stock refills by itself, every accepted batch signs.
    kek.down.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(sign_all(&store, 64), KEY_STOCK);
    let start = Instant::now();
    while store.stocked_data_keys() == 0 {
        assert!(start.elapsed() < Duration::from_secs(60), "the stock does not refill");
        std::thread::sleep(Duration::from_millis(20));
    }
    submit(&store, "after", None, 1, 1);
    check_invariants(&store);
}

/// A KEK whose wraps take a while and are counted while in flight, like a slow HSM.
struct SlowKek {
    inner: Arc<seal::testing::MemoryKek>,
    in_flight: std::sync::atomic::AtomicUsize,
    wraps: std::sync::atomic::AtomicUsize,
}

impl seal::KeyWrap for SlowKek {
    fn wrap(&self, key: &[u8; seal::DATA_KEY_LEN]) -> Result<Vec<u8>, seal::SealError> {
        use std::sync::atomic::Ordering::SeqCst;
        self.in_flight.fetch_add(1, SeqCst);
        self.wraps.fetch_add(1, SeqCst);
        std::thread::sleep(Duration::from_millis(30));
        let wrapped = self.inner.wrap(key);
        self.in_flight.fetch_sub(1, SeqCst);
        wrapped
    }

    fn unwrap(
        &self,
        wrapped: &[u8],
    ) -> Result<zeroize::Zeroizing<[u8; seal::DATA_KEY_LEN]>, seal::SealError> {
        self.inner.unwrap(wrapped)
    }

    fn describe(&self) -> String {
        "a slow test KEK".into()
    }
}

#[test]
fn stopping_the_stock_waits_for_the_wrap_in_flight_and_starts_no_other() {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let kek =
        Arc::new(SlowKek { inner: seal::testing::MemoryKek::new(), in_flight: 0.into(), wraps: 0.into() });
    let store =
        SledStore::open(dir.path(), StoreOptions { key_wrap: Some(kek.clone()), ..options() }).unwrap();
    store.start_key_stock().unwrap();
    let start = Instant::now();
    while kek.in_flight.load(SeqCst) == 0 {
        assert!(start.elapsed() < Duration::from_secs(30), "the stock does not start wrapping");
        std::thread::yield_now();
    }
    // The daemon stops the stock before it closes the HSM: nothing may be inside it after.
    store.stop_key_stock();
    assert_eq!(kek.in_flight.load(SeqCst), 0, "a wrap was still in flight after the stop");
    let wraps = kek.wraps.load(SeqCst);
    assert_eq!(store.stocked_data_keys(), 0, "the unused keys are dropped");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(kek.wraps.load(SeqCst), wraps, "the stock went on wrapping after its stop");
    store.stop_key_stock();
    // Batches still arrive (each wraps its own key) and sign.
    submit(&store, "after", None, 3, 1);
    assert_eq!(sign_all(&store, 8), 3);
}
