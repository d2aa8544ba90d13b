//! The sled store behind the [`Backend`] interface (each call is the store's own method).

use super::SledStore;
use crate::audit::{Event, Hash};
use crate::store::backend::{AtHead, AuditEntries, Backend, RawEntry, ResultLines};
use crate::store::{
    BatchStatus, CommitStats, NewRecord, Outcome, RecordKey, StoreError, Submitted, WorkItem,
};

impl Backend for SledStore {
    fn kind(&self) -> &'static str {
        "sled"
    }

    fn location(&self) -> String {
        self.dir().display().to_string()
    }

    fn submit(
        &self,
        issuer_id: &str,
        idempotency_key: Option<&str>,
        records: &[NewRecord<'_>],
        now_unix: i64,
    ) -> Result<Submitted, StoreError> {
        SledStore::submit(self, issuer_id, idempotency_key, records, now_unix)
    }

    fn batch(&self, issuer_id: &str, batch_id: &str) -> Result<Option<BatchStatus>, StoreError> {
        SledStore::batch(self, issuer_id, batch_id)
    }

    fn results(&self, issuer_id: &str, batch_id: &str) -> Result<Option<ResultLines>, StoreError> {
        Ok(SledStore::results(self, issuer_id, batch_id)?.map(|r| Box::new(r) as ResultLines))
    }

    fn delete(&self, issuer_id: &str, batch_id: &str) -> Result<bool, StoreError> {
        SledStore::delete(self, issuer_id, batch_id)
    }

    fn purge_expired(&self, now_unix: i64, ttl_secs: i64) -> Result<usize, StoreError> {
        SledStore::purge_expired(self, now_unix, ttl_secs)
    }

    fn claim(&self, max: usize) -> Result<Vec<WorkItem>, StoreError> {
        SledStore::claim(self, max)
    }

    fn release(&self, keys: &[RecordKey]) {
        SledStore::release(self, keys);
    }

    fn commit(&self, results: Vec<Outcome>) -> Result<CommitStats, StoreError> {
        SledStore::commit(self, results)
    }

    fn queued_records(&self) -> u64 {
        SledStore::queued_records(self)
    }

    fn has_work(&self) -> bool {
        SledStore::has_work(self)
    }

    fn oldest_pending_age(&self, now_unix: i64) -> Result<Option<i64>, StoreError> {
        SledStore::oldest_pending_age(self, now_unix)
    }

    fn corrupt_records(&self) -> u64 {
        SledStore::corrupt_records(self)
    }

    fn expired_unsigned_records(&self) -> u64 {
        SledStore::expired_unsigned_records(self)
    }

    fn audit_append(&self, events: Vec<Event>) -> Result<u64, StoreError> {
        SledStore::audit_append(self, events)
    }

    fn audit_append_at_head(&self, make: AtHead<'_>) -> Result<Option<u64>, StoreError> {
        SledStore::audit_append_at_head(self, make)
    }

    fn audit_checkpoints(&self, from: u64, limit: usize) -> Result<Vec<RawEntry>, StoreError> {
        SledStore::audit_checkpoints(self, from, limit)
    }

    fn audit_head(&self) -> Result<(u64, Hash), StoreError> {
        Ok(SledStore::audit_head(self))
    }

    fn audit_entries(&self, from: u64) -> AuditEntries {
        Box::new(SledStore::audit_entries(self, from))
    }

    fn key_records(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        SledStore::key_records(self)
    }

    fn key_record(&self, label: &str) -> Result<Option<Vec<u8>>, StoreError> {
        SledStore::key_record(self, label)
    }

    fn put_key_record(
        &self,
        label: &str,
        record: &[u8],
        expect: Option<Option<&[u8]>>,
        events: Vec<Event>,
    ) -> Result<(), StoreError> {
        SledStore::put_key_record(self, label, record, expect, events)
    }

    fn csca_records(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        SledStore::csca_records(self)
    }

    fn put_csca_records(&self, cscas: &[(String, Vec<u8>)], events: Vec<Event>) -> Result<(), StoreError> {
        SledStore::put_csca_records(self, cscas, events)
    }

    fn csca_pending(&self, fingerprint: &str) -> Result<Option<Vec<u8>>, StoreError> {
        SledStore::csca_pending(self, fingerprint)
    }

    fn csca_pendings(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        SledStore::csca_pendings(self)
    }

    fn update_csca(
        &self,
        fingerprint: &str,
        pending: Option<&[u8]>,
        trusted: Option<&[u8]>,
        events: Vec<Event>,
    ) -> Result<(), StoreError> {
        SledStore::update_csca(self, fingerprint, pending, trusted, events)
    }

    fn pinned_kek(&self) -> Result<Option<String>, StoreError> {
        SledStore::pinned_kek(self)
    }

    fn pin_kek(&self, label: &str) -> Result<(), StoreError> {
        SledStore::pin_kek(self, label)
    }

    fn start_key_stock(&self) -> Result<(), StoreError> {
        SledStore::start_key_stock(self)
    }

    fn stop_key_stock(&self) {
        SledStore::stop_key_stock(self);
    }

    fn stocked_data_keys(&self) -> usize {
        SledStore::stocked_data_keys(self)
    }

    fn export(&self) -> crate::store::copy::Items {
        SledStore::export(self)
    }

    fn import(&self, items: crate::store::copy::Items) -> Result<crate::store::copy::Tally, StoreError> {
        SledStore::import(self, items)
    }

    fn check(&self) -> Result<(), StoreError> {
        SledStore::check(self)
    }

    fn check_free_space(&self) -> Result<(), StoreError> {
        SledStore::check_free_space(self)
    }

    fn flush(&self) -> Result<(), StoreError> {
        SledStore::flush(self)
    }
}
