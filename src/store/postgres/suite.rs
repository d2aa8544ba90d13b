//! The backend conformance suite ([`crate::store::conformance`]) on PostgreSQL: each test on a
//! throw-away cluster of its own ([`ScratchCluster`]), with a second handle as a second cluster
//! node on the same database; and copies between sled and PostgreSQL both ways.

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

/// sled → PostgreSQL → sled: how `store copy` grows an appliance into a cluster, and back.
#[test]
fn copy_round_trip_sled_postgres_sled() {
    use crate::store::sled::tests::conformance::SledFixture;
    crate::store::conformance::copy::round_trip_keeps_everything(
        &SledFixture::new(),
        &PgFixture::new(),
        &SledFixture::new(),
    );
}

/// PostgreSQL → sled → PostgreSQL.
#[test]
fn copy_round_trip_postgres_sled_postgres() {
    use crate::store::sled::tests::conformance::SledFixture;
    crate::store::conformance::copy::round_trip_keeps_everything(
        &PgFixture::new(),
        &SledFixture::new(),
        &PgFixture::new(),
    );
}

/// A sled store copied into a database that holds anything is refused, and nothing is written.
#[test]
fn copy_from_sled_into_a_non_empty_database_is_refused() {
    use crate::store::sled::tests::conformance::SledFixture;
    crate::store::conformance::copy::an_import_into_a_store_that_is_not_empty_is_refused(
        &SledFixture::new(),
        &|| Box::new(PgFixture::new()),
    );
}
