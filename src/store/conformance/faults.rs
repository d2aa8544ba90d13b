//! The suite checked against broken backends: a real backend behind a wrapper that breaks one
//! promise, and the suite's test of that promise must fail — so no test of the suite passes
//! whatever a backend does.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use super::Fixture;
use crate::audit::{Event, Hash};
use crate::store::backend::{AtHead, AuditEntries, Backend, RawEntry, ResultLines};
use crate::store::seal::KeyWrap;
use crate::store::{
    BatchStatus, CommitStats, NewRecord, Outcome, RecordKey, Store, StoreError, Submitted, WorkItem,
};

/// One broken promise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// `submit` forgets the idempotency key.
    ForgetsIdempotencyKeys,
    /// `claim` leases nothing: what it hands out is claimable again at once.
    LeasesNothing,
    /// `release` loses the records: they are never offered again.
    ReleaseLosesRecords,
    /// `purge_expired` keeps batches a second longer than the retention period.
    PurgesLate,
    /// `audit_entries` leaves out the second entry.
    HidesAnAuditEntry,
    /// `put_key_record` ignores `expect`.
    IgnoresCompareAndSet,
    /// `pin_kek` accepts any label.
    RepinsTheKek,
    /// `import` leaves out the tombstones of idempotency keys.
    ImportDropsTombstones,
    /// `export` marks no audit entry as a checkpoint.
    ExportForgetsCheckpoints,
}

/// A backend that keeps every promise of `inner` but `fault`.
struct Faulty {
    inner: Store,
    fault: Fault,
}

/// A fixture whose stores are `base`'s behind [`Faulty`].
struct FaultyFixture<'a> {
    base: &'a dyn Fixture,
    fault: Fault,
}

impl Fixture for FaultyFixture<'_> {
    fn open_with(&self, key_wrap: Option<Arc<dyn KeyWrap>>) -> Store {
        Store::from_backend(Faulty { inner: self.base.open_with(key_wrap), fault: self.fault })
    }

    fn check(&self, store: &Store) {
        self.base.check(store);
    }
}

/// Runs each suite test against a backend from `base` with the fault it must catch; fails
/// naming any fault that went unnoticed. `base` is called for a fresh fixture per run.
pub fn the_suite_catches_broken_backends(base: &dyn Fn() -> Box<dyn Fixture>) {
    type SuiteTest = fn(&dyn Fixture);
    let cases: [(Fault, SuiteTest); 7] = [
        (Fault::ForgetsIdempotencyKeys, super::idempotency::same_request_same_batch_per_issuer),
        (Fault::LeasesNothing, super::exactly_once::concurrent_claimers_never_share_a_record),
        (Fault::ReleaseLosesRecords, super::exactly_once::release_offers_records_again_first),
        (Fault::PurgesLate, super::retention::expired_batches_are_purged_and_unsigned_records_counted),
        (Fault::HidesAnAuditEntry, super::audit::appends_checkpoints_and_signatures_form_one_verified_chain),
        (Fault::IgnoresCompareAndSet, super::keys::key_records_compare_and_set_with_their_events),
        (Fault::RepinsTheKek, super::kek::the_kek_label_is_pinned_once),
    ];
    let mut unnoticed = Vec::new();
    for (fault, test) in cases {
        let fixture = base();
        let faulty = FaultyFixture { base: fixture.as_ref(), fault };
        if catch_unwind(AssertUnwindSafe(|| test(&faulty))).is_ok() {
            unnoticed.push(fault);
        }
    }
    // A copy's round trip through a faulty store in the middle (imported into, exported from).
    for fault in [Fault::ImportDropsTombstones, Fault::ExportForgetsCheckpoints] {
        let (a, b, c) = (base(), base(), base());
        let faulty = FaultyFixture { base: b.as_ref(), fault };
        let round_trip = || super::copy::round_trip_keeps_everything(a.as_ref(), &faulty, c.as_ref());
        if catch_unwind(AssertUnwindSafe(round_trip)).is_ok() {
            unnoticed.push(fault);
        }
    }
    assert!(unnoticed.is_empty(), "the suite passed backends that break a promise: {unnoticed:?}");
}

impl Backend for Faulty {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn location(&self) -> String {
        self.inner.location()
    }

