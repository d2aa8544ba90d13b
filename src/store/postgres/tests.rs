//! The PostgreSQL store on a real database: the backend conformance suite
//! ([`crate::store::conformance`]), each test on a database of its own, with a second handle as
//! a second cluster node.

use std::sync::Arc;

use super::*;
use crate::store::Store;
use crate::store::conformance::Fixture;

/// A fresh database on the test server.
struct PgFixture {
    url: String,
}

impl PgFixture {
    fn new() -> Self {
        let server = std::env::var("HCERT_DEV_PG").expect("HCERT_DEV_PG");
        let name = format!("t{:016x}", random_i64().unwrap() as u64);
        let mut c = postgres::Client::connect(&format!("{server} dbname=postgres"), postgres::NoTls).unwrap();
        c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        Self { url: format!("{server} dbname={name}") }
    }

    fn handle(&self, key_wrap: Option<Arc<dyn seal::KeyWrap>>) -> Store {
        let config = PgConfig { url: self.url.clone(), password: None, pool_size: 4 };
        Store::from_backend(PgStore::open(&config, StoreOptions { key_wrap, ..StoreOptions::default() }).unwrap())
    }
}

impl Fixture for PgFixture {
    fn open_with(&self, key_wrap: Option<Arc<dyn seal::KeyWrap>>) -> Store {
        self.handle(key_wrap)
    }

    fn second_handle(&self) -> Option<Store> {
        Some(self.handle(Some(crate::store::conformance::kit::kek())))
    }
}

crate::store::conformance::suite!(PgFixture::new());
