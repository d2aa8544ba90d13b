//! Document Signer key records: each key's lifecycle state, kept as the key module serializes it,
//! and changed only together with the audit entry that records the change; and the country's
//! CSCAs the store was set up with, which the configuration cannot widen afterwards.

use sled::Transactional;

use super::{SledStore, StoreError};

/// Key prefix of a CSCA addition waiting for a second officer (a fingerprint is hex: no clash).
pub(super) const CSCA_PENDING: &[u8] = b"pending:";
use crate::audit::Event;

impl SledStore {
    /// Every key record, by label.
    pub fn key_records(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.ensure_ok()?;
        let mut out = Vec::new();
        for item in self.inner.keys.iter() {
            let (k, v) = item.map_err(|e| self.fail(e))?;
            let label = String::from_utf8(k.to_vec())
                .map_err(|_| StoreError::Corrupt("a key label is not UTF-8".into()))?;
            out.push((label, v.to_vec()));
        }
        Ok(out)
    }

    /// One key record.
    pub fn key_record(&self, label: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.ensure_ok()?;
        Ok(self.inner.keys.get(label.as_bytes()).map_err(|e| self.fail(e))?.map(|v| v.to_vec()))
    }

    /// Writes a key record and the audit events recording the change in one transaction, then
    /// flushes. With `expect` given, the write happens only if the stored record is still exactly
    /// `expect` (`Some(None)`: absent) — two officers acting at once cannot overwrite each other;
    /// a mismatch is [`StoreError::Conflict`].
    pub fn put_key_record(
        &self,
        label: &str,
        record: &[u8],
        expect: Option<Option<&[u8]>>,
        events: Vec<Event>,
    ) -> Result<(), StoreError> {
        self.ensure_ok()?;
        let now = super::unix_now();
        let mut head = self.audit_head_lock();
        let new_head = (&self.inner.keys, &self.inner.audit)
            .transaction(|(keys, audit)| {
                if let Some(expect) = expect {
                    let current = keys.get(label.as_bytes())?;
                    if current.as_deref() != expect {
                        return Err(super::batches::abort(StoreError::Conflict(
                            "the key changed meanwhile: read it again and retry",
                        )));
                    }
                }
                keys.insert(label.as_bytes(), record)?;
                Ok(head.appended(audit, now, &events)?)
            })
            .map_err(|e| self.tx_error(e))?;
        self.flush_db()?;
        self.publish_head(&mut head, new_head);
        Ok(())
    }

    /// The CSCAs recorded in the store: (SHA-256 hex of the certificate, certificate DER).
    pub fn csca_records(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.ensure_ok()?;
        let mut out = Vec::new();
        for item in self.inner.cscas.iter() {
            let (k, v) = item.map_err(|e| self.fail(e))?;
            if k.starts_with(CSCA_PENDING) {
                continue;
            }
            let id = String::from_utf8(k.to_vec())
                .map_err(|_| StoreError::Corrupt("a CSCA fingerprint is not UTF-8".into()))?;
            out.push((id, v.to_vec()));
        }
        Ok(out)
    }

    /// Records CSCAs (fingerprint, DER) with the audit events that say so, in one transaction,
    /// then flushes. Only ever adds.
    pub fn put_csca_records(
        &self,
        cscas: &[(String, Vec<u8>)],
        events: Vec<Event>,
    ) -> Result<(), StoreError> {
        self.ensure_ok()?;
        let now = super::unix_now();
        let mut head = self.audit_head_lock();
        let new_head = (&self.inner.cscas, &self.inner.audit)
            .transaction(|(tree, audit)| {
                for (id, der) in cscas {
                    tree.insert(id.as_bytes(), der.as_slice())?;
                }
                Ok(head.appended(audit, now, &events)?)
            })
            .map_err(|e| self.tx_error(e))?;
        self.flush_db()?;
        self.publish_head(&mut head, new_head);
        Ok(())
    }

    /// A CSCA addition waiting for more approvals, as the key module serialized it.
    pub fn csca_pending(&self, fingerprint: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.ensure_ok()?;
        let key = [CSCA_PENDING, fingerprint.as_bytes()].concat();
        Ok(self.inner.cscas.get(key).map_err(|e| self.fail(e))?.map(|v| v.to_vec()))
    }

    /// Every pending CSCA addition: (fingerprint, record).
    pub fn csca_pendings(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.ensure_ok()?;
        let mut out = Vec::new();
        for item in self.inner.cscas.scan_prefix(CSCA_PENDING) {
            let (k, v) = item.map_err(|e| self.fail(e))?;
            let id = String::from_utf8(k[CSCA_PENDING.len()..].to_vec())
                .map_err(|_| StoreError::Corrupt("a CSCA fingerprint is not UTF-8".into()))?;
            out.push((id, v.to_vec()));
        }
        Ok(out)
    }

    /// Sets (or with `None` removes) the pending record of a CSCA addition and, with `trusted`,
    /// records the CSCA (DER) as the country's, with the audit events, in one transaction.
    pub fn update_csca(
        &self,
        fingerprint: &str,
        pending: Option<&[u8]>,
        trusted: Option<&[u8]>,
        events: Vec<Event>,
    ) -> Result<(), StoreError> {
        self.ensure_ok()?;
        let now = super::unix_now();
        let key = [CSCA_PENDING, fingerprint.as_bytes()].concat();
        let mut head = self.audit_head_lock();
        let new_head = (&self.inner.cscas, &self.inner.audit)
            .transaction(|(tree, audit)| {
                match pending {
                    Some(p) => tree.insert(key.as_slice(), p)?,
                    None => tree.remove(key.as_slice())?,
                };
                if let Some(der) = trusted {
                    tree.insert(fingerprint.as_bytes(), der)?;
                }
                Ok(head.appended(audit, now, &events)?)
            })
            .map_err(|e| self.tx_error(e))?;
        self.flush_db()?;
        self.publish_head(&mut head, new_head);
        Ok(())
    }
}
