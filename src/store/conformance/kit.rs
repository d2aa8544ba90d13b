//! What the suite's tests (and a backend's own) build their work from: records, results that
//! sign or reject, a KEK, and loops that sign everything — all through [`Backend`] only.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::store::seal::{self, KeyWrap};
use crate::store::{Backend, NewRecord, Outcome, RecordError, RecordResult, Store, Submitted, WorkItem};

/// A store handle the helpers below take: the daemon's [`Store`], or a backend itself (a
/// backend's own tests).
pub trait AsBackend {
    /// The interface, and nothing more.
    fn backend(&self) -> &dyn Backend;
}

impl AsBackend for Store {
    fn backend(&self) -> &dyn Backend {
        &**self
    }
}

impl<B: Backend> AsBackend for B {
    fn backend(&self) -> &dyn Backend {
        self
    }
}

/// The DCC every test record carries.
pub const DCC: &[u8] = br#"{"ver":"1.3.0","nam":{"fnt":"NGUYEN"},"dob":"1990-01-01"}"#;

/// The suite's KEK: the same bytes in every process of a test, so a store reopened (or
/// reopened by another process) unwraps its data keys.
pub fn kek() -> Arc<dyn KeyWrap> {
    seal::testing::MemoryKek::with_key([0x4b; 32])
}

/// `n` references `prefix-0`, `prefix-1`, ….
pub fn refs(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// The records with these references, each carrying [`DCC`].
pub fn records(refs: &[String]) -> Vec<NewRecord<'_>> {
    refs.iter().map(|r| NewRecord { r#ref: r, dcc_json: DCC }).collect()
}

/// Submits `n` records referenced `issuer-0…` and expects it accepted.
pub fn submit(store: &impl AsBackend, issuer: &str, key: Option<&str>, n: usize, now: i64) -> Submitted {
    let refs = refs(issuer, n);
    store.backend().submit(issuer, key, &records(&refs), now).expect("submit")
}

/// A result for a claimed item: every third rejected, the others signed.
pub fn result_for(item: &WorkItem) -> RecordResult {
    if item.key.index() % 3 == 2 {
        RecordResult::Rejected {
            r#ref: item.r#ref.clone(),
            error: RecordError { code: "schema".into(), message: "test rejection".into() },
        }
    } else {
        RecordResult::Signed {
            r#ref: item.r#ref.clone(),
            hc1: format!("HC1:{}", item.r#ref),
            uvci: "URN:UVCI:01:VN:TEST".into(),
            kid: "AAAAAAAAAAA=".into(),
            iat: 1,
            exp: 2,
        }
    }
}

/// The outcomes of claimed items with [`result_for`], carrying their audit facts (the test
/// `HC1:` strings do not decode, and a store would otherwise log that).
pub fn outcomes(items: &[WorkItem]) -> Vec<Outcome> {
    items
        .iter()
        .map(|i| {
            let result = result_for(i);
            let audit = match &result {
                RecordResult::Signed { r#ref, uvci, kid, exp, .. } => {
                    Some(crate::audit::SignedRecord::new(r#ref, "VN", uvci, &[7; 64], kid, *exp))
                }
                RecordResult::Rejected { .. } => None,
            };
            Outcome { key: i.key, result, audit }
        })
        .collect()
}

/// Claims and commits in chunks of `chunk` until nothing is left; returns the records resolved.
pub fn sign_all(store: &impl AsBackend, chunk: usize) -> usize {
    let store = store.backend();
    let mut n = 0;
    loop {
        let items = store.claim(chunk).expect("claim");
        if items.is_empty() {
            return n;
        }
        n += items.len();
        store.commit(outcomes(&items)).expect("commit");
    }
}

/// A batch's results as streamed, parsed.
pub fn parsed_results(store: &impl AsBackend, issuer: &str, batch_id: &str) -> Vec<RecordResult> {
    let lines = store.backend().results(issuer, batch_id).expect("results").expect("the batch exists");
    lines.map(|l| serde_json::from_slice(&l.expect("a result line")).expect("a result line parses")).collect()
}

/// Waits until `done` holds, failing with `what` after `within`.
pub fn wait_until(within: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < within, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