    fn submit(
        &self,
        issuer_id: &str,
        idempotency_key: Option<&str>,
        records: &[NewRecord<'_>],
        now_unix: i64,
    ) -> Result<Submitted, StoreError> {
        let key = if self.fault == Fault::ForgetsIdempotencyKeys { None } else { idempotency_key };
        self.inner.submit(issuer_id, key, records, now_unix)
    }

    fn batch(&self, issuer_id: &str, batch_id: &str) -> Result<Option<BatchStatus>, StoreError> {
        self.inner.batch(issuer_id, batch_id)
    }

    fn results(&self, issuer_id: &str, batch_id: &str) -> Result<Option<ResultLines>, StoreError> {
        self.inner.results(issuer_id, batch_id)
    }

    fn delete(&self, issuer_id: &str, batch_id: &str) -> Result<bool, StoreError> {
        self.inner.delete(issuer_id, batch_id)
    }

    fn purge_expired(&self, now_unix: i64, ttl_secs: i64) -> Result<usize, StoreError> {
        let now = if self.fault == Fault::PurgesLate { now_unix - 1 } else { now_unix };
        self.inner.purge_expired(now, ttl_secs)
    }

    fn claim(&self, max: usize) -> Result<Vec<WorkItem>, StoreError> {
        let items = self.inner.claim(max)?;
        if self.fault == Fault::LeasesNothing {
            self.inner.release(&items.iter().map(|i| i.key).collect::<Vec<_>>());
        }
        Ok(items)
    }

    fn release(&self, keys: &[RecordKey]) {
        if self.fault != Fault::ReleaseLosesRecords {
            self.inner.release(keys);
        }
    }

    fn commit(&self, results: Vec<Outcome>) -> Result<CommitStats, StoreError> {
        self.inner.commit(results)
    }

    fn queued_records(&self) -> u64 {
        self.inner.queued_records()
    }

    fn has_work(&self) -> bool {
        self.inner.has_work()
    }

    fn oldest_pending_age(&self, now_unix: i64) -> Result<Option<i64>, StoreError> {
        self.inner.oldest_pending_age(now_unix)
    }

    fn corrupt_records(&self) -> u64 {
        self.inner.corrupt_records()
    }

    fn expired_unsigned_records(&self) -> u64 {
        self.inner.expired_unsigned_records()
    }

    fn audit_append(&self, events: Vec<Event>) -> Result<u64, StoreError> {
        self.inner.audit_append(events)
    }

    fn audit_append_at_head(&self, make: AtHead<'_>) -> Result<Option<u64>, StoreError> {
        Backend::audit_append_at_head(&*self.inner, make)
    }

    fn audit_checkpoints(&self, from: u64, limit: usize) -> Result<Vec<RawEntry>, StoreError> {
        self.inner.audit_checkpoints(from, limit)
    }

    fn audit_head(&self) -> Result<(u64, Hash), StoreError> {
        self.inner.audit_head()
    }

    fn audit_entries(&self, from: u64) -> AuditEntries {
        let entries = self.inner.audit_entries(from);
        if self.fault == Fault::HidesAnAuditEntry {
            Box::new(entries.filter(|e| !matches!(e, Ok((2, _)))))
        } else {
            entries
        }
    }

    fn key_records(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.inner.key_records()
    }

    fn key_record(&self, label: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.key_record(label)
    }

    fn put_key_record(
        &self,
        label: &str,
        record: &[u8],
        expect: Option<Option<&[u8]>>,
        events: Vec<Event>,
    ) -> Result<(), StoreError> {
        let expect = if self.fault == Fault::IgnoresCompareAndSet { None } else { expect };
        self.inner.put_key_record(label, record, expect, events)
    }

    fn csca_records(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.inner.csca_records()
    }

    fn put_csca_records(&self, cscas: &[(String, Vec<u8>)], events: Vec<Event>) -> Result<(), StoreError> {
        self.inner.put_csca_records(cscas, events)
    }

    fn csca_pending(&self, fingerprint: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.csca_pending(fingerprint)
    }

    fn csca_pendings(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.inner.csca_pendings()
    }

    fn update_csca(
        &self,
        fingerprint: &str,
        pending: Option<&[u8]>,
        trusted: Option<&[u8]>,
        events: Vec<Event>,
    ) -> Result<(), StoreError> {
        self.inner.update_csca(fingerprint, pending, trusted, events)
    }

    fn pinned_kek(&self) -> Result<Option<String>, StoreError> {
        self.inner.pinned_kek()
    }

    fn pin_kek(&self, label: &str) -> Result<(), StoreError> {
        match (self.fault, self.inner.pin_kek(label)) {
            (Fault::RepinsTheKek, Err(StoreError::Conflict(_))) => Ok(()),
            (_, r) => r,
        }
    }

    fn start_key_stock(&self) -> Result<(), StoreError> {
        self.inner.start_key_stock()
    }

    fn stop_key_stock(&self) {
        self.inner.stop_key_stock();
    }

    fn stocked_data_keys(&self) -> usize {
        self.inner.stocked_data_keys()
    }

    fn check(&self) -> Result<(), StoreError> {
        self.inner.check()
    }

    fn export(&self) -> crate::store::copy::Items {
        use crate::store::copy::Item;
        let items = self.inner.export();
        if self.fault != Fault::ExportForgetsCheckpoints {
            return items;
        }
        Box::new(items.map(|i| match i {
            Ok(Item::Audit { seq, stored, .. }) => Ok(Item::Audit { seq, stored, checkpoint: false }),
            other => other,
        }))
    }

    fn import(&self, items: crate::store::copy::Items) -> Result<crate::store::copy::Tally, StoreError> {
        use crate::store::copy::Item;
        use crate::store::idempotency::Entry;
        if self.fault != Fault::ImportDropsTombstones {
            return self.inner.import(items);
        }
        self.inner.import(Box::new(
            items.filter(|i| !matches!(i, Ok(Item::Idempotency { entry: Entry::Tombstone { .. }, .. }))),
        ))
    }

    fn check_free_space(&self) -> Result<(), StoreError> {
        self.inner.check_free_space()
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }
}
