//! The backend conformance suite ([`crate::store::conformance`]) on sled: each test on a store
//! in a fresh temporary directory, checked against the layout's invariants where it settles.

use std::sync::{Mutex, Weak};

use super::*;
use crate::store::conformance::Fixture;
use crate::store::{Store, seal::KeyWrap};

/// A sled store in a temporary directory of its own.
pub(crate) struct SledFixture {
    dir: tempfile::TempDir,
    /// The handle opened last, for the invariant checker (weak: a closed store must not stay
    /// open through it, sled allows one handle per directory).
    current: Mutex<Weak<Inner>>,
}

impl SledFixture {
    /// A store in a new temporary directory.
    pub(crate) fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("tempdir"), current: Mutex::new(Weak::new()) }
    }
}

impl Fixture for SledFixture {
    fn open_with(&self, key_wrap: Option<Arc<dyn KeyWrap>>) -> Store {
        let store =
            SledStore::open(self.dir.path(), StoreOptions { key_wrap, ..options() }).expect("open store");
        *self.current.lock().unwrap() = Arc::downgrade(&store.inner);
        Store::from_backend(store)
    }

    // No `second_handle`: sled allows one handle per directory (one process, one appliance),
    // so the suite's two-node tests are skipped here; threads on one handle are still tested.

    fn check(&self, _store: &Store) {
        let inner = self.current.lock().unwrap().upgrade().expect("the store checked is open");
        check_invariants(&SledStore { inner });
    }
}

crate::store::conformance::suite!(SledFixture::new());

/// The suite fails a backend that breaks a promise (sled with one promise broken on purpose).
#[test]
fn the_suite_catches_broken_backends() {
    crate::store::conformance::faults::the_suite_catches_broken_backends(&|| Box::new(SledFixture::new()));
}
