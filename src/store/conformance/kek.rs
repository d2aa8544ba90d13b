//! Crypto-shredding through the interface: the KEK label pinned once, a handle without the
//! right KEK reads and writes no records, and the stock of data keys made ahead — batches
//! accepted while the KEK is away until it is used up, and a stop that joins its HSM call.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use super::Fixture;
use super::kit::{kek, records, refs, sign_all, submit, wait_until};
use crate::store::seal::{self, DATA_KEY_LEN, KeyWrap, SealError};
use crate::store::{KEY_STOCK, StoreError};

/// The label is unset at first, pinned once, accepted again as is, refused when another, and
/// kept across a restart.
pub fn the_kek_label_is_pinned_once(f: &dyn Fixture) {
    let mut store = f.open();
    assert_eq!(store.pinned_kek().unwrap(), None);
    store.pin_kek("kek-2026").unwrap();
    store.pin_kek("kek-2026").unwrap();
    assert_eq!(store.pinned_kek().unwrap().as_deref(), Some("kek-2026"));
    let e = store.pin_kek("kek-other").unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)) && !e.is_unavailable(), "{e}");
    store = f.reopen(store);
    assert_eq!(store.pinned_kek().unwrap().as_deref(), Some("kek-2026"));
    assert!(matches!(store.pin_kek("kek-other"), Err(StoreError::Conflict(_))));
    assert_eq!(store.pinned_kek().unwrap().as_deref(), Some("kek-2026"), "the refused label changed nothing");
}

/// Without a KEK, submit, claim and results are `NoKeyWrap` (status still answers); with
/// another KEK, claim fails as unavailable without handing out or setting aside anything; the
/// right KEK then signs every record.
pub fn a_handle_without_the_right_kek_reads_and_writes_no_records(f: &dyn Fixture) {
    let store = f.open();
    let s = submit(&store, "i", None, 3, 1);
    store.close().unwrap();
    let store = f.open_with(None);
    let refs = refs("i", 1);
    assert!(matches!(store.submit("i", None, &records(&refs), 1), Err(StoreError::NoKeyWrap)));
    assert!(matches!(store.claim(3), Err(StoreError::NoKeyWrap)));
    assert!(matches!(store.results("i", &s.batch_id), Err(StoreError::NoKeyWrap)));
    assert_eq!(store.batch("i", &s.batch_id).unwrap().unwrap().total, 3, "status needs no KEK");
    store.audit_append(vec![]).unwrap();
    store.close().unwrap();

    let wrong = f.open_with(Some(seal::testing::MemoryKek::new()));
    let e = wrong.claim(3).unwrap_err();
    assert!(matches!(e, StoreError::Seal(SealError::Unwrap(_))) && e.is_unavailable(), "{e}");
    assert_eq!(wrong.corrupt_records(), 0, "nothing set aside for a KEK that cannot unwrap");
    wrong.close().unwrap();
    let store = f.open();
    assert_eq!(sign_all(&store, 10), 3);
    assert_eq!(store.batch("i", &s.batch_id).unwrap().unwrap().signed, 2);
}

/// A KEK that can be taken away, like an HSM token.
struct FlakyKek {
    inner: Arc<dyn KeyWrap>,
    down: AtomicBool,
}

impl KeyWrap for FlakyKek {
    fn wrap(&self, key: &[u8; DATA_KEY_LEN]) -> Result<Vec<u8>, SealError> {
        if self.down.load(SeqCst) {
            return Err(SealError::Wrap("HSM unavailable".into()));
        }
        self.inner.wrap(key)
    }

    fn unwrap(&self, wrapped: &[u8]) -> Result<zeroize::Zeroizing<[u8; DATA_KEY_LEN]>, SealError> {
        if self.down.load(SeqCst) {
            return Err(SealError::Unwrap("HSM unavailable".into()));
        }
        self.inner.unwrap(wrapped)
    }

    fn describe(&self) -> String {
        "a test KEK that can be taken away".into()
    }
}

