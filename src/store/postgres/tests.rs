//! PostgreSQL store tests on a real database.

use super::*;
use crate::store::{NewRecord, RecordResult, Store};

fn dev_store() -> Store {
    let url = std::env::var("HCERT_DEV_PG").expect("HCERT_DEV_PG");
    let config = PgConfig { url, password: None, pool_size: 4 };
    let options = StoreOptions {
        key_wrap: Some(seal::testing::MemoryKek::with_key([0x4b; 32])),
        ..StoreOptions::default()
    };
    Store::from_backend(PgStore::open(&config, options).unwrap())
}

#[test]
#[ignore = "dev"]
fn smoke() {
    let store = dev_store();
    let refs: Vec<String> = (0..40).map(|i| format!("r{i}")).collect();
    let recs: Vec<NewRecord<'_>> = refs.iter().map(|r| NewRecord { r#ref: r, dcc_json: b"{}" }).collect();
    let s = store.submit("issuer", Some("k1"), &recs, 1000).unwrap();
    assert!(s.created);
    let again = store.submit("issuer", Some("k1"), &recs, 1000).unwrap();
    assert!(!again.created);
    assert_eq!(again.batch_id, s.batch_id);
    assert!(matches!(
        store.submit("issuer", Some("k1"), &recs[..3], 1000),
        Err(StoreError::IdempotencyConflict)
    ));
    let mut n = 0;
    loop {
        let items = store.claim(16).unwrap();
        if items.is_empty() {
            break;
        }
        let outcomes: Vec<(crate::store::RecordKey, RecordResult)> = items
            .iter()
            .map(|i| {
                (
                    i.key,
                    RecordResult::Rejected {
                        r#ref: i.r#ref.clone(),
                        error: crate::store::RecordError { code: "x".into(), message: "y".into() },
                    },
                )
            })
            .collect();
        n += store.commit(outcomes).unwrap().applied;
    }
    assert_eq!(n, 40);
    let st = store.batch("issuer", &s.batch_id).unwrap().unwrap();
    assert_eq!(st.rejected, 40);
    let lines: Vec<_> =
        store.results("issuer", &s.batch_id).unwrap().unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(lines.len(), 40);
    assert!(store.delete("issuer", &s.batch_id).unwrap());
    assert!(matches!(store.submit("issuer", Some("k1"), &recs, 1000), Err(StoreError::BatchDeleted { .. })));
    store.audit_append(vec![]).unwrap();
}
