//! The backend conformance suite ([`crate::store::conformance`]) on PostgreSQL: each test on a
//! throw-away cluster of its own ([`ScratchCluster`]), with a second handle as a second cluster
//! node on the same database.

use std::sync::Arc;

use super::{PgStore, ScratchCluster};
use crate::store::conformance::{Fixture, kit};
use crate::store::seal::KeyWrap;
use crate::store::{Store, StoreOptions};

/// A PostgreSQL cluster of the test's own.
struct PgFixture {
    cluster: ScratchCluster,
}

impl PgFixture {
    fn new() -> Self {
        Self {
            cluster: ScratchCluster::start().expect("start a scratch PostgreSQL (Debian package postgresql)"),
        }
    }

    fn handle(&self, key_wrap: Option<Arc<dyn KeyWrap>>) -> Store {
        let settings = self.cluster.settings(4).expect("settings");
        Store::from_backend(
            PgStore::open(settings, StoreOptions { key_wrap, ..StoreOptions::default() })
                .expect("open the store"),
        )
    }
}

impl Fixture for PgFixture {
    fn open_with(&self, key_wrap: Option<Arc<dyn KeyWrap>>) -> Store {
        self.handle(key_wrap)
    }

    fn second_handle(&self) -> Option<Store> {
        Some(self.handle(Some(kit::kek())))
    }
}

crate::store::conformance::suite!(PgFixture::new());

/// The suite fails a PostgreSQL store that breaks a promise.
#[test]
fn the_suite_catches_broken_backends() {
    crate::store::conformance::faults::the_suite_catches_broken_backends(&|| Box::new(PgFixture::new()));
}