/// With the stock full, batches are accepted while the KEK is away, one data key each, until
/// it is used up; the next is refused as unavailable and stores nothing. Back, the stock
/// refills by itself and every accepted batch signs.
pub fn batches_are_accepted_while_the_kek_is_away_until_the_stock_is_used_up(f: &dyn Fixture) {
    let kek = Arc::new(FlakyKek { inner: kek(), down: false.into() });
    let store = f.open_with(Some(kek.clone()));
    assert_eq!(store.stocked_data_keys(), 0, "no stock before it is started");
    store.start_key_stock().unwrap();
    store.start_key_stock().unwrap(); // idempotent
    wait_until(Duration::from_secs(30), "the stock fills", || store.stocked_data_keys() >= KEY_STOCK);
    assert_eq!(store.stocked_data_keys(), KEY_STOCK, "the stock stops at its size");
    kek.down.store(true, SeqCst);
    for i in 0..KEY_STOCK {
        submit(&store, &format!("i{i}"), None, 1, 1);
    }
    let refs = refs("late", 1);
    let e = store.submit("late", None, &records(&refs), 1).unwrap_err();
    assert!(matches!(e, StoreError::Seal(SealError::Wrap(_))) && e.is_unavailable(), "{e}");
    assert_eq!(store.queued_records(), KEY_STOCK as u64, "the refused batch stored nothing");
    kek.down.store(false, SeqCst);
    assert_eq!(sign_all(&store, 64), KEY_STOCK);
    wait_until(Duration::from_secs(60), "the stock refills", || store.stocked_data_keys() > 0);
    submit(&store, "after", None, 1, 1);
    store.stop_key_stock();
    f.check(&store);
}

/// A KEK whose wraps take a while and are counted while in flight, like a slow HSM.
struct SlowKek {
    inner: Arc<dyn KeyWrap>,
    in_flight: AtomicUsize,
    wraps: AtomicUsize,
}

impl KeyWrap for SlowKek {
    fn wrap(&self, key: &[u8; DATA_KEY_LEN]) -> Result<Vec<u8>, SealError> {
        self.in_flight.fetch_add(1, SeqCst);
        self.wraps.fetch_add(1, SeqCst);
        std::thread::sleep(Duration::from_millis(30));
        let wrapped = self.inner.wrap(key);
        self.in_flight.fetch_sub(1, SeqCst);
        wrapped
    }

    fn unwrap(&self, wrapped: &[u8]) -> Result<zeroize::Zeroizing<[u8; DATA_KEY_LEN]>, SealError> {
        self.inner.unwrap(wrapped)
    }

    fn describe(&self) -> String {
        "a slow test KEK".into()
    }
}

/// The daemon stops the stock before it closes the HSM: `stop_key_stock` returns only once no
/// wrap is in flight, drops the unused keys, starts no other wrap, and may be called twice;
/// batches then wrap their own key.
pub fn stopping_the_stock_waits_for_the_wrap_in_flight_and_starts_no_other(f: &dyn Fixture) {
    let kek = Arc::new(SlowKek { inner: kek(), in_flight: 0.into(), wraps: 0.into() });
    let store = f.open_with(Some(kek.clone()));
    store.start_key_stock().unwrap();
    wait_until(Duration::from_secs(30), "the stock starts wrapping", || kek.in_flight.load(SeqCst) > 0);
    store.stop_key_stock();
    assert_eq!(kek.in_flight.load(SeqCst), 0, "a wrap was still in flight after the stop");
    let wraps = kek.wraps.load(SeqCst);
    assert_eq!(store.stocked_data_keys(), 0, "the unused keys are dropped");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(kek.wraps.load(SeqCst), wraps, "the stock went on wrapping after its stop");
    store.stop_key_stock();
    submit(&store, "after", None, 3, 1);
    assert_eq!(kek.wraps.load(SeqCst), wraps + 1, "a batch wraps its own key once stopped");
    assert_eq!(sign_all(&store, 8), 3);
}
