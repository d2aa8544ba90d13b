//! The PostgreSQL store behind the [`Backend`] interface (each call is the store's own method).

use super::store::PgStore;
use crate::audit::{Event, Hash};
use crate::store::backend::{AtHead, AuditEntries, Backend, RawEntry, ResultLines};
use crate::store::{
    BatchStatus, CommitStats, NewRecord, Outcome, RecordKey, StoreError, Submitted, WorkItem,
};

impl Backend for PgStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn location(&self) -> String {
        PgStore::location(self)
    }

    fn submit(
        &self,
        issuer_id: &str,
        idempotency_key: Option<&str>,
        records: &[NewRecord<'_>],
        now_unix: i64,
    ) -> Result<Submitted, StoreError> {
        PgStore::submit(self, issuer_id, idempotency_key, records, now_unix)
    }

    fn batch(&self, issuer_id: &str, batch_id: &str) -> Result<Option<BatchStatus>, StoreError> {
        PgStore::batch(self, issuer_id, batch_id)
    }

    fn results(&self, issuer_id: &str, batch_id: &str) -> Result<Option<ResultLines>, StoreError> {
        PgStore::results(self, issuer_id, batch_id)
    }

    fn delete(&self, issuer_id: &str, batch_id: &str) -> Result<bool, StoreError> {
        PgStore::delete(self, issuer_id, batch_id)
    }

    fn purge_expired(&self, now_unix: i64, ttl_secs: i64) -> Result<usize, StoreError> {
        PgStore::purge_expired(self, now_unix, ttl_secs)
    }

    fn claim(&self, max: usize) -> Result<Vec<WorkItem>, StoreError> {
        PgStore::claim(self, max)
    }

    fn release(&self, keys: &[RecordKey]) {
        PgStore::release(self, keys);
    }

    fn commit(&self, results: Vec<Outcome>) -> Result<CommitStats, StoreError> {
        PgStore::commit(self, results)
    }

    fn queued_records(&self) -> u64 {
        PgStore::queued_records(self)
    }

    fn has_work(&self) -> bool {
        PgStore::has_work(self)
    }

    fn oldest_pending_age(&self, now_unix: i64) -> Result<Option<i64>, StoreError> {
        PgStore::oldest_pending_age(self, now_unix)
    }

    fn corrupt_records(&self) -> u64 {
        self.inner.corrupt_records.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn expired_unsigned_records(&self) -> u64 {
        self.inner.expired_unsigned.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn audit_append(&self, events: Vec<Event>) -> Result<u64, StoreError> {
        PgStore::audit_append(self, events)
    }

    fn audit_append_at_head(&self, make: AtHead<'_>) -> Result<Option<u64>, StoreError> {
        PgStore::audit_append_at_head(self, make)
    }

    fn audit_checkpoints(&self, from: u64, limit: usize) -> Result<Vec<RawEntry>, StoreError> {
        PgStore::audit_checkpoints(self, from, limit)
    }

    fn audit_head(&self) -> Result<(u64, Hash), StoreError> {
        PgStore::audit_head(self)
    }

    fn audit_entries(&self, from: u64) -> AuditEntries {
        PgStore::audit_entries(self, from)
    }

    fn key_records(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        PgStore::key_records(self)
    }

    fn key_record(&self, label: &str) -> Result<Option<Vec<u8>>, StoreError> {
        PgStore::key_record(self, label)
    }

    fn put_key_record(
        &self,
        label: &str,
        record: &[u8],
        expect: Option<Option<&[u8]>>,
        events: Vec<Event>,
    ) -> Result<(), StoreError> {
        PgStore::put_key_record(self, label, record, expect, events)
    }

    fn csca_records(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        PgStore::csca_records(self)
    }

    fn put_csca_records(&self, cscas: &[(String, Vec<u8>)], events: Vec<Event>) -> Result<(), StoreError> {
        PgStore::put_csca_records(self, cscas, events)
    }

    fn csca_pending(&self, fingerprint: &str) -> Result<Option<Vec<u8>>, StoreError> {
        PgStore::csca_pending(self, fingerprint)
    }

    fn csca_pendings(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        PgStore::csca_pendings(self)
    }

    fn update_csca(
        &self,
        fingerprint: &str,
        pending: Option<&[u8]>,
        trusted: Option<&[u8]>,
        events: Vec<Event>,
    ) -> Result<(), StoreError> {
        PgStore::update_csca(self, fingerprint, pending, trusted, events)
    }

    fn pinned_kek(&self) -> Result<Option<String>, StoreError> {
        PgStore::pinned_kek(self)
    }

    fn pin_kek(&self, label: &str) -> Result<(), StoreError> {
        PgStore::pin_kek(self, label)
    }

    fn start_key_stock(&self) -> Result<(), StoreError> {
        PgStore::start_key_stock(self)
    }

    fn stop_key_stock(&self) {
        PgStore::stop_key_stock(self);
    }

    fn stocked_data_keys(&self) -> usize {
        PgStore::stocked_data_keys(self)
    }

    fn watch(&self, on_change: crate::store::OnChange) {
        PgStore::watch(self, on_change);
    }

    fn export(&self) -> crate::store::copy::Items {
        PgStore::export(self)
    }

    fn import(&self, items: crate::store::copy::Items) -> Result<crate::store::copy::Tally, StoreError> {
        PgStore::import(self, items)
    }

    fn check(&self) -> Result<(), StoreError> {
        PgStore::check(self)
    }

    fn check_free_space(&self) -> Result<(), StoreError> {
        // The database manages its own space; a full one answers like an outage.
        Ok(())
    }

    fn give_back_leases(&self) {
        self.inner.give_back_leases();
    }

    fn flush(&self) -> Result<(), StoreError> {
        // Every change is committed before it is answered.
        Ok(())
    }
}
